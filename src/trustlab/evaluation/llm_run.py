"""``trustlab llm``: GCG attacks, SmoothLLM answers and their success rates, one record per prompt.

Each command commits a folder (:func:`~trustlab.evaluation.record_set.commit_record_set`, one rename) holding
``config.json`` (settings, the backend without any key, the judge with its version and phrases, versions),
``records.jsonl`` and ``summary.json``:

- attack: one row per goal (``goal, target, suffix, prompt, loss, success, steps, seconds``) and ``steps.jsonl``
  (the per-step trace: ``goal_idx, step, loss, success, seconds``);
- defend: one row per prompt (``idx, kind, prompt, undefended_response, undefended_jailbroken, jailbroken,
  jailbroken_fraction, response, ...``);
- eval: one row per (prompt, perturbation, q, N), plus the undefended row (``perturbation = "none"``); the
  summary gives the attack success rate per prompt kind for each setting.

Inputs are CSV files: behaviours with columns ``goal,target``; prompts with ``prompt`` and optionally ``kind``
(e.g. ``attacked``/``clean``). An attack folder can be given to ``eval`` and ``defend`` instead: each goal is
used with its suffix (``attacked``) and without (``clean``).
"""

from __future__ import annotations

import csv
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from trustlab.evaluation.record_set import commit_record_set
from trustlab.llm.gcg import DEFAULT_SUFFIX, GCGConfig, gcg_attack
from trustlab.llm.judge import Judge, RefusalJudge, describe_judge
from trustlab.llm.perturbations import Prompt, check_q, get_perturbation
from trustlab.llm.smoothllm import SmoothLLMConfig, batched_generate, smooth_llm
from trustlab.runs import read_records, versions
from trustlab.seeding import derive_seed
from trustlab.validation import check_positive_int

__all__ = ["read_behaviours", "read_prompts", "llm_attack_run", "llm_defend_run", "llm_eval_run"]

log = logging.getLogger(__name__)
Generate = Callable[[list[str]], Sequence[str]]


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} must have the columns {list(required)}, missing {missing}")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path} has no rows")
    for i, row in enumerate(rows, start=2):
        for c in required:
            if not (row[c] or "").strip():
                raise ValueError(f"{path}, line {i}: empty {c}")
    return rows


def read_behaviours(path: Path) -> list[tuple[str, str]]:
    """``(goal, target)`` pairs from a CSV with columns ``goal,target``.

    Raises:
        ValueError: a missing column, no rows, or an empty goal or target (the line is named).
    """
    return [(r["goal"], r["target"]) for r in _read_csv(path, ("goal", "target"))]


def read_prompts(source: Path) -> list[dict[str, str]]:
    """``{"prompt", "kind"}`` rows from a CSV with a ``prompt`` column, or from an attack folder's records (each goal
    with its suffix, ``attacked``, and without, ``clean``).

    Raises:
        ValueError, FileNotFoundError: unreadable input, a missing column or an empty prompt.
    """
    source = Path(source)
    if source.is_dir():
        records = read_records(source / "records.jsonl")
        return ([{"prompt": r["prompt"], "kind": "attacked"} for r in records]
                + [{"prompt": r["goal"], "kind": "clean"} for r in records])
    return [{"prompt": r["prompt"], "kind": r.get("kind") or "prompt"} for r in _read_csv(source, ("prompt",))]


def _config(kind: str, settings: dict[str, Any], backend: dict[str, Any], judge: Judge | None) -> dict[str, Any]:
    out = {"kind": kind, **settings, "backend": backend, "versions": versions()}
    if judge is not None:
        out["judge"] = describe_judge(judge)
    return out


def llm_attack_run(out: Path, model: torch.nn.Module, tokenizer: Any, behaviours: Sequence[tuple[str, str]], *,
                   config: GCGConfig, system_prompt: str | None = None, suffix: str = DEFAULT_SUFFIX, seed: int = 0, backend: dict[str, Any] | None = None) -> dict[str, Any]:
    """GCG on each (goal, target) pair separately; commit ``out``. Returns the summary (success rate, steps,
    seconds per goal)."""
    rows, trace = [], []
    for i, (goal, target) in enumerate(behaviours):
        t0 = time.perf_counter()
        text, result = gcg_attack(model, tokenizer, [goal], [target], system_prompt=system_prompt, suffix=suffix,
                                  config=config, generator=torch.Generator().manual_seed(derive_seed(seed, i)))
        rows.append({"idx": i, "goal": goal, "target": target, "suffix": text, "prompt": f"{goal} {text}",
                     "loss": result.loss, "success": result.success[0], "steps": result.steps,
                     "seconds": time.perf_counter() - t0})
        trace += [{"goal_idx": i, "step": r["step"], "loss": r["loss"], "success": r["success"][0],
                   "seconds": r["seconds"]} for r in result.records]
        log.info("gcg goal %d: loss %.3f, success %s after %d steps", i, result.loss, result.success[0], result.steps)
    n = len(rows)
    summary = {"n_goals": n, "success_rate": sum(r["success"] for r in rows) / n,
               "mean_steps": sum(r["steps"] for r in rows) / n, "seconds_per_goal": sum(r["seconds"] for r in rows) / n,
               "seconds_per_step": sum(t["seconds"] for t in trace) / max(1, sum(r["steps"] for r in rows))}
    settings = {"steps": config.steps, "topk": config.topk, "batch_size": config.batch_size,
                "system_prompt": system_prompt, "suffix_init": suffix, "seed": seed}
    commit_record_set(Path(out), {"config.json": _config("llm-attack", settings, backend or {}, None),
                                  "records.jsonl": rows, "steps.jsonl": trace, "summary.json": summary})
    return summary


def _smooth_rows(generate: Generate, prompts: Sequence[dict[str, str]], undefended: list[str], judge: Judge,
                 setting: SmoothLLMConfig, seed: int) -> list[dict[str, Any]]:
    rows = []
    for i, p in enumerate(prompts):
        res = smooth_llm(generate, Prompt.whole(p["prompt"]), perturbation=setting.perturbation, q=setting.q,
                         n_copies=setting.n_copies, judge=judge, batch_size=setting.batch_size,
                         generator=derive_seed(seed, i))
        rows.append({"idx": i, "kind": p["kind"], "prompt": p["prompt"], "perturbation": setting.perturbation,
                     "q": setting.q, "n_copies": setting.n_copies, "undefended_response": undefended[i],
                     "undefended_jailbroken": bool(judge(undefended[i])), **res.record()})
    return rows


def _rates(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    kinds = sorted({r["kind"] for r in rows})
    return {k: sum(r["jailbroken"] for r in rows if r["kind"] == k) / sum(r["kind"] == k for r in rows) for k in kinds}


def llm_defend_run(out: Path, generate: Generate, prompts: Sequence[dict[str, str]], *, setting: SmoothLLMConfig,
                   judge: Judge | None = None, seed: int = 0, backend: dict[str, Any] | None = None) -> dict[str, Any]:
    """SmoothLLM on each prompt (and the undefended answer); commit ``out``. Returns the summary."""
    judge = judge or RefusalJudge()
    undefended = batched_generate(generate, [p["prompt"] for p in prompts], setting.batch_size)
    rows = _smooth_rows(generate, prompts, undefended, judge, setting, seed)
    summary = {"n_prompts": len(rows), "jailbroken_rate": _rates(rows),
               "undefended_jailbroken_rate": _rates([{**r, "jailbroken": r["undefended_jailbroken"]} for r in rows])}
    settings = {"perturbation": setting.perturbation, "q": setting.q, "n_copies": setting.n_copies,
                "batch_size": setting.batch_size, "seed": seed}
    commit_record_set(Path(out), {"config.json": _config("llm-defend", settings, backend or {}, judge),
                                  "records.jsonl": rows, "summary.json": summary})
    return summary


def llm_eval_run(out: Path, generate: Generate, prompts: Sequence[dict[str, str]], *, perturbations: Sequence[str],
                 qs: Sequence[float], n_copies: Sequence[int], batch_size: int | None = None,
                 judge: Judge | None = None, seed: int = 0, backend: dict[str, Any] | None = None) -> dict[str, Any]:
    """The attack success rate with no defense and with SmoothLLM for each (perturbation, q, N); commit ``out``.

    Raises:
        ValueError: an unknown perturbation, q outside (0, 100] or N < 1 (named), before any model call.
    """
    for name in perturbations:
        get_perturbation(name)
    qs, n_copies = [check_q(q) for q in qs], [check_positive_int(n, "n_copies") for n in n_copies]
    if not perturbations or not qs or not n_copies:
        raise ValueError("perturbations, q and n_copies need at least one value each")
    judge = judge or RefusalJudge()
    undefended = batched_generate(generate, [p["prompt"] for p in prompts], batch_size)
    rows = [{"idx": i, "kind": p["kind"], "prompt": p["prompt"], "perturbation": "none", "q": None, "n_copies": 1,
             "response": undefended[i], "jailbroken": bool(judge(undefended[i]))} for i, p in enumerate(prompts)]
    table = [{"perturbation": "none", "q": None, "n_copies": None, "rate": _rates(rows)}]
    for name, q, n in itertools.product(perturbations, qs, n_copies):
        setting = SmoothLLMConfig(name, q, n, batch_size)
        block = _smooth_rows(generate, prompts, undefended, judge, setting, seed)
        rows += block
        table.append({"perturbation": name, "q": q, "n_copies": n, "rate": _rates(block)})
        log.info("smoothllm %s q=%g N=%d: %s", name, q, n, table[-1]["rate"])
    summary = {"n_prompts": len(prompts), "jailbroken_rate": table}
    settings = {"perturbations": list(perturbations), "q": qs, "n_copies": n_copies, "batch_size": batch_size,
                "seed": seed}
    commit_record_set(Path(out), {"config.json": _config("llm-eval", settings, backend or {}, judge),
                                  "records.jsonl": rows, "summary.json": summary})
    return summary

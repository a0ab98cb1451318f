"""``trustlab llm``: GCG attacks, SmoothLLM answers and their success rates, one record per prompt.

Each command commits one record set into an experiment folder ``EXP`` (:mod:`~trustlab.evaluation.llm_experiment`:
``EXP/llm/<action>-<hash>/``, and ``EXP``'s own records rebuilt from every set, so that ``trustlab report EXP``
reads it). A set holds ``config.json`` (``action``, the settings, the backend without any key, the judge with its
version and phrases, a digest of the inputs, versions), ``records.jsonl`` and ``summary.json``:

- attack: one row per goal (``idx, goal, target, suffix, prompt, loss, success, steps, seconds``; ``prompt`` is
  ``goal + suffix``, the suffix's text starting with the space that separates it from the goal) and
  ``steps.jsonl`` (the per-step trace: ``goal_idx, step, loss, success, seconds``);
- defend: one row per prompt (``idx, kind, prompt, undefended_response, undefended_jailbroken, jailbroken,
  jailbroken_fraction, response, ...``);
- eval: one row per (prompt, perturbation, q, N), plus the undefended row (``perturbation = "none"``); the
  summary gives the rate per prompt kind for each setting.

Inputs are CSV files: behaviours with columns ``goal,target``; prompts with ``prompt`` and optionally ``kind``
(``attacked`` and ``goal`` prompts should be refused, any other kind, e.g. ``clean``, answered; default
``prompt``). An attack set, or an experiment folder holding one, can be given to ``eval`` and ``defend`` instead
of a CSV: each goal is used with its suffix (kind ``attacked``) and alone (kind ``goal``).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from trustlab.evaluation.llm_experiment import attack_set_of, check_experiment, commit_llm_set
from trustlab.llm.gcg import DEFAULT_SUFFIX, GCGConfig, gcg_attack
from trustlab.llm.judge import Judge, RefusalJudge, describe_judge
from trustlab.llm.perturbations import Prompt, check_q, get_perturbation
from trustlab.llm.smoothllm import SmoothLLMConfig, batched_generate, smooth_llm
from trustlab.runs import read_records, versions
from trustlab.seeding import derive_seed
from trustlab.validation import check_positive_int

__all__ = ["read_behaviours", "read_prompts", "prompts_digest", "llm_attack_run", "llm_defend_run", "llm_eval_run"]

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
    """``{"prompt", "kind"}`` rows from a CSV with a ``prompt`` column (``kind`` optional, default ``prompt``), or
    from an attack set, or an experiment folder holding one (each goal with its suffix, ``attacked``, and alone,
    ``goal``).

    Raises:
        ValueError, FileNotFoundError: unreadable input, a missing column, an empty prompt, or a folder that is
            not an attack set nor an experiment with exactly one.
    """
    source = Path(source)
    attack = attack_set_of(source)
    if attack is not None:
        records = read_records(attack / "records.jsonl")
        return ([{"prompt": r["prompt"], "kind": "attacked"} for r in records]
                + [{"prompt": r["goal"], "kind": "goal"} for r in records])
    return [{"prompt": r["prompt"], "kind": r.get("kind") or "prompt"} for r in _read_csv(source, ("prompt",))]


def prompts_digest(rows: Sequence[Any]) -> str:
    """sha256 of the inputs' canonical JSON: two sets over the same prompts (or behaviours) share it."""
    return hashlib.sha256(json.dumps(list(rows), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _config(settings: dict[str, Any], backend: dict[str, Any], judge: Judge | None, inputs: Sequence[Any],
            sources: Sequence[str] | None) -> dict[str, Any]:
    out = {**settings, "backend": backend, "inputs_sha256": prompts_digest(inputs), "n_inputs": len(inputs),
           "sources": [str(s) for s in sources or ()], "versions": versions()}
    if judge is not None:
        out["judge"] = describe_judge(judge)
    return out


def llm_attack_run(out: Path, model: torch.nn.Module, tokenizer: Any, behaviours: Sequence[tuple[str, str]], *,
                   config: GCGConfig, system_prompt: str | None = None, suffix: str = DEFAULT_SUFFIX, seed: int = 0,
                   backend: dict[str, Any] | None = None,
                   sources: Sequence[str] | None = None) -> tuple[Path, dict[str, Any]]:
    """GCG on each (goal, target) pair separately; commit the set into the experiment folder ``out``.

    Returns:
        The set's folder and its summary (success rate, steps and seconds per goal, seconds per step).

    Raises:
        FileExistsError: ``out`` can't be an LLM experiment folder (checked before the attack).
    """
    check_experiment(out)
    rows, trace = [], []
    for i, (goal, target) in enumerate(behaviours):
        t0 = time.perf_counter()
        text, result = gcg_attack(model, tokenizer, [goal], [target], system_prompt=system_prompt, suffix=suffix,
                                  config=config, generator=torch.Generator().manual_seed(derive_seed(seed, i)))
        rows.append({"idx": i, "goal": goal, "target": target, "suffix": text, "prompt": goal + text,
                     "loss": result.loss, "success": result.success[0], "steps": result.steps,
                     "seconds": time.perf_counter() - t0})
        trace += [{"goal_idx": i, "step": r["step"], "loss": r["loss"], "success": r["success"][0],
                   "seconds": r["seconds"]} for r in result.records]
        log.info("gcg goal %d: loss %.3f, success %s after %d steps", i, result.loss, result.success[0], result.steps)
    n = len(rows)
    summary = {"n_goals": n, "success_rate": sum(r["success"] for r in rows) / n,
               "mean_steps": sum(r["steps"] for r in rows) / n, "seconds_per_goal": sum(r["seconds"] for r in rows) / n,
               "seconds_per_step": sum(t["seconds"] for t in trace) / max(1, sum(r["steps"] for r in rows))}
    settings = {"kind": "llm-attack", "steps": config.steps, "topk": config.topk, "batch_size": config.batch_size,
                "prefix_cache": config.prefix_cache, "system_prompt": system_prompt, "suffix_init": suffix,
                "seed": seed}
    path = commit_llm_set(out, "attack", _config(settings, backend or {}, None, behaviours, sources),
                          {"records.jsonl": rows, "steps.jsonl": trace, "summary.json": summary})
    return path, summary


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
                   judge: Judge | None = None, seed: int = 0, backend: dict[str, Any] | None = None,
                   sources: Sequence[str] | None = None) -> tuple[Path, dict[str, Any]]:
    """SmoothLLM on each prompt (and the undefended answer); commit the set into the experiment folder ``out``.

    Returns:
        The set's folder and its summary.

    Raises:
        FileExistsError: ``out`` can't be an LLM experiment folder (checked before any model call).
    """
    check_experiment(out)
    judge = judge or RefusalJudge()
    undefended = batched_generate(generate, [p["prompt"] for p in prompts], setting.batch_size)
    rows = _smooth_rows(generate, prompts, undefended, judge, setting, seed)
    summary = {"n_prompts": len(rows), "jailbroken_rate": _rates(rows),
               "undefended_jailbroken_rate": _rates([{**r, "jailbroken": r["undefended_jailbroken"]} for r in rows])}
    settings = {"kind": "llm-defend", "perturbation": setting.perturbation, "q": setting.q,
                "n_copies": setting.n_copies, "batch_size": setting.batch_size, "seed": seed}
    path = commit_llm_set(out, "defend", _config(settings, backend or {}, judge, prompts, sources),
                          {"records.jsonl": rows, "summary.json": summary})
    return path, summary


def _prefetched(generate: Generate, prompts: Sequence[dict[str, str]], grid: Sequence[SmoothLLMConfig], seed: int,
                batch_size: int | None) -> Generate:
    """``generate`` answered from one batched pass over every distinct prompt the eval will send.

    The perturbed copies depend only on the seeds, not on the responses, so a dry run of every setting with a
    recording ``generate`` lists them; the distinct ones (the undefended prompts, and the first copies that N = 2
    shares with N = 6 and 10, are asked once) are generated in batches of ``batch_size``, ordered by length so a
    batch pads little, and the returned ``generate`` looks the responses up. The records are those of answering
    each setting on its own whenever the backend answers a prompt the same in any batch (greedy decoding)."""
    wanted: dict[str, None] = dict.fromkeys(p["prompt"] for p in prompts)

    def record(batch: list[str]) -> list[str]:
        wanted.update(dict.fromkeys(batch))
        return [""] * len(batch)

    for setting in grid:
        _smooth_rows(record, prompts, [""] * len(prompts), lambda r: False, setting, seed)
    order = sorted(wanted, key=len)
    size = batch_size or len(order)
    answers: dict[str, str] = {}
    t0 = time.perf_counter()
    for start in range(0, len(order), size):
        chunk = order[start:start + size]
        answers.update(zip(chunk, batched_generate(generate, chunk)))
        log.info("eval: %d of %d distinct prompts answered (%.0f s)", len(answers), len(order),
                 time.perf_counter() - t0)

    def lookup(batch: list[str]) -> list[str]:
        return [answers[p] for p in batch]

    return lookup


def llm_eval_run(out: Path, generate: Generate, prompts: Sequence[dict[str, str]], *, perturbations: Sequence[str],
                 qs: Sequence[float], n_copies: Sequence[int], batch_size: int | None = None,
                 judge: Judge | None = None, seed: int = 0, backend: dict[str, Any] | None = None,
                 sources: Sequence[str] | None = None) -> tuple[Path, dict[str, Any]]:
    """The rate judged jailbroken (answered) per prompt kind with no defense and with SmoothLLM for each
    (perturbation, q, N); commit the set into the experiment folder ``out``.

    Every distinct prompt (undefended or perturbed copy) is sent to ``generate`` once, in batches of
    ``batch_size`` ordered by length, before the votes are taken (the copies depend on the seeds only).

    Returns:
        The set's folder and its summary.

    Raises:
        ValueError: an unknown perturbation, q outside (0, 100] or N < 1 (named), before any model call.
        FileExistsError: ``out`` can't be an LLM experiment folder (checked before any model call).
    """
    check_experiment(out)
    for name in perturbations:
        get_perturbation(name)
    qs, n_copies = [check_q(q) for q in qs], [check_positive_int(n, "n_copies") for n in n_copies]
    if not perturbations or not qs or not n_copies:
        raise ValueError("perturbations, q and n_copies need at least one value each")
    judge = judge or RefusalJudge()
    settings_grid = [SmoothLLMConfig(name, q, n, batch_size)
                     for name, q, n in itertools.product(perturbations, qs, n_copies)]
    generate = _prefetched(generate, prompts, settings_grid, seed, batch_size)
    undefended = batched_generate(generate, [p["prompt"] for p in prompts], batch_size)
    rows = [{"idx": i, "kind": p["kind"], "prompt": p["prompt"], "perturbation": "none", "q": None, "n_copies": 1,
             "response": undefended[i], "jailbroken": bool(judge(undefended[i]))} for i, p in enumerate(prompts)]
    table = [{"perturbation": "none", "q": None, "n_copies": None, "rate": _rates(rows)}]
    for setting in settings_grid:
        block = _smooth_rows(generate, prompts, undefended, judge, setting, seed)
        rows += block
        table.append({"perturbation": setting.perturbation, "q": setting.q, "n_copies": setting.n_copies,
                      "rate": _rates(block)})
        log.info("smoothllm %s q=%g N=%d: %s", setting.perturbation, setting.q, setting.n_copies, table[-1]["rate"])
    summary = {"n_prompts": len(prompts), "jailbroken_rate": table}
    settings = {"kind": "llm-eval", "perturbations": list(perturbations), "q": qs, "n_copies": n_copies,
                "batch_size": batch_size, "seed": seed}
    path = commit_llm_set(out, "eval", _config(settings, backend or {}, judge, prompts, sources),
                          {"records.jsonl": rows, "summary.json": summary})
    return path, summary

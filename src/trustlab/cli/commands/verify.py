"""``trustlab verify``: certify a trained run's model with bound methods and compare with PGD on the same examples.

For each method the final checkpoint is certified on the first ``--n`` test examples (the prefix ``trustlab attack
--subset`` takes) into ``RUN/certificates/<id>/``. PGD is run on the same examples at the same threat through
``trustlab attack``'s code path (``RUN/attacks/<id>/``; an identical committed evaluation of the same checkpoint
is reused), so the report has the empirical upper bound next to the certified lower bounds. The printed table:
certified accuracy, PGD accuracy, clean accuracy, the mean over examples of the smallest margin lower bound, and
the time per example of each method. An example certified by a method and broken by PGD (EVAL-14) is a soundness
bug: it is printed as an error and the command exits 1, with every record kept for inspection.

Under ``torchrun --nproc_per_node=N`` the ranks share out the certification chunks and PGD's batches; rank 0
commits the record sets (those of one process, but for times) and prints.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from trustlab.cli.parsing import shown

NAME = "verify"
DISTRIBUTED = True  # under torchrun: the chunks (and PGD's batches) are shared out, rank 0 writes and prints
HELP = "certify a trained run's model (IBP, CROWN-IBP, CROWN, alpha-CROWN, LP, MILP, SDP) and compare with PGD"

DEFAULT_METHODS = "ibp,crown-ibp,crown,alpha-crown"
_COLUMNS = ("method", "certified", "pgd", "clean", "margin", "unknown", "ms", "ms_median", "ms_max")
_HEADERS = {"certified": "certified acc", "pgd": "PGD acc", "clean": "clean acc", "margin": "mean min margin LB",
            "unknown": "unknown", "ms": "ms / example", "ms_median": "median ms", "ms_max": "max ms"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from trustlab.device import DEVICES

    p.add_argument("run", help="run folder written by `trustlab train`")
    p.add_argument("--method", default=DEFAULT_METHODS,
                   help=f"bound methods, comma-separated (default {DEFAULT_METHODS})")
    p.add_argument("--eps", type=float, required=True, help="the threat's budget")
    p.add_argument("--p", default="inf", choices=["inf", "2"], help="the threat's norm (default inf)")
    p.add_argument("--n", "--n-examples", dest="n", type=int, default=1000,
                   help="certify the first N test examples of the seeded split (default 1000; the whole split if "
                        "it is smaller); spell it --n-examples under torchrun, whose parser takes --n for its own")
    p.add_argument("--batch-size", type=int, default=256, help="examples bounded together (default 256)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds per example for the solver methods lp (per LP), milp and sdp (default: each "
                        "method's own; milp 60); a solve stopped by it is UNKNOWN, never certified")
    p.add_argument("--intermediate", choices=["interval", "crown", "lp"], default=None,
                   help="where lp and milp take their ReLU (big-M) bounds from (default: lp crown, milp lp)")
    p.add_argument("--pgd-steps", type=int, default=50, help="steps of the PGD comparison (default 50)")
    p.add_argument("--pgd-restarts", type=int, default=1, help="restarts of the PGD comparison (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of PGD's random starts")
    p.add_argument("--root", help="data root")
    p.add_argument("--device", choices=list(DEVICES), default="auto", help="where to compute (default auto)")


def parse_methods(text: str) -> list[str]:
    """The method names of a comma-separated list, in order and without repeats.

    Raises:
        ValueError: an empty list or an unknown name (the message names it and lists the valid ones).
    """
    from trustlab.certify import METHODS

    names = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not names:
        raise ValueError(f"--method names no method; choose from {sorted(METHODS)}")
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown certification method(s) {unknown}; choose from {sorted(METHODS)}")
    return names


def run(args: argparse.Namespace) -> int:
    from trustlab.device import resolve_device
    from trustlab.distributed import distributed
    from trustlab.evaluation import attack_id, attack_run, certify_run
    from trustlab.reports.tables import markdown_table
    from trustlab.threat import LpBall

    names = parse_methods(args.method)
    methods = [_configure(m, args) for m in names]
    for flag, key in (("--time-limit", "time_limit"), ("--intermediate", "intermediate")):
        if getattr(args, key) is not None and not any(key in m.settings() for m in methods):
            raise ValueError(f"{flag} applies to the solver methods (lp, milp, sdp); none of {names} takes it")
    threat = LpBall(args.eps, args.p)
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    run_dir = Path(args.run)
    pgd_params = {"steps": args.pgd_steps, "restarts": args.pgd_restarts}
    with distributed(resolve_device(args.device)) as job:  # one process: no process group
        common = {"subset": args.n, "root": args.root, "device": args.device, "progress": not args.quiet, "job": job}
        summaries = {name: certify_run(run_dir, m, threat, batch_size=args.batch_size, **common)
                     for name, m in zip(names, methods)}
        pgd = attack_run(run_dir, "pgd", threat, pgd_params, batch_size=args.batch_size, seed=args.seed, reuse=True,
                         **common)
    if not job.is_main:
        return 0
    pgd_dir = run_dir / "attacks" / attack_id("pgd", threat, pgd_params, seed=args.seed, subset=args.n,
                                              batch_size=args.batch_size)
    rows = [{"method": m, "certified": s["certified_acc"], "pgd": pgd["robust_acc"], "clean": s["clean_acc"],
             "margin": s["mean_min_margin_lower"], "unknown": s["unknown"], "ms": 1000 * s["seconds_per_example"],
             "ms_median": 1000 * s["seconds_median"], "ms_max": 1000 * s["seconds_max"]}
            for m, s in summaries.items()]
    n = next(iter(summaries.values()))["n"]
    print(f"{shown(args.run)}: {_threat(threat)} on the first "
          f"{n} test examples; PGD-{args.pgd_steps}x{args.pgd_restarts} in {shown(pgd_dir.name)}")
    print(markdown_table(rows, _COLUMNS, headers=_HEADERS,
                         floatfmt={"margin": ".3f", "ms": ".2f", "ms_median": ".2f", "ms_max": ".2f"}, percent={"certified", "pgd", "clean"}), end="")
    broken = _certified_but_broken(run_dir, methods, threat, args.n, pgd_dir)
    if broken:
        print(f"trustlab verify: error: EVAL-14 soundness bug: {json.dumps(broken)} (method -> example idx "
              "certified by it and broken by PGD at the same threat); a certificate is unsound or PGD left the "
              "threat set. Records are kept in RUN/certificates/ and RUN/attacks/.", file=sys.stderr)
        return 1
    return 0


def _configure(name: str, args: argparse.Namespace):
    """The method's configuration: its defaults, with ``--time-limit`` and ``--intermediate`` where it has them."""
    from dataclasses import fields

    from trustlab.certify import METHODS, build_method

    valid = {f.name for f in fields(METHODS[name])}
    params = {k: v for k, v in (("time_limit", args.time_limit), ("intermediate", args.intermediate))
              if v is not None and k in valid}
    return build_method(name, **params)


def _threat(threat) -> str:
    norm = "l_inf" if math.isinf(threat.p) else "l_2"
    return f"{norm} eps={threat.eps:g}"


def _certified_but_broken(run_dir: Path, methods: list, threat, n: int, pgd_dir: Path) -> dict[str, list[int]]:
    """Per method, the examples it certified that the PGD records say were broken (EVAL-14: should be none)."""
    from trustlab.evaluation import certificate_id
    from trustlab.runs import read_records

    broken = {int(r["idx"]) for r in read_records(pgd_dir / "records.jsonl") if not r["robust"]}
    out = {}
    for m in methods:
        folder = run_dir / "certificates" / certificate_id(m, threat, subset=n)
        hits = sorted(int(r["idx"]) for r in read_records(folder / "records.jsonl") if r["certified"]
                      and int(r["idx"]) in broken)
        if hits:
            out[m if isinstance(m, str) else m.name] = hits
    return out

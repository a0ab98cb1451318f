"""``trustlab smooth certify|predict``: randomized smoothing of a trained run's model on its test split.

``trustlab smooth certify RUN --sigma 0.25 --n0 100 --n 10000 --alpha 0.001 --n-examples 500`` runs Cohen et al.'s
CERTIFY on the first 500 test examples and writes one record per example (label, prediction or abstain,
pA_lower, radius, correct, seconds) into ``RUN/smoothing/<id>/``, committed in one rename under the run's lock;
``trustlab smooth predict RUN --sigma 0.25 --n 1000 --alpha 0.001`` does the same with PREDICT (no radius). The
printed table gives certified accuracy at radii 0, 0.5, 1.0, 1.5, 2.0, the average certified radius and the
abstention rate; ``trustlab report`` draws certified accuracy against the radius. Under ``torchrun
--nproc_per_node=N`` the ranks share out the groups of examples and rank 0 commits the records one process writes
(but for their times) and prints. A killed evaluation resumes from its journal (``RUN/smoothing/.<id>.partial/``,
one entry per finished group) when the same command is run again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from trustlab.cli.parsing import add_global_options, shown

NAME = "smooth"
DISTRIBUTED = True  # under torchrun: the example groups are shared out, rank 0 writes and prints
HELP = "randomized smoothing: certify or predict with a run's model under noise (Cohen et al. 2019)"


def _common(p: argparse.ArgumentParser) -> None:
    from trustlab.device import DEVICES

    add_global_options(p, suppress=True)
    p.add_argument("run", help="run folder written by `trustlab train`")
    p.add_argument("--sigma", type=float, required=True,
                   help="noise scale in pixel space: Gaussian std (lambda for uniform and Laplace)")
    p.add_argument("--noise", choices=["gaussian", "uniform", "laplace"], default="gaussian",
                   help="smoothing noise (default gaussian: l2 radius; uniform and laplace: l1 radius)")
    p.add_argument("--n", "--n-samples", dest="n", type=int, default=10_000,
                   help="noise samples per example (default 10000); spell it --n-samples under torchrun, whose "
                        "parser takes --n for its own")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability per example (default 0.001)")
    p.add_argument("--n-examples", type=int, default=500,
                   help="the first N test examples of the seeded split (default 500)")
    p.add_argument("--batch-size", type=int, default=1000, help="noisy inputs per forward pass (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    p.add_argument("--root", help="data root")
    p.add_argument("--device", choices=list(DEVICES), default="auto", help="where to compute (default auto)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from trustlab.cli.parsing import Parser

    sub = p.add_subparsers(dest="smooth_mode", required=True, parser_class=Parser)
    cert = sub.add_parser("certify", help="CERTIFY: a class and a certified radius per example, or abstain")
    _common(cert)
    cert.add_argument("--n0", type=int, default=100, help="selection samples per example (default 100)")
    pred = sub.add_parser("predict", help="PREDICT: a class per example, or abstain")
    _common(pred)


def run(args: argparse.Namespace) -> int:
    from trustlab.device import resolve_device
    from trustlab.distributed import distributed
    from trustlab.evaluation import smoothing_config, smoothing_id, smoothing_run
    from trustlab.reports.tables import markdown_table

    if args.n_examples < 1:
        raise ValueError(f"--n-examples must be >= 1, got {args.n_examples}")
    mode = args.smooth_mode
    n0 = getattr(args, "n0", None)
    settings = dict(sigma=args.sigma, n=args.n, alpha=args.alpha, n0=n0, noise=args.noise, subset=args.n_examples,
                    seed=args.seed)
    with distributed(resolve_device(args.device)) as job:  # one process: no process group
        summary = smoothing_run(Path(args.run), mode, **settings, batch_size=args.batch_size, root=args.root,
                                device=args.device, progress=not args.quiet, job=job)
    if not job.is_main:
        return 0
    folder = smoothing_id(smoothing_config(mode, **settings))
    row = {"sigma": summary["sigma"], "accuracy": summary["accuracy"], "abstain": summary["abstain_rate"],
           "ms": 1000 * summary["seconds_per_example"]}
    columns = ["sigma", "accuracy"]
    if mode == "certify":
        shown_radii = ("0", "0.5", "1", "1.5", "2")
        row.update({f"r={r}": summary["certified_acc"][r] for r in shown_radii})
        row["ACR"] = summary["average_certified_radius"]
        columns += [f"r={r}" for r in shown_radii] + ["ACR"]
    print(f"{shown(args.run)}: smooth {mode} ({summary['noise']}) on the first {summary['n_examples']} test examples "
          f"-> {shown(Path(args.run) / 'smoothing' / folder)}")
    print(markdown_table([row], [*columns, "abstain", "ms"], headers={"ms": "ms / example"},
                         floatfmt={"sigma": "g", "ACR": ".3f", "ms": ".1f"},
                         percent={"accuracy", "abstain", *(c for c in columns if c.startswith("r="))}), end="")
    return 0

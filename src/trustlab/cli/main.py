"""``trustlab {train,attack,matrix,report,optim,demo}``: parse, build, call the library, write the run folder.

Errors print one line on stderr naming the bad value and exit non-zero (2 for bad input); ``--debug`` shows the
traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
from pathlib import Path

from trustlab.errors import TrustlabError

__all__ = ["main", "build_parser"]

log = logging.getLogger("trustlab")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model (standard or adversarial) into a run folder")
    p.add_argument("--config", help="TOML file with TrainConfig keys (flags override it)")
    p.add_argument("--out", required=True, help="run folder to create (or continue with --resume)")
    p.add_argument("--dataset", help="digits | mnist | fashion-mnist | cifar10")
    p.add_argument("--model", help="mlp | cnn-small | cnn-large | preact-resnet18")
    p.add_argument("--defense", help="none | fgsm | fgsm-rs | pgd")
    p.add_argument("--eps", type=float)
    p.add_argument("--p", help="inf or 2")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", help="sgd | momentum | adam | adamw")
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", help="constant | step | cosine | cyclic | one-cycle")
    p.add_argument("--pgd-steps", type=int)
    p.add_argument("--pgd-step-size", type=float)
    p.add_argument("--eps-warmup-epochs", type=int)
    p.add_argument("--keep-best", action="store_true", default=None,
                   help="end with the epoch of best validation PGD accuracy at full eps (early stopping)")
    p.add_argument("--seed", type=int)
    p.add_argument("--val-size", type=int)
    p.add_argument("--subset", type=int, help="quick run: keep N training (and at most N val/test) examples")
    p.add_argument("--eval-batch-size", type=int)
    p.add_argument("--root", help="data root (default: $TRUSTLAB_DATA, then the user cache)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--force-resume", action="store_true", help="resume even if the config changed")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")


def _add_attack(sub) -> None:
    p = sub.add_parser("attack", help="attack a trained run's model on its test split")
    p.add_argument("run", help="run folder written by `trustlab train`")
    p.add_argument("--attack", default="pgd", help="fgsm | pgd | linear")
    p.add_argument("--eps", type=float, required=True)
    p.add_argument("--p", default="inf", help="inf or 2")
    p.add_argument("--steps", type=int, help="PGD steps (default 10)")
    p.add_argument("--step-size", type=float, help="PGD step size (default 2.5 * eps / steps)")
    p.add_argument("--restarts", type=int, help="PGD restarts; each re-attacks only points still robust")
    p.add_argument("--loss", help="ce | margin")
    p.add_argument("--no-random-start", action="store_true", help="PGD from x itself")
    p.add_argument("--subset", type=int, help="attack only the first N test examples of the seeded split")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", help="data root")


def _add_matrix(sub) -> None:
    p = sub.add_parser("matrix", help="train x evaluation robustness matrix with diagnosis and report")
    p.add_argument("--config", help="TOML recipe with [train] and [matrix] tables (flags override it)")
    p.add_argument("--out", help="folder for the runs and the report (default runs/matrix-<dataset>-eps<eps>)")
    p.add_argument("--dataset")
    p.add_argument("--model")
    p.add_argument("--eps", type=float)
    p.add_argument("--p", help="inf or 2")
    p.add_argument("--train", help="comma-separated defenses: none,fgsm,fgsm-rs,pgd")
    p.add_argument("--eval", dest="evals", help="comma-separated evaluations: clean,fgsm,pgd")
    p.add_argument("--epochs", type=int)
    p.add_argument("--subset", type=int, help="quick run: N training (and at most N val/test) examples")
    p.add_argument("--seed", type=int)
    p.add_argument("--root", help="data root")
    p.add_argument("--pgd-steps", type=int, help="evaluation PGD steps (default 40)")
    p.add_argument("--pgd-step-size", type=float, help="evaluation PGD step (default 2.5 * eps / steps)")
    p.add_argument("--restarts", type=int)
    p.add_argument("--eps-grid", help="comma-separated eps values for the accuracy-vs-eps curves")
    p.add_argument("--curve-subset", type=int, help="test examples for curves and the convergence check")
    p.add_argument("--eval-subset", type=int, help="test examples for the matrix (default all)")
    p.add_argument("--no-convergence-check", action="store_true")


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="rebuild tables, plots, Markdown and HTML from run records")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--out", default="report")
    p.add_argument("--eps", type=float, help="threat model of the matrix (default: the most evaluated)")
    p.add_argument("--p", help="inf or 2")
    p.add_argument("--title", default="trustlab report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trustlab", description="Trustworthy ML through optimization.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_attack(sub)
    _add_matrix(sub)
    _add_report(sub)
    o = sub.add_parser("optim", help="optimizer trajectories on the lecture's 2-D objectives")
    o.add_argument("--out", default="runs/optim")
    o.add_argument("--seed", type=int, default=0)
    d = sub.add_parser("demo", help="the main job on the embedded digits data (no files needed)")
    d.add_argument("--out", default="runs/demo")
    return parser


def _cmd_train(args) -> int:
    from trustlab.cli.config import load_toml, merge_options
    from trustlab.runs.records import read_json
    from trustlab.training import TrainConfig, train_run

    file_opts = load_toml(args.config, section="train") if args.config else {}
    saved = Path(args.out) / "config.json"
    if args.resume and saved.exists():  # resume with the run's own config; a file or flags may still override it
        file_opts = {**read_json(saved).get("config", {}), **file_opts}
    opts = merge_options(file_opts, vars(args), TrainConfig.field_names())
    config = TrainConfig.from_dict(opts)
    summary = train_run(config, Path(args.out), resume=args.resume, overwrite=args.overwrite,
                        force_resume=args.force_resume, progress=not args.quiet)
    kept = summary.get("selected_epoch")
    kept = f", weights of epoch {kept} (best validation PGD accuracy)" if config.keep_best and kept else ""
    print(f"{args.out}: test accuracy {summary['test_acc']:.4f} after {summary['epochs']} epochs{kept} "
          f"({summary['train_seconds']:.0f} s of training)")
    return 0


def _cmd_attack(args) -> int:
    from trustlab.evaluation import attack_run
    from trustlab.threat import LpBall

    threat = LpBall(args.eps, args.p)
    params = {"loss": args.loss}
    if args.attack == "pgd":
        params.update(steps=args.steps, step_size=args.step_size, restarts=args.restarts,
                      random_start=False if args.no_random_start else None)
    params = {k: v for k, v in params.items() if v is not None}
    summary = attack_run(Path(args.run), args.attack, threat, params, subset=args.subset,
                         batch_size=args.batch_size, seed=args.seed, root=args.root, progress=not args.quiet)
    norm = "inf" if threat.p == math.inf else "2"
    print(f"{args.run}: {args.attack} (l_{norm}, eps={threat.eps:g}) on {summary['n']} test examples: "
          f"clean {summary['clean_acc']:.4f}, robust {summary['robust_acc']:.4f} ({summary['seconds']:.0f} s)")
    return 0


def _split(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(v.strip() for v in value.split(",") if v.strip())


def _cmd_matrix(args) -> int:
    from trustlab.cli.config import load_toml, merge_options
    from trustlab.evaluation.matrix import MatrixConfig, run_matrix
    from trustlab.training import TrainConfig

    recipe = load_toml(args.config) if args.config else {}
    unknown = sorted(set(recipe) - {"train", "matrix"})
    if unknown:
        raise ValueError(f"unknown tables {unknown} in {args.config}; valid: ['train', 'matrix']")
    flags = vars(args).copy()
    flags["train"], flags["evals"] = _split(args.train), _split(args.evals)
    flags["eps_grid"] = None if args.eps_grid is None else tuple(float(e) for e in _split(args.eps_grid))
    if args.no_convergence_check:
        flags["convergence_check"] = False
    mfields = [f.name for f in dataclasses.fields(MatrixConfig)]
    mopts = merge_options({k.replace("-", "_"): v for k, v in recipe.get("matrix", {}).items()}, flags, mfields)
    for key in ("train", "evals", "eps_grid"):
        if isinstance(mopts.get(key), list):
            mopts[key] = tuple(mopts[key])
    mc = MatrixConfig(**mopts)
    tfields = [f for f in TrainConfig.field_names() if f not in ("defense", "eps", "p")]
    topts = merge_options({k.replace("-", "_"): v for k, v in recipe.get("train", {}).items()},
                          {k: v for k, v in flags.items() if k in tfields}, TrainConfig.field_names())
    base = TrainConfig.from_dict({**topts, "eps": mc.eps, "p": mc.p})
    out = Path(args.out or f"runs/matrix-{base.dataset}-eps{mc.eps:g}")
    print(run_matrix(base, mc, out, progress=not args.quiet).text())
    return 0


def _cmd_report(args) -> int:
    from trustlab.reports.report import build_report

    path = build_report(args.runs, Path(args.out), eps=args.eps, p=args.p, title=args.title)
    print(f"Report: {path} (Markdown: {path.with_suffix('.md')})")
    return 0


def _cmd_optim(args) -> int:
    from trustlab.optim.lecture import run_lecture_demos
    from trustlab.optim.report import write_optim_outputs

    out = Path(args.out)
    rows = run_lecture_demos(out, seed=args.seed)
    md = write_optim_outputs(rows, out)
    print(md)
    print(f"\nFigures and optim.md / optim.json are in {out}/")
    return 0


def _cmd_demo(args) -> int:
    from trustlab.demo import run_demo

    run_demo(Path(args.out), progress=not args.quiet)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    commands = {"train": _cmd_train, "attack": _cmd_attack, "matrix": _cmd_matrix, "report": _cmd_report,
                "optim": _cmd_optim, "demo": _cmd_demo}
    try:
        return commands[args.command](args)
    except (ValueError, TypeError) as e:
        if args.debug:
            raise
        print(f"trustlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (TrustlabError, OSError) as e:
        if args.debug:
            raise
        print(f"trustlab {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

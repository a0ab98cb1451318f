"""``trustlab verify`` end to end on a tiny digits run: certificate records per method, the PGD comparison on the
same examples, the printed table, one-line errors (INP-19), and the EVAL-14 cross-check as an exit status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trustlab.cli.main import main
from trustlab.runs import read_records, write_records
from trustlab.training import TrainConfig, train_run

VERIFY = ["--quiet", "verify", "--eps", "0.02", "--n", "30", "--pgd-steps", "5"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("verify") / "run"
    train_run(TrainConfig(dataset="digits", model="mlp", epochs=4, subset=600, batch_size=50, lr=0.002), out,
              progress=False)
    return out


def _table(out: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_verify_writes_a_record_set_per_method_and_prints_the_comparison(run, capsys):
    assert main([*VERIFY[:2], str(run), *VERIFY[2:], "--method", "ibp,crown-ibp,crown,alpha-crown"]) == 0
    out = capsys.readouterr().out
    table = _table(out)
    assert list(table) == ["method", "ibp", "crown-ibp", "crown", "alpha-crown"]
    assert table["method"] == ["certified acc", "PGD acc", "clean acc", "mean min margin LB", "unknown",
                               "ms / example", "median ms", "max ms"]
    assert "on the first 30 test examples; PGD-5x1 in pgd-linf-eps0.02-restarts1-steps5-" in out
    folders = sorted((run / "certificates").iterdir())
    assert sorted(f.name.split("-linf-")[0] for f in folders) == ["alpha-crown", "crown", "crown-ibp", "ibp"]
    for folder in folders:
        summary = json.loads((folder / "summary.json").read_text())
        extra = ["counterexamples.safetensors"] if summary["falsified"] else []  # the misclassified clean inputs
        assert sorted(p.name for p in folder.iterdir()) == sorted(["config.json", "records.jsonl", "summary.json",
                                                                   *extra])
        method = json.loads((folder / "config.json").read_text())["name"]
        assert table[method][0] == f"{100 * summary['certified_acc']:.1f}%" and summary["n"] == 30
    assert not [p for p in run.rglob(".*") if p.name.endswith(".tmp")]  # committed in one rename each
    (pgd,) = (run / "attacks").iterdir()
    pgd_summary = json.loads((pgd / "summary.json").read_text())
    assert pgd_summary["n"] == 30 and all(row[1] == f"{100 * pgd_summary['robust_acc']:.1f}%"
                                          for name, row in table.items() if name != "method")


def test_a_bad_method_name_is_one_line_naming_the_valid_ones(run, capsys):
    before = sorted(p.name for p in run.rglob("*"))
    assert main(["verify", str(run), "--method", "ibp,crwn", "--eps", "0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("trustlab verify: error: unknown certification method(s) ['crwn']; choose from ['alpha-crown', "
                   "'crown', 'crown-ibp', 'ibp', 'lp', 'milp', 'sdp']")
    assert main(["verify", str(run), "--method", " , ", "--eps", "0.1"]) == 2
    assert "names no method" in capsys.readouterr().err
    assert main(["verify", str(run), "--eps", "0.1", "--n", "0"]) == 2
    assert capsys.readouterr().err.strip() == "trustlab verify: error: --n must be >= 1, got 0"
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing computed, nothing written


def test_a_certified_example_broken_by_pgd_fails_the_command(run, capsys):
    """EVAL-14: doctor the committed PGD records (reused by the next verify) so that a certified example reads as
    broken; verify must say it is a soundness bug and exit 1."""
    args = [*VERIFY[:2], str(run), *VERIFY[2:], "--method", "crown"]
    assert main(args) == 0
    (cert,) = [f for f in (run / "certificates").iterdir() if f.name.startswith("crown-linf")]
    idx = next(r["idx"] for r in read_records(cert / "records.jsonl") if r["certified"])
    (pgd,) = (run / "attacks").iterdir()
    rows = read_records(pgd / "records.jsonl")
    write_records(pgd / "records.jsonl", [{**r, "robust": False} if r["idx"] == idx else r for r in rows])
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "EVAL-14 soundness bug" in err and f'{{"crown": [{idx}]}}' in err


def test_solver_flags_reach_the_solver_methods_and_are_refused_without_one(run, capsys):
    """--time-limit and --intermediate configure lp and milp (the certificate id hashes them); with only bound
    methods they are a one-line usage error."""
    assert main(["--quiet", "verify", str(run), "--method", "crown,lp,milp", "--eps", "0.01", "--n", "1",
                 "--pgd-steps", "5", "--time-limit", "4", "--intermediate", "crown"]) == 0
    configs = [json.loads(p.read_text()) for p in (run / "certificates").glob("*lp-linf-eps0.01-*/config.json")]
    settings = {c["method"]["method"]: c["method"] for c in configs}
    assert settings["lp"]["time_limit"] == 4 and settings["lp"]["intermediate"] == "crown"
    assert settings["milp"]["time_limit"] == 4 and settings["milp"]["intermediate"] == "crown"
    rows = {json.loads(line)["idx"]: json.loads(line)
            for line in next((run / "certificates").glob("milp-*/records.jsonl")).read_text().splitlines()}
    assert len(rows) == 1 and all(len(r["solver"]["status"]) == 9 for r in rows.values())
    capsys.readouterr()
    assert main(["--quiet", "verify", str(run), "--method", "crown", "--eps", "0.01", "--n", "6",
                 "--time-limit", "5"]) == 2
    assert "--time-limit applies to the solver methods" in capsys.readouterr().err

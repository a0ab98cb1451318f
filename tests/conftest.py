"""Shared fixtures: seeded data and tiny models that need no download (FX-SMALL, FX-LIN of reliability-tests.md).

These use scikit-learn's bundled digits directly so that every test module can rely on them without going
through trustlab.data (which has its own tests).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_root() -> Path:
    """The MNIST/Fashion-MNIST IDX files shipped beside the project (or $TRUSTLAB_DATA)."""
    root = Path(os.environ.get("TRUSTLAB_DATA", SHARED_DATA))
    if not (root / "mnist" / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST files not found under {root}; set TRUSTLAB_DATA")
    return root


@pytest.fixture(scope="session")
def digits_xy() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 sklearn digits as (N, 1, 8, 8) float32 in [0, 1] and int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.int64)
    return x, y


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def small_model(digits_xy) -> nn.Module:
    """FX-SMALL: a seeded MLP trained on the first 1500 digits (about 97% accurate on the rest)."""
    torch.manual_seed(0)  # parameter init only; tests never rely on the global RNG afterwards
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    x, y = digits_xy
    return _train(model, x[:1500], y[:1500], epochs=30, seed=0)


@pytest.fixture(scope="session")
def small_cnn(digits_xy) -> nn.Module:
    """A seeded small CNN on digits, for tests that need convolutions."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 32), nn.ReLU(), nn.Linear(32, 10)
    )
    x, y = digits_xy
    return _train(model, x[:1500], y[:1500], epochs=15, seed=1)


@pytest.fixture(scope="session")
def test_batch(digits_xy) -> tuple[torch.Tensor, torch.Tensor]:
    """200 held-out digits (not seen by the fixtures' training)."""
    x, y = digits_xy
    return x[1500:1700].clone(), y[1500:1700].clone()


@pytest.fixture()
def linear_binary() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """FX-LIN: a 2-logit linear model with an analytic robust margin, and points far inside the box.

    Returns the model, x of shape (64, 16) in [0.3, 0.7] and labels from the model's own prediction.
    """
    g = torch.Generator().manual_seed(123)
    lin = nn.Linear(16, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, 16, generator=g))
        lin.bias.copy_(torch.randn(2, generator=g) * 0.1)
    x = 0.3 + 0.4 * torch.rand(64, 16, generator=g)
    y = lin(x).argmax(1).detach()
    return lin.eval(), x, y


# -- headless Chromium (report rendering tests) ------------------------------------------------------
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CONSOLE = re.compile(r":CONSOLE\(|:CONSOLE:|Uncaught|console\.error|Refused to", re.IGNORECASE)


def _find_chromium() -> str | None:
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    return next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary, or a skip saying how to get it (tests install nothing; `make test` does)."""
    found = _find_chromium()
    if found is None:
        pytest.skip("chromium not found; `make test` installs it with apt-get when run as root "
                    "(or: apt-get install chromium)")
    return found


def _render(chromium: str, page: Path, tmp: Path) -> tuple[str, list[str]]:
    """The DOM Chromium rendered from ``page`` and the console lines it logged."""
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'chromium-profile'}", "--enable-logging=stderr",
           "--v=0", "--dump-dom", page.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "HOME": str(tmp)})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, [line for line in done.stderr.splitlines() if CONSOLE.search(line)]


@pytest.fixture(scope="session")
def render_in_chromium(chromium):
    """``(page, tmp) -> (dom, console_lines)``: the page rendered by headless Chromium."""
    return lambda page, tmp: _render(chromium, page, tmp)


def pytest_configure(config):
    np.set_printoptions(precision=4)

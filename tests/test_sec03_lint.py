"""SEC-03: a static scan of every file under src/ for calls that run code from data.

Flags ``torch.load`` without ``weights_only=True``; ``pickle``/``dill``/``joblib``/``marshal`` loads; ``yaml.load``
without a safe loader and ``yaml.unsafe_load``/``full_load``; ``np.load`` with ``allow_pickle`` other than
False; ``eval``/``exec``; ``importlib.import_module``/``__import__`` with a non-literal name; ``subprocess``
with ``shell=True`` and ``os.system``/``os.popen``; ``trust_remote_code=True`` as an argument or default.
Aliases (``import torch as th``, ``from pickle import loads``) are resolved. A finding can be allowed only by
a ``# sec03-allow: <why>`` comment on the flagged line, and the reason must not be empty.

Reference:
    reliability-tests.md SEC-03; Bandit B301/B506, TorchFix TOR102; CVE-2019-6446, CVE-2017-18342,
    CVE-2025-23304.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ALLOW = re.compile(r"#\s*sec03-allow:\s*\S")

UNPICKLERS = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "_pickle.Unpickler",
    "cPickle.load", "cPickle.loads", "dill.load", "dill.loads", "joblib.load", "marshal.load", "marshal.loads",
    "shelve.open", "pandas.read_pickle", "numpy.lib.format.read_array",
}  # fmt: skip
UNSAFE_YAML = {"yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load", "yaml.full_load_all"}
SAFE_YAML_LOADERS = {"yaml.SafeLoader", "yaml.CSafeLoader", "yaml.BaseLoader", "yaml.CBaseLoader"}
SHELLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"}
SUBPROCESS = {
    "subprocess.run", "subprocess.call", "subprocess.check_call", "subprocess.check_output", "subprocess.Popen",
}  # fmt: skip


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted origin, from every import in the file."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    names[a.asname] = a.name
                else:
                    names.setdefault(a.name.split(".")[0], a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``th.serialization.load`` -> ``torch.serialization.load`` (None if not a plain dotted name)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    head = aliases.get(node.id, node.id)
    return ".".join([head, *reversed(parts)])


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _is_const(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _call_finding(call: ast.Call, name: str | None, aliases: dict[str, str]) -> str | None:
    """The reason ``call`` is dangerous, or None."""
    has_star_kwargs = any(kw.arg is None for kw in call.keywords)
    if name in ("torch.load", "torch.serialization.load"):
        if has_star_kwargs or not _is_const(_keyword(call, "weights_only"), True):
            return "torch.load without an explicit weights_only=True"
    if name in UNPICKLERS:
        return f"{name} unpickles arbitrary objects"
    if name in UNSAFE_YAML:
        return f"{name} builds arbitrary objects"
    if name in ("yaml.load", "yaml.load_all"):
        loader = _keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
        if loader is None or _dotted(loader, aliases) not in SAFE_YAML_LOADERS:
            return f"{name} without Loader=yaml.SafeLoader (use yaml.safe_load)"
    if name in ("numpy.load",):
        allow = _keyword(call, "allow_pickle")
        if has_star_kwargs or (allow is not None and not _is_const(allow, False)):
            return "np.load with allow_pickle other than False"
    if name in ("eval", "exec", "builtins.eval", "builtins.exec"):
        return f"{name}() runs code from a string"
    if name in ("importlib.import_module", "__import__", "builtins.__import__", "importlib.__import__"):
        if not call.args or not isinstance(call.args[0], ast.Constant):
            return f"{name} with a non-literal module name (use a closed registry)"
    if name in SHELLS:
        return f"{name} runs a shell"
    if name in SUBPROCESS:
        shell = _keyword(call, "shell")
        if has_star_kwargs or (shell is not None and not _is_const(shell, False)):
            return f"{name} with shell=True"
    if _is_const(_keyword(call, "trust_remote_code"), True):
        return "trust_remote_code=True runs repository code"
    return None


def scan_source(source: str, filename: str = "<string>") -> list[str]:
    """Every finding in ``source`` as ``file:line: reason``, skipping lines allowed with a justification."""
    tree = ast.parse(source, filename=filename)
    aliases = _aliases(tree)
    lines = source.splitlines()
    findings = []
    for node in ast.walk(tree):
        reason = None
        if isinstance(node, ast.Call):
            reason = _call_finding(node, _dotted(node.func, aliases), aliases)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults) :], args.defaults))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            if any(a.arg == "trust_remote_code" and _is_const(d, True) for a, d in pairs):
                reason = "trust_remote_code defaults to True"
        if reason and not ALLOW.search(lines[node.lineno - 1]):
            findings.append(f"{filename}:{node.lineno}: {reason}")
    return findings


def test_sec03_src_has_no_dangerous_calls():
    files = sorted(SRC.rglob("*.py"))
    assert files, f"no Python files under {SRC}"
    findings = []
    for path in files:
        findings += scan_source(path.read_text(encoding="utf-8"), str(path.relative_to(SRC.parent)))
    assert findings == [], "dangerous calls in src/ (fix, or justify with '# sec03-allow: why'):\n" + "\n".join(
        findings
    )


BAD = {
    "torch.load(f)": "weights_only",
    "torch.load(f, weights_only=False)": "weights_only",
    "torch.load(f, weights_only=flag)": "weights_only",
    "torch.load(f, **kw)": "weights_only",
    "import torch as th\nth.load(f, map_location='cpu')": "weights_only",
    "from torch import load\nload(f)": "weights_only",
    "import pickle\npickle.load(f)": "unpickles",
    "from pickle import loads as l\nl(b)": "unpickles",
    "import joblib\njoblib.load(p)": "unpickles",
    "import yaml\nyaml.load(s)": "SafeLoader",
    "import yaml\nyaml.load(s, Loader=yaml.FullLoader)": "SafeLoader",
    "import yaml\nyaml.unsafe_load(s)": "arbitrary objects",
    "import numpy as np\nnp.load(p, allow_pickle=True)": "allow_pickle",
    "import numpy\nnumpy.load(p, allow_pickle=x)": "allow_pickle",
    "eval('1+1')": "runs code",
    "exec(code)": "runs code",
    "import importlib\nimportlib.import_module(name)": "non-literal",
    "__import__(cfg['model'])": "non-literal",
    "import subprocess\nsubprocess.run(cmd, shell=True)": "shell=True",
    "import subprocess as sp\nsp.Popen(cmd, shell=True)": "shell=True",
    "import os\nos.system('ls')": "runs a shell",
    "f(name, trust_remote_code=True)": "trust_remote_code",
    "def load(name, *, trust_remote_code=True):\n    pass": "trust_remote_code",
}


@pytest.mark.parametrize("snippet", list(BAD))
def test_sec03_scanner_catches(snippet):
    findings = scan_source(snippet)
    assert len(findings) == 1 and BAD[snippet] in findings[0], findings


GOOD = """
import io, json, yaml, subprocess, importlib
import numpy as np
import torch
torch.load(io.BytesIO(b), map_location="cpu", weights_only=True)
yaml.safe_load(s)
yaml.load(s, Loader=yaml.SafeLoader)
np.load(p)
np.load(p, allow_pickle=False)
json.loads(s)
subprocess.run(["ls", "-l"], check=True)
subprocess.run(["ls"], shell=False)
importlib.import_module("trustlab.models")
model.eval()
def load(name, *, trust_remote_code=False):
    pass
eval(s)  # sec03-allow: test of the allow comment
"""


def test_sec03_scanner_accepts_safe_code():
    assert scan_source(textwrap.dedent(GOOD)) == []


def test_sec03_allow_comment_needs_a_reason():
    assert scan_source("eval(s)  # sec03-allow:") != []

"""The requests wing (ADR 0024) loads no Airflow: every module under include/retention/requests/, and the CLI
that calls it, import in a fresh interpreter without one ``airflow`` module loaded."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

MODULES = sorted(f"include.retention.requests.{p.stem}" for p in (ROOT / "include" / "retention" / "requests").glob(
    "*.py") if p.stem != "__init__")


def test_requests_and_the_cli_import_no_airflow():
    code = ("import importlib, sys\n"
            f"for name in {[*MODULES, 'include.retention.cli']!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert {"include.retention.requests.erasure_flow", "include.retention.requests.notices"} <= set(MODULES)

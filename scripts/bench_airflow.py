"""`make bench`, target 5: Airflow overhead, DAG file parse time against an empty DAG with the same imports.

    scripts/bench_airflow.py [--repeat N] [--cold N]

For every file in dags/ a twin is generated in a temporary folder: the file's own top-level imports,
then one empty DAG (``with DAG("empty_<name>", schedule=None): pass``). Each file and its twin are
parsed alternately with Airflow's ``DagBag`` on that one file, two ways:

- cold (the dag-processor's case, the target): each parse in a fresh Python process that has
  imported Airflow and ``DagBag`` before the clock starts, as the dag-processor's parser processes
  are forked from a manager that has them; everything else the file imports is imported inside the
  measured parse. ``--cold`` parses each (default 5).
- warm: ``--repeat`` parses each (default 15) in this process, the project's modules (``include.*``)
  dropped from ``sys.modules`` before each, every other module already imported: the cost of the
  file's own body, DAG construction included, with little import time around it.

Medians are compared: ratio = DAG file / empty twin, target < 1.5 (cold).

The orchestration tax (a 13-rule ``retention_sweep`` under the real scheduler) is not measured here;
see docs/benchmarks.md, "Airflow overhead (target 5)".
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.5


def twin_source(path: Path) -> str:
    """The file's top-level imports and one empty DAG."""
    tree = ast.parse(path.read_text())
    imports = [ast.get_source_segment(path.read_text(), node) for node in tree.body
               if isinstance(node, (ast.Import, ast.ImportFrom))]
    return "\n".join([*imports, "from airflow.sdk import DAG", "",
                      f'with DAG(dag_id="empty_{path.stem}", schedule=None):', "    pass", ""])


def parse_once(path: Path) -> tuple[float, int]:
    from airflow.dag_processing.dagbag import DagBag

    for name in [m for m in sys.modules if m == "include" or m.startswith("include.")]:
        del sys.modules[name]
    t0 = time.perf_counter()
    bag = DagBag(dag_folder=str(path), safe_mode=False)
    seconds = time.perf_counter() - t0
    if bag.import_errors:
        raise SystemExit(f"{path.name}: import errors: {bag.import_errors}")
    return seconds, len(bag.dags)


def parse_cold(path: Path) -> float:
    """One parse in a fresh process that imported Airflow first (what a forked parser process starts with)."""
    out = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"}, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def child(path: str) -> None:
    sys.path.insert(0, str(ROOT))
    import airflow  # noqa: F401
    from airflow.dag_processing.dagbag import DagBag

    t0 = time.perf_counter()
    bag = DagBag(dag_folder=path, safe_mode=False)
    seconds = time.perf_counter() - t0
    if bag.import_errors:
        raise SystemExit(f"{path}: import errors: {bag.import_errors}")
    print(json.dumps({"seconds": seconds, "dags": len(bag.dags)}))


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=15, help="warm parses of each file")
    ap.add_argument("--cold", type=int, default=5, help="cold parses (fresh processes) of each file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("AIRFLOW_HOME", tmp)
        os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")
        sys.path.insert(0, str(ROOT))
        import warnings

        warnings.simplefilter("ignore")
        import airflow  # noqa: F401  (imported once, as in the dag-processor)

        files = sorted(p for p in (ROOT / "dags").glob("*.py") if not p.name.startswith("_"))
        print(f"{'DAG file':<22} {'dags':>4} {'cold ms':>8} {'empty ms':>8} {'ratio':>5} {'target':>6}  "
              f"{'warm ms':>8} {'empty ms':>8} {'ratio':>5}", flush=True)
        worst = 0.0
        for path in files:
            twin = Path(tmp) / f"empty_{path.name}"
            twin.write_text(twin_source(path))
            cold_mine, cold_empty = [], []
            for _ in range(args.cold):
                cold_mine.append(parse_cold(path))
                cold_empty.append(parse_cold(twin))
            parse_once(path)  # warm-up: Airflow's own lazy imports, the file system cache
            parse_once(twin)
            mine, empty = [], []
            n_dags = 0
            for _ in range(args.repeat):
                seconds, n_dags = parse_once(path)
                mine.append(seconds)
                empty.append(parse_once(twin)[0])
            cm, ce = statistics.median(cold_mine), statistics.median(cold_empty)
            m, e = statistics.median(mine), statistics.median(empty)
            ratio = cm / ce
            worst = max(worst, ratio)
            print(f"{path.name:<22} {n_dags:>4} {cm * 1000:>8.1f} {ce * 1000:>8.1f} {ratio:>5.2f} "
                  f"{'<' + str(TARGET):>6}  {m * 1000:>8.1f} {e * 1000:>8.1f} {m / e:>5.2f}"
                  f"{'' if ratio < TARGET else '  MISSED'}", flush=True)
        print(f"ratio = median DagBag parse of the file / of an empty DAG with the same imports; cold: {args.cold} "
              f"fresh processes each (the target), warm: {args.repeat} parses each in one process; worst cold "
              f"{worst:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

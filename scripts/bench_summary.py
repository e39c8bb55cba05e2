"""`make bench`'s last step: one table of every target of issue 10, from the results the bench scripts wrote.

    scripts/bench_summary.py [DIR] [--expect NAME ...] [--markdown]

Each bench script given ``--results FILE`` writes there, as JSON, what it printed next to each target:
``{"script", "argv", "seconds", "results": [{"what", "ratio", "op", "target", "met"}, ...], "notes"}``
(``write_results`` below; ``op`` is ``>=``, ``<`` or ``<=``: the ratio must be at least / below / at most
the target; ``null``, with ``met`` ``null``: a ratio only reported, as the orchestration tax). This reads
every ``*.json`` in DIR (default ``artifacts/bench``) and prints one table: script, what was measured,
ratio, target, met or missed; then how many targets were met, and each ``--expect``ed script that left
no results (it failed: its own output above says why). Exits 0; the scripts' own exit statuses are what
``make bench`` returns.
"""

from __future__ import annotations

import argparse
import json
import operator
import sys
import time
from pathlib import Path
from typing import Any

OPS = {">=": operator.ge, "<": operator.lt, "<=": operator.le}


def met(ratio: float, op: str, target: float) -> bool:
    return OPS[op](ratio, target)


def shown(ratio: float, op: str, target: float) -> str:
    """The ratio to two places, or three where two would show the target itself on the other side
    (0.698 missing ">= 0.7" is not shown as 0.70)."""
    text = f"{ratio:.2f}"
    return f"{ratio:.3f}" if met(float(text), op, target) != met(ratio, op, target) else text


def verdict(ratio: float, op: str, target: float, label: str = "ratio ") -> str:
    """``ratio 0.84 (target >= 0.8) met``: how every bench script prints a ratio next to its target."""
    return f"{label}{shown(ratio, op, target)} (target {op} {target:g}) {'met' if met(ratio, op, target) else 'MISSED'}"


def result(what: str, ratio: float, op: str, target: float, **extra: Any) -> dict[str, Any]:
    return {"what": what, "ratio": round(ratio, 4), "op": op, "target": target, "met": met(ratio, op, target),
            **extra}


def write_results(path: str | None, script: str, results: list[dict[str, Any]], started: float,
                  notes: list[str] | None = None) -> None:
    """The script's results (``result(...)`` each) as JSON at ``path`` (nothing without a path)."""
    if not path:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"script": script, "argv": sys.argv[1:], "seconds": round(time.time() - started, 1),
                               "results": results, "notes": notes or []}, indent=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", nargs="?", default="artifacts/bench")
    ap.add_argument("--expect", nargs="*", default=[], help="scripts that should have written results")
    ap.add_argument("--markdown", action="store_true", help="the table as Markdown (for docs/benchmarks.md)")
    args = ap.parse_args()
    files = sorted(Path(args.dir).glob("*.json"))
    runs = [json.loads(f.read_text()) for f in files]
    order = {name: i for i, name in enumerate(args.expect)}
    runs.sort(key=lambda r: order.get(r["script"], len(order)))
    rows = [(r["script"], x) for r in runs for x in r["results"]]
    if args.markdown:
        print("| script | measured | ratio | target | result |\n|---|---|---|---|---|")
        for script, x in rows:
            target = "-" if x["op"] is None else f"{x['op']} {x['target']:g}"
            ratio = f"{x['ratio']:.2f}" if x["op"] is None else shown(x["ratio"], x["op"], x["target"])
            outcome = "reported" if x["met"] is None else "met" if x["met"] else "**missed**"
            print(f"| {script} | {x['what']} | {ratio} | {target} | {outcome} |")
        return 0
    width = max([len(x["what"]) for _, x in rows] + [20])
    col = max([len(script) for script, _ in rows] + [16])
    print(f"\n== make bench: summary of every target ({args.dir}) ==")
    print(f"{'script':<{col}} {'measured':<{width}} {'ratio':>7}  {'target':<8} result")
    for script, x in rows:
        target = "-" if x["op"] is None else f"{x['op']} {x['target']:g}"
        outcome = "reported" if x["met"] is None else "met" if x["met"] else "MISSED"
        ratio = f"{x['ratio']:.2f}" if x["op"] is None else shown(x["ratio"], x["op"], x["target"])
        print(f"{script:<{col}} {x['what']:<{width}} {ratio:>7}  {target:<8} {outcome}")
    for r in runs:
        for note in r.get("notes", []):
            print(f"{r['script']}: {note}")
    targets = [x for _, x in rows if x["met"] is not None]
    missed = sum(not x["met"] for x in targets)
    print(f"{len(targets)} targets: {len(targets) - missed} met, {missed} missed; seconds per script: "
          + ", ".join(f"{r['script']} {r['seconds']:.0f}" for r in runs))
    absent = [name for name in args.expect if name not in {r["script"] for r in runs}]
    if absent:
        print(f"no results from {', '.join(absent)} (failed or not run: see its output above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make bench` at tiny sizes (issue 10, "Done when"): every bench script runs on the machine's PostgreSQL,
MariaDB and moto, checks its own outcome, prints each ratio next to its target and leaves its results for
the one summary table at the end. Speed is not asserted: the ratios only have to be numbers."""

from __future__ import annotations

import json
import math
import operator
import re
import subprocess

import pytest

from scripts.bench_summary import shown
from tests.conftest import ROOT

# 33-67 s here depending on the machine's load (five scripts, two fresh Airflow imports, the demo seeded): the
# slow tier, which `make test` runs last (alone: `make test-slow`)
pytestmark = [pytest.mark.integration, pytest.mark.slow]

# per script: its results file and how many targets it reports at these sizes
EXPECTED = {
    "bench_sweep.py": ("sweep.json", 2 * 2 + 2 + 2),  # 2 sizes x 2 servers, 2 cases' growth, 2 servers' RSS
    "bench_subjects.py": ("subjects.json", 2),
    "bench_s3.py": ("s3.json", 3),
    "bench_airflow.py": ("airflow.json", 1),
    "bench_access.py": ("access.json", 1),
    # 2 servers x (2 sizes x (erasure, access package) + the growth of each + peak RSS + the intake)
    "bench_lookup.py": ("lookup.json", 2 * (2 * 2 + 2 + 1 + 1)),
    "bench_records.py": ("records.json", 2),  # bytes/s against the raw loop, peak RSS against the row group
}
OPS = {">=": operator.ge, "<": operator.lt, "<=": operator.le}


def test_make_bench_at_tiny_sizes(tmp_path):
    out = tmp_path / "bench"
    stale = out / "stale.json"  # an earlier run's file must not reach the summary
    out.mkdir()
    stale.write_text(json.dumps({"script": "bench_old.py", "seconds": 1, "results": [
        {"what": "stale", "ratio": 9.0, "op": ">=", "target": 1, "met": True}]}))
    # BENCH_SIZE=tiny: the sweep at 1,000 and 2,000 rows (delete, interleaved: the two-size targets too), 3
    # subjects, 100 objects and 50 CRM rows, one DAG file parsed once, an access package of 100 and 300 rows
    proc = subprocess.run(["make", "-s", "bench", "BENCH_SIZE=tiny", f"BENCH_OUT={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert not stale.exists()
    text = proc.stdout
    summary = text[text.index("== make bench: summary of every target"):]
    assert "stale" not in summary and "no results from" not in summary

    total = 0
    for script, (name, count) in EXPECTED.items():
        data = json.loads((out / name).read_text())
        assert data["script"] == script
        assert len(data["results"]) == count, (script, data["results"])
        for r in data["results"]:
            assert isinstance(r["ratio"], float) and math.isfinite(r["ratio"]) and r["ratio"] > 0, r
            assert r["op"] in OPS and r["met"] == OPS[r["op"]](r["ratio"], r["target"]), r
            # the summary's row: script, what, the ratio (two places, three where two would look like the target),
            # the target, met or MISSED
            row = (rf"^{re.escape(script)}\s+{re.escape(r['what'])}\s+{shown(r['ratio'], r['op'], r['target'])}\s+"
                   rf"{re.escape(r['op'])} {r['target']:g}\s+{'met' if r['met'] else 'MISSED'}$")
            assert re.search(row, summary, re.M), (row, summary)
        total += count
    met = sum(r["met"] for name, _ in EXPECTED.values() for r in json.loads((out / name).read_text())["results"])
    assert f"{total} targets: {met} met, {total - met} missed" in summary

    # each script's own output puts the ratio next to its target with the verdict
    before = text[:text.index("== make bench: summary")]
    assert len(re.findall(r"^(postgresql|mariadb)\s+\d+ base .* \d\.\d+  >=0\.7 .* (met|MISSED)$", before, re.M)) == 4
    assert len(re.findall(r"^  (postgresql|mariadb) (interleaved delete, ratio 2,000 / 1,000|sweep peak RSS 2,000 / "
                          r"1,000 \(.*\)): \d+\.\d\d+ \(target (>= 1|<= 1\.2)\) (met|MISSED)$", before, re.M)) == 4
    # bench_subjects.py: intake against (a) one request each and (b) row by row; bench_lookup.py: the intake of many
    # people against one at a time, on PostgreSQL and on MariaDB
    assert len(re.findall(r"ratio \d+\.\d\d+ \(target >= (20|100)\) (met|MISSED)$", before, re.M)) == 2 + 2
    assert len(re.findall(r"^(sweep plain|sweep versioned|CRM rows \+ CVs) .* >=0\.8 .* (met|MISSED)$", before,
                          re.M)) == 3
    assert re.search(r"^erasure_request\.py .* <1\.5 .* (met|MISSED)$", before, re.M)
    assert re.search(r"peak RSS 300 / 100 rows: ratio \d\.\d\d+ \(target <= 1\.2\) (met|MISSED)$", before, re.M)
    assert "outcome check: OK" in before
    assert re.search(r"^erasure bytes/s / raw loop bytes/s: ratio \d+\.\d\d+ \(target >= 0\.7\) (met|MISSED)$", before,
                     re.M)
    assert "outcome check: OK (every object read back: nobody else's record changed)" in before

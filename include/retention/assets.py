"""What a sweep run changed, per system: the extra of its asset events (``retention://<system>/swept``).

Read from the run's own ledger entries, so it says what was committed, not what was planned: per system the rows
or objects locked, anonymized and deleted by its rules (``sweep / complete``), those deleted with a parent in
another collection (``cascaded``, counted in the system that holds them, also across databases) and suppressed
identities removed again (``suppress / done``). A system with no change has no entry (and no event); dry runs and
tripped brakes change nothing. Counts and rule ids only, no personal data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

SWEPT_URI = "retention://{system}/swept"
CHANGE_COUNTS = ("locked", "anonymized", "deleted", "cascaded", "suppressed")


def swept_uri(system: str) -> str:
    return SWEPT_URI.format(system=system)


def _details(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value) if value else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _n(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def changes_per_system(entries: Iterable[dict[str, Any]], dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
    """``{system: {"locked", "anonymized", "deleted", "cascaded", "suppressed", "rules", "dag_id", "run_id"}}`` for
    every system the run ``dag_id`` / ``run_id`` changed, from its ledger entries (``Ledger.rows``)."""
    out: dict[str, dict[str, Any]] = {}

    def of(system: str) -> dict[str, Any]:
        return out.setdefault(system, {**dict.fromkeys(CHANGE_COUNTS, 0), "rules": [], "dag_id": dag_id,
                                       "run_id": run_id})

    for row in entries:
        if row.get("dag_id") != dag_id or row.get("run_id") != run_id or not row.get("system"):
            continue
        if row.get("action") == "sweep" and row.get("outcome") == "complete":
            details = _details(row.get("details"))
            own = {k: _n(details.get(k)) for k in ("locked", "anonymized", "deleted")}
            if any(own.values()):
                counts = of(row["system"])
                for k, n in own.items():
                    counts[k] += n
                counts["rules"].append(row.get("rule_id"))
            cascaded = details.get("cascaded") if isinstance(details.get("cascaded"), dict) else {}
            for ref, n in cascaded.items():
                # "system.collection" refs only: "suppression_list" (digests the registry keeps) is no system's
                if _n(n) and "." in str(ref):
                    of(str(ref).split(".", 1)[0])["cascaded"] += _n(n)
        elif row.get("action") == "suppress" and row.get("outcome") == "done" and _n(row.get("count")):
            of(row["system"])["suppressed"] += _n(row.get("count"))
    for counts in out.values():
        counts["rules"] = sorted({r for r in counts["rules"] if r})
    return {system: counts for system, counts in sorted(out.items())
            if any(counts[k] for k in CHANGE_COUNTS)}

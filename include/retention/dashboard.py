"""What the data-retention page shows, read from the ledger / registry database.

Pure functions over a SQLAlchemy engine that return JSON-ready dicts (the Airflow plugin in
``plugins/retention_page.py`` renders them). Only request ids, statuses, dates and counts are
shown: no identity column and no ``*_enc`` column is ever selected. Ledger data comes through
``Ledger`` methods only; the ledger status is a fresh ``Ledger.verify`` on every call (the chain
is walked in chunks, digests are hashed but never returned), never the writable
``ledger_verifications`` history (see docs/adr/0006-keyed-anchored-ledger.md).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import sqlalchemy as sa

from include.retention import registry as reg
from include.retention.clock import utcnow
from include.retention.errors import RetentionError
from include.retention.ledger import CHART_ACTIONS, Ledger, anchor_sinks, read_anchors
from include.retention.settings import settings
from include.retention.sweep import COUNT_COLUMNS
from include.retention.values import Outcome

log = logging.getLogger(__name__)

ANCHORS_ENV = "RETENTION_LEDGER_ANCHORS"  # a directory or s3://bucket/prefix holding the ledger's anchors
SWEEP_COUNTS = COUNT_COLUMNS
CHART_DAYS = 90


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def ensure_schema(engine: sa.Engine) -> None:
    """Create the ledger and registry tables if the database is new (an empty page, not an error)."""
    Ledger(engine, b"").ensure_schema()  # the page computes no digests: no key needed
    reg.Registry(engine, None).ensure_schema()  # the page reads statuses only: no key needed


def _request_view(r: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    due = r["due_at"]
    return {
        "request_id": r["request_id"], "mode": r["mode"], "status": r["status"], "dry_run": bool(r["dry_run"]),
        "source": r["source"], "received_at": _iso(r["received_at"]), "due_at": _iso(due),
        "completed_at": _iso(r.get("completed_at")),
        "days_left": (due.date() - now.date()).days, "overdue": due < now and r["status"] in reg.OPEN_STATUSES,
        "attempts": r["attempts"], "dag_id": r["dag_id"], "run_id": r["run_id"], "systems": r["systems"],
    }


def open_requests(engine: sa.Engine, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Open subject requests, overdue first, then by due date; status per system."""
    now = now or utcnow()
    registry = reg.Registry(engine, None)
    waiting = registry.recipients.unconfirmed(with_notes=True)  # the reason, e.g. no connection configured
    out = [{**_request_view(r, now), "unconfirmed_recipients": waiting.get(r["request_id"], [])}
           for r in registry.listing(open_only=True)]
    out.sort(key=lambda r: (not r["overdue"], r["due_at"], r["request_id"]))
    return out


def recent_requests(engine: sa.Engine, now: dt.datetime | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """The latest closed requests (complete, rejected ...), newest first: what was done, not who."""
    now = now or utcnow()
    return [_request_view(r, now) for r in reg.Registry(engine, None).listing(open_only=False, limit=limit)]


def last_sweeps(engine: sa.Engine) -> list[dict[str, Any]]:
    """The latest ``sweep`` ledger entry of each rule with its counts (would-be counts if not applied)."""
    out = []
    for r in Ledger(engine, b"").last_sweeps():
        details = _details(r["details"])
        would = details.get("would") if isinstance(details.get("would"), dict) else {}
        counts = {k: _int(details.get(k, would.get(k))) for k in SWEEP_COUNTS}
        out.append({
            "rule_id": r["rule_id"], "system": r["system"], "collection": r["collection"], "outcome": r["outcome"],
            "dry_run": r["outcome"] == Outcome.DRY_RUN, "applied": r["outcome"] == Outcome.COMPLETE, "counts": counts,
            "total": _int(details.get("total")), "recorded_at": r["recorded_at"], "dag_id": r["dag_id"],
            "run_id": r["run_id"], "seq": r["seq"],
        })
    return out


def actions_per_day(engine: sa.Engine, now: dt.datetime | None = None, days: int = CHART_DAYS) -> dict[str, Any]:
    """Rows / subjects acted on per day and action over the last ``days`` days (today included)."""
    now = now or utcnow()
    first = now.date() - dt.timedelta(days=days - 1)
    per_day = {(first + dt.timedelta(days=i)).isoformat(): dict.fromkeys(CHART_ACTIONS, 0) for i in range(days)}
    for (day, action), n in Ledger(engine, b"").actions_per_day(first, CHART_ACTIONS).items():
        if day in per_day:
            per_day[day][action] += n
    series = [{"day": d, "counts": c, "total": sum(c.values())} for d, c in per_day.items()]
    totals = {a: sum(p["counts"][a] for p in series) for a in CHART_ACTIONS}
    return {"days": days, "from": first.isoformat(), "to": now.date().isoformat(), "actions": list(CHART_ACTIONS),
            "series": series, "totals": totals, "max": max((p["total"] for p in series), default=0)}


FORECAST_DAYS = 90  # the forecast chart: as many days ahead as the actions chart shows behind
FORECAST_HORIZONS = (7, 30, 90)
FORECAST_TTL_ENV = "RETENTION_FORECAST_CACHE_SECONDS"  # how long a forecast is reused (default 900 s)
_forecast_cache: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
_forecast_failed: dict[str, tuple[float, dict[str, Any]]] = {}  # day/days -> the last failure (shown, not "pending")
FORECAST_FAILED_TTL = 60.0


def forecast(now: dt.datetime | None = None, days: int = FORECAST_DAYS, *, policy: Any = None,
             store_for: Any = None) -> dict[str, Any]:
    """What the rules will lock, anonymize and delete per day over the next ``days`` days (the chart
    beside the past 90 days) and within 7 / 30 / 90 days per rule, from the stores, read-only
    (``include.retention.forecast``). Counts and rule ids only. Cached per policy and day for
    ``RETENTION_FORECAST_CACHE_SECONDS``; a store that cannot be planned is named in ``problems``,
    and a forecast that cannot run at all is ``ok: False`` with the reason, never an error page.
    """
    import time

    from include.retention import forecast as fc

    now = now or utcnow()
    now = now if now.tzinfo else now.replace(tzinfo=dt.UTC)
    runtime = None
    try:
        if policy is None:
            from include.retention.policy import load_policy
            from include.retention.runtime import policy_path

            policy = load_policy(policy_path())
        cache_key = (policy.digest, f"{now.date().isoformat()}/{days}")
        ttl = settings().forecast_cache_seconds
        cached = _forecast_cache.get(cache_key)
        if store_for is None and cached and time.monotonic() - cached[0] < ttl:
            return cached[1]
        if store_for is None:
            from include.retention.runtime import Runtime, env_resolver

            runtime = Runtime(policy, env_resolver, key=b"")  # planning computes no digest: no key needed
            store_for = runtime.store
        horizons = sorted({*(h for h in FORECAST_HORIZONS if h <= days), days})
        result = fc.forecast(policy, store_for, now, horizons, per_day=True)
    except Exception as exc:  # noqa: BLE001 - the page shows the reason; driver text can hold data: name only
        problem = str(exc) if isinstance(exc, RetentionError) else type(exc).__name__
        log.warning("forecast for the data-retention page failed: %s", problem)
        failed = {"ok": False, "problem": f"no forecast: {problem}", "days": days, "series": [], "rules": []}
        _forecast_failed[f"{now.date().isoformat()}/{days}"] = (time.monotonic(), failed)
        return failed
    finally:
        if runtime is not None:
            runtime.close()
    view = {
        "ok": not result["errors"], "days": days, "from": (now + dt.timedelta(days=1)).date().isoformat(),
        "to": (now + dt.timedelta(days=days)).date().isoformat(), "actions": list(fc.ACTIONS),
        "series": result["series"], "max": result["max"], "backlog": result["backlog"],
        "totals": result["totals"],
        "rules": [{"rule_id": r["rule_id"], "collection": r["collection"], "category": r["category"],
                   "now": r.get("now"), "horizons": r.get("horizons", []), "error": r["error"]}
                  for r in result["rules"]],
        "problems": [f"{r['rule_id']}: {r['error']}" for r in result["rules"] if r["error"]],
    }
    if runtime is not None:
        _forecast_cache[cache_key] = (time.monotonic(), view)
    return view


_forecast_lock = __import__("threading").Lock()
_forecast_worker: Any = None


def forecast_for_page(now: dt.datetime | None = None, wait: float | None = None) -> dict[str, Any]:
    """The forecast without holding the page up: computed in the background (one at a time), waited for
    ``wait`` seconds (``RETENTION_FORECAST_WAIT_SECONDS``, default 5); until then the page says it is coming and
    fetches it (``GET /retention/api/forecast``)."""
    import threading
    import time

    global _forecast_worker
    wait = settings().forecast_wait_seconds if wait is None else wait
    ttl = settings().forecast_cache_seconds
    day = f"{(now or utcnow()).date().isoformat()}/{FORECAST_DAYS}"
    fresh = [v for (_digest, d), (at, v) in list(_forecast_cache.items()) if d == day and time.monotonic() - at < ttl]
    with _forecast_lock:
        if _forecast_worker is None or not _forecast_worker.is_alive():
            _forecast_worker = threading.Thread(target=forecast, args=(now,), name="retention-forecast", daemon=True)
            _forecast_worker.start()
        worker = _forecast_worker
    if fresh and worker is not None:
        return fresh[-1]  # the worker refreshes the cache only when the policy or the day changed
    worker.join(wait)
    fresh = [v for (_digest, d), (at, v) in list(_forecast_cache.items()) if d == day and time.monotonic() - at < ttl]
    if fresh:
        return fresh[-1]
    failed = _forecast_failed.get(day)
    if failed and not worker.is_alive() and time.monotonic() - failed[0] < FORECAST_FAILED_TTL:
        return failed[1]  # the last try failed: say why rather than "being computed"
    return {"ok": None, "pending": True, "problem": "the forecast is being computed: it appears here when ready",
            "days": FORECAST_DAYS, "series": [], "rules": [], "problems": []}


def anchors_location() -> str | None:
    """Where the ledger's anchors are (``RETENTION_LEDGER_ANCHORS``), if configured."""
    return settings().ledger_anchors


def verification(engine: sa.Engine, key: bytes | None, anchors: str | None = None,
                 record: bool = False) -> dict[str, Any]:
    """A fresh walk of the chain (and its anchors): the only source of the page's ledger status.

    Without the key the chain cannot be checked: the status says so (``ok`` None), never "intact".
    """
    empty = {"entries": 0, "first_broken_seq": None, "unreconciled": [], "unreconciled_count": 0,
             "anchors_checked": 0, "head_seq": None, "verified_at": None, "anchors": anchors,
             "key_id": None, "warnings": []}
    if not key:
        return {**empty, "ok": None,
                "problem": "cannot verify: no HMAC key (RETENTION_HMAC_KEY or connection 'retention_keys')"}
    try:  # anchors first: an unreachable or unreadable anchor store is a failed check, not an error page
        found = [read_anchors(sink) for sink in anchor_sinks(anchors)] if anchors else None
    except RetentionError as exc:
        log.warning("ledger anchors unreadable: %s", exc)
        return {**empty, "ok": False, "problem": str(exc)}
    except Exception as exc:  # noqa: BLE001 - S3 / file system errors of any kind
        log.warning("ledger anchors at %s unreachable: %s", anchors, type(exc).__name__)
        return {**empty, "ok": False, "problem": f"cannot read the anchors at {anchors} ({type(exc).__name__})"}
    result = Ledger(engine, key).verify(record=record, anchors=found)
    return {**result.as_dict(), "anchors": anchors}


def verify_now(engine: sa.Engine, key: bytes | None = None, anchors: str | None = None) -> dict[str, Any]:
    """Walk the ledger's hash chain now and record it in the history; returns the result."""
    ensure_schema(engine)
    result = verification(engine, key, anchors, record=bool(key))
    log.info("ledger verified from the data-retention page: ok=%s, %s entries", result["ok"], result["entries"])
    return result


def open_findings(engine: sa.Engine) -> list[dict[str, Any]]:
    """Open discovery findings (data_map_drift): place, kind, classifier, hit rate, sample size; never a value."""
    from include.retention.findings import FindingStore, place

    return [{"finding_id": r["finding_id"], "place": place(r), "kind": r["kind"], "classifier": r["classifier"],
             "hit_rate": r["hit_rate"], "sample_size": r["sample_size"], "first_seen": _iso(r["first_seen"]),
             "last_seen": _iso(r["last_seen"])} for r in FindingStore(engine).open_findings()]


def running_work(engine: sa.Engine, now: dt.datetime | None = None) -> dict[str, Any]:
    """Sweeps running now, per rule: planned rows, done so far, the time left (``include.retention.progress``,
    from the run's ledger intents). Rule ids, counts and times only."""
    from include.retention.progress import running_sweeps

    now = now or utcnow()
    ensure_schema(engine)
    return {"generated_at": _iso(now), "sweeps": [p.as_dict() for p in running_sweeps(Ledger(engine, b""), now)]}


def summary(engine: sa.Engine, now: dt.datetime | None = None, *, key: bytes | None = None,
            anchors: str | None = None) -> dict[str, Any]:
    """Everything the page shows, as one JSON-ready dict (the ledger status verified afresh)."""
    now = now or utcnow()
    ensure_schema(engine)
    requests = open_requests(engine, now)
    return {
        "generated_at": _iso(now),
        "requests": {"open": len(requests), "overdue": sum(r["overdue"] for r in requests),
                     "due_within_7_days": sum(not r["overdue"] and r["days_left"] <= 7 for r in requests),
                     "items": requests},
        "recent_requests": recent_requests(engine, now),
        "sweeps": last_sweeps(engine),
        "running": running_work(engine, now),
        "findings": open_findings(engine),
        "chart": actions_per_day(engine, now),
        "forecast": forecast_for_page(now),
        "verification": verification(engine, key, anchors),
    }


def chart_bars(chart: dict[str, Any], width: int = 900, height: int = 200) -> dict[str, Any]:
    """Geometry of the stacked bar chart (one bar per day, one segment per action) for an SVG."""
    series, top = chart["series"], max(chart["max"], 1)
    slot = width / max(len(series), 1)
    bars = []
    for i, point in enumerate(series):
        y, segments = float(height), []
        for action in chart["actions"]:
            n = point["counts"][action]
            if n:
                h = max(n / top * height, 1.0)
                y -= h
                segments.append({"action": action, "n": n, "x": round(i * slot + 1, 2), "y": round(y, 2),
                                 "w": round(max(slot - 2, 1), 2), "h": round(h, 2)})
        last = i == len(series) - 1
        bars.append({"day": point["day"], "total": point["total"], "counts": point["counts"], "segments": segments,
                     "x": round(i * slot, 2), "w": round(slot, 2), "label": i % 15 == 0 or last,
                     "label_x": round((i + 1) * slot if last else i * slot, 2), "anchor": "end" if last else "start"})
    return {"width": width, "height": height, "max": chart["max"], "bars": bars}


def _details(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


RECEIPT_DAG_IDS = ("erasure_request", "erasure_intake", "access_request")  # the runs that carry requests
RUN_ENTRY_LIMIT = 500


def run_receipts(engine: sa.Engine, dag_id: str, run_id: str, limit: int = RUN_ENTRY_LIMIT) -> dict[str, Any]:
    """What one DAG run did for its requests (the DAG-run page's view): each request the run carries, with its
    receipt's statuses, counts per collection, exceptions and ledger entry numbers, then the run's ledger entries
    (action, outcome, where, count). Request ids, statuses, dates and counts only: no identity column, no ``*_enc``
    column, no entry details (they hold digests), and of a receipt only the fields named here (an access
    receipt's link never)."""
    from include.retention.requests.receipts import collection_lines, line_text

    ensure_schema(engine)
    t = reg.requests
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.c.request_id, t.c.mode, t.c.status, t.c.dry_run, t.c.received_at, t.c.due_at,
                                      t.c.completed_at)
                            .where(t.c.dag_id == dag_id, t.c.run_id == run_id).order_by(t.c.request_id)).all()
    registry = reg.Registry(engine, None)
    ids = [r.request_id for r in rows]
    receipts, states = registry.receipts_many(ids), registry.systems.of_many(ids)
    out = []
    for r in rows:
        receipt = receipts.get(r.request_id) or {}
        systems = receipt.get("systems") if isinstance(receipt.get("systems"), dict) else {}
        lines = []
        for name in sorted(set(systems) | set(states.get(r.request_id, {}))):
            entry = systems.get(name) or {}
            status = entry.get("status") or states.get(r.request_id, {}).get(name, {}).get("status")
            ledger = entry.get("ledger") if isinstance(entry.get("ledger"), dict) else {}
            per = collection_lines(entry) if entry else {}
            lines.append({"system": name, "status": status, "verified": bool(entry.get("verified")),
                          "ledger_seq": _int(ledger.get("seq")),
                          "collections": [{"collection": c, "text": line_text(v)} for c, v in per.items()]})
        out.append({
            "request_id": r.request_id, "mode": r.mode, "status": r.status, "dry_run": bool(r.dry_run),
            "received_at": _iso(r.received_at), "due_at": _iso(r.due_at), "completed_at": _iso(r.completed_at),
            "has_receipt": bool(receipt), "verification": receipt.get("verification"), "systems": lines,
            "exceptions": [{k: e.get(k) for k in ("system", "collection", "reason", "items")}
                           for e in receipt.get("exceptions") or [] if isinstance(e, dict)],
            "ledger_seqs": [s for s in ((receipt.get("proof") or {}).get("ledger_seqs") or []) if _int(s) is not None],
        })
    entries, more = [], 0
    for row in Ledger(engine, b"").rows(dag_id=dag_id, run_id=run_id):
        if len(entries) >= limit:
            more += 1
            continue
        entries.append({"seq": row["seq"], "recorded_at": row["recorded_at"], "request_id": row.get("request_id"),
                        "action": row.get("action"), "outcome": row.get("outcome"), "system": row.get("system"),
                        "collection": row.get("collection"), "rule_id": row.get("rule_id"),
                        "count": _int(row.get("count"))})
    return {"dag_id": dag_id, "run_id": run_id, "carries_requests": dag_id in RECEIPT_DAG_IDS, "requests": out,
            "entries": entries, "more_entries": more}

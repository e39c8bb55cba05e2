"""Receipts of subject requests: JSON for machines, Markdown for people. No identity beyond the request id."""

from __future__ import annotations

import datetime as dt
from typing import Any


def _iso(value: Any) -> str | None:
    return value.isoformat() + "Z" if isinstance(value, dt.datetime) else value


def build_receipt(request: dict[str, Any], systems: dict[str, dict[str, Any]], expected: list[str],
                  policy_digest: str) -> dict[str, Any]:
    out_systems, exceptions = {}, []
    for name in expected:
        state = systems.get(name, {"status": "not started", "counts": {}})
        counts = state.get("counts") or {}
        for coll, per in (counts.get("collections") or {}).items():
            for key, n in per.items():
                if key.startswith("exception:"):
                    exceptions.append({"system": name, "collection": coll, "reason": key.split(":", 1)[1],
                                       "items": n, "handled_as": "kept and restricted (GDPR Art. 17(3))"})
        out_systems[name] = {
            "status": state.get("status"),
            "verified": state.get("status") in ("verified", "recorded"),
            "verified_at": _iso(state.get("verified_at")),
            "attempts": state.get("attempts"),
            "collections": counts.get("collections") or {},
            "removed_along": counts.get("removed_along") or {},
            # what was looked for where: a system never claims "nothing left" for what it did not search
            "searched": counts.get("searched") or {},
        }
    all_verified = all(s["verified"] for s in out_systems.values())
    return {
        "request_id": request["request_id"],
        "mode": request["mode"],
        "dry_run": bool(request["dry_run"]),
        "status": request["status"],
        "received_at": _iso(request["received_at"]),
        "due_at": _iso(request["due_at"]),
        "completed_at": _iso(request.get("completed_at")),
        "policy_digest": policy_digest,
        "systems": out_systems,
        "exceptions": exceptions,
        "verification": ("every system re-scanned: nothing of the subject left except the exceptions listed"
                         if all_verified and not request["dry_run"] else
                         "dry run: nothing was changed" if request["dry_run"] else
                         "not every system verified: the request stays open and is retried"),
    }


def render_markdown(receipt: dict[str, Any]) -> str:
    lines = [
        f"# Receipt for request {receipt['request_id']}",
        "",
        f"- mode: **{receipt['mode']}**{' (dry run)' if receipt['dry_run'] else ''}",
        f"- status: **{receipt['status']}**",
        f"- received: {receipt['received_at']}; due: {receipt['due_at']}; completed: {receipt['completed_at'] or '-'}",
        f"- policy digest: `{receipt['policy_digest'][:16]}`",
        f"- verification: {receipt['verification']}",
        "",
        "| system | status | collection | counts |",
        "|---|---|---|---|",
    ]
    for name, system in receipt["systems"].items():
        colls = system["collections"] or {"-": {}}
        for coll, counts in colls.items():
            text = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing found"
            lines.append(f"| {name} | {system['status']} | {coll} | {text} |")
        for target, n in (system.get("removed_along") or {}).items():
            what = "digests kept (suppression)" if target == "suppression_list" else "removed with their rows"
            lines.append(f"| {name} | {system['status']} | {target} | {what} {n} |")
    if receipt["exceptions"]:
        lines += ["", "## Exceptions (kept, restricted)", ""]
        lines += [f"- {e['system']} / {e['collection']}: {e['items']} item(s), {e['reason']}, {e['handled_as']}"
                  for e in receipt["exceptions"]]
    searched = [(name, coll, kinds) for name, system in receipt["systems"].items()
                for coll, kinds in (system.get("searched") or {}).items()]
    if searched:
        lines += ["", "## Searched", ""]
        lines += [f"- {coll}: {', '.join(kinds)}" for _name, coll, kinds in searched]
    return "\n".join(lines) + "\n"

"""Receipts of subject requests: JSON for machines, Markdown for people. No identity beyond the request id.

A receipt proves itself: per system it names the ledger entry (sequence number and keyed entry
hash) that recorded the action, and ``verify_receipt`` checks it against the ledger: the entry
exists, is this request's and this system's, holds the same counts, carries the same hash, and
the chain (and its anchors) verifies up to it. Counts and digests only: no personal data.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from include.retention.values import Outcome

# What ``record()`` counts into a ledger entry's ``count`` (include/retention/requests/erasure_flow.py).
COUNTED = ("deleted", "anonymized", "masked", "restricted", "deleted_with_parent")
PROOF_FORMAT = "retention-receipt-proof/1"
# What leaves or changes a record in a system, so that the copies in its backups differ from it.
CHANGED = ("deleted", "with_parent", "anonymized", "masked")


def _iso(value: Any) -> str | None:
    return value.isoformat() + "Z" if isinstance(value, dt.datetime) else value


def counted_total(collections: dict[str, dict[str, int]]) -> int:
    """The ledger entry's ``count`` for these per-collection counts."""
    return sum(n for per in collections.values() for k, n in per.items() if k in COUNTED)


def ledger_proof(ledger: Any, request_id: str, mode: str, dry_run: bool) -> dict[str, dict[str, Any]]:
    """Per system: the latest ledger entry that recorded this request's action there (``record()``)."""
    return ledger_proofs(ledger, [request_id], mode, dry_run).get(request_id, {})


def ledger_proofs(ledger: Any, request_ids: list[str], mode: str, dry_run: bool
                  ) -> dict[str, dict[str, dict[str, Any]]]:
    """``ledger_proof`` of many requests (request id -> system -> proof), read in one SELECT per 500 requests."""
    outcome = Outcome.DRY_RUN if dry_run else Outcome.VERIFIED
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for rid, rows in ledger.requests_with_entry(request_ids, action=mode, outcome=outcome).items():
        for row in rows:  # oldest first: the latest entry of a system wins
            if row["system"]:
                found.setdefault(rid, {})[row["system"]] = {
                    "seq": int(row["seq"]), "entry_hash": row["entry_hash"], "count": int(row["count"]),
                    "outcome": outcome, "recorded_at": row["recorded_at"]}
    return found


def collection_lines(system: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per collection of one system's receipt entry, each record once: ``deleted`` (matched), ``with_parent``
    (rows or objects that went with a deleted row: the store's real count of the cascade where it reported one,
    ``removed_along``, else the count taken before the delete, ``deleted_with_parent``: the same records, never
    both), ``anonymized`` / ``masked`` / ``restricted`` / ``lifted``, ``kept:<reason>`` (exceptions),
    ``nullified`` (kept, reference cleared), ``changed_meanwhile`` (claimed, changed before the statement, left
    alone) and, for the suppression list, ``digests``."""
    along = dict(system.get("removed_along") or {})
    out: dict[str, dict[str, int]] = {}
    for ref, per in (system.get("collections") or {}).items():
        line = out.setdefault(ref, {})
        for key, n in per.items():
            if key == "deleted_with_parent":
                continue
            name = "kept:" + key.split(":", 1)[1] if key.startswith("exception:") else key
            line[name] = line.get(name, 0) + n
        cascade = along.pop(ref, None)
        cascade = cascade if cascade is not None else per.get("deleted_with_parent", 0)
        if cascade:
            line["with_parent"] = cascade
    for key, n in along.items():
        if key == "suppression_list":
            out.setdefault(key, {})["digests"] = n
        elif key.endswith(":nullified"):
            line = out.setdefault(key.rsplit(":", 1)[0], {})
            line["nullified"] = line.get("nullified", 0) + n
        elif key.endswith(":changed_meanwhile"):
            line = out.setdefault(key.split(":", 1)[0], {})
            line["changed_meanwhile"] = line.get("changed_meanwhile", 0) + n
        else:
            line = out.setdefault(key, {})
            line["with_parent"] = line.get("with_parent", 0) + n
    return out


def records_left(line: dict[str, int]) -> int:
    """How many records of a collection left it (matched or with their parent)."""
    return line.get("deleted", 0) + line.get("with_parent", 0)


def line_text(line: dict[str, int]) -> str:
    """``deleted 7 (1 matched, 6 with the rows they belong to)``, ``kept and restricted 2 (legal_hold)`` ..."""
    parts = []
    deleted, along = line.get("deleted", 0), line.get("with_parent", 0)
    if deleted and along:
        parts.append(f"deleted {deleted + along} ({deleted} matched, {along} with the rows they belong to)")
    elif deleted:
        parts.append(f"deleted {deleted}")
    elif along:
        parts.append(f"deleted {along} with the rows they belong to")
    if line.get("objects_rewritten"):  # records inside S3 objects (ADR 0021): the objects were rewritten without them
        inside = f"inside {line['objects_rewritten']} object(s), rewritten"
        parts = [f"{parts[0]} records {inside}"] if deleted else [f"records changed {inside}"]
    for key in ("anonymized", "masked", "restricted", "lifted"):
        if line.get(key):
            parts.append(f"{key} {line[key]}")
    if line.get("objects_locked"):  # S3 cannot lock part of an object: its other records are restricted too
        parts.append(f"in {line['objects_locked']} object version(s) locked whole, with "
                     f"{line.get('others_restricted', 0)} record(s) of other people (over-restricted, never changed)")
    for key, n in sorted(line.items()):
        if key.startswith("kept:"):
            parts.append(f"kept and restricted {n} ({key[5:]})")
    if line.get("nullified"):
        parts.append(f"kept {line['nullified']}, reference cleared")
    if line.get("changed_meanwhile"):
        parts.append(f"left alone {line['changed_meanwhile']} (changed before the statement ran)")
    if line.get("digests"):
        parts.append(f"{line['digests']} keyed digest(s) kept, no plaintext")
    known = {"deleted", "with_parent", "anonymized", "masked", "restricted", "lifted", "nullified",
             "changed_meanwhile", "digests", "objects_rewritten", "objects_locked", "others_restricted"}
    parts += [f"{k} {n}" for k, n in sorted(line.items()) if k not in known and not k.startswith("kept:")]
    return "; ".join(parts) or "nothing found"


def backup_statements(policy: Any, request: dict[str, Any], systems: list[str]) -> list[dict[str, Any]]:
    """For an erasure: per system it changed, when the copies in its backups expire (the request's
    completion + the system's ``backups.retention``) and what a restore does; or that the data map declares
    no backups for it."""
    from include.retention.describe import period_text
    from include.retention.policy import parse_duration

    if policy is None or request.get("mode") != "erase" or request.get("dry_run"):
        return []
    completed = request.get("completed_at")
    out = []
    for name in systems:
        spec = policy.systems.get(name)
        if spec is None:
            continue
        backups = spec.backups
        if backups is None:
            out.append({"system": name, "declared": False,
                        "statement": f"backups of {name}: not declared in the data map"})
            continue
        period = period_text(backups.retention)
        if isinstance(completed, dt.datetime):
            by = (completed + parse_duration(backups.retention)).date().isoformat()
            when = f"expire by {by} (completion + {period})"
        else:
            by, when = None, f"expire {period} after the request completes"
        restore = ("a restore replays the completed erasures before use" if backups.restore == "replay" else
                   "a restored copy is swept by the retention rules")
        out.append({"system": name, "declared": True, "retention": backups.retention, "expires_by": by,
                    "restore": backups.restore,
                    "statement": f"copies in backups of {name} ({backups.where}) {when}; {restore}"})
    return out


def lookup_of(policy: Any, searched: dict[str, list[str]]) -> dict[str, str]:
    """Per searched collection ref: ``index`` where every identity field declares ``lookup: indexed`` (the
    candidates come through the digest column, ADR 0022), else ``full read`` (every item is read)."""
    out = {}
    for ref in searched:
        system, _, name = ref.partition(".")
        coll = policy.systems[system].collections.get(name) if system in policy.systems else None
        fields = [f for _, f in coll.identity_fields()] if coll is not None else []
        out[ref] = "index" if fields and all(f.lookup == "indexed" for f in fields) else "full read"
    return out


def build_receipt(request: dict[str, Any], systems: dict[str, dict[str, Any]], expected: list[str],
                  policy_digest: str, ledger_entries: dict[str, dict[str, Any]] | None = None,
                  policy: Any = None) -> dict[str, Any]:
    """The receipt; ``ledger_entries`` (from ``ledger_proof``) adds each system's ledger seq and entry hash;
    ``policy`` (the data map) adds the backup statement of each system the erasure reached."""
    out_systems, exceptions = {}, []
    handled = ("kept unchanged, not corrected (legal hold or a lock that is not the person's own)"
               if request.get("mode") == "rectify" else "kept and restricted (GDPR Art. 17(3))")
    for name in expected:
        state = systems.get(name, {"status": "not started", "counts": {}})
        counts = state.get("counts") or {}
        for coll, per in (counts.get("collections") or {}).items():
            for key, n in per.items():
                if key.startswith("exception:"):
                    exceptions.append({"system": name, "collection": coll, "reason": key.split(":", 1)[1],
                                       "items": n, "handled_as": handled})
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
        if policy is not None:  # how each searched collection was read: by the digest index or in full
            out_systems[name]["lookup"] = lookup_of(policy, out_systems[name]["searched"])
        out_systems[name]["records_left"] = {ref: records_left(line) for ref, line
                                             in collection_lines(out_systems[name]).items() if records_left(line)}
        if ledger_entries is not None:
            out_systems[name]["ledger"] = ledger_entries.get(name)
    # the systems whose data the request deleted or masked (objects removed along included): their backups matter
    changed = {ref.partition(".")[0] for s in out_systems.values() for ref, line in collection_lines(s).items()
               if any(line.get(k) for k in CHANGED)}
    reached = [name for name in expected if name in changed] + sorted(changed - set(expected))
    all_verified = all(s["verified"] for s in out_systems.values())
    receipt = {
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
        "backups": backup_statements(policy, request, reached),
        "verification": ("every system re-scanned: nothing of the subject left except the exceptions listed"
                         if all_verified and not request["dry_run"] else
                         "dry run: nothing was changed" if request["dry_run"] else
                         "not every system verified: the request stays open and is retried"),
    }
    if ledger_entries is not None:
        receipt["proof"] = {"format": PROOF_FORMAT, "how": "python -m include.retention.cli verify-receipt FILE",
                            "ledger_seqs": sorted(e["seq"] for e in ledger_entries.values() if e)}
    return receipt


def unmapped_section(open_findings: list[dict[str, Any]], systems: list[str]) -> list[dict[str, Any]]:
    """Per system of the request with open discovery findings of unmapped data (``findings.FindingStore``):
    "n unmapped candidate columns/prefixes were known at the time (names)". Names only: a receipt's "nothing
    left" covers what the data map declares, and this says what it did not (ADR 0020)."""
    from include.retention.discovery import UNMAPPED_KINDS

    out = []
    for system in systems:
        names = sorted({f"{r['system']}.{r['collection']}" + (f".{r['column_name']}" if r["column_name"] else "")
                        for r in open_findings if r["system"] == system and r["kind"] in UNMAPPED_KINDS})
        if names:
            out.append({"system": system, "count": len(names), "names": names,
                        "statement": f"{len(names)} unmapped candidate columns/prefixes were known at the time "
                                     f"({', '.join(names)})"})
    return out


def add_unmapped(receipt: dict[str, Any], open_findings: list[dict[str, Any]]) -> dict[str, Any]:
    """Add ``unmapped`` (``unmapped_section`` over the receipt's systems) and, when there is any, qualify the
    verification: it covers the data map, not what discovery found outside it."""
    receipt["unmapped"] = unmapped_section(open_findings, list(receipt["systems"]))
    if receipt["unmapped"]:
        receipt["verification"] += " (in what the data map declares; unmapped candidates listed below)"
    return receipt


REJECTED_VERIFICATION = ("identity not verified: the request was rejected and closed; nothing was read, changed "
                         "or handed out (the reason is kept, encrypted, in the registry)")
ACCESS_MODES = ("access", "rectify", "withdraw")


def with_identity_check(receipt: dict[str, Any], req: dict[str, Any], details: dict[str, Any]) -> dict[str, Any]:
    """The identity check's decision (never its reason) and the resolved person (kinds, statuses, counts) in a
    receipt; a rejected or stopped request's receipt says so."""
    from include.retention.registry import INTAKE_VERIFIED
    from include.retention.requests import person

    check = details.get("identity_check") or (
        {"decision": "verified at intake"} if req.get("source") == INTAKE_VERIFIED else {})
    receipt["identity_check"] = {"decision": check.get("decision", "none"),
                                 "reason_recorded": bool(check.get("reason"))}
    receipt["person"] = person.receipt_part(details)  # one person per request: kinds, statuses, counts
    if req["status"] == "rejected":
        receipt["verification"] = REJECTED_VERIFICATION
    elif req["status"] == "conflict":
        receipt["verification"] = person.STOPPED_VERIFICATION
    return receipt


def recipients_part(recipients: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A request's recipients (``Registry.recipients``) as its receipt lists them: channel, status, systems,
    categories, last response and note (names only)."""
    return {name: {k: info[k] for k in ("channel", "status", "systems", "categories", "response", "note")}
            for name, info in recipients.items()}


def with_request_type(receipt: dict[str, Any], req: dict[str, Any], details: dict[str, Any]) -> dict[str, Any]:
    """What access, rectify and withdraw add to the receipt: the package (its link, never its content), the
    corrected kinds (never a value), the consents withdrawn, and what was verified."""
    if req["mode"] == "access":
        receipt["package"] = {k: v for k, v in (details.get("package") or {}).items()}
        if details.get("link"):
            receipt["package"]["link"] = details["link"]
        receipt["verification"] = ("dry run: counted, no package written" if req["dry_run"] else
                                   "every system searched; the package holds what was found")
    elif req["mode"] == "rectify":
        # a kind the identity check dropped (linked only) was not the request's to correct: nothing of it changed
        dropped = set(((receipt.get("person") or {}).get("dropped")) or [])
        asked = sorted(details.get("new_values") or {})
        receipt["rectified_kinds"] = [kind for kind in asked if kind not in dropped]
        if dropped.intersection(asked):
            receipt["not_rectified"] = {kind: "dropped at the identity check (it leads to another person): "
                                              "not corrected" for kind in asked if kind in dropped}
        receipt["verification"] = ("dry run: nothing was changed" if req["dry_run"] else
                                   "every system re-scanned: no item carries the old value any more, except the "
                                   "exceptions listed (kept unchanged)")
    elif req["mode"] == "withdraw":
        receipt["consents"] = details.get("consents") or "all"
        receipt["verification"] = ("dry run: nothing was changed" if req["dry_run"] else
                                   "consents withdrawn; the retention rules act on the items as usual")
    return receipt


def _request_type_lines(receipt: dict[str, Any]) -> list[str]:
    """Access, rectify, withdraw: the identity check and the package (never the link)."""
    extra = [f"- identity check: {receipt['identity_check']['decision']}"]
    if "rectified_kinds" in receipt:
        extra.append(f"- corrected: {', '.join(receipt['rectified_kinds']) or 'nothing'}")
        extra += [f"- {kind}: {why}" for kind, why in (receipt.get("not_rectified") or {}).items()]
    package = receipt.get("package") or {}
    if package:
        extra.append(f"- package: {package.get('key', '(not written)')}, {package.get('size')} bytes, "
                     f"sha256 `{package.get('sha256')}`, link expires {package.get('link_expires_at', '-')}")
    return extra


def render_markdown(receipt: dict[str, Any]) -> str:
    """Any receipt in Markdown: the erasure receipt's sections; access, rectify and withdraw add the identity
    check and the package."""
    lines = [
        f"# Receipt for request {receipt['request_id']}",
        "",
        f"- mode: **{receipt['mode']}**{' (dry run)' if receipt['dry_run'] else ''}",
        f"- status: **{receipt['status']}**",
        f"- received: {receipt['received_at']}; due: {receipt['due_at']}; completed: {receipt['completed_at'] or '-'}",
        f"- policy digest: `{receipt['policy_digest'][:16]}`",
        f"- verification: {receipt['verification']}",
        "",
        "| system | status | collection | records |",
        "|---|---|---|---|",
    ]
    for name, system in receipt["systems"].items():  # one line per collection: each record counted once
        for coll, line in (collection_lines(system) or {"-": {}}).items():
            lines.append(f"| {name} | {system['status']} | {coll} | {line_text(line)} |")
    if receipt["exceptions"]:
        lines += ["", "## Exceptions (kept" + ("" if receipt.get("mode") == "rectify" else ", restricted") + ")", ""]
        lines += [f"- {e['system']} / {e['collection']}: {e['items']} item(s), {e['reason']}, {e['handled_as']}"
                  for e in receipt["exceptions"]]
    if receipt.get("backups"):
        lines += ["", "## Backups", ""] + [f"- {b['statement']}" for b in receipt["backups"]]
    proofs = [(name, system["ledger"]) for name, system in receipt["systems"].items() if system.get("ledger")]
    if proofs:
        lines += ["", "## Ledger entries", ""]
        lines += [f"- {name}: entry {p['seq']}, {p['outcome']}, count {p['count']}, hash `{p['entry_hash']}`"
                  for name, p in proofs]
    searched = [(coll, kinds, (system.get("lookup") or {}).get(coll)) for system in receipt["systems"].values()
                for coll, kinds in (system.get("searched") or {}).items()]
    if searched:
        lines += ["", "## Searched", ""]
        lines += [f"- {coll}: {', '.join(kinds)}" + (f" ({'by index' if how == 'index' else 'read in full'})"
                                                      if how else "") for coll, kinds, how in searched]
    resolved = receipt.get("person") or {}
    if resolved:  # one person per request: the identity kinds and what became of them (never a value)
        lines += ["", "## Identities", ""]
        lines += [f"- {kind}: {status}" + (" (proven)" if kind == resolved.get("proven") else "")
                  + (" (dropped)" if kind in (resolved.get("dropped") or []) else "")
                  for kind, status in resolved.get("identities", {}).items()]
    if receipt.get("unmapped"):
        lines += ["", "## Not in the data map", ""] + [f"- {u['system']}: {u['statement']}"
                                                      for u in receipt["unmapped"]]
    recipients = receipt.get("recipients") or {}
    if recipients:  # GDPR Art. 19: who was told, and how it went ("recorded, not sent" says so)
        lines += ["", "## Recipients told", ""]
        lines += [f"- {name}: {r.get('status')} via {r.get('channel')}"
                  + (f" ({r['note']})" if r.get("note") else "") for name, r in sorted(recipients.items())]
    text = "\n".join(lines) + "\n"
    if receipt.get("mode") in ACCESS_MODES and "identity_check" in receipt:
        text += "\n" + "\n".join(_request_type_lines(receipt)) + "\n"
    return text


# ---- verification --------------------------------------------------------------------------------


@dataclass
class ReceiptCheck:
    """Outcome of ``verify_receipt``: problems fail the receipt; notes are said but do not."""

    request_id: str
    checked: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.checked)

    def __str__(self) -> str:
        if self.ok:
            seqs = ", ".join(map(str, self.checked))
            return f"receipt {self.request_id} OK: ledger entries {seqs} match and the chain verifies up to them"
        return f"receipt {self.request_id} FAILED: " + "; ".join(self.problems or ["it names no ledger entry"])


def _entry(ledger: Any, seq: int) -> dict[str, Any] | None:
    import sqlalchemy as sa

    from include.retention.ledger import entries

    with ledger.engine.connect() as conn:
        row = conn.execute(sa.select(entries).where(entries.c.seq == seq)).first()
    return dict(row._mapping) if row is not None else None


def _entry_problems(receipt: dict[str, Any], rid: str, name: str, system: dict[str, Any], seq: int,
                    claimed_hash: str, claimed_count: int, row: dict[str, Any]) -> list[str]:
    """What in one system's part of the receipt disagrees with its ledger entry ``row``."""
    problems = []
    if row["entry_hash"] != claimed_hash:
        problems.append(f"system {name}: entry {seq}'s hash differs from the receipt's")
    for what, want, got in (("request", rid, row["request_id"]), ("system", name, row["system"]),
                            ("action", receipt.get("mode"), row["action"])):
        if want != got:
            problems.append(f"system {name}: entry {seq} records another {what}")
    if row["outcome"] != ("dry_run" if receipt.get("dry_run") else "verified"):
        problems.append(f"system {name}: entry {seq} has outcome {row['outcome']!r}")
    try:
        details = json.loads(row["details"]) if row["details"] else {}
    except ValueError:
        details = {}
    collections = system.get("collections") or {}
    if claimed_count != row["count"] or counted_total(collections) != row["count"]:
        problems.append(f"system {name}: the receipt's count differs from entry {seq} (ledger {row['count']})")
    if (details.get("collections") or {}) != collections:
        problems.append(f"system {name}: the receipt's counts per collection differ from entry {seq}")
    if (details.get("removed_along") or {}) != (system.get("removed_along") or {}):
        problems.append(f"system {name}: what was removed along differs from entry {seq}")
    return problems


def verify_receipt(receipt: Any, ledger: Any, anchors: Any = None) -> ReceiptCheck:
    """Check a receipt against the ledger (and its anchors); reads counts and hashes only."""
    if not isinstance(receipt, dict) or not isinstance(receipt.get("systems"), dict):
        return ReceiptCheck("?", problems=["not a receipt (no 'systems')"])
    rid = str(receipt.get("request_id") or "?")
    check = ReceiptCheck(rid)
    for name, system in sorted(receipt["systems"].items()):
        proof = system.get("ledger") if isinstance(system, dict) else None
        if not proof:
            if isinstance(system, dict) and system.get("verified"):
                check.problems.append(f"system {name}: says verified but names no ledger entry")
            continue
        try:
            seq, claimed_hash, claimed_count = int(proof["seq"]), str(proof["entry_hash"]), int(proof["count"])
        except (KeyError, TypeError, ValueError):
            check.problems.append(f"system {name}: the ledger reference is incomplete (seq, entry_hash, count)")
            continue
        row = _entry(ledger, seq)
        if row is None:
            check.problems.append(f"system {name}: ledger entry {seq} does not exist")
            continue
        check.checked.append(seq)
        check.problems += _entry_problems(receipt, rid, name, system, seq, claimed_hash, claimed_count, row)
    if not check.checked:
        if not check.problems:
            check.problems.append("the receipt names no ledger entry (made before receipts carried proofs?)")
        return check
    result = ledger.verify(record=False, anchors=anchors)
    if result.anchors_checked:
        check.notes.append(f"{result.anchors_checked} anchor(s) checked")
    if not result.ok:
        broken = result.first_broken_seq
        if broken is None or broken <= max(check.checked):
            check.problems.append(f"the ledger does not verify up to the receipt's entries: {result}")
        else:
            check.notes.append(f"the chain verifies up to the receipt's entries but breaks later: {result}")
    return check

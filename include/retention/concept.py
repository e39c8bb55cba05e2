"""The deletion concept, generated from the data map and proven by the ledger.

Per data category (``categories`` of the data map): the systems and collections holding it, the start
event, the storage period of each stage, the action, the conditions and legal holds (as the tests the stores
make), what a delete takes along (dependent rows, owned objects), the recipients and purpose, the copies in
backups, and the evidence: the last sweep of each rule, its counts and the range of ledger sequence numbers the
rule's entries occupy. Besides the categories: the suppression list, the backups of each system, what each
masking leaves, and what the data map leaves open.

Terms and order follow DIN 66398 / ISO/IEC 27555's deletion classes (*Löschklassen*): a standard period
(*Regellöschfrist*) combined with a start event (*Startzeitpunkt*: collection, end of process, end of
relationship), taken from a rule's ``start_event:`` and never guessed from column names. See
docs/adr/0009-deletion-concept.md. Written as Markdown, CSV and HTML from one table (``concept_frame``), so the
three say the same; built with pandas. Names, periods, counts and sequence numbers only: no personal data.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from include.retention.describe import conditions_text, period_text, stages_text, start_text
from include.retention.policy import Collection, Policy, Rule, approx_days, referrers
from include.retention.stores.kinds import holds_objects, holds_rows
from include.retention.values import CollectionRef

STANDARD = "DIN 66398 / ISO/IEC 27555"

# Start events of the deletion classes, in the standard's order (its three, with its words), then what the
# standard's three do not cover.
START_EVENTS = {
    "collection": "collection (Zeitpunkt der Erhebung)",
    "end_of_process": "end of process (Ende des Vorgangs)",
    "end_of_relationship": "end of relationship (Ende der Beziehung)",
    "with_parent": "with the record it belongs to",
    "not_stated": "not stated in the data map",
    "indefinite": "kept while the erasure must be honoured",
    "none": "no end stated",
}
START_ORDER = {name: i for i, name in enumerate(START_EVENTS)}

SECTIONS = ("document", "category", "suppression", "backup", "masking", "gap")

COLUMNS = ["section", "note", "deletion_class", "start_event", "event", "standard_period", "period_days", "category",
           "category_description", "system", "collection", "store", "rule", "start", "stages", "action",
           "conditions", "legal_hold", "also_deleted", "backups", "content", "added_by", "restore",
           "masked_column", "strategy", "remains", "recipients", "purpose", "legal_basis",
           "last_run", "last_outcome", "last_counts", "ledger_seq", "ledger_entries"]

HEADINGS = {
    "section": "section", "deletion_class": "deletion class", "start_event": "start event",
    "event": "event (data map)", "standard_period": "standard period", "period_days": "days",
    "category": "category", "category_description": "what", "system": "system", "collection": "collection",
    "store": "table / bucket / place", "rule": "rule", "start": "counted from", "stages": "storage period per stage",
    "action": "end", "conditions": "applies to", "legal_hold": "legal hold (kept while any holds)",
    "also_deleted": "deleted along with each row", "backups": "copies in backups", "content": "content",
    "added_by": "added by", "restore": "after a restore", "masked_column": "masked", "strategy": "strategy",
    "remains": "what remains", "recipients": "recipients", "purpose": "purpose", "legal_basis": "legal basis",
    "note": "note", "last_run": "last sweep", "last_outcome": "outcome", "last_counts": "counts",
    "ledger_seq": "ledger seq", "ledger_entries": "ledger entries",
}

RESTORE = {
    "replay": "the completed erasures are replayed before the copy is used (python -m include.retention.cli "
              "replay {system})",
    "sweep": "the next retention sweep removes what is past its period or no row refers to any more",
}


def start_event(rule: Rule) -> str:
    """The DIN 66398 start event of a rule (``START_EVENTS`` key): from its ``start_event:``, else ``not_stated``."""
    return rule.start_event.din_event if rule.start_event is not None else "not_stated"


def _short_event(name: str) -> str:
    return START_EVENTS[name].split(" (")[0]


def _rule_conditions(policy: Policy, ref: str, rule: Rule) -> str:
    out = []
    if rule.start.orphaned is not None:
        owners = sorted({owner for owner, _ in referrers(policy, ref)})
        out.append(f"nothing in {', '.join(owners)} refers to it")
    if rule.when:
        out.append(conditions_text(rule.when))
    return "; ".join(out)


def _category(policy: Policy, name: str) -> dict[str, str]:
    """Description, purpose, legal basis and recipients of a category, as far as the data map states them."""
    info = policy.category_info(name)
    return {"description": info.description, "purpose": info.purpose or "", "legal_basis": info.legal_basis or "",
            "recipients": ", ".join(info.recipients)}


def _delete_rules(policy: Policy, ref: str, *, orphans: bool = True) -> list[str]:
    """Rules deleting rows of ``ref``; ``orphans=False`` leaves out those deleting only rows nothing refers to
    (they never delete a row a child still refers to)."""
    coll = policy.collection(ref)
    return [f"{ref}.{r.name}" for r in coll.rules if any(s.action == "delete" for s in r.stages)
            and (orphans or r.start.orphaned is None)]


def _erased_by_requests(policy: Policy, ref: str) -> bool:
    coll = policy.collection(ref)
    return bool(coll.identities) and coll.erasure == "delete"


def dependents(policy: Policy, ref: str, _seen: frozenset[str] = frozenset(), *, rows: bool = True) -> list[str]:
    """What deleting a row of ``ref`` takes along, deepest included: rows referring to it with ``on_delete:
    delete``, the objects those rows name, and rows whose reference is cleared (``nullify``, kept).
    ``rows=False``: the objects the row names only (an orphan rule's rows have no rows referring to them)."""
    out: list[str] = []
    for child, reference in policy.children(ref) if rows else []:
        if child in _seen:
            continue
        if reference.on_delete == "nullify":
            out.append(f"{child}: reference cleared, row kept")
        elif reference.on_delete == "delete":
            via = "" if not _seen else f" (via {ref})"
            out.append(f"{child} rows referring to it{via}")
            out += dependents(policy, child, _seen | {ref})
    for reference in policy.owned_objects(ref):
        out.append(f"{reference.to} objects a {ref} row names" if _seen else f"{reference.to} objects the row names")
    return out


def _parents(policy: Policy, ref: str, coll: Collection) -> tuple[list[str], list[str]]:
    """How a collection's items go with another's: the rows they refer to (``on_delete: delete``) and, for
    objects, the rows that name them."""
    out = []
    rows = holds_rows(policy, ref)
    for reference in coll.references:
        if reference.on_delete == "delete" and holds_rows(policy, reference.to) and rows:
            out.append((reference.to, f"deleted with its {reference.to} row"))
    if holds_objects(policy, ref):
        for owner, reference in referrers(policy, ref):
            if holds_rows(policy, owner) and reference in policy.owned_objects(owner):
                out.append((owner, f"deleted with the {owner} row that names it"))
    return [text for _, text in out], [parent for parent, _ in out]


def _backups_text(policy: Policy, system: str) -> str:
    backups = policy.systems[system].backups
    if backups is None:
        return f"backups of {system} not declared in the data map"
    return f"kept in backups of {system} up to {period_text(backups.retention)} longer ({backups.where})"


def _ends_with(policy: Policy, ref: str, coll: Collection) -> str:
    """How a collection without rules of its own ends: with the row it belongs to, or not at all."""
    texts, _ = _parents(policy, ref, coll)
    return "; ".join(texts)


# ---- evidence from the ledger --------------------------------------------------------------------

def ledger_evidence(ledger: Any) -> dict[str, dict[str, Any]]:
    """Per rule: the last sweep (time, outcome, counts) and the first / last ledger seq of its entries."""
    from include.retention.ledger import entries

    ledger.ensure_schema()
    e = entries
    query = (sa.select(e.c.rule_id, sa.func.min(e.c.seq).label("first"), sa.func.max(e.c.seq).label("last"),
                       sa.func.count().label("n"))
             .where(e.c.rule_id.is_not(None)).group_by(e.c.rule_id))
    with ledger.engine.connect() as conn:
        out = {r.rule_id: {"first_seq": int(r.first), "last_seq": int(r.last), "entries": int(r.n)}
               for r in conn.execute(query)}
    for s in ledger.last_sweeps():
        try:
            details = json.loads(s["details"]) if s["details"] else {}
        except ValueError:
            details = {}
        counts = {k: details.get(k) for k in ("locked", "anonymized", "deleted", "held", "kept")
                  if isinstance(details.get(k), int)}
        out.setdefault(s["rule_id"], {}).update(last_run=s["recorded_at"], last_outcome=s["outcome"],
                                                last_counts=counts, last_seq_sweep=s["seq"])
    return out


# ---- the concept ------------------------------------------------------------------------------


def _rule_row(policy: Policy, ref: str, rule: Rule, ev: dict[str, Any]) -> dict[str, Any]:
    last = rule.stages[-1]
    event = start_event(rule)
    period = period_text(last.after)
    start = start_text(rule.start)
    counts = ev.get("last_counts") or {}
    deletes = any(s.action == "delete" for s in rule.stages)
    return {
        "start_event": event, "event": rule.start_event.words if rule.start_event else "",
        "deletion_class": (f"{period} after {_short_event(event)}" if rule.start_event
                           else f"{period}, counted from {start}"),
        "standard_period": period, "period_days": approx_days(last.period),
        "rule": f"{ref}.{rule.name}", "start": start, "stages": stages_text(rule), "action": last.action,
        "conditions": _rule_conditions(policy, ref, rule),
        "also_deleted": "; ".join(dependents(policy, ref, rows=rule.start.orphaned is None)) if deletes else "",
        "last_run": ev.get("last_run", ""), "last_outcome": ev.get("last_outcome", ""),
        "last_counts": ", ".join(f"{k} {v}" for k, v in counts.items()),
        "ledger_seq": f"{ev['first_seq']}-{ev['last_seq']}" if "first_seq" in ev else "",
        "ledger_entries": ev.get("entries", 0) if ev else "",
    }


def _parent_ways(policy: Policy, parent: str, *, referred: bool) -> list[str]:
    """What deletes rows of ``parent`` while a child is there: its delete rules (an orphan rule only for objects
    the row names, never for a row still ``referred`` to), erasure requests, its own parents."""
    ways = _delete_rules(policy, parent, orphans=not referred)
    ways += ["erasure requests"] if _erased_by_requests(policy, parent) else []
    return ways + [f"with their {grand} rows" for grand in _parents(policy, parent, policy.collection(parent))[1]]


def _parent_row(policy: Policy, ref: str, parent: str, text: str) -> dict[str, Any]:
    ways = _parent_ways(policy, parent, referred=holds_rows(policy, ref))
    return {"start_event": "with_parent", "deletion_class": text, "standard_period": text,
            "period_days": float("inf"), "action": "delete",
            "stages": f"whenever {parent} rows go: {', '.join(ways) or 'nothing deletes them'}",
            "also_deleted": "; ".join(dependents(policy, ref))}


def _category_rows(policy: Policy, evidence: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    gaps: list[str] = []
    for s_name, system in policy.systems.items():
        for c_name, coll in system.collections.items():
            ref = f"{s_name}.{c_name}"
            base = {"section": "category", "system": s_name, "collection": ref,
                    "store": coll.table or f"s3://{coll.bucket}/{coll.prefix or ''}",
                    "legal_hold": conditions_text(coll.legal_hold, joiner=" or ", s3=holds_objects(policy, ref)),
                    "backups": _backups_text(policy, s_name)}
            parent_texts, parent_refs = _parents(policy, ref, coll)
            for cat in coll.categories:
                info = _category(policy, cat)
                about = {**base, "category": cat, "category_description": info["description"],
                         "recipients": info["recipients"], "purpose": info["purpose"],
                         "legal_basis": info["legal_basis"]}
                for rule in [r for r in coll.rules if r.category in (cat, None)]:
                    rows.append({**about, **_rule_row(policy, ref, rule, evidence.get(f"{ref}.{rule.name}", {}))})
                for parent, text in zip(parent_refs, parent_texts, strict=True):
                    rows.append({**about, **_parent_row(policy, ref, parent, text)})
                referred = holds_rows(policy, ref)
                if parent_refs and not _delete_rules(policy, ref) and not any(
                        _parent_ways(policy, p, referred=referred) for p in parent_refs):
                    gaps.append(f"{ref}: {cat}: goes only with its {', '.join(parent_refs)} rows, and nothing "
                                "deletes those")
                if not coll.rules and not parent_refs:
                    text = "no rule and no row it belongs to: this data has no end"
                    rows.append({**about, "start_event": "none", "deletion_class": START_EVENTS["none"],
                                 "standard_period": text, "period_days": float("inf")})
                    gaps.append(f"{ref}: {cat}: {text}")
            for rule in coll.rules:
                if rule.start_event is None:
                    gaps.append(f"{ref}.{rule.name}: start event not stated in the data map (counted from "
                                f"{start_text(rule.start)})")
    held = {cat for s in policy.systems.values() for c in s.collections.values() for cat in c.categories}
    for cat in policy.categories:
        if cat not in held:
            info = _category(policy, cat)
            text = "no collection of the data map holds this category"
            rows.append({"section": "category", "category": cat, "category_description": info["description"],
                         "purpose": info["purpose"], "legal_basis": info["legal_basis"],
                         "recipients": info["recipients"], "start_event": "none",
                         "deletion_class": START_EVENTS["none"], "standard_period": text,
                         "period_days": float("inf")})
            gaps.append(f"{cat}: {text}")
    return rows, gaps


def _suppression_row(policy: Policy) -> dict[str, Any] | None:
    """The suppression list (``registry/suppression_list.py``): what it keeps, who adds to it, how long."""
    if not policy.declared_kinds():
        return None
    adders = ["every completed erasure request (the request's identities)"]
    for s_name, system in policy.systems.items():
        for c_name, coll in system.collections.items():
            for rule in coll.rules:
                kinds = sorted({k for stage in rule.stages for k in rule.suppress_kinds(stage)})
                if kinds:
                    adders.append(f"deletes by {s_name}.{c_name}.{rule.name} ({', '.join(kinds)})")
            if coll.suppress_on_delete:
                adders.append(f"every delete in {s_name}.{c_name} ({', '.join(coll.suppress_on_delete)})")
    period = "as long as the erasure must be honoured"
    return {"section": "suppression", "category": "suppression_list", "system": "registry",
            "collection": "suppression_list", "store": "suppression_list table (the ledger's database)",
            "category_description": "identities of erased people, as keyed digests",
            "content": "keyed HMAC-SHA256 digests of normalised identities (with kind, key id, request id, date "
                       "added), no plaintext",
            "purpose": "prevent re-contact after erasure: a re-import, a re-subscribe or a restored backup cannot "
                       "bring the person back",
            "added_by": "; ".join(adders), "start_event": "indefinite", "deletion_class": START_EVENTS["indefinite"],
            "standard_period": period, "period_days": float("inf"), "action": "kept",
            "stages": "the code never deletes an entry (cli rotate-keys re-digests entries under a new key); "
                      "removing one is a decision outside it"}


def _backup_rows(policy: Policy) -> tuple[list[dict[str, Any]], list[str]]:
    rows, gaps = [], []
    for s_name, system in policy.systems.items():
        backups = system.backups
        row = {"section": "backup", "system": s_name, "collection": f"backups of {s_name}",
               "action": "copies expire"}
        if backups is None:
            text = "not declared in the data map"
            rows.append({**row, "standard_period": text, "period_days": float("inf"), "deletion_class": text})
            gaps.append(f"{s_name}: backups {text}")
            continue
        period = period_text(backups.retention)
        rows.append({**row, "store": backups.where, "standard_period": period,
                     "period_days": approx_days(backups.period), "deletion_class": f"{period} after the copy",
                     "restore": RESTORE[backups.restore].format(system=s_name)})
    return rows, gaps


def _masking_rows(policy: Policy) -> list[dict[str, Any]]:
    from include.retention.masking import STRATEGIES

    rows = []

    def add(ref: str, by: str, column: str, mask: Any) -> None:
        rows.append({"section": "masking", "collection": ref, "system": CollectionRef.parse(ref).system, "rule": by,
                     "masked_column": column, "strategy": mask.strategy,
                     "remains": STRATEGIES[mask.strategy].remains(mask.value)})

    for s_name, system in policy.systems.items():
        for c_name, coll in system.collections.items():
            ref = f"{s_name}.{c_name}"
            for rule in coll.rules:
                for stage in rule.stages:
                    for column, mask in stage.mask.items():
                        add(ref, f"{ref}.{rule.name}", column, mask)
            for column, mask in coll.erasure_mask.items():
                add(ref, "erasure requests", column, mask)
            for _kind, fld in coll.identity_fields():
                if fld.erase == "mask" and fld.mask is not None:
                    add(ref, "erasure of a person the row mentions", fld.column, fld.mask)
    return rows


def _document_rows(policy: Policy, generated_at: str | None, evidence_note: str | None) -> list[dict[str, Any]]:
    notes = [
        f"Deletion concept ({STANDARD}): {policy.name}",
        f"data map: {policy.source or '-'}, version {policy.policy_version or '-'}, digest {policy.digest[:16] or '-'}",
    ]
    if generated_at:
        notes.append(f"generated: {generated_at}")
    if evidence_note:
        notes.append(f"evidence: {evidence_note}")
    notes += [
        "deletion class: a standard period (Regellöschfrist) combined with a start event (Startzeitpunkt); a rule's "
        "standard period is its last stage, every stage is listed",
        "a sweep applies every rule daily; legal holds always win, and a row with a held dependent is kept too",
        "conditions are the tests the stores make: younger_than P is column > now - P, older_than P is column < "
        "now - P; NULL matches no range or age test",
        "backups are the one exception to the standard periods: data deleted in a system stays in that system's "
        "backups until they expire",
    ]
    return [{"section": "document", "note": n} for n in notes]


def finding_gaps(findings: list[dict[str, Any]] | None) -> list[str]:
    """Open discovery findings (``findings.FindingStore.open_findings``) as open points: names and numbers."""
    out = []
    for row in findings or []:
        where = f"{row['system']}.{row['collection']}" + (f".{row['column_name']}" if row["column_name"] else "")
        what = f", {row['classifier']}, hit rate {row['hit_rate']:.2f} of {row['sample_size']} sampled" \
            if row["classifier"] else ""
        out.append(f"open discovery finding: {where}: {row['kind'].replace('_', ' ')}{what}; first seen "
                   f"{row['first_seen']:%Y-%m-%d} (data_map_drift)")
    return out


def concept_rows(policy: Policy, evidence: dict[str, dict[str, Any]] | None = None, *,
                 generated_at: str | None = None, evidence_note: str | None = None,
                 findings: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every fact of the concept, one row each: the document's notes, one row per (category, collection, rule)
    and per parent a collection goes with, the suppression list, each system's backups, each masking, the gaps
    (open discovery findings among them)."""
    rows, gaps = _category_rows(policy, evidence or {})
    backups, backup_gaps = _backup_rows(policy)
    suppression = _suppression_row(policy)
    return (_document_rows(policy, generated_at, evidence_note) + rows + ([suppression] if suppression else [])
            + backups + _masking_rows(policy)
            + [{"section": "gap", "note": g} for g in gaps + backup_gaps + finding_gaps(findings)])


def concept_frame(policy: Policy, evidence: dict[str, dict[str, Any]] | None = None, *,
                  generated_at: str | None = None, evidence_note: str | None = None,
                  findings: list[dict[str, Any]] | None = None):
    """The concept as a pandas DataFrame of text. Category rows are ordered like DIN 66398's deletion-class
    matrix: start event, then standard period, then category and collection; the other sections follow."""
    import pandas as pd

    df = pd.DataFrame(concept_rows(policy, evidence, generated_at=generated_at, evidence_note=evidence_note,
                                   findings=findings))
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = ""
    df["_section"] = df["section"].map({s: i for i, s in enumerate(SECTIONS)})
    df["_event"] = df["start_event"].map(START_ORDER).fillna(len(START_ORDER))
    df["_days"] = pd.to_numeric(df["period_days"], errors="coerce").fillna(float("inf"))
    categories = df["section"] == "category"
    df["_order"] = range(len(df))  # other sections: as written
    df.loc[categories, "_order"] = 0
    df = df.sort_values(["_section", "_order", "_event", "_days", "category", "collection", "rule"], kind="stable")
    df["period_days"] = ["" if d == float("inf") or v == "" else str(round(d))
                         for d, v in zip(df["_days"], df["period_days"], strict=True)]
    df = df[COLUMNS].fillna("").astype(str).replace({"nan": ""})
    df["start_event"] = df["start_event"].map(lambda e: START_EVENTS.get(e, e))
    return df.reset_index(drop=True)


def class_matrix(df) -> Any:
    """DIN 66398 deletion-class matrix: standard period (rows) x start event (columns) -> categories."""
    import pandas as pd

    ruled = df[(df["section"] == "category") & (df["rule"] != "")]
    if ruled.empty:
        return pd.DataFrame()
    order = {p: float(d or "inf") for p, d in zip(ruled["standard_period"], ruled["period_days"], strict=True)}
    matrix = ruled.pivot_table(index="standard_period", columns="start_event", values="category",
                               aggfunc=lambda v: ", ".join(sorted(set(v))), fill_value="")
    matrix = matrix.reindex(sorted(matrix.index, key=lambda p: order[p]))
    cols = [c for c in START_EVENTS.values() if c in matrix.columns]
    matrix = matrix[cols]
    matrix.columns.name = None
    matrix.index.name = "standard period"
    return matrix


# What each section of the document shows, in Markdown and HTML alike (the CSV holds every column).
VIEWS = [
    ("Data categories", "category", ["deletion_class", "category", "category_description", "collection", "rule",
                                     "event", "start", "stages", "conditions", "legal_hold", "also_deleted",
                                     "backups", "recipients", "purpose", "legal_basis"]),
    ("Suppression list", "suppression", ["collection", "store", "category_description", "content", "purpose",
                                         "added_by", "standard_period", "stages"]),
    ("Backups", "backup", ["system", "store", "standard_period", "restore"]),
    ("Masking: what remains", "masking", ["collection", "rule", "masked_column", "strategy", "remains"]),
]


def _evidence(df):
    return df[(df["section"] == "category") & (df["rule"] != "")][
        ["rule", "last_run", "last_outcome", "last_counts", "ledger_seq", "ledger_entries"]].drop_duplicates("rule")


def _md_escape(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(df, index: bool = False) -> list[str]:
    cols = list(df.columns)
    head = ([df.index.name or ""] if index else []) + [HEADINGS.get(c, c) for c in cols]
    lines = ["| " + " | ".join(map(_md_escape, head)) + " |", "|" + "---|" * len(head)]
    for idx, row in df.iterrows():
        cells = ([idx] if index else []) + [row[c] for c in cols]
        lines.append("| " + " | ".join(_md_escape(v) or "-" for v in cells) + " |")
    return lines


def render_markdown(policy: Policy, df) -> str:
    notes = list(df[df["section"] == "document"]["note"])
    lines = [f"# {notes[0]}", ""] + [f"- {n}" for n in notes[1:]] + ["", "## Deletion classes", ""]
    matrix = class_matrix(df)
    lines += _md_table(matrix, index=True) if not matrix.empty else ["(no rules)"]
    for title, section, cols in VIEWS:
        part = df[df["section"] == section]
        if not part.empty:
            lines += ["", f"## {title}", ""] + _md_table(part[cols])
    lines += ["", "## Evidence (audit ledger)", ""] + _md_table(_evidence(df))
    gaps = list(df[df["section"] == "gap"]["note"])
    if gaps:
        lines += ["", "## Open points", ""] + [f"- {g}" for g in gaps]
    return "\n".join(lines) + "\n"


def _html_table(df, index: bool = False) -> str:
    return df.rename(columns=HEADINGS).to_html(index=index, escape=True, border=1, na_rep="")


def render_html(policy: Policy, df) -> str:
    notes = list(df[df["section"] == "document"]["note"])
    title = html.escape(notes[0])
    out = [f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head><body>",
           f"<h1>{title}</h1>", "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes[1:]) + "</ul>",
           "<h2>Deletion classes</h2>"]
    matrix = class_matrix(df)
    out.append(_html_table(matrix, index=True) if not matrix.empty else "<p>(no rules)</p>")
    for title_, section, cols in VIEWS:
        part = df[df["section"] == section]
        if not part.empty:
            out += [f"<h2>{html.escape(title_)}</h2>", _html_table(part[cols])]
    out += ["<h2>Evidence (audit ledger)</h2>", _html_table(_evidence(df))]
    gaps = list(df[df["section"] == "gap"]["note"])
    if gaps:
        out += ["<h2>Open points</h2>", "<ul>" + "".join(f"<li>{html.escape(g)}</li>" for g in gaps) + "</ul>"]
    return "\n".join(out) + "\n</body></html>\n"


def write_concept(policy: Policy, out_dir: str | Path | None, evidence: dict[str, dict[str, Any]] | None,
                  evidence_note: str, now: dt.datetime | None = None,
                  findings: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """Write ``deletion-concept.{md,csv,html}`` into ``out_dir`` (created); returns format -> path.
    Without ``out_dir`` nothing is written and the Markdown is returned under ``md``."""
    generated_at = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    df = concept_frame(policy, evidence, generated_at=generated_at, evidence_note=evidence_note, findings=findings)
    md = render_markdown(policy, df)
    if out_dir is None:
        return {"md": md}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "deletion-concept.md", "csv": out / "deletion-concept.csv",
             "html": out / "deletion-concept.html"}
    paths["md"].write_text(md, encoding="utf-8")
    df.rename(columns=HEADINGS).to_csv(paths["csv"], index=False)
    paths["html"].write_text(render_html(policy, df), encoding="utf-8")
    return {k: str(v) for k, v in paths.items()}


def categories_without_end(policy: Policy) -> list[tuple[str, list[str]]]:
    """Collections declaring data categories (but no identities, which ``personal_without_rule`` covers) that
    nothing ends: no rule of their own and no row they belong to. (ref, their categories)."""
    return [(f"{s}.{c}", list(coll.categories)) for s, system in policy.systems.items()
            for c, coll in system.collections.items()
            if coll.categories and not coll.identities and not coll.rules
            and not _ends_with(policy, f"{s}.{c}", coll)]


def personal_without_rule(policy: Policy) -> list[tuple[str, str]]:
    """Collections holding identities (personal data) with no rule of their own: (ref, how they may still end)."""
    out = []
    for s_name, system in policy.systems.items():
        for c_name, coll in system.collections.items():
            if coll.identities and not coll.rules:
                ref = f"{s_name}.{c_name}"
                ends = _ends_with(policy, ref, coll)
                out.append((ref, f" (only {ends})" if ends else ""))
    return out

"""The deletion concept, generated from the data map and proven by the ledger.

Per data category (``categories`` of the data map): the systems and collections holding it, the
start event, the storage period of each stage, the action, the legal-hold conditions, the
recipients and purpose (if the data map states them), and the evidence: the last sweep of each
rule, its counts and the range of ledger sequence numbers the rule's entries occupy.

Ordering and terms follow DIN 66398's deletion classes (*Löschklassen*): a standard period
(*Regellöschfrist*) combined with a start event (*Startzeitpunkt*: collection, end of process,
end of relationship). See docs/adr/0009-deletion-concept.md. Written as Markdown, CSV and a plain
HTML table; built with pandas. Names, periods, counts and sequence numbers only: no personal data.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from include.retention.policy import Collection, Policy, Rule, _approx_days, parse_duration

# DIN 66398 start events (Startzeitpunkte), in the standard's order, with the words of the standard.
START_EVENTS = {
    "collection": "collection (Zeitpunkt der Erhebung)",
    "end_of_process": "end of process (Ende des Vorgangs)",
    "end_of_relationship": "end of relationship (Ende der Beziehung)",
    "other": "other event",
    "with_parent": "with the record it belongs to",
    "none": "no end stated",
}
START_ORDER = {name: i for i, name in enumerate(START_EVENTS)}

# What a start column's name says about the event (a data map may state ``start_event`` on a rule instead).
_EVENT_WORDS = (
    ("end_of_relationship", re.compile(r"contract_end|unsubscrib|relationship_end|account_closed|terminat|"
                                       r"membership_end|left_at")),
    ("end_of_process", re.compile(r"closed|answered|last_activity|last_contact|last_engaged|completed|"
                                  r"resolved|finished|ended")),
    ("collection", re.compile(r"created|occurred|subscribed|seen|received|written|collected|joined|"
                              r"uploaded|key_date|last_modified")),
)

COLUMNS = ["deletion_class", "start_event", "standard_period", "period_days", "category", "category_description",
           "system", "collection", "store", "rule", "start", "stages", "action", "conditions", "legal_hold",
           "recipients", "purpose", "legal_basis", "last_run", "last_outcome", "last_counts", "ledger_seq",
           "ledger_entries"]

HEADINGS = {
    "deletion_class": "deletion class", "start_event": "start event", "standard_period": "standard period",
    "period_days": "days",
    "category": "category", "category_description": "what", "system": "system", "collection": "collection",
    "store": "table / bucket", "rule": "rule", "start": "counted from", "stages": "storage period per stage",
    "action": "end", "conditions": "applies to", "legal_hold": "legal hold (kept while)", "recipients": "recipients",
    "purpose": "purpose", "legal_basis": "legal basis", "last_run": "last sweep", "last_outcome": "outcome",
    "last_counts": "counts",
    "ledger_seq": "ledger seq", "ledger_entries": "ledger entries",
}


def start_event(rule: Rule) -> str:
    explicit = getattr(rule, "start_event", None)
    if isinstance(explicit, str) and explicit in START_EVENTS:
        return explicit
    if rule.start.orphaned not in (None, "last_modified"):  # S3 orphans count from their upload (collection)
        return "end_of_relationship"  # nothing refers to the record any more
    name = (rule.start.describe() if rule.start.basis == "column" else (rule.start.name or rule.start.basis or "")
            ).lower()
    if rule.start.basis in ("key_date", "last_modified"):
        name = rule.start.basis
    for event, pattern in _EVENT_WORDS:
        if pattern.search(name):
            return event
    return "other"


def period_text(after: str) -> str:
    """``P36M`` -> ``3 years``, ``P18M`` -> ``1 year, 6 months``, ``P0D`` -> ``immediately``."""
    d = parse_duration(after)
    parts = []
    for unit, n in (("year", d.years), ("month", d.months), ("day", d.days), ("hour", d.hours)):
        if n:
            parts.append(f"{n} {unit}{'s' if n != 1 else ''}")
    if not parts:
        return "immediately"
    return ", ".join(parts)


def _stage_text(action: str, after: str) -> str:
    text = period_text(after)
    return f"{action} {text}" if text == "immediately" else f"{action} after {text}"


def _conditions(conds: list[Any], policy: Policy | None = None, ref: str = "", rule: Rule | None = None) -> str:
    out = []
    if policy is not None and rule is not None and rule.start.orphaned is not None:
        from include.retention.policy import referrers

        owners = sorted({owner for owner, _ in referrers(policy, ref)})
        out.append(f"nothing in {', '.join(owners)} refers to it")
    for c in conds:
        if c.is_null is not None:
            out.append(f"{c.column} is {'' if c.is_null else 'not '}null")
        elif c.in_ is not None:
            out.append(f"{c.column} in {', '.join(map(str, c.in_))}")
        else:
            out.append(f"{c.column} = {json.dumps(c.equals, default=str)}")
    return "; ".join(out)


def _start_text(rule: Rule) -> str:
    s = rule.start
    text = s.describe() if s.basis == "column" else (f"{s.basis}:{s.name}" if s.name else s.basis)
    if s.round_up:
        text += f" (from the end of that {s.round_up})"
    return text or "-"


def _listing(*owners: Any, name: str) -> str:
    for owner in owners:
        value = getattr(owner, name, None)
        if value:
            return ", ".join(map(str, value)) if isinstance(value, (list, tuple, set)) else str(value)
    return ""


def _category(policy: Policy, name: str) -> dict[str, str]:
    """Description, purpose, legal basis and recipients of a category: a bare string in ``categories:``
    is the description alone; a mapping may say more (read with defaults: older data maps lack it)."""
    value = policy.categories.get(name, "")
    if isinstance(value, str):
        return {"description": value, "purpose": "", "legal_basis": "", "recipients": ""}
    return {"description": str(getattr(value, "description", "") or ""),
            "purpose": str(getattr(value, "purpose", "") or ""),
            "legal_basis": str(getattr(value, "legal_basis", "") or ""),
            "recipients": _listing(value, name="recipients")}


def _ends_with(policy: Policy, ref: str, coll: Collection) -> str:
    """How a collection without rules of its own ends: with the row it belongs to, or not at all."""
    for r in coll.references:
        if r.on_delete == "delete":
            return f"deleted with its {r.to} row"
    owners = [f"{s}.{c}" for s, system in policy.systems.items() for c, other in system.collections.items()
              for r in other.references if r.to == ref]
    if owners:
        return f"deleted with its {', '.join(owners)} row"
    return ""


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

def concept_rows(policy: Policy, evidence: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per (category, collection, rule); a collection without a rule of its own gets one row
    saying how it ends; a category no collection holds gets one row saying so."""
    evidence = evidence or {}
    rows: list[dict[str, Any]] = []
    held_by: dict[str, int] = {}
    for s_name, system in policy.systems.items():
        for c_name, coll in system.collections.items():
            ref = f"{s_name}.{c_name}"
            base = {"system": s_name, "collection": ref, "store": coll.table or f"s3://{coll.bucket}/"
                    f"{coll.prefix or ''}", "legal_hold": _conditions(coll.legal_hold)}
            for cat in coll.categories:
                held_by[cat] = held_by.get(cat, 0) + 1
                info = _category(policy, cat)
                desc = info["description"]
                rules = [r for r in coll.rules if r.category in (cat, None)]
                if not rules:
                    ends = _ends_with(policy, ref, coll)
                    event = "with_parent" if ends else "none"
                    rows.append({**base, "category": cat, "category_description": desc, "start_event": event,
                                 "standard_period": ends or "no rule: this data has no end",
                                 "rule": "", "start": "", "stages": "", "action": "delete" if ends else "",
                                 "conditions": "", "period_days": float("inf"),
                                 "recipients": _listing(coll, system, name="recipients") or info["recipients"],
                                 "purpose": _listing(coll, name="purpose") or info["purpose"],
                                 "legal_basis": info["legal_basis"]})
                    continue
                for rule in rules:
                    rule_id = f"{ref}.{rule.name}"
                    last = rule.stages[-1]
                    ev = evidence.get(rule_id, {})
                    counts = ev.get("last_counts") or {}
                    seq = f"{ev['first_seq']}-{ev['last_seq']}" if "first_seq" in ev else ""
                    rows.append({
                        **base, "category": cat, "category_description": desc, "start_event": start_event(rule),
                        "standard_period": period_text(last.after), "period_days": _approx_days(last.period),
                        "rule": rule_id, "start": _start_text(rule),
                        "stages": "; ".join(_stage_text(s.action, s.after) for s in rule.stages),
                        "action": last.action, "conditions": _conditions(rule.when, policy, ref, rule),
                        "recipients": _listing(rule, coll, system, name="recipients") or info["recipients"],
                        "purpose": _listing(rule, coll, name="purpose") or info["purpose"],
                        "legal_basis": info["legal_basis"],
                        "last_run": ev.get("last_run", ""), "last_outcome": ev.get("last_outcome", ""),
                        "last_counts": ", ".join(f"{k} {v}" for k, v in counts.items()),
                        "ledger_seq": seq, "ledger_entries": ev.get("entries", 0) if ev else "",
                    })
    for cat in policy.categories:
        if cat not in held_by:
            info = _category(policy, cat)
            rows.append({"category": cat, "category_description": info["description"],
                         "purpose": info["purpose"], "legal_basis": info["legal_basis"],
                         "recipients": info["recipients"], "start_event": "none",
                         "standard_period": "no collection of the data map holds this category",
                         "period_days": float("inf")})
    for row in rows:
        ev_name = row["start_event"]
        period = row["standard_period"] if row.get("rule") else ""
        row["deletion_class"] = (f"{period} from {START_EVENTS[ev_name].split(' (')[0]}" if period
                                 else START_EVENTS[ev_name])
    return rows


def concept_frame(policy: Policy, evidence: dict[str, dict[str, Any]] | None = None):
    """The concept as a pandas DataFrame, ordered like DIN 66398's deletion-class matrix: start event,
    then standard period, then category and collection."""
    import pandas as pd

    df = pd.DataFrame(concept_rows(policy, evidence))
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = ""
    df["_event"] = df["start_event"].map(START_ORDER)
    days = pd.to_numeric(df["period_days"], errors="coerce").fillna(float("inf"))
    df["period_days"] = days
    df = df.sort_values(["_event", "period_days", "category", "collection", "rule"], kind="stable")
    df["period_days"] = [("" if d == float("inf") else str(round(d))) for d in df["period_days"]]
    df = df[COLUMNS].fillna("").astype(str).replace({"nan": ""})
    df["start_event"] = df["start_event"].map(START_EVENTS)
    return df.reset_index(drop=True)


def class_matrix(df) -> Any:
    """DIN 66398 deletion-class matrix: standard period (rows) x start event (columns) -> categories."""
    ruled = df[df["rule"] != ""]
    if ruled.empty:
        import pandas as pd

        return pd.DataFrame()
    order = {p: float(d or "inf") for p, d in zip(ruled["standard_period"], ruled["period_days"], strict=True)}
    matrix = ruled.pivot_table(index="standard_period", columns="start_event", values="category",
                               aggfunc=lambda v: ", ".join(sorted(set(v))), fill_value="")
    matrix = matrix.reindex(sorted(matrix.index, key=lambda p: order[p]))
    cols = [c for c in START_EVENTS.values() if c in matrix.columns]
    return matrix[cols]


def _md_escape(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(df, index_name: str | None = None) -> list[str]:
    cols = list(df.columns)
    head = ([index_name] if index_name is not None else []) + [HEADINGS.get(c, c) for c in cols]
    lines = ["| " + " | ".join(map(_md_escape, head)) + " |", "|" + "---|" * len(head)]
    for idx, row in df.iterrows():
        cells = ([idx] if index_name is not None else []) + [row[c] for c in cols]
        lines.append("| " + " | ".join(_md_escape(v) or "-" for v in cells) + " |")
    return lines


def render_markdown(policy: Policy, df, generated_at: str, evidence_note: str) -> str:
    matrix = class_matrix(df)
    lines = [
        f"# Deletion concept: {policy.name}",
        "",
        f"- data map: `{policy.source}`, version {policy.policy_version or '-'}, digest `{policy.digest[:16]}`",
        f"- generated: {generated_at}",
        f"- evidence: {evidence_note}",
        "- ordering and terms: DIN 66398 deletion classes (standard period x start event); "
        "a sweep applies every rule daily, legal holds always win",
        "",
        "## Deletion classes",
        "",
    ]
    lines += _md_table(matrix, "standard period") if not matrix.empty else ["(no rules)"]
    lines += ["", "## Data categories", ""]
    short = df[["deletion_class", "category", "category_description", "collection", "rule", "start", "stages",
                "conditions", "legal_hold", "recipients", "purpose", "legal_basis"]]
    lines += _md_table(short)
    lines += ["", "## Evidence (audit ledger)", ""]
    ev = df[df["rule"] != ""][["rule", "last_run", "last_outcome", "last_counts", "ledger_seq", "ledger_entries"]]
    lines += _md_table(ev.drop_duplicates("rule"))
    gaps = df[df["start_event"] == START_EVENTS["none"]]
    if not gaps.empty:
        lines += ["", "## Without an end", ""]
        lines += [f"- {r.category}: {r.collection or '-'}: {r.standard_period}" for r in gaps.itertuples()]
    return "\n".join(lines) + "\n"


def render_html(policy: Policy, df, generated_at: str) -> str:
    matrix = class_matrix(df)
    table = df.rename(columns=HEADINGS).to_html(index=False, escape=True, border=1, na_rep="")
    mtable = matrix.to_html(escape=True, border=1) if not matrix.empty else "<p>(no rules)</p>"
    title = html.escape(f"Deletion concept: {policy.name}")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head><body>\n"
            f"<h1>{title}</h1>\n<p>data map {html.escape(policy.source)}, digest "
            f"{html.escape(policy.digest[:16])}; generated {html.escape(generated_at)}</p>\n"
            f"<h2>Deletion classes (DIN 66398)</h2>\n{mtable}\n<h2>Data categories</h2>\n{table}\n</body></html>\n")


def write_concept(policy: Policy, out_dir: str | Path | None, evidence: dict[str, dict[str, Any]] | None,
                  evidence_note: str, now: dt.datetime | None = None) -> dict[str, str]:
    """Write ``deletion-concept.{md,csv,html}`` into ``out_dir`` (created); returns format -> path.
    Without ``out_dir`` nothing is written and the Markdown is returned under ``md``."""
    generated_at = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    df = concept_frame(policy, evidence)
    md = render_markdown(policy, df, generated_at, evidence_note)
    if out_dir is None:
        return {"md": md}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "deletion-concept.md", "csv": out / "deletion-concept.csv",
             "html": out / "deletion-concept.html"}
    paths["md"].write_text(md, encoding="utf-8")
    df.rename(columns=HEADINGS).to_csv(paths["csv"], index=False)
    paths["html"].write_text(render_html(policy, df, generated_at), encoding="utf-8")
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

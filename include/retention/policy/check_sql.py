"""Cross-checks of a SQL collection: a table with a primary key, and every column the collection, its rules,
stages, legal holds and erasure name is one of its declared columns."""

from __future__ import annotations

from collections.abc import Iterator

from include.retention.policy.model import Collection, Policy, each_rule
from include.retention.policy.rules import MAX_KEY_COLUMNS, Rule

Problems = Iterator[tuple[str, str]]


def check_sql(policy: Policy, base: str, coll: Collection) -> Problems:
    if not coll.table:
        yield f"{base}.table", "a SQL collection needs 'table'"
    if not coll.primary_key:
        yield f"{base}.primary_key", "a SQL collection needs 'primary_key'"
    if not coll.columns:
        yield f"{base}.columns", "a SQL collection lists its columns"
        return
    yield from _check_key(base, coll)
    yield from _check_columns(base, coll)
    yield from _check_erasure(policy, base, coll)
    for where, rule, repeated in each_rule(base, coll):
        yield from _check_rule(where, coll, rule, repeated)


def _col(coll: Collection, where: str, name: str | None) -> Problems:
    if name is not None and name not in coll.columns:
        yield where, f"unknown column {name!r} (columns of {coll.table}: {', '.join(coll.columns)})"


def _check_key(base: str, coll: Collection) -> Problems:
    if isinstance(coll.primary_key, list):
        names = coll.primary_key
        if len(names) > MAX_KEY_COLUMNS:
            yield f"{base}.primary_key", f"a composite key has at most {MAX_KEY_COLUMNS} columns"
        for i, name in enumerate(names):
            yield from _col(coll, f"{base}.primary_key[{i}]", name)
            if names.index(name) != i:
                yield f"{base}.primary_key[{i}]", f"column {name!r} is named twice in the key"
    else:
        yield from _col(coll, f"{base}.primary_key", coll.primary_key)


def _check_columns(base: str, coll: Collection) -> Problems:
    """Identity, suppression, reference, marker, legal-hold and erasure-mask columns."""
    for ident, name in coll.identity_columns():
        yield from _col(coll, f"{base}.identities.{ident}", name)
    for kind in coll.suppress_on_delete:
        if kind not in coll.identities:
            yield f"{base}.suppress_on_delete", f"{kind!r} is not among the collection's identities"
    for i, ref in enumerate(coll.references):
        if ref.composite:
            for j, name in enumerate(ref.columns):
                yield from _col(coll, f"{base}.references[{i}].columns[{j}]", name)
        else:
            yield from _col(coll, f"{base}.references[{i}].column", ref.column)
    if coll.lock:
        yield from _col(coll, f"{base}.lock.at", coll.lock.at)
        yield from _col(coll, f"{base}.lock.reason", coll.lock.reason)
    yield from _col(coll, f"{base}.anonymized_marker", coll.anonymized_marker)
    for i, cond in enumerate(coll.legal_hold):
        yield from _col(coll, f"{base}.legal_hold[{i}].column", cond.column)
    for name in coll.erasure_mask:
        yield from _col(coll, f"{base}.erasure_mask.{name}", name)


def _check_erasure(policy: Policy, base: str, coll: Collection) -> Problems:
    """Erasure by anonymizing masks every identity column; categories are the data map's."""
    if coll.erasure == "anonymize":
        if not (coll.erasure_mask and coll.anonymized_marker):
            yield f"{base}.erasure", "erasure by 'anonymize' needs 'erasure_mask' and 'anonymized_marker'"
        unmasked = [c for _, c in coll.identity_columns() if c not in coll.erasure_mask]
        if unmasked:
            yield f"{base}.erasure_mask", f"identity column(s) {', '.join(unmasked)} must be masked on erasure"
    for cat in coll.categories:
        if policy.categories and cat not in policy.categories:
            yield f"{base}.categories", f"unknown data category {cat!r}"


def _check_rule(where: str, coll: Collection, rule: Rule, repeated: bool) -> Problems:
    if repeated:
        yield f"{where}.name", f"duplicate rule name {rule.name!r}"
    if rule.start.basis != "column":
        yield f"{where}.start.basis", f"basis {rule.start.basis!r} is for S3 collections; SQL rules use a column"
    yield from _col(coll, f"{where}.start.column", rule.start.column)
    for op in ("latest", "earliest"):
        for i, name in enumerate(getattr(rule.start, op) or []):
            yield from _col(coll, f"{where}.start.{op}[{i}]", name)
    yield from _col(coll, f"{where}.start.fallback", rule.start.fallback)
    for kind in rule.suppress:
        if kind not in coll.identities:
            yield f"{where}.suppress", f"{kind!r} is not among the collection's identities"
    for s_i, stage in enumerate(rule.stages):
        for kind in stage.suppress or []:
            if kind not in coll.identities:
                yield f"{where}.stages[{s_i}].suppress", f"{kind!r} is not among the collection's identities"
    if rule.category and rule.category not in coll.categories:
        yield f"{where}.category", f"category {rule.category!r} is not among the collection's categories"
    for i, cond in enumerate(rule.when):
        yield from _col(coll, f"{where}.when[{i}].column", cond.column)
    yield from _check_stages(where, coll, rule)


def _check_stages(where: str, coll: Collection, rule: Rule) -> Problems:
    """A lock stage needs the lock marker, an anonymize stage the anonymized marker and maskable columns."""
    for s_i, stage in enumerate(rule.stages):
        if stage.action == "lock" and coll.lock is None:
            yield f"{where}.stages[{s_i}]", "a 'lock' stage needs the collection's 'lock' marker columns"
        if stage.action == "anonymize":
            if not coll.anonymized_marker:
                yield f"{where}.stages[{s_i}]", "an 'anonymize' stage needs the collection's 'anonymized_marker'"
            for name in stage.mask:
                yield from _col(coll, f"{where}.stages[{s_i}].mask.{name}", name)
                if name in coll.key_columns():
                    yield f"{where}.stages[{s_i}].mask.{name}", "the primary key cannot be masked"

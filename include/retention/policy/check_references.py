"""Cross-checks of references between collections: targets that exist, columns that pair up, what happens to
a row when the one it points at goes, ``orphaned`` starts, and reference cycles."""

from __future__ import annotations

from collections.abc import Iterator

from include.retention.policy.base import literal_head, template_fields
from include.retention.policy.model import Collection, Policy, Reference, System, referrers, s3_prefix

Problems = Iterator[tuple[str, str]]


def check_references(policy: Policy, system: System, base: str, coll: Collection) -> Problems:
    """Each reference of ``coll`` (at ``base``): a known target, and what its kind needs."""
    for i, ref in enumerate(coll.references):
        where = f"{base}.references[{i}]"
        target_sys, _, target_coll = ref.to.partition(".")
        if target_sys not in policy.systems:
            yield f"{where}.to", f"unknown system {target_sys!r} (known: {', '.join(policy.systems)})"
            continue
        if target_coll not in policy.systems[target_sys].collections:
            yield f"{where}.to", f"unknown collection {ref.to!r}"
            continue
        target = policy.systems[target_sys].collections[target_coll]
        if policy.systems[target_sys].kind == "s3":
            yield from _check_object_reference(where, system, coll, ref, target)
            continue
        yield from _check_reference_columns(where, coll, ref, target)
        has_delete = any(st.action == "delete" for r in target.rules for st in r.stages)
        if ref.on_delete is None and (has_delete or target.erasure == "delete"):
            yield (
                f"{where}.on_delete",
                (
                    f"{ref.to} can have rows deleted; say what happens to these rows then "
                    "('on_delete: delete' or 'on_delete: nullify')"
                ),
            )


def _check_object_reference(
    where: str, system: System, coll: Collection, ref: Reference, target: Collection
) -> Problems:
    """A reference to S3 objects: from a table, by one column or a key template inside the target's prefix."""
    if system.kind != "sql":
        yield where, "only SQL collections can reference S3 objects"
    if ref.composite or ref.to_columns:
        yield f"{where}.columns", "a reference to S3 objects names one 'column' or a 'key_template'"
    if ref.key_template:
        for field in template_fields(ref.key_template):
            if field not in coll.columns:
                yield f"{where}.key_template", f"unknown column {field!r} in key template"
        # A filled template must stay inside the target's prefix, or a row could reach other data.
        target_prefix = s3_prefix(target)
        if not literal_head(ref.key_template).startswith(target_prefix):
            yield f"{where}.key_template", (f"the key template must start with {ref.to}'s prefix {target_prefix!r}")


def check_cycle(policy: Policy) -> Problems:
    """A reference cycle: a delete could never take children first."""
    cycle = _find_cycle(policy)
    if cycle:
        first, nxt = cycle[0], cycle[1]
        s, _, c = first.partition(".")
        i = next(i for i, r in enumerate(policy.collection(first).references) if r.to == nxt)
        systems = {node.partition(".")[0] for node in cycle}
        across = " across databases" if len(systems) > 1 else ""
        yield (
            f"systems.{s}.collections.{c}.references[{i}].to",
            f"reference cycle{across}: {' -> '.join(cycle)} (a delete could never take children first)",
        )


def _check_reference_columns(where: str, coll: Collection, ref: Reference, target: Collection) -> Problems:
    """A reference between tables: its columns pair up with named columns of the target (or the target's primary
    key), and ``nullify`` can clear them. Whether the target's columns are unique there is the database's to say
    when they are not the declared primary key (``SqlStore.check`` reflects its unique constraints and indexes)."""
    src = ref.source_columns()
    if not src:
        yield f"{where}.column", "a reference between tables needs 'column' (or 'columns')"
        return
    named = (
        [(f"{where}.to_columns[{j}]", c) for j, c in enumerate(ref.to_columns)]
        if ref.to_columns
        else ([(f"{where}.to_column", ref.to_column)] if ref.to_column else [])
    )
    for at, name in named:
        if name not in target.columns:
            yield at, f"unknown column {name!r} of {ref.to} (columns: {', '.join(target.columns)})"
    key = target.key_columns()
    if not named and len(key) != len(src):
        if len(src) == 1:
            yield (
                f"{where}.to_column",
                (
                    f"{ref.to} has a composite primary key ({', '.join(key)}); a reference of "
                    "one column names the referenced column with 'to_column' (unique there), "
                    "or gives 'columns' and 'to_columns' of as many"
                ),
            )
        else:
            yield (
                f"{where}.to_columns",
                (
                    f"{ref.to}'s primary key has {len(key)} column(s) ({', '.join(key)}) and "
                    f"'columns' {len(src)}: name the referenced columns with 'to_columns'"
                ),
            )
    if ref.on_delete == "nullify":
        in_key = [c for c in src if c in coll.key_columns()]
        if in_key:
            yield (
                f"{where}.on_delete",
                (f"'nullify' would clear column(s) {', '.join(in_key)} of the primary key: use 'on_delete: delete'"),
            )


def check_orphaned(policy: Policy, s_name: str, c_name: str) -> Problems:
    """An ``orphaned`` start needs something that can refer to the items, checkable where they are deleted."""
    system, coll = policy.systems[s_name], policy.systems[s_name].collections[c_name]
    ref = f"{s_name}.{c_name}"
    for r_i, rule in enumerate(coll.rules):
        marker = rule.start.orphaned
        if marker is None:
            continue
        where = f"systems.{s_name}.collections.{c_name}.rules[{r_i}].start.orphaned"
        owners = referrers(policy, ref)
        if not owners:
            yield (
                where,
                (
                    f"no collection's 'references' point at {ref}: every item would count as orphaned "
                    "(add the references that keep an item, or use another start)"
                ),
            )
        if system.kind == "s3":
            if marker != "last_modified":
                yield (
                    where,
                    (
                        "S3 objects count from their upload: write 'orphaned: last_modified' (there is no "
                        "column to stamp)"
                    ),
                )
            for owner, _reference in owners:
                if policy.systems[owner.partition(".")[0]].kind != "sql":
                    yield where, f"{owner} is not a SQL collection; only rows can own objects"
            continue
        if marker in coll.key_columns():
            yield where, "the marker column cannot be the primary key (the sweep writes it)"
        if coll.lock and marker in (coll.lock.at, coll.lock.reason) or marker == coll.anonymized_marker:
            yield where, f"column {marker!r} already marks something else; give the orphan marker its own column"
        for owner, reference in owners:
            o_sys = owner.partition(".")[0]
            if o_sys != s_name:
                yield (
                    where,
                    (
                        f"{owner} (another database) refers to {ref}: 'orphaned' checks references in the "
                        "statement that deletes, so they must be tables of the same database"
                    ),
                )
            elif not reference.source_columns():
                yield where, f"{owner} refers to {ref} without a 'column'"


def _find_cycle(policy: Policy) -> list[str] | None:
    edges: dict[str, list[str]] = {}
    for s, system in policy.systems.items():
        for c, coll in system.collections.items():
            edges[f"{s}.{c}"] = [r.to for r in coll.references]
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, []):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if state.get(nxt) is None and nxt in edges:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in edges:
        if state.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None

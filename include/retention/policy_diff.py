"""Policy diff by records: which records each data map would lock, anonymize or delete, compared one by one.

A record is (system, collection, primary key; a composite key is a tuple; an S3 object is its key). For each
action and horizon (now, and ``DIFF_DAYS``), each data map (old, new) claims a set of records: those a sweep
at ``now + horizon`` would act on with that action under any of its rules, and for ``delete`` also what the
deletes take along: dependents through ``on_delete: delete`` references (to any depth) and the objects the
deleted rows own. A record is *newly affected* for an action when the new map claims it and the old does not;
*no longer affected* the other way round. Subtracting per-rule counts cannot say this (a rule renamed, split
or merged, a start changed from latest to earliest: the counts cancel out or sum twice); sets can.

Where both maps' records of a SQL collection live in one database, the set difference is one query there per
collection: for each horizon and action ``COUNT(new AND NOT old)`` and ``COUNT(old AND NOT new)``, each side's
predicate built by its own store (``SqlStore.eligible``, the same predicate a sweep acts with) and the
cascades as ``fk IN (SELECT key WHERE parent's delete predicate)``; nothing but counts leaves the database.
Everything else (S3 objects due under a rule or owned by deleted rows, a system whose connection differs
between the maps) is streamed a bounded batch at a time into a spool on disk (SQLite in a private temporary
directory, digests of the records under a key drawn for this diff alone, never the keys themselves) and
differenced there with ``EXCEPT``.
Memory stays flat whatever the number of records.

Deletes that reach across databases (a parent in one system whose children in another go with it, or are
held there and keep it) are walked as the store deletes them: the collections involved (``crosses_databases``)
have their delete records spooled part by part, the parents a held child keeps left out, the children matched
exactly in Python (``docs/adr/0019-policy-diff-by-records.md``).

Output: per action, horizon and collection, newly and no longer affected counts; per horizon the distinct
records newly affected by any action; and those records over all horizons (``gate``: what ``cli diff
--threshold`` gates on). Counts and collection names only: no key, no row content.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from include.retention import keytemplate
from include.retention.errors import RetentionError
from include.retention.forecast import ACTIONS, CHANGE_ORDER, DIFF_DAYS, StoreFor, rule_change
from include.retention.policy import Policy, Reference
from include.retention.stores.base import Store
from include.retention.stores.kinds import holds_rows
from include.retention.stores.sql_keys import after, cols_in, has_row_values, key_in, value_of
from include.retention.values import CollectionRef

HORIZONS = (0, DIFF_DAYS)
SIDES = ("old", "new")
PART = 5000  # rows per part read (spool inserts, owned-object lookups, the walk across databases)


@dataclass
class Side:
    """One data map and its stores."""

    name: str  # "old" / "new"
    policy: Policy
    store_for: StoreFor

    def has(self, ref: str) -> bool:
        system, name = CollectionRef.parse(ref)
        return system in self.policy.systems and name in self.policy.systems[system].collections

    def coll(self, ref: str):
        return self.policy.collection(ref)

    def holds_rows(self, ref: str) -> bool:
        """The items of ``ref`` are rows (compared by predicates in their database), not objects."""
        return holds_rows(self.policy, ref)

    def store(self, ref: str) -> Store:
        return self.store_for(CollectionRef.parse(ref).system)


def _delete_parents(policy: Policy, ref: str) -> list[Reference]:
    """``on_delete: delete`` references of SQL collection ``ref`` to SQL parents (of one column or several)."""
    coll = policy.collection(ref)
    return [r for r in coll.references if r.on_delete == "delete" and r.source_columns()
            and r.to in _row_refs(policy)]


def _row_refs(policy: Policy) -> set[str]:
    """The collections of rows (SQL), as ``system.collection``."""
    return {f"{s}.{c}" for s, system in policy.systems.items() if holds_rows(policy, s) for c in system.collections}


def crosses_databases(policy: Policy, ref: str) -> bool:
    """Whether a delete of ``ref``'s rows, or of a row whose delete reaches them, involves another system's rows
    (children there taken along, or holding the parent back): such deletes are walked (``_Diff._walk``)."""
    system = CollectionRef.parse(ref).system
    seen: set[str] = set()
    todo = [ref]
    while todo:
        cur = todo.pop()
        if cur in seen:
            continue
        seen.add(cur)
        if any(CollectionRef.parse(c).system != system and r.on_delete == "delete" for c, r in policy.children(cur)):
            return True
        for r in _delete_parents(policy, cur):
            if CollectionRef.parse(r.to).system != system:
                return True
            todo.append(r.to)
    return False


class _Predicates:
    """One side's predicates over a SQL collection's rows, built by that side's store."""

    def __init__(self, side: Side, now: dt.datetime):
        self.side, self.now, self._n = side, now, 0

    def of(self, ref: str, action: str, t: Any) -> Any | None:
        """Rows of ``t`` (the table of ``ref``, or an alias) this side's sweep at ``now`` would ``action``;
        ``None``: none. ``delete`` includes the rows deleted with a parent (same database, any depth)."""
        side = self.side
        if not side.has(ref) or not side.holds_rows(ref):
            return None
        store, coll, name = side.store(ref), side.coll(ref), CollectionRef.parse(ref).collection
        if coll.rules:
            store.check(name)  # the columns and conditions the predicate names (once per store and collection)
        preds = [store.eligible(name, rule, stage, self.now, t)
                 for rule in coll.rules for stage in rule.stages if stage.action == action]
        if action == "delete":
            for r in _delete_parents(side.policy, ref):
                if CollectionRef.parse(r.to).system != CollectionRef.parse(ref).system:
                    continue
                self._n += 1
                p_name = CollectionRef.parse(r.to).collection
                parent = store.table(p_name).alias(f"diff_parent_{self._n}")
                inner = self.of(r.to, "delete", parent)
                if inner is None:
                    continue
                cols = [parent.c[c] for c in r.target_columns(side.coll(r.to))]
                preds.append(cols_in([t.c[c] for c in r.source_columns()],
                                     sa.select(*cols).where(inner, *(c.is_not(None) for c in cols))))
        return sa.or_(*preds) if preds else None


def _count(pred: Any) -> Any:
    return sa.func.sum(sa.case((pred, 1), else_=0))


def _yes(pred: Any | None) -> Any:
    """NULL-safe truth of a predicate (a NULL start compares NULL: not affected)."""
    return sa.false() if pred is None else sa.func.coalesce(pred, sa.false())


def _url(store: Store) -> str | None:
    engine = getattr(store, "engine", None)
    return engine.url.render_as_string(hide_password=False) if engine is not None else None


class _Spool:
    """Records of both sides, as digests, in a SQLite file of a private temporary directory."""

    def __init__(self) -> None:
        self._key = os.urandom(32)  # this diff's alone: a digest left on disk names nothing afterwards
        self._dir = tempfile.TemporaryDirectory(prefix="retention-diff-")
        self.db = sqlite3.connect(str(Path(self._dir.name) / "records.db"))
        self.db.execute("CREATE TABLE rec (side INTEGER, action TEXT, horizon INTEGER, coll TEXT, rec BLOB)")

    def add(self, side: str, action: str, horizon: int, coll: str, keys: list[Any]) -> None:
        s = SIDES.index(side)
        self.db.executemany("INSERT INTO rec VALUES (?, ?, ?, ?, ?)",
                            [(s, action, horizon, coll, self._digest(coll, k)) for k in keys])

    def _digest(self, coll: str, key: Any) -> bytes:
        return hashlib.blake2b(repr((coll, key)).encode(), key=self._key, digest_size=16).digest()

    def differences(self) -> tuple[dict[tuple[str, int, str], list[int]], dict[int, int], int]:
        """(action, horizon, collection) -> [newly, no longer]; horizon -> distinct records newly affected; distinct
        records newly affected at any horizon."""
        self.db.execute("CREATE INDEX rec_i ON rec (action, horizon, coll, rec, side)")
        out: dict[tuple[str, int, str], list[int]] = {}
        one_way = ("SELECT action, horizon, coll, rec FROM rec WHERE side = ? EXCEPT "
                   "SELECT action, horizon, coll, rec FROM rec WHERE side = ?")
        for i, (a, b) in enumerate(((1, 0), (0, 1))):
            for action, horizon, coll, n in self.db.execute(
                    f"SELECT action, horizon, coll, COUNT(*) FROM ({one_way}) GROUP BY action, horizon, coll", (a, b)):
                out.setdefault((action, horizon, coll), [0, 0])[i] = n
        anyway = dict(self.db.execute(f"SELECT horizon, COUNT(*) FROM (SELECT DISTINCT horizon, coll, rec FROM "
                                      f"({one_way})) GROUP BY horizon", (1, 0)).fetchall())
        (records,) = self.db.execute(f"SELECT COUNT(*) FROM (SELECT DISTINCT coll, rec FROM ({one_way}))",
                                     (1, 0)).fetchone()
        return out, anyway, records

    def close(self) -> None:
        self.db.close()
        self._dir.cleanup()


def _collections(sides: tuple[Side, Side]) -> list[str]:
    return list(dict.fromkeys(f"{s}.{c}" for side in sides for s, system in side.policy.systems.items()
                              for c in system.collections))


class _Diff:
    def __init__(self, old: Side, new: Side, now: dt.datetime, horizons: tuple[int, ...]):
        self.sides = (old, new)
        self.now, self.horizons = now, horizons
        self.counts: dict[tuple[str, int, str], list[int]] = {}  # (action, horizon, coll) -> [newly, no longer]
        self.any_newly = dict.fromkeys(horizons, 0)  # horizon -> records newly affected by any action
        self.any_records = 0  # records newly affected by any action at any horizon (the gate)
        self.errors: dict[str, str] = {}
        self.family: set[str] = set()  # SQL collections whose deletes reach across databases (``_walk``)
        self.spool = _Spool()

    def at(self, horizon: int) -> dt.datetime:
        return self.now + dt.timedelta(days=horizon)

    # ---- where a collection's records are compared ---------------------------------------------------
    def in_database(self, ref: str) -> bool:
        """Both sides' rows of SQL collection ``ref`` are in one database, reached the same way."""
        present = [s for s in self.sides if s.has(ref)]
        if not all(s.holds_rows(ref) for s in present):
            return False
        urls = {_url(s.store(ref)) for s in present}
        tables = {s.coll(ref).table for s in present}
        return len(urls) == 1 and len(tables) == 1

    def run(self) -> None:
        self.family = {ref for ref in _collections(self.sides)
                       if any(s.has(ref) and s.holds_rows(ref) and crosses_databases(s.policy, ref)
                              for s in self.sides)}
        if self.family:
            for side in self.sides:
                for h in self.horizons:
                    try:
                        self._walk(side, h)
                    except RetentionError as exc:
                        self.errors[f"{side.name} data map, {h} days"] = str(exc)
                    except sa.exc.SQLAlchemyError as exc:
                        self.errors[f"{side.name} data map, {h} days"] = (f"{type(exc).__name__} while walking the "
                                                                          "deletes across databases")
        for ref in _collections(self.sides):
            try:
                self._collection(ref)
            except RetentionError as exc:
                self.errors[ref] = str(exc)
            except sa.exc.SQLAlchemyError as exc:  # the statement text may carry values: the class only
                self.errors[ref] = f"{type(exc).__name__} while comparing {ref}"
        counts, anyway, records = self.spool.differences()
        self.any_records += records
        for key, pair in counts.items():
            self.counts.setdefault(key, [0, 0])
            self.counts[key][0] += pair[0]
            self.counts[key][1] += pair[1]
        for h, n in anyway.items():
            self.any_newly[h] += n

    def _collection(self, ref: str) -> None:
        present = [s for s in self.sides if s.has(ref)]
        if all(s.holds_rows(ref) for s in present):
            for s in present:
                if s.coll(ref).rules:
                    s.store(ref).check(CollectionRef.parse(ref).collection)
            if ref in self.family:  # deletes walked across databases (``_walk``); the other actions spooled here
                self._sql_spooled(ref, actions=tuple(a for a in ACTIONS if a != "delete"))
            elif self.in_database(ref):
                self._sql_in_database(ref)
                self._owned_objects(ref)
            else:
                self._sql_spooled(ref)
                self._owned_objects(ref)
        else:
            self._s3_rules(ref)

    # ---- SQL: the set difference in the database ---------------------------------------------------
    def _sql_in_database(self, ref: str) -> None:
        """One aggregate over the table: per horizon and action newly / no longer, per horizon the rows newly
        affected by any action, and the rows newly affected at any horizon."""
        store = next(s for s in reversed(self.sides) if s.has(ref)).store(ref)
        t = store.table(CollectionRef.parse(ref).collection)
        cols: list[Any] = []
        used: list[tuple[str, int]] = []
        per_h: dict[int, list[Any]] = {}
        for h in self.horizons:
            preds = [_Predicates(s, self.at(h)) for s in self.sides]
            for action in ACTIONS:
                old, new = (p.of(ref, action, t) for p in preds)
                if old is None and new is None:
                    continue
                newly = sa.and_(_yes(new), sa.not_(_yes(old)))
                gone = sa.and_(_yes(old), sa.not_(_yes(new)))
                cols += [_count(newly), _count(gone)]
                used.append((action, h))
                per_h.setdefault(h, []).append(newly)
        if not used:
            return
        cols += [_count(sa.or_(*per_h[h])) for h in per_h]
        cols.append(_count(sa.or_(*(c for h in per_h for c in per_h[h]))))
        with store.engine.connect() as conn:
            row = conn.execute(sa.select(*cols).select_from(t)).one()
        for i, (action, h) in enumerate(used):
            self.counts[(action, h, ref)] = [int(row[2 * i] or 0), int(row[2 * i + 1] or 0)]
        for i, h in enumerate(per_h):
            self.any_newly[h] += int(row[2 * len(used) + i] or 0)
        self.any_records += int(row[-1] or 0)

    # ---- SQL in different databases: keys streamed into the spool -------------------------------------
    def _rows(self, side: Side, ref: str, action: str, horizon: int, cols: list[str] | None = None
              ) -> Iterator[list[Any]]:
        """The rows (key columns, or ``cols``) ``side`` would ``action`` at ``horizon``, a part at a time."""
        store, name = side.store(ref), CollectionRef.parse(ref).collection
        t = store.table(name)
        pred = _Predicates(side, self.at(horizon)).of(ref, action, t)
        if pred is None:
            return
        names = cols if cols is not None else side.coll(ref).key_columns()
        for part in _pages(store, ref, names, _yes(pred)):
            yield [tuple(row[c] for c in names) for row in part]

    def _sql_spooled(self, ref: str, actions: tuple[str, ...] = ACTIONS) -> None:
        for side in self.sides:
            if not side.has(ref):
                continue
            for action in actions:
                for h in self.horizons:
                    for part in self._rows(side, ref, action, h):
                        self.spool.add(side.name, action, h, ref, part)

    # ---- deletes across databases: walked part by part, as the store deletes them ----------------------------
    def _walk(self, side: Side, horizon: int) -> None:
        """Spool the records ``side``'s deletes at ``horizon`` remove in collections of ``self.family``: each
        collection's own due rows (``SqlStore.eligible``), less those a held row of another database keeps
        (``held_dependents`` there), then what goes with them (children in this or another database, exactly
        matched across databases; the objects they own), one part of rows at a time."""
        policy, now = side.policy, self.at(horizon)
        for ref in _row_refs(policy):
            if not self._leads_to_family(policy, ref):
                continue
            coll, store, name = side.coll(ref), side.store(ref), CollectionRef.parse(ref).collection
            stages = [(rule, st) for rule in coll.rules for st in rule.stages if st.action == "delete"]
            if not stages:
                continue
            store.check(name)
            t = store.table(name)
            cols = self._walk_columns(policy, ref)
            pred = sa.or_(*(store.eligible(name, rule, st, now, t) for rule, st in stages))
            for part in _pages(store, ref, cols, _yes(pred)):
                self._going(side, horizon, ref, part)

    def _leads_to_family(self, policy: Policy, ref: str) -> bool:
        """``ref`` is in the family, or a delete there cascades into it."""
        if ref in self.family:
            return True
        return any(r.on_delete == "delete" and self._leads_to_family(policy, child)
                   for child, r in policy.children(ref))

    @staticmethod
    def _walk_columns(policy: Policy, ref: str) -> list[str]:
        """The key, the columns children reference, and the columns naming owned objects."""
        coll = policy.collection(ref)
        cols = list(coll.key_columns())
        cols += [c for _child, r in policy.children(ref) for c in r.target_columns(coll)]
        for r in policy.owned_objects(ref):
            cols += ([r.column] if r.column else []) + _template_fields(r, coll)
        return list(dict.fromkeys(cols))

    def _going(self, side: Side, horizon: int, ref: str, rows: list[dict[str, Any]]) -> None:
        """``rows`` of ``ref`` would be deleted (with their cascades): keep those held elsewhere, spool the rest,
        and go on to their children and objects."""
        policy, system = side.policy, CollectionRef.parse(ref).system
        coll = policy.collection(ref)
        for child, r in policy.children(ref):  # a held row in another database keeps its parent (ADR 0012)
            if CollectionRef.parse(child).system == system or r.on_delete != "delete" or not rows:
                continue
            target = r.target_columns(coll)
            values = sorted({v for row in rows if (v := value_of(row[c] for c in target)) is not None}, key=repr)
            column = r.source_columns() if r.composite else r.column
            held = side.store(child).held_dependents(child.partition(".")[2], column, values) if values else set()
            rows = [row for row in rows if value_of(row[c] for c in target) not in held]
        if not rows:
            return
        if ref in self.family:
            keys = coll.key_columns()
            self.spool.add(side.name, "delete", horizon, ref, [tuple(row[k] for k in keys) for row in rows])
            for r in policy.owned_objects(ref):
                found = side.store_for(CollectionRef.parse(r.to).system).referenced_due(r, rows)
                if found:
                    self.spool.add(side.name, "delete", horizon, r.to, found)
        for child, r in policy.children(ref):
            if r.on_delete != "delete" or not self._leads_to_family(policy, child):
                continue
            target, source = r.target_columns(coll), r.source_columns()
            values = sorted({v for row in rows if (v := value_of(row[c] for c in target)) is not None}, key=repr)
            exact = CollectionRef.parse(child).system != system  # another database's collation does not decide
            c_store, c_cols = side.store(child), self._walk_columns(policy, child)
            c_store.check(CollectionRef.parse(child).collection)
            c_t = c_store.table(CollectionRef.parse(child).collection)
            fks = [c_t.c[c] for c in source]
            for i in range(0, len(values), 500):
                chunk = values[i:i + 500]
                wanted = set(chunk)
                for found in _pages(c_store, child, [*c_cols, *source], key_in(fks, chunk)):
                    self._going(side, horizon, child,
                                [k for k in found if not exact or value_of(k[c] for c in source) in wanted])

    # ---- S3: objects due under a rule, and objects deleted rows own ----------------------------------------
    def _unchanged_s3(self, ref: str) -> bool:
        """The S3 collection, its rules and its connection are the same in both maps, no rule of it looks at other
        collections (orphaned) and no row owns objects in it (an object due under its rule in both maps and owned
        by a row only one map deletes is no difference): both maps find the same objects due, no listing needed."""
        old, new = self.sides
        if not (old.has(ref) and new.has(ref)):
            return False
        if any(r.to == ref for side in self.sides for owner in _row_refs(side.policy)
               for r in side.policy.owned_objects(owner)):
            return False
        if old.policy.system_of(ref).connection != new.policy.system_of(ref).connection:
            return False
        if getattr(old.store(ref), "endpoint", None) != getattr(new.store(ref), "endpoint", None):
            return False
        if any(r.start.orphaned is not None for r in (*old.coll(ref).rules, *new.coll(ref).rules)):
            return False
        return old.coll(ref).model_dump() == new.coll(ref).model_dump()

    def _s3_rules(self, ref: str) -> None:
        if self._unchanged_s3(ref):
            return
        for side in self.sides:
            if not side.has(ref):
                continue
            name = CollectionRef.parse(ref).collection
            rules = side.coll(ref).rules
            if rules:
                side.store(ref).check(name)
            for rule in rules:
                for h in self.horizons:
                    for page in side.store(ref).due_keys(name, rule, self.at(h)):
                        for action in ACTIONS:
                            keys = [k for a, k in page if a == action]
                            if keys:
                                self.spool.add(side.name, action, h, ref, keys)

    def _owned_objects(self, ref: str) -> None:
        """The objects that deleting ``ref``'s rows deletes (each side: its own rows, its own references)."""
        for side in self.sides:
            if not side.has(ref):
                continue
            coll = side.coll(ref)
            for r in side.policy.owned_objects(ref):
                cols = list(dict.fromkeys([*([r.column] if r.column else []), *_template_fields(r, coll)]))
                target = side.store_for(CollectionRef.parse(r.to).system)
                for h in self.horizons:
                    for part in self._rows(side, ref, "delete", h, cols):
                        rows = [dict(zip(cols, values, strict=True)) for values in part]
                        keys = target.referenced_due(r, rows)
                        if keys:
                            self.spool.add(side.name, "delete", h, r.to, keys)


def _pages(store: Any, ref: str, cols: list[str], where: Any) -> Iterator[list[dict[str, Any]]]:
    """Rows of ``ref`` matching ``where`` (``cols`` of each, as dicts), ``PART`` at a time in key order, each
    part read in its own short transaction: the walk reads other tables (and, on SQLite, whose transactions lock
    the file, the same database) between parts."""
    t = store.table(CollectionRef.parse(ref).collection)
    pk = store.key_cols(CollectionRef.parse(ref).collection, t)
    cols = list(dict.fromkeys([*cols, *(c.name for c in pk)]))
    last = None
    while True:
        with store.engine.connect() as conn:
            row_values = has_row_values(conn.dialect)
            rows = conn.execute(sa.select(*(t.c[c] for c in cols)).where(where, *after(pk, last, row_values))
                                .order_by(*pk).limit(PART)).all()
        if not rows:
            return
        part = [dict(zip(cols, r, strict=True)) for r in rows]
        last = tuple(part[-1][c.name] for c in pk)
        yield part
        if len(rows) < PART:
            return


def _template_fields(ref: Reference, coll: Any) -> list[str]:
    if not ref.key_template:
        return []
    return [c for c in keytemplate.fields(ref.key_template) if c in coll.columns]


def diff_records(old: Policy, new: Policy, old_store_for: StoreFor, new_store_for: StoreFor,
                 now: dt.datetime | None = None, horizons: tuple[int, ...] = HORIZONS) -> dict[str, Any]:
    """Compare what ``old`` and ``new`` would lock / anonymize / delete, record by record. Read-only."""
    now = now or dt.datetime.now(dt.UTC)
    d = _Diff(Side("old", old, old_store_for), Side("new", new, new_store_for), now, tuple(horizons))
    try:
        d.run()
    finally:
        d.spool.close()
    rows = [{"action": a, "horizon": h, "collection": c, "newly": n, "no_longer": g}
            for (a, h, c), (n, g) in d.counts.items() if n or g]
    rows.sort(key=lambda r: (ACTIONS.index(r["action"]), r["horizon"], r["collection"]))
    totals = [{"action": a, "horizon": h,
               "newly": sum(r["newly"] for r in rows if r["action"] == a and r["horizon"] == h),
               "no_longer": sum(r["no_longer"] for r in rows if r["action"] == a and r["horizon"] == h)}
              for h in horizons for a in ACTIONS]
    rule_ids = list(dict.fromkeys([*old.rule_ids(), *new.rule_ids()]))
    changes = sorted(({"rule_id": rid, "change": rule_change(old, new, rid)} for rid in rule_ids),
                     key=lambda r: (CHANGE_ORDER[r["change"]], r["rule_id"]))
    return {"now": now.isoformat(), "old": {"source": old.source, "digest": old.digest},
            "new": {"source": new.source, "digest": new.digest}, "horizons": list(horizons),
            "collections": rows, "totals": totals,
            "newly_affected": [{"horizon": h, "records": d.any_newly[h]} for h in horizons],
            "gate": d.any_records,
            "rules": changes,
            "errors": [{"collection": c, "error": e} for c, e in d.errors.items()]}


def _horizon_name(h: int) -> str:
    return "now" if h == 0 else f"{h}d"


def _within(h: int) -> str:
    return "now" if h == 0 else f"within {h} days"


def records_table(diff: dict[str, Any]) -> str:
    """Plain text: per collection and action, records newly / no longer affected at each horizon."""
    horizons = diff["horizons"]
    header = ["collection", "action", *(f"{w} {_horizon_name(h)}" for h in horizons for w in ("newly", "no longer"))]
    cells: dict[tuple[str, str], dict[int, tuple[int, int]]] = {}
    for r in diff["collections"]:
        cells.setdefault((r["collection"], r["action"]), {})[r["horizon"]] = (r["newly"], r["no_longer"])
    rows = [header]
    for (coll, action), per in sorted(cells.items(), key=lambda kv: (kv[0][0], ACTIONS.index(kv[0][1]))):
        rows.append([coll, action, *(str(per.get(h, (0, 0))[i]) for h in horizons for i in (0, 1))])
    lines: list[str] = []
    if len(rows) > 1:
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths,
                                                                                              strict=True)))
                 for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append("")
    else:
        lines.append("no record is newly or no longer locked, anonymized or deleted")
    changed = [f"{r['rule_id']} ({r['change']})" for r in diff["rules"] if r["change"] != "unchanged"]
    if changed:
        lines.append("rules changed: " + ", ".join(changed))
    for e in diff["errors"]:
        lines.append(f"not compared: {e['collection']}: {e['error']}")
    per_h = ", ".join(f"{n['records']} {_within(n['horizon'])}" for n in diff["newly_affected"])
    deleted = ", ".join(f"{t['newly']} {_within(t['horizon'])}" for t in diff["totals"] if t["action"] == "delete")
    lines.append(f"records newly affected (locked, anonymized or deleted; dependents and owned objects "
                 f"included): {per_h}, {diff['gate']} in all; newly deleted: {deleted}")
    return "\n".join(lines)

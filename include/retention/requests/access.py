"""Access packages (GDPR Art. 15 and 20): one person's data from every system, as one zip.

Kind-agnostic over the store interface: ``subject_collections`` / ``find`` find the person's items
(``owned`` tells their own rows from rows that only mention them), ``column_values`` / ``children`` add
every row that references one of their own rows, through any reference, in any SQL system, grandchildren
too (matched exactly in Python: ``PackageBuilder.find``), ``read`` yields the rows in bounded batches,
``owned_keys`` / ``stream_object`` copy the S3 objects a row owns (CVs, attachments) byte for byte, under
safe, unique entry names (``include.retention.requests.package_names``). Rows go through pandas chunk by chunk
into temporary files and from there into a zip on disk, so memory stays bounded by one chunk whatever
the number of rows; the zip is then uploaded in parts (``include.retention.stores.s3_writes.Upload``).

Layout (``format`` human): ``README.md``, ``manifest.json``, ``data/<system>.<collection>.csv`` and
``.json`` per collection, ``objects/<system>.<collection>/<key>``. ``format`` portable (Art. 20):
``data/<system>.<collection>.json`` per collection and one flat ``data.csv`` (collection, record,
field, value). Column names are the data map's; dates ISO 8601; bytes base64 (``base64:`` prefix).

Nothing of the content is logged or returned: callers get counts, the file's size and SHA-256.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from include.retention.describe import conditions_text
from include.retention.errors import RetentionError
from include.retention.policy import Collection, Policy, Reference, Rule
from include.retention.progress import Steps
from include.retention.requests.package_names import EntryNames
from include.retention.stores.base import Claims, HoldsObjects, ReferencingRows, Store, Subject, collection_order
from include.retention.stores.s3_objects import owned_key
from include.retention.stores.sql_keys import key_of
from include.retention.values import CollectionRef

log = logging.getLogger(__name__)

FORMATS = ("human", "portable")
COPY_CHUNK = 1024 * 1024


@dataclass
class PackageResult:
    path: str
    size: int
    sha256: str
    rows: dict[str, int] = field(default_factory=dict)  # per collection ref
    objects: dict[str, int] = field(default_factory=dict)  # per S3 collection ref: objects copied in
    searched: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # system -> collection -> kinds
    files: int = 0


def cell(value: Any) -> Any:
    """A value as the package writes it: ISO 8601 dates, base64 bytes, exact decimals; the rest as is."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "base64:" + base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return value


def _frame(rows: list[dict[str, Any]], columns: list[str]):
    import pandas as pd

    return pd.DataFrame([[cell(r.get(c)) for c in columns] for r in rows], columns=columns, dtype=object)


def storage_periods(policy: Policy, ref: str) -> list[str]:
    """What the data map says about how long a collection's items stay, and from which event."""
    coll = policy.collection(ref)
    out = [describe_rule(rule) for rule in coll.rules]
    for reference in coll.references:
        if reference.on_delete == "delete":
            out.append(f"deleted together with the {reference.to} item it belongs to")
    if not out:
        owners = [f"{s}.{c}" for s, system in policy.systems.items() for c, other in system.collections.items()
                  for r in other.references if r.to == ref]
        out += [f"deleted together with the {o} item that references it" for o in owners]
    return out or ["no storage period of its own in the data map"]


def describe_rule(rule: Rule) -> str:
    start = rule.start
    event = (start.describe() if start.basis == "column" else
             {"last_modified": "the object's last modification", "key_date": "the date in the object's key"}
             .get(start.basis, f"the {start.basis} field {start.name}"))
    if start.round_up:
        event += f" (counted from the end of that {start.round_up})"
    stages = ", then ".join(f"{s.action} after {s.after}" for s in rule.stages)
    when = f" where {conditions_text(rule.when)}" if rule.when else ""
    return f"{rule.name}: {stages}, counted from {event}{when}"


@dataclass
class Found:
    """One collection's items of the person: their own (``claims``), those that only mention them
    (key -> the fields that do), and how many were reached each way ("identity", or the reference followed)."""

    claims: Claims = field(default_factory=Claims)
    mentioned: dict[Any, set[str]] = field(default_factory=dict)
    how: dict[str, int] = field(default_factory=dict)

    def count(self, way: str, n: int) -> None:
        self.how[way] = self.how.get(way, 0) + n


def parents_first(policy: Policy) -> list[str]:
    """Every collection ref of the data map, each after every collection whose rows its rows reference
    (``Policy.children``: across systems; the data map has no reference cycles)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(ref: str) -> None:
        if ref in seen:
            return
        seen.add(ref)
        for r in policy.collection(ref).references:
            if r.to != ref and any(child == ref and c_ref is r for child, c_ref in policy.children(r.to)):
                visit(r.to)
        order.append(ref)

    for s, system in policy.systems.items():
        for c in system.collections:
            visit(f"{s}.{c}")
    return order


def describe_reference(child_ref: str, reference: Reference, parent_ref: str, target_columns: list[str]) -> str:
    """How a child was reached, for the manifest: ``crm.orders (customer_id) -> crm.customers (id)``."""
    return (f"{child_ref} ({', '.join(reference.source_columns())}) -> "
            f"{parent_ref} ({', '.join(target_columns)})")


class PackageBuilder:
    """Builds one request's zip in a temporary directory; ``store_of(system)`` gives the stores."""

    def __init__(self, policy: Policy, store_of: Callable[[str], Store], subjects: list[Subject], *,
                 request_id: str, fmt: str = "human", now: dt.datetime | None = None, workdir: str | None = None):
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}")
        self.policy, self.store_of, self.subjects = policy, store_of, subjects
        self.request_id, self.fmt = request_id, fmt
        self.now = now or dt.datetime.now(dt.UTC)
        self.dir = tempfile.mkdtemp(prefix="access-", dir=workdir)
        self.names = EntryNames()
        self.entries: dict[str, dict[str, str]] = {}  # zip entry -> {"collection", "key"} of the object in it
        self._copied: dict[tuple[str, str], str] = {}  # (collection ref, key) -> its entry

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- finding -----------------------------------------------------------------------------
    def reachable(self) -> set[str]:
        """Collections searched by identity, and the SQL collections reachable from those by references."""
        start = [f"{s}.{c}" for s, system in self.policy.systems.items() for c, coll in system.collections.items()
                 if coll.identities]
        reach, todo = set(start), list(start)
        while todo:
            for child_ref, _ in self.policy.children(todo.pop()):
                if child_ref not in reach:
                    reach.add(child_ref)
                    todo.append(child_ref)
        return reach

    def systems(self) -> list[str]:
        """Systems searched by identity, and systems holding collections reachable from those by references."""
        used = {CollectionRef.parse(ref).system for ref in self.reachable()}
        return [name for name in self.policy.systems if name in used]

    def check(self) -> None:
        """Every SQL collection the package may read, checked against its database before any row is read
        (``SqlStore.check``): among the rest, every reference followed into it points at columns unique there
        (its primary key, a unique constraint or unique index), so each child has one parent row and belongs to
        the person exactly when that row is theirs. A reference to columns that are not unique is refused
        (``PolicyError`` naming its path and columns) and no package is built."""
        for ref in sorted(self.reachable()):
            system, name = CollectionRef.parse(ref)
            store = self.store_of(system)
            if isinstance(store, ReferencingRows):  # references are followed into these (``find``)
                store.check(name)

    def find(self) -> dict[str, Found]:
        """Per collection ref: the person's items found by identity, then every child of an item that is their
        own, through every reference (plain, ``to_column``, composite; in its database or another), grandchildren
        too. Values are matched exactly (``Store.children``); an item that only mentions the person (``erase:
        mask``) is nobody's parent. Checks the data map against the databases first (``check``)."""
        self.check()
        found: dict[str, Found] = {}
        for system in self.systems():
            store = self.store_of(system)
            for name in store.subject_collections():
                claims = store.find(name, self.subjects)
                own, mentioned = store.owned(name, claims, self.subjects)
                entry = found[store.ref(name)] = Found(own, mentioned)
                entry.count("identity", len(own) + len(mentioned))
        for parent_ref in parents_first(self.policy):
            parent = found.get(parent_ref)
            if parent is None or not parent.claims:
                continue
            for child_ref, reference in self.policy.children(parent_ref):
                self._follow(found, parent_ref, parent, child_ref, reference)
        return found

    def _follow(self, found: dict[str, Found], parent_ref: str, parent: Found, child_ref: str,
                reference: Reference) -> None:
        target = self.policy.collection(parent_ref)
        source_cols, target_cols = reference.source_columns(), reference.target_columns(target)
        if len(source_cols) != len(target_cols):
            raise RetentionError(f"{child_ref}: a reference to {parent_ref} pairs {len(source_cols)} column(s) with "
                                 f"{len(target_cols)}; nothing was packaged")
        p_sys, p_name = CollectionRef.parse(parent_ref)
        c_sys, c_name = CollectionRef.parse(child_ref)
        owners: dict[tuple, set[str]] = {}
        for key, value in self.store_of(p_sys).column_values(p_name, list(parent.claims), target_cols).items():
            owners.setdefault(value, set()).update(parent.claims[key])
        kids = self.store_of(c_sys).children(c_name, reference, list(owners)) if owners else {}
        child = found.setdefault(child_ref, Found())
        for key, value in kids.items():
            for rid in owners[value]:
                child.claims.add(key, rid)
            child.mentioned.pop(key, None)
        child.count(describe_reference(child_ref, reference, parent_ref, target_cols), len(kids))

    # ---- writing -----------------------------------------------------------------------------
    def build(self) -> PackageResult:
        path = os.path.join(self.dir, f"{self.request_id}.zip")
        result = PackageResult(path=path, size=0, sha256="")
        manifest: dict[str, Any] = {"request_id": self.request_id, "format": self.fmt,
                                    "created_at": self.now.isoformat(), "policy_version": self.policy.policy_version,
                                    "policy_digest": self.policy.digest, "systems": {}, "categories": {}}
        found = self.find()
        flat = None
        for reserved in ("manifest.json", "README.md", "data.csv"):
            self.names.reserve(reserved)
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            if self.fmt == "portable":
                flat = open(os.path.join(self.dir, "data.csv"), "w", encoding="utf-8", newline="")  # noqa: SIM115
                flat.write("collection,record,field,value\n")
            steps = Steps(f"access package {self.request_id}",
                          sum(len(collection_order(self.policy, system)) for system in self.systems()), "collections")
            for system in self.systems():
                store = self.store_of(system)
                searched = store.searched_kinds()
                result.searched[system] = searched
                sys_entry: dict[str, Any] = {"kind": self.policy.systems[system].kind, "collections": {}}
                for name in collection_order(self.policy, system):
                    ref = store.ref(name)
                    coll = self.policy.collection(ref)
                    got = found.get(ref)
                    if got is None and ref not in searched:
                        steps.step(ref, "not searched")
                        continue
                    got = got or Found()
                    entry = {"categories": coll.categories, "identities_searched": searched.get(ref, []),
                             "found_through": dict(sorted(got.how.items())), "rows": 0,
                             "only_mentioning": len(got.mentioned), "files": []}
                    if got.claims or got.mentioned:
                        entry["rows"], entry["files"] = self._collection(zf, store, name, got, flat, result)
                    result.rows[ref] = entry["rows"]
                    sys_entry["collections"][ref] = entry
                    steps.step(ref, f"{entry['rows']} row(s)")
                manifest["systems"][system] = sys_entry
            if flat is not None:
                flat.close()
                zf.write(flat.name, "data.csv")
                os.unlink(flat.name)
                result.files += 1
            manifest["objects"] = result.objects
            manifest["object_entries"] = dict(sorted(self.entries.items()))
            manifest["categories"] = self._categories(manifest)
            zf.writestr("manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True))
            zf.writestr("README.md", render_readme(manifest))
            result.files += 2
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(COPY_CHUNK):
                digest.update(block)
        result.size, result.sha256 = os.path.getsize(path), digest.hexdigest()
        log.info("access package for request %s: %d file(s), %d row(s), %d object(s), %d bytes", self.request_id,
                 result.files, sum(result.rows.values()), sum(result.objects.values()), result.size)
        return result

    def _collection(self, zf: zipfile.ZipFile, store: Store, name: str, got: Found, flat: Any,
                    result: PackageResult) -> tuple[int, list[str]]:
        ref = store.ref(name)
        coll = self.policy.collection(ref)
        columns = store.read_columns(name)
        claims = Claims(got.claims)
        for key in got.mentioned:
            claims.add(key, self.request_id)
        if coll.format:  # records inside objects: the store reads only this person's records of each object
            claims.subjects = list(self.subjects)
        csv_path = os.path.join(self.dir, f"{ref}.csv")
        json_path = os.path.join(self.dir, f"{ref}.json")
        rows = 0
        write_csv = self.fmt == "human"
        with open(json_path, "w", encoding="utf-8") as js, \
                open(csv_path, "w", encoding="utf-8", newline="") as cs:
            js.write("[")
            for batch in store.read(name, claims):
                if not batch:
                    continue
                own = self._only_theirs(coll, batch, got)
                frame = _frame(batch, columns)
                if write_csv:
                    frame.to_csv(cs, header=rows == 0, index=False, lineterminator="\n")
                text = frame.to_json(orient="records", force_ascii=False, date_format="iso")
                js.write(("," if rows else "") + text[1:-1])
                if flat is not None:
                    self._flat(flat, ref, frame, rows)
                rows += len(batch)
                self._objects(zf, store, name, coll, own, result)
            js.write("]")
        files = []
        for path, suffix, wanted in ((csv_path, "csv", write_csv), (json_path, "json", True)):
            if wanted:
                arc = f"data/{ref}.{suffix}"
                zf.write(path, arc)
                files.append(arc)
                result.files += 1
            os.unlink(path)
        return rows, files

    @staticmethod
    def _only_theirs(coll: Collection, batch: list[dict[str, Any]], got: Found) -> list[dict[str, Any]]:
        """Rows that only mention the person keep their key and the mentioning fields, nothing else (the rest is
        somebody else's), in place; returns the rows that are the person's own (whose objects are theirs too). Only
        a store whose ``owned`` tells mentioning items apart (SQL rows) has any."""
        if not got.mentioned:
            return batch
        keep_always = set(coll.key_columns())
        own = []
        for row in batch:
            key = key_of([row[c] for c in coll.key_columns()])
            cols = got.mentioned.get(key) if key not in got.claims else None
            if cols is None:
                own.append(row)
                continue
            for c in row:
                if c not in keep_always and c not in cols:
                    row[c] = None
        return own

    @staticmethod
    def _flat(flat: Any, ref: str, frame: Any, offset: int) -> None:
        import pandas as pd

        long = frame.reset_index(drop=True)
        long.index = long.index + offset
        melted = long.astype(object).reset_index(names="record").melt(id_vars="record", var_name="field",
                                                                        value_name="value")
        melted.insert(0, "collection", ref)
        melted = melted.sort_values(["record"], kind="stable")
        melted["value"] = melted["value"].map(lambda v: json.dumps(v, ensure_ascii=False) if isinstance(v, bool)
                                              else v)
        pd.DataFrame(melted).to_csv(flat, header=False, index=False, lineterminator="\n")

    def _objects(self, zf: zipfile.ZipFile, store: Store, name: str, coll: Collection,
                 batch: list[dict[str, Any]], result: PackageResult) -> None:
        """Copy in the objects these items are or own, byte for byte."""
        if isinstance(store, HoldsObjects):
            if coll.format:  # records inside objects: the person's records only, never the objects (others' too)
                return
            for row in batch:
                self._copy(zf, store, name, row["key"], result)
            return
        for reference in self.policy.owned_objects(store.ref(name)):
            target_sys, target = CollectionRef.parse(reference.to)
            target_store = self.store_of(target_sys)
            for row in batch:
                key, is_prefix = owned_key(reference, row)
                if key is None:
                    continue
                for found in target_store.owned_keys(target, key, is_prefix):
                    self._copy(zf, target_store, target, found, result)

    def _copy(self, zf: zipfile.ZipFile, store: Store, name: str, key: str, result: PackageResult) -> None:
        """One object into its own entry (``include.retention.requests.package_names``: safe, unique, bounded), once."""
        ref = store.ref(name)
        if (ref, key) in self._copied:
            return
        arc = self.names.name(f"objects/{ref}/", key)
        with zf.open(arc, "w", force_zip64=True) as out:
            for chunk in store.stream_object(name, key):
                out.write(chunk)
        self._copied[(ref, key)] = arc
        self.entries[arc] = {"collection": ref, "key": key}
        result.objects[ref] = result.objects.get(ref, 0) + 1
        result.files += 1

    def _categories(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Per category found or searched: description, purpose, legal basis, recipients, source, where, how long."""
        out: dict[str, Any] = {}
        refs = [ref for system in manifest["systems"].values() for ref in system["collections"]]
        refs += [ref for ref in manifest["objects"] if ref not in refs]
        for ref in refs:
            system = CollectionRef.parse(ref).system
            for cat in self.policy.collection(ref).categories:
                info = self.policy.category_info(cat)
                entry = out.setdefault(cat, {
                    "description": info.description, "purpose": info.purpose, "legal_basis": info.legal_basis,
                    "recipients": list(info.recipients), "source": info.source or "the person themselves",
                    "systems": [], "collections": {}})
                if system not in entry["systems"]:
                    entry["systems"].append(system)
                rows = manifest["systems"].get(system, {}).get("collections", {}).get(ref, {}).get("rows")
                entry["collections"][ref] = {"storage": storage_periods(self.policy, ref),
                                             "items": rows if rows is not None else manifest["objects"].get(ref, 0)}
        return out


def render_readme(manifest: dict[str, Any]) -> str:
    """The package's README: what is in it and, per category, why, where from, how long, to whom."""
    lines = [
        f"# Your data: request {manifest['request_id']}",
        "",
        f"Created {manifest['created_at']} (format: {manifest['format']}), data map version "
        f"{manifest.get('policy_version') or '-'}.",
        "",
        "This package holds a copy of the personal data we keep about you (GDPR Art. 15"
        + (", in a machine-readable form for Art. 20" if manifest["format"] == "portable" else "") + "):",
        "",
        "- `data/`: one file per collection (table) of each system, column names as in our data map, "
        "dates in ISO 8601, binary values as `base64:` text"
        + ("; `data.csv`: every value as one line (collection, record, field, value)"
           if manifest["format"] == "portable" else "; each collection as CSV and as JSON"),
        "- `objects/`: files you gave us (e.g. CVs, attachments), exactly as stored",
        "- `manifest.json`: the same as this README, for machines",
        "",
        "## Categories of data",
        "",
    ]
    for name, cat in sorted(manifest["categories"].items()):
        lines += [f"### {name}: {cat['description']}", ""]
        lines.append(f"- purpose: {cat.get('purpose') or 'see our privacy policy'}")
        if cat.get("legal_basis"):
            lines.append(f"- legal basis: {cat['legal_basis']}")
        lines.append(f"- recipients: {', '.join(cat.get('recipients') or []) or 'nobody outside the company'}")
        lines.append(f"- source: {cat.get('source')}")
        lines.append(f"- systems: {', '.join(cat['systems'])}")
        for ref, coll in sorted(cat["collections"].items()):
            lines.append(f"- {ref}: {coll['items']} item(s); storage: {'; '.join(coll['storage'])}")
        lines.append("")
    lines += ["## Where we looked", ""]
    for system, entry in manifest["systems"].items():
        for ref, coll in entry["collections"].items():
            ways = [f"searched by {', '.join(coll['identities_searched'])}"] if coll["identities_searched"] else []
            ways += [f"{n} referencing your rows through {way}" for way, n in coll.get("found_through", {}).items()
                     if way != "identity"]
            how = "; ".join(ways) or "rows belonging to your items above"
            lines.append(f"- {system} / {ref}: {coll['rows']} row(s) ({how})")
    lines += [
        "",
        "## Your rights",
        "",
        "You may ask us to correct (Art. 16) or erase (Art. 17) this data or restrict its use (Art. 18), object "
        "to its use (Art. 21), withdraw a consent at any time, and complain to a data-protection supervisory "
        "authority (Art. 77). We make no automated decisions about you (Art. 22).",
        "",
    ]
    return "\n".join(lines)


def iter_file(path: str) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while block := fh.read(COPY_CHUNK):
            yield block

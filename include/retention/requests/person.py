"""One person per request: a request's identities resolved to one person before anything is read or changed.

A request may carry several identities (e-mail, phone, customer reference, social handle). Each of them claims
every item that carries it, so a request holding person A's e-mail and person B's phone would read, change or
delete B's items too. ``resolve`` decides, once, which identities the request may act with
(docs/adr/0018-one-person-per-request.md):

- The **proven** identity is the one the requester is answered on and the identity check confirms: the e-mail
  when given, else the first given in ``KIND_ORDER`` (email, phone, customer_ref, social_handle).
- Another identity is **linked** when the stores tie every record carrying it to the proven identity: the
  record carries the proven identity too, or a chain of declared references (``column`` / ``columns`` ->
  ``to_column`` / ``to_columns`` / the target's key, within a system or across systems; a SQL row's owned S3
  object) joins it to such a record through records carrying identities of the request.
- It is **conflicting** when a record carrying it belongs to somebody else (the record does not carry the
  proven identity but carries, for a kind the request holds and found somewhere, only other values), or when
  one of its records is tied to the proven identity by nothing (a shared family phone on somebody else's row
  links nobody: another identity never vouches for a record, only the proven one and references do).
- It is **not found** when no record carries it (harmless; it claims nothing).

Only item *ownership* counts: a field that only mentions someone (``erase: mask``) neither links nor
conflicts. Equality is ``normalise``'s, through the stores' own ``candidates`` (an index where the data map
declares ``lookup: indexed``, else ``scan_owned``); memory holds the keys of the records carrying a requested
identity (and the reference values of those records), never rows. The result names kinds and counts per
collection only, never a value: it goes into the registry, the identity check's text, the receipt and the
ledger as it is.
"""

from __future__ import annotations

import decimal
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from include.retention.errors import RetentionError
from include.retention.identity import IDENTITY_KINDS
from include.retention.policy import Policy, Reference
from include.retention.stores.base import Claims, HoldsObjects, ReferencingRows, Store, Subject
from include.retention.stores.s3_objects import owned_key
from include.retention.values import CollectionRef, Outcome, RequestStatus

KIND_ORDER = tuple(IDENTITY_KINDS)  # which identity is the proven one when there is no e-mail
FOUND, LINKED, CONFLICTING, NOT_FOUND = "found", "linked", "conflicting", "not found"
LINKED_ONLY = "linked only"  # the identity check's approver chose to act with the linked identities only
DETAILS_KEY = "person"  # the registry details entry holding a request's resolution

Record = tuple[str, Any]  # (collection ref, item key)


class Unresolved(RetentionError):
    """A request would act before its identities were resolved, or on an undecided conflict: refused."""


def proven_kind(identities: Iterable[str]) -> str:
    """The identity the requester proved (and is answered on): the e-mail, else the first in ``KIND_ORDER``."""
    given = set(identities)
    for kind in KIND_ORDER:
        if kind in given:
            return kind
    raise RetentionError("a request needs at least one identity")


@dataclass
class Resolution:
    """What the stores say about one request's identities: kinds, statuses and counts, never a value."""

    proven: str
    status: dict[str, str]  # kind -> found | linked | conflicting | not found (the proven kind: found | not found)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> collection ref -> items carrying it
    why: dict[str, str] = field(default_factory=dict)  # conflicting kind -> why (kinds only)
    decision: str | None = None  # LINKED_ONLY once the identity check's approver chose it

    @property
    def conflict(self) -> bool:
        return CONFLICTING in self.status.values()

    @property
    def conflicting(self) -> list[str]:
        return [k for k in KIND_ORDER if self.status.get(k) == CONFLICTING]

    @property
    def act_kinds(self) -> list[str]:
        """The kinds a request acts with: the proven one and the linked ones (never a conflicting one)."""
        return [k for k in KIND_ORDER if k == self.proven or self.status.get(k) == LINKED]

    def may_act(self) -> bool:
        return not self.conflict or self.decision == LINKED_ONLY

    def to_dict(self) -> dict[str, Any]:
        return {"proven": self.proven, "status": dict(self.status), "counts": self.counts, "why": dict(self.why),
                "decision": self.decision}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Resolution:
        return cls(proven=data["proven"], status=dict(data["status"]), counts=dict(data.get("counts") or {}),
                   why=dict(data.get("why") or {}), decision=data.get("decision"))

    def summary(self) -> str:
        """The redacted summary (Markdown): per kind its status and where it was found, counts only."""
        lines = [f"Identities of this request (proven: {self.proven}):"]
        for kind in KIND_ORDER:
            if kind not in self.status:
                continue
            where = ", ".join(f"{ref}: {n}" for ref, n in sorted(self.counts.get(kind, {}).items()))
            why = f" ({self.why[kind]})" if kind in self.why else ""
            lines.append(f"- {kind}: {self.status[kind]}{why}" + (f"; items: {where}" if where else ""))
        if self.conflict:
            keep = ", ".join(self.act_kinds)
            lines.append(f"CONFLICT: {', '.join(self.conflicting)} lead(s) to somebody else's records. Nothing was "
                         f"read or changed. Approve acts with {keep} only ({', '.join(self.conflicting)} dropped); "
                         "Reject closes the request.")
        return "\n".join(lines)


# ---- resolving -------------------------------------------------------------------------------------------------
def resolve(policy: Policy, store_of: Callable[[str], Store], identities: dict[str, str]) -> Resolution:
    """One request's resolution; ``identities``: kind -> normalised value."""
    return resolve_many(policy, store_of, {"request": identities})["request"]


def resolve_many(policy: Policy, store_of: Callable[[str], Store], requests: dict[str, dict[str, str]]
                 ) -> dict[str, Resolution]:
    """Resolve many requests with one read per collection (an intake batch): request id -> resolution. A
    collection with ``lookup: indexed`` is read through its index (``Store.candidates``: the rows carrying one of
    the requested identities, one query per batch of digests); any other is scanned."""
    index: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for rid, ids in requests.items():
        for kind, value in ids.items():
            index[kind][value].add(rid)
    # a record carrying none of the requested identities decides nothing: the candidates are enough
    wanted = [Subject(rid, dict(ids)) for rid, ids in requests.items() if ids]
    # per request: record -> (kinds of the request it carries, kinds of the request it holds other values of)
    matched: dict[str, dict[Record, tuple[frozenset[str], frozenset[str]]]] = {rid: {} for rid in requests}
    for system in _identity_systems(policy):
        store = store_of(system)
        objects = isinstance(store, HoldsObjects)  # records inside an object share the object's key
        for name in store.subject_collections():
            ref = store.ref(name)
            for batch in store.candidates(name, wanted, owned_only=True):
                for key, found in batch:
                    rids = {rid for kind, values in found.items() if kind in index
                            for value in values for rid in index[kind].get(value, ())}
                    for rid in rids:
                        ids = requests[rid]
                        carried = frozenset(k for k, v in ids.items() if v in found.get(k, ()))
                        other = frozenset(k for k, v in ids.items() if found.get(k) and v not in found[k])
                        if objects:
                            _add_record(matched[rid], ref, key, (carried, other))
                        else:  # a row's key is its own: a later sight of it is the row as it is now
                            matched[rid][(ref, key)] = (carried, other)
    edges = _joins(policy, store_of, matched)
    return {rid: _decide(ids, matched[rid], edges.get(rid, [])) for rid, ids in requests.items()}


def _add_record(records: dict[Record, Any], ref: str, key: str, seen: tuple[frozenset[str], frozenset[str]]) -> None:
    """One found record. Records inside one object come under the object's key: a further one that carries or
    contradicts other kinds is kept as a record of its own (the object's key and its number), so none hides
    another (a later record of the person's never replaces an earlier one of somebody else's in the same export).
    """
    record, n = (ref, key), 0
    while records.setdefault(record, seen) != seen:
        n += 1
        record = (ref, f"{key}\x00{n}")


def _identity_systems(policy: Policy) -> list[str]:
    return [name for name, system in policy.systems.items() if any(c.identities for c in system.collections.values())]


def _decide(ids: dict[str, str], records: dict[Record, tuple[frozenset[str], frozenset[str]]],
            edges: list[tuple[Record, Record]]) -> Resolution:
    proven = proven_kind(ids)
    found = {k for carried, _ in records.values() for k in carried}
    # somebody else's record: it does not carry the proven identity and holds only other values of a kind the
    # request holds (and found somewhere: a requested value found nowhere says nothing about anybody)
    foreign = {r for r, (carried, other) in records.items() if proven not in carried and other & found}
    parent: dict[Any, Any] = {}

    def root(node: Any) -> Any:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    def join(a: Any, b: Any) -> None:
        parent[root(a)] = root(b)

    proven_node = ("kind", proven)
    root(proven_node)
    for r, (carried, _) in records.items():
        if proven in carried:
            join(("record", r), proven_node)
    for a, b in edges:
        if a not in foreign and b not in foreign:
            join(("record", a), ("record", b))
    status: dict[str, str] = {}
    counts: dict[str, dict[str, int]] = {}
    why: dict[str, str] = {}
    for r, (carried, _) in records.items():
        for kind in carried:
            per = counts.setdefault(kind, {})
            per[r[0]] = per.get(r[0], 0) + 1
    for kind in (k for k in KIND_ORDER if k in ids):
        if kind not in found:
            status[kind] = NOT_FOUND
        elif kind == proven:
            status[kind] = FOUND
        elif others := sorted({k for r, (carried, other) in records.items() if r in foreign and kind in carried
                               for k in other & found}):
            status[kind] = CONFLICTING
            why[kind] = f"a record carrying it holds another {' / '.join(others)}"
        elif any(kind in carried and root(("record", r)) != root(proven_node) for r, (carried, _) in records.items()):
            status[kind] = CONFLICTING
            why[kind] = f"a record carrying it is tied to the {proven} by no record or reference"
        else:
            status[kind] = LINKED
    return Resolution(proven=proven, status=status, counts=counts, why=why)


# ---- references between matched records ----------------------------------------------------------------------
def _canon(value: Any) -> Any:
    """A reference value as compared in Python (an integral DECIMAL is the integer it holds)."""
    if isinstance(value, decimal.Decimal) and value == value.to_integral_value():
        return int(value)
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def _key_tuple(key: Any) -> tuple:
    return key if isinstance(key, tuple) else (key,)


class _RowLink:
    """A declared reference between matched rows (child row -> the row it references), its index among the links."""

    def __init__(self, index: int, child: str, reference: Reference, target: str, in_columns: list[str] | None):
        self.index, self.child, self.reference, self.target = index, child, reference, target
        self.in_columns = in_columns  # the referenced columns when they are not the target's key, else None

    def out_value(self, row: dict[str, Any]) -> Any | None:
        """What the child row references (its source columns' values), None when it references nothing."""
        value = tuple(_canon(row.get(c)) for c in self.reference.source_columns())
        return None if None in value else value

    def pairs(self, out: dict[Any, Any], in_values: dict[int, dict[tuple, set[Any]]], target_keys: set[Any]
              ) -> list[tuple[Record, Record]]:
        if self.in_columns is not None:  # matched on the referenced columns: a NULL there matches nothing, and
            targets = in_values.get(self.index, {})  # never falls back to the key (another row's key may equal it)
        else:
            targets = {tuple(_canon(v) for v in _key_tuple(k)): {k} for k in target_keys}
        return [((self.child, c_key), (self.target, t_key)) for c_key, value in out.items()
                for t_key in targets.get(value, ())]


class _ObjectLink:
    """A matched row naming matched objects it owns (a key, or a prefix of keys), its index among the links."""

    in_columns = None  # objects are matched on their keys

    def __init__(self, index: int, child: str, reference: Reference, target: str):
        self.index, self.child, self.reference, self.target = index, child, reference, target

    def out_value(self, row: dict[str, Any]) -> Any | None:
        """(key or prefix, is it a prefix) the row names, None when it names none."""
        owned = owned_key(self.reference, row)
        return owned if owned[0] is not None else None

    def pairs(self, out: dict[Any, Any], in_values: dict[int, dict[tuple, set[Any]]], target_keys: set[Any]
              ) -> list[tuple[Record, Record]]:
        objects = sorted(target_keys)
        return [((self.child, c_key), (self.target, o)) for c_key, (obj_key, is_prefix) in out.items()
                for o in objects if (o.startswith(obj_key) if is_prefix else o == obj_key)]


_Link = _RowLink | _ObjectLink


def _joins(policy: Policy, store_of: Callable[[str], Store],
           matched: dict[str, dict[Record, Any]]) -> dict[str, list[tuple[Record, Record]]]:
    """Per request: pairs of its matched records a declared reference joins (child -> parent, or SQL row ->
    owned S3 object). Reads only matched records, keeping the referencing / referenced values."""
    keys_of = _matched_keys(matched)
    links = _links(policy, store_of, keys_of)
    if not links:
        return {}
    out_values, in_values = _link_values(policy, store_of, keys_of, links)
    pairs = [pair for link in links for pair in link.pairs(out_values[link.index], in_values, keys_of[link.target])]
    return _per_request(matched, pairs)


def _matched_keys(matched: dict[str, dict[Record, Any]]) -> dict[str, set[Any]]:
    """Collection ref -> the keys of its records some request matched."""
    keys_of: dict[str, set[Any]] = defaultdict(set)
    for records in matched.values():
        for ref, key in records:
            keys_of[ref].add(key)
    return keys_of


def _links(policy: Policy, store_of: Callable[[str], Store], keys_of: dict[str, set[Any]]) -> list[_Link]:
    """The declared references of rows (a store of ``ReferencingRows``) whose both ends hold matched records, in
    data-map order: to rows, or to the objects the rows own (a store that ``HoldsObjects``)."""
    links: list[_Link] = []
    for s_name, system in policy.systems.items():
        for c_name, coll in system.collections.items():
            child = f"{s_name}.{c_name}"
            if child not in keys_of or not isinstance(store_of(s_name), ReferencingRows):
                continue
            for reference in coll.references:
                if reference.to in keys_of:
                    links.append(_link(policy, store_of, len(links), child, reference))
    return links


def _link(policy: Policy, store_of: Callable[[str], Store], index: int, child: str, reference: Reference) -> _Link:
    target = reference.to
    if isinstance(store_of(target.partition(".")[0]), HoldsObjects):
        return _ObjectLink(index, child, reference, target)
    t_coll = policy.collection(target)
    cols = reference.target_columns(t_coll)
    return _RowLink(index, child, reference, target, cols if cols != t_coll.key_columns() else None)


def _link_values(policy: Policy, store_of: Callable[[str], Store], keys_of: dict[str, set[Any]], links: list[_Link]
                 ) -> tuple[dict[int, dict[Any, Any]], dict[int, dict[tuple, set[Any]]]]:
    """Read the matched records at either end of a link, keeping only what the links compare: per link, child
    key -> what it references (``out``), and referenced (non-key) value -> target keys (``in``)."""
    outgoing: dict[str, list[_Link]] = defaultdict(list)
    incoming: dict[str, list[_Link]] = defaultdict(list)
    for link in links:
        outgoing[link.child].append(link)
        if link.in_columns is not None:
            incoming[link.target].append(link)
    out_values: dict[int, dict[Any, Any]] = defaultdict(dict)  # link -> child key -> value (or owned key)
    in_values: dict[int, dict[tuple, set[Any]]] = defaultdict(lambda: defaultdict(set))  # -> value -> target keys
    for ref in set(outgoing) | set(incoming):
        system, name = CollectionRef.parse(ref)
        claims = Claims({key: frozenset(("person",)) for key in keys_of[ref]})
        key_columns = policy.collection(ref).key_columns()
        for batch in store_of(system).read(name, claims):
            for row in batch:
                key = _row_key(row, key_columns)
                for link in outgoing.get(ref, []):
                    if (value := link.out_value(row)) is not None:
                        out_values[link.index][key] = value
                for link in incoming.get(ref, []):
                    value = tuple(_canon(row.get(c)) for c in link.in_columns)
                    if None not in value:
                        in_values[link.index][value].add(key)
    return out_values, in_values


def _per_request(matched: dict[str, dict[Record, Any]], pairs: list[tuple[Record, Record]]
                 ) -> dict[str, list[tuple[Record, Record]]]:
    """Each pair goes to the requests that matched both its records (a link never joins two requests)."""
    owners: dict[Record, set[str]] = defaultdict(set)  # record -> requests it matched
    for rid, records in matched.items():
        for record in records:
            owners[record].add(rid)
    per_request: dict[str, list[tuple[Record, Record]]] = defaultdict(list)
    for a, b in pairs:
        for rid in owners[a] & owners[b]:
            per_request[rid].append((a, b))
    return per_request


def _row_key(row: dict[str, Any], key_columns: list[str]) -> Any:
    missing = [c for c in key_columns if c not in row]
    if missing:
        raise RetentionError(f"primary key column {missing[0]!r} is not among the collection's columns")
    values = tuple(row[c] for c in key_columns)
    return values[0] if len(values) == 1 else values


# ---- what a request acts with ------------------------------------------------------------------------------------
def resolution_of(details: dict[str, Any]) -> Resolution | None:
    data = details.get(DETAILS_KEY)
    return Resolution.from_dict(data) if data else None


def acting(identities: dict[str, str], details: dict[str, Any], request_id: str) -> dict[str, str]:
    """The identities (kind -> normalised value) a request may act with: the proven and the linked ones.
    Refused (``Unresolved``) before the resolution is recorded, and on a conflict nobody decided."""
    res = resolution_of(details)
    if res is None:
        raise Unresolved(f"request {request_id}: its identities were not resolved to one person; nothing was done")
    if not res.may_act():
        raise Unresolved(f"request {request_id}: its identities lead to more than one person "
                         f"({', '.join(res.conflicting)} conflicting) and nobody decided; nothing was done")
    return {k: v for k, v in identities.items() if k in res.act_kinds}


def subjects(request_ids: list[str], identities: dict[str, dict[str, str]], details: dict[str, dict[str, Any]]
             ) -> list[Subject]:
    """The requests' subjects with only their acting identities (``acting``)."""
    return [Subject(rid, acting(identities[rid], details.get(rid, {}), rid)) for rid in request_ids]


def receipt_part(details: dict[str, Any]) -> dict[str, Any] | None:
    """What a receipt says about the resolution: the proven kind, each kind's status, the dropped kinds."""
    res = resolution_of(details)
    if res is None:
        return None
    out: dict[str, Any] = {"proven": res.proven, "identities": dict(res.status), "counts": res.counts}
    if res.conflict:
        out["conflict"] = {kind: res.why.get(kind, "") for kind in res.conflicting}
        out["decision"] = res.decision or "stopped"
        out["dropped"] = res.conflicting if res.decision == LINKED_ONLY else []
    return out


STOPPED_VERIFICATION = ("stopped on a conflict: the request's identities lead to more than one person; nothing "
                        "was read, changed or handed out (per identity kind: see 'person')")


# ---- the registry's side: record once, stop a conflict ----------------------------------------------------------
def resolve_requests(policy: Policy, store_of: Callable[[str], Store], registry: Any, request_ids: list[str]
                     ) -> dict[str, Resolution]:
    """Each request's resolution, recorded in its registry details; a request resolved before (a retry, a
    re-run, a request handed over by id) keeps its first resolution: who the person is is decided once."""
    details = registry.details_many(request_ids)
    out = {rid: res for rid in request_ids if (res := resolution_of(details.get(rid, {}))) is not None}
    todo = [rid for rid in request_ids if rid not in out]
    if todo:
        identities = registry.identities_many(todo)
        fresh = resolve_many(policy, store_of, {rid: identities[rid].normalised() for rid in todo})
        registry.update_details_many({rid: {DETAILS_KEY: res.to_dict()} for rid, res in fresh.items()})
        out.update(fresh)
    return out


def choose_linked_only(registry: Any, request_id: str) -> Resolution:
    """The identity check's approver chose to act with the linked identities only (never with all)."""
    res = resolution_of(registry.details(request_id))
    if res is None:
        raise Unresolved(f"request {request_id}: its identities were not resolved to one person; nothing was done")
    res.decision = LINKED_ONLY
    registry.update_details(request_id, **{DETAILS_KEY: res.to_dict()})
    return res


def undecided_conflict(details: dict[str, Any]) -> bool:
    res = resolution_of(details)
    return res is not None and not res.may_act()


def stop_on_conflict(registry: Any, ledger: Any, policy: Policy, request_id: str, run: Any) -> Resolution:
    """Close a request whose identities lead to more than one person as ``conflict``: nothing read or changed,
    one ledger entry (``identity_resolution / conflict``) with the kinds' statuses and counts, never a value."""
    res = resolution_of(registry.details(request_id))
    if res is None:
        raise Unresolved(f"request {request_id}: its identities were not resolved to one person")
    registry.finish(request_id, RequestStatus.CONFLICT, error="its identities lead to more than one person")
    if not ledger.has_entry(request_id=request_id, action="identity_resolution", outcome=Outcome.CONFLICT):
        ledger.append(run=run, action="identity_resolution", outcome=Outcome.CONFLICT, count=0, request_id=request_id,
                      policy_digest=policy.digest, subject_digest=registry.subject_digest(request_id),
                      details={"proven": res.proven, "identities": res.status, "counts": res.counts})
    return res


def stopped_receipt(receipt: dict[str, Any], details: dict[str, Any]) -> dict[str, Any]:
    """A receipt (``include.retention.requests.receipts.build_receipt``'s) of a request stopped on a conflict."""
    receipt["person"] = receipt_part(details)
    receipt["verification"] = STOPPED_VERIFICATION
    return receipt

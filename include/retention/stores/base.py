"""The interface every store kind implements (SQL, S3), and the values it returns.

Two families of operations: retention rules (``check`` / ``plan`` / ``apply_stage``) and
subject operations (``subject_collections`` / ``scan`` / ``find`` / ``read`` / ``erase`` /
``restrict`` / ``remaining``), the way a privacy connector retrieves and masks; what only some stores have is
an optional capability (a ``Protocol``: ``ReferencingRows``, ``HoldsObjects``, ``HoldsConsents``,
``RectifiesTogether``). Callers never
branch on the kind of store.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from include.retention.errors import RetentionError
from include.retention.identity import normalise
from include.retention.masking import keyed_digest, keys_of
from include.retention.policy import Policy, Rule, Stage
from include.retention.values import (
    CascadeRecorder,
    CollectionRef,
    FlushingRecorder,
    IntentRecorder,
    Recorder,
    SharingRecorder,
)


def begin_record(record: Recorder, action: str, planned: int, pk_digest: str,
                 reread: dict[str, Any] | None = None) -> Any:
    """Write the intent of a batch (if the recorder keeps intents) before the store change commits. ``reread``: how
    ``Store.reconcile_batch`` finds the batch's rows again if its run stops before the outcome (given only to a
    recorder that says it keeps them: ``rereads``)."""
    if not isinstance(record, IntentRecorder):
        return None
    if reread is not None and getattr(record, "rereads", False):
        return record.intend(action, planned, pk_digest, reread=reread)
    return record.intend(action, planned, pk_digest)


def end_record(record: Recorder, intent: Any, action: str, count: int, pk_digest: str,
               details: dict[str, Any]) -> None:
    """Record what a committed batch really changed (settling its intent, if there is one)."""
    if intent is None:
        record(action, count, pk_digest, details)
    else:
        record(action, count, pk_digest, details, intent=intent)


class DeferredOutcomes:
    """A stage's recorder whose batch outcomes wait for the next batch's intent, to share its ledger transaction:
    n + 1 durable ledger writes for n batches instead of 2n.

    Works over a recorder that has ``intend_after(settled, action, planned, pk_digest)`` (write the outcome
    ``settled`` = (intent, count, details) and then the next intent in one transaction, e.g.
    ``include.retention.sweep.LedgerRecorder``); over any other recorder it only passes calls through. Every
    guarantee of ``begin_record`` / ``end_record`` stays: an intent is written before its batch commits, an
    outcome only after its batch committed. The owner calls ``flush`` when the walk ends, when a batch changed
    nothing and on any exception (the store has committed the batch whose outcome waits: it is written then).
    """

    def __init__(self, record: Recorder):
        self.record = record
        self.pending: tuple[Any, str, int, str, dict[str, Any]] | None = None
        self._combine = isinstance(record, SharingRecorder)

    def intend(self, action: str, planned: int, pk_digest: str, reread: dict[str, Any] | None = None) -> Any:
        if self.pending is not None:
            intent, _action, count, _digest, details = self.pending
            more = {"reread": reread} if reread is not None and getattr(self.record, "rereads", False) else {}
            token = self.record.intend_after((intent, count, details), action, planned, pk_digest, **more)
            self.pending = None  # only once written: on a failure the caller's flush writes the outcome alone
            return token
        return begin_record(self.record, action, planned, pk_digest, reread)

    def __call__(self, action: str, count: int, pk_digest: str, details: dict[str, Any], intent: Any = None) -> None:
        self.flush()
        if intent is None or not self._combine:
            end_record(self.record, intent, action, count, pk_digest, details)
        else:
            self.pending = (intent, action, count, pk_digest, details)

    def flush(self) -> None:
        """Write the outcome that waits, if any."""
        if self.pending is not None:
            intent, action, count, pk_digest, details = self.pending
            end_record(self.record, intent, action, count, pk_digest, details)
            self.pending = None

    def __getattr__(self, name: str) -> Any:  # e.g. ``for_collection``: the wrapped recorder's
        if name == "record":
            raise AttributeError(name)
        return getattr(self.record, name)


def collection_recorder(record: Recorder | None, system: str, ref: str) -> Recorder | None:
    """The recorder giving a cascade into ``system``'s collection ``ref`` its own entries, if ``record`` (or the
    recorder a ``DeferredOutcomes`` wraps) has one. Unwrapped explicitly: from Python 3.12 ``isinstance`` against a
    runtime protocol no longer sees attributes forwarded by ``__getattr__``."""
    inner = record.record if isinstance(record, DeferredOutcomes) else record
    return inner.for_collection(system, ref) if isinstance(inner, CascadeRecorder) else None


def flush_record(record: Recorder) -> None:
    """Write a ``DeferredOutcomes`` recorder's waiting outcome now (no-op for any other recorder)."""
    if isinstance(record, FlushingRecorder):
        record.flush()

PAST_TENSE = {"lock": "locked", "anonymize": "anonymized", "delete": "deleted"}


@dataclass
class RulePlan:
    """What a rule would do now: counts only, nothing changed."""

    total: int  # items in the collection
    in_scope: int  # items the rule's ``when`` selects
    eligible: dict[str, int]  # per action: items past that stage's storage period, not held
    held: int  # past the first storage period but under legal hold
    already: int = 0  # past the period but already locked / anonymized
    # per dependent collection: (rows its delete stage would take along, rows in that collection)
    cascaded: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def affected(self) -> int:
        return sum(self.eligible.values())

    @property
    def kept(self) -> int:
        return max(self.in_scope - self.affected - self.held, 0)


@dataclass
class StageResult:
    action: str
    changed: int = 0
    batches: int = 0
    cascaded: dict[str, int] = field(default_factory=dict)


# ---- subjects --------------------------------------------------------------------------------

# Lock reasons a subject request writes: "<prefix>:<token>", token = subject_token(...) of the identity
# that claimed the item. A later erasure of the same subject may lift exactly these (ADR 0005).
RESTRICTION = "restriction"
ERASURE_EXCEPTION = "erasure-exception"


def subject_token(key: bytes, kind: str, normalised: str) -> str:
    """A short keyed digest naming one identity in a lock reason (never the identity itself)."""
    return keyed_digest(key, f"{kind}:{normalised}")[:16]


def lock_reason_for(prefix: str, claimed_by: str, key: bytes) -> str:
    """``<prefix>:<token>`` for an item claimed by the identity ``claimed_by`` (``kind\\0value``)."""
    kind, _, value = claimed_by.partition("\x00")
    return f"{prefix}:{subject_token(key, kind, value)}"


def renamed_lock_reasons(subjects: list[Subject], new_values: dict[str, str], key: bytes) -> dict[str, str]:
    """A correction's renaming of the subjects' own lock reasons: the reason named by an old value of a corrected
    kind (under any active key) -> the same reason named by the new value (under the current key)."""
    out: dict[str, str] = {}
    for s in subjects:
        for kind, new in new_values.items():
            old, value = s.identities.get(kind), normalise(kind, new)
            if old is None or value is None:
                continue
            for _, secret in keys_of(key):
                for prefix in (RESTRICTION, ERASURE_EXCEPTION):
                    out[f"{prefix}:{subject_token(secret, kind, old)}"] = lock_reason_for(
                        prefix, f"{kind}\x00{value}", key)
    return out


@dataclass
class Subject:
    """One request's person: identities already normalised (``include.retention.identity.normalise``)."""

    request_id: str
    identities: dict[str, str]

    def tokens(self, key: bytes) -> set[str]:
        """Under every active key: a lock written before a key rotation is still this subject's own."""
        return {subject_token(secret, kind, value) for _, secret in keys_of(key)
                for kind, value in self.identities.items()}


class Claims(dict):
    """Item key (primary key, object key) -> request ids whose identities the item carries (a frozenset shared by
    every item of the same requests: a person with 100,000 rows costs a dict entry per row, not a set per row)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shared: dict[frozenset[str], frozenset[str]] = {}

    def add(self, key: Any, request_id: str) -> None:
        old = self.get(key)
        if old is not None and request_id in old:
            return
        new = frozenset((request_id,)) if old is None else old | {request_id}
        self[key] = self._shared.setdefault(new, new)


def index_subjects(subjects: list[Subject]) -> dict[str, dict[str, set[str]]]:
    """kind -> normalised value -> request ids: what a scan looks values up in."""
    out: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for s in subjects:
        for kind, value in s.identities.items():
            out[kind][value].add(s.request_id)
    return out


def own_lock_reasons(subjects: list[Subject], key: bytes) -> set[str]:
    """Lock reasons that these subjects' own earlier requests wrote (and a later erasure may lift)."""
    return {f"{prefix}:{t}" for s in subjects for t in s.tokens(key) for prefix in (RESTRICTION, ERASURE_EXCEPTION)}


@dataclass
class SubjectOutcome:
    """What a subject operation did in one system: per request, per collection ref, counts by outcome.

    Outcomes: deleted, anonymized, masked (a column naming the person cleared, the row kept),
    restricted, already_restricted, lifted (an own restriction lifted by an erasure),
    deleted_with_parent, exception:<reason> (kept, GDPR Art. 17(3)).
    """

    per_request: dict[str, dict[str, dict[str, int]]] = field(default_factory=lambda: defaultdict(dict))
    # What deletes took along for all requests together: dependents, objects, suppression digests.
    totals: dict[str, int] = field(default_factory=dict)

    def add(self, request_id: str, coll_ref: str, key: str, n: int = 1) -> None:
        counts = self.per_request[request_id].setdefault(coll_ref, {})
        counts[key] = counts.get(key, 0) + n

    def add_total(self, target: str, n: int) -> None:
        if n:
            self.totals[target] = self.totals.get(target, 0) + n

    def merge(self, other: SubjectOutcome) -> None:
        for rid, per in other.per_request.items():
            for coll, counts in per.items():
                for k, n in counts.items():
                    self.add(rid, coll, k, n)
        for k, n in other.totals.items():
            self.add_total(k, n)


class UnclaimedItem(RetentionError):
    """A store was asked to act on an item no request claims: a bug, refused before anything changes."""


def claimed_keys(where: str, claims: Claims) -> list[Any]:
    """The claimed keys in order; raises ``UnclaimedItem`` if any key has no claiming request."""
    unclaimed = [k for k, rids in claims.items() if not rids]
    if unclaimed:
        raise UnclaimedItem(f"{where}: {len(unclaimed)} item(s) matched without a request claiming them; "
                            "nothing was changed")
    return sorted(claims)


class Store(abc.ABC):
    """One system of the data map: what every store has. Implementations: ``SqlStore``, ``S3Store``; what only some
    have is a capability below (``ReferencingRows``, ``HoldsObjects``, ``HoldsConsents``)."""

    kind: str = ""

    def __init__(self, name: str, policy: Policy):
        self.name = name
        self.policy = policy

    def ref(self, collection_name: str) -> str:
        return f"{self.name}.{collection_name}"

    @abc.abstractmethod
    def check(self, collection_name: str) -> None:
        """Raise ``SchemaMismatch`` if the store lacks what the data map declares."""

    @abc.abstractmethod
    def plan(self, collection_name: str, rule: Rule, now: dt.datetime, *, for_act: bool = False) -> RulePlan:
        """Count what ``rule`` would touch now, per stage. ``for_act``: the caller acts on this plan next (a
        store may keep what it found for that, e.g. S3's spool, until ``release_plan``)."""

    def release_plan(self) -> None:
        """Drop anything ``plan(..., for_act=True)`` kept for the act (called when the rule is done or stops)."""
        return None

    def maps_batches(self, collection_name: str, rule: Rule) -> bool:
        """Is ``rule`` swept as a sealed plan of items cut into batches, one task each (``plan_batches``,
        ``planned_keys``, ``apply_batch``; include/retention/record_batches.py)? No by default: one task per rule."""
        return False

    @abc.abstractmethod
    def apply_stage(
        self, collection_name: str, rule: Rule, stage: Stage, now: dt.datetime, batch_size: int,
        reason: str, record: Recorder,
    ) -> StageResult:
        """Act on items past ``stage``'s storage period in bounded batches, recording each batch."""

    def prepare_rule(self, collection_name: str, rule: Rule, now: dt.datetime, batch_size: int,
                     record: Recorder) -> dict[str, int]:
        """Before a sweep plans ``rule``: bring up to date what its start event reads (SQL: the ``orphaned``
        marker, stamped and cleared in bounded batches, each recorded). Nothing by default."""
        return {}

    def reconcile_batch(self, collection_name: str, rule: Rule, intent: dict[str, Any], reread: dict[str, Any]
                        ) -> tuple[int, dict[str, Any]] | None:
        """A batch whose run stopped between its intent and its outcome: re-read its rows (``reread``, as the walk
        gave it to ``begin_record``) and return (the rows it really changed, details with ``how`` and ``note``), or
        None when this store cannot tell (the caller then settles with the intent's recorded count)."""
        return None

    def count_kept(self, collection_name: str, rule: Rule, now: dt.datetime) -> int | None:
        """After a sweep acted: the items of the rule's scope still there, not held and not acted on (locked,
        anonymized) by the rule, counted in the store. None: not countable here (the caller works it out from the
        plan)."""
        return None

    # ---- subjects ---------------------------------------------------------------------------
    def subject_collections(self) -> list[str]:
        """Collections that declare identities, in the order a subject request handles them (children first)."""
        colls = self.policy.systems[self.name].collections
        return [name for name in collection_order(self.policy, self.name) if colls[name].identities]

    def searched_kinds(self) -> dict[str, list[str]]:
        """Per collection ref, the identity kinds a subject request looks for there (for the receipt)."""
        colls = self.policy.systems[self.name].collections
        return {self.ref(n): sorted(colls[n].identities) for n in self.subject_collections()}

    @abc.abstractmethod
    def scan(self, collection_name: str) -> Iterator[list[tuple[Any, dict[str, set[str]]]]]:
        """Every item of the collection with its normalised identities, one bounded batch at a time:
        ``[(key, {kind: {normalised values}}), ...]``. Python decides equality, not the store's collation."""

    def scan_owned(self, collection_name: str) -> Iterator[list[tuple[Any, dict[str, set[str]]]]]:
        """As ``scan``, but only the identities that make an item the person's own: a field that only mentions
        someone (``erase: mask``) is left out (what ``include.retention.requests.person`` links people by)."""
        return self.scan(collection_name)

    def candidates(self, collection_name: str, subjects: list[Subject], *, owned_only: bool = False
                   ) -> Iterator[list[tuple[Any, dict[str, set[str]]]]]:
        """Like ``scan`` (``owned_only``: ``scan_owned``), but may leave out items that cannot carry any of these
        subjects' identities (an index that is exact by construction: ``lookup: indexed``, ADR 0022). By default:
        every item."""
        return self.scan_owned(collection_name) if owned_only else self.scan(collection_name)

    def indexed_fields(self, collection_name: str) -> list[tuple[str, str]]:
        """(kind, column) of every identity field when all of them are found through an index (``lookup: indexed``,
        ADR 0022); else [] (by default: no index)."""
        return []

    def index_candidates(self, collection_name: str, digests: dict[str, list[str]], *, undigested: bool = False
                         ) -> Iterator[list[tuple[Any, dict[str, set[str]]]]]:
        """For a collection with ``indexed_fields``: as ``scan``, but only the items whose index digest of kind ``k``
        (``identity.index_digest``) is one of ``digests[k]``, and with ``undigested`` the items not digested yet."""
        raise NotImplementedError(f"{self.ref(collection_name)}: no index to look identities up in")

    def find(self, collection_name: str, subjects: list[Subject], *, exhaustive: bool = False) -> Claims:
        """The items of these subjects, each with the request ids that claim it. Found through ``candidates``
        (an index where the data map declares one); ``exhaustive``: through ``scan``, every item read."""
        wanted = index_subjects(subjects)
        claims = Claims()
        batches = self.scan(collection_name) if exhaustive else self.candidates(collection_name, subjects)
        for batch in batches:
            for key, found in batch:
                for kind, values in found.items():
                    for value in values & wanted.get(kind, {}).keys():
                        for rid in wanted[kind][value]:
                            claims.add(key, rid)
        return claims

    @abc.abstractmethod
    def read_columns(self, collection_name: str) -> list[str]:
        """The fields of each item ``read`` returns, in order (the columns of an access package's table)."""

    @abc.abstractmethod
    def read(self, collection_name: str, claims: Claims) -> Iterator[list[dict[str, Any]]]:
        """The claimed items' content (rows, object metadata), in bounded batches, for an access request."""

    @abc.abstractmethod
    def erase(self, collection_name: str, claims: Claims, subjects: list[Subject], *, dry_run: bool
              ) -> SubjectOutcome:
        """Delete (or anonymize, per the data map) the claimed items, except those that must be kept
        (legal hold, a lock that is not the subject's own): those are listed as exceptions."""

    @abc.abstractmethod
    def restrict(self, collection_name: str, claims: Claims, subjects: list[Subject], *, dry_run: bool
                 ) -> SubjectOutcome:
        """Lock (GDPR Art. 18) the claimed items."""

    @abc.abstractmethod
    def remaining(self, collection_name: str, subjects: list[Subject], mode: str) -> dict[str, int]:
        """Verification re-scan: per request, items of the subject still present that may not be."""

    def close(self) -> None:  # noqa: B027 - optional hook: stores with connections override it
        pass

    def owned(self, collection_name: str, claims: Claims, subjects: list[Subject]
              ) -> tuple[Claims, dict[Any, set[str]]]:
        """Split ``claims`` into the subjects' own items and the items that only mention them (key -> the fields
        that do; ``erase: mask``). By default every claimed item is the subjects' own."""
        return claims, {}

    # ---- the other rights (access, rectification; ADR 0008) -----------------------------------------------------
    @abc.abstractmethod
    def rectify(self, collection_name: str, claims: Claims, subjects: list[Subject], new_values: dict[str, str],
                *, dry_run: bool) -> SubjectOutcome:
        """Replace the subjects' identity values of the kinds in ``new_values`` (kind -> new value as given)
        with the new ones in the claimed items; counted as ``rectified`` per request."""

    def rectify_all(self, claims: dict[str, Claims], subjects: list[Subject], new_values: dict[str, str], *,
                    dry_run: bool) -> SubjectOutcome:
        """``rectify`` of several collections of this system (collection name -> its claims); a store that has
        transactions (SQL) applies them all in one: every change or none."""
        outcome = SubjectOutcome()
        for name, found in claims.items():
            if found:
                outcome.merge(self.rectify(name, found, subjects, new_values, dry_run=dry_run))
        return outcome

    @abc.abstractmethod
    def rectify_problems(self, collection_name: str, claims: Claims, subjects: list[Subject],
                         new_values: dict[str, str]) -> list[str]:
        """Why ``rectify`` could not write the new values into the claimed items (each problem naming
        system.collection.field and what is wrong, never a value); [] when everything fits."""


# ---- optional capabilities: what only some kinds of store have (callers test with ``isinstance``) ------------------
@runtime_checkable
class ReferencingRows(Protocol):
    """Items that reference each other and objects by column values (SQL rows): a delete here takes dependents along
    (docs/adr/0012), an access package follows references into them, S3 orphan rules look their keys up here."""

    def referenced_keys(self, collection_name: str, reference: Any, keys: list[str]) -> set[str]:
        """Which of ``keys`` (objects of ``reference.to``) an item of ``collection_name`` still references."""

    def column_values(self, collection_name: str, keys: list[Any], columns: list[str]) -> dict[Any, tuple]:
        """Per item key: the values of ``columns`` (what references into this collection hold). Read-only."""

    def children(self, collection_name: str, reference: Any, parent_values: list[tuple]) -> dict[Any, tuple]:
        """Keys of the items here whose ``reference`` columns (``reference.source_columns()``) equal one of
        ``parent_values`` exactly, all pairs (compared in Python, never by a collation): key -> the matched tuple.
        Read-only; an access package follows references with it, across databases too."""

    # ``column``: the reference's column, or its list of columns (a reference of several columns: each value is then
    # a tuple of as many, matched on every column).
    def held_dependents(self, collection_name: str, column: str | list[str], values: list[Any]) -> set[Any]:
        """Of ``values``, those that a held item here references through ``column`` (their parents stay)."""

    def delete_dependents(self, collection_name: str, reference: Any, values: list[Any], *,
                          record: Recorder | None = None, parent: str = "") -> tuple[dict[str, int], set[Any]]:
        """Delete (or nullify) the items here referencing ``values``, children first, in bounded batches (each
        recorded with ``record``); returns the counts and the values that still have items here."""

    def count_dependents(self, collection_name: str, column: str | list[str], values: list[Any]) -> int:
        """Items here whose ``column`` references one of ``values`` (for the safety brake)."""

    def dependents_of(self, collection_name: str, column: str | list[str], values: list[Any]) -> dict[Any, int]:
        """Per value, the items here whose ``column`` references exactly it (an erasure's per-request counts)."""

    def count_rows(self, collection_name: str) -> int:
        """Items in the collection (for the safety brake)."""


@runtime_checkable
class HoldsObjects(Protocol):
    """Items that are objects (S3): other systems' rows own them by key, an access package copies them in."""

    def owned_keys(self, collection_name: str, key: str, is_prefix: bool) -> list[str]:
        """Keys of the objects here that another store's row references (a key, or a prefix of keys)."""

    def stream_object(self, collection_name: str, key: str) -> Iterator[bytes]:
        """An object's bytes, in bounded chunks, exactly as stored (an access package copies them in)."""

    def delete_referenced(self, coll_ref: str, reference: Any, rows: list[dict[str, Any]]) -> int:
        """Delete what ``rows`` of another store's ``coll_ref`` reference here (objects a CRM row owns)."""

    def referenced_due(self, reference: Any, rows: list[dict[str, Any]]) -> list[Any]:
        """Keys of the items here that ``delete_referenced(..., reference, rows)`` would delete now (not held);
        changes nothing."""

    def due_keys(self, collection_name: str, rule: Rule, now: dt.datetime) -> Iterator[list[tuple[str, Any]]]:
        """(action, item key) of every item a sweep of ``rule`` at ``now`` would act on, a bounded batch at a
        time; changes nothing (the policy diff; SQL stores: the diff builds the rows' predicates itself)."""


@runtime_checkable
class HoldsConsents(Protocol):
    """Items with consent columns (SQL rows): a withdrawal sets them (ADR 0008)."""

    def withdraw(self, collection_name: str, claims: Claims, subjects: list[Subject], consents: list[str] | None,
                 *, dry_run: bool) -> SubjectOutcome:
        """Set the collection's consent columns (all, or those named in ``consents``) to their withdrawn value
        on the claimed items the subjects own; the retention rules then act on them as on anybody's."""


@runtime_checkable
class RectifiesTogether(Protocol):
    """Corrections inside a transaction the caller opens and ends (SQL rows): the corrections of several systems
    commit together, after all of them ran without error, or none does (``requests/correction.py``, ADR 0008)."""

    def database(self) -> str:
        """Names the database this store writes to: the systems of one database share one transaction."""

    def begin_correction(self) -> Any:
        """A connection with a transaction open on this store's database; the caller commits or rolls it back."""

    def rectify_in(self, conn: Any, claims: dict[str, Claims], subjects: list[Subject], new_values: dict[str, str],
                   *, dry_run: bool) -> SubjectOutcome:
        """``rectify_all`` inside ``conn``'s transaction (of a store of the same database), neither committed nor
        rolled back here; every constraint the database would check at commit is checked before it returns."""


def collection_order(policy: Policy, system: str) -> list[str]:
    """Collection names of ``system``, children before parents (references point child -> parent)."""
    colls = policy.systems[system].collections
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for child_ref, _ in policy.children(f"{system}.{name}"):
            c_sys, c_name = CollectionRef.parse(child_ref)
            if c_sys == system:
                visit(c_name)
        order.append(name)

    for name in colls:
        visit(name)
    return order

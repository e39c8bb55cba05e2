"""The core values every layer passes around: collection refs, request and recipient statuses, ledger outcomes,
and the recorder contract of a store's batches.

The bottom layer: imports nothing of this package but its errors. The statuses are ``StrEnum``s, so a member
equals the string the databases and the ledger hold (``RequestStatus.COMPLETE == "complete"``) and can be
adopted one comparison at a time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from include.retention.errors import RetentionError

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a system's or a collection's name in the data map


@dataclass(frozen=True, slots=True, order=True)
class CollectionRef:
    """One collection of one system, written ``system.collection`` in the data map, the ledger and receipts.

    Unpacks like a pair (``system, name = CollectionRef.parse(ref)``); ``str()`` gives the written form back."""

    system: str
    collection: str

    def __post_init__(self) -> None:
        for part, value in (("system", self.system), ("collection", self.collection)):
            if not isinstance(value, str) or not NAME.fullmatch(value):
                raise RetentionError(
                    f"a collection ref's {part} must be a name (letters, digits, _; not starting with a digit), "
                    f"not {str(value)[:40]!r}"
                )

    @classmethod
    def parse(cls, ref: str | CollectionRef) -> CollectionRef:
        """``"crm.contacts"`` -> ``CollectionRef("crm", "contacts")``; anything else is refused, with what was
        expected (a ref names a collection, never a person: it may be quoted)."""
        if isinstance(ref, CollectionRef):
            return ref
        system, sep, collection = str(ref).partition(".")
        if not sep or "." in collection:
            raise RetentionError(f"{str(ref)[:80]!r} is not a collection ref: expected 'system.collection'")
        return cls(system, collection)

    def __str__(self) -> str:
        return f"{self.system}.{self.collection}"

    def __iter__(self) -> Iterator[str]:
        yield self.system
        yield self.collection


class RequestStatus(StrEnum):
    """A subject request's status in the registry (``requests.status``)."""

    PENDING = "pending"  # queued, no run has it yet
    IN_PROGRESS = "in_progress"  # a run acts on it
    INCOMPLETE = "incomplete"  # a run ended with a system failed or a recipient not told: stays open
    COMPLETE = "complete"
    REJECTED = "rejected"  # the identity check refused it: closed, nothing read or changed
    CONFLICT = "conflict"  # its identities name more than one person: closed, nothing read or changed


class SystemStatus(StrEnum):
    """A request's status in one system (``request_systems.status``)."""

    PENDING = "pending"
    DISCOVERED = "discovered"  # the subject's items found, nothing changed yet
    ACTING = "acting"  # collections done so far are saved as they finish
    ACTED = "acted"  # every collection done
    RECORDED = "recorded"  # access and corrections: what was read or changed is recorded
    VERIFIED = "verified"  # erasure / restriction checked: nothing of the subject left
    FAILED = "failed"


class RecipientStatus(StrEnum):
    """Whether a recipient of the data was told of a request (Art. 19; ``request_recipients.status``)."""

    PENDING = "pending"
    SENT = "sent"
    CONFIRMED = "confirmed"
    WAIVED = "waived"  # recorded, not sent (the demo), or waived by a person on the page
    FAILED = "failed"


class Outcome(StrEnum):
    """The outcome of a ledger entry (``entries.outcome``); a discovery review records the finding's decision."""

    INTENT = "intent"  # written before a batch commits; settled by a later entry
    DONE = "done"
    RECONCILED = "reconciled"  # an intent whose run stopped, settled by the next run
    ROLLED_BACK = "rolled_back"  # an intent whose change was rolled back: nothing of it stays (a correction)
    DRY_RUN = "dry_run"
    VERIFIED = "verified"  # a subject request's system checked
    COMPLETE = "complete"  # a sweep run finished every rule
    PLANNED = "planned"  # a sweep's sealed plan, or one batch of it (records inside objects: one task per batch)
    BRAKE_TRIPPED = "brake_tripped"
    CONFLICT = "conflict"
    REJECTED = "rejected"
    EXTENDED = "extended"  # a request's due date extended (Art. 12(3))
    DUE_DATE = "due_date"  # requests due soon or overdue (the hourly check)
    RUN_DEADLINE = "run_deadline"  # a request run not done in time
    LATE_SWEEP = "late_sweep"  # a sweep run not done in time


class Recorder(Protocol):
    """Writes one ledger entry for a committed batch of a store's stage (``stores.base.end_record``).

    ``intent``: the token ``intend`` returned before the batch committed, if the recorder keeps intents."""

    def __call__(
        self, action: str, count: int, pk_digest: str, details: dict[str, Any], intent: Any = None
    ) -> None: ...


@runtime_checkable
class IntentRecorder(Recorder, Protocol):
    """A recorder that keeps intents: ``intend`` is called before the batch commits, and its token comes back as
    ``intent=``. One whose ``rereads`` is true also takes ``reread=`` (how to find the batch's rows again)."""

    def intend(self, action: str, planned: int, pk_digest: str, /, *args: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class SharingRecorder(IntentRecorder, Protocol):
    """An intent recorder that writes a batch's outcome and the next batch's intent in one transaction
    (``stores.base.DeferredOutcomes``)."""

    def intend_after(
        self, settled: tuple[Any, int, dict[str, Any]], action: str, planned: int, pk_digest: str, /, **kwargs: Any
    ) -> Any: ...


@runtime_checkable
class CascadeRecorder(Recorder, Protocol):
    """A recorder that gives a cascade into another system its own entries (that system, that collection)."""

    def for_collection(self, system: str, collection: str) -> Recorder: ...


@runtime_checkable
class FlushingRecorder(Recorder, Protocol):
    """A recorder holding an outcome back (``DeferredOutcomes``): ``flush`` writes it now."""

    def flush(self) -> None: ...

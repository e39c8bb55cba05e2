"""The data map and retention policy: YAML in git, validated into typed models.

A policy file describes systems (by Airflow connection id), their collections
(tables or S3 prefixes), identity fields, references between collections and
retention rules. ``load_policy`` refuses a wrong file before anything runs and
names the file, the path inside it and the problem.

This module imports nothing from Airflow.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from dateutil.relativedelta import relativedelta
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from include.retention.errors import PolicyError
from include.retention.identity import IDENTITY_KINDS

_DURATION = re.compile(
    r"^P(?!$)(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?$"
)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Longest storage period a data map may state: a longer one is a typo (P9999Y) that would only fail at run time.
MAX_PERIOD_YEARS = 100
_MAX_DAYS = MAX_PERIOD_YEARS * 365.2425
# A policy file is a few kilobytes; these bound what a wrong or hostile file can make the loader do.
MAX_POLICY_BYTES = 2_000_000
MAX_DEPTH = 40

Action = Literal["lock", "anonymize", "delete"]
# Later stages act first: rows past the delete period go before rows are locked.
ACTION_ORDER = {"lock": 0, "anonymize": 1, "delete": 2}


def parse_duration(text: str) -> relativedelta:
    """Parse a non-negative ISO 8601 duration (``P12M``, ``P10Y``, ``P30D``, ``PT0S``)."""
    if not isinstance(text, str):
        raise ValueError(f"storage period must be an ISO 8601 duration string such as 'P12M', got {text!r}")
    match = _DURATION.match(text.strip())
    if not match:
        hint = " (negative periods are not allowed)" if text.strip().startswith("-") else ""
        raise ValueError(f"{_short(text)!r} is not an ISO 8601 duration such as 'P30D', 'P12M' or 'P10Y'{hint}")
    too_long = (f"{_short(text)!r} is longer than {MAX_PERIOD_YEARS} years, "
                "the longest storage period a data map may state")
    if any(len(v) > 9 for v in match.groupdict().values() if v):
        raise ValueError(too_long)
    parts = {k: int(v) for k, v in match.groupdict().items() if v}
    weeks = parts.pop("weeks", 0)
    days = parts.pop("days", 0) + 7 * weeks
    approx = (parts.get("years", 0) * 365.2425 + parts.get("months", 0) * 365.2425 / 12 + days
              + parts.get("hours", 0) / 24 + parts.get("minutes", 0) / 1440 + parts.get("seconds", 0) / 86400)
    if approx > _MAX_DAYS + 1e-6:
        raise ValueError(too_long)
    return relativedelta(days=days, **parts)


def _short(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _approx_days(delta: relativedelta) -> float:
    return (delta.years * 365.2425 + delta.months * 365.2425 / 12 + delta.days + delta.hours / 24
            + delta.minutes / 1440 + delta.seconds / 86400)


class _Model(BaseModel):
    # strict: YAML's own types only. 'true' is not a number, "0.5" is not a fraction, "yes" is not a boolean.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True, allow_inf_nan=False)


RANGE_OPS = ("lt", "le", "gt", "ge")
AGE_OPS = ("older_than", "younger_than")
CONDITION_TESTS = ("equals", "in", "is_null", *RANGE_OPS, *AGE_OPS)


class Condition(_Model):
    """A test on one column: ``equals`` a value, ``in`` a list, ``is_null`` true/false, a range
    (``lt``/``le``/``gt``/``ge`` a number, date or date-time) or an age relative to the sweep's now
    (``older_than``/``younger_than`` an ISO period: ``younger_than: P18Y`` is ``column > now - 18 years``,
    ``older_than: P18Y`` is ``column < now - 18 years``; a row exactly at ``now - P`` matches neither; a date
    counts as its midnight UTC). NULL matches no range or age test."""

    column: str
    equals: Any = None
    in_: list[Any] | None = Field(default=None, alias="in")
    is_null: bool | None = None
    lt: Any = None
    le: Any = None
    gt: Any = None
    ge: Any = None
    older_than: str | None = None
    younger_than: str | None = None

    @property
    def test(self) -> str:
        """The one test this condition makes (``equals``, ``in``, ``is_null``, ``lt`` ... ``younger_than``)."""
        return next(name for name in CONDITION_TESTS if self._value(name) is not None)

    @property
    def value(self) -> Any:
        return self._value(self.test)

    def _value(self, name: str) -> Any:
        return self.in_ if name == "in" else getattr(self, name)

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        given = [name for name in CONDITION_TESTS if self._value(name) is not None]
        if len(given) != 1:
            raise ValueError(f"a condition needs exactly one of {', '.join(repr(t) for t in CONDITION_TESTS)} "
                             f"(got {given or 'none'})")
        if isinstance(self.equals, (list, dict)):
            raise ValueError("'equals' takes one value (text, number, boolean or date); use 'in' for a list")
        for op in RANGE_OPS:
            value = getattr(self, op)
            if value is not None and (isinstance(value, (list, dict, bool)) or
                                      not isinstance(value, (int, float, str, dt.date))):
                raise ValueError(f"{op!r} takes one number, date or date-time (got {_short(repr(value))})")
        for op in AGE_OPS:
            value = getattr(self, op)
            if value is not None:
                try:
                    parse_duration(value)
                except ValueError as exc:
                    raise ValueError(f"{op!r}: {exc}") from None
        if self.in_ is not None:
            if not self.in_:
                raise ValueError("'in' needs at least one value (an empty list matches nothing)")
            for value in self.in_:
                if value is None:
                    raise ValueError("'in' cannot hold null (it never matches); use 'is_null: true'")
                if isinstance(value, (list, dict)):
                    raise ValueError("'in' lists single values (text, number, boolean or date), not lists or mappings")
        return self


class Mask(_Model):
    """A named masking strategy for one column (see ``include.retention.masking``)."""

    strategy: str
    value: str | None = None

    @field_validator("strategy")
    @classmethod
    def _known(cls, strategy: str) -> str:
        from include.retention.masking import STRATEGIES

        if strategy not in STRATEGIES:
            raise ValueError(f"unknown masking strategy {strategy!r}; known: {', '.join(sorted(STRATEGIES))}")
        return strategy


class Stage(_Model):
    """One step of a lifecycle: take ``action`` once the storage period ``after`` has ended."""

    action: Action
    after: str
    mask: dict[str, Mask] = Field(default_factory=dict)
    # Overrides the start's round_up for this stage ("none": count from the event itself).
    round_up: Literal["year", "month", "none"] | None = None
    # Identity kinds whose keyed digests go on the suppression list when this (delete) stage deletes a row;
    # overrides the rule's ``suppress`` (``[]``: this stage suppresses nothing).
    suppress: list[str] | None = None

    @field_validator("after")
    @classmethod
    def _period(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def period(self) -> relativedelta:
        return parse_duration(self.after)

    @model_validator(mode="after")
    def _mask_only_for_anonymize(self) -> Stage:
        if self.action == "anonymize" and not self.mask:
            raise ValueError("an 'anonymize' stage needs 'mask': column -> masking strategy")
        if self.action != "anonymize" and self.mask:
            raise ValueError(f"'mask' only applies to 'anonymize', not to {self.action!r}")
        if self.suppress and self.action != "delete":
            raise ValueError(f"'suppress' applies to 'delete' stages, not to {self.action!r}")
        return self


MAX_START_COLUMNS = 8
MAX_KEY_COLUMNS = 8


class Start(_Model):
    """The event that starts the storage period: a column, optionally rounded up (``year``: end of that year).

    Computed from several columns (SQL): ``latest: [a, b]`` is the later of the non-NULL columns,
    ``earliest: [a, b]`` the earlier; ``fallback: c`` is used when all of them are NULL (without a
    fallback such a row has no start and is never due). Columns are compared as stored (naive
    timestamps are UTC); all must be of one type (docs/adr/0011-computed-starts-and-ranges.md).
    """

    column: str | None = None
    latest: list[str] | None = None
    earliest: list[str] | None = None
    fallback: str | None = None
    round_up: Literal["year", "month"] | None = None
    # S3 only: the object's LastModified, a date in the key, or a date in metadata/tags; ``record``: a field of
    # each record inside the object (collections with a ``format``), records are then kept or dropped one by one.
    basis: Literal["column", "last_modified", "key_date", "metadata", "tag", "record"] = "column"
    name: str | None = None  # metadata / tag name / record field holding the date
    # Only items nothing refers to any more (docs/adr/0013-orphaned-start-event.md). SQL: the marker column the
    # sweep stamps with the time it first found the row unreferenced (and clears once it is referenced again);
    # the period counts from that stamp. S3: ``last_modified`` (objects no row references, counted from upload).
    orphaned: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _orphaned_column(cls, value: Any) -> Any:
        """``orphaned: marker`` counts from the marker column: it is the start column too."""
        if isinstance(value, dict) and isinstance(value.get("orphaned"), str):
            others = [k for k in ("column", "latest", "earliest", "fallback", "basis", "name") if k in value
                      and not (k == "column" and value[k] == value["orphaned"])]
            if others:
                raise ValueError(f"'orphaned' names the column the period counts from; give no {others[0]!r}")
            value = {**value, "column": value["orphaned"]}
        return value

    @model_validator(mode="after")
    def _shape(self) -> Start:
        given = [k for k in ("column", "latest", "earliest") if getattr(self, k) is not None]
        if self.basis == "column" and len(given) != 1:
            if not given:
                raise ValueError("the start event needs 'column', 'latest' or 'earliest' (or another 'basis')")
            raise ValueError(f"give one of 'column', 'latest', 'earliest' (got {', '.join(given)})")
        if self.basis != "column" and (self.latest is not None or self.earliest is not None):
            raise ValueError(f"'latest' / 'earliest' compute a start from columns; basis {self.basis!r} has none")
        computed = self.latest if self.latest is not None else self.earliest
        if self.fallback is not None and computed is None:
            raise ValueError("'fallback' applies to a computed start ('latest' or 'earliest')")
        if computed is not None:
            op = "latest" if self.latest is not None else "earliest"
            if not computed:
                raise ValueError(f"{op!r} needs at least one column")
            if len(computed) > MAX_START_COLUMNS:
                raise ValueError(f"{op!r} takes at most {MAX_START_COLUMNS} columns")
            named = computed + ([self.fallback] if self.fallback else [])
            twice = sorted({c for c in named if named.count(c) > 1})
            if twice:
                raise ValueError(f"column {twice[0]!r} is named twice in the start event")
        if self.basis in ("metadata", "tag", "record") and not self.name:
            raise ValueError(f"basis {self.basis!r} needs 'name': the key holding the date")
        return self

    @property
    def computed(self) -> bool:
        """Whether the start is computed from several columns (``latest`` / ``earliest``)."""
        return self.latest is not None or self.earliest is not None

    def columns(self) -> list[str]:
        """Every column the start event reads (in order: the compared ones, then the fallback)."""
        if self.column is not None:
            return [self.column]
        cols = list(self.latest if self.latest is not None else self.earliest or [])
        return cols + ([self.fallback] if self.fallback else [])

    def describe(self) -> str:
        """The start event in words: ``column``, or ``the later of a, b (else c)``."""
        if self.orphaned is not None:
            return f"no longer referenced ({self.orphaned})"
        if not self.computed:
            return self.column or self.basis
        which = "later" if self.latest is not None else "earlier"
        cols = self.latest if self.latest is not None else self.earliest or []
        text = f"the {which} of {', '.join(cols)}" if len(cols) > 1 else cols[0]
        return text + (f" (else {self.fallback})" if self.fallback else "")


# The events a storage period may count from (``start_event:`` on a rule), each with the DIN 66398 / ISO/IEC 27555
# start event (Startzeitpunkt) it belongs to: collection, end of process, end of relationship. The deletion concept
# builds its deletion classes from them (docs/adr/0009-deletion-concept.md).
START_EVENTS: dict[str, tuple[str, str]] = {
    "collection": ("collection", "collection of the data"),
    "object_upload": ("collection", "upload of the object"),
    "last_contact": ("end_of_process", "last contact with the person"),
    "last_activity": ("end_of_process", "last activity of the person"),
    "end_of_process": ("end_of_process", "end of the process (closed, answered, decided)"),
    "unsubscribe": ("end_of_relationship", "unsubscribe or consent withdrawn"),
    "end_of_contract": ("end_of_relationship", "end of the contract"),
    "account_closed": ("end_of_relationship", "account closed"),
    "no_longer_referenced": ("end_of_relationship", "nothing refers to the record any more"),
}


class StartEvent(_Model):
    """What a rule's period counts from, by name (``START_EVENTS``), with an optional description of the data
    map's own: ``start_event: last_contact`` or ``{event: last_contact, description: "..."}``."""

    event: str
    description: str | None = None

    @field_validator("event")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in START_EVENTS:
            raise ValueError(f"unknown start event {_short(value)!r}; known: {', '.join(START_EVENTS)}")
        return value

    @property
    def din_event(self) -> str:
        """The DIN 66398 start event: ``collection``, ``end_of_process`` or ``end_of_relationship``."""
        return START_EVENTS[self.event][0]

    @property
    def words(self) -> str:
        return self.description or START_EVENTS[self.event][1]


class Rule(_Model):
    """A retention rule: for rows matching ``when``, the lifecycle ``stages`` counted from ``start``.

    ``action`` + ``period`` (+ ``mask``) is shorthand for a single stage.
    """

    name: str
    category: str | None = None
    start: Start
    when: list[Condition] = Field(default_factory=list)
    stages: list[Stage] = Field(default_factory=list)
    action: Action | None = None
    period: str | None = None
    mask: dict[str, Mask] = Field(default_factory=dict)
    max_fraction: float | None = Field(default=None, gt=0, le=1)
    batch_size: int | None = Field(default=None, ge=1, le=100_000)
    description: str | None = None
    # Identity kinds whose keyed digests go on the suppression list when this rule deletes a row (an
    # unsubscribe: the address must not come back); a stage's own ``suppress`` overrides it.
    suppress: list[str] = Field(default_factory=list)
    # The event the start column records (``START_EVENTS``): the deletion concept's start event.
    start_event: StartEvent | None = None

    @field_validator("start", mode="before")
    @classmethod
    def _start_shorthand(cls, value: Any) -> Any:
        return {"column": value} if isinstance(value, str) else value

    @field_validator("start_event", mode="before")
    @classmethod
    def _start_event_shorthand(cls, value: Any) -> Any:
        return {"event": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _start_event_fits(self) -> Rule:
        event = self.start_event.event if self.start_event else None
        if event == "no_longer_referenced" and self.start.orphaned is None:
            raise ValueError("start_event 'no_longer_referenced' needs 'start: {orphaned: ...}'")
        if event == "object_upload" and "last_modified" not in (self.start.basis, self.start.orphaned):
            raise ValueError("start_event 'object_upload' needs an S3 start counted from 'last_modified'")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _IDENT.match(value):
            raise ValueError(f"rule name {value!r} must be letters, digits and underscores")
        return value

    @model_validator(mode="after")
    def _normalise_stages(self) -> Rule:
        if self.action or self.period or self.mask:
            if self.stages:
                raise ValueError("give either 'stages' or 'action' + 'period', not both")
            if not (self.action and self.period):
                raise ValueError("a single-stage rule needs both 'action' and 'period'")
            stage = Stage(action=self.action, after=self.period, mask=self.mask)
            object.__setattr__(self, "stages", [stage])
        if not self.stages:
            raise ValueError("a rule needs 'stages' or 'action' + 'period'")
        actions = [s.action for s in self.stages]
        if len(set(actions)) != len(actions):
            raise ValueError(f"each action may appear once per rule, got {actions}")
        ordered = sorted(self.stages, key=lambda s: _approx_days(s.period))
        for earlier, later in zip(ordered, ordered[1:], strict=False):
            if _approx_days(earlier.period) == _approx_days(later.period):
                raise ValueError("two stages of one rule cannot end at the same period")
            if ACTION_ORDER[earlier.action] > ACTION_ORDER[later.action]:
                raise ValueError(
                    f"stage {later.action!r} after {later.after} cannot follow the stronger "
                    f"{earlier.action!r} after {earlier.after}"
                )
        object.__setattr__(self, "stages", ordered)
        if self.suppress and "delete" not in actions:
            raise ValueError("'suppress' applies to deletes, and this rule deletes nothing")
        return self

    def suppress_kinds(self, stage: Stage) -> list[str]:
        """Identity kinds a delete by ``stage`` suppresses (the stage's own list, else the rule's)."""
        if stage.action != "delete":
            return []
        return list(stage.suppress if stage.suppress is not None else self.suppress)


class Reference(_Model):
    """This collection's ``column`` points at a row (or object) of collection ``to`` (``system.collection``).

    ``on_delete`` says what happens to this row when the referenced one is deleted:
    ``delete`` it too, or ``nullify`` the column. For S3 targets, ``key_template``
    (e.g. ``cvs/{id}/``) or ``column`` (holding the key) name the objects this row owns.
    """

    to: str
    column: str | None = None
    to_column: str | None = None
    # A reference of several columns (``columns: [tenant_id, customer_id]``, ``to_columns: [tenant_id, id]``):
    # the row points at the target row whose ``to_columns`` equal its ``columns``, pairwise, in order.
    columns: list[str] | None = None
    to_columns: list[str] | None = None
    on_delete: Literal["delete", "nullify"] | None = None
    key_template: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> Reference:
        if self.columns is not None and self.column is not None:
            raise ValueError("give either 'column' or 'columns', not both")
        if self.to_columns is not None and self.to_column is not None:
            raise ValueError("give either 'to_column' or 'to_columns', not both")
        if self.columns is not None:
            if not self.columns:
                raise ValueError("'columns' must name at least one column")
            if len(set(self.columns)) != len(self.columns):
                raise ValueError("'columns' names a column twice")
            if self.to_columns is not None and len(self.to_columns) != len(self.columns):
                raise ValueError(f"'columns' has {len(self.columns)} column(s) and 'to_columns' "
                                 f"{len(self.to_columns)}: they pair up one to one")
            if len(self.columns) == 1:  # one column: the plain spelling, so every path reads ``column``
                object.__setattr__(self, "column", self.columns[0])
                object.__setattr__(self, "columns", None)
                if self.to_columns is not None:
                    object.__setattr__(self, "to_column", self.to_columns[0])
                    object.__setattr__(self, "to_columns", None)
        elif self.to_columns is not None:
            if len(self.to_columns) != 1:
                raise ValueError("'to_columns' of several columns needs 'columns' of as many")
            object.__setattr__(self, "to_column", self.to_columns[0])
            object.__setattr__(self, "to_columns", None)
        if not self.column and not self.columns and not self.key_template:
            raise ValueError("a reference needs 'column' (or 'columns', or, to S3, 'key_template')")
        return self

    @property
    def composite(self) -> bool:
        return self.columns is not None

    def source_columns(self) -> list[str]:
        """This collection's referencing columns, in order (one for a plain reference)."""
        if self.columns is not None:
            return list(self.columns)
        return [self.column] if self.column else []

    def target_columns(self, target: Collection) -> list[str]:
        """The referenced columns of ``target``, paired with ``source_columns()`` in order:
        ``to_columns`` / ``to_column`` when named, else the target's primary key."""
        if self.to_columns is not None:
            return list(self.to_columns)
        if self.to_column is not None:
            return [self.to_column]
        return target.key_columns()


class IdentityField(_Model):
    """Where a collection holds one identity kind, and what erasing the person does to it.

    ``erase: row`` (default): the item is the person's and goes (or is anonymized) as a whole.
    ``erase: mask``: the item belongs to someone else and only mentions the person (an organisation
    admin's address on a user's account): the field is masked with ``mask`` and the item kept.
    ``lookup: indexed`` (SQL): a request finds candidate rows through the digest column ``<column>_ndigest``
    (its index and triggers, created by a DBA: ``cli index-identities``) instead of reading every row;
    ``normalise`` still judges every candidate (docs/adr/0022-indexed-identity-lookup.md).
    """

    column: str
    erase: Literal["row", "mask"] = "row"
    mask: Mask | None = None
    lookup: Literal["scan", "indexed"] = "scan"

    @model_validator(mode="after")
    def _mask(self) -> IdentityField:
        if self.erase == "mask" and self.mask is None:
            raise ValueError("'erase: mask' needs 'mask': the masking strategy for the field")
        if self.erase == "row" and self.mask is not None:
            raise ValueError("'mask' applies only with 'erase: mask'")
        return self


class CategoryInfo(_Model):
    """A data category as an access request explains it (GDPR Art. 15(1)(a)-(h)). In ``categories:`` a
    category is its description (text) or this mapping."""

    description: str
    purpose: str | None = None
    legal_basis: str | None = None
    recipients: list[str] = Field(default_factory=list)
    source: str | None = None  # where the data came from, when not from the person (Art. 15(1)(g))


RECIPIENT_CHANNELS = ("email", "webhook", "manual")
# What a notice may say about the person (docs/adr/0010-notifying-recipients.md): nothing (the request id only),
# the plaintext identities (e-mail channel only) or keyed digests under a key the recipient shares.
RECIPIENT_IDENTITY = ("none", "plain", "digest")
NOTICE_FIELDS = ("request_id", "action", "recipient")


class Recipient(_Model):
    """A processor or other recipient of a system's data (GDPR Art. 19) and how it is told of a request:
    ``email`` (an address template), ``webhook`` (an Airflow HTTP connection) or ``manual`` (a person confirms
    in the Airflow UI)."""

    description: str
    channel: Literal["email", "webhook", "manual"]
    address: str | None = None  # email: e.g. "privacy@processor.example" or "dpa+{request_id}@processor.example"
    connection: str | None = None  # email: the SMTP connection (default smtp_default); webhook: the HTTP connection
    endpoint: str | None = None  # webhook: path below the connection's host (default: the connection's own path)
    identity: Literal["none", "plain", "digest"] = "none"
    digest_key: str | None = None  # identity: digest -> the connection whose password is the shared key
    processor: bool = True  # an Art. 28 processor (False: another recipient, e.g. an auditor)


class Consent(_Model):
    """A consent a person can withdraw: ``column`` is set to ``withdrawn`` (a value, or ``now``: the time
    of the withdrawal); the collection's retention rules then act on the row as usual."""

    name: str
    column: str
    withdrawn: Any = "now"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _IDENT.match(value):
            raise ValueError(f"consent name {value!r} must be letters, digits and underscores")
        return value


S3_IDENTITY_SOURCES = ("key", "metadata", "tag", "record")
# What S3 objects of a collection may hold record by record (docs/adr/0021-records-inside-objects.md); gzip is read
# where the key ends ``.gz`` or the object's Content-Encoding says ``gzip``.
RECORD_FORMATS = ("csv", "jsonl", "parquet")


class LockMarker(_Model):
    """Columns that mark a row as restricted (GDPR Art. 18): time and reason."""

    at: str = "restricted_at"
    reason: str | None = "restriction_reason"


class Collection(_Model):
    """A table (SQL) or a bucket prefix (S3) and what it holds."""

    table: str | None = None
    # one column, or a list of columns for a composite key (e.g. [subscriber_id, list_id])
    primary_key: str | list[str] | None = None
    columns: list[str] = Field(default_factory=list)
    bucket: str | None = None
    prefix: str | None = None
    key_template: str | None = None
    # S3: the objects hold records (CSV with a header line, JSON lines, Parquet); identities may then be
    # "record:<field>", a rule may count from ``{basis: record, name: <field>}``.
    format: Literal["csv", "jsonl", "parquet"] | None = None
    # identity kind (email, phone, customer_ref, social_handle) -> the field(s) holding it: a column
    # (SQL), or "key:<template field>" / "metadata:<name>" / "tag:<name>" (S3)
    identities: dict[str, str | IdentityField | list[str | IdentityField]] = Field(default_factory=dict)

    @field_validator("identities", mode="before")
    @classmethod
    def _identity_fields(cls, value: Any) -> Any:
        """Read ``{column: ..., erase: mask, mask: ...}`` items here, so a wrong one gets its own message."""
        if not isinstance(value, dict):
            return value
        out = {}
        for kind, spec in value.items():
            items = spec if isinstance(spec, list) else [spec]
            parsed = []
            for i, item in enumerate(items):
                if isinstance(item, dict):
                    try:
                        item = IdentityField.model_validate(item)
                    except ValidationError as exc:
                        err = exc.errors()[0]
                        where = f"{kind}[{i}]" if isinstance(spec, list) else str(kind)
                        raise ValueError(f"{where}: {_loc(err['loc'])}: {_message(err)}") from None
                parsed.append(item)
            out[kind] = parsed if isinstance(spec, list) else parsed[0]
        return out
    references: list[Reference] = Field(default_factory=list)
    categories: list[str] = Field(default_factory=list)
    lock: LockMarker | None = None
    anonymized_marker: str | None = None
    legal_hold: list[Condition] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)
    # Consents the person may withdraw here (``withdraw`` requests): name, column, value once withdrawn.
    consent: list[Consent] = Field(default_factory=list)
    # Recipients (names from ``recipients:``) told of each erasure, restriction or correction here (Art. 19).
    notify: list[str] = Field(default_factory=list)

    def key_columns(self) -> list[str]:
        """The primary key's columns (one, or several for a composite key)."""
        if isinstance(self.primary_key, str):
            return [self.primary_key]
        return list(self.primary_key or [])

    def identity_fields(self) -> list[tuple[str, IdentityField]]:
        """(identity kind, field) pairs, one per column / key part / metadata / tag."""
        out = []
        for kind, spec in self.identities.items():
            for item in spec if isinstance(spec, list) else [spec]:
                out.append((kind, IdentityField(column=item) if isinstance(item, str) else item))
        return out

    def identity_columns(self) -> list[tuple[str, str]]:
        """(identity kind, column) pairs, one per column."""
        return [(kind, f.column) for kind, f in self.identity_fields()]

    # Keep a keyed digest of these identity kinds when rows are deleted (e.g. unsubscribed
    # newsletter readers), so a re-import or re-subscribe cannot bring them back.
    suppress_on_delete: list[str] = Field(default_factory=list)

    def suppress_kinds(self) -> list[str]:
        """Identity kinds any delete here may suppress: ``suppress_on_delete`` (deprecated) and every rule's or
        stage's ``suppress``. The sweep's suppression enforcement runs on collections with any."""
        kinds = list(self.suppress_on_delete)
        for rule in self.rules:
            for stage in rule.stages:
                kinds += [k for k in rule.suppress_kinds(stage) if k not in kinds]
        return kinds

    # How a subject request erases this collection's data: delete the rows or mask them.
    erasure: Literal["delete", "anonymize"] = "delete"
    erasure_mask: dict[str, Mask] = Field(default_factory=dict)


class Backups(_Model):
    """How long copies of a system's data live in its backups (DIN 66398: the one exception to the standard
    deletion period), where they are, and what a restore does before the restored copy is used: ``replay`` the
    completed erasures (``cli replay <system>``; a system holding identities) or, for a system without
    identities (objects owned by rows), let the ``sweep``'s rules remove what is past its period or unreferenced."""

    retention: str
    where: str = Field(min_length=1)  # what an auditor looks for: the dumps, the replica, their place
    restore: Literal["replay", "sweep"] = "replay"

    @field_validator("retention")
    @classmethod
    def _period(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def period(self) -> relativedelta:
        return parse_duration(self.retention)


class System(_Model):
    kind: Literal["sql", "s3"]
    connection: str
    collections: dict[str, Collection]
    # Recipients of every collection's data in this system (names from ``recipients:``), told as above.
    notify: list[str] = Field(default_factory=list)
    # Copies of this system's data in backups: how long, where, and the restore procedure.
    backups: Backups | None = None

    @model_validator(mode="after")
    def _restore_fits(self) -> System:
        identities = any(coll.identities for coll in self.collections.values())
        if self.backups is not None and self.backups.restore == "replay" and not identities:
            raise ValueError("backups.restore: 'replay' re-applies erasures to collections with identities and "
                             "this system has none; write 'restore: sweep'")
        if self.backups is not None and self.backups.restore == "sweep" and identities:
            raise ValueError("backups.restore: this system holds identities: a restored copy must have the "
                             "completed erasures replayed first ('restore: replay')")
        return self


class Defaults(_Model):
    max_fraction: float = Field(default=0.5, gt=0, le=1)
    batch_size: int = Field(default=1000, ge=1, le=100_000)


class Policy(_Model):
    version: Literal[1] = 1
    name: str = "retention policy"
    policy_version: str | None = None
    defaults: Defaults = Field(default_factory=Defaults)
    # name -> description, or {description, purpose, legal_basis, recipients, source} (access packages explain it)
    categories: dict[str, str | CategoryInfo] = Field(default_factory=dict)
    systems: dict[str, System]
    # Processors and other recipients (Art. 19): name -> how they are told; systems and collections
    # name them in ``notify:``.
    recipients: dict[str, Recipient] = Field(default_factory=dict)
    # The S3 collection (``system.collection``) access packages are written to; its own rules delete them.
    exports: str | None = None
    # Identity kinds a subject request may carry (form fields); default: every kind a collection declares.
    request_fields: list[str] | None = None
    # Set by load_policy: sha256 of the file's bytes, recorded in every ledger entry.
    digest: str = ""
    source: str = ""

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        if isinstance(value, bool):  # True == 1 in Python; a data map says 1
            raise ValueError("version must be the number 1")
        return value

    # ---- navigation -------------------------------------------------------------
    def collection(self, ref: str) -> Collection:
        system, _, name = ref.partition(".")
        return self.systems[system].collections[name]

    def system_of(self, ref: str) -> System:
        return self.systems[ref.partition(".")[0]]

    def rule_ids(self, systems: list[str] | None = None) -> list[str]:
        return [
            f"{s}.{c}.{r.name}"
            for s, system in self.systems.items()
            if not systems or s in systems
            for c, coll in system.collections.items()
            for r in coll.rules
        ]

    def rule(self, rule_id: str) -> tuple[str, Collection, Rule]:
        system, coll_name, rule_name = rule_id.split(".")
        coll = self.systems[system].collections[coll_name]
        for rule in coll.rules:
            if rule.name == rule_name:
                return f"{system}.{coll_name}", coll, rule
        raise KeyError(rule_id)

    def children(self, ref: str) -> list[tuple[str, Reference]]:
        """Collections holding a reference to ``ref``: (child collection ref, the reference)."""
        return [
            (f"{s}.{c}", reference)
            for s, system in self.systems.items()
            for c, coll in system.collections.items()
            for reference in coll.references
            if reference.to == ref and reference.source_columns() and system.kind == "sql"
            and self.system_of(ref).kind == "sql"
        ]

    def owned_objects(self, ref: str) -> list[Reference]:
        """References from SQL collection ``ref`` to S3 collections: objects the row owns."""
        coll = self.collection(ref)
        return [r for r in coll.references if self.system_of(r.to).kind == "s3"]

    def declared_kinds(self) -> set[str]:
        """Identity kinds some collection of the data map holds."""
        return {kind for system in self.systems.values() for coll in system.collections.values()
                for kind in coll.identities}

    def request_kinds(self) -> list[str]:
        """Identity kinds a subject request may carry."""
        return list(self.request_fields) if self.request_fields is not None else sorted(self.declared_kinds())

    def recipients_of(self, system: str, collection: str | None = None) -> list[str]:
        """Recipient names told of a change in ``system`` (and, if given, in that collection of it)."""
        sys_ = self.systems[system]
        names = list(sys_.notify)
        colls = [sys_.collections[collection]] if collection else list(sys_.collections.values())
        for coll in colls:
            names += [n for n in coll.notify if n not in names]
        return names

    def category_info(self, name: str) -> CategoryInfo:
        """A category's description, purpose, legal basis and recipients (what the data map says of it)."""
        value = self.categories.get(name)
        return value if isinstance(value, CategoryInfo) else CategoryInfo(description=value or name)

    def max_fraction(self, rule: Rule) -> float:
        return rule.max_fraction if rule.max_fraction is not None else self.defaults.max_fraction

    def batch_size(self, rule: Rule) -> int:
        return rule.batch_size if rule.batch_size is not None else self.defaults.batch_size


# ---- loading and cross-checks -----------------------------------------------------------


# Parsed policies of this process, by (path as given, mtime, size, sha256 of the bytes read): a process that
# runs many task bodies (the bench, a long-lived page, a worker running tasks in-process) parses a data map once.
# The file is read and hashed on every call, so a changed file is parsed again, whatever its mtime says.
_PARSED: dict[tuple[str, int, int, str], Policy] = {}
_PARSED_MAX = 8
_PARSED_LOCK = threading.Lock()


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; raise ``PolicyError`` naming file, path and problem.

    The file is read every time; when its bytes (and path, mtime, size) are those of a file this process
    already parsed, that parse is returned (the same frozen ``Policy``: callers never change it). A file
    that fails validation is not remembered: it is refused again, with the same message, on every call.
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise PolicyError(f"{path}: is a directory, not a policy file")
        stat = path.stat()
        if stat.st_size > MAX_POLICY_BYTES:
            raise PolicyError(f"{path}: the policy file is larger than {MAX_POLICY_BYTES // 1_000_000} MB")
        raw_bytes = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy file ({exc.strerror or type(exc).__name__})") from None
    key = (str(path), stat.st_mtime_ns, len(raw_bytes), hashlib.sha256(raw_bytes).hexdigest())
    with _PARSED_LOCK:
        policy = _PARSED.get(key)
    if policy is not None:
        return policy
    policy = parse_policy(raw_bytes, source=str(path))
    with _PARSED_LOCK:
        _PARSED[key] = policy
        while len(_PARSED) > _PARSED_MAX:  # the oldest parse goes first
            _PARSED.pop(next(iter(_PARSED)))
    return policy


class _Refused(Exception):
    def __init__(self, mark: Any, path: str, problem: str):
        super().__init__(problem)
        self.mark, self.path, self.problem = mark, path, problem


_SCALAR_NAMES = {
    "tag:yaml.org,2002:bool": "a boolean", "tag:yaml.org,2002:int": "a number", "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:null": "null", "tag:yaml.org,2002:timestamp": "a date",
}


class _Loader(yaml.SafeLoader):
    """YAML's safe loader without the features a data map does not need and a wrong file can abuse:
    aliases (``*x``, the billion-laughs bomb and silently shared values), merge keys (``<<``) and
    unbounded nesting. Duplicate keys and non-text keys are refused by ``_check_tree``."""

    _depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(event.start_mark, "", f"alias '*{event.anchor}' is not supported in a data map; "
                                                 "write the value out")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(self.peek_event().start_mark, "", f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _join(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else str(part)


def _check_tree(loader: _Loader, root: yaml.Node) -> None:
    """Walk the composed document: refuse duplicate keys, non-text keys and unreadable scalars, naming
    the line and the key path."""
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise _Refused(key_node.start_mark, path, "a key must be a name, not a list or mapping")
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise _Refused(key_node.start_mark, path, "merge keys ('<<') are not supported in a data map")
                if key_node.tag != "tag:yaml.org,2002:str":
                    kind = _SCALAR_NAMES.get(key_node.tag, key_node.tag)
                    raise _Refused(key_node.start_mark, path,
                                   f"key {key_node.value[:40]!r} is read as {kind}; keys are names (quote it)")
                key = key_node.value
                where = _join(path, key)
                if key in seen:
                    raise _Refused(key_node.start_mark, where,
                                   f"duplicate key {key!r} (first given on line {seen[key]}); "
                                   "a second value would silently replace the first")
                seen[key] = key_node.start_mark.line + 1
                stack.append((value_node, where))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, _join(path, i)) for i, item in enumerate(node.value))
        elif node.tag != "tag:yaml.org,2002:str":
            try:
                loader.construct_object(node, deep=True)
            except (ValueError, TypeError, OverflowError, yaml.YAMLError) as exc:
                problem = getattr(exc, "problem", None) or str(exc)
                raise _Refused(node.start_mark, path, f"value {node.value[:40]!r} cannot be read ({problem})") from None


def _read_yaml(raw_bytes: bytes, source: str) -> Any:
    loader = None
    try:
        loader = _Loader(raw_bytes)
        root = loader.get_single_node()
        if root is None:
            return None
        _check_tree(loader, root)
        return loader.construct_document(root)
    except _Refused as exc:
        line = f"line {exc.mark.line + 1}" if exc.mark else ""
        where = f"{exc.path} ({line})" if exc.path else line
        raise PolicyError(f"{source}: {where}: {exc.problem}") from None
    except yaml.reader.ReaderError as exc:
        raise PolicyError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.position})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise PolicyError(f"{source}:{where} not valid YAML: {problem}") from None
    except RecursionError:
        raise PolicyError(f"{source}: nested too deeply to be a data map") from None
    finally:
        if loader is not None:
            loader.dispose()


def parse_policy(raw: bytes | str, source: str = "<policy>") -> Policy:
    """Validate a policy given as bytes or text; raise ``PolicyError`` naming source, path and problem."""
    raw_bytes = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if len(raw_bytes) > MAX_POLICY_BYTES:
        raise PolicyError(f"{source}: the policy file is larger than {MAX_POLICY_BYTES // 1_000_000} MB")
    data = _read_yaml(raw_bytes, source)
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the top level must be a mapping with 'systems'")
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise PolicyError(f"{source}: {_loc(err['loc'])}: {_message(err)}{more}") from None
    problems = list(_cross_check(policy))
    if problems:
        where, problem = problems[0]
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise PolicyError(f"{source}: {where}: {problem}{more}")
    digest = hashlib.sha256(raw_bytes).hexdigest()
    return policy.model_copy(update={"digest": digest, "source": source})


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith(("function-", "tagged-union")):
            continue
        else:
            text = str(part)
            if not re.fullmatch(r"[\w\-. :]{1,80}", text):  # a key with line breaks, quotes ...: shown quoted
                text = repr(text[:80])
            out += ("." if out else "") + text
    return out or "(top level)"


def _message(err: dict[str, Any]) -> str:
    msg = err.get("msg", "invalid")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if err.get("type") == "extra_forbidden":
        msg = "unknown field (not part of the policy format)"
    value = err.get("input")
    if isinstance(value, bool) and err.get("type") in ("string_type", "float_type", "int_type", "literal_error"):
        msg += " (got a boolean: YAML reads true/false/yes/no/on/off unquoted as booleans; quote the text)"
    elif isinstance(value, (int, float)) and err.get("type") == "string_type":
        msg += " (got a number; quote it if it is text)"
    elif isinstance(value, str) and err.get("type") in ("float_type", "int_type", "bool_type"):
        msg += " (got quoted text; write the value without quotes)"
    return msg


def _cross_check(policy: Policy):
    """Yield (path, problem) for what a field-by-field check cannot see."""
    for s_name, system in policy.systems.items():
        if not _IDENT.match(s_name):
            yield f"systems.{s_name}", "system names must be letters, digits and underscores"
        for c_name, coll in system.collections.items():
            base = f"systems.{s_name}.collections.{c_name}"
            if not _IDENT.match(c_name):
                yield base, "collection names must be letters, digits and underscores"
            for kind in coll.identities:
                if kind not in IDENTITY_KINDS:
                    yield f"{base}.identities.{kind}", (
                        f"unknown identity kind {kind!r}; known: {', '.join(IDENTITY_KINDS)}")
            yield from (_check_sql(policy, base, coll) if system.kind == "sql" else _check_s3(base, coll))
            if system.kind == "sql" and coll.format is not None:
                yield f"{base}.format", "'format' describes records inside S3 objects; SQL rows are records already"
            yield from _check_orphaned(policy, s_name, c_name)
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
                    if system.kind != "sql":
                        yield where, "only SQL collections can reference S3 objects"
                    if ref.composite or ref.to_columns:
                        yield f"{where}.columns", "a reference to S3 objects names one 'column' or a 'key_template'"
                    if ref.key_template:
                        for field in _template_fields(ref.key_template):
                            if field not in coll.columns:
                                yield f"{where}.key_template", f"unknown column {field!r} in key template"
                        # A filled template must stay inside the target's prefix, or a row could reach other data.
                        target_prefix = _s3_prefix(target)
                        if not _literal_head(ref.key_template).startswith(target_prefix):
                            yield f"{where}.key_template", (
                                f"the key template must start with {ref.to}'s prefix {target_prefix!r}")
                    continue
                yield from _check_reference_columns(where, coll, ref, target)
                has_delete = any(st.action == "delete" for r in target.rules for st in r.stages)
                if ref.on_delete is None and (has_delete or target.erasure == "delete"):
                    yield f"{where}.on_delete", (
                        f"{ref.to} can have rows deleted; say what happens to these rows then "
                        "('on_delete: delete' or 'on_delete: nullify')"
                    )
    yield from _check_identities(policy)
    yield from _check_consent_and_exports(policy)
    yield from _check_recipients(policy)
    cycle = _find_cycle(policy)
    if cycle:
        first, nxt = cycle[0], cycle[1]
        s, _, c = first.partition(".")
        i = next(i for i, r in enumerate(policy.collection(first).references) if r.to == nxt)
        systems = {node.partition(".")[0] for node in cycle}
        across = " across databases" if len(systems) > 1 else ""
        yield (f"systems.{s}.collections.{c}.references[{i}].to",
               f"reference cycle{across}: {' -> '.join(cycle)} (a delete could never take children first)")


def _check_reference_columns(where: str, coll: Collection, ref: Reference, target: Collection):
    """A reference between tables: its columns pair up with named columns of the target (or the target's primary
    key), and ``nullify`` can clear them. Whether the target's columns are unique there is the database's to say
    when they are not the declared primary key (``SqlStore.check`` reflects its unique constraints and indexes)."""
    src = ref.source_columns()
    if not src:
        yield f"{where}.column", "a reference between tables needs 'column' (or 'columns')"
        return
    named = [(f"{where}.to_columns[{j}]", c) for j, c in enumerate(ref.to_columns)] if ref.to_columns else (
        [(f"{where}.to_column", ref.to_column)] if ref.to_column else [])
    for at, name in named:
        if name not in target.columns:
            yield at, f"unknown column {name!r} of {ref.to} (columns: {', '.join(target.columns)})"
    key = target.key_columns()
    if not named and len(key) != len(src):
        if len(src) == 1:
            yield f"{where}.to_column", (f"{ref.to} has a composite primary key ({', '.join(key)}); a reference of "
                                         "one column names the referenced column with 'to_column' (unique there), "
                                         "or gives 'columns' and 'to_columns' of as many")
        else:
            yield f"{where}.to_columns", (f"{ref.to}'s primary key has {len(key)} column(s) ({', '.join(key)}) and "
                                          f"'columns' {len(src)}: name the referenced columns with 'to_columns'")
    if ref.on_delete == "nullify":
        in_key = [c for c in src if c in coll.key_columns()]
        if in_key:
            yield f"{where}.on_delete", (f"'nullify' would clear column(s) {', '.join(in_key)} of the primary key: "
                                         "use 'on_delete: delete'")


def _check_consent_and_exports(policy: Policy):
    """Consent columns a SQL collection has; an exports collection that is an S3 collection of the map."""
    for s_name, system in policy.systems.items():
        for c_name, coll in system.collections.items():
            for i, consent in enumerate(coll.consent):
                where = f"systems.{s_name}.collections.{c_name}.consent[{i}]"
                if system.kind != "sql":
                    yield where, "consents are SQL columns"
                elif consent.column not in coll.columns:
                    yield f"{where}.column", f"unknown column {consent.column!r} (columns of {coll.table}: " \
                                             f"{', '.join(coll.columns)})"
                elif not coll.identities:
                    yield where, "a consent needs a collection with identities (whose consent it is)"
    if policy.exports is not None:
        s_name, _, c_name = policy.exports.partition(".")
        if s_name not in policy.systems or c_name not in policy.systems[s_name].collections:
            yield "exports", f"unknown collection {policy.exports!r} (write system.collection)"
        elif policy.systems[s_name].kind != "s3":
            yield "exports", f"{policy.exports} is not an S3 collection: access packages are S3 objects"
        elif not policy.systems[s_name].collections[c_name].rules:
            yield "exports", f"{policy.exports} needs a retention rule: an access package must not stay forever"


def _check_recipients(policy: Policy):
    """Recipients named in ``notify:`` exist; each channel has what it needs; identities only where allowed."""
    for name, rcp in policy.recipients.items():
        where = f"recipients.{name}"
        if not _IDENT.match(name):
            yield where, "recipient names must be letters, digits and underscores"
        if rcp.channel == "email":
            if not rcp.address:
                yield f"{where}.address", "an e-mail recipient needs 'address' (an address or address template)"
            else:
                unknown = [f for f in _template_fields(rcp.address) if f not in NOTICE_FIELDS]
                if unknown:
                    yield f"{where}.address", (f"unknown field {{{unknown[0]}}} in the address template (known: "
                                               f"{', '.join(NOTICE_FIELDS)})")
                elif "@" not in rcp.address or any(c in rcp.address for c in " ,;<>\r\n"):
                    yield f"{where}.address", "not one e-mail address (write local@domain, one per recipient)"
            if rcp.endpoint:
                yield f"{where}.endpoint", "'endpoint' is for webhook recipients"
        elif rcp.channel == "webhook":
            if not rcp.connection:
                yield f"{where}.connection", "a webhook recipient needs 'connection' (an Airflow HTTP connection id)"
            if rcp.address:
                yield f"{where}.address", "'address' is for e-mail recipients"
            if rcp.endpoint and (rcp.endpoint.startswith(("http:", "https:")) or "//" in rcp.endpoint):
                yield f"{where}.endpoint", ("a path below the connection's host, not a URL "
                                                    "(the host is the connection's)")
        else:
            for field in ("address", "connection", "endpoint"):
                if getattr(rcp, field):
                    yield f"{where}.{field}", (f"a manual recipient has no {field!r}: a person "
                                                              "confirms in the Airflow UI")
        if rcp.identity == "plain" and rcp.channel != "email":
            yield f"{where}.identity", ("plaintext identities go only by e-mail (never in webhook payloads or "
                                        "the Airflow UI); use 'digest' or 'none'")
        if rcp.identity == "digest" and not rcp.digest_key:
            yield f"{where}.digest_key", "identity 'digest' needs 'digest_key': the connection holding the shared key"
        if rcp.digest_key and rcp.identity != "digest":
            yield f"{where}.digest_key", "'digest_key' applies only with 'identity: digest'"
    used: set[str] = set()
    for s_name, system in policy.systems.items():
        places = [(f"systems.{s_name}.notify", system.notify)] + [
            (f"systems.{s_name}.collections.{c}.notify", coll.notify) for c, coll in system.collections.items()]
        for where, names in places:
            for i, name in enumerate(names):
                used.add(name)
                if name not in policy.recipients:
                    known = ", ".join(policy.recipients) or "none declared"
                    yield f"{where}[{i}]", f"unknown recipient {name!r} (recipients: {known})"
                elif names.index(name) != i:
                    yield f"{where}[{i}]", f"recipient {name!r} is listed twice"
    for name in policy.recipients:
        if name not in used:
            yield f"recipients.{name}", "declared but no system or collection names it in 'notify'"


def _check_identities(policy: Policy):
    """Identity kinds the request fields know, fields that exist, request fields something holds."""
    from include.retention.identity import IDENTITY_KINDS

    for s_name, system in policy.systems.items():
        for c_name, coll in system.collections.items():
            base = f"systems.{s_name}.collections.{c_name}.identities"
            for kind, fld in coll.identity_fields():
                if kind not in IDENTITY_KINDS:
                    yield f"{base}.{kind}", (f"identity kind {kind!r} is not a field a request can carry "
                                             f"(request fields: {', '.join(IDENTITY_KINDS)})")
                if system.kind == "s3":
                    source, _, name = fld.column.partition(":")
                    if source not in S3_IDENTITY_SOURCES or not name:
                        yield f"{base}.{kind}", (f"S3 identities are 'key:<template field>', 'metadata:<name>' or "
                                                 f"'tag:<name>' (or 'record:<field>' with a 'format'), got "
                                                 f"{fld.column!r}")
                    elif source == "key" and name not in _template_fields(coll.key_template or ""):
                        yield f"{base}.{kind}", f"the key template has no field {{{name}}}"
                    elif source == "record" and coll.format is None:
                        yield f"{base}.{kind}", (f"identity {fld.column!r} is a field of records, but the collection "
                                                 "declares no 'format' (csv, jsonl or parquet): its objects have no "
                                                 "fields")
                    elif source != "record" and coll.format is not None:
                        yield f"{base}.{kind}", (f"a collection of {coll.format} records holds its identities in "
                                                 f"records ('record:<field>'), got {fld.column!r}")
                    if fld.erase != "row" and source != "record":
                        yield f"{base}.{kind}", ("S3 objects are erased whole ('erase: mask' is for SQL columns and "
                                                 "record fields)")
                    if fld.lookup != "scan":
                        yield f"{base}.{kind}", "'lookup: indexed' is for SQL columns (S3 identities are listed)"
                elif fld.erase == "mask" and fld.column in coll.key_columns():
                    yield f"{base}.{kind}", "the primary key cannot be masked"
                if system.kind == "sql" and fld.lookup == "indexed":
                    others = sorted({k for k, f in coll.identity_fields() if f.column == fld.column} - {kind})
                    if others:
                        yield f"{base}.{kind}", (f"'lookup: indexed': column {fld.column!r} also holds "
                                                 f"{', '.join(others)}; its digest column names one kind")
                    if fld.column.endswith("_ndigest") or f"{fld.column}_ndigest" in coll.columns:
                        yield f"{base}.{kind}", (f"'lookup: indexed': {fld.column}_ndigest is the product's digest "
                                                 "column; do not declare it in the data map")
    declared = policy.declared_kinds()
    for i, kind in enumerate(policy.request_fields or []):
        if kind not in IDENTITY_KINDS:
            yield f"request_fields[{i}]", f"unknown request field {kind!r} (known: {', '.join(IDENTITY_KINDS)})"
        elif kind not in declared:
            yield f"request_fields[{i}]", (f"request field {kind!r} matches no collection's identities: a request "
                                           "could never find anything by it")


def _each_rule(base: str, coll: Collection) -> Iterator[tuple[str, Rule, bool]]:
    """Each rule of ``coll`` with its path, and whether an earlier rule has its name."""
    seen: set[str] = set()
    for r_i, rule in enumerate(coll.rules):
        yield f"{base}.rules[{r_i}]", rule, rule.name in seen
        seen.add(rule.name)


def _check_sql(policy: Policy, base: str, coll: Collection):
    if not coll.table:
        yield f"{base}.table", "a SQL collection needs 'table'"
    if not coll.primary_key:
        yield f"{base}.primary_key", "a SQL collection needs 'primary_key'"
    if not coll.columns:
        yield f"{base}.columns", "a SQL collection lists its columns"
        return
    cols = set(coll.columns)

    def col(where: str, name: str | None):
        if name is not None and name not in cols:
            yield where, f"unknown column {name!r} (columns of {coll.table}: {', '.join(coll.columns)})"

    if isinstance(coll.primary_key, list):
        names = coll.primary_key
        if len(names) > MAX_KEY_COLUMNS:
            yield f"{base}.primary_key", f"a composite key has at most {MAX_KEY_COLUMNS} columns"
        for i, name in enumerate(names):
            yield from col(f"{base}.primary_key[{i}]", name)
            if names.index(name) != i:
                yield f"{base}.primary_key[{i}]", f"column {name!r} is named twice in the key"
    else:
        yield from col(f"{base}.primary_key", coll.primary_key)
    for ident, name in coll.identity_columns():
        yield from col(f"{base}.identities.{ident}", name)
    for kind in coll.suppress_on_delete:
        if kind not in coll.identities:
            yield f"{base}.suppress_on_delete", f"{kind!r} is not among the collection's identities"
    for i, ref in enumerate(coll.references):
        if ref.composite:
            for j, name in enumerate(ref.columns):
                yield from col(f"{base}.references[{i}].columns[{j}]", name)
        else:
            yield from col(f"{base}.references[{i}].column", ref.column)
    if coll.lock:
        yield from col(f"{base}.lock.at", coll.lock.at)
        yield from col(f"{base}.lock.reason", coll.lock.reason)
    yield from col(f"{base}.anonymized_marker", coll.anonymized_marker)
    for i, cond in enumerate(coll.legal_hold):
        yield from col(f"{base}.legal_hold[{i}].column", cond.column)
    for name in coll.erasure_mask:
        yield from col(f"{base}.erasure_mask.{name}", name)
    if coll.erasure == "anonymize":
        if not (coll.erasure_mask and coll.anonymized_marker):
            yield f"{base}.erasure", "erasure by 'anonymize' needs 'erasure_mask' and 'anonymized_marker'"
        unmasked = [c for _, c in coll.identity_columns() if c not in coll.erasure_mask]
        if unmasked:
            yield f"{base}.erasure_mask", f"identity column(s) {', '.join(unmasked)} must be masked on erasure"
    for cat in coll.categories:
        if policy.categories and cat not in policy.categories:
            yield f"{base}.categories", f"unknown data category {cat!r}"
    for where, rule, repeated in _each_rule(base, coll):
        if repeated:
            yield f"{where}.name", f"duplicate rule name {rule.name!r}"
        if rule.start.basis != "column":
            yield f"{where}.start.basis", f"basis {rule.start.basis!r} is for S3 collections; SQL rules use a column"
        yield from col(f"{where}.start.column", rule.start.column)
        for op in ("latest", "earliest"):
            for i, name in enumerate(getattr(rule.start, op) or []):
                yield from col(f"{where}.start.{op}[{i}]", name)
        yield from col(f"{where}.start.fallback", rule.start.fallback)
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
            yield from col(f"{where}.when[{i}].column", cond.column)
        for s_i, stage in enumerate(rule.stages):
            if stage.action == "lock" and coll.lock is None:
                yield f"{where}.stages[{s_i}]", "a 'lock' stage needs the collection's 'lock' marker columns"
            if stage.action == "anonymize":
                if not coll.anonymized_marker:
                    yield f"{where}.stages[{s_i}]", "an 'anonymize' stage needs the collection's 'anonymized_marker'"
                for name in stage.mask:
                    yield from col(f"{where}.stages[{s_i}].mask.{name}", name)
                    if name in coll.key_columns():
                        yield f"{where}.stages[{s_i}].mask.{name}", "the primary key cannot be masked"


def referrers(policy: Policy, ref: str) -> list[tuple[str, Reference]]:
    """Every (collection ref, reference) of the data map whose reference points at ``ref`` (SQL rows at rows or
    at objects): what decides whether an item of ``ref`` is still referenced."""
    return [(f"{s}.{c}", r) for s, system in policy.systems.items() for c, coll in system.collections.items()
            for r in coll.references if r.to == ref]


def _check_orphaned(policy: Policy, s_name: str, c_name: str):
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
            yield where, (f"no collection's 'references' point at {ref}: every item would count as orphaned "
                          "(add the references that keep an item, or use another start)")
        if system.kind == "s3":
            if marker != "last_modified":
                yield where, ("S3 objects count from their upload: write 'orphaned: last_modified' (there is no "
                              "column to stamp)")
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
                yield where, (f"{owner} (another database) refers to {ref}: 'orphaned' checks references in the "
                              "statement that deletes, so they must be tables of the same database")
            elif not reference.source_columns():
                yield where, f"{owner} refers to {ref} without a 'column'"


def policy_warnings(policy: Policy) -> list[tuple[str, str]]:
    """(path, warning) for what is valid but deprecated or has no effect: ``cli validate`` prints them."""
    out = []
    for s_name, system in policy.systems.items():
        for c_name, coll in system.collections.items():
            if coll.suppress_on_delete:
                out.append((f"systems.{s_name}.collections.{c_name}.suppress_on_delete",
                            "deprecated: it suppresses every deleted row (inactive ones too); say 'suppress: "
                            f"[{', '.join(coll.suppress_on_delete)}]' on the rules or stages whose deletes must "
                            "suppress (erasures always do)"))
            lookups = {f.lookup for _, f in coll.identity_fields()}
            if system.kind == "sql" and lookups == {"scan", "indexed"}:
                out.append((f"systems.{s_name}.collections.{c_name}.identities",
                            "only some fields declare 'lookup: indexed': the collection is still read in full for "
                            "every request (ADR 0022); declare it on every identity field"))
    return out


def _literal_head(template: str) -> str:
    return re.split(r"\{|\.\.\.", template, maxsplit=1)[0]


def _s3_prefix(coll: Collection) -> str:
    """Where an S3 collection's keys start: its prefix, else the literal head of its key template."""
    if coll.prefix is not None:
        return coll.prefix
    return _literal_head(coll.key_template) if coll.key_template else ""


def _check_s3(base: str, coll: Collection):
    from include.retention.masking import STRATEGIES

    if not coll.bucket:
        yield f"{base}.bucket", "an S3 collection needs 'bucket'"
    for i, cond in enumerate(coll.legal_hold):
        if cond.test not in ("equals", "in", "is_null"):
            yield f"{base}.legal_hold[{i}].{cond.test}", ("an S3 legal hold tests a tag's text with 'equals', 'in' "
                                                         "or 'is_null'; range and age tests are for SQL columns")
    if coll.key_template and coll.prefix is not None and not coll.key_template.startswith(coll.prefix):
        yield f"{base}.key_template", f"the key template must start with the collection's prefix {coll.prefix!r}"
    for where, rule, repeated in _each_rule(base, coll):
        if repeated:
            yield f"{where}.name", f"duplicate rule name {rule.name!r}"
        if rule.start.basis == "column" and rule.start.orphaned is None:
            yield f"{where}.start", "S3 rules count from 'last_modified', 'key_date', 'metadata' or 'tag'"
        if rule.start.basis == "key_date" and not (coll.key_template and "{yyyy}" in coll.key_template):
            yield f"{where}.start", "basis 'key_date' needs a key_template with {yyyy}, {mm}, {dd}"
        if rule.start.basis == "record":
            if coll.format is None:
                yield f"{where}.start", (f"the start is the record field {rule.start.name!r}, but the collection "
                                         "declares no 'format' (csv, jsonl or parquet): its objects hold no records")
            for s_i, stage in enumerate(rule.stages):
                if stage.action != "delete":
                    yield f"{where}.stages[{s_i}]", (f"records counted from a record field are deleted one by one; "
                                                     f"a {stage.action!r} stage cannot act on single records")
        if rule.when:
            yield f"{where}.when", "S3 rules do not support 'when' conditions"
        if rule.suppress or any(stage.suppress for stage in rule.stages):
            yield f"{where}.suppress", "suppression keeps digests of SQL identity columns; S3 rules have none"
        for s_i, stage in enumerate(rule.stages):
            if stage.action != "anonymize":
                continue
            if coll.format is not None:
                yield f"{where}.stages[{s_i}]", (f"an 'anonymize' stage rewrites text line by line, which would break "
                                                 f"{coll.format} records; mask record fields on erasure "
                                                 "('erase: mask') or delete expired records")
                continue
            if rule.start.basis == "last_modified":
                yield f"{where}.start", ("an 'anonymize' stage rewrites objects, which resets LastModified; "
                                         "count from 'key_date', 'metadata' or 'tag'")
            # For S3 the mask's name only labels what is masked; the strategy rewrites each line.
            for name, mask in stage.mask.items():
                strategy = STRATEGIES[mask.strategy]
                if not hasattr(strategy, "text"):
                    yield f"{where}.stages[{s_i}].mask.{name}", (
                        f"strategy {mask.strategy!r} cannot rewrite object content (S3 objects take 'truncate_ip')")
                    continue
                try:
                    strategy.text("", mask.value)
                except ValueError as exc:
                    yield f"{where}.stages[{s_i}].mask.{name}.value", str(exc)


def _template_fields(template: str) -> list[str]:
    return re.findall(r"{([A-Za-z_][A-Za-z0-9_]*)}", template)


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
                return stack[stack.index(nxt):] + [nxt]
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


def cutoff(now: dt.datetime, stage: Stage, start: Start) -> dt.datetime:
    """Rows whose start event is before the returned instant have passed the stage's storage period.

    With ``round_up: year`` the period counts from the end of the start event's year, so
    "ceil_year(start) + P <= now" becomes "start < floor_year(now - P)": still a plain
    range test that an index on the column can serve.
    """
    edge = now - stage.period
    round_up = stage.round_up or start.round_up
    if round_up == "year":
        edge = edge.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    elif round_up == "month":
        edge = edge.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return edge

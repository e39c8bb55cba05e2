"""Retention rules: the conditions a row must meet, the event its period counts from, the stages it goes
through (lock, anonymize, delete)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from dateutil.relativedelta import relativedelta
from pydantic import Field, field_validator, model_validator

from include.retention.policy.base import NAME, StrictModel, short
from include.retention.policy.periods import approx_days, parse_duration

Action = Literal["lock", "anonymize", "delete"]
# Later stages act first: rows past the delete period go before rows are locked.
ACTION_ORDER = {"lock": 0, "anonymize": 1, "delete": 2}


RANGE_OPS = ("lt", "le", "gt", "ge")
AGE_OPS = ("older_than", "younger_than")
CONDITION_TESTS = ("equals", "in", "is_null", *RANGE_OPS, *AGE_OPS)


class Condition(StrictModel):
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
            raise ValueError(
                f"a condition needs exactly one of {', '.join(repr(t) for t in CONDITION_TESTS)} "
                f"(got {given or 'none'})"
            )
        if isinstance(self.equals, (list, dict)):
            raise ValueError("'equals' takes one value (text, number, boolean or date); use 'in' for a list")
        for op in RANGE_OPS:
            value = getattr(self, op)
            if value is not None and (
                isinstance(value, (list, dict, bool)) or not isinstance(value, (int, float, str, dt.date))
            ):
                raise ValueError(f"{op!r} takes one number, date or date-time (got {short(repr(value))})")
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


class Mask(StrictModel):
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


class Stage(StrictModel):
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


class Start(StrictModel):
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
            others = [
                k
                for k in ("column", "latest", "earliest", "fallback", "basis", "name")
                if k in value and not (k == "column" and value[k] == value["orphaned"])
            ]
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


class StartEvent(StrictModel):
    """What a rule's period counts from, by name (``START_EVENTS``), with an optional description of the data
    map's own: ``start_event: last_contact`` or ``{event: last_contact, description: "..."}``."""

    event: str
    description: str | None = None

    @field_validator("event")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in START_EVENTS:
            raise ValueError(f"unknown start event {short(value)!r}; known: {', '.join(START_EVENTS)}")
        return value

    @property
    def din_event(self) -> str:
        """The DIN 66398 start event: ``collection``, ``end_of_process`` or ``end_of_relationship``."""
        return START_EVENTS[self.event][0]

    @property
    def words(self) -> str:
        return self.description or START_EVENTS[self.event][1]


class Rule(StrictModel):
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
        if not NAME.match(value):
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
        ordered = sorted(self.stages, key=lambda s: approx_days(s.period))
        for earlier, later in zip(ordered, ordered[1:], strict=False):
            if approx_days(earlier.period) == approx_days(later.period):
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

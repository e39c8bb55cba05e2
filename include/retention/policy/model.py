"""The data map: systems, their collections (tables or S3 prefixes), identity fields, references between
collections, recipients, and the ``Policy`` that holds them all, with its navigation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from dateutil.relativedelta import relativedelta
from pydantic import Field, ValidationError, field_validator, model_validator

from include.retention.policy.base import NAME, StrictModel, error_location, error_message, literal_head
from include.retention.policy.periods import parse_duration
from include.retention.policy.rules import Condition, Mask, Rule


class Reference(StrictModel):
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
                raise ValueError(
                    f"'columns' has {len(self.columns)} column(s) and 'to_columns' "
                    f"{len(self.to_columns)}: they pair up one to one"
                )
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


class IdentityField(StrictModel):
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


class CategoryInfo(StrictModel):
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


class Recipient(StrictModel):
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


class Consent(StrictModel):
    """A consent a person can withdraw: ``column`` is set to ``withdrawn`` (a value, or ``now``: the time
    of the withdrawal); the collection's retention rules then act on the row as usual."""

    name: str
    column: str
    withdrawn: Any = "now"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(f"consent name {value!r} must be letters, digits and underscores")
        return value


S3_IDENTITY_SOURCES = ("key", "metadata", "tag", "record")
# What S3 objects of a collection may hold record by record (docs/adr/0021-records-inside-objects.md); gzip is read
# where the key ends ``.gz`` or the object's Content-Encoding says ``gzip``.
RECORD_FORMATS = ("csv", "jsonl", "parquet")


class LockMarker(StrictModel):
    """Columns that mark a row as restricted (GDPR Art. 18): time and reason."""

    at: str = "restricted_at"
    reason: str | None = "restriction_reason"


class Collection(StrictModel):
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
                        raise ValueError(f"{where}: {error_location(err['loc'])}: {error_message(err)}") from None
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


class Backups(StrictModel):
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


class System(StrictModel):
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
            raise ValueError(
                "backups.restore: 'replay' re-applies erasures to collections with identities and "
                "this system has none; write 'restore: sweep'"
            )
        if self.backups is not None and self.backups.restore == "sweep" and identities:
            raise ValueError(
                "backups.restore: this system holds identities: a restored copy must have the "
                "completed erasures replayed first ('restore: replay')"
            )
        return self


class Defaults(StrictModel):
    max_fraction: float = Field(default=0.5, gt=0, le=1)
    batch_size: int = Field(default=1000, ge=1, le=100_000)


class Policy(StrictModel):
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
            if reference.to == ref
            and reference.source_columns()
            and system.kind == "sql"
            and self.system_of(ref).kind == "sql"
        ]

    def owned_objects(self, ref: str) -> list[Reference]:
        """References from SQL collection ``ref`` to S3 collections: objects the row owns."""
        coll = self.collection(ref)
        return [r for r in coll.references if self.system_of(r.to).kind == "s3"]

    def declared_kinds(self) -> set[str]:
        """Identity kinds some collection of the data map holds."""
        return {
            kind for system in self.systems.values() for coll in system.collections.values() for kind in coll.identities
        }

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


def referrers(policy: Policy, ref: str) -> list[tuple[str, Reference]]:
    """Every (collection ref, reference) of the data map whose reference points at ``ref`` (SQL rows at rows or
    at objects): what decides whether an item of ``ref`` is still referenced."""
    return [
        (f"{s}.{c}", r)
        for s, system in policy.systems.items()
        for c, coll in system.collections.items()
        for r in coll.references
        if r.to == ref
    ]


def each_rule(base: str, coll: Collection) -> Iterator[tuple[str, Rule, bool]]:
    """Each rule of ``coll`` with its path, and whether an earlier rule has its name."""
    seen: set[str] = set()
    for r_i, rule in enumerate(coll.rules):
        yield f"{base}.rules[{r_i}]", rule, rule.name in seen
        seen.add(rule.name)


def s3_prefix(coll: Collection) -> str:
    """Where an S3 collection's keys start: its prefix, else the literal head of its key template."""
    if coll.prefix is not None:
        return coll.prefix
    return literal_head(coll.key_template) if coll.key_template else ""

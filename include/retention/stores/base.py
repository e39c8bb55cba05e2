"""The interface every store kind implements (SQL, S3), and the values it returns."""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from include.retention.policy import Policy, Rule, Stage

# record(action, count, pk_digest, details): write one ledger entry for a committed batch.
Recorder = Callable[[str, int, str, dict[str, Any]], None]

PAST_TENSE = {"lock": "locked", "anonymize": "anonymized", "delete": "deleted"}


@dataclass
class RulePlan:
    """What a rule would do now: counts only, nothing changed."""

    total: int  # items in the collection
    in_scope: int  # items the rule's ``when`` selects
    eligible: dict[str, int]  # per action: items past that stage's storage period, not held
    held: int  # past the first storage period but under legal hold
    already: int = 0  # past the period but already locked / anonymized

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


class Store(abc.ABC):
    """One system of the data map. Implementations: ``SqlStore``, ``S3Store``."""

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
    def plan(self, collection_name: str, rule: Rule, now: dt.datetime) -> RulePlan:
        """Count what ``rule`` would touch now, per stage."""

    @abc.abstractmethod
    def apply_stage(
        self, collection_name: str, rule: Rule, stage: Stage, now: dt.datetime, batch_size: int,
        reason: str, record: Recorder,
    ) -> StageResult:
        """Act on items past ``stage``'s storage period in bounded batches, recording each batch."""

    def close(self) -> None:  # noqa: B027 - optional hook: stores with connections override it
        pass

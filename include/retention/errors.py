"""The project's exceptions. Messages name what is wrong and never carry personal data."""

from __future__ import annotations


class RetentionError(Exception):
    """Base class of every error this package raises on purpose."""


class PolicyError(RetentionError):
    """The policy / data-map file is wrong: the message names file, path inside it and problem."""


class SchemaMismatch(RetentionError):
    """A store does not have the table, bucket or column the data map declares."""


class SafetyBrakeTripped(RetentionError):
    """A rule would touch ``max_fraction`` of its collection or more (``max_fraction: 1`` disables the brake)."""

    def __init__(self, rule_id: str, affected: int, total: int, max_fraction: float, cascaded_to: str | None = None):
        self.rule_id, self.affected, self.total, self.max_fraction = rule_id, affected, total, max_fraction
        self.cascaded_to = cascaded_to
        share = affected / total if total else 1.0
        what = f"rows of {cascaded_to} (deleted with their parents)" if cascaded_to else "rows"
        super().__init__(
            f"safety brake: rule {rule_id} would touch {affected} of {total} {what} "
            f"({share:.1%}), at or above its max_fraction {max_fraction:.1%}; nothing was changed"
        )


class StoreUnavailable(RetentionError):
    """A store could not be reached or answered with an error."""


class LedgerBroken(RetentionError):
    """The audit ledger's hash chain does not verify."""

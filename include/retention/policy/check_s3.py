"""Cross-checks of an S3 collection: a bucket, a key template inside the prefix, starts and stages S3 objects
(or records inside them) can have, legal holds on tags."""

from __future__ import annotations

from collections.abc import Iterator

from include.retention.policy.model import Collection, each_rule
from include.retention.policy.rules import Rule, Stage

Problems = Iterator[tuple[str, str]]


def check_s3(base: str, coll: Collection) -> Problems:
    if not coll.bucket:
        yield f"{base}.bucket", "an S3 collection needs 'bucket'"
    for i, cond in enumerate(coll.legal_hold):
        if cond.test not in ("equals", "in", "is_null"):
            yield (
                f"{base}.legal_hold[{i}].{cond.test}",
                (
                    "an S3 legal hold tests a tag's text with 'equals', 'in' "
                    "or 'is_null'; range and age tests are for SQL columns"
                ),
            )
    if coll.key_template and coll.prefix is not None and not coll.key_template.startswith(coll.prefix):
        yield f"{base}.key_template", f"the key template must start with the collection's prefix {coll.prefix!r}"
    for where, rule, repeated in each_rule(base, coll):
        yield from _check_rule(where, coll, rule, repeated)


def _check_rule(where: str, coll: Collection, rule: Rule, repeated: bool) -> Problems:
    if repeated:
        yield f"{where}.name", f"duplicate rule name {rule.name!r}"
    if rule.start.basis == "column" and rule.start.orphaned is None:
        yield f"{where}.start", "S3 rules count from 'last_modified', 'key_date', 'metadata' or 'tag'"
    if rule.start.basis == "key_date" and not (coll.key_template and "{yyyy}" in coll.key_template):
        yield f"{where}.start", "basis 'key_date' needs a key_template with {yyyy}, {mm}, {dd}"
    if rule.start.basis == "record":
        if coll.format is None:
            yield (
                f"{where}.start",
                (
                    f"the start is the record field {rule.start.name!r}, but the collection "
                    "declares no 'format' (csv, jsonl or parquet): its objects hold no records"
                ),
            )
        for s_i, stage in enumerate(rule.stages):
            if stage.action != "delete":
                yield (
                    f"{where}.stages[{s_i}]",
                    (
                        f"records counted from a record field are deleted one by one; "
                        f"a {stage.action!r} stage cannot act on single records"
                    ),
                )
    if rule.when:
        yield f"{where}.when", "S3 rules do not support 'when' conditions"
    if rule.suppress or any(stage.suppress for stage in rule.stages):
        yield f"{where}.suppress", "suppression keeps digests of SQL identity columns; S3 rules have none"
    for s_i, stage in enumerate(rule.stages):
        if stage.action == "anonymize":
            yield from _check_anonymize(where, s_i, coll, rule, stage)


def _check_anonymize(where: str, s_i: int, coll: Collection, rule: Rule, stage: Stage) -> Problems:
    """An 'anonymize' stage rewrites whole objects line by line: not records, not counted from LastModified,
    with strategies that can rewrite text."""
    from include.retention.masking import STRATEGIES

    if coll.format is not None:
        yield (
            f"{where}.stages[{s_i}]",
            (
                f"an 'anonymize' stage rewrites text line by line, which would break "
                f"{coll.format} records; mask record fields on erasure "
                "('erase: mask') or delete expired records"
            ),
        )
        return
    if rule.start.basis == "last_modified":
        yield (
            f"{where}.start",
            (
                "an 'anonymize' stage rewrites objects, which resets LastModified; "
                "count from 'key_date', 'metadata' or 'tag'"
            ),
        )
    # For S3 the mask's name only labels what is masked; the strategy rewrites each line.
    for name, mask in stage.mask.items():
        strategy = STRATEGIES[mask.strategy]
        if not hasattr(strategy, "text"):
            yield (
                f"{where}.stages[{s_i}].mask.{name}",
                (f"strategy {mask.strategy!r} cannot rewrite object content (S3 objects take 'truncate_ip')"),
            )
            continue
        try:
            strategy.text("", mask.value)
        except ValueError as exc:
            yield f"{where}.stages[{s_i}].mask.{name}.value", str(exc)

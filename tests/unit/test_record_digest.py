"""The column-wise digest of Parquet records (``ColumnDigest``): the same records in the same order give the same
digest however they are cut into slices, filtered or taken; any changed, missing or moved value changes it."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from include.retention.stores.s3_record_digest import ColumnDigest

TABLE = pa.table({
    "n": pa.array([1, None, 3, 4, 5], pa.int64()),
    "s": pa.array(["x", None, "", "zz", "é"]),
    "ts": pa.array([dt.datetime(2020, 1, 1)] * 4 + [None]),
    "b": [True, False, None, True, True],  # read as Python values (repr)
    "big": pa.array(["a", "b", "c", "d", "e"], pa.large_string()),
    "f": pa.array([1.5, float("nan"), -0.0, 2.0, 3.0]),
})


def digest(*tables: pa.Table) -> str:
    out = ColumnDigest()
    for table in tables:
        out.update_table(table)
    return out.hexdigest()


@pytest.mark.parametrize("parts", [
    lambda t: [t.slice(0, 2), t.slice(2)],
    lambda t: [t.slice(0, 1), t.slice(1, 1), t.slice(2, 0), t.slice(2)],
    lambda t: [pa.concat_tables([t.slice(0, 3), t.slice(3)])],
    lambda t: [t.filter(pa.array([True] * 5))],
    lambda t: [t.take(pa.array([0, 1, 2, 3, 4]))],
])
def test_the_same_records_in_any_cut_digest_the_same(parts):
    assert digest(*parts(TABLE)) == digest(TABLE)


@pytest.mark.parametrize("column, values", [
    ("n", pa.array([1, None, 3, 4, 6], pa.int64())),  # a value
    ("n", pa.array([1, 0, 3, 4, 5], pa.int64())),  # null -> the value a null slot holds
    ("s", pa.array(["x", "", "", "zz", "é"])),  # null -> empty
    ("s", pa.array(["x", None, "z", "z", "é"])),  # a boundary between values moved
    ("b", pa.array([True, False, None, True, False])),
    ("big", pa.array(["a", "b", "c", "d", "e"])),  # the type
    ("f", pa.array([1.5, float("nan"), 0.0, 2.0, 3.0])),
])
def test_any_changed_value_changes_it(column, values):
    changed = TABLE.set_column(TABLE.schema.get_field_index(column), column, values)
    assert digest(changed) != digest(TABLE)


def test_missing_or_reordered_records_change_it():
    assert digest(TABLE.slice(0, 4)) != digest(TABLE)
    assert digest(TABLE.take(pa.array([1, 0, 2, 3, 4]))) != digest(TABLE)
    assert digest(TABLE.slice(0, 0)) == digest()


def test_matching_rows_judges_each_value_once_and_forgets_safely(monkeypatch):
    from include.retention.stores import s3_records

    judged: list[str] = []

    def matches(name: str, value: str) -> bool:
        judged.append(value)
        return value in {"b", "e"}

    seen: dict = {}
    table = pa.table({"email": ["a", "b", None, "c", "b", "d", "e"]})
    assert s3_records.matching_rows(table, ["email"], matches, seen) == [1, 4, 6]
    assert sorted(judged) == ["a", "b", "c", "d", "e"]
    assert s3_records.matching_rows(table.slice(1), ["email"], matches, seen) == [0, 3, 5]
    assert len(judged) == 5  # nothing judged twice
    monkeypatch.setattr(s3_records, "NORMALISED_CACHE", 2)  # the values judged so far are forgotten ...
    more = pa.table({"email": ["f", "b", "g", "e"]})
    assert s3_records.matching_rows(more, ["email"], matches, seen) == [1, 3]  # ... those that matched are not
    assert s3_records.matching_rows(pa.table({"email": pa.array([], pa.string())}), ["email"], matches, seen) == []

"""Composite keys (issue 15 item 5): the walk's comparison as SQL, with row values and with their expansion for a
dialect without them, and the text a batch's key digest hashes."""

from __future__ import annotations

import itertools

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from include.retention.stores.sql_keys import after, has_row_values, key_in, key_text, upto

t = sa.Table("m", sa.MetaData(), sa.Column("at", sa.Integer), sa.Column("sub", sa.Integer),
             sa.Column("lst", sa.Integer))
ORDER = [t.c.at, t.c.sub, t.c.lst]


def sql(clauses, dialect=None) -> str:
    return str(sa.and_(*clauses).compile(dialect=dialect or sqlite.dialect(),
                                         compile_kwargs={"literal_binds": True}))


def test_row_value_comparison_leads_with_a_range_on_the_first_column():
    assert sql(after(ORDER, (1, 2, 3), True), postgresql.dialect()) == "m.at >= 1 AND (m.at, m.sub, m.lst) > (1, 2, 3)"
    assert sql(upto(ORDER, (4, 5, 6), True), mysql.dialect()) == "m.at <= 4 AND (m.at, m.sub, m.lst) <= (4, 5, 6)"


def test_expansion_for_a_dialect_without_row_values():
    assert sql(after(ORDER, (1, 2, 3), False)) == ("m.at >= 1 AND (m.at > 1 OR m.sub >= 2 AND (m.sub > 2 OR "
                                                   "m.lst > 3))")
    assert sql(upto(ORDER, (4, 5, 6), False)) == ("m.at <= 4 AND (m.at < 4 OR m.sub <= 5 AND (m.sub < 5 OR "
                                                  "m.lst <= 6))")
    # two columns: the very expansion the (start, pk) walk always used
    assert sql(after(ORDER[:2], (1, 2), False)) == "m.at >= 1 AND (m.at > 1 OR m.sub > 2)"
    assert sql(after(ORDER[:1], (1,), False)) == "m.at > 1" and after(ORDER, None, False) == []


def test_expansion_and_row_values_select_the_same_rows_as_python_tuples():
    """Every (a, b, c) in {0, 1, 2}^3 against every bound: both forms agree with Python's tuple order."""
    engine = sa.create_engine("sqlite://")
    t.metadata.create_all(engine)
    points = list(itertools.product(range(3), repeat=3))
    with engine.begin() as conn:
        conn.execute(t.insert(), [dict(zip(("at", "sub", "lst"), p, strict=True)) for p in points])
        for bound in points:
            for rows in (True, False):
                got = set(conn.execute(sa.select(*ORDER).where(*after(ORDER, bound, rows))).all())
                assert got == {p for p in points if p > bound}, (bound, rows)
                got = set(conn.execute(sa.select(*ORDER).where(*upto(ORDER, bound, rows))).all())
                assert got == {p for p in points if p <= bound}, (bound, rows)
            got = set(conn.execute(sa.select(*ORDER).where(key_in(ORDER, [bound, (9, 9, 9)]))).all())
            assert got == {bound}
    assert has_row_values(engine.dialect)


def test_digest_text_of_one_column_keys_is_unchanged_and_tuples_are_unambiguous():
    assert key_text([1, 2, "a"]) == "1\n2\na"  # as before composite keys: existing ledgers still verify
    assert key_text([(1, "news")]) == '["1","news"]'
    texts = {key_text(k) for k in ([(1, "a,b")], [(1, "a"), ("b",)], [(1, 'a","b')], [(1, "a\nb")],
                                   [(1, "a"), (1, "b")])}
    assert len(texts) == 5

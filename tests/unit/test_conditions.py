"""Condition values against reflected column types, on real SQLite, PostgreSQL and MariaDB tables.

The checker sees the types each server really reports (PostgreSQL BOOLEAN, MariaDB TINYINT(1) for
BOOL, SQLite BOOLEAN ...), and the refused values are the ones that made a legal hold invert
(``equals: "true"`` on MariaDB / SQLite) or a rule crash (``equals: 1`` on PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
import decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.types import NullType

from include.retention.conditions import bind_condition, bind_value, check_condition, check_value, column_kind
from include.retention.policy import Condition

# Per dialect: DDL of one table with a column of each kind, and each column's expected kind.
DDL = {
    "sqlite": """CREATE TABLE typed (id INTEGER PRIMARY KEY, flag BOOLEAN, n INTEGER, amount NUMERIC(10, 2),
        ratio REAL, day DATE, at_ts TIMESTAMP, at_dt DATETIME, code VARCHAR(40), body TEXT, untyped)""",
    "postgresql": """CREATE TABLE typed (id INTEGER PRIMARY KEY, flag BOOLEAN, n INTEGER, amount NUMERIC(10, 2),
        ratio DOUBLE PRECISION, day DATE, at_ts TIMESTAMP, at_dt TIMESTAMP WITH TIME ZONE, code VARCHAR(40),
        body TEXT, small SMALLINT, big BIGINT, ref UUID, bin BYTEA)""",
    "mariadb": """CREATE TABLE typed (id INT PRIMARY KEY, flag TINYINT(1), flag2 BOOL, n INT, amount DECIMAL(10, 2),
        ratio DOUBLE, day DATE, at_ts TIMESTAMP NULL, at_dt DATETIME, code VARCHAR(40), body TEXT,
        small TINYINT, big BIGINT, bin BLOB)""",
}
KINDS = {
    "flag": "boolean", "flag2": "boolean", "n": "integer", "small": "integer", "big": "integer",
    "amount": "numeric", "ratio": "numeric", "day": "date", "at_ts": "datetime", "at_dt": "datetime",
    "code": "string", "body": "string", "ref": "uuid", "untyped": None, "bin": None, "id": "integer",
}

# value -> which kinds accept it (the rest must refuse it)
VALUES = [
    (True, {"boolean"}),
    (False, {"boolean"}),
    ("true", {"string"}),
    ("false", {"string"}),
    ("True", {"string"}),
    ("yes", {"string"}),
    ("1", {"string"}),
    (1, {"integer", "numeric"}),
    (0, {"integer", "numeric"}),
    (-7, {"integer", "numeric"}),
    (2.5, {"numeric"}),
    (2.0, {"numeric"}),
    ("2.5", {"string"}),
    (float("nan"), set()),
    (float("inf"), set()),
    (dt.date(2024, 1, 31), {"date", "datetime"}),
    (dt.datetime(2024, 1, 31, 12, 30), {"datetime"}),
    ("2024-01-31", {"date", "datetime", "string"}),
    ("2024-01-31T12:30:00", {"datetime", "string"}),
    ("2024-01-31 12:30:00+02:00", {"datetime", "string"}),
    ("31/01/2024", {"string"}),
    ("2024-13-45", {"string"}),
    ("abc", {"string"}),
    ("", {"string"}),
    ("a\x00b", set()),
    ("x" * 41, set()),  # longer than VARCHAR(40)
    ("0b0e6f4e-5d58-4a4b-9d0e-2b9f1d6f3b11", {"string", "uuid"}),
]


def _accepts(kind: str | None, column: str, value, accepted: set[str]) -> bool:
    if kind is None:
        return False
    if kind == "string" and column == "body" and value == "x" * 41:
        return True  # TEXT has no length limit
    return kind in accepted


@pytest.fixture
def reflected(db_url):
    engine = sa.create_engine(db_url)
    dialect = engine.dialect.name
    with engine.begin() as conn:
        conn.execute(sa.text(DDL["mariadb" if dialect == "mysql" else dialect]))
    table = sa.Table("typed", sa.MetaData(), autoload_with=engine)
    yield engine, table
    engine.dispose()


def test_reflected_types_are_classified(reflected):
    engine, table = reflected
    for column in table.columns:
        assert column_kind(column.type) == KINDS[column.name], (engine.dialect.name, column.name, column.type)
    if engine.dialect.name == "mysql":
        # MariaDB has no boolean type: BOOL and TINYINT(1) come back as TINYINT(1), a plain TINYINT as an integer.
        assert isinstance(table.c.flag.type, mysql.TINYINT) and table.c.flag.type.display_width == 1
        assert isinstance(table.c.flag2.type, mysql.TINYINT)
    else:
        assert isinstance(table.c.flag.type, sa.Boolean)


def test_every_value_against_every_reflected_column(reflected):
    engine, table = reflected
    where = "systems.crm.collections.typed.legal_hold[0]"
    refused = accepted = 0
    for column in table.columns:
        if column.name == "id":
            continue
        kind = KINDS[column.name]
        for value, accepts in VALUES:
            cond = Condition.model_validate({"column": column.name, "equals": value})
            problem = check_condition(cond, column.type, where)
            if _accepts(kind, column.name, value, accepts):
                assert problem is None, (engine.dialect.name, column.name, value, problem)
                accepted += 1
            else:
                assert problem is not None, (engine.dialect.name, column.name, value)
                assert problem.startswith(f"{where}.equals: "), problem
                refused += 1
    assert refused > 100 and accepted > 20


@pytest.mark.parametrize("value", ["true", "false", "1", 1, 0, "yes", "on", dt.date(2024, 1, 1)])
def test_boolean_columns_refuse_everything_but_yaml_booleans(reflected, value):
    engine, table = reflected
    flags = [table.c.flag] + ([table.c.flag2] if "flag2" in table.c else [])
    for col in flags:
        problem = check_condition(Condition(column=col.name, equals=value), col.type, "legal_hold[0]")
        assert problem is not None
        assert "is a boolean: write true or false without quotes" in problem, problem
        expected = "TINYINT(1)" if engine.dialect.name == "mysql" else "BOOLEAN"
        assert f"column type {expected}" in problem, problem


def test_quoted_true_is_what_inverted_the_hold_and_the_bound_value_is_exact(reflected):
    """Rows 1, 2 are held, 3, 4 are not. The bound YAML boolean selects exactly the held ones."""
    engine, table = reflected
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "flag": held} for i, held in ((1, True), (2, True), (3, False),
                                                                             (4, False))])
        held = conn.execute(sa.select(table.c.id).where(table.c.flag == bind_value(True, table.c.flag.type))
                            .order_by(table.c.id)).scalars().all()
        assert held == [1, 2]
        free = conn.execute(sa.select(table.c.id).where(table.c.flag == bind_value(False, table.c.flag.type))
                            .order_by(table.c.id)).scalars().all()
        assert free == [3, 4]
    assert check_condition(Condition(column="flag", equals="true"), table.c.flag.type, "w") is not None


def test_typed_values_bind_and_match_on_the_server(reflected):
    engine, table = reflected
    row = {"id": 1, "n": 5, "amount": decimal.Decimal("12.50"), "ratio": 0.25, "day": dt.date(2024, 1, 31),
           "at_dt": dt.datetime(2024, 1, 31, 12, 30), "code": "ab", "body": "hello"}
    if engine.dialect.name == "postgresql":
        row["at_dt"] = dt.datetime(2024, 1, 31, 12, 30, tzinfo=dt.UTC)
    with engine.begin() as conn:
        conn.execute(table.insert(), [row])
        probes = [("n", 5), ("amount", 12.5), ("ratio", 0.25), ("day", "2024-01-31"),
                  ("day", dt.date(2024, 1, 31)), ("at_dt", "2024-01-31T12:30:00"),
                  ("at_dt", "2024-01-31T14:30:00+02:00"), ("code", "ab"), ("body", "hello")]
        for name, value in probes:
            col = table.c[name]
            assert check_condition(Condition(column=name, equals=value), col.type, "w") is None, (name, value)
            found = conn.execute(sa.select(table.c.id).where(col == bind_value(value, col.type))).scalars().all()
            assert found == [1], (engine.dialect.name, name, value)
        found = conn.execute(sa.select(table.c.id).where(
            table.c.n.in_(bind_condition(Condition.model_validate({"column": "n", "in": [4, 5]}), table.c.n.type))
        )).scalars().all()
        assert found == [1]


def test_in_names_the_bad_element(reflected):
    _, table = reflected
    cond = Condition.model_validate({"column": "n", "in": [1, 2, "3"]})
    problem = check_condition(cond, table.c.n.type, "systems.crm.collections.typed.rules[0].when[0]")
    assert problem is not None
    assert problem.startswith("systems.crm.collections.typed.rules[0].when[0].in[2]: '3' is quoted text"), problem
    assert "holds whole numbers" in problem


def test_is_null_fits_every_column(reflected):
    _, table = reflected
    for column in table.columns:
        assert check_condition(Condition(column=column.name, is_null=True), column.type, "w") is None
        assert check_condition(Condition(column=column.name, is_null=False), column.type, "w") is None


# ---- pure checks (no server) --------------------------------------------------------------


@pytest.mark.parametrize(("value", "column_type", "fragment"), [
    ("true", postgresql.BOOLEAN(), "column type BOOLEAN is a boolean"),
    (1, postgresql.BOOLEAN(), "1 is a number; column type BOOLEAN"),
    ("true", mysql.TINYINT(display_width=1), "column type TINYINT(1) is a boolean"),
    ("true", sqlite.BOOLEAN(), "'true' is quoted text"),
    (True, sa.Integer(), "True is a boolean; column type INTEGER holds whole numbers"),
    ("5", sa.Integer(), "'5' is quoted text; column type INTEGER holds whole numbers"),
    (1.5, sa.Integer(), "not a whole number"),
    (True, sa.Numeric(10, 2), "column type NUMERIC(10, 2) holds numbers"),
    ("0.5", mysql.DOUBLE(), "column type DOUBLE holds numbers"),
    (float("nan"), sa.Float(), "not finite"),
    ("yesterday", sa.Date(), "holds dates: write an ISO date"),
    (dt.datetime(2024, 1, 1, 1), sa.Date(), "holds dates"),
    (20240101, sa.Date(), "holds dates"),
    ("2024-02-30", mysql.DATETIME(), "column type DATETIME holds timestamps"),
    (True, sa.DateTime(), "holds timestamps"),
    (5, sa.String(10), "column type VARCHAR(10) holds text: quote the value"),
    (True, sa.Text(), "True is a boolean; column type TEXT holds text"),
    (dt.date(2024, 1, 1), sa.String(10), "is a date; column type VARCHAR(10) holds text"),
    ("x" * 11, sa.String(10), "longer than column type VARCHAR(10) holds: it can never match"),
    ("a\x00", sa.Text(), "NUL character"),
    ("not-a-uuid", postgresql.UUID(), "holds UUIDs"),
    ("x", NullType(), "conditions cannot test a column of type (no declared type)"),
    ("x", sa.LargeBinary(), "conditions cannot test a column of type BLOB"),
    ("25:00", sa.Time(), "holds times of day"),
])
def test_check_value_messages(value, column_type, fragment):
    problem = check_value(value, column_type)
    assert problem is not None and fragment in problem, problem


def test_long_values_are_shortened_in_messages():
    problem = check_value("y" * 500, sa.Integer())
    assert problem is not None and len(problem) < 150


def test_bind_value_conversions():
    assert bind_value(True, mysql.TINYINT(display_width=1)) == 1
    assert bind_value(False, mysql.TINYINT(display_width=1)) == 0
    assert bind_value(True, sa.Boolean()) is True
    assert bind_value("2024-01-31", sa.Date()) == dt.date(2024, 1, 31)
    assert bind_value(dt.date(2024, 1, 31), sa.DateTime()) == dt.datetime(2024, 1, 31)
    assert bind_value("2024-01-31T14:30:00+02:00", sa.DateTime()) == dt.datetime(2024, 1, 31, 12, 30)
    assert bind_value("2024-01-31T12:30:00", sa.DateTime(timezone=True)) == dt.datetime(2024, 1, 31, 12, 30,
                                                                                      tzinfo=dt.UTC)
    assert bind_value(0.1, sa.Numeric(10, 2)) == decimal.Decimal("0.1")
    assert bind_value(3, sa.Float()) == 3.0
    assert bind_value("12:30", sa.Time()) == dt.time(12, 30)
    assert bind_value("abc", sa.String(5)) == "abc"
    assert str(bind_value("0b0e6f4e-5d58-4a4b-9d0e-2b9f1d6f3b11", postgresql.UUID())) == \
        "0b0e6f4e-5d58-4a4b-9d0e-2b9f1d6f3b11"
    with pytest.raises(ValueError, match="is a boolean"):
        bind_value("true", sa.Boolean())
    assert bind_condition(Condition(column="c", is_null=True), sa.Boolean()) is None

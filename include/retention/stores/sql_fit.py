"""Does a new identity value fit a reflected SQL column? Decided in Python exactly as the database will store it.

A correction (``rectify``) writes a value the requester typed into every column that holds the old one. A value
the column cannot hold must be refused before the first write, not discovered by PostgreSQL's ``value too long``
or MariaDB's 1406 half-way through (ADR 0008). Python and the database agree on what fits:

- ``VARCHAR(n)`` / ``CHAR(n)``: ``n`` characters on PostgreSQL and MariaDB/MySQL (utf8mb4: characters, not
  bytes) and the declared ``n`` on SQLite (which does not enforce it: the declaration is the contract); excess
  spaces are cut, as PostgreSQL and MariaDB do;
- MariaDB/MySQL ``TINYTEXT`` / ``TEXT`` / ``MEDIUMTEXT``: bytes in the column's character set;
- characters the column's character set (MariaDB/MySQL) or the server's encoding (PostgreSQL) cannot hold;
- integer columns (a phone or a reference kept as a number): only digits whose number is the same identity
  (``normalise`` of the number equals ``normalise`` of the value: a leading ``+`` or ``0`` would be lost) and
  within the column's range;
- any other type (dates, booleans, binary, enums) holds no identity value typed by a person.

Messages name the column and the problem, never the value.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from include.retention.identity import normalise

_DIGITS = re.compile(r"[0-9]+")
# bits of a signed integer column, by type name (MariaDB/MySQL names included); anything else Integer: 32
_INT_BITS = {"BIGINT": 64, "INTEGER": 32, "INT": 32, "MEDIUMINT": 24, "SMALLINT": 16, "TINYINT": 8}
# MariaDB/MySQL text types without a declared length: their limit in bytes
_TEXT_BYTES = {"TINYTEXT": 255, "TEXT": 65535, "MEDIUMTEXT": 16_777_215, "LONGTEXT": 4_294_967_295}
# MariaDB/MySQL character sets -> Python codecs (utf8mb3: the Basic Multilingual Plane only)
_MYSQL_CODECS = {"utf8mb4": "utf-8", "latin1": "cp1252", "ascii": "ascii", "ucs2": "utf-16-be", "utf16": "utf-16",
                 "utf32": "utf-32", "binary": "utf-8", "latin2": "iso8859-2", "greek": "iso8859-7",
                 "hebrew": "iso8859-8", "cp1250": "cp1250", "cp1251": "cp1251", "cp1256": "cp1256"}


@dataclass(frozen=True)
class Target:
    """One column a correction writes, with what the database says about its storage."""

    where: str  # "system.collection.column"
    column: sa.Column
    dialect: str  # engine.dialect.name
    charset: str | None = None  # MariaDB/MySQL column character set; PostgreSQL server encoding


def _codec(target: Target) -> str | None:
    """The Python codec of the column's storage, None when any character fits (or it is unknown)."""
    cs = (target.charset or "").lower()
    if not cs:
        return None
    if target.dialect == "postgresql":
        if cs in ("utf8", "sql_ascii"):
            return None
        cs = {"latin1": "latin-1", "win1252": "cp1252", "win1250": "cp1250", "win1251": "cp1251"}.get(cs, cs)
    elif target.dialect in ("mysql", "mariadb"):
        if cs in ("utf8", "utf8mb3"):
            return "utf8mb3"
        cs = _MYSQL_CODECS.get(cs, cs)
    if cs == "utf8mb3":
        return cs
    try:
        return codecs.lookup(cs).name
    except LookupError:
        return None


def _encoded(value: str, codec: str | None) -> bytes | None:
    """The value in the column's storage encoding, None if it has a character that encoding cannot hold."""
    if codec == "utf8mb3":
        return value.encode("utf-8") if all(ord(ch) <= 0xFFFF for ch in value) else None
    try:
        return value.encode(codec or "utf-8")
    except UnicodeEncodeError:
        return None


def bind_value(target: Target, kind: str, value: str) -> tuple[str | None, Any]:
    """(problem or None, the value to bind). The problem names ``target.where`` and the kind, never the value."""
    typ = target.column.type
    name = type(typ).__name__.upper()
    if isinstance(typ, sa.Boolean | sa.Enum):
        return f"{target.where}: a {name} column cannot hold a {kind}", None
    if isinstance(typ, sa.Integer):
        text = value.strip()
        number = int(text) if _DIGITS.fullmatch(text) else None
        if number is None or normalise(kind, number) != normalise(kind, value):
            return (f"{target.where}: the new {kind} is not a whole number that keeps its digits "
                    f"(the column is {name})"), None
        bits = 64 if target.dialect == "sqlite" else _INT_BITS.get(name, 32)
        if getattr(typ, "unsigned", False):
            bits += 1
            limit = 2 ** bits - 1
        else:
            limit = 2 ** (bits - 1) - 1
        if number > limit:
            return f"{target.where}: the new {kind} is larger than the column's {name} holds", None
        return None, number
    if not isinstance(typ, sa.String):
        return f"{target.where}: a {name} column cannot hold a {kind}", None
    codec = _codec(target)
    stored = _encoded(value, codec)
    if stored is None:
        return (f"{target.where}: the new {kind} has a character the column's character set "
                f"({target.charset}) cannot hold"), None
    length = getattr(typ, "length", None)
    if length is not None and len(value) > length and not value[length:].strip(" "):
        # PostgreSQL and MariaDB cut excess spaces (and only spaces) silently: bound cut, SQLite stores the same
        return None, value[:length]
    if length is not None and len(value) > length:
        return (f"{target.where}: the new {kind} has {len(value)} characters, the column holds {length} "
                f"({name}({length}))"), None
    limit = _TEXT_BYTES.get(name) if target.dialect in ("mysql", "mariadb") and length is None else None
    if limit is not None and len(stored) > limit:
        space = len(_encoded(" ", codec) or b" ")
        cut = -(-(len(stored) - limit) // space)  # spaces the database would cut off the end
        if len(value) - len(value.rstrip(" ")) >= cut:
            return None, value[:-cut]
        return f"{target.where}: the new {kind} has {len(stored)} bytes, the column holds {limit} ({name})", None
    return None, value


def storage_charsets(engine: sa.Engine, table: str) -> dict[str, str | None]:
    """Column -> character set (MariaDB/MySQL), or every column -> the server encoding (PostgreSQL); {} else."""
    dialect = engine.dialect.name
    with engine.connect() as conn:
        if dialect in ("mysql", "mariadb"):
            rows = conn.execute(sa.text(
                "SELECT COLUMN_NAME, CHARACTER_SET_NAME FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t"), {"t": table})
            return {r[0]: r[1] for r in rows}
        if dialect == "postgresql":
            encoding = conn.execute(sa.text("SHOW server_encoding")).scalar()
            return {"*": encoding}
    return {}

"""Policy texts for tests: the header every SQL-only test policy repeats, written once."""

from __future__ import annotations

import textwrap


def sql_system(name: str, connection: str, collections: str) -> str:
    """One SQL system under ``systems:``; ``collections``: YAML as it stands under ``collections:``, at any
    common indentation."""
    head = f"  {name}:\n    kind: sql\n    connection: {connection}\n    collections:\n"
    return head + textwrap.indent(textwrap.dedent(collections), " " * 6)


def crm_policy(collections: str, defaults: str = "", mailing: str = "") -> str:
    """``version: 1`` (with ``defaults: <defaults>`` when given), the SQL system ``crm`` on the connection
    ``crm_db`` holding ``collections`` and, when given, the SQL system ``mailing`` on ``mailing_db`` holding
    ``mailing``."""
    text = "version: 1\n" + (f"defaults: {defaults}\n" if defaults else "") + "systems:\n"
    text += sql_system("crm", "crm_db", collections)
    return text + (sql_system("mailing", "mailing_db", mailing) if mailing else "")

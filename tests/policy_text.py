"""Policy texts for tests: the headers every test policy repeats, written once."""

from __future__ import annotations

import textwrap


def system(name: str, kind: str, connection: str, collections: str) -> str:
    """One system under ``systems:``; ``collections``: YAML as it stands under ``collections:``, at any
    common indentation."""
    head = f"  {name}:\n    kind: {kind}\n    connection: {connection}\n    collections:\n"
    return head + textwrap.indent(textwrap.dedent(collections), " " * 6)


def sql_system(name: str, connection: str, collections: str) -> str:
    """One SQL system under ``systems:`` (see ``system``)."""
    return system(name, "sql", connection, collections)


def policy_text(*systems: str, defaults: str = "") -> str:
    """``version: 1`` (with ``defaults: <defaults>`` when given) and ``systems`` (each from ``system``)."""
    return "version: 1\n" + (f"defaults: {defaults}\n" if defaults else "") + "systems:\n" + "".join(systems)


def crm_policy(collections: str, defaults: str = "", mailing: str = "") -> str:
    """The SQL system ``crm`` on the connection ``crm_db`` holding ``collections`` and, when given, the SQL
    system ``mailing`` on ``mailing_db`` holding ``mailing``."""
    systems = [sql_system("crm", "crm_db", collections)]
    if mailing:
        systems.append(sql_system("mailing", "mailing_db", mailing))
    return policy_text(*systems, defaults=defaults)

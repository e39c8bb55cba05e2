"""Policy texts for tests: the header every one-system SQL policy repeats, written once."""

from __future__ import annotations

import textwrap


def crm_policy(collections: str, defaults: str = "") -> str:
    """``version: 1`` (with ``defaults: <defaults>`` when given), one SQL system ``crm`` on the connection
    ``crm_db``, and ``collections``: YAML as it stands under ``collections:``, at any common indentation."""
    head = "version: 1\n" + (f"defaults: {defaults}\n" if defaults else "")
    head += "systems:\n  crm:\n    kind: sql\n    connection: crm_db\n    collections:\n"
    return head + textwrap.indent(textwrap.dedent(collections), " " * 6)

"""Key templates: ``cvs/{applicant_id}/...``, ``logs/{yyyy}/{mm}/{dd}/...``, ``exports/{email}.zip``.

The one parser of the template syntax, shared by the data-map validation, the S3 store
(matching keys, dates and identities in keys) and SQL rows that own objects (filling a
template from a row). ``{name}`` is one path part (``{yyyy}``/``{mm}``/``{dd}``/``{hh}``
digits), ``...`` any rest; a template is matched against the whole key.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

FIELD = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)}")
DATE_FIELDS = {"yyyy": r"\d{4}", "mm": r"\d{2}", "dd": r"\d{2}", "hh": r"\d{2}"}


def fields(template: str) -> list[str]:
    """The ``{name}`` fields of a template, in order."""
    return FIELD.findall(template)


def literal_head(template: str) -> str:
    """The literal start of a template: where listing starts, and what every matching key begins with."""
    cut = [i for i in (template.find("{"), template.find("...")) if i >= 0]
    return template[:min(cut)] if cut else template


def regex(template: str) -> re.Pattern[str]:
    """The template as a regex over the whole key (a repeated field must repeat its value)."""
    out, seen, pos = [], set(), 0
    for match in re.finditer(r"{([A-Za-z_][A-Za-z0-9_]*)}|\.\.\.", template):
        out.append(re.escape(template[pos:match.start()]))
        name = match.group(1)
        if name is None:
            out.append(".*")
        elif name in seen:
            out.append(f"(?P={name})")
        else:
            seen.add(name)
            out.append(f"(?P<{name}>{DATE_FIELDS.get(name, '[^/]+')})")
        pos = match.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out), re.DOTALL)


def key_date(match: re.Match[str]) -> dt.datetime | None:
    """The date a key names through ``{yyyy}``/``{mm}``/``{dd}``/``{hh}`` (UTC), None if it names none."""
    parts = match.groupdict()
    if not parts.get("yyyy"):
        return None
    try:
        return dt.datetime(int(parts["yyyy"]), int(parts.get("mm") or 1), int(parts.get("dd") or 1),
                           int(parts.get("hh") or 0), tzinfo=dt.UTC)
    except ValueError:  # "2024/13/45": not a date, so no storage period can be counted
        return None


def fill(template: str, values: Mapping[str, Any]) -> tuple[str | None, bool]:
    """(key or prefix, is it a prefix) of a template filled from ``values``; (None, False) if it cannot be.

    An empty value or one holding ``/`` would widen the key beyond the row's own objects: refused.
    """
    filled = {}
    for name in fields(template):
        value = values.get(name)
        if value is None or str(value) == "" or "/" in str(value):
            return None, False
        filled[name] = str(value)
    key = FIELD.sub(lambda m: filled[m.group(1)], template)
    if key.endswith("..."):
        return key[:-3], True
    return key, key.endswith("/")

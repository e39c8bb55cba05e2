"""What every part of the data map's model shares: the strict model base, name and template syntax, and how a
validation error reads (the path inside the file, the problem)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class StrictModel(BaseModel):
    # strict: YAML's own types only. 'true' is not a number, "0.5" is not a fraction, "yes" is not a boolean.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True, allow_inf_nan=False)


def short(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def literal_head(template: str) -> str:
    return re.split(r"\{|\.\.\.", template, maxsplit=1)[0]


def template_fields(template: str) -> list[str]:
    return re.findall(r"{([A-Za-z_][A-Za-z0-9_]*)}", template)


def error_location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith(("function-", "tagged-union")):
            continue
        else:
            text = str(part)
            if not re.fullmatch(r"[\w\-. :]{1,80}", text):  # a key with line breaks, quotes ...: shown quoted
                text = repr(text[:80])
            out += ("." if out else "") + text
    return out or "(top level)"


def error_message(err: dict[str, Any]) -> str:
    msg = err.get("msg", "invalid")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err.get("type") == "extra_forbidden":
        msg = "unknown field (not part of the policy format)"
    value = err.get("input")
    if isinstance(value, bool) and err.get("type") in ("string_type", "float_type", "int_type", "literal_error"):
        msg += " (got a boolean: YAML reads true/false/yes/no/on/off unquoted as booleans; quote the text)"
    elif isinstance(value, (int, float)) and err.get("type") == "string_type":
        msg += " (got a number; quote it if it is text)"
    elif isinstance(value, str) and err.get("type") in ("float_type", "int_type", "bool_type"):
        msg += " (got quoted text; write the value without quotes)"
    return msg

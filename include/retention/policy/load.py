"""Loading a data map: safe YAML (no aliases, merge keys, duplicate keys, unbounded nesting), the models, the
cross-checks, and a per-process cache of parsed files."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from include.retention.errors import PolicyError
from include.retention.policy.base import error_location, error_message
from include.retention.policy.checks import cross_check
from include.retention.policy.model import Policy

# A policy file is a few kilobytes; these bound what a wrong or hostile file can make the loader do.
MAX_POLICY_BYTES = 2_000_000
MAX_DEPTH = 40

# Parsed policies of this process, by (path as given, mtime, size, sha256 of the bytes read): a process that
# runs many task bodies (the bench, a long-lived page, a worker running tasks in-process) parses a data map once.
# The file is read and hashed on every call, so a changed file is parsed again, whatever its mtime says.
_PARSED: dict[tuple[str, int, int, str], Policy] = {}
_PARSED_MAX = 8
_PARSED_LOCK = threading.Lock()


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; raise ``PolicyError`` naming file, path and problem.

    The file is read every time; when its bytes (and path, mtime, size) are those of a file this process
    already parsed, that parse is returned (the same frozen ``Policy``: callers never change it). A file
    that fails validation is not remembered: it is refused again, with the same message, on every call.
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise PolicyError(f"{path}: is a directory, not a policy file")
        stat = path.stat()
        if stat.st_size > MAX_POLICY_BYTES:
            raise PolicyError(f"{path}: the policy file is larger than {MAX_POLICY_BYTES // 1_000_000} MB")
        raw_bytes = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy file ({exc.strerror or type(exc).__name__})") from None
    key = (str(path), stat.st_mtime_ns, len(raw_bytes), hashlib.sha256(raw_bytes).hexdigest())
    with _PARSED_LOCK:
        policy = _PARSED.get(key)
    if policy is not None:
        return policy
    policy = parse_policy(raw_bytes, source=str(path))
    with _PARSED_LOCK:
        _PARSED[key] = policy
        while len(_PARSED) > _PARSED_MAX:  # the oldest parse goes first
            _PARSED.pop(next(iter(_PARSED)))
    return policy


class _Refused(Exception):
    def __init__(self, mark: Any, path: str, problem: str):
        super().__init__(problem)
        self.mark, self.path, self.problem = mark, path, problem


_SCALAR_NAMES = {
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:int": "a number",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "a date",
}


class _Loader(yaml.SafeLoader):
    """YAML's safe loader without the features a data map does not need and a wrong file can abuse:
    aliases (``*x``, the billion-laughs bomb and silently shared values), merge keys (``<<``) and
    unbounded nesting. Duplicate keys and non-text keys are refused by ``_check_tree``."""

    _depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(
                event.start_mark, "", f"alias '*{event.anchor}' is not supported in a data map; write the value out"
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(self.peek_event().start_mark, "", f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _join(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else str(part)


def _check_tree(loader: _Loader, root: yaml.Node) -> None:
    """Walk the composed document: refuse duplicate keys, non-text keys and unreadable scalars, naming
    the line and the key path."""
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise _Refused(key_node.start_mark, path, "a key must be a name, not a list or mapping")
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise _Refused(key_node.start_mark, path, "merge keys ('<<') are not supported in a data map")
                if key_node.tag != "tag:yaml.org,2002:str":
                    kind = _SCALAR_NAMES.get(key_node.tag, key_node.tag)
                    raise _Refused(
                        key_node.start_mark,
                        path,
                        f"key {key_node.value[:40]!r} is read as {kind}; keys are names (quote it)",
                    )
                key = key_node.value
                where = _join(path, key)
                if key in seen:
                    raise _Refused(
                        key_node.start_mark,
                        where,
                        f"duplicate key {key!r} (first given on line {seen[key]}); "
                        "a second value would silently replace the first",
                    )
                seen[key] = key_node.start_mark.line + 1
                stack.append((value_node, where))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, _join(path, i)) for i, item in enumerate(node.value))
        elif node.tag != "tag:yaml.org,2002:str":
            try:
                loader.construct_object(node, deep=True)
            except (ValueError, TypeError, OverflowError, yaml.YAMLError) as exc:
                problem = getattr(exc, "problem", None) or str(exc)
                raise _Refused(node.start_mark, path, f"value {node.value[:40]!r} cannot be read ({problem})") from None


def _read_yaml(raw_bytes: bytes, source: str) -> Any:
    loader = None
    try:
        loader = _Loader(raw_bytes)
        root = loader.get_single_node()
        if root is None:
            return None
        _check_tree(loader, root)
        return loader.construct_document(root)
    except _Refused as exc:
        line = f"line {exc.mark.line + 1}" if exc.mark else ""
        where = f"{exc.path} ({line})" if exc.path else line
        raise PolicyError(f"{source}: {where}: {exc.problem}") from None
    except yaml.reader.ReaderError as exc:
        raise PolicyError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.position})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise PolicyError(f"{source}:{where} not valid YAML: {problem}") from None
    except RecursionError:
        raise PolicyError(f"{source}: nested too deeply to be a data map") from None
    finally:
        if loader is not None:
            loader.dispose()


def parse_policy(raw: bytes | str, source: str = "<policy>") -> Policy:
    """Validate a policy given as bytes or text; raise ``PolicyError`` naming source, path and problem."""
    raw_bytes = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if len(raw_bytes) > MAX_POLICY_BYTES:
        raise PolicyError(f"{source}: the policy file is larger than {MAX_POLICY_BYTES // 1_000_000} MB")
    data = _read_yaml(raw_bytes, source)
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the top level must be a mapping with 'systems'")
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise PolicyError(f"{source}: {error_location(err['loc'])}: {error_message(err)}{more}") from None
    problems = list(cross_check(policy))
    if problems:
        where, problem = problems[0]
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise PolicyError(f"{source}: {where}: {problem}{more}")
    digest = hashlib.sha256(raw_bytes).hexdigest()
    return policy.model_copy(update={"digest": digest, "source": source})

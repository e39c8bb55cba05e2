"""The data-map change that maps a discovery finding: a YAML snippet, checked by the policy loader.

The snippet is the finding's collection as it would read in ``config/policy.yaml`` after the change (a new
column or identity, a new collection for a new table or prefix, a dropped column removed). It is applied to
the current data map and the result goes through ``parse_policy``: a snippet the loader refuses is never
offered. It holds names only.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from include.retention.discovery import Finding
from include.retention.errors import PolicyError
from include.retention.policy import Policy, parse_policy

IDENTITY_OF = {"email": "email", "phone": "phone", "name:email": "email", "name:phone": "phone",
               "lineage:email": "email", "lineage:phone": "phone"}


def policy_dict(policy: Policy) -> dict[str, Any]:
    """The data map as YAML data: its source file when readable, else the model's own fields."""
    try:
        data = yaml.safe_load(Path(policy.source).read_text())
        if isinstance(data, dict):
            return data
    except (OSError, yaml.YAMLError):
        pass
    return policy.model_dump(exclude_unset=True, exclude={"digest", "source"})


def _collection_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_").lower() or "unmapped"
    return name if name[0].isalpha() else f"c_{name}"


def _add_identity(coll: dict[str, Any], kind: str, field: str) -> None:
    ids = coll.setdefault("identities", {})
    have = ids.get(kind)
    if have is None:
        ids[kind] = field
    elif isinstance(have, list):
        ids[kind] = [*have, field]
    else:
        ids[kind] = [have, field]


def change_for(policy: Policy, finding: Finding, data: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(collection name, the collection after the change) in ``data`` (changed in place), or None when a
    finding has no data-map change (a bad identity value, an identity kind no request carries)."""
    collections = data["systems"][finding.system]["collections"]
    by_table = {c.get("table"): n for n, c in collections.items() if isinstance(c, dict)}
    kind = IDENTITY_OF.get(finding.classifier)
    if finding.kind == "derived_table" or (finding.kind == "derived_column" and not finding.column):
        # lineage names no key of a new table, nor always the column: discovery's sampling of the table (an
        # unmapped_table finding, with its key and columns) offers the snippet once data is there
        return None
    if finding.kind in ("unmapped_column", "derived_column"):
        name = by_table[finding.collection]
        coll = collections[name]
        coll["columns"] = [*coll.get("columns", []), finding.column]
        if kind:
            _add_identity(coll, kind, finding.column)
        return name, coll
    if finding.kind == "missing_column":
        name = by_table[finding.collection]
        coll = collections[name]
        if finding.column in coll.get("columns", []):
            coll["columns"] = [c for c in coll["columns"] if c != finding.column]
        return name, coll
    if finding.kind == "unmapped_table":
        parts = dict(p.split("=", 1) for p in finding.detail.split() if "=" in p)
        name = _collection_name(finding.collection)
        keys = [k for k in parts.get("key", "").split(",") if k]
        coll = collections.get(name) or {"table": finding.collection,
                                          "primary_key": keys[0] if len(keys) == 1 else keys,
                                          "columns": [c for c in parts.get("columns", "").split(",") if c]}
        if kind:
            _add_identity(coll, kind, finding.column)
        collections[name] = coll
        return name, coll
    if finding.kind in ("unmapped_prefix", "unmapped_metadata"):
        bucket, _, prefix = finding.collection.partition("/")
        source = finding.column if finding.column.startswith(("metadata:", "tag:")) else None
        if finding.kind == "unmapped_metadata":
            name = next(n for n, c in collections.items() if c.get("bucket") == bucket and
                        (c.get("prefix") or "") == prefix or
                        (c.get("bucket") == bucket and str(c.get("key_template", "")).startswith(prefix)))
            coll = collections[name]
        else:
            name = _collection_name(f"{bucket}_{prefix}")
            coll = collections.get(name) or {"bucket": bucket, "prefix": prefix}
            collections[name] = coll
        if kind and source:
            _add_identity(coll, kind, source)
        return name, coll
    return None


def snippet(policy: Policy, finding: Finding) -> str:
    """The validated YAML snippet that maps ``finding`` (empty when no data-map change maps it).

    Raises ``PolicyError`` naming the finding when the changed data map would not load."""
    data = copy.deepcopy(policy_dict(policy))
    change = change_for(policy, finding, data)
    if change is None:
        return ""
    try:
        parse_policy(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), source=f"{policy.source} + "
                     f"finding {finding.finding_id}")
    except PolicyError as exc:
        raise PolicyError(f"the snippet mapping {finding.name} does not load: {exc}") from None
    name, coll = change
    return yaml.safe_dump({"systems": {finding.system: {"collections": {name: coll}}}}, sort_keys=False,
                          allow_unicode=True, default_flow_style=None, width=110)

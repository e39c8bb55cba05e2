"""The submit CSV of ``cli submit``: parsed and validated whole (every row checked before anything is queued);
refusals name the file and the row (as a spreadsheet counts them), never a value."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from include.retention.errors import RetentionError

SUBMIT_EXTRA_COLUMNS = ("mode", "request_ref", "note")


def _submit_columns() -> tuple[str, ...]:
    from include.retention.identity import IDENTITY_KINDS

    return (*IDENTITY_KINDS, *SUBMIT_EXTRA_COLUMNS)


def _decode(path: Path, data: bytes) -> str:
    """UTF-8 text (an Excel byte-order mark is dropped), or a refusal naming the line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise RetentionError(f"{path}: line {line}: not UTF-8 text (save the CSV as 'CSV UTF-8')") from None


def read_requests(path: str | Path) -> list:
    """Parse and validate a submit CSV; every row is checked before anything is written.

    Columns: the identity kinds (``IDENTITY_KINDS``), ``mode`` (erase | restrict, default erase),
    ``request_ref`` and ``note``. Row numbers count the header as row 1, as a spreadsheet shows them.
    """
    from include.retention.identity import IDENTITY_KINDS
    from include.retention.registry import ERASURE_MODES, Identities, NewRequest, validate_request

    path = Path(path)
    text = _decode(path, read_bytes(path))
    if not text.strip():
        raise RetentionError(f"{path}: empty file: expected a header row with {', '.join(_submit_columns())}")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    reqs: list = []
    problems: list[str] = []
    try:
        header = [name.strip() for name in next(reader)]
        known = _submit_columns()
        unknown = [name for name in header if name not in known]
        if unknown:
            shown = ", ".join(repr(name[:40]) for name in unknown[:5])
            raise RetentionError(f"{path}: row 1: unknown column(s) {shown}; known: {', '.join(known)}")
        doubled = sorted({name for name in header if header.count(name) > 1})
        if doubled:
            raise RetentionError(f"{path}: row 1: column(s) {', '.join(doubled)} given twice")
        if not any(name in IDENTITY_KINDS for name in header):
            raise RetentionError(f"{path}: row 1: no identity column; give one of {', '.join(IDENTITY_KINDS)}")
        row_no = 1
        for fields in reader:
            row_no += 1
            if not any(field.strip() for field in fields):
                continue  # a blank line between rows
            if len(fields) > len(header):
                problems.append(f"row {row_no}: {len(fields)} fields but the header has {len(header)} columns")
                continue
            row = {name: (value if value.strip() else None) for name, value in zip(header, fields, strict=False)}
            mode = (row.get("mode") or "erase").strip()
            if mode not in ERASURE_MODES:
                # only erasure_intake takes from the queue: another mode would wait there forever
                problems.append(f"row {row_no}: mode must be one of {', '.join(ERASURE_MODES)} for the queue "
                                f"(access, rectify and withdraw are requested through access_request)")
                continue
            req = NewRequest(Identities({k: row.get(k) for k in IDENTITY_KINDS}), mode=mode, source="intake",
                             external_ref=row.get("request_ref"), note=row.get("note"))
            try:
                validate_request(req)
            except RetentionError as exc:
                problems.append(f"row {row_no}: {exc}")
                continue
            reqs.append(req)
    except csv.Error as exc:
        raise RetentionError(f"{path}: row {reader.line_num}: not a readable CSV row ({exc})") from None
    if problems:
        more = f" (and {len(problems) - 1} more rows with problems)" if len(problems) > 1 else ""
        raise RetentionError(f"{path}: {problems[0]}{more}; nothing was queued")
    if not reqs:
        raise RetentionError(f"{path}: no requests: the file has a header but no rows")
    return reqs


def read_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise RetentionError(f"{path}: is a directory, not a file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise RetentionError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None

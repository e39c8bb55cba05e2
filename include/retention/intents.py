"""Intents a stopped sweep left open, settled by the rule's next run (docs/adr/0016, "A killed run's intents").

Every batch intent of a sweep carries, in its details:

- ``owner``: the token of the run that wrote it. The run holds a lease on that token for as long as it runs (a
  session lock in the ledger's database: ``pg_advisory_lock`` on PostgreSQL, ``GET_LOCK`` on MariaDB, an
  ``flock``ed file beside a SQLite ledger). A killed process loses its session or file lock with it, so an intent
  whose owner's lease is free belongs to a run that stopped; one whose lease is held belongs to a run still going
  (a concurrent sweep of the same rule), and is left alone.
- ``reread``: how to find the batch's rows again (the walk's range, heap blocks, or the keys themselves),
  *sealed* (encrypted under a key derived from the product secret): the ledger never holds a primary key in clear.

``reconcile_open_intents`` settles each open intent of a stopped run: the store re-reads the batch's rows
(``Store.reconcile_batch``) and says whether the batch committed and with what count; an intent that cannot be
re-read is settled with the count its intent recorded, and the entry says so.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import fcntl
import hashlib
import json
import logging
import os
import threading
import uuid
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from include.retention.errors import RetentionError
from include.retention.masking import keys_of
from include.retention.values import CollectionRef

if TYPE_CHECKING:
    from include.retention.ledger import Ledger
    from include.retention.policy import Policy
    from include.retention.stores.base import Store

log = logging.getLogger(__name__)

RECONCILABLE = ("lock", "anonymize", "delete", "nullify")
# an intent written without an owner (before owners existed) counts as stopped once it is this old
OWNERLESS_AFTER = dt.timedelta(hours=1)
_SEAL_LABEL = b"retention-ledger-reread/1"

# ---- sealing: a batch's keys or range in the ledger, readable only with the key ---------------------------------


def _fernet(secret: bytes) -> Fernet:
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SEAL_LABEL).derive(secret)
    return Fernet(base64.urlsafe_b64encode(raw))


def _plain(value: Any) -> Any:
    """JSON with the types a key or a walk bound can have (tagged, so they come back as they were)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dt.datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$d": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"$dec": str(value)}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, tuple):
        return {"$t": [_plain(v) for v in value]}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {"$m": {str(k): _plain(v) for k, v in value.items()}}
    raise RetentionError(f"cannot seal a value of type {type(value).__name__}")


def _typed(value: Any) -> Any:
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if not isinstance(value, dict):
        return value
    (tag, inner), = value.items()
    return {"$dt": dt.datetime.fromisoformat, "$d": dt.date.fromisoformat, "$dec": decimal.Decimal,
            "$uuid": uuid.UUID, "$b": base64.b64decode, "$t": lambda v: tuple(_typed(x) for x in v),
            "$m": lambda v: {k: _typed(x) for k, x in v.items()}}[tag](inner)


def seal(key: bytes, value: Any) -> str:
    """``value`` as ``<key id>:<Fernet token>`` under the current key (JSON, compressed, then encrypted)."""
    kid, secret = keys_of(key)[0]
    packed = zlib.compress(json.dumps(_plain(value), separators=(",", ":")).encode())
    return f"{kid}:{_fernet(secret).encrypt(packed).decode()}"


def unseal(key: bytes, token: str) -> Any:
    kid, _, body = token.rpartition(":")
    secrets = dict(keys_of(key))
    if kid not in secrets:
        raise RetentionError(f"a sealed ledger value is under key {kid!r}, which is not an active key")
    try:
        return _typed(json.loads(zlib.decompress(_fernet(secrets[kid]).decrypt(body.encode()))))
    except InvalidToken:
        raise RetentionError("a sealed ledger value cannot be decrypted with the configured key") from None


# ---- the lease of a running sweep ------------------------------------------------------------------------------

_LIVE: set[str] = set()  # this process's running leases (a check from another thread of it needs no lock)
_LIVE_LOCK = threading.Lock()


def _pg_key(token: str) -> int:
    return int.from_bytes(hashlib.sha256(token.encode()).digest()[:8], "big", signed=True)


def _lock_name(token: str) -> str:
    return f"retention-run:{token[:32]}"


def _lease_file(engine: sa.Engine, token: str) -> Path | None:
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(f"{database}.leases") / token


class RunLease:
    """Held while a sweep runs: its intents' ``owner``. Freed by ``release`` or by the process's death."""

    def __init__(self, engine: sa.Engine):
        self.engine, self.token = engine, uuid.uuid4().hex
        self._conn: sa.Connection | None = None
        self._fd: int | None = None

    def __enter__(self) -> RunLease:
        with _LIVE_LOCK:
            _LIVE.add(self.token)
        dialect = self.engine.dialect.name
        try:
            if dialect == "postgresql":
                self._conn = self.engine.connect()
                self._conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _pg_key(self.token)})
                self._conn.commit()
            elif dialect == "mysql":
                self._conn = self.engine.connect()
                self._conn.execute(sa.text("SELECT GET_LOCK(:n, 10)"), {"n": _lock_name(self.token)})
                self._conn.commit()
            elif (path := _lease_file(self.engine, self.token)) is not None:
                try:
                    path.parent.mkdir(exist_ok=True)
                    self._fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
                except OSError as exc:  # e.g. a read-only directory: other processes will think this run stopped
                    log.warning("no lease file beside the SQLite ledger (%s): a run of this rule in another process "
                                "would settle this run's open intents", type(exc).__name__)
                else:
                    fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.release()

    def release(self) -> None:
        try:
            if self._conn is not None:
                dialect = self.engine.dialect.name
                unlock = ("SELECT pg_advisory_unlock(:k)" if dialect == "postgresql" else "SELECT RELEASE_LOCK(:n)")
                try:
                    self._conn.execute(sa.text(unlock), {"k": _pg_key(self.token), "n": _lock_name(self.token)})
                    self._conn.commit()
                finally:
                    self._conn.close()
                    self._conn = None
            if self._fd is not None:
                path = _lease_file(self.engine, self.token)
                if path is not None:
                    path.unlink(missing_ok=True)
                os.close(self._fd)
                self._fd = None
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(self.token)


def lease_alive(engine: sa.Engine, token: str) -> bool:
    """Whether the run that holds ``token``'s lease is still running."""
    with _LIVE_LOCK:
        if token in _LIVE:
            return True
    dialect = engine.dialect.name
    if dialect == "postgresql":
        with engine.connect() as conn:
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": _pg_key(token)}).scalar()
            if got:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _pg_key(token)})
            conn.commit()
        return not got
    if dialect == "mysql":
        with engine.connect() as conn:
            free = conn.execute(sa.text("SELECT IS_FREE_LOCK(:n)"), {"n": _lock_name(token)}).scalar()
        return free != 1
    path = _lease_file(engine, token)
    if path is None or not path.exists():
        return False
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    path.unlink(missing_ok=True)  # its owner died holding it: nobody will remove it otherwise
    return False


# ---- the next run settles them ----------------------------------------------------------------------------------


def _stopped(ledger: Ledger, intent: dict[str, Any], details: dict[str, Any]) -> bool:
    owner = details.get("owner")
    if owner:
        return not lease_alive(ledger.engine, owner)
    recorded = dt.datetime.fromisoformat(intent["recorded_at"])
    recorded = recorded if recorded.tzinfo else recorded.replace(tzinfo=dt.UTC)
    return dt.datetime.now(dt.UTC) - recorded > OWNERLESS_AFTER


def _store_for(store: Store, system: str | None) -> Store | None:
    if system == store.name:
        return store
    others = getattr(store, "stores", None)
    return others(system) if callable(others) and system else None


def _reread(ledger: Ledger, rule: Any, intent: dict[str, Any], details: dict[str, Any], target: Store | None
            ) -> tuple[int, dict[str, Any]] | None:
    if not details.get("reread") or target is None:
        return None
    reread = unseal(ledger.key, details["reread"])
    found = target.reconcile_batch(CollectionRef.parse(str(intent["collection"])).collection, rule, intent, reread)
    if found is not None and reread.get("cascaded_from"):
        found[1]["cascaded_from"] = reread["cascaded_from"]
    return found


def reconcile_open_intents(ledger: Ledger, policy: Policy, rule_id: str, store: Store) -> list[dict[str, Any]]:
    """Settle the intents of ``rule_id`` that a stopped run left open (oldest first); returns what was decided per
    intent: ``{"seq", "count", "how"}``. Intents of a run still going are left to it."""
    _coll_ref, _coll, rule = policy.rule(rule_id)
    out = []
    for intent in ledger.open_intents(rule_id=rule_id):
        if intent["action"] not in RECONCILABLE:
            continue
        details = json.loads(intent["details"]) if intent["details"] else {}
        if not _stopped(ledger, intent, details):
            continue
        planned = int(intent["count"])
        try:
            found = _reread(ledger, rule, intent, details, _store_for(store, intent["system"]))
        except (RetentionError, sa.exc.SQLAlchemyError) as exc:  # left open (verify reports it), the run goes on
            log.warning("%s: intent %d of a stopped run could not be re-read (%s); left open", rule_id,
                        intent["seq"], type(exc).__name__)
            continue
        if found is None:
            count, extra = planned, {
                "how": "recorded", "note": f"the batch could not be re-read; settled with the {planned} its intent "
                                           "announced (at most what the batch changed)"}
        else:
            count, extra = found
        try:
            ledger.reconcile(int(intent["seq"]), count, extra.pop("note"), details=extra)
        except RetentionError as exc:  # a concurrent run of the rule settled it first, and read it otherwise
            log.warning("%s: intent %d was settled meanwhile (%s)", rule_id, intent["seq"], exc)
            continue
        out.append({"seq": int(intent["seq"]), "count": count, "how": extra["how"]})
        log.info("%s: intent %d of a stopped run settled with %d (%s)", rule_id, intent["seq"], count, extra["how"])
    return out

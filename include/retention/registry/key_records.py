"""Key rotation of the registry (docs/adr/0007-key-rotation.md): every record that is encrypted or digested under
an older key, re-encrypted and re-digested under the current one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from include.retention.registry.identities import Identities, Vault
from include.retention.registry.schema import DIGEST_COLUMNS, Schema, request_details, requests, suppression


class KeyRecords:
    """The registry's records by the key they are under. ``identities``: the request book's."""

    def __init__(self, schema: Schema, vault: Vault, identities: Callable[[str], Identities]):
        self.schema, self.engine, self.vault = schema, schema.engine, vault
        self._identities = identities

    def rotate(self, chunk: int = 500) -> dict[str, Any]:
        """Re-encrypt every request (and its details) and re-digest its digest columns and its suppression entries under
        the current key, ``chunk`` rows per transaction (a crash leaves a consistent mix: run it again).
        Digests of deletes (no request: the address itself is gone) cannot be re-digested; they stay
        under their key, counted in ``kept`` per key id: that key must stay active. An entry's encrypted index digest
        (``lookup_enc``) goes with its digest: re-encrypted with a re-digested entry, left under the old key with a
        kept one (retiring that key ends both together: nobody holding only the new key can test guesses against
        an entry made under the old one)."""
        self.vault.need_key()
        self.schema.ensure()
        kid = self.vault.kid
        done: dict[str, Any] = {"key_id": kid, "requests": 0, "suppression": 0, "merged": 0}
        while True:  # requests not under the current key (a rotated row leaves the selection)
            with self.engine.begin() as conn:
                rows = conn.execute(
                    sa.select(
                        requests.c.request_id, requests.c.identity_enc, requests.c.external_ref_enc, requests.c.note_enc
                    )
                    .where(self._not_current(requests.c.key_id))
                    .order_by(requests.c.request_id)
                    .limit(chunk)
                ).all()
                for row in rows:
                    given = self.vault.decrypt(row.identity_enc)
                    conn.execute(
                        requests.update()
                        .where(requests.c.request_id == row.request_id)
                        .values(
                            identity_enc=self.vault.encrypt(given),
                            external_ref_enc=self.vault.encrypt(self.vault.decrypt(row.external_ref_enc)),
                            note_enc=self.vault.encrypt(self.vault.decrypt(row.note_enc)),
                            key_id=kid,
                            **{
                                f"{k}_digest": (self.vault.digest(k, given[k]) if k in given else None)
                                for k in DIGEST_COLUMNS
                            },
                        )
                    )
                done["requests"] += len(rows)
            if len(rows) < chunk:
                break
        done["details"] = 0
        last = ""
        while True:  # request details: encrypted only, no digests
            with self.engine.begin() as conn:
                rows = conn.execute(
                    sa.select(request_details.c.request_id, request_details.c.details_enc)
                    .where(request_details.c.request_id > last)
                    .order_by(request_details.c.request_id)
                    .limit(chunk)
                ).all()
                for row in rows:
                    if not row.details_enc.startswith(f"{kid}:"):
                        conn.execute(
                            request_details.update()
                            .where(request_details.c.request_id == row.request_id)
                            .values(details_enc=self.vault.encrypt(self.vault.decrypt(row.details_enc)))
                        )
                        done["details"] += 1
            if len(rows) < chunk:
                break
            last = rows[-1].request_id
        last = ""
        while True:  # suppression entries of erasures: their request holds the identity to re-digest
            with self.engine.begin() as conn:
                rows = conn.execute(
                    sa.select(suppression.c.digest, suppression.c.kind, suppression.c.request_id)
                    .where(
                        suppression.c.request_id.is_not(None),
                        suppression.c.digest > last,
                        self._not_current(suppression.c.key_id),
                    )
                    .order_by(suppression.c.digest)
                    .limit(chunk)
                ).all()
                for entry in rows:
                    given = self._identities(entry.request_id).normalised() if self._known(conn, entry) else {}
                    if entry.kind not in given:
                        continue
                    new = self.vault.digest(entry.kind, given[entry.kind])
                    lookup = self.vault.lookup(entry.kind, given[entry.kind])  # re-encrypted with it (ADR 0022)
                    if conn.execute(sa.select(suppression.c.digest).where(suppression.c.digest == new)).first():
                        # already there under the current key (a delete since the key was added): keep that one
                        conn.execute(
                            suppression.update()
                            .where(suppression.c.digest == new, suppression.c.request_id.is_(None))
                            .values(request_id=entry.request_id)
                        )
                        conn.execute(suppression.update()
                                     .where(suppression.c.digest == new, suppression.c.lookup_enc.is_(None))
                                     .values(lookup_enc=lookup))
                        conn.execute(suppression.delete().where(suppression.c.digest == entry.digest))
                        done["merged"] += 1
                    else:
                        conn.execute(
                            suppression.update()
                            .where(suppression.c.digest == entry.digest)
                            .values(digest=new, key_id=kid, lookup_enc=lookup)
                        )
                    done["suppression"] += 1
            if len(rows) < chunk:
                break
            last = rows[-1].digest
        key_col = sa.func.coalesce(suppression.c.key_id, sa.literal("k0"))
        with self.engine.connect() as conn:
            kept = conn.execute(
                sa.select(key_col, sa.func.count()).where(self._not_current(suppression.c.key_id)).group_by(key_col)
            ).all()
        done["kept"] = {k: int(n) for k, n in kept}
        return done

    def _not_current(self, column: sa.ColumnElement) -> sa.ColumnElement:
        return sa.or_(column.is_(None), column != self.vault.kid)

    @staticmethod
    def _known(conn: sa.Connection, entry: Any) -> bool:
        return (
            conn.execute(sa.select(requests.c.request_id).where(requests.c.request_id == entry.request_id)).first()
            is not None
        )

"""Verifying the chain: the result, and the walk over the entries that finds the first one missing, edited, out
of place, under a key it may not be under, or disagreeing with an anchor."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any

from include.retention.clock import utcnow_iso
from include.retention.ledger.anchors import Anchor, AnchorSet, recorded_anchor
from include.retention.ledger.hashing import canonical, chain_key, cosignature, key_change
from include.retention.ledger.schema import ANCHOR_ACTION, GENESIS, INTENT


@dataclass
class VerifyResult:
    ok: bool
    entries: int
    first_broken_seq: int | None = None
    problem: str | None = None
    unreconciled: list[int] = field(default_factory=list)  # seqs of intents without outcome (first 1,000)
    unreconciled_count: int = 0
    anchors_checked: int = 0
    head_seq: int | None = None
    verified_at: str = field(default_factory=utcnow_iso)
    key_id: str | None = None  # the key the chain is under after its last entry
    warnings: list[str] = field(default_factory=list)  # what the anchors given cannot prove

    def __str__(self) -> str:
        if self.ok:
            text = f"ledger OK: {self.entries} entries, chain intact"
            if self.anchors_checked:
                text += f", {self.anchors_checked} anchor(s) match"
        else:
            text = f"ledger BROKEN at entry {self.first_broken_seq}: {self.problem} ({self.entries} entries checked)"
        if self.unreconciled_count:
            shown = ", ".join(str(s) for s in self.unreconciled[:10])
            more = ", ..." if self.unreconciled_count > 10 else ""
            text += f"; {self.unreconciled_count} unreconciled intent(s): seq {shown}{more}"
        for warning in self.warnings:
            text += f"; warning: {warning}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "first_broken_seq": self.first_broken_seq,
            "problem": self.problem,
            "unreconciled": self.unreconciled[:100],
            "unreconciled_count": self.unreconciled_count,
            "anchors_checked": self.anchors_checked,
            "head_seq": self.head_seq,
            "verified_at": self.verified_at,
            "key_id": self.key_id,
            "warnings": list(self.warnings),
        }


class ChainWalk:
    """The state of one verification: where the chain is, under which key, which anchors and intents are open."""

    def __init__(self, ring: list[tuple[str, bytes]], anchors: AnchorSet, *, current_key: bool = True):
        # ring: (key id, secret), current first. ``cur`` is the index of the key the chain is under: every
        # entry must be keyed with it; only a rotation entry co-signed by a newer key moves it there.
        self.ring = ring
        self.ckeys = [(kid, chain_key(secret)) for kid, secret in ring]
        self.current_key = current_key
        self.cur: int | None = None
        self.segment_start = 1  # the first entry under the key the chain is under now
        self.pending = list(anchors.anchors)
        self.by_where = {a.where: a for a in anchors.anchors}
        self.locations = anchors.locations
        self.seen: dict[tuple[str, int], set[str]] = {}  # (sink, seq) -> keyed hashes of anchors checked there
        self.expected_seq, self.prev, self.count, self.checked = 1, GENESIS, 0, 0
        self.intents: set[int] = set()
        self.head_seq: int | None = None

    def kid(self) -> str | None:
        return None if self.cur is None else self.ckeys[self.cur][0]

    def broken(self, seq: int, problem: str) -> VerifyResult:
        return VerifyResult(False, self.count, seq, problem)

    def start(self) -> VerifyResult | None:
        while self.pending and self.pending[0].seq <= 0:  # an anchor of the empty ledger
            a = self.pending.pop(0)
            if problem := self._anchor_problem(a):
                return self.broken(0, problem)
            if a.seq < 0 or a.entry_hash != GENESIS:
                return self.broken(0, f"anchor {a.where} records no entry of this ledger")
            self._seen(a)
        return None

    def _anchor_problem(self, a: Anchor) -> str | None:
        """An anchor must be keyed with an active key and name an earlier anchor of its place that is there."""
        secret = dict(self.ring).get(a.kid)
        if secret is None:
            return f"anchor {a.where} is keyed with {a.kid!r}, which is not in the key ring"
        if not a.mac_ok(secret):
            return f"anchor {a.where} does not match its keyed hash (written or rewritten without the key)"
        if a.prev_seq is not None and a.prev_mac not in self.seen.get((a.sink, a.prev_seq), set()):
            return (
                f"anchor {a.where} follows an anchor of entry {a.prev_seq} that is missing from "
                f"{a.sink} (deleted or rewritten)"
            )
        return None

    def _seen(self, a: Anchor) -> None:
        self.seen.setdefault((a.sink, a.seq), set()).add(a.mac)
        self.checked += 1

    def step(self, row: dict[str, Any]) -> VerifyResult | None:
        """Check one entry; the first problem found ends the walk."""
        self.count += 1
        seq, expected = row["seq"], self.expected_seq
        if seq < expected:
            return self.broken(seq, f"entry {seq} was put before entry {expected}")
        if seq != expected:
            return self.broken(expected, f"entry {expected} is missing")
        if problem := self._key_problem(row):
            return self.broken(seq, problem)
        if row["prev_hash"] != self.prev:
            return self.broken(seq, "does not link to the entry before it")
        while self.pending and self.pending[0].seq <= seq:
            a = self.pending.pop(0)
            if problem := self._anchor_problem(a):
                return self.broken(seq, problem)
            if a.seq == seq and not hmac.compare_digest(a.entry_hash, row["entry_hash"]):
                return self.broken(
                    seq, f"differs from anchor {a.where} (rewritten with the key at or before this entry)"
                )
            self._seen(a)
        if row["action"] == ANCHOR_ACTION and (problem := self._recorded_anchor_problem(row)):
            return self.broken(seq, problem)
        if row["outcome"] == INTENT:
            self.intents.add(seq)
        if row["ref_seq"] is not None:
            ref = int(row["ref_seq"])
            if ref not in self.intents:
                return self.broken(seq, f"settles entry {ref}, which is not an open intent before it")
            self.intents.discard(ref)
        self.prev, self.expected_seq = row["entry_hash"], expected + 1
        return None

    def _key_problem(self, row: dict[str, Any]) -> str | None:
        """The entry must be keyed with the key the chain is under (any active key for the first entry); a
        rotation entry must be co-signed by the key it hands over to, which becomes the chain's key."""
        canon = canonical(row)
        order = (
            range(len(self.ckeys))
            if self.cur is None
            else [self.cur, *(i for i in range(len(self.ckeys)) if i != self.cur)]
        )
        used = next(
            (
                i
                for i in order
                if hmac.compare_digest(hmac.digest(self.ckeys[i][1], canon, "sha256").hex(), row["entry_hash"] or "")
            ),
            None,
        )
        if used is None:
            return "content does not match its keyed hash (edited, inserted, moved or rehashed without the key)"
        if self.cur is not None and used != self.cur:
            now, other = self.ckeys[self.cur][0], self.ckeys[used][0]
            if used > self.cur:
                return (
                    f"keyed with {other!r} after the chain moved on to key {now!r} (a retired key cannot "
                    f"append or rewrite after a rotation)"
                )
            return f"keyed with {other!r} while the chain is under {now!r}, and no rotation entry hands it over"
        self.cur = used
        change = key_change(row)
        if change is None:
            return None
        to, from_ = change.get("to"), change.get("from")
        kid = self.ckeys[used][0]
        if from_ != kid or not isinstance(to, str) or not isinstance(change.get("proof"), str):
            return f"a key rotation that does not say it hands over from {kid!r}, the key it is keyed with, to a key"
        index = next((i for i, (k, _) in enumerate(self.ring) if k == to), None)
        if index is None:
            return f"hands the chain over to key {to!r}, which is not in the key ring (RETENTION_HMAC_KEYS)"
        if index >= used:
            return f"hands the chain over from {kid!r} to {to!r}, which is not a newer key"
        if not hmac.compare_digest(cosignature(row, self.ring[index][1]), change["proof"]):
            return (
                f"a key rotation to {to!r} without its co-signature under {to!r} (forged by someone without "
                f"the new key)"
            )
        self.cur, self.segment_start = index, row["seq"] + 1
        return None

    def _recorded_anchor_problem(self, row: dict[str, Any]) -> str | None:
        """An ``anchor`` entry names an anchor written outside: in a place read in full, it must be there, unchanged."""
        recorded = recorded_anchor(row["details"])
        if recorded is None:
            return "an anchor entry that does not say which anchor it records"
        if recorded["sink"] not in self.locations:
            return None  # a place not given to this verification
        found = self.by_where.get(recorded["where"])
        if found is None:
            return f"records the anchor of entry {recorded['seq']} at {recorded['where']}, which is missing"
        if found.seq != recorded["seq"] or not hmac.compare_digest(found.mac, recorded["mac"]):
            return f"records the anchor of entry {recorded['seq']} at {recorded['where']}, which was changed"
        return None

    def finish(self, head_seq: int, head_hash: str) -> VerifyResult:
        """After the last entry: the head and the anchors must agree with where the chain ended, and the chain
        must end under the current key."""
        last = self.expected_seq - 1
        beyond = [a for a in self.pending if a.seq > last]
        for a in beyond:
            if problem := self._anchor_problem(a):
                return self.broken(last + 1, problem)
            self._seen(a)
        if beyond:
            return self.broken(
                last + 1, f"entries after {last} were removed (anchor {beyond[0].where} records entry {beyond[0].seq})"
            )
        if head_seq > last:
            return self.broken(last + 1, f"entries after {last} were removed (the head says {head_seq})")
        if head_seq < last:
            return self.broken(head_seq + 1, f"entries after the head ({head_seq}) were added behind its back")
        if not hmac.compare_digest(head_hash, self.prev):
            return self.broken(last, "the head does not match the last entry")
        if self.current_key and self.cur is not None and self.cur != 0:
            old, new = self.ckeys[self.cur][0], self.ckeys[0][0]
            return self.broken(
                self.segment_start,
                (
                    f"entries {self.segment_start}-{last} are under key {old!r}, but the current key is {new!r} and no "
                    f"rotation entry hands the chain over to it: either `cli rotate-keys` has not run since {new!r} "
                    f"was added, or the rotation and what followed were cut or rewritten with the old key"
                ),
            )
        return VerifyResult(True, self.count)

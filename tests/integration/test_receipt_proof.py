"""Receipts that prove themselves: each system's ledger entry (seq + keyed hash) is in the receipt, and
``cli verify-receipt`` checks it against the ledger and its anchors. An intact receipt passes; edited
counts, an edited hash, a tampered ledger entry or a receipt without proof fail. No personal data out.

The receipt and its ledger entries are built as ``record()`` and ``finalize_erasure()`` of
include/retention/requests/erasure_flow.py build them (the DAG test runs those end to end)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from include.retention import cli
from include.retention.connections import env_resolver, hmac_key
from include.retention.ledger import Ledger, RunRef, entries
from include.retention.registry import Identities, NewRequest, Registry
from include.retention.requests.receipts import build_receipt, counted_total, ledger_proof, render_markdown
from include.retention.stores.sql import make_engine

pytestmark = pytest.mark.integration

EMAIL = "receipt.person@example.org"
COUNTS = {
    "crm": {"collections": {"crm.contacts": {"deleted": 1, "exception:legal_hold": 1},
                            "crm.inquiries": {"deleted_with_parent": 2}},
            "removed_along": {"objects.inquiry_attachments": 2}, "searched": {"crm.contacts": ["email"]}},
    "mailing": {"collections": {"mailing.subscribers": {"deleted": 1}}, "removed_along": {"suppression_list": 1},
                "searched": {"mailing.subscribers": ["email"]}},
}


@pytest.fixture
def world(tmp_path, monkeypatch):
    db = tmp_path / "ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    monkeypatch.delenv("RETENTION_LEDGER_ANCHORS", raising=False)
    key = hmac_key(env_resolver)  # the key the CLI verifies with
    engine = make_engine(f"sqlite:///{db}")
    ledger = Ledger(engine, key)
    registry = Registry(engine, key)
    registry.ensure_schema()
    ledger.append(run=RunRef("retention_sweep", "r0"), action="sweep", outcome="complete", count=3,
                  rule_id="crm.leads.inactivity")
    rid = registry.register(NewRequest(Identities(email=EMAIL), mode="erase"), dag_id="erasure_request",
                            run_id="run-1", policy_digest="p" * 64)
    for system, counts in COUNTS.items():  # discover + act + verify + record(), as erasure_tasks does
        registry.systems.set([rid], system, "discovered")
        registry.systems.add_counts({rid: counts}, system, "acted")
        registry.systems.set([rid], system, "verified")
        ledger.append(run=RunRef("erasure_request", "run-1"), action="erase", outcome="verified",
                      count=counted_total(counts["collections"]), request_id=rid, policy_digest="p" * 64,
                      system=system, subject_digest=registry.subject_digest(rid), details=counts)
        registry.systems.set([rid], system, "recorded")
    registry.finish(rid, "complete")
    # finalize(): the receipt with each system's ledger entry
    proof = ledger_proof(ledger, rid, "erase", False)
    receipt = build_receipt(registry.get(rid), registry.systems.of(rid), ["crm", "mailing"], "p" * 64,
                            ledger_entries=proof)
    ledger.append(run=RunRef("retention_sweep", "r1"), action="sweep", outcome="complete", count=0,
                  rule_id="crm.leads.inactivity")  # the ledger goes on after the receipt
    yield {"receipt": receipt, "ledger": ledger, "engine": engine, "tmp": tmp_path, "rid": rid}
    engine.dispose()


def write(tmp: Path, receipt: dict) -> str:
    path = tmp / "receipt.json"
    path.write_text(json.dumps(receipt, indent=2))
    return str(path)


def verify(capsys, path: str, *extra: str) -> tuple[int, str]:
    code = cli.main(["verify-receipt", path, *extra])
    out, err = capsys.readouterr()
    assert EMAIL not in out + err
    return code, out + err


def test_receipt_names_each_systems_ledger_entry(world):
    receipt = world["receipt"]
    seqs = {name: s["ledger"]["seq"] for name, s in receipt["systems"].items()}
    assert seqs == {"crm": 2, "mailing": 3} and receipt["proof"]["ledger_seqs"] == [2, 3]
    rows = {r["seq"]: r for r in world["ledger"].rows()}
    assert all(receipt["systems"][n]["ledger"]["entry_hash"] == rows[s]["entry_hash"] for n, s in seqs.items())
    assert receipt["systems"]["crm"]["ledger"]["count"] == 3  # deleted 1 + deleted_with_parent 2
    text = render_markdown(receipt)
    assert "## Ledger entries" in text and f"entry 2, verified, count 3, hash `{rows[2]['entry_hash']}`" in text
    assert EMAIL not in json.dumps(receipt) + text


def test_intact_receipt_passes(world, capsys):
    code, out = verify(capsys, write(world["tmp"], world["receipt"]))
    assert code == 0, out
    assert f"receipt {world['rid']} OK: ledger entries 2, 3 match" in out


def test_intact_receipt_passes_with_the_anchors(world, capsys, monkeypatch):
    world["ledger"].anchor(world["tmp"] / "anchors")
    monkeypatch.setenv("RETENTION_LEDGER_ANCHORS", str(world["tmp"] / "anchors"))
    code, out = verify(capsys, write(world["tmp"], world["receipt"]))
    assert code == 0 and "1 anchor(s) checked" in out


@pytest.mark.parametrize("edit", ["count", "collection_count", "removed_along", "hash", "seq", "request", "proof"])
def test_edited_receipt_fails(world, capsys, edit):
    receipt = copy.deepcopy(world["receipt"])
    crm = receipt["systems"]["crm"]
    if edit == "count":
        crm["ledger"]["count"] = 1
    elif edit == "collection_count":
        crm["collections"]["crm.contacts"]["deleted"] = 0  # "we deleted less" (or more) than the ledger says
    elif edit == "removed_along":
        crm["removed_along"]["objects.inquiry_attachments"] = 5
    elif edit == "hash":
        crm["ledger"]["entry_hash"] = "0" * 64
    elif edit == "seq":
        crm["ledger"]["seq"] = 3  # another system's entry
    elif edit == "request":
        receipt["request_id"] = "another-request"
    else:
        del crm["ledger"]  # a system claiming verified without naming its entry
    code, out = verify(capsys, write(world["tmp"], receipt))
    assert code == 1 and "FAILED" in out, out


def test_tampered_ledger_entry_fails_the_receipt(world, capsys):
    path = write(world["tmp"], world["receipt"])
    with world["engine"].begin() as conn:  # someone with database access but not the key
        conn.execute(sa.update(entries).where(entries.c.seq == 2).values(count=0))
    code, out = verify(capsys, path)
    assert code == 1 and "does not verify up to the receipt's entries" in out


def test_not_a_receipt_is_refused(world, capsys):
    path = world["tmp"] / "x.json"
    path.write_text("not json")
    code, out = verify(capsys, str(path))
    assert code == 2 and "not a JSON receipt" in out
    path.write_text(json.dumps({"request_id": "r", "systems": {}}))
    code, out = verify(capsys, str(path))
    assert code == 1 and "names no ledger entry" in out

"""erasure_intake's task bodies over PostgreSQL (CRM), MariaDB (mailing list) and moto's S3 server:
a batch erases exactly its subjects, every receipt verifies against the ledger, and the registry and
ledger statements of a batch do not grow with its size (set-based, issue 10 target 4)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import sqlalchemy as sa

from include.retention.demo import schema
from include.retention.ledger import entries
from include.retention.registry import Identities, NewRequest
from include.retention.requests.receipts import verify_receipt
from tests.conftest import ROOT, _unavailable

pytestmark = pytest.mark.integration


def _bench():
    spec = importlib.util.spec_from_file_location("bench_subjects", ROOT / "scripts" / "bench_subjects.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_subjects"] = module
    spec.loader.exec_module(module)
    return module


bench = _bench()
TABLES = (schema.contacts, schema.inquiries, schema.applicants, schema.support_tickets, schema.leads,
          schema.subscribers, schema.list_memberships, schema.campaign_events)


@pytest.fixture
def world(moto_url, monkeypatch):
    try:
        made = bench.make_world(moto_url, setenv=monkeypatch.setenv)
    except sa.exc.OperationalError as exc:
        _unavailable("PostgreSQL or MariaDB", exc)
    yield made
    made.close()


def rows_per_table(world) -> dict[str, int]:
    out = {}
    for t in TABLES:
        engine = world.mailing if t.name in schema.mailing_metadata.tables else world.crm
        with engine.connect() as conn:
            out[t.name] = conn.execute(sa.select(sa.func.count()).select_from(t)).scalar()
    return out


def erase_batch(world, addresses: list[str]) -> tuple[list[str], int]:
    """Register requests for these people, run one intake; (request ids, registry + ledger statements)."""
    world.registry.register_many([NewRequest(Identities(email=e)) for e in addresses])
    registry_db = world.ledger.engine.url.database
    with bench.Statements() as stats:
        ids = bench.intake(500, run_id=f"test_{len(addresses)}")
    assert len(ids) == len(addresses)
    return ids, stats.counts[registry_db]


def test_intake_batch_erases_its_subjects_only_with_flat_registry_statements(world):
    warm, small, big = bench.emails("warm", 1), bench.emails("small", 5), bench.emails("big", 50)
    people = warm + small + big
    keys = bench.add_people(world, people)
    look = bench.add_people(world, [bench.lookalike(e) for e in people])
    bystanders = bench.emails("bystander", 5)  # the same rows, no request
    bystander_keys = bench.add_people(world, bystanders)
    before = rows_per_table(world)

    erase_batch(world, warm)  # first run: the registry's and ledger's tables are created
    ids_small, statements_small = erase_batch(world, small)
    ids_big, statements_big = erase_batch(world, big)
    ids = ids_small + ids_big

    # a batch of 50 sends no more registry/ledger statements than a batch of 5, give or take a few
    print(f"registry+ledger statements: batch of 5: {statements_small}, batch of 50: {statements_big}")
    assert statements_big <= statements_small + 10, (statements_small, statements_big)

    # exactly the subjects' rows and objects are gone; lookalikes, bystanders and the demo's rows stay
    left = bench.left_of(world, people, keys)
    assert set(left.values()) == {0}, left
    n = len(people)
    full = {**{t.name: n for t in TABLES[:7]}, "campaign_events": 2 * n, "s3 object versions": 2 * n}
    assert bench.left_of(world, [bench.lookalike(e) for e in people], look) == full
    m = len(bystanders)
    assert bench.left_of(world, bystanders, bystander_keys) == {
        **{t.name: m for t in TABLES[:7]}, "campaign_events": 2 * m, "s3 object versions": 2 * m}
    after = rows_per_table(world)
    assert {t: before[t] - after[t] for t in before} == {
        **{t.name: n for t in TABLES[:7]}, "campaign_events": 2 * n}

    # one verified ledger entry per request and system; the chain and every receipt verify
    with world.ledger.engine.connect() as conn:
        recorded = conn.execute(sa.select(entries.c.request_id, entries.c.system, entries.c.count)
                                .where(entries.c.request_id.in_(ids), entries.c.outcome == "verified")).all()
    systems = ("crm", "mailing", "reporting")  # reporting: the nightly Parquet export, none of theirs in it
    assert sorted((r, s) for r, s, _ in recorded) == sorted((r, s) for r in ids for s in systems)
    # the contact and its 4 rows; the subscriber, its list membership and 2 campaign events
    assert {s: c for _, s, c in recorded} == {"crm": 5, "mailing": 4, "reporting": 0}
    assert world.ledger.verify(record=False).ok
    assert world.ledger.verify(record=False).unreconciled_count == 0  # every batch intent settled
    for rid in ids:
        receipt = world.registry.receipt(rid)
        assert receipt["status"] == "complete"
        assert verify_receipt(receipt, world.ledger).ok, rid
    assert world.registry.get_many(ids)[ids[0]]["status"] == "complete"
    assert all(world.registry.suppression.contains("email", e) for e in small + big)
    assert not world.registry.suppression.contains("email", bench.lookalike(big[0]))


def test_a_claimed_batch_holds_one_mode(world):
    """Queued erasures, restrictions and dry runs are never acted on as one batch in the first one's mode."""
    registry = world.registry
    erase = registry.register_many([NewRequest(Identities(email="e1@bench.example"))])
    restrict = registry.register_many([NewRequest(Identities(email="r1@bench.example"), mode="restrict")])
    dry = registry.register_many([NewRequest(Identities(email="d1@bench.example"), dry_run=True)])
    batches = [registry.claim_pending(500, "erasure_intake", f"r{i}") for i in range(4)]
    assert sorted(map(sorted, batches[:3])) == sorted(map(sorted, [erase, restrict, dry]))
    assert batches[3] == []

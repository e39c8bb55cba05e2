"""A resumed correction (an earlier attempt left a system's intent open) must not merge two people (review of
requests/correction.py): in a resumed system, a record carrying the new value and none of the person's identities is
the person's own only if the earlier attempt claimed it (it may have corrected it); any other such record is somebody
else's and refuses the correction, as it does in a system that is not resumed. Three engines (the CRM's database is
parametrized), through the task bodies of ``access_request``."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from include.retention.requests import correction as correction_module
from tests.integration.test_rectify_atomic import (  # noqa: F401 - world is a fixture
    NEW,
    act,
    dump,
    entries,
    execute,
    finalize,
    person_changed,
    request,
    world,
)

pytestmark = pytest.mark.integration


def _lose_mailing_ack(monkeypatch, world):
    """The mailing list's COMMIT goes through but its answer is lost (the connection drops right after)."""
    mailing_db = sa.engine.make_url(world["urls"].mailing).database
    real = correction_module._close

    def close(conn, *, commit):
        real(conn, commit=commit)
        if commit and conn.engine.url.database == mailing_db:
            raise sa.exc.OperationalError("COMMIT", {}, ConnectionError("lost"))

    monkeypatch.setattr(correction_module, "_close", close)
    return real


def test_somebody_new_with_the_new_value_in_a_resumed_system_refuses(world, monkeypatch):
    """Attempt 1 corrects the mailing list but its commit's answer is lost (intent open). Before the retry somebody
    else signs up with the new address. The retry must refuse (two people would share it), not correct the rest."""
    urls, ledger = world["urls"], world["ledger"]
    rid = request(world)
    real = _lose_mailing_ack(monkeypatch, world)
    with pytest.raises(Exception, match="a commit failed"):
        act(rid)
    monkeypatch.setattr(correction_module, "_close", real)
    assert [e["system"] for e in ledger.open_intents(request_id=rid)] == ["mailing"]
    execute(urls.mailing, f"INSERT INTO subscribers (id, email, note) VALUES (5, '{NEW}', 'someone new')")
    before = dump(urls)
    with pytest.raises(Exception, match="already an identity of 1 record"):
        act(rid)
    assert dump(urls) == before  # billing not corrected: nothing merged


def test_the_persons_own_corrected_record_is_recognised_on_resume(world, monkeypatch):
    """Attempt 1's mailing commit went through though its answer was lost: the person's row there carries the new
    value and no old one. The retry knows it as the row attempt 1 claimed, and finishes billing."""
    urls, ledger = world["urls"], world["ledger"]
    before = dump(urls)
    rid = request(world)
    real = _lose_mailing_ack(monkeypatch, world)
    with pytest.raises(Exception, match="a commit failed"):
        act(rid)
    monkeypatch.setattr(correction_module, "_close", real)
    assert act(rid) == {"changed": {"mailing": 0, "billing": 1}}
    assert finalize(rid)["status"] == "complete"
    person_changed(before, dump(urls))
    assert not ledger.open_intents(request_id=rid) and ledger.verify(record=False).ok
    assert ("mailing", "done", 0) in entries(world, rid)

"""Receipts: what they say per system, exceptions and what was searched; no identity anywhere."""

from __future__ import annotations

import datetime as dt
import json

from hypothesis import given
from hypothesis import strategies as st

from include.retention.policy import parse_policy
from include.retention.requests.receipts import build_receipt, collection_lines, render_markdown
from tests.policy_text import crm_policy

REQUEST = {"request_id": "r-1", "mode": "erase", "dry_run": False, "status": "complete",
           "received_at": dt.datetime(2026, 11, 1, 9, 0), "due_at": dt.datetime(2026, 12, 1, 9, 0),
           "completed_at": dt.datetime(2026, 11, 1, 9, 5)}
SYSTEMS = {
    "crm": {"status": "recorded", "attempts": 1, "verified_at": dt.datetime(2026, 11, 1, 9, 4),
            "counts": {"collections": {"crm.contacts": {"deleted": 1, "exception:legal_hold": 2},
                                       "crm.inquiries": {"deleted_with_parent": 3}},
                       "removed_along": {"objects.cvs": 1, "suppression_list": 1},
                       "searched": {"crm.contacts": ["email", "phone"], "crm.social_messages": ["social_handle"]}}},
    "objects": {"status": "failed", "attempts": 3, "counts": {}},
}


def test_receipt_lists_counts_exceptions_and_searched_kinds():
    receipt = build_receipt(REQUEST, SYSTEMS, ["crm", "objects", "mailing"], "d" * 64)
    assert receipt["systems"]["crm"]["verified"] is True
    assert receipt["systems"]["objects"]["verified"] is False
    assert receipt["systems"]["mailing"]["status"] == "not started"
    assert receipt["exceptions"] == [{"system": "crm", "collection": "crm.contacts", "reason": "legal_hold",
                                      "items": 2, "handled_as": "kept and restricted (GDPR Art. 17(3))"}]
    assert receipt["systems"]["crm"]["searched"]["crm.social_messages"] == ["social_handle"]
    assert receipt["verification"].startswith("not every system verified")
    assert receipt["received_at"] == "2026-11-01T09:00:00Z"
    json.dumps(receipt)  # JSON-ready


def test_complete_receipt_says_rescanned_and_markdown_names_everything_but_the_person():
    systems = {"crm": SYSTEMS["crm"]}
    receipt = build_receipt(REQUEST, systems, ["crm"], "d" * 64)
    assert receipt["verification"].startswith("every system re-scanned")
    text = render_markdown(receipt)
    assert "# Receipt for request r-1" in text
    assert "| crm | recorded | crm.contacts | deleted 1; kept and restricted 2 (legal_hold) |" in text
    assert "| crm | recorded | crm.inquiries | deleted 3 with the rows they belong to |" in text
    assert "| crm | recorded | objects.cvs | deleted 1 with the rows they belong to |" in text
    assert "| crm | recorded | suppression_list | 1 keyed digest(s) kept, no plaintext |" in text
    assert "- crm / crm.contacts: 2 item(s), legal_hold" in text
    assert "- crm.social_messages: social_handle" in text
    assert "@" not in text


def test_dry_run_receipt():
    receipt = build_receipt({**REQUEST, "dry_run": True, "status": "complete"}, {"crm": SYSTEMS["crm"]}, ["crm"],
                            "d" * 64)
    assert receipt["verification"] == "dry run: nothing was changed"
    assert "(dry run)" in render_markdown(receipt)


def test_markdown_lists_the_recipients_told():
    receipt = build_receipt(REQUEST, {"crm": SYSTEMS["crm"]}, ["crm"], "d" * 64)
    receipt["recipients"] = {"hosting": {"channel": "email", "status": "sent", "note": None},
                             "it_maintenance": {"channel": "manual", "status": "waived", "note": "recorded, not sent"}}
    text = render_markdown(receipt)
    assert "## Recipients told" in text
    assert "- hosting: sent via email" in text and "- it_maintenance: waived via manual (recorded, not sent)" in text


# An erasure of one subscriber as ``act()`` records it: the store counts the six campaign events before the delete
# (deleted_with_parent, per request) and the cascade reports the rows it really deleted (removed_along, the
# request's totals): the same six records.
MAILING = {"status": "recorded", "attempts": 1,
           "counts": {"collections": {"mailing.subscribers": {"deleted": 1},
                                      "mailing.campaign_events": {"deleted_with_parent": 6},
                                      "mailing.list_memberships": {"deleted_with_parent": 2}},
                      "removed_along": {"mailing.campaign_events": 6, "mailing.list_memberships": 2,
                                        "suppression_list": 1}}}


def test_a_cascade_is_counted_once():
    receipt = build_receipt(REQUEST, {"mailing": MAILING}, ["mailing"], "d" * 64)
    text = render_markdown(receipt)
    lines = [line for line in text.splitlines() if "mailing.campaign_events" in line]
    assert lines == ["| mailing | recorded | mailing.campaign_events | deleted 6 with the rows they belong to |"]
    assert receipt["systems"]["mailing"]["records_left"] == {
        "mailing.subscribers": 1, "mailing.campaign_events": 6, "mailing.list_memberships": 2}
    assert "removed with their rows" not in text and "deleted_with_parent" not in text
    # what verify_receipt compares with the ledger entry is unchanged
    assert receipt["systems"]["mailing"]["collections"] == MAILING["counts"]["collections"]
    assert receipt["systems"]["mailing"]["removed_along"] == MAILING["counts"]["removed_along"]


def test_the_real_cascade_count_wins_and_a_batch_uses_the_count_before():
    # a batch of requests carries no removed_along: the count before the delete is the line's
    batch = {**MAILING, "counts": {**MAILING["counts"], "removed_along": {}}}
    assert collection_lines(build_receipt(REQUEST, {"mailing": batch}, ["mailing"], "d" * 64)["systems"]["mailing"]
                            )["mailing.campaign_events"] == {"with_parent": 6}
    # one held event kept its subscriber's sibling rows: the store's real count (5) is what left
    fewer = {**MAILING, "counts": {**MAILING["counts"], "removed_along": {"mailing.campaign_events": 5}}}
    lines = collection_lines(build_receipt(REQUEST, {"mailing": fewer}, ["mailing"], "d" * 64)["systems"]["mailing"])
    assert lines["mailing.campaign_events"] == {"with_parent": 5}
    # matched rows and cascaded rows of one collection are different records: one line, both counts
    both = {"collections": {"crm.inquiries": {"deleted": 2, "deleted_with_parent": 3}},
            "removed_along": {"crm.inquiries": 3, "crm.notes:nullified": 4,
                              "crm.inquiries:deleted:changed_meanwhile": 1}}
    text = render_markdown(build_receipt(REQUEST, {"crm": {"status": "recorded", "counts": both}}, ["crm"], "d" * 64))
    assert ("| crm | recorded | crm.inquiries | deleted 5 (2 matched, 3 with the rows they belong to); left alone 1 "
            "(changed before the statement ran) |") in text
    assert "| crm | recorded | crm.notes | kept 4, reference cleared |" in text


BACKUPS = crm_policy("""\
    contacts:
      table: contacts
      primary_key: id
      columns: [id, email, created_at]
      identities: {email: email}
      rules: [{name: old, start: created_at, action: delete, period: P1Y}]
    """, mailing="""\
    subscribers:
      table: subscribers
      primary_key: id
      columns: [id, email, created_at]
      identities: {email: email}
      rules: [{name: old, start: created_at, action: delete, period: P1Y}]
    """).replace("    connection: crm_db\n",
                 "    connection: crm_db\n    backups: {retention: P35D, where: nightly dumps}\n")


def test_receipt_states_when_backup_copies_expire():
    policy = parse_policy(BACKUPS)
    systems = {"crm": SYSTEMS["crm"], "mailing": MAILING}
    receipt = build_receipt(REQUEST, systems, ["crm", "mailing"], "d" * 64, policy=policy)
    # completed 2026-11-01 09:05 + P35D
    assert receipt["backups"][0] == {
        "system": "crm", "declared": True, "retention": "P35D", "expires_by": "2026-12-06", "restore": "replay",
        "statement": "copies in backups of crm (nightly dumps) expire by 2026-12-06 (completion + 35 days); a "
                     "restore replays the completed erasures before use"}
    assert receipt["backups"][1]["statement"] == "backups of mailing: not declared in the data map"
    text = render_markdown(receipt)
    assert "## Backups" in text and "- copies in backups of crm (nightly dumps) expire by 2026-12-06" in text
    # an open request: no date yet; a dry run or another mode: no statement (nothing was erased)
    open_ = build_receipt({**REQUEST, "completed_at": None, "status": "incomplete"}, systems, ["crm"], "d" * 64,
                          policy=policy)
    assert open_["backups"][0]["statement"].startswith("copies in backups of crm (nightly dumps) expire 35 days "
                                                       "after the request completes")
    for other in ({**REQUEST, "dry_run": True}, {**REQUEST, "mode": "restrict"}):
        assert build_receipt(other, systems, ["crm"], "d" * 64, policy=policy)["backups"] == []
    assert "## Backups" not in render_markdown(build_receipt(REQUEST, systems, ["crm"], "d" * 64))


def test_objects_removed_along_bring_their_systems_backups():
    from include.retention.policy import load_policy
    from tests.conftest import ROOT

    policy = load_policy(ROOT / "config" / "policy.yaml")
    receipt = build_receipt(REQUEST, {"crm": SYSTEMS["crm"]}, ["crm"], "d" * 64, policy=policy)
    assert [(b["system"], b["expires_by"], b["restore"]) for b in receipt["backups"]] == [
        ("crm", "2026-12-06", "replay"), ("objects", "2026-12-01", "sweep")]  # CVs went with their rows


REFS = ["mailing.subscribers", "mailing.campaign_events", "mailing.list_memberships", "objects.cvs"]


@given(st.dictionaries(st.sampled_from(REFS), st.tuples(st.integers(0, 50), st.integers(0, 50)), max_size=4),
       st.dictionaries(st.sampled_from(REFS), st.integers(0, 50), max_size=4))
def test_each_collection_is_one_line_and_each_record_counted_once(per, along):
    collections = {ref: {k: n for k, n in (("deleted", d), ("deleted_with_parent", w)) if n}
                   for ref, (d, w) in per.items()}
    system = {"status": "recorded", "counts": {"collections": collections, "removed_along": along}}
    receipt = build_receipt(REQUEST, {"mailing": system}, ["mailing"], "d" * 64)
    text = render_markdown(receipt)
    for ref in set(collections) | set(along):
        assert sum(f"| {ref} |" in line for line in text.splitlines()) == 1, ref
    # a collection's cascade is the store's real count where it reported one, else the count before the delete
    want = {ref: collections.get(ref, {}).get("deleted", 0)
            + (along[ref] if ref in along else collections.get(ref, {}).get("deleted_with_parent", 0))
            for ref in set(collections) | set(along)}
    assert receipt["systems"]["mailing"]["records_left"] == {ref: n for ref, n in want.items() if n}


def test_no_backup_statement_for_a_system_where_nothing_changed():
    policy = parse_policy(BACKUPS)
    kept_only = {"status": "recorded", "counts": {"collections": {"crm.contacts": {"exception:legal_hold": 1}}}}
    receipt = build_receipt(REQUEST, {"crm": kept_only, "mailing": MAILING}, ["crm", "mailing"], "d" * 64,
                            policy=policy)
    assert [b["system"] for b in receipt["backups"]] == ["mailing"]


def test_receipt_says_per_collection_whether_it_was_searched_by_index_or_read_in_full():
    policy = parse_policy("""version: 1
systems:
  crm:
    kind: sql
    connection: crm_db
    collections:
      contacts:
        table: contacts
        primary_key: id
        columns: [id, email, phone]
        identities: {email: {column: email, lookup: indexed}, phone: {column: phone, lookup: indexed}}
      social_messages:
        table: social_messages
        primary_key: id
        columns: [id, handle, email]
        identities: {social_handle: handle, email: {column: email, lookup: indexed}}
""", source="t.yaml")
    receipt = build_receipt(REQUEST, {"crm": SYSTEMS["crm"]}, ["crm"], "d" * 64, policy=policy)
    # one unindexed field is enough for a full read (ADR 0022: a collection is indexed when all its fields are)
    assert receipt["systems"]["crm"]["lookup"] == {"crm.contacts": "index", "crm.social_messages": "full read"}
    text = render_markdown(receipt)
    assert "- crm.contacts: email, phone (by index)" in text
    assert "- crm.social_messages: social_handle (read in full)" in text
    assert "lookup" not in build_receipt(REQUEST, {"crm": SYSTEMS["crm"]}, ["crm"], "d" * 64)["systems"]["crm"]


def test_a_rectify_receipt_does_not_claim_a_kind_the_identity_check_dropped():
    from include.retention.requests.receipts import with_request_type

    req = {**REQUEST, "mode": "rectify"}
    receipt = build_receipt(req, {"crm": SYSTEMS["crm"]}, ["crm"], "d" * 64)
    receipt["identity_check"] = {"decision": "linked_only", "reason_recorded": True}
    receipt["person"] = {"proven": "phone", "identities": {}, "counts": {}, "dropped": ["email"]}
    details = {"new_values": {"email": "x", "phone": "y"}}
    with_request_type(receipt, req, details)
    assert receipt["rectified_kinds"] == ["phone"]
    assert list(receipt["not_rectified"]) == ["email"]
    text = render_markdown(receipt)
    assert "- corrected: phone" in text and "- email: dropped at the identity check" in text
    receipt = build_receipt(req, {"crm": SYSTEMS["crm"]}, ["crm"], "d" * 64)
    receipt["identity_check"] = {"decision": "verified", "reason_recorded": False}
    with_request_type(receipt, req, details)  # nothing dropped: both corrected, no not_rectified
    assert receipt["rectified_kinds"] == ["email", "phone"] and "not_rectified" not in receipt

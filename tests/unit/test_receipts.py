"""Receipts: what they say per system, exceptions and what was searched; no identity anywhere."""

from __future__ import annotations

import datetime as dt
import json

from include.retention.receipts import build_receipt, render_markdown

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
    assert "| crm | recorded | crm.contacts | deleted 1, exception:legal_hold 2 |" in text
    assert "| crm | recorded | objects.cvs | removed with their rows 1 |" in text
    assert "digests kept (suppression) 1" in text
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

"""RETENTION_VERIFY_IDENTITY: only an explicit ``none`` switches the identity check off; a variable holding nothing
but blanks or commas counts as unset (every request type checked), as an empty one does (settings.py)."""

from __future__ import annotations

import pytest

from include.retention.errors import RetentionError
from include.retention.requests.identity_decisions import DEFAULT_VERIFY, verify_modes


@pytest.mark.parametrize("raw", ["", " ", "  ,  ", ",", "\t"])
def test_blank_counts_as_unset(monkeypatch, raw):
    monkeypatch.setenv("RETENTION_VERIFY_IDENTITY", raw)
    assert verify_modes() == set(DEFAULT_VERIFY)


def test_unset_none_and_lists(monkeypatch):
    monkeypatch.delenv("RETENTION_VERIFY_IDENTITY", raising=False)
    assert verify_modes() == set(DEFAULT_VERIFY)
    monkeypatch.setenv("RETENTION_VERIFY_IDENTITY", " none ")
    assert verify_modes() == set()
    monkeypatch.setenv("RETENTION_VERIFY_IDENTITY", "erase, access")
    assert verify_modes() == {"erase", "access"}
    monkeypatch.setenv("RETENTION_VERIFY_IDENTITY", "erase,acess")  # a typo never switches a check off
    with pytest.raises(RetentionError, match="unknown request type"):
        verify_modes()

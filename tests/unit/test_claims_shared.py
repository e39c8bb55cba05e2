"""Claims keep one request-id set per distinct combination, not one per item (bench_access: bounded memory)."""

from __future__ import annotations

from include.retention.stores.base import Claims


def test_items_of_the_same_requests_share_one_set():
    claims = Claims()
    for key in range(1000):
        claims.add(key, "r1")
    claims.add(5, "r2")
    claims.add(6, "r2")
    claims.add(6, "r2")  # again: nothing changes
    assert claims[0] == {"r1"} and claims[5] == claims[6] == {"r1", "r2"}
    assert len({id(v) for v in claims.values()}) == 2  # 1,000 items, two distinct sets
    assert [k for k, rids in claims.items() if "r2" in rids] == [5, 6]

"""The per-process dislike cache: union semantics, completeness, LRU bounds by users and items."""

from __future__ import annotations

from serving.usercache import DislikeCache


def test_reads_and_writes_merge_and_reads_make_an_entry_complete() -> None:
    cache = DislikeCache(max_users=10, max_items=100)
    cache.learn("u", ["a"], complete=False)  # this process wrote a dislike
    entry = cache.get("u")
    assert entry is not None and entry.items == {"a"} and not entry.complete
    # A read that started before the write may not contain it: union, never replace.
    cache.learn("u", ["b", "c"], complete=True)
    entry = cache.get("u")
    assert entry is not None and entry.items == {"a", "b", "c"} and entry.complete
    cache.learn("u", [], complete=False)
    assert cache.get("u").complete  # type: ignore[union-attr]
    assert cache.items == 3 and cache.get("nobody") is None


def test_least_recently_used_users_go_first() -> None:
    cache = DislikeCache(max_users=3, max_items=100)
    for user in ("u1", "u2", "u3"):
        cache.learn(user, [f"{user}-x"], complete=True)
    assert cache.get("u1") is not None  # u1 is now the most recent
    cache.learn("u4", ["y"], complete=True)
    assert cache.get("u2") is None and len(cache) == 3
    assert {u for u in ("u1", "u3", "u4") if cache.get(u)} == {"u1", "u3", "u4"}
    assert cache.evictions == 1


def test_the_item_budget_bounds_memory_and_an_oversized_user_is_not_cached() -> None:
    cache = DislikeCache(max_users=100, max_items=5)
    cache.learn("a", ["1", "2"], complete=True)
    cache.learn("b", ["3", "4"], complete=True)
    cache.learn("c", ["5", "6"], complete=True)  # 6 items > 5: the oldest user goes
    assert cache.get("a") is None and cache.items == 4
    cache.learn("huge", [str(i) for i in range(6)], complete=True)
    assert cache.get("huge") is None and cache.items == 4 and len(cache) == 2


def test_size_zero_disables_the_cache() -> None:
    cache = DislikeCache(max_users=0, max_items=100)
    cache.learn("u", ["a"], complete=True)
    assert cache.get("u") is None and len(cache) == 0

"""The near-duplicate index on its own: signatures, look-ups by group and time, segments, forgetting."""
import numpy as np

from triage.similarity import MinHasher, NearDuplicateIndex, normalise, similarity

BASE = "阴平镇金寺村东头的化工厂每天晚上偷排污水，河里的鱼都死了，气味刺鼻，请尽快处理"


def test_signatures_estimate_jaccard_similarity():
    hasher = MinHasher()
    assert similarity(hasher.signature(BASE), hasher.signature(BASE)) == 1.0
    # numbers and punctuation do not count: people write their own
    assert normalise("第12号：路灯，不亮！") == "第0号路灯不亮"
    assert similarity(hasher.signature("第1号路灯不亮"), hasher.signature("第2号 路灯不亮。")) == 1.0
    unrelated = hasher.signature("小区物业费上涨太多，业主委员会不同意，请住建局调查")
    assert similarity(hasher.signature(BASE), unrelated) < 0.1
    assert hasher.signature("，。！") is None
    batch, ok = hasher.signatures([BASE, "。", "路灯不亮"])
    assert list(ok) == [True, False, True] and (batch[0] == hasher.signature(BASE)).all()


def test_the_index_finds_near_duplicates_in_a_group_and_window():
    index = NearDuplicateIndex()
    index.add("a", BASE, "town-1", 100.0)
    index.add("b", BASE + "，谢谢", "town-1", 200.0)
    index.add("c", BASE, "town-2", 200.0)
    index.add("d", "小区物业费上涨太多，业主委员会不同意", "town-1", 200.0)
    assert not index.add("a", "again", "town-1", 300.0)  # a key is indexed once
    assert {k for k, _ in index.query(BASE, 0.5)} == {"a", "b", "c"}
    assert {k for k, _ in index.query(BASE, 0.5, group="town-1")} == {"a", "b"}
    assert [k for k, _ in index.query(BASE, 0.5, group="town-1", since=150.0)] == ["b"]
    assert index.query(BASE, 0.5, group="town-9") == []
    assert [k for k, _ in index.query(BASE, 0.5, group="town-1", exclude="a")] == ["b"]


def test_segments_and_merges_keep_every_entry_findable():
    rng = np.random.default_rng(3)
    index = NearDuplicateIndex(memtable_entries=64)
    words = list("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所")
    texts = ["".join(rng.choice(words, size=60)) for _ in range(1000)]
    for n, text in enumerate(texts):
        index.add(n, text, None, float(n))
    assert len(index._segments) < 10  # merged, not one per flush
    for n in (0, 10, 500, 999):
        assert index.query(texts[n], 0.9)[0] == (n, 1.0)


def test_forgotten_entries_are_not_found_and_compaction_keeps_the_rest():
    index = NearDuplicateIndex(memtable_entries=4)
    for n in range(20):
        index.add(n, f"{BASE}{'甲乙丙丁戊己庚辛壬癸'[n % 10]}{n}号", None, float(n))
    assert index.expire(10.0) == 10 and len(index) == 10
    assert all(k >= 10 for k, _ in index.query(BASE, 0.5))
    index.compact()
    assert len(index) == 10 and index.dead == 0
    assert {k for k, _ in index.query(BASE, 0.5)} == set(range(10, 20))


def _flood(index, text, count, group, first_at, step=1.0):
    """``count`` copies of ``text`` in ``group`` from ``first_at`` on."""
    for n in range(count):
        index.add(f"flood-{group}-{first_at}-{n}", text, group, first_at + n * step)


def test_a_flood_of_copies_later_does_not_hide_an_earlier_near_duplicate():
    # 300 copies of the same text a day later: with one bucket for all time, the 64 newest of each
    # bucket are all copies and the earlier appeal is lost; per time window it is still found
    for window in (3600.0, None):
        index = NearDuplicateIndex(memtable_entries=128, window_seconds=window)
        index.add("first", BASE, "town-1", 0.0)
        _flood(index, BASE, 300, "town-1", 86400.0)
        found = {k for k, _ in index.query(BASE, 0.5)}
        assert ("first" in found) == (window is not None), window
        # a flood is capped, not returned whole: a bucket gives its newest entries only
        assert len(found) < 300


def test_a_flood_in_one_town_does_not_hide_another_towns_near_duplicate():
    index = NearDuplicateIndex(memtable_entries=128)
    index.add("town-2-first", BASE, "town-2", 10.0)
    _flood(index, BASE, 300, "town-1", 20.0)
    assert [k for k, _ in index.query(BASE, 0.5, group="town-2")] == ["town-2-first"]
    in_town_1 = index.query(BASE, 0.5, group="town-1", since=0.0)
    assert in_town_1 and all(k.startswith("flood-town-1") for k, _ in in_town_1)


def test_a_query_only_looks_at_the_windows_it_asks_about_and_expiry_drops_old_windows():
    index = NearDuplicateIndex(window_seconds=3600.0)
    index.add("old", BASE, None, 100.0)
    index.add("new", BASE + "，谢谢", None, 4 * 3600.0 + 5)
    assert sorted(index._windows) == [0, 4]
    assert [k for k, _ in index.query(BASE, 0.5, since=4 * 3600.0)] == ["new"]
    assert {k for k, _ in index.query(BASE, 0.5)} == {"old", "new"}
    index.expire(3600.0)
    assert sorted(index._windows) == [4] and [k for k, _ in index.query(BASE, 0.5)] == ["new"]
    index.compact()
    assert [k for k, _ in index.query(BASE, 0.5)] == ["new"] and index.window_seconds == 3600.0


def test_an_appeal_index_hashes_a_batch_as_it_hashes_each_appeal():
    from triage.similarity import AppealIndex
    index = AppealIndex()
    messages = [("路灯不亮", BASE), ("。", "，"), ("物业", "小区物业费上涨太多")]
    batch = index.signatures(messages)
    assert batch[1] is None and index.signature(*messages[1]) is None
    for (title, content), signature in zip(messages[::2], batch[::2]):
        assert (signature == index.signature(title, content)).all()
    assert index.signatures([]) == []

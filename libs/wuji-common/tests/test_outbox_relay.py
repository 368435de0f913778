"""The outbox relay against the real broker and both databases: events leave only when the broker
confirmed and routed them; nothing is lost when no queue is bound yet; duplicates are dropped."""
import json
import time

from kombu import Connection
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select

from wuji_common.db import UnitOfWork, add_reliability_tables, make_engine, session_factory
from wuji_common.relay import BatchPublisher, OutboxRelay
from wuji_common.testing_helpers import EventTap

metadata = MetaData()
notes = Table("notes", metadata, Column("id", Integer, primary_key=True), Column("text", String(50)))
outbox, processed, _ = add_reliability_tables(metadata)


def setup(db_url, amqp_uri):
    engine = make_engine(db_url)
    metadata.create_all(engine)
    uow = lambda: UnitOfWork(session_factory(engine), metadata, "intake")  # noqa: E731
    relay = OutboxRelay(engine, outbox, BatchPublisher(amqp_uri), batch_size=100)
    return engine, uow, relay


def rated(uow, n):
    with uow() as u:
        u.session.execute(notes.insert().values(text=f"note {n}"))
        u.emit("appeal_rated", f"YC{n}", {"satisfaction": "satisfied", "rated_at": "2026-11-25T00:00:00+00:00"})
        u.commit()


def handing(engine, handoff_seconds):
    """A unit-of-work factory whose commits hand their events over (into the list returned too),
    as the service's Database does."""
    handed = []
    return handed, lambda: UnitOfWork(session_factory(engine), metadata, "intake", on_commit=handed.extend,
                                      handoff_seconds=handoff_seconds)


def unpublished(engine):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).where(outbox.c.published_at.is_(None))).scalar()


def test_rollback_leaves_neither_data_nor_event(db_url, amqp_uri):
    engine, uow, _ = setup(db_url, amqp_uri)
    with uow() as u:
        u.session.execute(notes.insert().values(text="x"))
        u.emit("appeal_rated", "YC1", {"satisfaction": "satisfied", "rated_at": "2026-11-25T10:00:00+00:00"})
        # no commit: an exception or a return without commit rolls both back
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(notes)).scalar() == 0
        assert conn.execute(select(func.count()).select_from(outbox)).scalar() == 0


def test_relay_publishes_in_batches_and_keeps_unroutable_events(db_url, amqp_uri):
    engine, uow, relay = setup(db_url, amqp_uri)
    with Connection(amqp_uri) as conn:  # make sure nothing is bound from an earlier test
        conn.default_channel.exchange_delete("intake.events")
    for n in range(250):
        rated(uow, n)
    # nothing bound to intake.events/appeal_rated yet: the broker returns every event, none is marked
    assert relay.publish_pending() == 0
    assert unpublished(engine) == 250
    tap = EventTap(amqp_uri, ("intake", "appeal_rated"))
    try:
        with engine.begin() as conn:  # skip the pause the relay gives unrouted rows
            conn.execute(outbox.update().values(claimed_until=None))
        published = 0
        while (n := relay.publish_pending()):
            published += n
        assert published == 250 and unpublished(engine) == 0
        events = tap.wait_for(lambda evs: len(evs) >= 250)
        assert sorted(int(e["case_no"][2:]) for e in events) == list(range(250))
        assert all(e["type"] == "appeal_rated" and e["source"] == "intake" for e in events)
    finally:
        tap.close()
        relay.publisher.close()


def test_first_delivery_is_recorded_with_the_effect(db_url, amqp_uri):
    engine, uow, _ = setup(db_url, amqp_uri)
    for _ in range(2):
        with uow() as u:
            if u.first_delivery("triage.on_appeal_received", "e-1"):
                u.session.execute(notes.insert().values(text="effect"))
            u.commit()
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(notes)).scalar() == 1


def test_first_deliveries_of_a_batch_keep_order_and_drop_what_was_seen(db_url, amqp_uri):
    _, uow, _ = setup(db_url, amqp_uri)
    consumer = "metrics.on_order_dispatched"
    with uow() as u:
        assert u.first_delivery(consumer, "e-2")
        u.commit()
    batch = [{"event_id": i} for i in ("e-3", "e-2", "e-4", "e-3")]
    with uow() as u:
        assert [e["event_id"] for e in u.first_deliveries(consumer, batch)] == ["e-3", "e-4"]
        u.commit()
    with uow() as u:  # another consumer has seen none of them
        assert [e["event_id"] for e in u.first_deliveries("notify.on_order_dispatched", batch)] == \
            ["e-3", "e-2", "e-4"]
        assert u.first_deliveries(consumer, batch) == []


def test_a_concurrent_duplicate_is_handled_once(db_url, amqp_uri):
    """Two transactions get the same event at once: the second waits for the first and skips it
    (PostgreSQL), or cannot start writing until the first is done (SQLite)."""
    import threading
    engine, uow, _ = setup(db_url, amqp_uri)
    first, second = uow(), uow()
    with first:
        assert first.first_delivery("triage.on_appeal_received", "e-9")
        first.session.execute(notes.insert().values(text="effect"))
        outcome = []
        if db_url.startswith("sqlite"):
            first.commit()
        else:
            worker = threading.Thread(target=lambda: outcome.append(
                _record_in(second, "triage.on_appeal_received", "e-9")))
            worker.start()
            worker.join(0.5)
            assert worker.is_alive()  # waiting for the first transaction's outcome
            first.commit()
            worker.join(10)
            assert outcome == [False]
    assert _record_in(uow(), "triage.on_appeal_received", "e-9") is False
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(notes)).scalar() == 1


def _record_in(unit_of_work, consumer, event_id):
    with unit_of_work as u:
        seen_first = u.first_delivery(consumer, event_id)
        u.commit()
        return seen_first


def test_idempotency_key_recalls_the_first_result(db_url, amqp_uri):
    _, uow, _ = setup(db_url, amqp_uri)
    with uow() as u:
        assert u.recall("op", "k") is None
        u.remember("op", "k", {"order_no": "GD1"})
        u.commit()
    with uow() as u:
        assert u.recall("op", "k") == {"order_no": "GD1"}
        assert u.recall("op", None) is None


def test_two_relays_claim_different_rows(db_url, amqp_uri):
    """A second instance's relay does not take the rows the first has claimed (until the claim
    expires): each batch is published by one relay."""
    engine, uow, first = setup(db_url, amqp_uri)
    second = OutboxRelay(engine, outbox, BatchPublisher(amqp_uri), batch_size=100)
    for n in range(150):
        rated(uow, n)
    a, b = first._claim(), second._claim()
    assert len(a) == 100 and len(b) == 50
    assert [r.id for r in a] == sorted(r.id for r in a) and not {r.id for r in a} & {r.id for r in b}
    assert second._claim() == []


def test_events_handed_over_at_commit_are_published_without_a_claim_and_rescued_if_never_published(
        db_url, amqp_uri):
    """A unit of work that hands its events to its relay writes their rows claimed for it: another
    relay's poll leaves them alone; the relay publishes and marks them; and events whose process
    died before publishing are published by any relay once the claim has run out."""
    engine, _, relay = setup(db_url, amqp_uri)
    handed, uow = handing(engine, handoff_seconds=0.5)
    tap = EventTap(amqp_uri, ("intake", "appeal_rated"))
    try:
        for n in range(3):
            rated(uow, n)
        assert [e["case_no"] for e in handed] == ["YC0", "YC1", "YC2"]
        assert relay.publish_pending() == 0 and unpublished(engine) == 3   # claimed by their writer
        assert relay.publish_handed(handed[:2]) == 2 and unpublished(engine) == 1
        assert {e["case_no"] for e in tap.wait_for(lambda evs: len(evs) >= 2)} == {"YC0", "YC1"}
        # YC2's process "died" before publishing it: once its claim has run out, a poll sends it
        time.sleep(0.6)
        assert relay.publish_pending() == 1 and unpublished(engine) == 0
        assert sorted(e["case_no"] for e in tap.wait_for(lambda evs: len(evs) >= 3)) == ["YC0", "YC1", "YC2"]
    finally:
        tap.close()
        relay.publisher.close()


def test_handed_events_are_published_at_once_and_marked_together_later(db_url, amqp_uri):
    """With ``mark_every``, a publish of handed events does not wait for its mark: the events reach
    the broker at once, and the marks of several publishes are written together once it is due. A
    poll meanwhile leaves the published rows alone (still claimed by their writer)."""
    engine, _, _ = setup(db_url, amqp_uri)
    relay = OutboxRelay(engine, outbox, BatchPublisher(amqp_uri), batch_size=100, mark_every=0.3)
    handed, uow = handing(engine, handoff_seconds=5)
    tap = EventTap(amqp_uri, ("intake", "appeal_rated"))
    try:
        for n in range(4):
            rated(uow, n)
        assert relay.publish_handed(handed[:2]) == 2 and relay.publish_handed(handed[2:]) == 2
        assert len(tap.wait_for(lambda evs: len(evs) >= 4)) == 4
        assert unpublished(engine) == 4 and relay.unmarked == 4 and 0 < relay.marks_due_in() <= 0.3
        assert relay.publish_pending() == 0   # claimed: not published twice
        time.sleep(0.35)
        assert relay.marks_due_in() == 0
        relay.mark_published()
        assert unpublished(engine) == 0 and relay.unmarked == 0 and relay.marks_due_in() is None
    finally:
        tap.close()
        relay.publisher.close()

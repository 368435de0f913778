"""The batch event handler on the real broker: events arrive in batches, each is applied once even
when delivered twice, and a poison event in a batch goes to retry and dead-letter alone while the
others of its batch are applied."""
import json
import time

import pytest
from kombu import Connection
from nameko.containers import ServiceContainer
from sqlalchemy import Column, MetaData, String, Table, func, insert, select

from wuji_common.db import UnitOfWork, add_reliability_tables, make_engine, session_factory
from wuji_common.dependencies import Database
from wuji_common.entrypoints import batch_event_handler
from wuji_common.events import make_event
from wuji_common.testing import own_vhost
from nameko.standalone.events import get_event_exchange

metadata = MetaData()
seen = Table("seen", metadata, Column("case_no", String(40), primary_key=True))
add_reliability_tables(metadata)
POISON = "YC-POISON"
calls = []  # batch sizes handed to the handler, in order


class Listener:
    name = "listener"
    uow = Database(metadata)

    @batch_event_handler("intake", "appeal_rated")
    def on_appeal_rated(self, envelopes):
        calls.append(len(envelopes))
        with self.uow() as uow:
            for envelope in uow.first_deliveries("listener.on_appeal_rated", envelopes):
                if envelope["case_no"] == POISON:
                    raise ValueError("cannot digest this one")
                uow.session.execute(insert(seen).values(case_no=envelope["case_no"]))
            uow.commit()


@pytest.fixture
def vhost_uri():
    with own_vhost("wuji-test-batch") as uri:
        yield uri


@pytest.fixture
def listener(db_url, vhost_uri):
    engine = make_engine(db_url)
    metadata.create_all(engine)
    container = ServiceContainer(Listener, {
        "AMQP_URI": vhost_uri, "DB_URL": db_url, "EVENT_RETRY_DELAYS": [0.2, 0.2],
        "EVENT_BATCH_SIZE": 50, "EVENT_BATCH_LINGER_MS": 20})
    container.start()
    calls.clear()
    yield engine, vhost_uri
    container.stop()
    engine.dispose()


def rated(case_no):
    return make_event("appeal_rated", case_no, {"satisfaction": "satisfied",
                                                "rated_at": "2026-11-25T10:00:00+00:00"}, source="intake")


def publish_all(uri, envelopes):
    """Published back to back on one connection, as a relay publishes a batch."""
    exchange = get_event_exchange("intake", {})
    with Connection(uri) as conn:
        producer = conn.Producer(serializer="json")
        for envelope in envelopes:
            producer.publish(envelope, exchange=exchange, routing_key="appeal_rated", declare=[exchange],
                             delivery_mode=2)


def applied(engine):
    with engine.connect() as conn:
        return set(conn.execute(select(seen.c.case_no)).scalars())


def wait_for(condition, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_events_arrive_in_batches_and_each_is_applied_once(listener):
    engine, uri = listener
    events = [rated(f"YC{n:04d}") for n in range(200)]
    publish_all(uri, events + events[:30])  # the first 30 delivered twice
    expected = {e["case_no"] for e in events}
    assert wait_for(lambda: applied(engine) == expected)
    time.sleep(0.3)  # let the duplicates land too
    assert applied(engine) == expected
    assert sum(calls) == 230
    assert max(calls) > 1, "every event came alone: nothing was batched"
    with engine.connect() as conn:
        processed = metadata.tables["processed_events"]
        assert conn.execute(select(func.count()).select_from(processed)).scalar() == 200


def test_a_poison_event_is_dead_lettered_alone_and_its_batch_is_applied(listener):
    engine, uri = listener
    events = [rated(f"YC{n:04d}") for n in range(20)]
    poison = rated(POISON)
    publish_all(uri, events[:10] + [poison] + events[10:])  # together, so that they share a batch
    assert wait_for(lambda: applied(engine) == {e["case_no"] for e in events})
    assert max(calls) > 1
    dead = "evt-intake-appeal_rated--listener.on_appeal_rated.dead"
    message = None
    with Connection(uri) as conn:
        channel = conn.default_channel

        def dead_letter():
            nonlocal message
            message = channel.basic_get(dead, no_ack=True)
            return message is not None
        assert wait_for(dead_letter)
    assert json.loads(message.body)["event_id"] == poison["event_id"]
    assert message.headers["x-wuji-attempt"] == 3
    assert message.headers["x-wuji-error"] == "ValueError"
    assert applied(engine) == {e["case_no"] for e in events}

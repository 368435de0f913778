"""The triage service in a real nameko container on the real RabbitMQ and a real database (SQLite and
PostgreSQL): events in, events out through the outbox, RPC with typed errors, dead letters."""
import json
import time
import uuid
from pathlib import Path

import pytest
from kombu import Connection, Queue
from nameko.standalone.rpc import ServiceRpcProxy
from sqlalchemy import select

from triage import handlers
from triage.models import WorkOrder, metadata
from triage.service import TriageService
from wuji_common import reference
from wuji_common.db import UnitOfWork, make_engine, session_factory
from wuji_common.errors import InvalidTransition, NotYourOrder, ValidationError
from wuji_common.events import make_event
from wuji_common.migrations import upgrade
from wuji_common.testing_helpers import EventTap, publish_event
from wuji_common.topology import declare

MIGRATIONS = Path(__file__).resolve().parents[2] / "triage" / "migrations"
RETRY_DELAYS = [0.2, 0.5]
JINSI, YINPING = "370404101201", "370404101"
GRID = f"grid-{JINSI}"
APPEAL_QUEUE = "evt-intake-appeal_received--triage.on_appeal_received"


@pytest.fixture
def triage(db_url, amqp_uri, container_factory):
    """A running TriageService on a migrated database with the reference data; yields its config
    and a unit-of-work factory to look into its database."""
    upgrade(MIGRATIONS, db_url)
    engine = make_engine(db_url)
    uow = lambda: UnitOfWork(session_factory(engine), metadata, "triage")  # noqa: E731
    handlers.load_reference(uow(), list(reference.divisions()), list(reference.units()))
    config = {"AMQP_URI": amqp_uri, "DB_URL": db_url, "EVENT_RETRY_DELAYS": RETRY_DELAYS,
              "METRICS_PORT": 0, "OUTBOX_POLL_SECONDS": 0.2, "CLASSIFIER": "off"}
    # subscriber queues exist before anything is published (as `wuji-broker declare` does in a deployment)
    declare(amqp_uri, [TriageService], retry_delays=RETRY_DELAYS)
    container = container_factory(TriageService, config)
    container.start()
    yield config, uow
    container.stop()
    engine.dispose()


@pytest.fixture
def tap(amqp_uri):
    """Bound to triage's order events before the test publishes anything."""
    events = EventTap(amqp_uri, *[("triage", t) for t in (
        "order_dispatched", "order_accepted", "order_returned", "order_progressed", "order_resolved",
        "order_reopened", "order_closed")])
    yield events
    events.close()


def new_case_no():
    return f"YC20261125{uuid.uuid4().int % 10**6:06d}"


def appeal(case_no, title="村口路灯不亮", town_code=YINPING, village_code=JINSI):
    return make_event("appeal_received", case_no, {
        "channel": "wechat", "title": title, "content": "阴平镇金寺村村口的路灯坏了一个多月。",
        "town_code": town_code, "village_code": village_code, "anonymous": True, "citizen_ref": None,
        "received_at": "2026-11-25T08:00:00+00:00"})


def for_case(case_no, event_type=None):
    return lambda events: [e for e in events if e["case_no"] == case_no
                           and (event_type is None or e["type"] == event_type)]


def wait_for(tap, case_no, event_type, count=1):
    """This case's events of this type, once there are ``count`` of them."""
    matching = for_case(case_no, event_type)
    return matching(tap.wait_for(lambda events: len(matching(events)) >= count))


def test_an_appeal_becomes_one_order_and_order_dispatched(triage, tap, amqp_uri):
    config, uow = triage
    case_no = new_case_no()
    envelope = appeal(case_no)
    publish_event(amqp_uri, envelope)
    publish_event(amqp_uri, envelope)  # redelivered: dropped by event id
    publish_event(amqp_uri, appeal(case_no))  # announced again under another id: still one order
    [dispatched] = wait_for(tap, case_no, "order_dispatched")
    assert dispatched["source"] == "triage" and dispatched["data"]["unit_code"] == GRID
    time.sleep(1.0)  # a second order, if any, would have been dispatched by now
    assert len(for_case(case_no, "order_dispatched")(tap.drain())) == 1
    with ServiceRpcProxy("triage", config, timeout=10) as rpc:
        [order] = rpc.find_orders(case_no=case_no)
        assert order["order_no"] == dispatched["data"]["order_no"] and order["status"] == "dispatched"
        assert order["accept_due_at"] == dispatched["data"]["accept_due_at"]
        view = rpc.get_order(order["order_no"])
        assert view["unit_name"] == "金寺村网格员" and view["taxonomy_version"]


def test_units_work_their_orders_over_rpc(triage, tap, amqp_uri):
    config, _ = triage
    case_no = new_case_no()
    publish_event(amqp_uri, appeal(case_no))
    [dispatched] = wait_for(tap, case_no, "order_dispatched")
    order_no = dispatched["data"]["order_no"]
    with ServiceRpcProxy("triage", config, timeout=10) as rpc:
        with pytest.raises(NotYourOrder):
            rpc.accept_order(order_no, "dept-police", idempotency_key="x1")
        with pytest.raises(ValidationError) as err:
            rpc.accept_order(order_no, GRID, idempotency_key="")
        assert "idempotency_key" in err.value.fields

        # the grid worker returns it; the town office gets a new order
        returned = rpc.return_order(order_no, GRID, "路灯由镇里统一维护", idempotency_key="r1")
        assert rpc.return_order(order_no, GRID, "路灯由镇里统一维护", idempotency_key="r1") == returned
        wait_for(tap, case_no, "order_dispatched", count=2)
        new_no = returned["successor_order_no"]
        new = rpc.get_order(new_no)
        assert new["unit_code"] == f"town-{YINPING}" and new["previous_order_no"] == order_no

        accepted = rpc.accept_order(new_no, f"town-{YINPING}", idempotency_key="a1")
        assert rpc.accept_order(new_no, f"town-{YINPING}", idempotency_key="a1") == accepted
        with pytest.raises(InvalidTransition):
            rpc.accept_order(new_no, f"town-{YINPING}", idempotency_key="a2")
        rpc.add_progress(new_no, f"town-{YINPING}", "已联系供电所", idempotency_key="p1")
        resolved = rpc.resolve_order(new_no, f"town-{YINPING}", "已更换灯泡", idempotency_key="s1")
        assert resolved["status"] == "resolved" and resolved["resolved_at"]

    wait_for(tap, case_no, "order_resolved")
    types = [e["type"] for e in for_case(case_no)(tap.received)]
    assert types == ["order_dispatched", "order_returned", "order_dispatched", "order_accepted",
                     "order_progressed", "order_resolved"]

    # the citizen is unhappy: the same unit has to do it again
    publish_event(amqp_uri, make_event("appeal_rated", case_no, {
        "satisfaction": "unsatisfied", "comment": None, "rated_at": "2026-11-26T08:00:00+00:00"}))
    [reopened] = wait_for(tap, case_no, "order_reopened")
    assert reopened["data"]["unit_code"] == f"town-{YINPING}" and reopened["data"]["reopen_count"] == 1


def test_a_completed_joint_operation_resolves_the_order(triage, tap, amqp_uri):
    case_no = new_case_no()
    publish_event(amqp_uri, appeal(case_no, title="有人私搭乱建"))
    [dispatched] = wait_for(tap, case_no, "order_dispatched")
    assert dispatched["data"]["unit_code"] == f"town-{YINPING}"
    publish_event(amqp_uri, make_event("operation_completed", None, {
        "operation_id": "OP-1", "order_no": dispatched["data"]["order_no"], "town_code": YINPING,
        "outcome": "联合执法，违建已拆除"}))
    [resolved] = wait_for(tap, case_no, "order_resolved")
    assert resolved["data"]["resolution"] == "联合执法，违建已拆除"


def test_a_failing_appeal_is_retried_then_dead_lettered_not_lost(triage, amqp_uri):
    _, uow = triage
    envelope = appeal(new_case_no(), town_code="370404999", village_code=None)  # not a town of ours
    publish_event(amqp_uri, envelope)
    message = wait_for_dead_letter(amqp_uri, envelope["event_id"], timeout=15)
    assert message.headers["x-wuji-attempt"] == len(RETRY_DELAYS) + 1
    assert message.headers["x-wuji-error"].startswith("ValidationError")
    with uow() as u:
        assert u.session.execute(select(WorkOrder).where(WorkOrder.case_no == envelope["case_no"])).first() is None


def wait_for_dead_letter(amqp_uri, event_id, timeout):
    """The dead letter with this event id; any other (left by other tests in this vhost) is held
    unacked while looking and put back after."""
    deadline = time.monotonic() + timeout
    with Connection(amqp_uri) as conn:
        queue = Queue(f"{APPEAL_QUEUE}.dead", no_declare=True, channel=conn.channel())
        others = []
        try:
            while time.monotonic() < deadline:
                message = queue.get(no_ack=False)
                if message is None:
                    time.sleep(0.1)
                    continue
                if json.loads(message.body)["event_id"] == event_id:
                    message.ack()
                    return message
                others.append(message)
        finally:
            for message in others:
                message.requeue()
    raise AssertionError("the failed appeal never reached the dead-letter queue")

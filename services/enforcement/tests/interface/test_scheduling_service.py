"""The enforcement service on the real broker (SQLite, to bound the time): scheduling over RPC with
the solver in a worker process while the container keeps answering, the fallback when CP-SAT gets
no time, re-planning by the timer after an officer drops out, and triage's enforcement_requested."""
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from nameko.standalone.rpc import ServiceRpcProxy

from enforcement import handlers
from enforcement.service import EnforcementService
from wuji_common.events import make_event
from wuji_common.testing_helpers import EventTap, publish_event
from wuji_common.topology import declare

GUSHAO = "370404100"


def service_config(amqp_uri, db_url, **extra):
    return {"AMQP_URI": amqp_uri, "DB_URL": db_url, "EVENT_RETRY_DELAYS": [0.2, 0.5],
            "METRICS_PORT": 0, "OUTBOX_POLL_SECONDS": 0.2, "REPORT_IN_WATCH_SECONDS": 60,
            "REPLAN_WATCH_SECONDS": 60, "SCHEDULE_TIME_LIMIT_SECONDS": 5, **extra}


@pytest.fixture
def tap(amqp_uri):
    tap = EventTap(amqp_uri, ("enforcement", "operations_scheduled"), ("enforcement", "whistle_blown"))
    yield tap
    tap.close()


def open_operations(db, count, urgency="emergency"):
    now = datetime.now(timezone.utc)
    return [handlers.blow_whistle(db.uow(), {
        "order_no": f"GD{uuid.uuid4().hex[:12]}", "violation_type": "road_occupation",
        "town_code": GUSHAO, "urgency": urgency}, None, now=now)["operation_id"] for _ in range(count)]


def start(container_factory, config):
    container = container_factory(EnforcementService, config)
    container.start()
    return container


def test_other_calls_are_answered_while_a_plan_is_computed(db, amqp_uri, container_factory, tap):
    ops = open_operations(db, 30)
    config = service_config(amqp_uri, db.url)
    container = start(container_factory, config)
    with ServiceRpcProxy("enforcement", config, timeout=60) as rpc:
        pending = rpc.schedule.call_async(GUSHAO, 7, idempotency_key="plan-1")
        answered_while_solving = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # these answers come from the same container whose worker waits on the solver process:
            # they could not arrive if the solve blocked its hub
            if rpc.schedule_status(GUSHAO)["solving"]:
                answered_while_solving.append(len(rpc.forces(GUSHAO)))
                if rpc.schedule_status(GUSHAO)["solving"]:
                    break
            time.sleep(0.01)
        plan = pending.result()
    assert answered_while_solving and answered_while_solving[0] == 13
    assert plan["solver"] == "cp-sat" and plan["plan_version"] == 1
    assert {a["operation_id"] for a in plan["assignments"]} | set(plan["unscheduled"]) == set(ops)
    [event] = tap.wait_for(lambda evs: any(e["type"] == "operations_scheduled" for e in evs),
                           timeout=10)[-1:]
    assert event["data"]["plan_version"] == 1 and event["data"]["town_code"] == GUSHAO
    assert len(event["data"]["assignments"]) == len(plan["assignments"])
    with ServiceRpcProxy("enforcement", config, timeout=10) as rpc:  # still alive and serving
        assert rpc.plan(GUSHAO) == plan
    assert container.started


def test_with_no_time_for_cp_sat_the_greedy_plan_is_used(db, amqp_uri, container_factory):
    open_operations(db, 5, urgency="normal")
    config = service_config(amqp_uri, db.url, SCHEDULE_TIME_LIMIT_SECONDS=0)
    start(container_factory, config)
    with ServiceRpcProxy("enforcement", config, timeout=60) as rpc:
        plan = rpc.schedule(GUSHAO, 7)
        assert (plan["solver"], plan["status"]) == ("greedy", "fallback")
        assert plan["on_time"] == 5 and rpc.plan(GUSHAO) == plan


def test_the_timer_replans_after_an_officer_drops_out(db, amqp_uri, container_factory, tap):
    open_operations(db, 9)
    config = service_config(amqp_uri, db.url, REPLAN_WATCH_SECONDS=0.3)
    start(container_factory, config)
    with ServiceRpcProxy("enforcement", config, timeout=60) as rpc:
        first = rpc.schedule(GUSHAO, 3)
        today = datetime.now(timezone(timedelta(hours=8))).date()
        # two of the town's police officers off sick for three days: its team takes fewer
        # operations, so the plan must change
        team = f"public_security-{GUSHAO}"
        for n in range(1, 5):
            rpc.record_absence(f"{team}-{n:02d}", today.isoformat(),
                               (today + timedelta(days=2)).isoformat(), "sick",
                               idempotency_key=f"sick-{n}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and rpc.plan(GUSHAO)["plan_version"] == first["plan_version"]:
            time.sleep(0.2)
        again = rpc.plan(GUSHAO)
    assert again["plan_version"] == 2 and again["reason"] == "officer_unavailable"
    assert again["moved"] <= len([a for a in first["assignments"] if a["team"] == team]) * 3
    assert handlers.replan_requests(db.uow()) == []


def test_triage_enforcement_requested_opens_the_operation_once(db, amqp_uri, container_factory, tap):
    declare(amqp_uri, [EnforcementService], retry_delays=[0.2, 0.5])  # bound before publishing
    config = service_config(amqp_uri, db.url)
    start(container_factory, config)
    event = make_event("enforcement_requested", None, {
        "order_no": "GD20261125000301", "town_code": GUSHAO, "violation_type": "food_safety",
        "urgency": "urgent"}, source="triage")
    publish_event(amqp_uri, event)
    publish_event(amqp_uri, event)  # redelivered
    tap.wait_for(lambda evs: any(e["type"] == "whistle_blown" for e in evs), timeout=15)
    time.sleep(1)
    tap.drain()
    [blown] = [e for e in tap.received if e["type"] == "whistle_blown"]
    assert blown["data"]["order_no"] == "GD20261125000301"
    assert blown["data"]["forces"] == ["market_supervision", "public_security", "health"]
    with ServiceRpcProxy("enforcement", config, timeout=10) as rpc:
        [op] = rpc.find_operations(town_code=GUSHAO)
    assert op["order_no"] == "GD20261125000301" and op["urgency"] == "urgent"

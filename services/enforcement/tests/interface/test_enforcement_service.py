"""The enforcement service in a real nameko container on the real RabbitMQ and a real database (SQLite
and PostgreSQL): RPC with typed errors, events seen by a queue bound before acting, and the report-in
deadline watcher running in two instances at once."""
import time
from datetime import datetime, timedelta, timezone

import pytest
from nameko.standalone.rpc import ServiceRpcProxy
from sqlalchemy import select

from enforcement import handlers
from enforcement.models import CalledForce
from enforcement.service import EnforcementService
from wuji_common.errors import InvalidTransition, NotFound, NotYourOrder, ValidationError
from wuji_common.testing_helpers import EventTap

LIUYUAN = "370404103"  # 榴园镇
# the lead first, then the assisting forces in the order of forces.csv
CONSTRUCTION = ["comprehensive_enforcement", "public_security", "natural_resources",
                "housing_construction"]
ROAD = ["comprehensive_enforcement", "public_security", "market_supervision"]  # road_occupation


def service_config(amqp_uri, db_url, watch_seconds=60):
    return {"AMQP_URI": amqp_uri, "DB_URL": db_url, "EVENT_RETRY_DELAYS": [0.2, 0.5],
            "METRICS_PORT": 0, "OUTBOX_POLL_SECONDS": 0.2, "REPORT_IN_WATCH_SECONDS": watch_seconds}


@pytest.fixture
def tap(amqp_uri):
    """A queue bound to every enforcement event before the test acts."""
    tap = EventTap(amqp_uri, *[("enforcement", t) for t in (
        "whistle_blown", "force_reported_in", "force_report_in_overdue", "operation_completed")])
    yield tap
    tap.close()


@pytest.fixture
def enforcement(any_db, amqp_uri, container_factory, tap):
    config = service_config(amqp_uri, any_db.url)
    container = container_factory(EnforcementService, config)
    container.start()
    with ServiceRpcProxy("enforcement", config, timeout=10) as rpc:
        yield rpc


def test_whistle_report_in_and_complete_over_rpc(enforcement, tap):
    op = enforcement.blow_whistle("GD20261125000042", "road_occupation", LIUYUAN, "urgent",
                                  idempotency_key="liuyuan-1")
    oid = op["operation_id"]
    assert [f["force_code"] for f in op["forces"]] == ROAD
    [blown] = tap.wait_for(lambda evs: len(evs) >= 1)
    assert blown["type"] == "whistle_blown" and blown["source"] == "enforcement"
    assert blown["data"]["operation_id"] == oid and blown["data"]["forces"] == ROAD
    assert blown["data"]["report_in_due_at"] == op["report_in_due_at"]

    for force in ROAD:
        result = enforcement.report_in(oid, force, f"{force}-{LIUYUAN}", idempotency_key=f"{force}-1")
        assert result["within_deadline"] is True
    assert enforcement.get_operation(oid)["status"] == "assembled"

    done = enforcement.complete_operation(oid, "占道摊点已清理，恢复通行", idempotency_key="done")
    assert done["status"] == "completed"
    assert enforcement.complete_operation(oid, "占道摊点已清理，恢复通行",
                                          idempotency_key="done") == done

    events = tap.wait_for(lambda evs: any(e["type"] == "operation_completed" for e in evs))
    assert [e["data"]["force_code"] for e in tap.of_type("force_reported_in")] == ROAD
    [completed] = tap.of_type("operation_completed")
    assert completed["data"] == {"operation_id": oid, "order_no": "GD20261125000042",
                                 "town_code": LIUYUAN, "outcome": "占道摊点已清理，恢复通行"}
    assert len(events) == 1 + len(ROAD) + 1


def test_retried_whistle_and_queries_over_rpc(enforcement, tap):
    first = enforcement.blow_whistle(None, "food_safety", LIUYUAN, "normal", idempotency_key="k")
    assert enforcement.blow_whistle(None, "food_safety", LIUYUAN, "normal", idempotency_key="k") == first
    assert enforcement.get_operation(first["operation_id"]) == first
    assert [o["operation_id"] for o in enforcement.find_operations(town_code=LIUYUAN, status="called")] \
        == [first["operation_id"]]
    assert enforcement.find_operations(status="completed") == []
    teams = {f["force_code"]: f["teams"] for f in enforcement.forces(LIUYUAN)}
    assert teams["fire_rescue"] == [{"team": f"fire_rescue-{LIUYUAN}", "team_name": "榴园镇专职消防队"}]
    tap.wait_for(lambda evs: len(evs) >= 1)
    assert len(tap.drain()) == 1  # one whistle, however often it was asked


def test_caller_errors_arrive_typed(enforcement):
    with pytest.raises(ValidationError) as err:
        enforcement.blow_whistle("GD1", "jaywalking", LIUYUAN, "urgent", idempotency_key="x")
    assert list(err.value.fields) == ["violation_type"]
    with pytest.raises(ValidationError) as err:
        enforcement.blow_whistle("GD1", "illegal_mining", "999999999", "urgent", idempotency_key="y")
    assert list(err.value.fields) == ["town_code"]

    op = enforcement.blow_whistle("GD1", "illegal_mining", LIUYUAN, "urgent", idempotency_key="z")
    with pytest.raises(NotYourOrder):
        enforcement.report_in(op["operation_id"], "culture_tourism", f"culture_tourism-{LIUYUAN}")
    with pytest.raises(InvalidTransition):
        enforcement.complete_operation(op["operation_id"], "已处置", idempotency_key="early")
    with pytest.raises(NotFound):
        enforcement.get_operation("CZ20991231000001")


def test_two_instances_mark_each_late_force_once(any_db, amqp_uri, container_factory, tap):
    # operations whose deadlines passed while no enforcement instance was running
    past = datetime.now(timezone.utc) - timedelta(hours=2)
    operations = [handlers.blow_whistle(any_db.uow(), {
        "order_no": f"GD{n}", "violation_type": "illegal_construction", "town_code": LIUYUAN,
        "urgency": "emergency"}, None, now=past) for n in range(5)]
    handlers.report_in(any_db.uow(), {"operation_id": operations[0]["operation_id"],
                                      "force_code": "public_security",
                                      "team": f"public_security-{LIUYUAN}"}, None, now=past)
    late = 5 * len(CONSTRUCTION) - 1

    config = service_config(amqp_uri, any_db.url, watch_seconds=0.1)
    for _ in range(2):
        container_factory(EnforcementService, config).start()

    tap.wait_for(lambda evs: len(tap.of_type("force_report_in_overdue")) >= late, timeout=20)
    time.sleep(1.5)  # both watchers keep ticking: nothing more may be marked
    tap.drain()
    # delivery is at-least-once (a relay may publish a row twice); consumers drop duplicates by
    # event id, so "once" means one event id per late force
    overdue = {e["event_id"]: e for e in tap.of_type("force_report_in_overdue")}.values()
    keys = [(e["data"]["operation_id"], e["data"]["force_code"]) for e in overdue]
    assert len(keys) == late and len(set(keys)) == late
    assert (operations[0]["operation_id"], "public_security") not in keys
    assert len(any_db.events("force_report_in_overdue")) == late
    with any_db.engine.connect() as conn:
        statuses = conn.execute(select(CalledForce.status)).scalars().all()
    assert sorted(statuses) == ["overdue"] * late + ["reported_in"]

"""A force that does not report in: marked late at its deadline, reminded, then escalated to the
district, each once; its lateness counts in its assessment. And the whistle from triage
(enforcement_requested), once per event and per open order."""
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from enforcement import handlers
from wuji_common.errors import ValidationError

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=timezone.utc)
GUSHAO = "370404100"
MINING = ["natural_resources", "public_security", "ecology_environment", "emergency_management"]


def whistle(db, order_no="GD1", urgency="emergency", now=T0, town_code=GUSHAO):
    return handlers.blow_whistle(db.uow(), {"order_no": order_no, "violation_type": "illegal_mining",
                                            "town_code": town_code, "urgency": urgency}, None, now=now)


def report(db, oid, force, at):
    return handlers.report_in(db.uow(), {"operation_id": oid, "force_code": force,
                                         "team": f"{force}-{GUSHAO}"}, None, now=at)


def watch(db, at):
    """One tick of the watcher, as the service's timer runs it."""
    return (handlers.mark_overdue(db.uow(), now=at), handlers.remind_late_forces(db.uow(), now=at),
            handlers.escalate_late_forces(db.uow(), now=at))


def test_a_silent_force_is_marked_late_reminded_then_escalated_once_each(db):
    oid = whistle(db)["operation_id"]  # emergency: report in within 30 min; remind +5, escalate +30
    for force in MINING[:3]:
        report(db, oid, force, T0 + timedelta(minutes=10))

    assert watch(db, T0 + timedelta(minutes=30)) == ([], [], [])  # at the deadline: still in time
    assert watch(db, T0 + timedelta(minutes=31)) == ([(oid, "emergency_management")], [], [])
    assert watch(db, T0 + timedelta(minutes=34)) == ([], [], [])
    assert watch(db, T0 + timedelta(minutes=35)) == ([], [(oid, "emergency_management")], [])
    assert watch(db, T0 + timedelta(minutes=59)) == ([], [], [])
    assert watch(db, T0 + timedelta(minutes=60)) == ([], [], [(oid, "emergency_management")])
    assert watch(db, T0 + timedelta(hours=5)) == ([], [], [])

    [reminded] = db.events("force_report_in_reminded")
    assert reminded["data"] == {
        "operation_id": oid, "order_no": "GD1", "town_code": GUSHAO, "force_code": "emergency_management",
        "team": "emergency_management-370404100", "report_in_due_at": "2026-11-25T08:30:00+00:00",
        "reminded_at": "2026-11-25T08:35:00+00:00"}
    [escalated] = db.events("force_report_in_escalated")
    assert escalated["data"]["escalated_to"] == "district"
    assert escalated["data"]["escalated_at"] == "2026-11-25T09:00:00+00:00"
    force = next(f for f in handlers.get_operation(db.uow(), oid)["forces"]
                 if f["force_code"] == "emergency_management")
    assert (force["status"], force["reminded_at"], force["escalated_at"]) == (
        "overdue", "2026-11-25T08:35:00+00:00", "2026-11-25T09:00:00+00:00")


def test_a_watcher_that_was_down_catches_up_in_order(db):
    oid = whistle(db)["operation_id"]
    marked, reminded, escalated = watch(db, T0 + timedelta(hours=3))
    assert len(marked) == len(reminded) == len(escalated) == 4
    # a force that reports in after its reminder is not escalated
    other = whistle(db, order_no="GD2")["operation_id"]
    watch(db, T0 + timedelta(minutes=40))
    report(db, other, "public_security", T0 + timedelta(minutes=45))
    _, _, escalated = watch(db, T0 + timedelta(hours=2))
    assert (other, "public_security") not in escalated and len(escalated) == 3
    assert oid != other


def test_a_force_that_reported_in_late_but_before_the_reminder_is_not_reminded(db):
    oid = whistle(db)["operation_id"]
    watch(db, T0 + timedelta(minutes=31))
    report(db, oid, "public_security", T0 + timedelta(minutes=33))
    _, reminded, _ = watch(db, T0 + timedelta(minutes=40))
    assert (oid, "public_security") not in reminded and len(reminded) == 3


def test_lateness_counts_in_the_assessment(db):
    a = whistle(db, order_no="GD1")["operation_id"]
    b = whistle(db, order_no="GD2", now=T0 + timedelta(hours=1))["operation_id"]
    for force in MINING:
        report(db, a, force, T0 + timedelta(minutes=10))
    report(db, b, "natural_resources", T0 + timedelta(hours=1, minutes=5))
    report(db, b, "public_security", T0 + timedelta(hours=1, minutes=50))  # 20 minutes late
    watch(db, T0 + timedelta(hours=3))  # the other two of b: late, reminded, escalated

    now = T0 + timedelta(hours=4)
    tally = {t["force_code"]: t for t in handlers.assessment(db.uow(), now=now)}
    assert set(tally) == set(MINING)
    assert tally["natural_resources"] == {
        "force_code": "natural_resources", "force_name": "自然资源", "called": 2, "reported_in": 2,
        "on_time": 2, "late": 0, "not_reported": 0, "reminded": 0, "escalated": 0, "minutes_late": 0,
        "on_time_rate": 1.0}
    ps = tally["public_security"]
    assert (ps["on_time"], ps["late"], ps["minutes_late"], ps["on_time_rate"]) == (1, 1, 20, 0.5)
    em = tally["emergency_management"]
    # still missing at 12:00: due at 09:30, so 150 minutes late so far
    assert (em["not_reported"], em["reminded"], em["escalated"], em["minutes_late"]) == (1, 1, 1, 150)

    only_first = handlers.assessment(db.uow(), since=T0.isoformat(),
                                     until=(T0 + timedelta(minutes=30)).isoformat(), now=now)
    assert {t["force_code"]: t["called"] for t in only_first} == dict.fromkeys(MINING, 1)
    assert handlers.assessment(db.uow(), town_code="370404101", now=now) == []
    with pytest.raises(ValidationError) as err:
        handlers.assessment(db.uow(), since="yesterday")
    assert list(err.value.fields) == ["since"]


# --- the whistle from triage -----------------------------------------------------------------------

def requested(order_no="GD20261125000201", violation_type="road_occupation", urgency="urgent",
              event_id=None):
    return {"event_id": event_id or str(uuid.uuid4()), "type": "enforcement_requested", "version": 1,
            "occurred_at": T0.isoformat(), "case_no": None, "source": "triage",
            "data": {"order_no": order_no, "town_code": GUSHAO, "violation_type": violation_type,
                     "urgency": urgency}}


CONSUMER = "enforcement.on_enforcement_requested"


def test_triage_request_opens_an_operation_once(db):
    envelope = requested()
    oid = handlers.open_requested_operation(db.uow(), CONSUMER, envelope, now=T0)
    assert oid and handlers.open_requested_operation(db.uow(), CONSUMER, envelope, now=T0) is None
    op = handlers.get_operation(db.uow(), oid)
    assert op["order_no"] == "GD20261125000201" and op["urgency"] == "urgent"
    assert [f["force_code"] for f in op["forces"]] == [
        "comprehensive_enforcement", "public_security", "market_supervision"]
    assert len(db.events("whistle_blown")) == 1


def test_a_second_request_for_an_order_with_an_open_operation_adds_nothing(db):
    by_rpc = handlers.blow_whistle(db.uow(), {"order_no": "GD20261125000201", "violation_type":
                                              "road_occupation", "town_code": GUSHAO,
                                              "urgency": "urgent"}, "town-key", now=T0)
    assert handlers.open_requested_operation(db.uow(), CONSUMER, requested(), now=T0) is None
    assert [o["operation_id"] for o in handlers.find_operations(db.uow())] == [by_rpc["operation_id"]]


def test_a_request_with_an_unknown_violation_type_fails_for_the_dead_letter_queue(db):
    with pytest.raises(ValidationError):
        handlers.open_requested_operation(db.uow(), CONSUMER, requested(violation_type="jaywalking"))
    assert db.events() == []

"""Clocks and supervision against a real database (SQLite and PostgreSQL), with the time injected:
each clock starts and stops, reminds at 50 % and 80 %, falls overdue with a supervision ticket,
escalates a unit that has not reported in, fires once however many sweeps run, and moves with
extensions (延期) and suspensions (挂账)."""
import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from triage import handlers, supervision
from triage.dependencies import load_policies
from triage.domain import Router, aware
from triage.models import ClockFire, OrderClock, SupervisionTicket, WorkOrder, metadata
from wuji_common.db import UnitOfWork, make_engine, session_factory
from wuji_common.errors import InvalidTransition, ValidationError

CONSUMER = "triage.on_appeal_received"
JINSI, YINPING = "370404101201", "370404101"
GRID, TOWN = f"grid-{JINSI}", f"town-{YINPING}"
T0 = datetime(2026, 11, 25, 8, 0, tzinfo=timezone.utc)  # Wednesday 16:00 in Yicheng
H = timedelta(hours=1)
GARBAGE = {"title": "垃圾堆放没人清理", "content": "阴平镇金寺村村口垃圾成堆，一直没人清理。"}


@pytest.fixture
def db(triage_db):
    return triage_db[1]


@pytest.fixture
def router(taxonomy):
    return Router(taxonomy, policies=load_policies(taxonomy=taxonomy))


def dispatch(db, router, appeal_received, **appeal):
    return handlers.dispatch_appeal(db(), router, CONSUMER, appeal_received(**appeal), now=T0)["order_no"]


def clocks_of(db, order_no):
    with db() as uow:
        rows = uow.session.execute(select(OrderClock).where(OrderClock.order_no == order_no)
                                   .order_by(OrderClock.id)).scalars().all()
        uow.session.expunge_all()
        return {(c.clock, c.round): c for c in rows}


def fired(db, outbox_events, *types):
    return [e for e in outbox_events(db) if e["type"] in types]


def the_order(db, order_no):
    with db() as uow:
        order = uow.session.execute(select(WorkOrder).where(WorkOrder.order_no == order_no)).scalar_one()
        uow.session.expunge(order)
        return order


def test_an_order_records_its_policy_and_runs_three_clocks_held_by_its_unit(db, router, appeal_received):
    order_no = dispatch(db, router, appeal_received)  # street lights: utilities
    order = the_order(db, order_no)
    assert (order.time_policy, order.time_policy_version) == ("utilities", router.policies.version)
    assert aware(order.accept_due_at) == T0 + H and aware(order.first_contact_due_at) == T0 + 2 * H
    assert aware(order.resolve_due_at) == T0 + 24 * H
    clocks = clocks_of(db, order_no)
    assert {name for name, _ in clocks} == {"report_in", "first_contact", "resolve"}
    assert all(c.holder_unit_code == GRID and c.level == "grid" and c.stopped_at is None
               for c in clocks.values())
    handlers.accept_order(db(), order_no, GRID, "a", now=T0 + 30 * timedelta(minutes=1))
    handlers.add_progress(db(), order_no, GRID, "已联系群众", "p", now=T0 + 3 * H)
    handlers.resolve_order(db(), order_no, GRID, "已修复", "r", now=T0 + 5 * H)
    outcomes = {name: c.outcome for (name, _), c in clocks_of(db, order_no).items()}
    assert outcomes == {"report_in": "met", "first_contact": "late", "resolve": "met"}


def test_a_general_order_is_due_in_seven_working_days(db, router, appeal_received):
    order_no = dispatch(db, router, appeal_received, **GARBAGE)
    order = the_order(db, order_no)
    assert order.time_policy == "general"
    # Wednesday 16:00 + 7 working days (the weekend between) → Friday next week 16:00
    assert aware(order.resolve_due_at) == datetime(2026, 12, 4, 8, 0, tzinfo=timezone.utc)


def test_reminders_at_50_and_80_per_cent_then_overdue_with_a_ticket_each_once(db, router, appeal_received,
                                                                               outbox_events):
    order_no = dispatch(db, router, appeal_received)
    handlers.accept_order(db(), order_no, GRID, "a", now=T0 + 0.5 * H)
    handlers.add_progress(db(), order_no, GRID, "已联系", "p", now=T0 + H)
    assert supervision.sweep(db(), now=T0 + 11 * H)["fired"] == {}
    assert supervision.sweep(db(), now=T0 + 12 * H)["fired"] == {"50": 1}
    assert supervision.sweep(db(), now=T0 + 13 * H)["fired"] == {}
    assert supervision.sweep(db(), now=T0 + 20 * H)["fired"] == {"80": 1}
    assert supervision.sweep(db(), now=T0 + 25 * H)["fired"] == {"due": 1}
    assert supervision.sweep(db(), now=T0 + 48 * H)["fired"] == {}
    reminders = fired(db, outbox_events, "order_deadline_approaching")
    assert [(e["data"]["clock"], e["data"]["threshold"]) for e in reminders] == [("resolve", 50), ("resolve", 80)]
    [overdue] = fired(db, outbox_events, "order_overdue")
    assert overdue["data"]["unit_code"] == GRID and overdue["data"]["clock"] == "resolve"
    [ticket] = supervision.tickets(db())
    assert ticket["ticket_no"] == overdue["data"]["ticket_no"] and ticket["unit_code"] == GRID
    assert [o["order_no"] for o in supervision.overdue(db(), town_code=YINPING, now=T0 + 26 * H)] == [order_no]
    assert not fired(db, outbox_events, "order_escalated")  # resolving late is not escalated
    handlers.resolve_order(db(), order_no, GRID, "已修复", "r", now=T0 + 27 * H)
    assert supervision.tickets(db()) == [] and clocks_of(db, order_no)[("resolve", 0)].outcome == "late"


def test_a_unit_not_reported_in_is_escalated_one_level_up(db, router, appeal_received, outbox_events):
    order_no = dispatch(db, router, appeal_received)
    result = supervision.sweep(db(), now=T0 + H)
    assert result["fired"] == {"50": 1, "due": 1, "escalate": 1}  # report_in due; first_contact at half
    [escalated] = fired(db, outbox_events, "order_escalated")
    assert (escalated["data"]["from_level"], escalated["data"]["to_level"], escalated["data"]["to_unit_code"]) == (
        "grid", "town", TOWN)
    assert clocks_of(db, order_no)[("report_in", 0)].escalated_to == TOWN
    # the town office, in turn, escalates to the district
    handlers.return_order(db(), router, order_no, GRID, "不属于网格职责", "ret", now=T0 + 2 * H)
    successor = the_order(db, order_no).successor_order_no
    assert the_order(db, successor).unit_code == TOWN
    supervision.sweep(db(), now=T0 + 4 * H)
    escalations = fired(db, outbox_events, "order_escalated")
    assert escalations[-1]["data"]["to_unit_code"] == "dept-command" and escalations[-1]["data"]["to_level"] == "district"


def test_a_return_records_who_held_the_order_when_time_ran_out(db, router, appeal_received):
    order_no = dispatch(db, router, appeal_received)
    handlers.return_order(db(), router, order_no, GRID, "不属于网格职责", "ret", now=T0 + 3 * H)
    old = clocks_of(db, order_no)
    assert all(c.outcome == "returned" and c.holder_unit_code == GRID for c in old.values())
    assert aware(old[("report_in", 0)].overdue_at) == T0 + H           # ran out while the grid held it
    assert old[("resolve", 0)].overdue_at is None                      # that one had not
    successor = the_order(db, order_no).successor_order_no
    new = clocks_of(db, successor)
    assert all(c.holder_unit_code == TOWN and c.level == "town" and aware(c.started_at) == T0 + 3 * H
               for c in new.values())


def test_a_deadline_missed_while_everything_was_down_fires_once_without_stale_reminders(
        db, router, appeal_received, outbox_events):
    order_no = dispatch(db, router, appeal_received)
    first = supervision.sweep(db(), now=T0 + 72 * H)
    assert first["fired"] == {"due": 3, "escalate": 1}
    assert supervision.sweep(db(), now=T0 + 73 * H)["fired"] == {}
    assert not fired(db, outbox_events, "order_deadline_approaching")
    assert len(fired(db, outbox_events, "order_overdue")) == 3
    assert {c["clock"] for c in supervision.overdue(db(), unit_code=GRID, now=T0 + 73 * H)} == {
        "report_in", "first_contact", "resolve"}
    assert order_no


def test_two_instances_sweeping_at_once_fire_each_checkpoint_once(triage_db, router, appeal_received,
                                                                  outbox_events):
    url, db = triage_db
    for n in range(6):
        handlers.dispatch_appeal(db(), router, CONSUMER, appeal_received(case_no=f"YC2026112500010{n}"), now=T0)
    # two instances: an engine each, sweeping concurrently and repeatedly
    engines = [make_engine(url) for _ in range(2)]
    instances = [lambda e=e: UnitOfWork(session_factory(e), metadata, "triage") for e in engines]
    errors = []

    def run(uow_factory):
        try:
            for _ in range(3):
                supervision.sweep(uow_factory(), now=T0 + 30 * H, batch=4)
        except Exception as err:  # pragma: no cover - shown in the assertion
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in instances]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for e in engines:
        e.dispose()
    assert not errors
    overdue = fired(db, outbox_events, "order_overdue")
    assert len(overdue) == 18 and len({(e["data"]["order_no"], e["data"]["clock"]) for e in overdue}) == 18
    assert len(fired(db, outbox_events, "order_escalated")) == 6
    with db() as uow:
        assert uow.session.query(ClockFire).count() == 24
        assert uow.session.query(SupervisionTicket).count() == 18


# --- extensions and suspensions -------------------------------------------------------------------

def test_an_extension_asked_in_time_and_approved_moves_the_deadline_by_working_days(
        db, router, appeal_received, outbox_events):
    order_no = dispatch(db, router, appeal_received, **GARBAGE)
    handlers.accept_order(db(), order_no, GRID, "a", now=T0 + H)
    with pytest.raises(ValidationError):  # general: at most 7 working days in all
        supervision.request_clock_change(db(), "extension", order_no, GRID, 8, "需协调多部门", "x0", now=T0 + 2 * H)
    request = supervision.request_clock_change(db(), "extension", order_no, GRID, 3, "需协调环卫公司", "x1",
                                               now=T0 + 2 * H)
    assert request["status"] == "pending"
    again = supervision.request_clock_change(db(), "extension", order_no, GRID, 3, "需协调环卫公司", "x1",
                                             now=T0 + 2 * H)
    assert again == request  # idempotent
    decided = supervision.decide_clock_change(db(), "extension", request["request_id"], True, "督查组王某",
                                              "同意", "d1", now=T0 + 3 * H)
    assert decided["status"] == "approved"
    # 2026-12-04 (Friday) 16:00 + 3 working days → Wednesday 2026-12-09 16:00
    assert aware(the_order(db, order_no).resolve_due_at) == datetime(2026, 12, 9, 8, 0, tzinfo=timezone.utc)
    assert aware(clocks_of(db, order_no)[("resolve", 0)].due_at) == datetime(2026, 12, 9, 8, 0, tzinfo=timezone.utc)
    [event] = fired(db, outbox_events, "order_extension_decided")
    assert event["data"]["approved"] is True and event["data"]["resolve_due_at"].startswith("2026-12-09T08:00")
    with pytest.raises(InvalidTransition):
        supervision.decide_clock_change(db(), "extension", request["request_id"], False, "督查组", "", "d2",
                                        now=T0 + 3 * H)


def test_an_extension_is_refused_after_expiry_and_a_refusal_changes_nothing(db, router, appeal_received):
    order_no = dispatch(db, router, appeal_received)  # utilities: due in 24 hours
    with pytest.raises(InvalidTransition):
        supervision.request_clock_change(db(), "extension", order_no, GRID, 1, "来不及", "late", now=T0 + 25 * H)
    request = supervision.request_clock_change(db(), "extension", order_no, GRID, 1, "需停水维修", "x",
                                               now=T0 + 2 * H)
    supervision.decide_clock_change(db(), "extension", request["request_id"], False, "督查组", "理由不足", "d",
                                    now=T0 + 3 * H)
    assert aware(the_order(db, order_no).resolve_due_at) == T0 + 24 * H


def test_an_approved_suspension_pauses_the_clocks_and_resuming_moves_the_deadlines(
        db, router, appeal_received, outbox_events):
    order_no = dispatch(db, router, appeal_received)
    handlers.accept_order(db(), order_no, GRID, "a", now=T0 + 0.5 * H)
    handlers.add_progress(db(), order_no, GRID, "已联系", "p", now=T0 + H)
    request = supervision.request_clock_change(db(), "suspension", order_no, GRID, 5, "等待配件到货", "s",
                                               now=T0 + 2 * H)
    supervision.decide_clock_change(db(), "suspension", request["request_id"], True, "督查组", "同意挂账", "d",
                                    now=T0 + 4 * H)
    assert supervision.sweep(db(), now=T0 + 30 * H)["fired"] == {}  # paused: nothing falls due
    assert supervision.overdue(db(), now=T0 + 30 * H) == []
    supervision.resume(db(), order_no, GRID, "r", now=T0 + 52 * H)   # stood still 48 hours
    assert aware(the_order(db, order_no).resolve_due_at) == T0 + 72 * H
    assert supervision.sweep(db(), now=T0 + 71 * H)["fired"] == {"50": 1, "80": 1}  # from T0 + 48 h
    assert supervision.sweep(db(), now=T0 + 73 * H)["fired"].get("due") == 1
    assert fired(db, outbox_events, "order_resumed")


def test_a_suspension_ends_by_itself_when_its_days_run_out(db, router, appeal_received, outbox_events):
    order_no = dispatch(db, router, appeal_received)
    handlers.accept_order(db(), order_no, GRID, "a", now=T0 + 0.5 * H)
    request = supervision.request_clock_change(db(), "suspension", order_no, GRID, 1, "等待群众在家", "s",
                                               now=T0 + 0.75 * H)
    supervision.decide_clock_change(db(), "suspension", request["request_id"], True, "督查组", "", "d",
                                    now=T0 + 0.75 * H)
    supervision.sweep(db(), now=T0 + 30 * H)  # the day is over: resumed at T0 + 24.75 h
    resolve = clocks_of(db, order_no)[("resolve", 0)]
    assert resolve.paused_at is None and aware(resolve.due_at) == T0 + 48 * H
    assert fired(db, outbox_events, "order_resumed")


def test_urges_and_their_outcome_and_the_at_risk_list(db, router, appeal_received, outbox_events):
    order_no = dispatch(db, router, appeal_received)
    handlers.accept_order(db(), order_no, GRID, "a", now=T0 + 0.5 * H)
    handlers.add_progress(db(), order_no, GRID, "已联系", "p", now=T0 + H)
    risky = supervision.at_risk(db(), town_code=YINPING, now=T0 + 20 * H)
    assert [(r["order_no"], r["clock"]) for r in risky] == [(order_no, "resolve")] and risky[0]["elapsed"] >= 0.8
    assert supervision.at_risk(db(), now=T0 + 2 * H) == []
    urge = supervision.urge(db(), order_no, "督查组王某", "请今日内办结", "u", now=T0 + 20 * H)
    assert supervision.urge(db(), order_no, "督查组王某", "请今日内办结", "u", now=T0 + 20 * H) == urge
    [event] = fired(db, outbox_events, "order_urged")
    assert event["data"]["urge_id"] == urge["urge_id"] and "王某" not in str(event["data"])
    done = supervision.record_urge_outcome(db(), urge["urge_id"], "handled", "已修复", "o", now=T0 + 22 * H)
    assert done["outcome"] == "handled"
    with pytest.raises(InvalidTransition):
        supervision.record_urge_outcome(db(), urge["urge_id"], "no_response", "", "o2")
    with pytest.raises(ValidationError):
        supervision.record_urge_outcome(db(), urge["urge_id"], "whatever", "", "o3")


def test_a_rework_starts_a_new_resolve_clock(db, router, appeal_received):
    from wuji_common.events import make_event
    order_no = dispatch(db, router, appeal_received)
    handlers.accept_order(db(), order_no, GRID, "a", now=T0 + 0.5 * H)
    handlers.resolve_order(db(), order_no, GRID, "已修复", "r", now=T0 + 5 * H)
    rating = make_event("appeal_rated", "YC20261125000001", {"satisfaction": "unsatisfied",
                                                               "rated_at": (T0 + 6 * H).isoformat()})
    handlers.apply_rating(db(), "triage.on_appeal_rated", rating, now=T0 + 6 * H)
    clocks = clocks_of(db, order_no)
    assert clocks[("resolve", 0)].outcome == "met" and clocks[("resolve", 1)].stopped_at is None
    assert aware(clocks[("resolve", 1)].due_at) == T0 + 30 * H

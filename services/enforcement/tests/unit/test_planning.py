"""Scheduling a town from the database: the snapshot (rosters, leave, jurisdiction, waiting periods,
shared district teams), the stored plan and its event, re-plan requests when an officer drops out or
an urgent operation arrives, and re-planning with few moves. The solver is the real one, in process."""
from datetime import date, datetime, timezone

import pytest

from enforcement import handlers, scheduling
from wuji_common.errors import InvalidTransition, NotFound, ValidationError

MONDAY = datetime(2026, 11, 30, 0, 30, tzinfo=timezone.utc)  # 08:30 in Yicheng
GUSHAO, YINPING = "370404100", "370404101"


def solve(problem):
    return scheduling.solve(problem, time_limit=5)


def whistle(db, n, violation="road_occupation", urgency="normal", town=GUSHAO, now=MONDAY):
    return handlers.blow_whistle(db.uow(), {"order_no": f"GD{town}{n:04d}", "violation_type": violation,
                                            "town_code": town, "urgency": urgency}, None,
                                 now=now)["operation_id"]


def plan(db, town=GUSHAO, days=7, now=MONDAY, key=None, reason="requested"):
    return handlers.schedule(db.uow(), solve, {"town_code": town, "horizon_days": days}, reason=reason,
                             idempotency_key=key, now=now)


def test_a_town_is_planned_and_the_plan_published(db):
    ops = [whistle(db, n) for n in range(6)]
    result = plan(db, key="plan-1")

    assert result["town_code"] == GUSHAO and result["plan_version"] == 1
    assert result["horizon_start"] == "2026-11-30" and result["solver"] == "cp-sat"
    assert result["on_time"] == 6 and result["unscheduled"] == [] and result["moved"] == 0
    by_op = {}
    for a in result["assignments"]:
        by_op.setdefault(a["operation_id"], []).append(a)
    assert sorted(by_op) == sorted(ops)
    for assignments in by_op.values():  # every force present, on one day, a team of that force
        assert sorted(a["force_code"] for a in assignments) == sorted(
            ["comprehensive_enforcement", "public_security", "market_supervision"])
        assert len({a["day"] for a in assignments}) == 1
        assert all(a["team"].startswith(a["force_code"]) for a in assignments)
    [event] = db.events("operations_scheduled")
    assert event["data"]["plan_version"] == 1 and event["data"]["assignments"] == result["assignments"]
    assert handlers.latest_plan(db.uow(), GUSHAO) == result
    assert plan(db, key="plan-1") == result and len(db.events("operations_scheduled")) == 1


def test_caps_and_rosters_bound_a_day(db):
    # fire hazards call housing and construction, whose one team in the town takes one operation a
    # day, Monday to Friday
    ops = [whistle(db, n, violation="fire_hazard") for n in range(4)]
    result = plan(db)
    days = sorted({a["day"] for a in result["assignments"] if a["force_code"] == "housing_construction"})
    assert len(days) == 4  # one a day
    assert all(date.fromisoformat(d).isoweekday() <= 5 for d in days)  # not at the weekend
    assert len(ops) == 4


def away(db, team, officers, first="2026-11-30", last="2026-12-01", kind="leave"):
    for n in officers:
        result = handlers.record_absence(db.uow(), {
            "officer_code": f"{team}-{n:02d}", "first_day": first, "last_day": last, "kind": kind},
            f"{team}-{n}-{kind}", now=MONDAY)
    return result


def test_a_district_team_takes_what_the_town_team_cannot(db):
    # the town's comprehensive enforcement team is away on training: the district team steps in
    away(db, f"comprehensive_enforcement-{GUSHAO}", range(1, 8), kind="training")
    for n in range(3):
        whistle(db, n, urgency="emergency")  # due the same day
    result = plan(db, days=1)
    teams = [a["team"] for a in result["assignments"] if a["force_code"] == "comprehensive_enforcement"]
    assert teams == ["comprehensive_enforcement-district"] * 3 and result["unscheduled"] == []


def test_another_towns_plan_holds_the_shared_district_team(db):
    for town in (YINPING, GUSHAO):
        away(db, f"comprehensive_enforcement-{town}", range(1, 8), kind="training")
    for n in range(3):
        whistle(db, n, urgency="emergency", town=YINPING)
    first = plan(db, town=YINPING, days=1)
    assert sum(a["team"] == "comprehensive_enforcement-district" for a in first["assignments"]) == 3
    for n in range(3):
        whistle(db, n, urgency="emergency")
    second = plan(db, days=1)  # the district team's three operations on Monday are Yinping's
    assert second["assignments"] == [] and len(second["unscheduled"]) == 3


def test_a_case_waits_out_its_notice_period(db):
    oid = whistle(db, 1, violation="illegal_construction")
    assert plan(db)["assignments"] == []  # no notice yet: nothing to plan
    handlers.report_in(db.uow(), {"operation_id": oid, "force_code": "comprehensive_enforcement",
                                  "team": f"comprehensive_enforcement-{GUSHAO}"}, None, now=MONDAY)
    handlers.issue_rectification_notice(db.uow(), {"operation_id": oid, "notice_no": "峄综执〔2026〕1号"},
                                        None, now=MONDAY)
    assert plan(db, days=7)["assignments"] == []  # the 10 days outlast the horizon
    days = {a["day"] for a in plan(db, days=14)["assignments"]}
    assert len(days) == 1 and days.pop() >= "2026-12-10"


def test_an_officer_dropping_out_asks_for_a_replan_that_moves_few(db):
    for n in range(9):
        whistle(db, n, urgency="emergency")  # all due Monday: the town team of public security is full
    first = plan(db, days=1)
    assert handlers.replan_requests(db.uow()) == []
    ps = [a for a in first["assignments"] if a["team"] == f"public_security-{GUSHAO}"]
    assert len(ps) == 3  # 8 officers, two of them resting on Mondays (their roster): 6 → 3 operations

    absence = away(db, f"public_security-{GUSHAO}", (2, 3), kind="sick")  # 4 left → 2 operations
    assert absence["replan_towns"] == [GUSHAO]
    assert handlers.replan_requests(db.uow()) == [(GUSHAO, "officer_unavailable", 1)]

    again = plan(db, days=1, reason="officer_unavailable")
    assert again["plan_version"] == 2 and again["reason"] == "officer_unavailable"
    assert handlers.replan_requests(db.uow()) == []
    assert again["on_time"] == first["on_time"] - 1
    assert again["moved"] == 3  # the one operation that no longer fits: its three forces
    before = {(a["operation_id"], a["force_code"]): a for a in first["assignments"]}
    kept = sum(1 for a in again["assignments"] if before.get((a["operation_id"], a["force_code"])) == a)
    assert kept == len(first["assignments"]) - 3 == len(again["assignments"])


def test_an_urgent_operation_asks_for_a_replan(db):
    for n in range(3):
        whistle(db, n)
    plan(db)
    whistle(db, 10, urgency="normal")
    assert handlers.replan_requests(db.uow()) == []
    whistle(db, 11, urgency="urgent")
    assert handlers.replan_requests(db.uow()) == [(GUSHAO, "urgent_operation", 7)]
    again = plan(db, reason="urgent_operation")
    assert again["moved"] == 0 and again["on_time"] == 5


def test_a_plan_written_meanwhile_is_not_overwritten(db):
    whistle(db, 1)

    def solve_while_another_plan_lands(problem):
        plan(db)  # another instance commits version 1 while this one solves
        return solve(problem)
    with pytest.raises(InvalidTransition, match="已被另一请求更新"):
        handlers.schedule(db.uow(), solve_while_another_plan_lands, {"town_code": GUSHAO}, now=MONDAY)
    assert handlers.latest_plan(db.uow(), GUSHAO)["plan_version"] == 1


def test_unknown_towns_and_officers_are_refused(db):
    with pytest.raises(ValidationError) as err:
        plan(db, town="110101001")
    assert list(err.value.fields) == ["town_code"]
    with pytest.raises(ValidationError) as err:
        plan(db, days=90)
    assert list(err.value.fields) == ["horizon_days"]
    with pytest.raises(NotFound):
        handlers.latest_plan(db.uow(), GUSHAO)
    with pytest.raises(NotFound):
        handlers.record_absence(db.uow(), {"officer_code": "nobody", "first_day": "2026-11-30",
                                           "last_day": "2026-11-30", "kind": "leave"})
    with pytest.raises(ValidationError) as err:
        handlers.record_absence(db.uow(), {"officer_code": f"water-{GUSHAO}-01", "first_day": "2026-12-02",
                                           "last_day": "2026-11-30", "kind": "leave"})
    assert list(err.value.fields) == ["last_day"]


def test_the_town_forces_include_district_teams_after_its_own(db):
    teams = {f["force_code"]: [t["team"] for t in f["teams"]] for f in handlers.town_forces(db.uow(), GUSHAO)}
    assert teams["comprehensive_enforcement"] == [f"comprehensive_enforcement-{GUSHAO}",
                                                  "comprehensive_enforcement-district"]
    assert teams["water"] == [f"water-{GUSHAO}"]

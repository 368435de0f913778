"""A week of realistic events (the first week of March 2025, Yicheng time) for the handler and
interface tests, with the KPI figures they must produce — worked out by hand below."""
from datetime import datetime, timedelta, timezone

from wuji_common.events import make_event

CST = timezone(timedelta(hours=8))
TANSHAN, GUSHAO = "370404001", "370404100"
WINDOW = ("2025-03-03", "2025-03-09")  # Monday..Sunday


def at(day, hour, minute=0):
    return datetime(2025, 3, day, hour, minute, tzinfo=CST)


def event(kind, case_no, data, when):
    """An envelope as the source service would publish it, stamped ``when``."""
    envelope = make_event(kind, case_no, data)
    envelope["occurred_at"] = when.astimezone(timezone.utc).isoformat(timespec="milliseconds")
    return envelope


def received(case_no, town, channel, when):
    return event("appeal_received", case_no, {
        "channel": channel, "title": "诉求", "content": "诉求内容", "town_code": town,
        "anonymous": True, "received_at": when.isoformat()}, when)


def order(kind, case_no, order_no, unit, town, category, status, when, **extra):
    return event(kind, case_no, {"order_no": order_no, "unit_code": unit, "town_code": town,
                                 "category": category, "status": status, **extra}, when)


def dispatched(case_no, order_no, unit, town, category, when, accept_hours, resolve_days):
    return order("order_dispatched", case_no, order_no, unit, town, category, "dispatched", when,
                 unit_name="承办单位", level="town", policy="keywords", router_version="1",
                 title="诉求", accept_due_at=(when + timedelta(hours=accept_hours)).isoformat(),
                 resolve_due_at=(when + timedelta(days=resolve_days)).isoformat())


def accepted(o, when):
    return order("order_accepted", *o, "accepted", when, accepted_at=when.isoformat(),
                 within_deadline=True)


def resolved(o, when):
    return order("order_resolved", *o, "resolved", when, resolution="已处理",
                 resolved_at=when.isoformat(), within_deadline=True)


def rated(case_no, satisfaction, when):
    return event("appeal_rated", case_no, {"satisfaction": satisfaction, "rated_at": when.isoformat()},
                 when)


def week():
    """The events, in the order they happened. Per case:

    C1 坛山 wechat, road: dispatched Mon 09:00 (2 h to accept, 3 days to resolve), accepted 10:00
       (on time), resolved Tue (on time), rated satisfied, closed.
    C2 坛山 hotline, road: dispatched Mon 10:00, accepted 13:00 (late), resolved Fri (late, due
       Thu 10:00), rated unsatisfied → reopened, resolved again Sat, rated basically satisfied, closed.
    C3 古邵 web, wages: dispatched Tue 08:00 to the wrong unit, returned Tue 09:00 → new order to
       dept-hrss dispatched Tue 09:00, accepted 09:30, resolved Wed (on time), not rated yet.
    C4 古邵 walk_in, road: dispatched Sun 20:00, never accepted — due Sun 22:00 (passed): counted
       due, not on time.
    C5 坛山 web: received Sun 23:00, not dispatched yet (its category and unit are unknown).
    C6 坛山 wechat: received the Sunday before the window — outside.
    Enforcement: a whistle in 古邵 for O4, one force reports in on time, the operation completes.
    """
    o1 = ("C1", "O1", "town-370404001", TANSHAN, "urban-rural")
    o2 = ("C2", "O2", "town-370404001", TANSHAN, "urban-rural")
    o3a = ("C3", "O3a", "town-370404100", GUSHAO, "labour-social-security")
    o3b = ("C3", "O3b", "dept-hrss", GUSHAO, "labour-social-security")
    o4 = ("C4", "O4", "town-370404100", GUSHAO, "urban-rural")
    return [
        received("C6", TANSHAN, "wechat", at(2, 12)),
        received("C1", TANSHAN, "wechat", at(3, 8, 50)),
        dispatched(*o1, at(3, 9), 2, 3),
        received("C2", TANSHAN, "hotline", at(3, 9, 55)),
        dispatched(*o2, at(3, 10), 2, 3),
        accepted(o1, at(3, 10)),
        accepted(o2, at(3, 13)),
        received("C3", GUSHAO, "web", at(4, 7, 50)),
        dispatched(*o3a, at(4, 8), 2, 3),
        resolved(o1, at(4, 9)),
        order("order_returned", *o3a, "returned", at(4, 9), reason="不属于本单位职责"),
        dispatched(*o3b, at(4, 9), 2, 3),
        accepted(o3b, at(4, 9, 30)),
        order("order_progressed", *o3b, "accepted", at(4, 15), note="已联系企业"),
        rated("C1", "satisfied", at(4, 18)),
        order("order_closed", *o1, "closed", at(4, 18), satisfaction="satisfied",
              closed_at=at(4, 18).isoformat()),
        resolved(o3b, at(5, 16)),
        resolved(o2, at(7, 11)),
        rated("C2", "unsatisfied", at(7, 12)),
        order("order_reopened", *o2, "reopened", at(7, 12), reopen_count=1,
              resolve_due_at=at(10, 12).isoformat()),
        resolved(o2, at(8, 10)),
        rated("C2", "basically_satisfied", at(8, 11)),
        order("order_closed", *o2, "closed", at(8, 11), satisfaction="basically_satisfied",
              closed_at=at(8, 11).isoformat()),
        received("C4", GUSHAO, "walk_in", at(9, 19, 50)),
        dispatched(*o4, at(9, 20), 2, 3),
        event("whistle_blown", "C4", {"operation_id": "OP1", "order_no": "O4", "town_code": GUSHAO,
                                      "violation_type": "illegal-construction",
                                      "forces": ["dept-urban"],
                                      "report_in_due_at": at(9, 21).isoformat()}, at(9, 20, 10)),
        event("force_reported_in", "C4", {"operation_id": "OP1", "force_code": "dept-urban",
                                          "team": "一中队", "within_deadline": True}, at(9, 20, 40)),
        event("operation_completed", "C4", {"operation_id": "OP1", "order_no": "O4",
                                            "town_code": GUSHAO, "outcome": "已拆除"}, at(9, 21, 30)),
        received("C5", TANSHAN, "web", at(9, 23)),
    ]


def counts(appeals=0, orders=0, due=0, accepted_on_time=0, resolved=0, resolved_on_time=0,
           rated=0, satisfied=0, reopened=0):
    return {"appeals": appeals, "orders": orders, "due_for_acceptance": due,
            "accepted_on_time": accepted_on_time, "resolved": resolved,
            "resolved_on_time": resolved_on_time, "rated": rated, "satisfied": satisfied,
            "reopened": reopened}


# expected KPI counts over WINDOW, by town (rates follow from them: see test_kpis_*)
BY_TOWN = {
    # C1, C2, C5 received; O1, O2 dispatched, both due, O1 on time; O1, O2 resolved, O1 on time,
    # O2 reopened; C1 satisfied, C2 basically satisfied (latest rating)
    TANSHAN: counts(appeals=3, orders=2, due=2, accepted_on_time=1, resolved=2, resolved_on_time=1,
                    rated=2, satisfied=2, reopened=1),
    # C3, C4 received; O3a, O3b, O4 dispatched; O3a returned (left out), O3b on time, O4 overdue;
    # O3b resolved on time; nobody rated
    GUSHAO: counts(appeals=2, orders=3, due=2, accepted_on_time=1, resolved=1, resolved_on_time=1),
}
BY_UNIT = {
    "dept-hrss": counts(appeals=1, orders=1, due=1, accepted_on_time=1, resolved=1,
                        resolved_on_time=1),
    "town-370404001": counts(appeals=2, orders=2, due=2, accepted_on_time=1, resolved=2,
                             resolved_on_time=1, rated=2, satisfied=2, reopened=1),
    "town-370404100": counts(appeals=1, orders=2, due=1, accepted_on_time=0),
    None: counts(appeals=1),  # C5, not dispatched yet
}
BY_CATEGORY = {
    "labour-social-security": counts(appeals=1, orders=2, due=1, accepted_on_time=1, resolved=1,
                                     resolved_on_time=1),
    "urban-rural": counts(appeals=3, orders=3, due=3, accepted_on_time=1, resolved=2,
                          resolved_on_time=1, rated=2, satisfied=2, reopened=1),
    None: counts(appeals=1),
}


def random_history(seed, cases=30):
    """Many cases around the window with random timings and outcomes (late, early, exactly on the
    deadline, returned, reopened, unrated), to hold the SQL aggregation to the domain definitions
    beyond the hand-worked week."""
    import random
    rnd = random.Random(seed)
    towns = [TANSHAN, GUSHAO, "370404002"]
    categories = ["urban-rural", "environment", None]
    events = []
    for n in range(cases):
        case_no, town = f"R{n}", rnd.choice(towns)
        start = at(1, 0) + timedelta(hours=rnd.randrange(0, 24 * 12))
        events.append(received(case_no, town, rnd.choice(["web", "wechat", "hotline"]), start))
        category = rnd.choice(categories)
        if category is None:
            continue  # never dispatched
        o = (case_no, f"RO{n}", f"town-{town}", town, category)
        dispatched_at = start + timedelta(minutes=10)
        events.append(dispatched(*o, dispatched_at, 2, 3))
        fate = rnd.choice(["accepted", "accepted", "returned", "pending"])
        if fate == "returned":
            events.append(order("order_returned", *o, "returned", dispatched_at + timedelta(hours=1),
                                reason="非本单位职责"))
            continue
        if fate == "pending":
            continue
        accept_after = rnd.choice([timedelta(minutes=30), timedelta(hours=2), timedelta(hours=5)])
        events.append(accepted(o, dispatched_at + accept_after))
        if rnd.random() < 0.2:
            continue
        resolve_after = rnd.choice([timedelta(days=1), timedelta(days=3), timedelta(days=4)])
        resolved_at = dispatched_at + resolve_after
        events.append(resolved(o, resolved_at))
        if rnd.random() < 0.3:
            continue  # not rated yet
        satisfaction = rnd.choice(["satisfied", "basically_satisfied", "unsatisfied"])
        events.append(rated(case_no, satisfaction, resolved_at + timedelta(hours=2)))
        if satisfaction == "unsatisfied":
            events.append(order("order_reopened", *o, "reopened", resolved_at + timedelta(hours=2),
                                reopen_count=1,
                                resolve_due_at=(resolved_at + timedelta(days=3)).isoformat()))
            if rnd.random() < 0.5:
                events.append(resolved(o, resolved_at + timedelta(days=1)))
    rnd.shuffle(events)
    return events

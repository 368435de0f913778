"""The KPI definitions and the folds, as plain functions."""
import itertools
from datetime import date, datetime, timedelta, timezone

import pytest

from metrics import domain

UTC = timezone.utc
WEEK = domain.Window(date(2025, 3, 3), date(2025, 3, 9))
NOW = datetime(2025, 6, 1, tzinfo=UTC)


def t(day, hour=0, minute=0):
    """An instant in Yicheng time (UTC+8), as UTC."""
    return datetime(2025, 3, day, hour, minute, tzinfo=timezone(timedelta(hours=8))).astimezone(UTC)


def an_order(**fields):
    base = {"order_no": "O1", "town_code": "370404001", "unit_code": "u1", "category": "c",
            "status": "accepted", "dispatched_at": t(4, 9), "accept_due_at": t(4, 11),
            "accepted_at": t(4, 10), "first_resolved_at": None, "resolved_on_time": None,
            "reopen_count": 0}
    return {**base, **fields}


# --- rates ----------------------------------------------------------------------------------------

def row(**counts):
    return domain.kpi_row("g", counts)


def test_rates_are_none_when_their_denominator_is_zero():
    r = row()
    assert (r["response_rate"], r["on_time_resolution_rate"], r["satisfaction_rate"],
            r["rework_rate"]) == (None, None, None, None)


def test_a_rate_of_zero_is_zero_not_none():
    r = row(due_for_acceptance=3, accepted_on_time=0, resolved=2, rated=1, satisfied=0)
    assert (r["response_rate"], r["on_time_resolution_rate"], r["satisfaction_rate"],
            r["rework_rate"]) == (0.0, 0.0, 0.0, 0.0)


def test_each_rate_divides_its_own_pair():
    r = row(due_for_acceptance=4, accepted_on_time=3, resolved=8, resolved_on_time=6, rated=3,
            satisfied=2, reopened=2)
    assert domain.response_rate(r) == 0.75
    assert domain.on_time_resolution_rate(r) == 0.75
    assert domain.satisfaction_rate(r) == 0.6667
    assert domain.rework_rate(r) == 0.25


def test_the_total_row_recomputes_rates_from_summed_counts_not_averages():
    rows = [row(due_for_acceptance=1, accepted_on_time=1), row(due_for_acceptance=3, accepted_on_time=0)]
    total = domain.total_row(rows)
    assert total["group"] == domain.TOTAL
    assert (total["due_for_acceptance"], total["accepted_on_time"], total["response_rate"]) == (4, 1, 0.25)


# --- response (响应率) ------------------------------------------------------------------------------

def test_acceptance_before_the_deadline_is_on_time():
    counts = domain.order_counts(an_order(), WEEK, NOW)
    assert (counts["due_for_acceptance"], counts["accepted_on_time"]) == (1, 1)


def test_acceptance_exactly_at_the_deadline_is_on_time():
    counts = domain.order_counts(an_order(accepted_at=t(4, 11)), WEEK, NOW)
    assert (counts["due_for_acceptance"], counts["accepted_on_time"]) == (1, 1)


def test_late_acceptance_counts_due_but_not_on_time():
    counts = domain.order_counts(an_order(accepted_at=t(4, 11, 1)), WEEK, NOW)
    assert (counts["due_for_acceptance"], counts["accepted_on_time"]) == (1, 0)


def test_a_passed_deadline_without_acceptance_counts_due_and_missed():
    counts = domain.order_counts(an_order(accepted_at=None, status="dispatched"), WEEK, NOW)
    assert (counts["due_for_acceptance"], counts["accepted_on_time"]) == (1, 0)


def test_a_deadline_still_ahead_is_not_due_until_accepted():
    now = t(4, 10, 30)  # the order's deadline is 11:00
    assert domain.order_counts(an_order(accepted_at=None), WEEK, now)["due_for_acceptance"] == 0
    accepted_early = domain.order_counts(an_order(accepted_at=t(4, 10)), WEEK, now)
    assert (accepted_early["due_for_acceptance"], accepted_early["accepted_on_time"]) == (1, 1)


def test_an_order_counts_in_the_window_of_its_deadline_not_of_its_dispatch():
    # dispatched Sunday 23:00, due Monday 01:00: the deadline belongs to the next week
    late_sunday = an_order(dispatched_at=t(9, 23), accept_due_at=t(10, 1), accepted_at=None)
    counts = domain.order_counts(late_sunday, WEEK, NOW)
    assert (counts["orders"], counts["due_for_acceptance"]) == (1, 0)


def test_a_returned_order_is_left_out_of_the_response_rate():
    returned = an_order(accepted_at=None, status="returned")
    counts = domain.order_counts(returned, WEEK, NOW)
    assert (counts["orders"], counts["due_for_acceptance"]) == (1, 0)


# --- resolution, rework ----------------------------------------------------------------------------

def test_resolution_counts_once_in_the_window_of_the_first_resolution():
    inside = an_order(first_resolved_at=t(5, 9), resolved_on_time=True)
    outside = an_order(first_resolved_at=t(10, 9), resolved_on_time=True)
    assert domain.order_counts(inside, WEEK, NOW)["resolved_on_time"] == 1
    assert domain.order_counts(outside, WEEK, NOW)["resolved"] == 0


def test_a_late_first_resolution_is_resolved_but_not_on_time():
    counts = domain.order_counts(an_order(first_resolved_at=t(5, 9), resolved_on_time=False), WEEK, NOW)
    assert (counts["resolved"], counts["resolved_on_time"]) == (1, 0)


def test_a_reopened_order_is_rework_of_its_resolution():
    counts = domain.order_counts(an_order(first_resolved_at=t(5, 9), resolved_on_time=True,
                                          reopen_count=2), WEEK, NOW)
    assert (counts["resolved"], counts["reopened"]) == (1, 1)
    unresolved = domain.order_counts(an_order(reopen_count=1), WEEK, NOW)
    assert unresolved["reopened"] == 0  # rework only ever counts among resolved orders


# --- satisfaction (满意率) --------------------------------------------------------------------------

@pytest.mark.parametrize("satisfaction, satisfied", [
    ("satisfied", 1), ("basically_satisfied", 1), ("unsatisfied", 0)])
def test_basically_satisfied_counts_as_satisfied(satisfaction, satisfied):
    appeal = {"received_at": t(3, 9), "rated_at": t(5, 9), "satisfaction": satisfaction}
    assert domain.appeal_counts(appeal, WEEK) == {"appeals": 1, "rated": 1, "satisfied": satisfied}


def test_an_unrated_appeal_adds_no_rating():
    appeal = {"received_at": t(3, 9), "rated_at": None, "satisfaction": None}
    assert domain.appeal_counts(appeal, WEEK) == {"appeals": 1, "rated": 0, "satisfied": 0}


# --- windows, instants -----------------------------------------------------------------------------

def test_window_days_are_local_days_in_the_kpi_time_zone():
    assert WEEK.lo == datetime(2025, 3, 2, 16, tzinfo=UTC)
    assert WEEK.hi == datetime(2025, 3, 9, 16, tzinfo=UTC)
    assert WEEK.contains(t(3, 0)) and WEEK.contains(t(9, 23, 59))
    assert not WEEK.contains(t(10, 0)) and not WEEK.contains(None)
    assert domain.Window(date(2025, 3, 3), date(2025, 3, 3), "UTC").hi == datetime(2025, 3, 4, tzinfo=UTC)


def test_instants_are_read_as_utc_and_bad_ones_as_unknown():
    assert domain.parse_instant("2025-03-03T08:00:00+08:00") == datetime(2025, 3, 3, tzinfo=UTC)
    assert domain.parse_instant("2025-03-03T00:00:00") == datetime(2025, 3, 3, tzinfo=UTC)
    assert domain.parse_instant("x") is None and domain.parse_instant(None) is None


# --- folds -----------------------------------------------------------------------------------------

def envelope(kind, when, event_id, case_no="C1", **data):
    base = {"order_no": "O1", "unit_code": "u1", "town_code": "370404001", "category": "road"}
    return {"event_id": event_id, "type": kind, "occurred_at": when.isoformat(), "case_no": case_no,
            "data": {**base, **data} if kind.startswith("order_") else data}


def order_story():
    return [
        envelope("order_dispatched", t(3, 9), "e1", status="dispatched", level="town",
                 accept_due_at=t(3, 11).isoformat(), resolve_due_at=t(4, 9).isoformat()),
        envelope("order_accepted", t(3, 10), "e2", status="accepted", accepted_at=t(3, 10).isoformat()),
        envelope("order_resolved", t(5, 9), "e3", status="resolved", resolved_at=t(5, 9).isoformat()),
        envelope("order_reopened", t(5, 12), "e4", status="reopened", reopen_count=1,
                 resolve_due_at=t(8, 12).isoformat()),
        envelope("order_resolved", t(6, 9), "e5", status="resolved", resolved_at=t(6, 9).isoformat()),
        envelope("order_closed", t(6, 18), "e6", status="closed", satisfaction="satisfied",
                 closed_at=t(6, 18).isoformat()),
    ]


def test_an_order_folds_to_its_milestones():
    order = domain.fold_order("O1", order_story())
    assert order["dispatched_at"] == t(3, 9) and order["accepted_at"] == t(3, 10)
    assert order["report_in_seconds"] == 3600
    # the first resolution (late: due the 4th) is the one measured; the rework met its new deadline
    assert order["first_resolved_at"] == t(5, 9) and order["resolved_on_time"] is False
    assert order["resolved_at"] == t(6, 9) and order["resolve_due_at"] == t(8, 12)
    assert order["resolve_seconds"] == 2 * 86400
    assert (order["status"], order["reopen_count"], order["satisfaction"]) == ("closed", 1, "satisfied")
    assert order["closed_at"] == t(6, 18)


def test_an_order_fold_does_not_depend_on_arrival_order():
    events = order_story()
    expected = domain.fold_order("O1", events)
    for arrival in itertools.permutations(events):
        assert domain.fold_order("O1", list(arrival)) == expected


def test_acceptance_known_before_dispatch_waits_for_it():
    accepted = [order_story()[1]]
    order = domain.fold_order("O1", accepted)
    assert order["accepted_at"] == t(3, 10) and order["dispatched_at"] is None
    assert order["report_in_seconds"] is None
    assert domain.order_counts(order, WEEK, NOW)["due_for_acceptance"] == 0


def test_a_new_dispatch_of_the_same_order_restarts_the_acceptance_clock():
    first, accepted = order_story()[:2]
    again = envelope("order_dispatched", t(3, 12), "e9", status="dispatched", level="town",
                     unit_code="u2", accept_due_at=t(3, 14).isoformat(),
                     resolve_due_at=t(5, 12).isoformat())
    order = domain.fold_order("O1", [again, accepted, first])
    assert (order["unit_code"], order["accepted_at"], order["accept_due_at"]) == ("u2", None, t(3, 14))


def test_events_in_the_same_millisecond_fold_in_the_order_they_can_happen():
    dispatched, accepted = order_story()[:2]
    accepted = {**accepted, "occurred_at": dispatched["occurred_at"], "event_id": "a0"}
    assert domain.fold_order("O1", [accepted, dispatched])["status"] == "accepted"


def test_an_appeal_folds_its_channel_dispatch_and_latest_rating():
    events = [
        envelope("appeal_rated", t(7, 9), "r2", satisfaction="basically_satisfied",
                 rated_at=t(7, 9).isoformat()),
        envelope("order_dispatched", t(3, 9), "d1", status="dispatched", unit_code="u1",
                 category="road", town_code="370404001"),
        envelope("appeal_received", t(3, 8), "a1", channel="wechat", town_code="370404001",
                 received_at=t(3, 8).isoformat()),
        envelope("appeal_rated", t(5, 9), "r1", satisfaction="unsatisfied", rated_at=t(5, 9).isoformat()),
    ]
    appeal = domain.fold_appeal("C1", events)
    assert appeal == {"case_no": "C1", "channel": "wechat", "town_code": "370404001", "unit_code": "u1",
                      "category": "road", "received_at": t(3, 8), "satisfaction": "basically_satisfied",
                      "rated_at": t(7, 9)}


def test_an_appeal_known_only_from_its_order_takes_the_order_town():
    dispatched = envelope("order_dispatched", t(3, 9), "d1", status="dispatched", town_code="370404100")
    appeal = domain.fold_appeal("C1", [dispatched])
    assert appeal["town_code"] == "370404100" and appeal["received_at"] is None


def test_group_by_is_one_of_town_unit_category():
    assert [domain.group_key(g) for g in domain.GROUP_BY] == ["town_code", "unit_code", "category"]
    with pytest.raises(ValueError):
        domain.group_key("case_no")


# --- overdue ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, now, stage", [
    ({"status": "dispatched", "accepted_at": None}, t(4, 10), None),          # nothing due yet
    ({"status": "dispatched", "accepted_at": None}, t(4, 12), "accept"),      # 签收 overdue
    ({"status": "accepted"}, t(4, 12), None),                                  # accepted, late or not
    ({"status": "accepted", "resolve_due_at": t(6, 9)}, t(6, 10), "resolve"),
    ({"status": "dispatched", "resolve_due_at": t(6, 9)}, t(6, 10), "resolve"),  # counted once
    ({"status": "reopened", "resolve_due_at": t(9, 9)}, t(9, 10), "resolve"),
    ({"status": "resolved", "resolve_due_at": t(6, 9)}, t(7, 10), None),
    ({"status": "returned", "accepted_at": None}, t(5, 0), None),
    ({"status": "closed", "resolve_due_at": t(6, 9)}, t(7, 10), None),
])
def test_an_open_order_is_overdue_at_its_most_advanced_passed_deadline(fields, now, stage):
    order = an_order(**{"resolve_due_at": t(7, 9), **fields})
    assert domain.overdue_stage(order, now) == stage

"""Handlers on a real database (SQLite and PostgreSQL): projections, dedup, KPIs, series."""
import copy
import random
from datetime import datetime, timedelta, timezone

import eventlet
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import select

from metrics import domain, handlers
from metrics.exposition import DomainCollector
from metrics.models import AppealFact, EventLog, OrderFact
from wuji_common.errors import ValidationError

NOW = datetime(2025, 6, 1, tzinfo=timezone.utc)
SUNDAY_EVENING = datetime(2025, 3, 9, 13, 30, tzinfo=timezone.utc)  # 21:30 in Yicheng


def record_all(uow, events):
    return [handlers.record_event(uow(), f"metrics.on_{e['type']}", e) for e in events]


def facts(uow, model, key):
    with uow() as u:
        rows = u.session.execute(select(model).order_by(key)).scalars().all()
        return [{c.name: _utc(getattr(r, c.name)) for c in model.__table__.columns
                 if c.name != "updated_at"} for r in rows]


def _utc(value):
    # SQLite hands datetimes back naive; they were stored as UTC
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def kpis(uow, story, group_by, now=NOW):
    return handlers.kpis(uow(), *story.WINDOW, group_by, now=now)


def test_a_week_of_events_gives_the_kpis_worked_out_by_hand(metrics_db, story):
    _, uow = metrics_db
    events = story.week()
    random.Random(7).shuffle(events)  # queues deliver in any order
    record_all(uow, events)
    for group_by, expected in (("town", story.BY_TOWN), ("unit", story.BY_UNIT),
                               ("category", story.BY_CATEGORY)):
        assert kpis(uow, story, group_by) == domain.assemble(expected, handlers.group_names(group_by))

    tanshan, gushao, total = kpis(uow, story, "town")
    assert (tanshan["group"], tanshan["name"]) == (story.TANSHAN, "坛山街道")
    assert tanshan["response_rate"] == 0.5 and tanshan["on_time_resolution_rate"] == 0.5
    assert tanshan["satisfaction_rate"] == 1.0 and tanshan["rework_rate"] == 0.5
    assert gushao["response_rate"] == 0.5 and gushao["on_time_resolution_rate"] == 1.0
    assert gushao["satisfaction_rate"] is None and gushao["rework_rate"] == 0.0
    assert (total["group"], total["appeals"], total["orders"]) == ("total", 5, 5)
    assert (total["due_for_acceptance"], total["accepted_on_time"], total["response_rate"]) == (4, 2, 0.5)
    assert total["on_time_resolution_rate"] == 0.6667 and total["rework_rate"] == 0.3333

    # Sunday 21:30 in Yicheng: O4 falls due at 22:00, so it is not counted yet
    *_, total = kpis(uow, story, "town", now=SUNDAY_EVENING)
    assert (total["due_for_acceptance"], total["accepted_on_time"]) == (3, 2)

    [total] = handlers.kpis(uow(), "2024-01-01", "2024-01-31", "unit")
    assert total["group"] == "total" and total["orders"] == 0 and total["response_rate"] is None


def test_sql_aggregation_agrees_with_the_definitions_in_domain(metrics_db, story):
    _, uow = metrics_db
    record_all(uow, story.week() + story.random_history(seed=11))
    orders = facts(uow, OrderFact, OrderFact.order_no)
    appeals = facts(uow, AppealFact, AppealFact.case_no)
    window = domain.Window(*(datetime.fromisoformat(d).date() for d in story.WINDOW))
    for group_by in domain.GROUP_BY:
        for now in (NOW, SUNDAY_EVENING):
            reference = domain.kpi_rows(orders, appeals, group_by, window, now,
                                        handlers.group_names(group_by))
            assert kpis(uow, story, group_by, now=now) == reference, (group_by, now)
    assert reference[-1]["orders"] > 10 and reference[-1]["reopened"] > 0  # the data exercises them


def test_sql_overdue_counts_agree_with_the_definition_in_domain(metrics_db, story):
    _, uow = metrics_db
    record_all(uow, story.week() + story.random_history(seed=5))
    orders = facts(uow, OrderFact, OrderFact.order_no)
    stages_seen = set()
    for now in (story.at(3, 12), story.at(5, 0), story.at(9, 12), NOW):
        expected = {}
        for order in orders:
            stage = domain.overdue_stage(order, now)
            if stage:
                key = (order["town_code"], stage)
                expected[key] = expected.get(key, 0) + 1
                stages_seen.add(stage)
        assert dict(handlers.metrics_snapshot(uow(), now)["orders_overdue"]) == expected, now
    assert stages_seen == {"accept", "resolve"}


def renamed(events, prefix):
    """The same history for other cases and orders, with new event ids."""
    out = copy.deepcopy(events)
    for e in out:
        e["event_id"] = prefix + e["event_id"][len(prefix):]
        e["case_no"] = prefix + e["case_no"] if e["case_no"] else None
        for key in ("order_no", "operation_id"):
            if e["data"].get(key):
                e["data"][key] = prefix + e["data"][key]
    return out


def strip(rows, key, prefix):
    return sorted(({**r, key: r[key].removeprefix(prefix),
                    **({"case_no": r["case_no"].removeprefix(prefix)} if r.get("case_no") else {})}
                   for r in rows), key=lambda r: r[key])


def test_projections_do_not_depend_on_the_order_events_arrive_in(metrics_db, story):
    _, uow = metrics_db
    events = story.week()
    record_all(uow, renamed(events, "A-"))
    record_all(uow, renamed(list(reversed(events)), "B-"))  # order_accepted before order_dispatched...
    shuffled = renamed(events, "C-")
    random.Random(3).shuffle(shuffled)
    record_all(uow, shuffled)
    orders = facts(uow, OrderFact, OrderFact.order_no)
    appeals = facts(uow, AppealFact, AppealFact.case_no)
    for facts_of, key in ((orders, "order_no"), (appeals, "case_no")):
        a, b, c = (strip([r for r in facts_of if r[key].startswith(p)], key, p) for p in ("A-", "B-", "C-"))
        assert a == b == c and len(a) > 0
    o2 = next(o for o in orders if o["order_no"] == "B-O2")
    assert (o2["status"], o2["reopen_count"], o2["resolved_on_time"], o2["satisfaction"]) == \
        ("closed", 1, False, "basically_satisfied")


def test_a_duplicate_event_is_dropped_by_its_id(metrics_db, story):
    _, uow = metrics_db
    events = story.week()
    assert all(record_all(uow, events))
    before = kpis(uow, story, "town")
    orders_before = facts(uow, OrderFact, OrderFact.order_no)
    assert not any(record_all(uow, events))  # every one delivered a second time
    assert handlers.event_count(uow()) == len(events)
    assert handlers.event_count(uow(), "order_reopened") == 1
    assert kpis(uow, story, "town") == before
    assert facts(uow, OrderFact, OrderFact.order_no) == orders_before


def test_the_log_keeps_the_full_envelope(metrics_db, story):
    _, uow = metrics_db
    events = story.week()
    record_all(uow, events)
    with uow() as u:
        kept = u.session.execute(select(EventLog).where(EventLog.event_id == events[2]["event_id"])).scalar_one()
        assert kept.envelope == events[2] and kept.order_no == "O1" and kept.category == "urban-rural"


def test_concurrent_events_of_one_order_all_reach_its_fact(metrics_db, story):
    """Queues are consumed in parallel: events of one order must not overwrite each other's refold."""
    _, uow = metrics_db
    events = [e for e in story.week() if e["data"].get("order_no") == "O2"]
    pool = eventlet.GreenPool(len(events))
    for e in events:
        pool.spawn(handlers.record_event, uow(), f"metrics.on_{e['type']}", e)
    pool.waitall()
    [order] = facts(uow, OrderFact, OrderFact.order_no)
    expected = domain.fold_order("O2", events)
    assert {k: order[k] for k in expected} == expected


def test_events_recorded_in_batches_give_the_facts_of_one_by_one(metrics_db, story):
    """The batch handler's path: concurrent batches of one event type each (as the queues are
    consumed), one delivered twice within its batch and again later — the same facts as a fold."""
    _, uow = metrics_db
    events = story.week()
    by_type = {}
    for e in events:
        by_type.setdefault(e["type"], []).append(e)
    pool = eventlet.GreenPool(len(by_type))
    for kind, batch in by_type.items():
        pool.spawn(handlers.record_events, uow(), f"metrics.on_{kind}", batch + batch[:1])
    pool.waitall()
    assert handlers.record_events(uow(), f"metrics.on_{events[0]['type']}", events[:1]) == 0
    with uow() as u:
        assert len(u.session.execute(select(EventLog.id)).all()) == len(events)
    orders = {o["order_no"]: o for o in facts(uow, OrderFact, OrderFact.order_no)}
    for order_no in {e["data"]["order_no"] for e in events if e["data"].get("order_no")}:
        expected = domain.fold_order(order_no, [e for e in events if e["data"].get("order_no") == order_no])
        assert {k: orders[order_no][k] for k in expected} == expected


def test_an_unreadable_timestamp_costs_the_field_not_the_event(metrics_db, story):
    _, uow = metrics_db
    dispatched = story.dispatched("C9", "O9", "u", story.TANSHAN, "c", story.at(4, 9), 2, 3)
    dispatched["data"]["accept_due_at"] = "x"
    assert handlers.record_event(uow(), "metrics.on_order_dispatched", dispatched)
    [order] = facts(uow, OrderFact, OrderFact.order_no)
    assert order["accept_due_at"] is None and order["dispatched_at"] is not None


@pytest.mark.parametrize("args, field", [
    (("2025-13-01", "2025-03-09", "town"), "start"),
    ((None, "2025-03-09", "town"), "start"),
    (("2025-03-03", "next week", "town"), "end"),
    (("2025-03-09", "2025-03-03", "town"), "end"),
    (("2025-03-03", "2025-03-09", "case"), "group_by"),
    (("2025-03-03", "2025-03-09", None), "group_by"),
])
def test_bad_kpi_queries_name_the_field(args, field):
    with pytest.raises(ValidationError) as err:
        handlers.kpis(None, *args)  # refused before any database is touched
    assert list(err.value.fields) == [field]


def test_the_series_are_read_from_the_database(metrics_db, story):
    _, uow = metrics_db
    record_all(uow, story.week())
    registry = CollectorRegistry()
    collector = DomainCollector()
    registry.register(collector)
    collector.publish(handlers.metrics_snapshot(uow(), now=NOW))
    text = generate_latest(registry).decode()
    t, g = story.TANSHAN, story.GUSHAO
    for line in [
        f'wuji_appeals_received_total{{channel="wechat",town="{t}"}} 2.0',
        f'wuji_appeals_received_total{{channel="walk_in",town="{g}"}} 1.0',
        f'wuji_orders_dispatched_total{{category="labour-social-security",town="{g}"}} 2.0',
        f'wuji_orders_resolved_total{{category="urban-rural",town="{t}"}} 3.0',
        f'wuji_orders_reopened_total{{category="urban-rural",town="{t}"}} 1.0',
        f'wuji_orders_returned_total{{category="labour-social-security",town="{g}"}} 1.0',
        f'wuji_orders_closed_total{{category="urban-rural",town="{t}"}} 2.0',
        'wuji_ratings_total{satisfaction="basically_satisfied"} 1.0',
        'wuji_ratings_total{satisfaction="unsatisfied"} 1.0',
        f'wuji_orders{{status="dispatched",town="{g}"}} 1.0',
        f'wuji_orders_overdue{{stage="resolve",town="{g}"}} 1.0',  # O4, never accepted
        f'wuji_whistles_blown_total{{town="{g}"}} 1.0',
        'wuji_forces_reported_in_total{within_deadline="true"} 1.0',
        'wuji_events_recorded_total{type="appeal_received"} 6.0',
        # O1 1 h and O2 3 h from dispatch to acceptance; O1 1 day, O2 4 days 1 h to first resolution
        f'wuji_order_report_in_seconds_bucket{{le="3600.0",town="{t}"}} 1.0',
        f'wuji_order_report_in_seconds_bucket{{le="14400.0",town="{t}"}} 2.0',
        f'wuji_order_report_in_seconds_count{{town="{t}"}} 2.0',
        f'wuji_order_report_in_seconds_sum{{town="{t}"}} 14400.0',
        f'wuji_order_resolve_seconds_bucket{{le="86400.0",town="{t}"}} 1.0',
        f'wuji_order_resolve_seconds_sum{{town="{t}"}} 435600.0',
        f'wuji_order_resolve_seconds_count{{town="{g}"}} 1.0',
    ]:
        assert line in text.splitlines(), line
    assert "C1" not in text and "O1" not in text  # no case or order numbers in labels


def test_no_snapshot_serves_no_domain_samples():
    registry = CollectorRegistry()
    collector = DomainCollector()
    registry.register(collector)
    collector.publish(None)
    samples = [line for line in generate_latest(registry).decode().splitlines()
               if not line.startswith("#")]
    assert samples == []


def test_rebuild_replays_the_log_into_the_same_facts(metrics_db, story):
    _, uow = metrics_db
    events = story.week() + story.random_history(3)
    record_all(uow, events)
    orders, appeals = facts(uow, OrderFact, OrderFact.order_no), facts(uow, AppealFact, AppealFact.case_no)
    before = {g: kpis(uow, story, g) for g in ("town", "unit", "category")}

    # facts damaged (one lost, one wrong), and a fact with no event behind it
    with uow() as u:
        u.session.execute(OrderFact.__table__.delete().where(OrderFact.order_no == "O1"))
        u.session.execute(AppealFact.__table__.update().where(AppealFact.case_no == "C2")
                          .values(satisfaction="unsatisfied", channel="video"))
        u.session.execute(OrderFact.__table__.insert().values(order_no="GHOST", updated_at=NOW))
        u.commit()
    assert kpis(uow, story, "town") != before["town"]

    result = handlers.rebuild(uow(), batch_size=7)   # pages of keys smaller than the log
    assert result == {"events": len(events), "orders": len(orders), "appeals": len(appeals)}
    assert facts(uow, OrderFact, OrderFact.order_no) == orders
    assert facts(uow, AppealFact, AppealFact.case_no) == appeals
    assert {g: kpis(uow, story, g) for g in before} == before
    assert handlers.rebuild(uow()) == result        # again: nothing changes


def test_rebuild_fills_a_field_the_fold_learned_later(metrics_db, story):
    """close_seconds came with migration 0002: facts folded before it have none until a rebuild."""
    _, uow = metrics_db
    record_all(uow, story.week())
    with uow() as u:
        u.session.execute(OrderFact.__table__.update().values(close_seconds=None))
        u.commit()
    handlers.rebuild(uow())
    closed = {o["order_no"]: o["close_seconds"] for o in facts(uow, OrderFact, OrderFact.order_no)
              if o["close_seconds"] is not None}
    # O1 dispatched Mon 09:00, closed Tue 18:00; O2 dispatched Mon 10:00, closed Sat 11:00
    assert closed == {"O1": 33 * 3600, "O2": (5 * 24 + 1) * 3600}


def test_the_kpi_series_are_the_kpis_of_today_and_of_the_month(metrics_db, story):
    _, uow = metrics_db
    record_all(uow, story.week() + story.random_history(5))
    now = datetime(2025, 3, 9, 15, 0, tzinfo=timezone.utc)   # Sunday 23:00 in Yicheng
    snapshot = handlers.metrics_snapshot(uow(), now=now)
    for period, start in (("today", "2025-03-09"), ("month", "2025-03-01")):
        for key, group_by in (("kpi_by_town", "town"), ("kpi_by_unit", "unit")):
            rows = handlers.kpis(uow(), start, "2025-03-09", group_by, now=now)[:-1]
            expected = {(row["group"], measure): row[measure] for row in rows for measure in domain.COUNTS
                        if row[measure]}
            served = {(group, measure): n for (p, group, measure), n in snapshot[key]
                      if p == period and n}
            assert served == expected, (period, group_by)


def test_unit_category_close_and_report_in_overdue_series(metrics_db, story):
    _, uow = metrics_db
    t, g = story.TANSHAN, story.GUSHAO
    overdue = story.event("force_report_in_overdue", "C4", {
        "operation_id": "OP1", "order_no": "O4", "town_code": g, "force_code": "dept-urban",
        "report_in_due_at": story.at(9, 21).isoformat(), "marked_at": story.at(9, 21, 1).isoformat()},
        story.at(9, 21, 1))
    record_all(uow, story.week() + [overdue])
    registry = CollectorRegistry()
    collector = DomainCollector()
    registry.register(collector)
    collector.publish(handlers.metrics_snapshot(uow(), now=NOW))
    lines = generate_latest(registry).decode().splitlines()
    for line in [
        f'wuji_appeals_by_category{{category="urban-rural",town="{t}"}} 2.0',
        f'wuji_appeals_by_category{{category="unknown",town="{t}"}} 2.0',     # C5, C6 not dispatched
        f'wuji_appeals_by_category{{category="labour-social-security",town="{g}"}} 1.0',
        'wuji_unit_orders{status="closed",unit="town-370404001"} 2.0',
        'wuji_unit_orders{status="returned",unit="town-370404100"} 1.0',
        'wuji_unit_orders{status="resolved",unit="dept-hrss"} 1.0',
        'wuji_unit_orders_overdue{stage="resolve",unit="town-370404100"} 1.0',
        f'wuji_order_close_seconds_count{{town="{t}"}} 2.0',
        f'wuji_order_close_seconds_sum{{town="{t}"}} {float((33 + 121) * 3600)}',
        f'wuji_order_close_seconds_bucket{{le="172800.0",town="{t}"}} 1.0',
        f'wuji_forces_report_in_overdue_total{{town="{g}"}} 1.0',
    ]:
        assert line in lines, line
    # the month so far at NOW (June) saw nothing of March
    assert not [line for line in lines if line.startswith("wuji_kpi_count{") and not line.endswith(" 0.0")]


def test_cross_level_petitions_are_counted_per_town_and_month(metrics_db):
    """越级访 per town for a calendar month: triage's flags over the appeals received."""
    from wuji_common.events import make_event
    _, uow = metrics_db
    yinping, tanshan = "370404101", "370404001"

    def received(case_no, town, day):
        return make_event("appeal_received", case_no, {
            "channel": "hotline", "title": "路灯不亮", "content": "村口路灯不亮", "town_code": town,
            "village_code": None, "anonymous": True, "citizen_ref": None,
            "received_at": f"2026-11-{day:02d}T02:00:00+00:00"},
            occurred_at=datetime(2026, 11, day, 2, tzinfo=timezone.utc))

    def cross_level(case_no, town, day, month=11):
        return make_event("cross_level_petition_detected", case_no, {
            "order_no": f"GD-{case_no}", "unit_code": f"town-{town}", "town_code": town,
            "category": "municipal", "item": "street-lights", "level": "grid",
            "reception_level": "district", "channel": "hotline"},
            occurred_at=datetime(2026, month, day, 2, 1, tzinfo=timezone.utc))

    events = [received(f"YC{n}", yinping, 3) for n in range(4)] + [received("YC9", tanshan, 5)]
    events += [cross_level("YC0", yinping, 3), cross_level("YC1", yinping, 3),
               cross_level("YC8", yinping, 2, month=12)]  # December: another month
    record_all(uow, events)
    ts_row, yp_row, total = [r for r in handlers.kpis(uow(), "2026-11-01", "2026-11-30", "town")
                             if r["group"] in (yinping, tanshan, "total")]
    assert (ts_row["group"], ts_row["cross_level"], ts_row["cross_level_rate"]) == (tanshan, 0, 0.0)
    assert (yp_row["group"], yp_row["cross_level"], yp_row["appeals"]) == (yinping, 2, 4)
    assert yp_row["cross_level_rate"] == 0.5 and total["cross_level"] == 2
    [_, december] = handlers.kpis(uow(), "2026-12-01", "2026-12-31", "town")
    assert december["cross_level"] == 1 and december["cross_level_rate"] is None  # no appeals that month
    by_unit = {r["group"]: r["cross_level"] for r in handlers.kpis(uow(), "2026-11-01", "2026-11-30", "unit")}
    assert by_unit[f"town-{yinping}"] == 2


def test_triage_findings_are_counted_by_town_and_category(metrics_db, story):
    _, uow = metrics_db
    t, g = story.TANSHAN, story.GUSHAO
    when = story.at(5, 10)
    findings = [
        story.event("repeat_detected", "C7", {
            "earlier_case_no": "C1", "town_code": t, "category": "urban-rural", "item": "road",
            "repeat_count": 2}, when),
        story.event("repeat_detected", "C8", {
            "earlier_case_no": "C1", "town_code": t, "category": "urban-rural", "item": "road",
            "repeat_count": 3}, when),
        story.event("hotspot_detected", None, {
            "hotspot_id": "H1", "town_code": g, "category": "environment", "item": "noise",
            "title": "噪音", "appeals": 5, "people": 4, "case_nos": ["C9", "C10"],
            "first_received_at": when.isoformat(), "window_hours": 24.0}, when),
        story.event("cross_level_petition_detected", "C11", {
            "town_code": g, "category": "urban-rural", "item": "road", "level": "grid",
            "reception_level": "district", "channel": "hotline"}, when),
        story.event("urgent_appeal_flagged", "C12", {
            "town_code": t, "category": "safety", "item": "gas", "urgency": "emergency",
            "reasons": [{"rule": "life", "name": "生命安全", "keywords": ["煤气"]}]}, when),
    ]
    record_all(uow, findings)
    registry = CollectorRegistry()
    collector = DomainCollector()
    registry.register(collector)
    collector.publish(handlers.metrics_snapshot(uow(), now=NOW))
    lines = generate_latest(registry).decode().splitlines()
    for line in [
        f'wuji_appeals_repeated_total{{category="urban-rural",town="{t}"}} 2.0',
        f'wuji_hotspots_detected_total{{category="environment",town="{g}"}} 1.0',
        f'wuji_cross_level_petitions_total{{category="urban-rural",town="{g}"}} 1.0',
        f'wuji_appeals_flagged_urgent_total{{category="safety",town="{t}"}} 1.0',
    ]:
        assert line in lines, line
    assert not [line for line in lines if "C9" in line or "H1" in line]


# --- the log's counts, kept between snapshots ---------------------------------------------------------

LOG_SERIES = ("events", "order_events", "ratings", "triage_findings", "enforcement_events",
              "forces_reported_in")


def log_series(snapshot):
    return {name: dict(snapshot[name]) for name in LOG_SERIES}


def record_at(uow, events, at):
    handlers.record_events(uow(), "metrics.test", events, now=at)


def test_the_logs_counts_kept_between_snapshots_are_those_of_counting_the_whole_log(metrics_db, story):
    """Events recorded over an afternoon, snapshots taken as they come: each snapshot's log series
    equal a count of the whole log, whether the rows are settled (recorded more than five minutes
    before) or not, and across a recount from scratch."""
    _, uow = metrics_db
    events = story.week() + story.random_history(11)
    start = datetime(2025, 3, 9, 6, 0, tzinfo=timezone.utc)
    counts = handlers.LogCounts(settle_seconds=300, recount_seconds=3600)
    for n, i in enumerate(range(0, len(events), 7)):
        at = start + timedelta(minutes=2 * n)
        record_at(uow, events[i:i + 7], at)
        for now in (at, at + timedelta(minutes=1), at + timedelta(minutes=6)):
            kept = handlers.metrics_snapshot(uow(), now=now, log_counts=counts)
            assert log_series(kept) == log_series(handlers.metrics_snapshot(uow(), now=now)), now
    settled, upto, _ = counts.state
    assert upto > 0 and settled["events"]  # the kept counts were used, not only fresh ones


def test_a_row_that_shows_after_later_rows_were_settled_is_counted_at_the_next_recount(metrics_db, story):
    """Ids are taken at insert, rows show at commit: a transaction still open when later rows are
    settled has its rows missed, until the next count from scratch puts them back."""
    url, uow = metrics_db
    if not url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time: a lower id cannot commit after a higher one")
    first, *rest = story.week()
    now = datetime(2025, 3, 9, 12, 0, tzinfo=timezone.utc)
    counts = handlers.LogCounts(settle_seconds=300, recount_seconds=3600)
    slow = uow()
    with slow:  # takes its id now, commits after the others were settled
        slow.first_deliveries("metrics.test", [first])
        slow.session.execute(EventLog.__table__.insert().values(
            {**handlers._log_columns(first, first.get("data") or {}, now - timedelta(hours=1)),
             "recorded_at": now - timedelta(hours=1)}))
        record_at(uow, rest, now - timedelta(hours=1))
        before = log_series(handlers.metrics_snapshot(uow(), now=now, log_counts=counts))
        slow.commit()
    whole = log_series(handlers.metrics_snapshot(uow(), now=now))
    assert whole["events"][(first["type"],)] == before["events"].get((first["type"],), 0) + 1
    missed = log_series(handlers.metrics_snapshot(uow(), now=now + timedelta(minutes=1), log_counts=counts))
    assert missed == before  # settled past it: not seen yet
    recounted = handlers.metrics_snapshot(uow(), now=now + timedelta(hours=1), log_counts=counts)
    assert log_series(recounted) == whole

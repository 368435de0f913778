"""The screenshot-free proof of issue 7's metrics: the platform runs as processes (SQLite), a few
appeals go around the loop, and every service's /metrics is scraped for the series an operator's
Prometheus would read, with the values the loop must have produced."""
import json
import time
import urllib.request
import uuid
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from nameko.standalone.rpc import ClusterRpcProxy
from prometheus_client.parser import text_string_to_metric_families

from wuji_common.local_platform import SERVICES, Platform

APPEALS = 3
TOWN, VILLAGE, UNIT = "370404101", "370404101201", "grid-370404101201"
BEIJING = ZoneInfo("Asia/Shanghai")


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body, ensure_ascii=False).encode("utf-8"),
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def appeal(n):
    return {"channel": "wechat", "title": f"路灯不亮 {n}",
            "content": f"阴平镇金寺村村口第{n}盏路灯不亮，晚上出行不安全，请维修。",
            "citizen": {"name": "赵六", "phone": f"1370000{n:04d}", "email": f"scrape{n}@example.com"},
            "location": {"town_code": TOWN, "village": VILLAGE}}


def scrape(port):
    """{(name, frozenset(labels)): value} of one /metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def total(samples, name, **labels):
    """The sum of a family's samples that carry these labels (whatever their other labels)."""
    return sum(v for (n, sample_labels), v in samples.items()
               if n == name and frozenset(labels.items()) <= sample_labels)


def month_so_far_contains(instant):
    """Whether an ISO instant falls in this calendar month up to the end of today, in Beijing time
    (the KPI time zone)."""
    local = datetime.fromisoformat(instant).astimezone(BEIJING).date()
    today = datetime.now(BEIJING).date()
    return local.replace(day=1) == today.replace(day=1) and local <= today


def eventually(probe, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result or time.monotonic() > deadline:
            assert result, f"{what} not reached within {timeout}s"
            return result
        time.sleep(0.2)


@pytest.mark.slow
def test_every_metrics_endpoint_shows_what_the_loop_did(run_platform, tmp_path, database_templates):
    [platform] = run_platform(database_templates.copy("sqlite", tmp_path)[0], copied=True)
    cases = [post(f"{platform.api}/api/v1/appeals", appeal(n))["case_no"] for n in range(APPEALS)]

    with ClusterRpcProxy({"AMQP_URI": platform.amqp_uri}, timeout=20) as rpc:
        orders = eventually(lambda: (lambda o: o if len(o) == APPEALS else None)(
            rpc.triage.find_orders(unit_code=UNIT)), what="dispatch")
        assert sorted(o["case_no"] for o in orders) == sorted(cases)
        for order in orders:
            rpc.triage.accept_order(order["order_no"], UNIT, idempotency_key=uuid.uuid4().hex)
            rpc.triage.resolve_order(order["order_no"], UNIT, "已修复", idempotency_key=uuid.uuid4().hex)

        def metrics_caught_up():
            # each event type has its own queue and batch (metrics lingers up to a second): the
            # accepted events may land after the resolved ones, so wait for every type
            samples = scrape(platform.metrics_ports["metrics"])
            recorded = all(value(samples, "wuji_events_recorded_total", type=t) == APPEALS
                           for t in ("appeal_received", "order_dispatched", "order_accepted",
                                     "order_resolved"))
            return samples if recorded else None
        eventually(metrics_caught_up, what="metrics series")
        today = date.today()
        row = rpc.metrics.kpis((today - timedelta(days=1)).isoformat(),
                               (today + timedelta(days=1)).isoformat(), "town")[-1]
        assert (row["appeals"], row["orders"], row["resolved"]) == (APPEALS,) * 3

    def settled():
        # every handler done and every outbox empty: the loop is at rest
        scraped = {service: scrape(platform.metrics_ports[service]) for service in SERVICES}
        quiet = all(value(scraped[s], "wuji_workers_busy", service=s) == 0 and
                    value(scraped[s], "wuji_outbox_backlog", service=s) == 0 for s in SERVICES)
        handled = value(scraped["intake"], "wuji_entrypoint_calls_total", service="intake",
                        entrypoint="on_order_resolved", kind="event", outcome="ok") == APPEALS
        return scraped if quiet and handled else None
    scraped = eventually(settled, what="all services at rest")

    def calls(service, entrypoint, kind, outcome="ok"):
        return value(scraped[service], "wuji_entrypoint_calls_total", service=service,
                     entrypoint=entrypoint, kind=kind, outcome=outcome)

    # every service: entrypoint calls by kind and outcome, latency, workers, outbox, dead letters
    assert calls("intake", "post_appeal", "http") == APPEALS
    assert calls("intake", "post_appeal", "http", "error") == 0
    assert value(scraped["intake"], "wuji_entrypoint_latency_seconds_count", service="intake",
                 entrypoint="post_appeal", kind="http") == APPEALS
    assert calls("triage", "on_appeal_received", "event") == APPEALS
    assert calls("triage", "accept_order", "rpc") == APPEALS
    assert calls("triage", "resolve_order", "rpc") == APPEALS
    assert calls("triage", "find_orders", "rpc") >= 1
    assert calls("notify", "on_appeal_received", "event") == APPEALS
    assert calls("notify", "on_order_resolved", "event") == APPEALS
    assert calls("notify", "send_due", "timer") >= 1
    assert calls("metrics", "on_appeal_received", "event") == APPEALS
    assert calls("metrics", "kpis", "rpc") == 1
    assert calls("enforcement", "watch_report_in_deadlines", "timer") >= 1
    for service in SERVICES:
        samples = scraped[service]
        assert value(samples, "wuji_workers_max", service=service) == 10
        assert value(samples, "wuji_outbox_oldest_age_seconds", service=service) == 0
        errors = sum(v for (name, labels), v in samples.items()
                     if name == "wuji_entrypoint_calls_total" and ("outcome", "error") in labels)
        assert errors == 0, service
        dead = [v for (name, _), v in samples.items() if name == "wuji_events_dead_lettered_total"]
        assert dead and not any(dead), service          # declared per handler, none dead-lettered
        # low-cardinality labels: no case or order number anywhere
        for (_, labels) in samples:
            for _, label_value in labels:
                assert not any(case in label_value for case in cases), label_value
    # events published by the outbox relays: intake's appeal_received; triage's dispatched, accepted
    # and resolved for each (and whatever its analysis found: similar appeals may make a hot spot)
    assert value(scraped["intake"], "wuji_outbox_published_total", service="intake") == APPEALS
    assert value(scraped["triage"], "wuji_outbox_published_total", service="triage") >= 3 * APPEALS

    # the metrics service's domain series
    domain = scraped["metrics"]
    assert value(domain, "wuji_appeals_received_total", town=TOWN, channel="wechat") == APPEALS
    assert value(domain, "wuji_kpi_count", period="today", town=TOWN, measure="appeals") == APPEALS
    assert value(domain, "wuji_kpi_count", period="month", town=TOWN, measure="resolved") == APPEALS
    # an order counts towards 响应率 on its accept deadline's day (Beijing time): late in the evening
    # that day is tomorrow, outside "the month so far"
    due_this_month = sum(month_so_far_contains(o["accept_due_at"]) for o in orders)
    assert value(domain, "wuji_kpi_count", period="month", town=TOWN,
                 measure="accepted_on_time") == due_this_month
    assert value(domain, "wuji_unit_kpi_count", period="today", unit=UNIT, measure="orders") == APPEALS
    assert total(domain, "wuji_orders_dispatched_total", town=TOWN) == APPEALS
    assert value(domain, "wuji_orders", town=TOWN, status="resolved") == APPEALS
    assert value(domain, "wuji_unit_orders", unit=UNIT, status="resolved") == APPEALS
    assert total(domain, "wuji_appeals_by_category", town=TOWN) == APPEALS
    assert value(domain, "wuji_appeals_by_category", town=TOWN, category="unknown") is None  # all dispatched
    assert value(domain, "wuji_order_report_in_seconds_count", town=TOWN) == APPEALS
    assert value(domain, "wuji_order_resolve_seconds_count", town=TOWN) == APPEALS
    for event_type in ("appeal_received", "order_dispatched", "order_accepted", "order_resolved"):
        assert value(domain, "wuji_events_recorded_total", type=event_type) == APPEALS, event_type
    assert value(domain, "wuji_orders_overdue", town=TOWN, stage="accept") is None

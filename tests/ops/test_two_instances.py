"""Scale-out: two instances of every service against one broker and one PostgreSQL process the same
load with nothing lost, nothing duplicated, and deadlines firing once.

Each service runs twice as real processes (`nameko run`), each instance with its own metrics port,
the two intakes on two API ports. Instances of a service share its queues (RabbitMQ hands each
message to one of them), its database, and its timers fire in both: the report-in watcher, notify's
sweep and the metrics refresh race each other on purpose here.

The load: appeals submitted alternately to both intakes, every order accepted and resolved over RPC
(either triage instance answers), a quarter of them rated; whistles blown for some orders, one
force of each reporting in, and the others' report-in deadlines moved into the past so that both
enforcement instances' watchers find them late at the same time.
"""
import collections
from email.header import decode_header, make_header
import json
import time
import urllib.request
import uuid
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import eventlet
import pytest
from nameko.standalone.rpc import ClusterRpcProxy
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from wuji_common.local_platform import SERVICES, Platform
from wuji_common.testing import drop_postgres_database, new_postgres_database
from wuji_common.testing_helpers import EventTap

APPEALS = 200
RATED = APPEALS // 4
WHISTLES = 8
MAX_WORKERS = 4
TOWN, VILLAGE, UNIT = "370404101", "370404101201", "grid-370404101201"
BEIJING = ZoneInfo("Asia/Shanghai")   # the KPI time zone


def request(method, url, body=None, headers=None):
    data = json.dumps(body, ensure_ascii=False).encode("utf-8") if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    for attempt in range(5):
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read())
        except OSError:
            time.sleep(0.5 * (attempt + 1))  # with the same Idempotency-Key a retry is the same call
    raise AssertionError(f"{method} {url} failed 5 times")


def appeal(n):
    return {"channel": "hotline", "title": f"路灯不亮 {n}",
            "content": f"第{n}号：阴平镇金寺村村口路灯不亮，请维修。",
            "citizen": {"name": "钱七", "phone": f"138{n:08d}", "email": f"twice{n}@example.com"},
            "location": {"town_code": TOWN, "village": VILLAGE}}


def eventually(probe, timeout=120, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result or time.monotonic() > deadline:
            assert result, f"{what} not reached within {timeout}s"
            return result
        time.sleep(0.5)


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def subject(mail):
    return str(make_header(decode_header(mail["Subject"])))


def in_chunks(items, n):
    return [items[i::n] for i in range(n)]


@pytest.fixture
def postgres_urls():
    urls, names = {}, []
    for service in SERVICES:
        urls[service], name = new_postgres_database(f"wuji_two_{service}")
        names.append(name)
    yield urls
    for name in names:
        drop_postgres_database(name)


@pytest.mark.slow
def test_two_instances_of_every_service_lose_nothing_double_nothing_and_fire_deadlines_once(
        postgres_urls, run_platform, mailbox):     # databases first: dropped after the processes stop
    # ten processes on one PostgreSQL: each opens up to about max_workers + 2 connections (workers,
    # the outbox relay), so fewer workers keep the total well under the server's max_connections
    first, second = run_platform(postgres_urls, instances=2, max_workers=MAX_WORKERS)
    assert first.api_port != second.api_port
    assert not set(first.metrics_ports.values()) & set(second.metrics_ports.values())
    late = EventTap(first.amqp_uri, ("enforcement", "force_report_in_overdue"),
                    ("enforcement", "force_report_in_reminded"))
    try:
        drive_and_check(first, second, late, mailbox)
    finally:
        late.close()


def drive_and_check(first, second, late, mailbox):
    # --- appeals into both intakes ------------------------------------------------------------------
    green = eventlet.GreenPool(16)

    def submit(n):
        api = (first, second)[n % 2].api
        receipt = request("POST", f"{api}/api/v1/appeals", appeal(n), {"Idempotency-Key": f"two-{n}"})
        return n, receipt["case_no"], receipt["tracking_token"]
    receipts = list(green.imap(submit, range(APPEALS)))
    cases = {case_no: (n, token) for n, case_no, token in receipts}
    assert len(cases) == APPEALS

    # --- every order accepted and resolved, over RPC, by whichever triage instance takes the call ---
    amqp = {"AMQP_URI": first.amqp_uri}
    with ClusterRpcProxy(amqp, timeout=30) as rpc:
        orders = eventually(lambda: (lambda o: o if len(o) >= APPEALS else None)(
            rpc.triage.find_orders(unit_code=UNIT)), what="every appeal dispatched")

    def work(chunk):
        with ClusterRpcProxy(amqp, timeout=30) as rpc:
            for order in chunk:
                key = order["order_no"]
                rpc.triage.accept_order(key, UNIT, idempotency_key=f"accept-{key}")
                rpc.triage.resolve_order(key, UNIT, "已修复", idempotency_key=f"resolve-{key}")
    list(green.imap(work, in_chunks(orders, 8)))

    # --- whistles: one force of each reports in, the others' deadlines pass ---------------------------
    with ClusterRpcProxy(amqp, timeout=30) as rpc:
        operations = [rpc.enforcement.blow_whistle(order["order_no"], "road_occupation", TOWN, "urgent",
                                                   idempotency_key=f"whistle-{order['order_no']}")
                      for order in orders[:WHISTLES]]
        expected_late = set()
        for operation in operations:
            lead, *others = [f["force_code"] for f in operation["forces"]]
            assert others, "road_occupation calls several forces"
            rpc.enforcement.report_in(operation["operation_id"], lead, f"{lead}-{TOWN}",
                                      idempotency_key=f"in-{operation['operation_id']}")
            expected_late |= {(operation["operation_id"], force) for force in others}
    # the deadline (and the reminder time) of the forces still out, moved into the past: both
    # enforcement instances' watchers (every 0.5 s) now find them due at once
    engine = create_engine(first.db_url("enforcement"), poolclass=NullPool)
    with engine.begin() as conn:
        past = datetime.now(timezone.utc) - timedelta(minutes=1)
        moved = conn.execute(text(
            "UPDATE called_forces SET report_in_due_at = :past, remind_at = :past "
            "WHERE status = 'called'"), {"past": past}).rowcount
    assert moved == len(expected_late)

    # --- a quarter of the citizens rate; each rating closes its order ----------------------------------
    rated = sorted(cases)[:RATED]

    def rate(case_no):
        n, token = cases[case_no]
        api = (first, second)[(n + 1) % 2].api        # the other intake than the one that took it
        track = f"{api}/api/v1/appeals/{case_no}?token={token}"
        eventually(lambda: request("GET", track).get("can_rate"), what=f"{case_no} rateable")
        request("POST", f"{api}/api/v1/appeals/{case_no}/rating", {"satisfaction": "satisfied"},
                {"X-Tracking-Token": token})
    list(green.imap(rate, rated))

    # --- nothing lost, nothing doubled -------------------------------------------------------------------
    with ClusterRpcProxy(amqp, timeout=30) as rpc:
        eventually(lambda: len(rpc.triage.find_orders(unit_code=UNIT, status="closed")) == RATED,
                   what="rated orders closed")
        final = rpc.triage.find_orders(unit_code=UNIT)
        per_case = collections.Counter(o["case_no"] for o in final)
        assert len(final) == APPEALS and set(per_case) == set(cases) and max(per_case.values()) == 1
        statuses = collections.Counter(o["status"] for o in final)
        assert statuses == {"resolved": APPEALS - RATED, "closed": RATED}

        # the metrics service's KPIs are exact, whichever instance answers
        today = date.today()
        # due_for_acceptance counts an order on its accept deadline's day (Beijing time), and accept
        # deadlines run in working hours: on a Friday evening they fall days ahead
        last_deadline = max(datetime.fromisoformat(o["accept_due_at"]).astimezone(BEIJING).date()
                            for o in final)
        window = ((today - timedelta(days=1)).isoformat(),
                  max(today + timedelta(days=1), last_deadline).isoformat())
        expected = {"appeals": APPEALS, "orders": APPEALS, "due_for_acceptance": APPEALS,
                    "accepted_on_time": APPEALS, "resolved": APPEALS, "resolved_on_time": APPEALS,
                    "rated": RATED, "satisfied": RATED, "reopened": 0}

        def kpis_exact():
            total = rpc.metrics.kpis(*window, "town")[-1]
            return total if {k: total[k] for k in expected} == expected else None
        total = eventually(kpis_exact, what=f"kpis {expected}")
        assert total["response_rate"] == total["satisfaction_rate"] == 1.0
        assert rpc.metrics.event_count("appeal_received") == APPEALS
        assert rpc.metrics.event_count("order_dispatched") == APPEALS

    # every late force marked once, reminded once — however many watchers raced for it
    def all_followed_up(events):
        return (len({(e["data"]["operation_id"], e["data"]["force_code"])
                     for e in events if e["type"] == "force_report_in_reminded"}) >= len(expected_late))
    late.wait_for(all_followed_up, timeout=30)
    time.sleep(2)                                       # a second firing would arrive by now
    late.drain()
    for kind in ("force_report_in_overdue", "force_report_in_reminded"):
        fired = collections.Counter((e["data"]["operation_id"], e["data"]["force_code"])
                                    for e in late.of_type(kind))
        assert set(fired) == expected_late, kind
        assert max(fired.values()) == 1, (kind, [k for k, v in fired.items() if v > 1])
    with engine.connect() as conn:
        overdue = conn.execute(text("SELECT count(*) FROM called_forces WHERE status = 'overdue'")).scalar()
    engine.dispose()
    assert overdue == len(expected_late)

    # every mail once: the citizen's receipt and result, the unit's dispatch notice; no Message-ID
    # twice (a resend of one delivery), no second delivery of one notification
    def mails_in():
        mails = mailbox.messages
        return mails if len([m for m in mails if m["To"].startswith("twice")]) >= 2 * APPEALS else None
    eventually(mails_in, timeout=180, what="citizens' mails")
    time.sleep(3)                                       # anything doubled would have arrived by now
    mails = mailbox.messages
    message_ids = collections.Counter(m["Message-ID"] for m in mails)
    assert max(message_ids.values()) == 1, [k for k, v in message_ids.items() if v > 1][:5]
    citizens = collections.Counter(m["To"] for m in mails if m["To"].startswith("twice"))
    assert len(citizens) == APPEALS and set(citizens.values()) == {2}
    # each subject names its case, order or operation (a whistle's names the town and the time)
    per_subject = collections.Counter((m["To"], subject(m)) for m in mails
                                      if not subject(m).startswith("【吹哨报到】"))
    assert max(per_subject.values()) == 1, [k for k, v in per_subject.items() if v > 1][:5]

    # both instances of every service did part of the work, and the metrics instances agree
    scraped = {(n, service): scrape(platform.metrics_ports[service])
               for n, platform in enumerate((first, second)) for service in SERVICES}

    def handled(n, service, entrypoint):
        return sum(v for (name, labels), v in scraped[n, service].items()
                   if name == "wuji_entrypoint_calls_total" and ("entrypoint", entrypoint) in labels
                   and ("outcome", "ok") in labels)
    for service, entrypoint in (("intake", "post_appeal"), ("triage", "on_appeal_received"),
                                ("triage", "accept_order"), ("notify", "on_appeal_received"),
                                ("metrics", "on_appeal_received")):
        shares = [handled(n, service, entrypoint) for n in (0, 1)]
        assert sum(shares) == APPEALS and min(shares) > 0, (service, entrypoint, shares)

    def domain_series(n):
        return {key: v for key, v in scraped[n, "metrics"].items()
                if key[0].startswith(("wuji_orders", "wuji_appeals", "wuji_kpi_count"))}
    assert domain_series(0) == domain_series(1)
    assert domain_series(0)[("wuji_appeals_received_total",
                             frozenset({"town": TOWN, "channel": "hotline"}.items()))] == APPEALS

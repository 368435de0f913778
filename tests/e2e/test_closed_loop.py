"""The whole closed loop across all five services, as processes on the real broker, on SQLite and on
PostgreSQL: submit → dispatched → accepted → resolved → rated → closed, and unsatisfied → reopened."""
import json
import time
import uuid
from datetime import date, timedelta

import pytest
from kombu import Connection, Exchange, Queue
from nameko.standalone.rpc import ClusterRpcProxy

from wuji_common.errors import NotYourOrder
from wuji_common.testing_helpers import eventually, http_json as http

APPEAL = {
    "channel": "wechat",
    "title": "村口路灯不亮",
    "content": "阴平镇金寺村村口的路灯坏了一个多月，晚上出行很不安全，请尽快维修。",
    "citizen": {"name": "李四", "phone": "13912345678", "id_number": "11010519491231002X",
                "email": "lisi@example.com"},
    "location": {"town_code": "370404101", "village": "370404101201", "address": "金寺村西街8号"},
}
PERSONAL = ("李四", "13912345678", "11010519491231002X", "lisi@example.com", "金寺村西街8号")


def tap_all_events(amqp_uri):
    """A queue bound to every service's event exchange, as an integrator would bind one."""
    conn = Connection(amqp_uri)
    channel = conn.channel()
    queue = Queue(f"integrator-{uuid.uuid4().hex[:6]}", durable=False, auto_delete=False, channel=channel)
    queue.declare()
    for source in ("intake", "triage", "enforcement"):
        exchange = Exchange(f"{source}.events", type="topic", durable=True, channel=channel)
        exchange.declare()
        queue.bind_to(exchange=exchange.name, routing_key="#")
    return conn, queue


def drain(queue):
    out = []
    while (message := queue.get(no_ack=True)) is not None:
        out.append(message.body if isinstance(message.body, str) else message.body.decode("utf-8"))
    return out


def walk(platform, rpc, satisfaction):
    status, receipt = http("POST", f"{platform.api}/api/v1/appeals", APPEAL)
    assert status == 201, receipt
    case_no, token = receipt["case_no"], receipt["tracking_token"]
    track = f"{platform.api}/api/v1/appeals/{case_no}?token={token}"
    order = eventually(lambda: (rpc.triage.find_orders(case_no=case_no) or [None])[0], what="dispatch")
    assert order["status"] == "dispatched" and order["resolve_due_at"]
    with pytest.raises(NotYourOrder):
        rpc.triage.accept_order(order["order_no"], "dept-police", idempotency_key=uuid.uuid4().hex)
    key = uuid.uuid4().hex
    accepted = rpc.triage.accept_order(order["order_no"], order["unit_code"], idempotency_key=key)
    assert rpc.triage.accept_order(order["order_no"], order["unit_code"], idempotency_key=key) == accepted
    rpc.triage.add_progress(order["order_no"], order["unit_code"], "已联系供电所", idempotency_key=uuid.uuid4().hex)
    rpc.triage.resolve_order(order["order_no"], order["unit_code"], "已更换灯泡", idempotency_key=uuid.uuid4().hex)
    eventually(lambda: http("GET", track)[1].get("can_rate"), what="citizen sees resolved")
    status, _ = http("POST", f"{platform.api}/api/v1/appeals/{case_no}/rating",
                     {"satisfaction": satisfaction}, {"X-Tracking-Token": token})
    assert status == 200
    expected = "reopened" if satisfaction == "unsatisfied" else "closed"
    eventually(lambda: any(o["status"] == expected for o in rpc.triage.find_orders(case_no=case_no)),
               what=f"order {expected}")
    view = eventually(lambda: (lambda v: v if v["status"] == expected else None)(http("GET", track)[1]),
                      what="citizen timeline")
    return case_no, order, view


@pytest.mark.slow
def test_appeals_go_around_the_closed_loop(platform):
    conn, integrator_queue = tap_all_events(platform.amqp_uri)
    try:
        with ClusterRpcProxy({"AMQP_URI": platform.amqp_uri}, timeout=10) as rpc:
            closed_case, order, view = walk(platform, rpc, "satisfied")
            assert view["status_text"] == "已办结归档"
            texts = [t["text"] for t in view["timeline"]]
            assert texts[0] == "您的诉求已登记受理" and texts[-1] == "诉求已办结归档"
            reopened_case, _, view = walk(platform, rpc, "unsatisfied")
            assert view["status"] == "reopened"

            # the staff view masks personal data
            staff = rpc.intake.get_appeal(closed_case)
            assert staff["citizen"]["phone"] == "139****5678"

            # metrics saw both: one closed satisfied, one reopened
            today = date.today()
            def both_counted():
                # ratings and the reopen triage raises on one come on their own queues: wait for all
                rows = rpc.metrics.kpis((today - timedelta(days=1)).isoformat(),
                                        (today + timedelta(days=1)).isoformat(), "town")
                done = rows and rows[-1]["orders"] >= 2 and rows[-1]["rated"] >= 2 \
                    and rows[-1]["reopened"] >= 1
                return rows if done else None
            rows = eventually(both_counted, what="kpis")
            total = rows[-1]
            assert total["satisfaction_rate"] == pytest.approx(0.5)
            assert total["reopened"] == 1

            # the citizen got a receipt and a result with an invitation to rate, each once per case
            def mails_to_citizen():
                return [m for m in platform.mailbox.messages if "lisi@example.com" in m["To"]]
            eventually(lambda: len(mails_to_citizen()) >= 4, what="citizen mails")
            time.sleep(1)
            assert len(mails_to_citizen()) == 4  # receipt + result, for each of the two appeals
            ids = [m["Message-ID"] for m in platform.mailbox.messages]
            assert len(ids) == len(set(ids))

        # integrators saw the loop's events, and none carried personal data
        events = drain(integrator_queue)
        types = {json.loads(e)["type"] for e in events}
        assert {"appeal_received", "order_dispatched", "order_accepted", "order_progressed",
                "order_resolved", "appeal_rated", "order_closed", "order_reopened"} <= types
        for body in events:
            for secret in PERSONAL:
                assert secret not in body
    finally:
        integrator_queue.delete()
        conn.release()
    for service in ("intake", "triage", "notify", "metrics", "enforcement"):
        log = platform.log(service)
        for secret in PERSONAL:
            assert secret not in log, f"{service} logged personal data"

"""Failure test: kill -9 triage while 1,000 appeals are being submitted, restart it, and find exactly
1,000 orders and no duplicate notification."""
import collections
import json
import time
import urllib.request

import eventlet
import pytest
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import create_engine, text

from wuji_common.db import normalize_url

APPEALS = 1000


def submit(api, n):
    body = {
        "channel": "hotline", "title": f"路灯不亮 {n}",
        "content": f"第{n}号：阴平镇金寺村村口路灯不亮，请维修。",
        "citizen": {"name": "王五", "phone": f"139{n:08d}", "email": f"citizen{n}@example.com"},
        "location": {"town_code": "370404101", "village": "370404101201"},
    }
    req = urllib.request.Request(f"{api}/api/v1/appeals", data=json.dumps(body).encode("utf-8"),
                                 method="POST", headers={"Content-Type": "application/json",
                                                         "Idempotency-Key": f"crash-{n}"})
    for attempt in range(5):
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read())["case_no"]
        except OSError:
            time.sleep(0.5 * (attempt + 1))  # a retry with the same key returns the first result
    raise AssertionError(f"appeal {n} could not be submitted")


@pytest.mark.slow
@pytest.mark.parametrize("platform", ["postgresql"], indirect=True)
def test_kill_triage_mid_load_loses_nothing_and_doubles_nothing(platform):
    pool = eventlet.GreenPool(16)
    cases = []
    killed = restarted = False
    for case_no in pool.imap(lambda n: submit(platform.api, n), range(APPEALS)):
        cases.append(case_no)
        if len(cases) == 300 and not killed:
            platform.kill("triage")          # SIGKILL: no clean shutdown, messages in flight
            killed = True
        if len(cases) == 500 and not restarted:
            platform.start("triage")
            restarted = True
    assert len(set(cases)) == APPEALS

    with ClusterRpcProxy({"AMQP_URI": platform.amqp_uri}, timeout=30) as rpc:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            orders = rpc.triage.find_orders(unit_code="grid-370404101201")
            if len(orders) >= APPEALS:
                break
            time.sleep(1)
        time.sleep(2)  # anything late would show up now
        orders = rpc.triage.find_orders(unit_code="grid-370404101201")
    per_case = collections.Counter(o["case_no"] for o in orders)
    assert len(orders) == APPEALS, f"{len(orders)} orders for {APPEALS} appeals"
    assert set(per_case) == set(cases) and max(per_case.values()) == 1

    # Notifications. Nothing lost: notify has durably reserved exactly one e-mail receipt per appeal
    # and one e-mail dispatch notice per order (a reservation is sent, or retried until it is).
    # Nothing doubled: no (event type, case) reserved twice, no Message-ID delivered twice, no
    # citizen with two receipts.
    engine = create_engine(normalize_url(platform.db_url("notify")))
    reserved, last_progress = [], time.monotonic()
    while time.monotonic() - last_progress < 30:  # notify still working: wait; stalled: stop
        with engine.connect() as conn:
            now_reserved = conn.execute(text(
                "SELECT event_type, case_no, count(*) FROM deliveries WHERE channel = 'email' "
                "AND event_type IN ('appeal_received', 'order_dispatched') "
                "GROUP BY event_type, case_no")).all()
        if len(now_reserved) > len(reserved):
            last_progress = time.monotonic()
        reserved = now_reserved
        if len(reserved) >= 2 * APPEALS:
            break
        time.sleep(1)
    engine.dispose()
    per_type = collections.Counter(event_type for event_type, _, _ in reserved)
    assert per_type == {"appeal_received": APPEALS, "order_dispatched": APPEALS}
    assert max(n for _, _, n in reserved) == 1
    assert {case for _, case, _ in reserved} == set(cases)

    # what has reached the mailbox so far (notify sends a provider's queue in order, one at a time)
    mails = platform.mailbox.messages
    message_ids = collections.Counter(m["Message-ID"] for m in mails)
    citizens = collections.Counter(m["To"] for m in mails if m["To"].startswith("citizen"))
    assert mails, "no notification was delivered at all"
    assert max(message_ids.values()) == 1, [k for k, v in message_ids.items() if v > 1][:5]
    assert max(citizens.values()) == 1

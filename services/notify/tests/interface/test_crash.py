"""notify as a real process (`nameko run`), killed with SIGKILL in the middle of a batch of webhook
deliveries and started again: every event reaches the subscriber, none under two delivery ids, and
the only repeats on the wire are sends that were in flight at the kill (same delivery id, so the
receiver drops them; the attempt log says "interrupted")."""
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from notify import content, handlers
from notify.models import Delivery, DeliveryAttempt
from notify.service import NotifyService
from wuji_common.events import make_event
from wuji_common.migrations import upgrade
from wuji_common.relay import BatchPublisher
from wuji_common.testing import own_vhost
from wuji_common.testing_helpers import free_port
from wuji_common.topology import declare

from ..conftest import accepting, wait_until
from .test_notify_service import MIGRATIONS, with_notify_db

ROOT = Path(__file__).resolve().parents[4]
BIN = Path(sys.executable).parent
EVENTS = 150
MAX_WORKERS = 10


def accepted_event(i):
    return make_event("order_accepted", f"YC20261125{i:06d}", {
        "order_no": f"GD20261125{i:06d}", "unit_code": "dept-housing", "town_code": "370404001",
        "category": "housing", "status": "accepted", "accepted_at": "2026-11-25T03:00:00+00:00",
        "within_deadline": True})


def start_notify(env, log):
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(BIN / "nameko"), "run", "--config", str(ROOT / "services/notify/config.yml"),
                                 "notify.service"], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    port = int(env["NOTIFY_METRICS_PORT"])
    wait_until(lambda: proc.poll() is not None or accepting(port), 60, 0.1, "notify to start")
    assert proc.poll() is None, Path(log).read_text()[-3000:]
    return proc


@pytest.fixture
def own_amqp_uri(amqp_vhost):
    """A vhost of this test's own: the process declares its queues with the shipped retry delays."""
    with own_vhost(f"{amqp_vhost}-crash") as uri:
        yield uri


def test_kill_9_mid_batch_loses_nothing_and_doubles_nothing(own_amqp_uri, tmp_path, servers):
    amqp_uri = own_amqp_uri
    db_url = f"sqlite:///{tmp_path / 'notify.db'}"
    upgrade(MIGRATIONS, db_url)
    hook = servers("webhook", delay=0.02)  # a department system that takes 20 ms a request
    subscription = with_notify_db(db_url, lambda uow: (
        handlers.load_unit_contacts(uow, content.unit_contacts()),
        handlers.subscribe(uow, {"url": hook.url, "event_types": ["order_accepted"]}))[1])
    hook.secret = subscription["secret"]
    hook.start()
    declare(amqp_uri, [NotifyService])
    env = dict(os.environ, AMQP_URI=amqp_uri, NOTIFY_DB_URL=db_url, NOTIFY_METRICS_PORT=str(free_port()),
               NOTIFY_SWEEP_SECONDS="0.5", NOTIFY_CLAIM_SECONDS="3", NOTIFY_MAX_WORKERS=str(MAX_WORKERS),
               SMTP_PORT=str(free_port()), PYTHONUNBUFFERED="1")
    log = tmp_path / "notify.log"
    proc = start_notify(env, log)
    publisher = BatchPublisher(amqp_uri)
    events = [accepted_event(i) for i in range(EVENTS)]
    try:
        assert publisher.publish(events) == {e["event_id"] for e in events}
        wait_until(lambda: len(hook.requests) >= 40, 60, what="the batch to be under way")
        os.killpg(proc.pid, signal.SIGKILL)  # mid-batch: sends in flight, events unacked
        proc.wait(timeout=10)
        on_the_wire_at_kill = len(hook.requests)
        assert on_the_wire_at_kill < EVENTS, "the batch finished before the kill"
        proc = start_notify(env, log)
        wait_until(lambda: len(hook.accepted()) >= EVENTS, 90, 0.2, what="every event delivered")
        time.sleep(1.0)  # anything doubled would show up now
    finally:
        publisher.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)

    bodies = hook.accepted()
    assert sorted(b["event_id"] for b in bodies) == sorted(e["event_id"] for e in events)  # each event once
    # every request signed and fresh, but one the kill cut off mid-body (its signature covers the
    # whole body): at most one per send in flight, each sent again whole under its delivery id
    cut = [r for r in hook.requests if not r.complete]
    assert all(r.ok for r in hook.requests if r.complete)
    repeats = {d: n for d, n in Counter(r.headers["X-Wuji-Delivery"] for r in hook.requests).items() if n > 1}
    assert len(repeats) <= MAX_WORKERS and all(n == 2 for n in repeats.values())
    assert {r.headers["X-Wuji-Delivery"] for r in cut} <= set(repeats)

    def stored(uow):
        with uow:
            rows = uow.session.execute(select(Delivery)).scalars().all()
            attempts = uow.session.execute(select(DeliveryAttempt)).scalars().all()
            return ([(d.event_id, d.status) for d in rows],
                    {a.delivery_id for a in attempts if a.outcome == "interrupted"})
    rows, interrupted = with_notify_db(db_url, stored)
    assert len(rows) == EVENTS and {status for _, status in rows} == {"sent"}  # one delivery per event
    assert set(repeats) <= interrupted  # a repeat only where a send was cut off by the kill

"""Two running triage instances (nameko containers) on one PostgreSQL database: a deadline that
passed while nothing ran fires at start, once, however many sweeps both instances make."""
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from triage import handlers
from triage.dependencies import load_policies, load_taxonomy
from triage.domain import Router, utcnow
from triage.models import ClockFire, metadata, outbox
from triage.service import TriageService
from wuji_common import reference
from wuji_common.db import UnitOfWork, make_engine, session_factory
from wuji_common.events import make_event
from wuji_common.migrations import upgrade
from wuji_common.topology import declare

MIGRATIONS = Path(__file__).resolve().parents[2] / "triage" / "migrations"
JINSI, YINPING = "370404101201", "370404101"


@pytest.fixture
def postgres_url(db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("several instances share one PostgreSQL database")
    return db_url


def test_two_instances_fire_each_missed_deadline_once(postgres_url, amqp_uri, container_factory):
    upgrade(MIGRATIONS, postgres_url)
    engine = make_engine(postgres_url)
    uow = lambda: UnitOfWork(session_factory(engine), metadata, "triage")  # noqa: E731
    handlers.load_reference(uow(), list(reference.divisions()), list(reference.units()))
    taxonomy = load_taxonomy()
    router = Router(taxonomy, policies=load_policies(taxonomy=taxonomy))
    three_days_ago = utcnow() - timedelta(days=3)
    for n in range(10):  # street lights: utilities, due 1 h / 2 h / 24 h after dispatch
        handlers.dispatch_appeal(uow(), router, "triage.on_appeal_received", make_event(
            "appeal_received", f"YC20261125{n:06d}", {
                "channel": "wechat", "title": "村口路灯不亮", "content": "阴平镇金寺村村口的路灯坏了。",
                "town_code": YINPING, "village_code": JINSI, "anonymous": True,
                "received_at": three_days_ago.isoformat()}), now=three_days_ago)
    config = {"AMQP_URI": amqp_uri, "DB_URL": postgres_url, "METRICS_PORT": 0, "CLASSIFIER": "off",
              "EVENT_RETRY_DELAYS": [0.2], "OUTBOX_POLL_SECONDS": 0.2, "CLOCK_SWEEP_SECONDS": 0.1}
    declare(amqp_uri, [TriageService], retry_delays=[0.2])
    instances = [container_factory(TriageService, config) for _ in range(2)]
    for container in instances:
        container.start()

    def count(event_type):
        with engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(outbox).where(outbox.c.event_type == event_type))

    deadline = time.monotonic() + 30
    while count("order_overdue") < 30 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # both instances sweep ten times more
    for container in instances:
        container.stop()
    assert count("order_overdue") == 30 and count("order_escalated") == 10
    assert count("order_deadline_approaching") == 0  # passed long ago: no stale reminders
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(ClockFire)) == 40
    engine.dispose()

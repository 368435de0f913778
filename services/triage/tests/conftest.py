import json
from pathlib import Path

import pytest
from sqlalchemy import select

from triage import handlers
from triage.dependencies import load_taxonomy
from triage.domain import Router
from triage.models import metadata, outbox
from wuji_common import reference
from wuji_common.db import UnitOfWork, make_engine, session_factory
from wuji_common.events import make_event
from wuji_common.migrations import upgrade
from wuji_common.testing import backends, drop_postgres_database, new_postgres_database

MIGRATIONS = Path(__file__).resolve().parents[1] / "triage" / "migrations"
JINSI = "370404101201"  # 金寺村, 阴平镇
YINPING = "370404101"


@pytest.fixture(scope="session", params=backends())
def migrated_db(request, tmp_path_factory):
    """triage's database on each backend, migrated and loaded with the reference divisions and
    units once per session (creating a PostgreSQL database per test would dominate the run)."""
    if request.param == "sqlite":
        url, name = f"sqlite:///{tmp_path_factory.mktemp('triage') / 'triage.db'}", None
    else:
        url, name = new_postgres_database("wuji_test_triage")
    upgrade(MIGRATIONS, url)
    engine = make_engine(url)
    factory = session_factory(engine)
    handlers.load_reference(UnitOfWork(factory, metadata, "triage"), list(reference.divisions()),
                            list(reference.units()))
    yield url, engine, factory
    engine.dispose()
    if name:
        drop_postgres_database(name)


@pytest.fixture
def triage_db(migrated_db):
    """(url, unit-of-work factory) on an empty set of orders; the reference data stays."""
    url, engine, factory = migrated_db
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            if table.name not in ("divisions", "units"):
                conn.execute(table.delete())
    yield url, (lambda: UnitOfWork(factory, metadata, "triage"))


@pytest.fixture(scope="session")
def taxonomy():
    return load_taxonomy()


@pytest.fixture(scope="session")
def raw_taxonomy():
    """The shipped taxonomy file as data, to change in a copy."""
    import yaml

    from triage.dependencies import DEFAULT_TAXONOMY_PATH
    with open(DEFAULT_TAXONOMY_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture
def router(taxonomy):
    """Keywords only: the tests decide routing, not whatever model file happens to be there."""
    return Router(taxonomy)


def _appeal_received(case_no="YC20261125000001", title="村口路灯不亮",
                    content="阴平镇金寺村村口的路灯坏了一个多月，晚上出行不便。",
                    town_code=YINPING, village_code=JINSI, **extra):
    return make_event("appeal_received", case_no, {
        "channel": "wechat", "title": title, "content": content, "town_code": town_code,
        "village_code": village_code, "anonymous": False, "citizen_ref": "ab" * 16,
        "received_at": "2026-11-25T08:00:00+00:00", **extra})


def _outbox_events(uow_factory):
    with uow_factory() as uow:
        return [json.loads(p) for p in
                uow.session.execute(select(outbox.c.payload).order_by(outbox.c.id)).scalars()]


@pytest.fixture
def appeal_received():
    """Build an appeal_received envelope (a new event id each call)."""
    return _appeal_received


@pytest.fixture
def outbox_events():
    """Every event a database's outbox holds, oldest first."""
    return _outbox_events

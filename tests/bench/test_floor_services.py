"""bench/floor.py's stand-in services do the machinery's part of the real ones: their events pass
the wire schemas, carry no personal data, and a redelivered event changes nothing. If the event
catalogue changes under them, this fails here, not in a benchmark run."""
import importlib.util
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from wuji_common.db import UnitOfWork, make_engine, session_factory
from wuji_common.events import CATALOGUE

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def floor():
    # loaded by path: bench/ holds a triage.py that must not shadow the triage package
    spec = importlib.util.spec_from_file_location("floor_services", ROOT / "bench" / "floor_services.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unit_of_work(floor, service, url):
    engine = make_engine(url)
    floor.METADATA[service].create_all(engine)
    return engine, lambda: UnitOfWork(session_factory(engine), floor.METADATA[service], service)


def outbox(engine, floor, service):
    table = floor.METADATA[service].tables["outbox"]
    with engine.connect() as conn:
        return [json.loads(p) for p in conn.execute(select(table.c.payload).order_by(table.c.id)).scalars()]


def check_wire(envelope):
    """The envelope's payload loads with its catalogue schema, and its source is the catalogue's."""
    source, _, schema = CATALOGUE[envelope["type"]]
    assert envelope["source"] == source
    schema().load(envelope["data"])   # raises on a missing, wrong or unknown field


def count(engine, floor, service, table):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(floor.METADATA[service].tables[table])).scalar()


BODIES = [{"channel": "hotline", "title": "路灯不亮", "content": "阴平镇金寺村村口路灯不亮，请尽快维修。",
           "citizen": {"name": "王五", "phone": "13900000000", "id_number": "370404199001011234"},
           "location": {"town_code": "370404101", "village": "370404101201"}},
          {"channel": "wechat", "title": "噪音扰民", "content": "夜间施工噪音很大。",
           "citizen": {"name": "李四", "phone": "13900000001"}, "location": {"town_code": "370404102"}}]


@pytest.fixture
def triage_url(db_url, tmp_path):
    """A second database on ``db_url``'s backend: each service has its own."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'triage.db'}"
        return
    from wuji_common.testing import drop_postgres_database, new_postgres_database
    url, name = new_postgres_database()
    yield url
    drop_postgres_database(name)


def test_floor_carries_appeals_like_the_platform(floor, db_url, triage_url):
    intake_engine, intake_uow = unit_of_work(floor, "intake", db_url)
    answers = floor.register(intake_uow(), BODIES)
    assert [a["status"] for a in answers] == ["received", "received"]
    received = outbox(intake_engine, floor, "intake")
    assert [e["type"] for e in received] == ["appeal_received"] * 2
    assert [e["case_no"] for e in received] == [a["case_no"] for a in answers]
    for envelope in received:
        check_wire(envelope)
        text = json.dumps(envelope, ensure_ascii=False)
        assert not any(secret in text for secret in ("王五", "李四", "1390000000", "370404199001011234"))

    triage_engine, triage_uow = unit_of_work(floor, "triage", triage_url)
    floor.write_rows(triage_uow(), "triage", "triage.on_appeal_received", [*received, received[0]],
                     then=floor.dispatch)
    floor.write_rows(triage_uow(), "triage", "triage.on_appeal_received", received, then=floor.dispatch)
    dispatched = outbox(triage_engine, floor, "triage")
    assert [e["type"] for e in dispatched] == ["order_dispatched"] * 2   # once each, redelivery or not
    assert count(triage_engine, floor, "triage", "work_orders") == 2
    for envelope in dispatched:
        check_wire(envelope)
    intake_engine.dispose()
    triage_engine.dispose()

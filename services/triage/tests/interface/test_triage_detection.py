"""triage's analysis on the real broker and a real database (SQLite and PostgreSQL): what appeals
show (urgency, joint enforcement, cross-level, repeats, hot spots) arrives as events; dispatchers
work the review queue over RPC; the taxonomy is reloaded without a restart."""
import shutil
import uuid
from pathlib import Path

import pytest
import yaml
from nameko.standalone.rpc import ServiceRpcProxy

from triage import handlers
from triage.dependencies import DEFAULT_TAXONOMY_PATH
from triage.models import metadata
from triage.service import TriageService
from wuji_common import reference
from wuji_common.db import UnitOfWork, make_engine, session_factory
from wuji_common.errors import ValidationError
from wuji_common.events import make_event
from wuji_common.migrations import upgrade
from wuji_common.testing_helpers import EventTap, publish_event
from wuji_common.topology import declare

MIGRATIONS = Path(__file__).resolve().parents[2] / "triage" / "migrations"
RETRY_DELAYS = [0.2, 0.5]
JINSI, YINPING = "370404101201", "370404101"
GRID = f"grid-{JINSI}"
TYPES = ("order_dispatched", "enforcement_requested", "urgent_appeal_flagged", "repeat_detected",
         "cross_level_petition_detected", "hotspot_detected")
POLLUTION = "阴平镇金寺村东头的化工厂每天晚上偷排污水，河里的鱼都死了，气味刺鼻，请尽快处理"


@pytest.fixture
def triage(db_url, amqp_uri, container_factory, tmp_path):
    upgrade(MIGRATIONS, db_url)
    engine = make_engine(db_url)
    handlers.load_reference(UnitOfWork(session_factory(engine), metadata, "triage"),
                            list(reference.divisions()), list(reference.units()))
    taxonomy_path = tmp_path / "taxonomy.yml"
    shutil.copy(DEFAULT_TAXONOMY_PATH, taxonomy_path)
    config = {"AMQP_URI": amqp_uri, "DB_URL": db_url, "EVENT_RETRY_DELAYS": RETRY_DELAYS,
              "METRICS_PORT": 0, "OUTBOX_POLL_SECONDS": 0.2, "CLASSIFIER": "off",
              "TAXONOMY_PATH": str(taxonomy_path), "TAXONOMY_CHECK_SECONDS": 0,
              "NEAR_DUPLICATE_CATCH_UP_SECONDS": 0}
    declare(amqp_uri, [TriageService], retry_delays=RETRY_DELAYS)
    container = container_factory(TriageService, config)
    container.start()
    yield config, taxonomy_path
    container.stop()
    engine.dispose()


@pytest.fixture
def tap(amqp_uri):
    events = EventTap(amqp_uri, *[("triage", t) for t in TYPES])
    yield events
    events.close()


def appeal(title, content, citizen_ref, channel="wechat", village_code=JINSI):
    return make_event("appeal_received", f"YC20261125{uuid.uuid4().int % 10**6:06d}", {
        "channel": channel, "title": title, "content": content, "town_code": YINPING,
        "village_code": village_code, "anonymous": citizen_ref is None, "citizen_ref": citizen_ref,
        "received_at": "2026-11-25T08:00:00+00:00"})


def of(tap, case_no, event_type, count=1):
    def matching(events):
        return [e for e in events if e["case_no"] == case_no and e["type"] == event_type]
    return matching(tap.wait_for(lambda events: len(matching(events)) >= count))


def test_what_appeals_show_arrives_as_events(triage, tap, amqp_uri):
    config, _ = triage
    person = uuid.uuid4().hex
    # a district hotline call about a village street light, with a threat: cross-level and urgent
    first = appeal("村口路灯不亮", "村口路灯坏了一个月，再不修就去北京上访", person, channel="hotline")
    publish_event(amqp_uri, first)
    [flagged] = of(tap, first["case_no"], "urgent_appeal_flagged")
    assert flagged["data"]["reasons"][0]["rule"] == "escalation"
    [cross] = of(tap, first["case_no"], "cross_level_petition_detected")
    assert cross["data"]["unit_code"] == GRID and cross["data"]["level"] == "grid"
    # the same person again: a repeat, told to the unit that has it
    again = appeal("路灯还是不亮", "上次说的村口路灯还没修", person)
    publish_event(amqp_uri, again)
    [repeat] = of(tap, again["case_no"], "repeat_detected")
    assert repeat["data"]["earlier_case_no"] == first["case_no"] and repeat["data"]["unit_code"] == GRID
    # illegal construction: the order and the request for joint enforcement
    building = appeal("有人私搭乱建", "村西头有人私搭乱建", None)
    publish_event(amqp_uri, building)
    [requested] = of(tap, building["case_no"], "enforcement_requested")
    assert requested["data"]["violation_type"] == "illegal_construction"
    # three neighbours about one factory: one hot spot
    cases = []
    for n in range(3):
        hot = appeal("化工厂偷排污水", POLLUTION + "！" * n, uuid.uuid4().hex)
        cases.append(hot["case_no"])
        publish_event(amqp_uri, hot)
        of(tap, hot["case_no"], "order_dispatched")  # one after the other, as people write
    [hotspot] = of(tap, cases[-1], "hotspot_detected")
    assert sorted(hotspot["data"]["case_nos"]) == sorted(cases) and hotspot["data"]["people"] == 3
    with ServiceRpcProxy("triage", config, timeout=10) as rpc:
        [cluster] = [h for h in rpc.hotspots() if h["hotspot_id"] == hotspot["data"]["hotspot_id"]]
        assert cluster["appeals"] == 3
        assert rpc.repeat_counts()[GRID] >= 1


def test_dispatchers_work_the_review_queue_over_rpc(triage, tap, amqp_uri):
    config, _ = triage
    unclear = appeal("咨询", "想问一件事情", None)
    publish_event(amqp_uri, unclear)
    with ServiceRpcProxy("triage", config, timeout=10) as rpc:
        tap.wait_for(lambda _: [q for q in rpc.pending_review() if q["case_no"] == unclear["case_no"]])
        [item] = [q for q in rpc.pending_review() if q["case_no"] == unclear["case_no"]]
        assert item["review_reason"] == "unidentified"
        with pytest.raises(ValidationError):
            rpc.route_manually(item["order_no"], GRID, "ecology", "clutter", idempotency_key="d0")
        routed = rpc.route_manually(item["order_no"], GRID, "sanitation", "clutter", idempotency_key="d1")
        assert routed["status"] == "dispatched" and routed["unit_code"] == GRID
    [dispatched] = of(tap, unclear["case_no"], "order_dispatched")
    assert dispatched["data"]["order_no"] == item["order_no"]


def test_a_changed_taxonomy_takes_effect_without_a_restart(triage):
    config, path = triage
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    with ServiceRpcProxy("triage", config, timeout=10) as rpc:
        shipped = rpc.services_catalogue()["taxonomy_version"]
        data["version"] = "2026.12-test"
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        assert rpc.services_catalogue()["taxonomy_version"] == "2026.12-test"
        # a broken file is refused; the version in force stays
        data["categories"][0]["items"][0]["level"] = "province"
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        with pytest.raises(ValidationError) as err:
            rpc.reload_taxonomy()
        assert "level" in str(err.value.fields["taxonomy"])
        assert rpc.services_catalogue()["taxonomy_version"] == "2026.12-test"
        assert shipped != "2026.12-test"

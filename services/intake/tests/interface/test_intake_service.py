"""The intake service in a real nameko container on the real RabbitMQ and a real database."""
import json
import time
import urllib.request

import pytest
from kombu import Connection
from nameko.standalone.rpc import ServiceRpcProxy

from intake.service import IntakeService
from wuji_common.errors import ValidationError
from wuji_common.events import make_event
from wuji_common.testing_helpers import EventTap, free_port, publish_event
from wuji_common.topology import declare


@pytest.fixture
def intake(intake_db, amqp_uri, container_factory):
    db_url, uow = intake_db
    port = free_port()
    config = {"AMQP_URI": amqp_uri, "DB_URL": db_url, "WEB_SERVER_ADDRESS": f"127.0.0.1:{port}",
              "METRICS_PORT": 0, "CITIZEN_KEY": "test-key", "EVENT_RETRY_DELAYS": [0.2, 0.3],
              "OUTBOX_POLL_SECONDS": 0.2}
    declare(amqp_uri, [IntakeService], retry_delays=[0.2, 0.3])
    container = container_factory(IntakeService, config)
    container.start()
    yield f"http://127.0.0.1:{port}", config, uow


def http(method, url, body=None, headers=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_submit_over_http_publishes_appeal_received(intake, amqp_uri, appeal_payload):
    base, _, _ = intake
    tap = EventTap(amqp_uri, ("intake", "appeal_received"))
    try:
        status, body = http("POST", f"{base}/api/v1/appeals", appeal_payload, {"Idempotency-Key": "abc"})
        assert status == 201 and body["status"] == "received"
        status2, body2 = http("POST", f"{base}/api/v1/appeals", appeal_payload, {"Idempotency-Key": "abc"})
        assert (status2, body2) == (201, body)
        [event] = tap.wait_for(lambda evs: len(evs) >= 1)
        time.sleep(0.5)
        assert len(tap.drain()) == 1  # the retry with the same key raised nothing new
        assert event["case_no"] == body["case_no"] and event["source"] == "intake"
        assert "13812345678" not in json.dumps(event)
        status, view = http("GET", f"{base}/api/v1/appeals/{body['case_no']}?token={body['tracking_token']}")
        assert status == 200 and view["status_text"] == "已受理"
    finally:
        tap.close()


def test_concurrent_submissions_are_stored_together_and_a_bad_one_alone_is_refused(intake, amqp_uri,
                                                                                  appeal_payload):
    """40 citizens at once: group commit writes them in fewer transactions than appeals, each gets
    its own case, the one with an unknown town gets its 400, and every stored one is announced."""
    from concurrent.futures import ThreadPoolExecutor

    from prometheus_client import REGISTRY
    base, _, _ = intake
    labels = {"service": "intake", "writer": "AppealWriter"}

    def written():
        return (REGISTRY.get_sample_value("wuji_group_commit_size_count", labels) or 0,
                REGISTRY.get_sample_value("wuji_group_commit_size_sum", labels) or 0)

    bad = {**appeal_payload, "location": {"town_code": "370404999"}}
    payloads = [bad if n == 17 else appeal_payload for n in range(40)]
    tap = EventTap(amqp_uri, ("intake", "appeal_received"))
    try:
        before = written()
        with ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(lambda p: http("POST", f"{base}/api/v1/appeals", p), payloads))
        transactions, submissions = (a - b for a, b in zip(written(), before))
        assert answers[17][0] == 400 and "location" in answers[17][1]["fields"]
        stored = {body["case_no"] for status, body in answers if status == 201}
        assert len(stored) == 39
        assert submissions == 40 and transactions < 40
        events = tap.wait_for(lambda evs: len(evs) >= 39)
        time.sleep(0.3)
        assert {e["case_no"] for e in events + tap.drain()} == stored
    finally:
        tap.close()


@pytest.mark.parametrize("raw, field", [
    (b"\xff\xfe not utf-8", "_body"),
    (b"{not json", "_body"),
    (json.dumps({"channel": "web"}).encode(), "title"),
])
def test_bad_http_input_gets_400_naming_the_field(intake, raw, field):
    base, _, _ = intake
    status, body = http("POST", f"{base}/api/v1/appeals", raw=raw)
    assert status == 400 and field in body["fields"]


def test_rpc_submit_and_masked_staff_view(intake, amqp_uri, appeal_payload):
    _, config, _ = intake
    with ServiceRpcProxy("intake", config, timeout=10) as rpc:
        result = rpc.submit_appeal(appeal_payload, idempotency_key="k1")
        assert rpc.submit_appeal(appeal_payload, idempotency_key="k1") == result
        view = rpc.get_appeal(result["case_no"])
        assert view["citizen"]["phone"] == "138****5678"
        with pytest.raises(ValidationError) as err:
            rpc.submit_appeal({**appeal_payload, "channel": "fax"}, idempotency_key="k2")
        assert "channel" in err.value.fields


def test_order_events_reach_the_citizen_timeline(intake, amqp_uri, appeal_payload):
    base, _, _ = intake
    _, body = http("POST", f"{base}/api/v1/appeals", appeal_payload)
    envelope = make_event("order_dispatched", body["case_no"], {
        "order_no": "GD1", "unit_code": "grid-370404101201", "town_code": "370404101",
        "category": "道路", "status": "dispatched", "unit_name": "金寺村网格员", "level": "grid",
        "accept_due_at": "2026-11-26T08:00:00+00:00", "resolve_due_at": "2026-11-30T08:00:00+00:00", "policy": "p", "router_version": "r",
        "title": "t"}, source="triage")
    publish_event(amqp_uri, envelope)
    publish_event(amqp_uri, envelope)  # a duplicate delivery
    url = f"{base}/api/v1/appeals/{body['case_no']}?token={body['tracking_token']}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, view = http("GET", url)
        if view["status"] == "dispatched":
            break
        time.sleep(0.1)
    time.sleep(0.3)
    _, view = http("GET", url)
    assert view["status"] == "dispatched"
    assert [t["text"] for t in view["timeline"]] == ["您的诉求已登记受理", "已派至金寺村网格员办理"]


def test_a_failing_event_is_retried_then_dead_lettered_not_lost(intake, amqp_uri):
    # an order event for a case intake never registered fails every time
    envelope = make_event("order_accepted", "YC19990101000001", {
        "order_no": "GD9", "unit_code": "u", "town_code": "370404101", "category": "c",
        "status": "accepted", "accepted_at": "2026-11-25T09:00:00+00:00", "within_deadline": True}, source="triage")
    publish_event(amqp_uri, envelope)
    dead = "evt-triage-order_accepted--intake.on_order_accepted.dead"
    deadline = time.monotonic() + 15
    with Connection(amqp_uri) as conn:
        channel = conn.default_channel
        while time.monotonic() < deadline:
            message = channel.basic_get(dead, no_ack=True)
            if message is None:
                time.sleep(0.2)
                continue
            if json.loads(message.body)["event_id"] != envelope["event_id"]:
                continue  # left by the same test on the other database backend
            assert message.headers["x-wuji-attempt"] == 3
            assert "NotFound" in message.headers["x-wuji-error"]
            return
    pytest.fail("the failing event never reached the dead-letter queue")

"""Every event the services publish in a full run validates against the AsyncAPI document
(docs/asyncapi.json): the five services as processes on the real broker (SQLite), a queue bound to
every event exchange the document names with ``#`` (as an integrator binds one), an appeal walked
round the whole loop (dispatch, progress, return and re-dispatch, resolve, unsatisfied rating and
rework, resolve, satisfied rating, close) and another one through joint enforcement (whistle, report
in, plan, operation completed, order resolved). Each envelope is checked with jsonschema against its
message's payload schema."""
import json
import time
import uuid
from pathlib import Path

import pytest
from jsonschema import Draft7Validator, FormatChecker
from kombu import Connection, Exchange, Queue
from nameko.standalone.rpc import ClusterRpcProxy
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from wuji_common.testing_helpers import eventually, http_json as http

DOCUMENT_PATH = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"
DOCUMENT_URI = "urn:wuji:asyncapi"
APPEALS = [
    {"channel": "web", "title": "村口路灯不亮", "content": "阴平镇金寺村村口的路灯坏了，晚上出行不安全。",
     "citizen": {"name": "李四", "phone": "13912345678"},
     "location": {"town_code": "370404101", "village": "370404101201"}},
    {"channel": "wechat", "title": "路边占道经营堵塞交通", "content": "古邵镇主街流动摊贩占道经营，车辆无法通行。",
     "anonymous": True, "location": {"town_code": "370404100"}},
]


@pytest.fixture(scope="module")
def document():
    return json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validate(document):
    """validate(envelope) → the list of what is wrong with it (empty: valid)."""
    registry = Registry().with_resource(DOCUMENT_URI, Resource.from_contents(document, DRAFT7))
    validators = {name: Draft7Validator({"$ref": f"{DOCUMENT_URI}#/components/messages/{name}/payload"},
                                        registry=registry, format_checker=FormatChecker())
                  for name in document["components"]["messages"]}

    def check(envelope):
        validator = validators.get(envelope.get("type"))
        if validator is None:
            return [f"type {envelope.get('type')!r} is not in the AsyncAPI document"]
        return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(envelope)]
    return check


def test_the_check_refuses_what_the_document_does_not_promise(validate):
    envelope = {"event_id": str(uuid.uuid4()), "type": "order_accepted", "version": 1,
                "occurred_at": "2026-11-25T09:00:00+00:00", "case_no": "YC20261125000001", "source": "triage",
                "data": {"order_no": "GD1", "unit_code": "town-370404101", "town_code": "370404101",
                         "category": "urban-rural", "status": "accepted",
                         "accepted_at": "2026-11-25T09:00:00+00:00", "within_deadline": True}}
    assert validate(envelope) == []
    for wrong in ({"type": "order_signed"}, {"source": "intake"}, {"case_no": 12},
                  {"data": {**envelope["data"], "status": "done"}},
                  {"data": {**envelope["data"], "accepted_at": "tomorrow"}},
                  {"data": {**envelope["data"], "phone": "13912345678"}}):
        assert validate({**envelope, **wrong}), wrong


class Tap:
    """One queue bound with ``#`` to every exchange the AsyncAPI document names."""

    def __init__(self, amqp_uri, document):
        self.conn = Connection(amqp_uri)
        channel = self.conn.channel()
        self.queue = Queue(f"contract-{uuid.uuid4().hex[:6]}", durable=False, auto_delete=True, channel=channel)
        self.queue.declare()
        exchanges = {c["bindings"]["amqp"]["exchange"]["name"] for c in document["channels"].values()}
        for name in sorted(exchanges):
            Exchange(name, type="topic", durable=True, channel=channel).declare()
            self.queue.bind_to(exchange=name, routing_key="#")
        self.exchanges = exchanges
        self.received = []

    def drain(self):
        while (message := self.queue.get(no_ack=True)) is not None:
            body = message.body if isinstance(message.body, str) else message.body.decode("utf-8")
            self.received.append(json.loads(body))
        return self.received

    def has(self, event_type, case_no, count=1):
        return sum(1 for e in self.drain() if e["type"] == event_type and e["case_no"] == case_no) >= count

    def close(self):
        self.conn.release()


def key():
    return uuid.uuid4().hex


def walk_the_loop(platform, rpc, tap):
    status, receipt = http("POST", f"{platform.api}/api/v1/appeals", APPEALS[0])
    assert status == 201, receipt
    case_no, token = receipt["case_no"], receipt["tracking_token"]
    rate = f"{platform.api}/api/v1/appeals/{case_no}/rating?token={token}"
    track = f"{platform.api}/api/v1/appeals/{case_no}?token={token}"
    first = eventually(lambda: (rpc.triage.find_orders(case_no=case_no) or [None])[0], what="dispatch")
    rpc.triage.accept_order(first["order_no"], first["unit_code"], idempotency_key=key())
    rpc.triage.add_progress(first["order_no"], first["unit_code"], "已派人查看", idempotency_key=key())
    returned = rpc.triage.return_order(first["order_no"], first["unit_code"], "不属于本单位职责",
                                       idempotency_key=key())
    order = rpc.triage.get_order(returned["successor_order_no"])
    rpc.triage.accept_order(order["order_no"], order["unit_code"], idempotency_key=key())
    for satisfaction in ("unsatisfied", "satisfied"):
        rpc.triage.resolve_order(order["order_no"], order["unit_code"], "已修复路灯", idempotency_key=key())
        eventually(lambda: http("GET", track)[1]["status"] == "resolved", what="citizen sees resolved")
        status, body = http("POST", rate, {"satisfaction": satisfaction})
        assert status == 200, body
        if satisfaction == "unsatisfied":
            eventually(lambda: tap.has("order_reopened", case_no), what="reopened")
    eventually(lambda: tap.has("order_closed", case_no), what="closed")


def joint_enforcement(platform, rpc, tap):
    status, receipt = http("POST", f"{platform.api}/api/v1/appeals", APPEALS[1])
    assert status == 201, receipt
    case_no = receipt["case_no"]
    order = eventually(lambda: (rpc.triage.find_orders(case_no=case_no) or [None])[0], what="dispatch")
    rpc.triage.accept_order(order["order_no"], order["unit_code"], idempotency_key=key())
    town = order["town_code"]
    operation = rpc.enforcement.blow_whistle(order["order_no"], "road_occupation", town, "urgent",
                                             idempotency_key=key())
    for force in operation["forces"]:
        rpc.enforcement.report_in(operation["operation_id"], force["force_code"],
                                  f"{force['force_code']}-{town}", idempotency_key=key())
    rpc.enforcement.schedule(town, 7)
    rpc.enforcement.complete_operation(operation["operation_id"], "占道摊点已清理", idempotency_key=key(),
                                       evidence=["photo:contract-1"])
    eventually(lambda: tap.has("order_resolved", case_no), what="order resolved by the operation")


@pytest.mark.slow
@pytest.mark.parametrize("platform", ["sqlite"], indirect=True)
def test_every_published_event_validates_against_the_asyncapi_document(platform, document, validate):
    tap = Tap(platform.amqp_uri, document)
    try:
        with ClusterRpcProxy({"AMQP_URI": platform.amqp_uri}, timeout=30) as rpc:
            walk_the_loop(platform, rpc, tap)
            joint_enforcement(platform, rpc, tap)
        time.sleep(1.0)  # stragglers (metrics-free: only the three publishing services' events)
        events = tap.drain()
    finally:
        tap.close()
    invalid = {f"{e['type']} {e['event_id']}": problems for e in events if (problems := validate(e))}
    assert not invalid, json.dumps(invalid, ensure_ascii=False, indent=1)[:4000]
    seen = {e["type"] for e in events}
    assert seen >= {"appeal_received", "order_dispatched", "order_accepted", "order_progressed",
                    "order_returned", "order_resolved", "appeal_rated", "order_reopened", "order_closed",
                    "whistle_blown", "force_reported_in", "operations_scheduled", "operation_completed"}, seen
    # each event came from the exchange its channel names
    channels = {name.split("/")[1]: c["bindings"]["amqp"]["exchange"]["name"]
                for name, c in document["channels"].items()}
    assert all(f"{e['source']}.events" == channels[e["type"]] for e in events)

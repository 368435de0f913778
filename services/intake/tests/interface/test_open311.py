"""Open311 GeoReport v2 over HTTP, intake and triage in real nameko containers on the real broker
(SQLite; the use cases run on both backends in tests/unit/test_open311.py).

The tests follow the specification (http://wiki.open311.org/GeoReport_v2) method by method and
check every response against the Open311 project's JSON schemas (shared/open311: service.json,
service-definition.json, request.json, and swagger.json's RequestResponse / TokenResponse), in both
formats: an XML answer is turned into the same structure and checked the same way."""
import json
import os
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest
import requests
from jsonschema import Draft7Validator, FormatChecker
from nameko.standalone.rpc import ClusterRpcProxy
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7
from sqlalchemy import func, select

from intake.models import Appeal
from wuji_common.testing_helpers import EventTap

ROOT = Path(__file__).resolve().parents[4]
SCHEMAS = Path(os.environ.get("WUJI_OPEN311_SCHEMAS", ROOT.parent / "shared" / "open311"))
BASE_URI = "https://schemas.open311.test/georeport-v2/"
JURISDICTION = "yicheng.zaozhuang.gov.cn"
YINPING, JINSI = "370404101", "370404101201"


@pytest.fixture(scope="module")
def schema():
    """validate(document, name): the Open311 schemas with their relative $refs resolved."""
    if not (SCHEMAS / "request.json").exists():
        pytest.skip(f"Open311 JSON schemas not found at {SCHEMAS} (CI has shared/open311)")
    registry = Registry().with_resources(
        (BASE_URI + p.name, Resource.from_contents(json.loads(p.read_text()), default_specification=DRAFT7))
        for p in SCHEMAS.glob("*.json"))
    lists = {"services": "services.json", "service_definition": "service-definition.json",
             "requests": "requests.json", "request": "request.json",
             "created": None, "token": None}

    def validate(document, name):
        if name == "created":
            ref = {"type": "array", "minItems": 1,
                   "items": {"$ref": BASE_URI + "swagger.json#/definitions/RequestResponse"}}
        elif name == "token":
            ref = {"type": "array", "minItems": 1,
                   "items": {"$ref": BASE_URI + "swagger.json#/definitions/TokenResponse"}}
        else:
            ref = {"$ref": BASE_URI + lists[name]}
        errors = list(Draft7Validator(ref, registry=registry, format_checker=FormatChecker())
                      .iter_errors(document))
        assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]
        return document
    return validate


def xml_as_json(text):
    """An Open311 XML answer as the JSON one would be: lists of members, typed scalars."""
    root = ElementTree.fromstring(text.encode("utf-8"))
    lists = {"attributes", "values", "endpoints", "formats"}
    numbers = {"lat", "long", "order", "code"}

    def value(element):
        children = list(element)
        if element.tag in lists:
            return [value(child) for child in children]
        if children:
            return {child.tag: value(child) for child in children}
        text_ = element.text
        if text_ is None:
            return None
        if text_ in ("true", "false"):
            return text_ == "true"
        if element.tag in numbers:
            try:
                return int(text_) if text_.lstrip("-").isdigit() else float(text_)
            except ValueError:
                return text_
        return text_
    if root.tag in ("services", "service_requests", "errors"):
        return [value(child) for child in root]
    return value(root)


def get(api, path, fmt="json", **params):
    response = requests.get(f"{api['base']}/{path}.{fmt}", params=params, timeout=10)
    return response, parsed(response)


def parsed(response):
    if response.headers["Content-Type"].startswith("application/json"):
        return response.json()
    return xml_as_json(response.text)


def post(api, fmt="json", headers=None, **form):
    form.setdefault("api_key", api["api_key"])
    response = requests.post(f"{api['base']}/requests.{fmt}", data=form, headers=headers, timeout=10)
    return response, parsed(response)


def appeals(api):
    with api["uow"]() as u:
        return u.session.execute(select(func.count()).select_from(Appeal)).scalar_one()


def eventually(probe, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached")


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_discovery_names_the_endpoint_and_its_formats(intake_and_triage, fmt):
    response, doc = get(intake_and_triage, "discovery", fmt)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith({"json": "application/json", "xml": "text/xml"}[fmt])
    assert {"changeset", "contact", "key_service", "endpoints"} <= set(doc)
    [endpoint] = doc["endpoints"]
    assert endpoint["specification"] == "http://wiki.open311.org/GeoReport_v2"
    assert endpoint["url"].endswith("/open311/v2/") and endpoint["type"] == "production"
    assert set(endpoint["formats"]) == {"text/xml", "application/json"}


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_get_services_lists_the_taxonomy_items(intake_and_triage, schema, fmt):
    response, services = get(intake_and_triage, "services", fmt, jurisdiction_id=JURISDICTION)
    assert response.status_code == 200
    schema(services, "services")
    with ClusterRpcProxy(intake_and_triage["config"], timeout=10) as rpc:
        catalogue = rpc.triage.services_catalogue()
    assert [s["service_code"] for s in services] == [i["code"] for i in catalogue["items"]]
    road = next(s for s in services if s["service_code"] == "road-damage")
    # "metadata: true/false: Are there additional form fields for this service type?"
    # "type: realtime | batch | blackbox"; "keywords: list of keywords or tags seperated by comma"
    assert road["metadata"] is True and road["type"] == "realtime" and road["group"] == "城乡建设"
    assert "坑洼" in road["keywords"].split(",")


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_get_service_definition_has_the_location_attributes(intake_and_triage, schema, fmt):
    response, definition = get(intake_and_triage, "services/road-damage", fmt)
    assert response.status_code == 200
    schema(definition, "service_definition")
    attributes = {a["code"]: a for a in definition["attributes"]}
    assert [a["order"] for a in definition["attributes"]] == [1, 2, 3, 4]
    assert attributes["town"]["datatype"] == "singlevaluelist" and attributes["town"]["variable"] is True
    assert {"key": YINPING, "name": "阴平镇"} in attributes["town"]["values"]
    assert attributes["privacy_notice"]["variable"] is False  # information only
    response, errors = get(intake_and_triage, "services/no-such-service", fmt)
    assert response.status_code == 404 and errors[0]["code"] == 404


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_errors_use_the_specifications_format_and_codes(intake_and_triage, fmt):
    before = appeals(intake_and_triage)
    cases = [
        (lambda: post(intake_and_triage, fmt, api_key="wrong", service_code="road-damage", address_id=YINPING,
                      description="路面坑洼"), 403),
        (lambda: post(intake_and_triage, fmt, api_key="", service_code="road-damage", address_id=YINPING,
                      description="路面坑洼"), 403),
        (lambda: post(intake_and_triage, fmt, jurisdiction_id="other.gov", service_code="road-damage",
                      address_id=YINPING, description="路面坑洼"), 404),
        (lambda: post(intake_and_triage, fmt, description="路面坑洼", address_id=YINPING), 400),  # no service_code
        (lambda: post(intake_and_triage, fmt, service_code="road-damage", description="路面坑洼"), 400),  # no location
        (lambda: get(intake_and_triage, "services", fmt, jurisdiction_id="springfield.gov"), 404),
        (lambda: get(intake_and_triage, "requests", fmt, status="pending"), 400),
        (lambda: get(intake_and_triage, "requests", fmt, start_date="2026-01-01", end_date="2026-12-01"), 400),
        (lambda: get(intake_and_triage, "requests/YC19990101000001", fmt), 404),
        (lambda: get(intake_and_triage, "tokens/no-such-token", fmt), 404),
        (lambda: get(intake_and_triage, "services", "csv"), 404),  # a format the spec does not have
    ]
    for call, status in cases:
        response, errors = call()
        assert response.status_code == status, response.text
        # "[{"code": 403, "description": "Invalid api_key received -- can't proceed with create_request."}]"
        assert errors and all(e["code"] == status and e["description"] for e in errors), errors
    assert appeals(intake_and_triage) == before


def test_a_request_goes_round_the_loop_and_reads_back_by_the_specification(intake_and_triage, schema):
    tap = EventTap(intake_and_triage["config"]["AMQP_URI"], ("intake", "appeal_received"))
    try:
        response, created = post(intake_and_triage, service_code="road-damage", lat="34.8301", long="117.4702",
                                 description="村口路面坑洼，雨天积水，电话13812345678。", first_name="三",
                                 last_name="张", phone="13812345678", email="zs@example.com",
                                 media_url="https://img.example/road.jpg", **{"attribute[village]": JINSI})
        assert response.status_code == 200, response.text
        schema(created, "created")
        [created] = created
        case_no = created["service_request_id"]
        # the same appeal as any other: appeal_received from intake, without personal data
        [event] = tap.wait_for(lambda events: any(e["case_no"] == case_no for e in events))
        assert event["data"]["town_code"] == YINPING and event["data"]["village_code"] == JINSI
        assert "13812345678" not in json.dumps(event) and "zs@example.com" not in json.dumps(event)
    finally:
        tap.close()

    # GET tokens/{token}: the asynchronous id flow answers the same id
    response, tokens = get(intake_and_triage, f"tokens/{created['token']}")
    assert response.status_code == 200 and schema(tokens, "token") == [
        {"service_request_id": case_no, "token": created["token"]}]

    # triage routes it; Open311 shows the unit and the deadline
    def dispatched():
        _, found = get(intake_and_triage, f"requests/{case_no}")
        return found[0] if found[0]["agency_responsible"] else None
    request = eventually(dispatched)
    schema([request], "requests")
    assert request["status"] == "open" and request["status_notes"] == "已派单"
    assert request["expected_datetime"] and request["service_code"] == "road-damage"
    assert request["media_url"] == "https://img.example/road.jpg"
    assert request["address"] == "峄城区阴平镇金寺村" and "13812345678" not in request["description"]

    with ClusterRpcProxy(intake_and_triage["config"], timeout=10) as rpc:
        [order] = rpc.triage.find_orders(case_no=case_no)
        assert order["unit_name"] == request["agency_responsible"]
        assert order["resolve_due_at"][:19] == _utc(request["expected_datetime"])[:19]
        rpc.triage.accept_order(order["order_no"], order["unit_code"], idempotency_key="a1")
        rpc.triage.resolve_order(order["order_no"], order["unit_code"], "已修复路面", idempotency_key="r1")

    closed = eventually(lambda: (lambda r: r if r["status"] == "closed" else None)(
        get(intake_and_triage, f"requests/{case_no}")[1][0]))
    assert closed["status_notes"] == "已办结，请您评价"
    for fmt in ("json", "xml"):
        response, found = get(intake_and_triage, "requests", fmt, service_request_id=case_no)
        assert response.status_code == 200
        assert schema(found, "requests")[0]["status"] == "closed"
        response, found = get(intake_and_triage, "requests", fmt, service_code="road-damage", status="closed")
        assert case_no in [r["service_request_id"] for r in schema(found, "requests")]
        response, found = get(intake_and_triage, "requests", fmt, status="open")
        assert case_no not in [r["service_request_id"] for r in schema(found, "requests")]


def _utc(text):
    from datetime import datetime, timezone
    return datetime.fromisoformat(text).astimezone(timezone.utc).isoformat()


def test_xml_post_and_the_schemas_catch_a_wrong_answer(intake_and_triage, schema):
    response, created = post(intake_and_triage, "xml", service_code="wage-arrears", description="工地欠薪三个月",
                             address_string="峄城区坛山街道文化路")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/xml")
    schema(created, "created")
    response, found = get(intake_and_triage, f"requests/{created[0]['service_request_id']}", "xml")
    schema(found, "requests")
    assert found[0]["address"] == "峄城区坛山街道" and found[0]["lat"] is None
    # the check can fail: the same answer with a wrong status or time is refused
    for wrong in ({"status": "pending"}, {"requested_datetime": "yesterday"}, {"service_code": None}):
        with pytest.raises(AssertionError):
            schema([{**found[0], **wrong}], "requests")


def test_an_idempotency_key_makes_a_retried_post_one_request(intake_and_triage):
    before = appeals(intake_and_triage)
    form = {"service_code": "road-damage", "description": "井盖缺失", "address_id": YINPING}
    first = post(intake_and_triage, headers={"Idempotency-Key": "retry-1"}, **form)[1]
    again = post(intake_and_triage, headers={"Idempotency-Key": "retry-1"}, **form)[1]
    assert first == again and appeals(intake_and_triage) == before + 1

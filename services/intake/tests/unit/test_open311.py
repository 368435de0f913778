"""Open311 GeoReport v2 use cases against a real database (SQLite and PostgreSQL), no broker: the
mapping of a service request onto an appeal and back, location, filters and windows, formats.
The HTTP side with the JSON schemas of the specification is in tests/interface/test_open311.py."""
import json
from datetime import datetime, timedelta, timezone
from xml.etree import ElementTree

import pytest
from sqlalchemy import func, select

from intake import handlers, open311
from intake.models import Appeal, CitizenContact, Open311Request, outbox
from intake.open311 import Open311Error
from intake.open311_http import client_for, parse_api_keys, xml_document

ROAD = {
    "code": "road-damage", "name": "道路破损", "category": "urban-rural", "category_name": "城乡建设",
    "level": "town", "department": "dept-housing", "department_name": "区住房和城乡建设局",
    "co_handlers": ["dept-transport"], "keywords": ["路面", "坑洼"], "default": False,
    "time_limit": {"normal": {"accept_hours": 2.0, "resolve_hours": 72.0},
                   "urgent": {"accept_hours": 0.5, "resolve_hours": 12.0}},
}
WAGES = {**ROAD, "code": "wage-arrears", "name": "拖欠工资", "category": "labour", "category_name": "劳动和社会保障",
         "level": "district", "department": "dept-hrss", "department_name": "区人力资源和社会保障局",
         "keywords": ["欠薪"], "time_limit": {"normal": {"accept_hours": 2.0, "resolve_hours": 36.0},
                                              "urgent": {"accept_hours": 1.0, "resolve_hours": 24.0}}}
# what triage.services_catalogue answers (its own test checks that against the taxonomy)
CATALOGUE = {"taxonomy_version": "test", "categories": [], "items": [ROAD, WAGES]}
JINSI, YINPING, TANSHAN = "370404101201", "370404101", "370404001"


def post(uow, client="app", idempotency_key=None, now=None, attributes=None, **params):
    form = {"api_key": "k", "service_code": "road-damage", "description": "村口路面坑洼，雨天积水。", **params}
    return open311.create_request(uow(), CATALOGUE, {k: v for k, v in form.items() if v is not None},
                                  attributes or {}, client, "citizen-key", idempotency_key, now)


def count(uow, table):
    with uow() as u:
        return u.session.execute(select(func.count()).select_from(table)).scalar_one()


# --- POST requests: the same appeal as any other ------------------------------------------------

def test_a_request_is_registered_as_an_appeal_with_its_event(intake_db):
    _, uow = intake_db
    [created] = post(uow, attributes={"village": JINSI}, first_name="三", last_name="张", phone="13812345678",
                     email="zs@example.com", address_string="金寺村东头12号", media_url="https://img.example/1.jpg")
    # "service_request_id: The unique ID of the service request created" → the case number
    assert created["service_request_id"].startswith("YC") and "account_id" not in created
    assert created["token"] and "3天内办结" in created["service_notice"]
    with uow() as u:
        appeal = u.session.execute(select(Appeal)).scalar_one()
        contact = u.session.get(CitizenContact, appeal.case_no)
        record = u.session.get(Open311Request, appeal.case_no)
        assert (appeal.channel, appeal.town_code, appeal.village_code) == ("web", YINPING, JINSI)
        assert appeal.title == "道路破损：村口路面坑洼，雨天积水。" and not appeal.anonymous
        assert json.loads(appeal.attachments) == ["https://img.example/1.jpg"]
        assert (contact.name, contact.phone, contact.address) == ("张三", "13812345678", "金寺村东头12号")
        assert (record.service_code, record.client, record.located_by) == ("road-damage", "app", "attribute")
    [payload] = [json.loads(p) for p in _outbox(uow)]
    assert payload["type"] == "appeal_received" and payload["case_no"] == created["service_request_id"]
    assert payload["data"]["town_code"] == YINPING and payload["data"]["citizen_ref"]
    for secret in ("张三", "13812345678", "zs@example.com", "金寺村东头12号"):
        assert secret not in json.dumps(payload, ensure_ascii=False)


def _outbox(uow):
    with uow() as u:
        return u.session.execute(select(outbox.c.payload)).scalars().all()


def test_without_a_phone_the_request_is_anonymous(intake_db):
    _, uow = intake_db
    [created] = post(uow, lat=34.83, long=117.47, email="someone@example.com")
    with uow() as u:
        appeal = u.session.execute(select(Appeal)).scalar_one()
        assert appeal.anonymous and appeal.citizen_ref is None
        assert u.session.get(CitizenContact, appeal.case_no) is None  # nothing personal kept


@pytest.mark.parametrize("params, attributes, parameter", [
    ({"api_key": None}, {}, "api_key"),
    ({"service_code": "no-such"}, {}, "service_code"),
    ({"description": None}, {}, "description"),
    ({"description": "长" * 4001}, {}, "description"),
    ({}, {}, "location"),                                             # no lat/long, address_string, address_id
    ({"lat": 34.8}, {}, "lat/long"),                                  # lat without long
    ({"lat": 39.9, "long": 116.4}, {}, "lat/long"),                   # Beijing: not in the district
    ({"lat": "north", "long": 117.5}, {}, "lat"),
    ({"address_string": "某某路1号"}, {}, "address_string"),           # names no town or village
    ({"address_id": "110105"}, {}, "address_id"),
    ({"address_id": YINPING, "phone": "12345", "first_name": "三"}, {}, "phone"),  # the platform's own check
    ({"address_id": YINPING, "phone": "13812345678"}, {}, "first_name/last_name"),
    ({"address_id": YINPING, "media_url": "not a url"}, {}, "media_url"),
    ({}, {"town": "北京"}, "attribute[town]"),
    ({}, {"town": YINPING, "village": "370404001201"}, "attribute[village]"),  # village of another town
    ({"address_id": YINPING}, {"colour": "red"}, "attribute[colour]"),
    ({"address_id": YINPING}, {"title": "长" * 101}, "attribute[title]"),
])
def test_bad_requests_are_400_naming_the_parameter_and_write_nothing(intake_db, params, attributes, parameter):
    _, uow = intake_db
    with pytest.raises(Open311Error) as err:
        post(uow, attributes=attributes, **params)
    assert err.value.status == 400
    assert any(e["description"].startswith(parameter) for e in err.value.errors), err.value.errors
    assert count(uow, Appeal.__table__) == 0 and count(uow, outbox) == 0


def test_an_idempotency_key_returns_the_first_request_per_client(intake_db):
    _, uow = intake_db
    first = post(uow, idempotency_key="k1", address_id=YINPING)
    assert post(uow, idempotency_key="k1", address_id=YINPING) == first
    other_client = post(uow, client="other", idempotency_key="k1", address_id=YINPING)
    assert other_client[0]["service_request_id"] != first[0]["service_request_id"]
    assert count(uow, Appeal.__table__) == 2 and count(uow, outbox) == 2


# --- location -----------------------------------------------------------------------------------

@pytest.mark.parametrize("attributes, params, expected", [
    ({"village": JINSI}, {}, (YINPING, JINSI, "attribute")),
    ({"village": "金寺村"}, {}, (YINPING, JINSI, "attribute")),
    ({"town": "阴平镇"}, {"lat": 34.77, "long": 117.59}, (YINPING, None, "attribute")),  # attribute first
    ({"town": "阴平"}, {}, (YINPING, None, "attribute")),
    ({}, {"address_id": JINSI}, (YINPING, JINSI, "address_id")),
    ({}, {"address_id": TANSHAN}, (TANSHAN, None, "address_id")),
    ({}, {"address_string": "山东省枣庄市峄城区阴平镇金寺村东头12号"}, (YINPING, JINSI, "address_string")),
    ({}, {"address_string": "坛山街道文化路"}, (TANSHAN, None, "address_string")),
    ({}, {"address_string": "金寺村村口"}, (YINPING, JINSI, "address_string")),
    ({}, {"address_string": "某某路1号", "lat": 34.775, "long": 117.595}, (TANSHAN, None, "lat_long")),
    ({}, {"lat": 34.829, "long": 117.468}, (YINPING, None, "lat_long")),
])
def test_the_location_maps_to_a_town_and_maybe_a_village(intake_db, attributes, params, expected):
    _, uow = intake_db
    towns, villages = open311._divisions(uow())
    assert open311.locate(towns, villages, attributes, params) == expected


def test_every_town_has_a_centroid_inside_the_district():
    from wuji_common import reference
    centroids = open311.town_centroids()
    assert set(centroids) == set(reference.towns())
    for code, (lat, lon) in centroids.items():
        assert open311.nearest_town(lat, lon) == (code, 0.0)
        assert 34.5 < lat < 35.0 and 117.3 < lon < 117.8  # Yicheng district


# --- GET requests: status, fields, filters, windows ---------------------------------------------

def order_event(case_no, event_type, at, **data):
    from wuji_common.events import make_event
    base = {"order_no": "GD1", "unit_code": "town-370404101", "town_code": YINPING, "category": "urban-rural",
            "status": {"order_dispatched": "dispatched"}.get(event_type, event_type.split("_")[1])}
    extra = {
        "order_dispatched": {"unit_name": "阴平镇社会治理服务中心", "level": "town", "policy": "normal",
                             "accept_due_at": (at + timedelta(hours=2)).isoformat(),
                             "resolve_due_at": (at + timedelta(days=3)).isoformat(), "router_version": "r",
                             "title": "t"},
        "order_accepted": {"accepted_at": at.isoformat(), "within_deadline": True},
        "order_resolved": {"resolution": "已修复", "resolved_at": at.isoformat(), "within_deadline": True},
    }[event_type]
    return make_event(event_type, case_no, {**base, **extra, **data}, occurred_at=at)


def test_a_request_reads_back_field_by_field_without_personal_data(intake_db):
    _, uow = intake_db
    now = datetime.now(timezone.utc).replace(microsecond=0)
    [created] = post(uow, now=now - timedelta(hours=1), attributes={"village": JINSI}, first_name="三",
                     last_name="张", phone="13812345678", lat=34.83123, long=117.47456,
                     description="我是张三，电话13812345678，村口路面坑洼。", address_string="金寺村东头12号")
    case_no = created["service_request_id"]
    [view] = open311.get_request(uow(), case_no)
    assert view["status"] == "open" and view["status_notes"] == "已受理"
    assert (view["service_code"], view["service_name"]) == ("road-damage", "道路破损")
    assert view["description"] == "我是张*，电话[电话已隐藏]，村口路面坑洼。"
    assert view["address"] == "峄城区阴平镇金寺村" and view["address_id"] == JINSI
    assert (view["lat"], view["long"]) == (34.83, 117.47)  # blurred to about a kilometre
    assert view["agency_responsible"] is None and view["expected_datetime"] is None
    assert view["requested_datetime"].endswith("+08:00")
    assert view["service_notice"] == created["service_notice"]

    dispatched_at = now - timedelta(minutes=30)
    handlers.apply_order_event(uow(), "intake.test", order_event(case_no, "order_dispatched", dispatched_at))
    [view] = open311.get_request(uow(), case_no)
    # "agency_responsible: the agency responsible for fulfilling ... the service request" → the unit
    assert view["agency_responsible"] == "阴平镇社会治理服务中心" and view["status"] == "open"
    # "expected_datetime: ... may be based on a service-specific service level agreement" → the deadline
    expected = datetime.fromisoformat(view["expected_datetime"])
    assert expected == dispatched_at + timedelta(days=3)
    assert datetime.fromisoformat(view["updated_datetime"]) == dispatched_at

    resolved_at = now - timedelta(minutes=5)
    handlers.apply_order_event(uow(), "intake.test", order_event(case_no, "order_resolved", resolved_at))
    [view] = open311.get_request(uow(), case_no)
    # resolved by the unit: closed for Open311, with the citizen's status text (rating invited)
    assert view["status"] == "closed" and view["status_notes"] == "已办结，请您评价"
    assert datetime.fromisoformat(view["updated_datetime"]) == resolved_at
    text = json.dumps(view, ensure_ascii=False)
    for secret in ("张三", "13812345678", "金寺村东头12号", "34.831", "117.474"):
        assert secret not in text


def test_get_requests_filters_and_the_90_day_window(intake_db):
    _, uow = intake_db
    now = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
    ids = {}
    for name, age_days, code in (("new", 1, "road-damage"), ("month", 30, "wage-arrears"),
                                 ("old", 100, "road-damage")):
        ids[name] = post(uow, now=now - timedelta(days=age_days), service_code=code,
                         address_id=YINPING)[0]["service_request_id"]
    handlers.apply_order_event(uow(), "intake.test", order_event(ids["month"], "order_dispatched", now))
    handlers.apply_order_event(uow(), "intake.test", order_event(ids["month"], "order_resolved",
                                                                 now + timedelta(minutes=1)))

    def found(**params):
        return [r["service_request_id"] for r in open311.find_requests(uow(), params, now=now)]

    # without dates: the most recent 90 days, newest first
    assert found() == [ids["new"], ids["month"]]
    assert found(service_code="wage-arrears") == [ids["month"]]
    assert found(service_code="road-damage,wage-arrears") == [ids["new"], ids["month"]]
    assert found(status="closed") == [ids["month"]] and found(status="open") == [ids["new"]]
    assert found(status="open,closed") == [ids["new"], ids["month"]]
    # a window of our own, at most 90 days; dates without an offset are China time
    assert found(start_date="2026-08-01T00:00:00Z", end_date="2026-10-01T00:00:00Z") == [ids["old"]]
    assert found(start_date="2026-07-20") == [ids["old"]]  # start + 90 days
    assert found(end_date="2026-11-24T19:59:00+08:00") == [ids["month"]]  # end - 90 days
    # "service_request_id ... This overrides all other arguments"
    assert found(service_request_id=f"{ids['old']}, {ids['new']}", status="closed",
                 start_date="not even a date") == [ids["new"], ids["old"]]
    for params, name in (({"start_date": "2026-01-01T00:00:00Z", "end_date": "2026-06-01T00:00:00Z"},
                          "start_date/end_date"),
                         ({"start_date": "2026-06-01", "end_date": "2026-05-01"}, "end_date"),
                         ({"start_date": "yesterday"}, "start_date"),
                         ({"status": "pending"}, "status")):
        with pytest.raises(Open311Error) as err:
            found(**params)
        assert err.value.status == 400 and err.value.errors[0]["description"].startswith(name)


def test_only_open311_requests_are_published(intake_db, appeal_payload):
    _, uow = intake_db
    web = handlers.submit_appeal(uow(), appeal_payload, citizen_key="k")["case_no"]
    with pytest.raises(Open311Error) as err:
        open311.get_request(uow(), web)
    assert err.value.status == 404
    assert open311.find_requests(uow(), {"service_request_id": web}) == []


def test_tokens_name_their_request(intake_db):
    _, uow = intake_db
    [created] = post(uow, address_id=YINPING)
    assert open311.token_lookup(uow(), created["token"]) == [
        {"service_request_id": created["service_request_id"], "token": created["token"]}]
    with pytest.raises(Open311Error) as err:
        open311.token_lookup(uow(), "no-such-token")
    assert err.value.status == 404


# --- services, notices, keys, XML -------------------------------------------------------------

def test_services_are_the_taxonomy_items_with_groups_and_keywords():
    road = open311.services(CATALOGUE)[0]
    assert road == {"service_code": "road-damage", "service_name": "道路破损",
                    "description": "城乡建设 · 道路破损：由所在镇街办理", "metadata": True, "type": "realtime",
                    "keywords": "路面,坑洼", "group": "城乡建设"}
    assert open311.services(CATALOGUE)[1]["description"].endswith("由区人力资源和社会保障局办理")


def test_service_notice_states_the_time_limits():
    assert open311.service_notice(WAGES) == ("由区人力资源和社会保障局办理，一般2小时内签收、36小时内办结；"
                                             "紧急情况1小时内签收、1天内办结。承办单位以实际派单为准。")
    # with triage's time-limit policies in force, theirs (as the orders get them)
    complex_ = {"code": "complex", "name": "复杂类", "version": "v", "report_in": "4 working_hours",
                "first_contact": "2 working_days", "resolve": "15 working_days", "extension_max": None}
    urgent = {**complex_, "code": "urgent", "name": "紧急类", "report_in": "15 minutes", "resolve": "2 hours"}
    assert open311.service_notice({**WAGES, "time_policy": {"normal": complex_, "urgent": urgent}}) == (
        "由区人力资源和社会保障局办理，复杂类时限：4个工作小时内签收、15个工作日内办结；"
        "紧急情况15分钟内签收、2小时内办结。承办单位以实际派单为准。")


def test_api_keys_come_from_configuration_and_are_checked():
    keys = parse_api_keys("fixmystreet:abc123, wechat-app:def:456 ,bare")
    assert keys == {"abc123": "fixmystreet", "def:456": "wechat-app", "bare": "client-3"}
    assert client_for(keys, "def:456") == "wechat-app"
    for wrong in (None, "", "abc", "abc1234"):
        with pytest.raises(Open311Error) as err:
            client_for(keys, wrong)
        assert err.value.status == 403
    with pytest.raises(Open311Error):
        client_for(parse_api_keys(None), "anything")  # no keys configured: nobody may post


def test_xml_uses_the_specifications_element_names():
    doc = xml_document("service_definition", {"service_code": "x", "attributes": [
        {"code": "town", "required": False, "values": [{"key": "1", "name": "甲"}]}]})
    root = ElementTree.fromstring(doc.encode())
    assert root.tag == "service_definition"
    assert root.find("attributes/attribute/values/value/name").text == "甲"
    assert root.find("attributes/attribute/required").text == "false"
    errors = ElementTree.fromstring(xml_document("errors", [{"code": 403, "description": "<&>"}], "error"))
    assert errors.find("error/code").text == "403" and errors.find("error/description").text == "<&>"
    empty = ElementTree.fromstring(xml_document("service_requests", [{"status_notes": None}], "request"))
    assert empty.find("request/status_notes").text is None

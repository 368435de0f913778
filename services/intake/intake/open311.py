"""Open311 GeoReport v2 (http://wiki.open311.org/GeoReport_v2) on intake: the district's service
catalogue (事项目录) as Open311 services, and appeals as service requests.

Plain functions and marshmallow schemas: no nameko, no HTTP (``intake.open311_http`` reads the
parameters and renders JSON or XML). A request created here is the same appeal as any other: it goes
through ``handlers.submit_appeal`` (same validation, outbox and ``appeal_received``), with its Open311
record (service code, token) in the same transaction.

Mapping, in short (docs/integrators.md has the whole of it):
- service_code = a taxonomy item (e.g. ``road-damage``); group = its category; the platform's router
  still decides the unit, as for every appeal, and ``agency_responsible`` names the unit it chose;
- service_request_id = the case number (YC…); status open/closed from the appeal's status, with the
  citizen's status text as ``status_notes``; ``expected_datetime`` = the open order's resolve deadline;
- location: attribute[village]/attribute[town] (code or name), else ``address_id`` (a division code),
  else a town or village named in ``address_string``, else the town whose centroid is nearest to
  lat/long (an approximation: see data/town_centroids.csv);
- personal data never comes back out: descriptions are redacted, the address is the village/town,
  lat/long are blurred to two decimals (about 1 km); only Open311 submissions are published.
"""
import csv
import json
import math
import re
import uuid
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

from marshmallow import EXCLUDE, Schema, ValidationError as SchemaError, fields, post_dump, validate
from sqlalchemy import select

from intake import domain, handlers
from intake.models import Appeal, CitizenContact, Division, Open311Request
from intake.schemas import ChinaTime
from wuji_common.errors import ValidationError
from wuji_common.events import CHINA_TIME

SPECIFICATION = "http://wiki.open311.org/GeoReport_v2"
FORMATS = ("text/xml", "application/json")
# when this endpoint's description last changed (discovery's changeset: sortable)
CHANGESET = "2026-11-26T00:00:00+08:00"
MAX_WINDOW = timedelta(days=90)  # the spec's default and maximum span of GET requests
MAX_REQUESTS = 1000              # ... "or first 1000 requests returned, whichever is smallest"
MAX_IDS = 1000
MAX_DISTANCE_KM = 15.0           # farther from every town centroid: not in the district
CLOSED_STATUSES = ("resolved", "rated", "closed")
OPEN_STATUSES = ("received", "dispatched", "accepted", "returned", "reopened")
CHANNEL = "web"  # Open311 clients are web/app front ends; the client is recorded with the request


class Open311Error(Exception):
    """An Open311 error answer: an HTTP status and one or more descriptions (the spec's error list)."""

    def __init__(self, status, *descriptions):
        super().__init__(status, *descriptions)
        self.status = status
        self.errors = [{"code": status, "description": d} for d in descriptions]


# --- wire schemas (output) -------------------------------------------------------------------

class ErrorSchema(Schema):
    code = fields.Integer(required=True, metadata={"description": "the HTTP status"})
    description = fields.String(required=True)


class ServiceSchema(Schema):
    """A service (type) of ``GET services``: an item of the district's taxonomy."""
    service_code = fields.String(required=True)
    service_name = fields.String(required=True)
    description = fields.String(allow_none=True)
    has_metadata = fields.Boolean(required=True, data_key="metadata",
                                  metadata={"description": "true: GET services/{code} has attributes"})
    type = fields.String(required=True, validate=validate.OneOf(("realtime", "batch", "blackbox")))
    keywords = fields.String(allow_none=True, metadata={"description": "comma separated"})
    group = fields.String(allow_none=True, metadata={"description": "the item's category (大类)"})


class AttributeValueSchema(Schema):
    key = fields.String(required=True)
    name = fields.String(required=True)


class AttributeSchema(Schema):
    variable = fields.Boolean(required=True)
    code = fields.String(required=True)
    datatype = fields.String(required=True, validate=validate.OneOf(
        ("string", "number", "datetime", "text", "singlevaluelist", "multivaluelist")))
    required = fields.Boolean(required=True)
    datatype_description = fields.String(allow_none=True)
    order = fields.Integer(allow_none=True)
    description = fields.String(allow_none=True)
    values = fields.List(fields.Nested(AttributeValueSchema), allow_none=True,
                         metadata={"description": "the choices of a singlevaluelist or multivaluelist"})

    @post_dump
    def _values_of_lists_only(self, data, **_):
        if data.get("values") is None:
            data.pop("values", None)
        return data


class ServiceDefinitionSchema(Schema):
    service_code = fields.String(required=True)
    attributes = fields.List(fields.Nested(AttributeSchema), required=True)


class ServiceRequestSchema(Schema):
    """A service request (an appeal) as ``GET requests`` shows it: no personal data."""
    service_request_id = fields.String(required=True, metadata={"description": "the case number"})
    status = fields.String(required=True, validate=validate.OneOf(("open", "closed")))
    status_notes = fields.String(allow_none=True)
    service_name = fields.String(allow_none=True)
    service_code = fields.String(required=True)
    description = fields.String(allow_none=True, validate=validate.Length(max=4000))
    agency_responsible = fields.String(allow_none=True)
    service_notice = fields.String(allow_none=True)
    requested_datetime = ChinaTime(required=True)
    updated_datetime = ChinaTime(allow_none=True)
    expected_datetime = ChinaTime(allow_none=True)
    address = fields.String(allow_none=True)
    address_id = fields.String(allow_none=True)
    zipcode = fields.String(allow_none=True)
    lat = fields.Float(allow_none=True)
    long = fields.Float(allow_none=True)
    media_url = fields.String(allow_none=True)


class RequestCreatedSchema(Schema):
    """``POST requests``: the id at once (this jurisdiction is synchronous), and a token too."""
    service_request_id = fields.String(allow_none=True)
    token = fields.String(allow_none=True)
    service_notice = fields.String(allow_none=True)
    account_id = fields.String(allow_none=True, metadata={"description": "no accounts here: left out"})

    @post_dump
    def _leave_out_nulls(self, data, **_):
        # swagger.json's RequestResponse types every field as a string: absent, not null
        return {key: value for key, value in data.items() if value is not None}


class TokenSchema(Schema):
    service_request_id = fields.String(allow_none=True)
    token = fields.String(required=True)


class EndpointSchema(Schema):
    specification = fields.String(required=True)
    url = fields.String(required=True)
    changeset = fields.String(required=True)
    type = fields.String(required=True, validate=validate.OneOf(("production", "test")))
    formats = fields.List(fields.String(), required=True)


class DiscoverySchema(Schema):
    changeset = fields.String(required=True)
    contact = fields.String(required=True)
    key_service = fields.String(required=True)
    endpoints = fields.List(fields.Nested(EndpointSchema), required=True)


# --- wire schemas (input) --------------------------------------------------------------------

class Lenient(Schema):
    class Meta:
        unknown = EXCLUDE  # Open311 clients send parameters of their own; they are ignored


class JurisdictionQuerySchema(Lenient):
    jurisdiction_id = fields.String(validate=validate.Length(1, 100))


class RequestsQuerySchema(JurisdictionQuerySchema):
    """``GET requests`` filters; lists are comma delimited."""
    service_request_id = fields.String(validate=validate.Length(1, 40 * MAX_IDS), metadata={
        "description": "comma delimited case numbers; overrides every other filter"})
    service_code = fields.String(validate=validate.Length(1, 2000),
                                 metadata={"description": "comma delimited"})
    start_date = fields.String(validate=validate.Length(1, 40),
                               metadata={"description": "W3C date-time (no offset: China time)"})
    end_date = fields.String(validate=validate.Length(1, 40),
                             metadata={"description": "W3C date-time (no offset: China time)"})
    status = fields.String(validate=validate.Length(1, 20),
                           metadata={"description": "open, closed, or both comma delimited"})


class CreateRequestSchema(JurisdictionQuerySchema):
    """``POST requests`` (application/x-www-form-urlencoded). Attributes come as
    ``attribute[<code>]=<value>`` (see GET services/{service_code})."""
    api_key = fields.String(required=True, validate=validate.Length(1, 200))
    service_code = fields.String(required=True, validate=validate.Length(1, 64))
    lat = fields.Float(validate=validate.Range(-90, 90), allow_nan=False)
    long = fields.Float(validate=validate.Range(-180, 180), allow_nan=False)
    address_string = fields.String(validate=validate.Length(1, 200))
    address_id = fields.String(validate=validate.Length(1, 12))
    email = fields.Email(validate=validate.Length(max=254))
    device_id = fields.String(validate=validate.Length(max=100))
    account_id = fields.String(validate=validate.Length(max=100))
    first_name = fields.String(validate=validate.Length(1, 32))
    last_name = fields.String(validate=validate.Length(1, 32))
    phone = fields.String(validate=validate.Length(1, 20))
    description = fields.String(required=True, validate=validate.Length(1, 4000))
    media_url = fields.Url(validate=validate.Length(max=500))


def _load(schema, params):
    try:
        return schema.load(params)
    except SchemaError as err:
        raise Open311Error(400, *_describe(err.normalized_messages())) from None


def _describe(messages, prefix=""):
    out = []
    for name, value in sorted(messages.items(), key=lambda pair: str(pair[0])):
        path = f"{prefix}{name}"
        if isinstance(value, dict):
            out += _describe(value, f"{path}.")
        else:
            out.append(f"{path}: {'; '.join(str(m) for m in value)}")
    return out


# --- the catalogue as services ---------------------------------------------------------------

def _duration(hours):
    if hours < 1:
        return f"{round(hours * 60)}分钟"
    if hours >= 24 and hours % 24 == 0:
        return f"{int(hours // 24)}天"
    return f"{hours:g}小时"


def _handled_by(item):
    if item["level"] == "grid":
        return "由所在村居网格员办理"
    if item["level"] == "town":
        return "由所在镇街办理"
    return f"由{item['department_name'] or item['department']}办理"


LIMIT_UNITS = {"minutes": "分钟", "hours": "小时", "days": "天", "working_hours": "个工作小时",
               "working_days": "个工作日"}


def _limit(text):
    """triage's "<amount> <unit>" (e.g. "7 working_days") in words: 7个工作日."""
    amount, _, unit = text.partition(" ")
    return f"{float(amount):g}{LIMIT_UNITS.get(unit, unit)}"


def service_notice(item):
    """What the requester can expect: who handles the item and its time limits (限时办结), from the
    time-limit policy an order of the item gets, else from the taxonomy's own limits."""
    policy = item.get("time_policy")
    if policy:
        normal, urgent = policy["normal"], policy["urgent"]
        return (f"{_handled_by(item)}，{normal['name']}时限：{_limit(normal['report_in'])}内签收、"
                f"{_limit(normal['resolve'])}内办结；紧急情况{_limit(urgent['report_in'])}内签收、"
                f"{_limit(urgent['resolve'])}内办结。承办单位以实际派单为准。")
    normal, urgent = item["time_limit"]["normal"], item["time_limit"]["urgent"]
    return (f"{_handled_by(item)}，一般{_duration(normal['accept_hours'])}内签收、"
            f"{_duration(normal['resolve_hours'])}内办结；紧急情况{_duration(urgent['accept_hours'])}内签收、"
            f"{_duration(urgent['resolve_hours'])}内办结。承办单位以实际派单为准。")


def _item(catalogue, code):
    return next((i for i in catalogue["items"] if i["code"] == code), None)


def services(catalogue):
    """``GET services``: every item of the taxonomy, grouped by category."""
    return ServiceSchema(many=True).dump([{
        "service_code": i["code"], "service_name": i["name"],
        "description": f"{i['category_name']} · {i['name']}：{_handled_by(i)}",
        "has_metadata": True, "type": "realtime",
        "keywords": ",".join(i["keywords"]) or None, "group": i["category_name"],
    } for i in catalogue["items"]])


def service_definition(uow, catalogue, service_code):
    """``GET services/{service_code}``: where (town, village), a title, and the privacy notice."""
    if _item(catalogue, service_code) is None:
        raise Open311Error(404, f"service_code {service_code} not found")
    towns, villages = _divisions(uow)
    attributes = [
        {"variable": True, "code": "town", "datatype": "singlevaluelist", "required": False, "order": 1,
         "datatype_description": "镇街代码", "description": "所在镇街（未给出村居、address_id、地址或经纬度时必填）",
         "values": [{"key": code, "name": d.name} for code, d in towns.items()]},
        {"variable": True, "code": "village", "datatype": "singlevaluelist", "required": False, "order": 2,
         "datatype_description": "村居代码", "description": "所在村居（可选，派单到村居网格员）",
         "values": [{"key": code, "name": f"{d.name}（{towns[d.parent_code].name}）"}
                    for code, d in villages.items() if d.parent_code in towns]},
        {"variable": True, "code": "title", "datatype": "string", "required": False, "order": 3,
         "datatype_description": "不超过100字", "description": "诉求标题（不填则由事项名称和描述开头生成）", "values": None},
        {"variable": False, "code": "privacy_notice", "datatype": "text", "required": False, "order": 4,
         "datatype_description": None,
         "description": "您的姓名、电话和详细地址仅用于办理和回访，不会公开；公开查询只显示所在镇街、村居。"
                        "留电话须同时留姓名（实名）；不留电话即为匿名诉求。", "values": None},
    ]
    return ServiceDefinitionSchema().dump({"service_code": service_code, "attributes": attributes})


ATTRIBUTE_CODES = ("town", "village", "title")


# --- location ---------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def town_centroids():
    """{town code: (lat, lon)}: approximate centres of the towns (WGS84), shipped with intake."""
    with open(Path(__file__).parent / "data" / "town_centroids.csv", encoding="utf-8", newline="") as f:
        return {row["code"]: (float(row["lat"]), float(row["lon"])) for row in csv.DictReader(f)}


def _km(a, b):
    (lat1, lon1), (lat2, lon2) = [(math.radians(x), math.radians(y)) for x, y in (a, b)]
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def nearest_town(lat, lon):
    """(town code, km) of the nearest town centroid."""
    return min(((code, _km((lat, lon), point)) for code, point in town_centroids().items()),
               key=lambda pair: pair[1])


def _divisions(uow):
    with uow:  # plain copies: the rows expire when the unit of work ends
        rows = [SimpleNamespace(code=d.code, name=d.name, level=d.level, parent_code=d.parent_code)
                for d in uow.session.execute(select(Division)).scalars()]
    towns = {d.code: d for d in rows if d.level == "town"}
    villages = {d.code: d for d in rows if d.level == "village"}
    return towns, villages


def _short(name):
    """阴平镇 → 阴平, 坛山街道 → 坛山: people often leave the suffix off."""
    for suffix in ("街道", "镇", "乡"):
        if name.endswith(suffix) and len(name) - len(suffix) >= 2:
            return name[: -len(suffix)]
    return name


def _by_code_or_name(divisions, value):
    value = value.strip()
    if value in divisions:
        return divisions[value]
    return next((d for d in divisions.values() if value in (d.name, _short(d.name))), None)


def locate(towns, villages, attributes, params):
    """(town code, village code or None, how) for a request, or Open311Error(400) saying why not."""
    if attributes.get("village") or attributes.get("town"):
        village = town = None
        if attributes.get("village"):
            village = _by_code_or_name(villages, attributes["village"])
            if village is None:
                raise Open311Error(400, "attribute[village]: 不是峄城区的村居")
        if attributes.get("town"):
            town = _by_code_or_name(towns, attributes["town"])
            if town is None:
                raise Open311Error(400, "attribute[town]: 不是峄城区的镇街")
        town_code = town.code if town else village.parent_code
        return town_code, village.code if village else None, "attribute"
    if params.get("address_id"):
        code = params["address_id"]
        if code in towns:
            return code, None, "address_id"
        if code in villages:
            return villages[code].parent_code, code, "address_id"
        raise Open311Error(400, "address_id: 不是峄城区的镇街或村居代码")
    if params.get("address_string"):
        found = _named_in(towns, villages, params["address_string"])
        if found:
            return (*found, "address_string")
    has_lat, has_long = "lat" in params, "long" in params
    if has_lat != has_long:
        raise Open311Error(400, "lat/long: 须同时给出纬度和经度")
    if has_lat:
        code, km = nearest_town(params["lat"], params["long"])
        if km > MAX_DISTANCE_KM:
            raise Open311Error(400, "lat/long: 位置不在峄城区")
        return code, None, "lat_long"
    if params.get("address_string"):
        raise Open311Error(400, "address_string: 未能识别所在镇街或村居，请写明（如“阴平镇金寺村”），或给出经纬度")
    raise Open311Error(400, "location: 须给出 lat/long、address_string 或 address_id 之一")


def _named_in(towns, villages, text):
    town = next((d for d in towns.values() if d.name in text), None) or \
        next((d for d in towns.values() if _short(d.name) in text), None)
    named = [v for v in villages.values() if v.name in text and (town is None or v.parent_code == town.code)]
    if len(named) == 1:
        return named[0].parent_code, named[0].code
    return (town.code, None) if town else None


# --- requests -----------------------------------------------------------------------------------

def _citizen(params):
    """Real name when a phone is given (the platform then needs a name too); anonymous otherwise."""
    if not params.get("phone"):
        return None
    first, last = params.get("first_name", ""), params.get("last_name", "")
    if not (first or last):
        raise Open311Error(400, "first_name/last_name: 留电话的实名诉求须填写姓名；不留电话即为匿名诉求")
    cjk = re.compile(r"^[\u4e00-\u9fff·]+$")
    name = f"{last}{first}" if cjk.match(first + last) else " ".join(p for p in (first, last) if p)
    return {"name": name, "phone": params["phone"], "email": params.get("email")}


# platform field → the Open311 parameter the requester sent
PARAMETER_OF = {
    "title": "attribute[title]", "content": "description", "citizen.name": "first_name/last_name",
    "citizen.phone": "phone", "citizen.email": "email", "citizen": "phone",
    "location.town_code": "attribute[town]", "location.village": "attribute[village]",
    "location.address": "address_string", "location.lat": "lat", "location.lon": "long",
    "attachments": "media_url",
}


def _as_open311(fields_):
    out = []
    for line in _describe(fields_):
        path, _, message = line.partition(": ")
        name = next((p for f, p in PARAMETER_OF.items() if path == f or path.startswith(f + ".")), path)
        out.append(f"{name}: {message}")
    return out


def create_request(uow, catalogue, params, attributes, client, citizen_key="", idempotency_key=None,
                   now=None):
    """``POST requests`` → the appeal registered (一次登记) as any other, with its Open311 record.
    ``params``: the form's single values; ``attributes``: ``{code: value}`` from attribute[code]."""
    data = _load(CreateRequestSchema(), params)
    item = _item(catalogue, data["service_code"])
    if item is None:
        raise Open311Error(400, f"service_code: {data['service_code']} not found")
    unknown = sorted(set(attributes) - set(ATTRIBUTE_CODES))
    if unknown:
        raise Open311Error(400, *[f"attribute[{code}]: unknown attribute" for code in unknown])
    towns, villages = _divisions(uow)
    town_code, village_code, located_by = locate(towns, villages, attributes, data)
    description = data["description"].strip()
    title = (attributes.get("title") or "").strip() or \
        f"{item['name']}：{description.splitlines()[0] if description else ''}"[:100]
    citizen = _citizen(data)
    payload = {
        "channel": CHANNEL, "title": title, "content": description, "citizen": citizen,
        "anonymous": citizen is None,
        "location": {"town_code": town_code, "village": village_code,
                     "address": data.get("address_string"), "lat": data.get("lat"), "lon": data.get("long")},
        "attachments": [data["media_url"]] if data.get("media_url") else [],
    }
    token, notice = str(uuid.uuid4()), service_notice(item)

    def record(session, appeal):
        session.add(Open311Request(
            case_no=appeal.case_no, token=token, service_code=item["code"], service_name=item["name"],
            service_notice=notice, client=client[:64], address_id=village_code or town_code,
            located_by=located_by))

    # a key is the client's own: the same key from another client (or the citizen API) is another call
    key = f"open311:{client}:{idempotency_key}" if idempotency_key else None
    try:
        result = handlers.submit_appeal(uow, payload, key, citizen_key, now, on_registered=record)
    except ValidationError as exc:
        raise Open311Error(400, *_as_open311(exc.fields)) from None
    with uow:
        stored = uow.session.get(Open311Request, result["case_no"])  # a replay answers the first token
        return RequestCreatedSchema(many=True).dump([{
            "service_request_id": result["case_no"], "token": stored.token,
            "service_notice": stored.service_notice, "account_id": None}])


def parse_datetime(value, name):
    """A W3C date-time (2010-01-01T00:00:00Z, or with an offset), or a date; without an offset it is
    China time. Returns UTC."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise Open311Error(400, f"{name}: 不是 W3C 日期时间（如 2026-11-25T08:00:00+08:00）") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=CHINA_TIME)
    return parsed.astimezone(timezone.utc)


def request_window(start_date, end_date, now):
    """The requested_datetime window of GET requests: at most 90 days; without dates the last 90."""
    start = parse_datetime(start_date, "start_date") if start_date else None
    end = parse_datetime(end_date, "end_date") if end_date else None
    if start and end is None:
        end = min(start + MAX_WINDOW, now)
    if end is None:
        end = now
    if start is None:
        start = end - MAX_WINDOW
    if end < start:
        raise Open311Error(400, "end_date: 早于 start_date")
    if end - start > MAX_WINDOW:
        raise Open311Error(400, "start_date/end_date: 查询跨度不得超过 90 天")
    return start, end


def _split(value):
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def find_requests(uow, params, now=None):
    """``GET requests``: the Open311 requests matching every filter, newest first, at most 1000."""
    data = _load(RequestsQuerySchema(), params)
    query = _requests_query()
    ids = _split(data.get("service_request_id"))
    if ids:  # "overrides all other arguments"
        if len(ids) > MAX_IDS:
            raise Open311Error(400, f"service_request_id: 最多 {MAX_IDS} 个")
        query = query.where(Appeal.case_no.in_(ids))
    else:
        statuses = _split(data.get("status"))
        wrong = [s for s in statuses if s not in ("open", "closed")]
        if wrong:
            raise Open311Error(400, f"status: {','.join(wrong)} 不是 open 或 closed")
        start, end = request_window(data.get("start_date"), data.get("end_date"),
                                    now or datetime.now(timezone.utc))
        query = query.where(Appeal.received_at >= start, Appeal.received_at <= end)
        codes = _split(data.get("service_code"))
        if codes:
            query = query.where(Open311Request.service_code.in_(codes))
        if statuses and set(statuses) != {"open", "closed"}:
            query = query.where(Appeal.status.in_(OPEN_STATUSES if statuses == ["open"] else CLOSED_STATUSES))
    query = query.order_by(Appeal.received_at.desc(), Appeal.id.desc()).limit(MAX_REQUESTS)
    return _requests(uow, query)


def get_request(uow, service_request_id):
    """``GET requests/{id}``: a list of one, as the spec has it."""
    found = _requests(uow, _requests_query().where(Appeal.case_no == service_request_id))
    if not found:
        raise Open311Error(404, f"service_request_id {service_request_id} not found")
    return found


def token_lookup(uow, token):
    """``GET tokens/{token}``: the id the token stands for (known at once here)."""
    with uow:
        row = uow.session.execute(select(Open311Request).where(Open311Request.token == token)).scalar_one_or_none()
        if row is None:
            raise Open311Error(404, f"token {token} not found")
        return TokenSchema(many=True).dump([{"service_request_id": row.case_no, "token": row.token}])


def _requests_query():
    return (select(Appeal, Open311Request, CitizenContact.name)
            .join(Open311Request, Open311Request.case_no == Appeal.case_no)
            .outerjoin(CitizenContact, CitizenContact.case_no == Appeal.case_no))


def _blur(value):
    return None if value is None else round(value, 2)


def _requests(uow, query):
    with uow:
        divisions = uow.session.execute(select(Division.code, Division.name, Division.level)).all()
        names = {code: name for code, name, _ in divisions}
        district = "".join(name for _, name, level in divisions if level == "district")
        return ServiceRequestSchema(many=True).dump([
            _request_view(appeal, o311, name, names, district)
            for appeal, o311, name in uow.session.execute(query).all()])


def _request_view(appeal, o311, name, names, district):
    citizen = {"name": name} if name else None
    attachments = json.loads(appeal.attachments or "[]")
    return {
        "service_request_id": appeal.case_no,
        "status": "closed" if appeal.status in CLOSED_STATUSES else "open",
        "status_notes": domain.STATUS_TEXT[appeal.status],
        "service_name": o311.service_name, "service_code": o311.service_code,
        "description": domain.redact_text(appeal.content, citizen)[:4000],
        "agency_responsible": appeal.unit_name, "service_notice": o311.service_notice,
        "requested_datetime": appeal.received_at, "updated_datetime": appeal.updated_at,
        "expected_datetime": appeal.resolve_due_at,
        # the village or town only: the precise address is the citizen's personal data
        "address": district + "".join(names.get(c, "") for c in (appeal.town_code, appeal.village_code) if c),
        "address_id": appeal.village_code or appeal.town_code, "zipcode": None,
        "lat": _blur(appeal.lat), "long": _blur(appeal.lon),
        "media_url": attachments[0] if attachments else None,
    }


def discovery(endpoint_url, contact, key_service):
    """``discovery``: where this endpoint is and what it speaks."""
    return DiscoverySchema().dump({
        "changeset": CHANGESET, "contact": contact, "key_service": key_service,
        "endpoints": [{"specification": SPECIFICATION, "url": endpoint_url, "changeset": CHANGESET,
                       "type": "production", "formats": list(FORMATS)}]})


"""Abuse and hostile input at intake's public door, and in every export: floods answered 429 with a
Retry-After, over-long fields and attachment lists refused naming the field, spreadsheet formulas
kept as text, SQL never built from strings. Each test is named after what it tries."""
import re
import uuid
from pathlib import Path

import pytest
import requests
from sqlalchemy import text

from intake import handlers
from intake.models import metadata
from intake.ratelimit import PublicRateLimits, RateLimited
from wuji_common import reference
from wuji_common.db import UnitOfWork, make_engine, session_factory
from wuji_common.errors import ValidationError
from wuji_common.migrations import upgrade
from wuji_common.privacy import spreadsheet_safe
from wuji_common.testing_helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
OPEN311_KEY = "abuse-test-" + uuid.uuid4().hex[:8]
PER_IP, PER_PHONE = 6, 2


def appeal(phone="13800001111", **changes):
    body = {"channel": "web", "title": "路面破损", "content": "村口道路坑洼，雨天积水，请尽快修复。",
            "citizen": {"name": "孙八", "phone": phone}, "location": {"town_code": "370404101"}}
    body.update(changes)
    return body


# --- rate limits ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def intake_api(amqp_vhost, tmp_path_factory):
    """intake alone as a nameko container with low public limits (6 a minute per address, 2 per
    phone), on SQLite and a vhost of the module's own."""
    from nameko.containers import ServiceContainer

    from intake.service import IntakeService
    from wuji_common.testing import own_vhost
    from wuji_common.topology import declare

    url = f"sqlite:///{tmp_path_factory.mktemp('abuse') / 'intake.db'}"
    upgrade(ROOT / "services/intake/intake/migrations", url)
    engine = make_engine(url)
    handlers.load_divisions(UnitOfWork(session_factory(engine), metadata, "intake"), list(reference.divisions()))
    port = free_port()
    with own_vhost(f"{amqp_vhost}-abuse") as amqp_uri:
        declare(amqp_uri, [IntakeService], retry_delays=[0.2, 0.5])
        container = ServiceContainer(IntakeService, {
            "AMQP_URI": amqp_uri, "DB_URL": url, "METRICS_PORT": 0, "CITIZEN_KEY": "k",
            "WEB_SERVER_ADDRESS": f"127.0.0.1:{port}", "OPEN311_API_KEYS": f"abuse:{OPEN311_KEY}",
            "RATE_LIMIT_PER_IP": PER_IP, "RATE_LIMIT_PER_PHONE": PER_PHONE, "EVENT_RETRY_DELAYS": [0.2]})
        container.start()
        yield f"http://127.0.0.1:{port}"
        container.stop()
    engine.dispose()


def test_a_flood_of_appeals_from_one_address_is_answered_429_with_retry_after(intake_api):
    answers = [requests.post(f"{intake_api}/api/v1/appeals", json=appeal(phone=f"1380000{n:04d}"), timeout=10)
               for n in range(PER_IP + 2)]
    assert [a.status_code for a in answers[:PER_IP]] == [201] * PER_IP
    refused = answers[PER_IP]
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    body = refused.json()
    assert body["error"] == "rate_limited" and "请求过于频繁" in body["message"]
    # the rating and Open311 doors have limits of their own but the same address: refused too
    assert requests.post(f"{intake_api}/api/v1/appeals/YC0/rating?token=x", json={"satisfaction": "satisfied"},
                         timeout=10).status_code in (404, 429)


def test_many_appeals_for_one_phone_are_limited_whatever_the_address():
    limits = PublicRateLimits(per_ip_per_minute=100, per_phone_per_minute=PER_PHONE)
    for n in range(PER_PHONE):
        limits.check("appeals", f"10.0.0.{n}", "phone-hash-1")
    with pytest.raises(RateLimited) as refused:
        limits.check("appeals", "10.0.0.99", "phone-hash-1")  # a new address, the same phone
    assert refused.value.retry_after >= 1
    limits.check("appeals", "10.0.0.99", "phone-hash-2")      # another citizen is not held up


def test_the_limit_lets_requests_through_again_after_the_window():
    limits = PublicRateLimits(per_ip_per_minute=1, per_phone_per_minute=0)
    limits.limiter.storage.reset()
    limits.check("rating", "10.0.0.1")
    with pytest.raises(RateLimited):
        limits.check("rating", "10.0.0.1")
    limits.limiter.storage.reset()  # as the minute passes
    limits.check("rating", "10.0.0.1")


def test_open311_posts_are_rate_limited_per_address(intake_api):
    statuses = []
    for n in range(PER_IP + 1):
        form = {"api_key": OPEN311_KEY, "service_code": "road-damage", "lat": "34.8301", "long": "117.4702",
                "description": "路面坑洼", "first_name": "八", "last_name": "孙", "phone": f"1390000{n:04d}"}
        statuses.append(requests.post(f"{intake_api}/open311/v2/requests.json", data=form, timeout=10).status_code)
    assert statuses[-1] == 429


def test_a_body_over_64_kib_is_refused_before_it_is_parsed(intake_api):
    # (the address may be rate-limited by now: either answer refuses the body)
    answer = requests.post(f"{intake_api}/api/v1/appeals", data=b"{" + b" " * (70 * 1024) + b"}",
                           headers={"Content-Type": "application/json"}, timeout=10)
    assert answer.status_code in (400, 429)
    if answer.status_code == 400:
        assert "_body" in answer.json()["fields"]


# --- size limits on every field -------------------------------------------------------------------

@pytest.fixture
def intake_uow(tmp_path):
    url = f"sqlite:///{tmp_path / 'intake.db'}"
    upgrade(ROOT / "services/intake/intake/migrations", url)
    engine = make_engine(url)
    factory = session_factory(engine)
    handlers.load_divisions(UnitOfWork(factory, metadata, "intake"), list(reference.divisions()))
    yield lambda: UnitOfWork(factory, metadata, "intake")
    engine.dispose()


OVERSIZED = {
    "title": lambda a: a.update(title="长" * 101),
    "content": lambda a: a.update(content="长" * 5001),
    "citizen.name": lambda a: a["citizen"].update(name="名" * 65),
    "citizen.phone": lambda a: a["citizen"].update(phone="1" * 30),
    "citizen.email": lambda a: a["citizen"].update(email="a" * 250 + "@x.cn"),
    "citizen.wechat_openid": lambda a: a["citizen"].update(wechat_openid="o" * 65),
    "location.address": lambda a: a["location"].update(address="址" * 201),
    "location.village": lambda a: a["location"].update(village="3" * 13),
    "attachments": lambda a: a.update(attachments=[f"https://img.example/{n}.jpg" for n in range(11)]),
    "attachments.0": lambda a: a.update(attachments=["https://img.example/" + "x" * 500]),
}


@pytest.mark.parametrize("field", sorted(OVERSIZED))
def test_an_over_long_field_or_attachment_list_is_refused_naming_the_field(intake_uow, field):
    body = appeal()
    OVERSIZED[field](body)
    with pytest.raises(ValidationError) as err:
        handlers.submit_appeal(intake_uow(), body, citizen_key="k")
    where = err.value.fields
    for part in field.split("."):
        key = int(part) if part.isdigit() else part
        assert key in where, (field, err.value.fields)
        where = where[key]
    with intake_uow() as u:  # nothing half-written
        assert u.session.execute(text("SELECT count(*) FROM appeals")).scalar_one() == 0


@pytest.mark.parametrize("url", ["javascript:alert(1)", "data:text/html,<script>alert(1)</script>",
                                 "file:///etc/passwd"])
def test_an_attachment_that_is_not_a_web_address_is_refused(intake_uow, url):
    with pytest.raises(ValidationError) as err:
        handlers.submit_appeal(intake_uow(), appeal(attachments=[url]), citizen_key="k")
    assert "attachments" in err.value.fields


def test_an_over_long_rating_comment_is_refused(intake_uow):
    receipt = handlers.submit_appeal(intake_uow(), appeal(), citizen_key="k")
    with pytest.raises(ValidationError) as err:
        handlers.rate_appeal(intake_uow(), receipt["case_no"], receipt["tracking_token"],
                             {"satisfaction": "satisfied", "comment": "评" * 501})
    assert "comment" in err.value.fields


# --- exports: a formula stays text ----------------------------------------------------------------

@pytest.mark.parametrize("cell", ["=HYPERLINK(\"http://evil.example\",\"点我\")", "+1+1", "-2+3", "@SUM(A1)",
                                  "\t=1", "\r=1"])
def test_a_formula_written_by_a_citizen_stays_text_in_an_export(cell):
    assert spreadsheet_safe(cell) == "'" + cell
    assert spreadsheet_safe("路面破损") == "路面破损" and spreadsheet_safe(3) == 3


def test_triage_export_of_decisions_writes_a_hostile_title_as_text(tmp_path):
    import csv

    from triage import handlers as triage_handlers

    class Taxonomy:
        categories = {}

        @staticmethod
        def label_of(category):
            return category

    rows = [{"id": "YC1", "subject": "=HYPERLINK(\"http://evil.example\")", "body": "+cmd|' /C calc'!A0",
             "label": "城市管理"}]
    original = triage_handlers.decisions_for_training
    triage_handlers.decisions_for_training = lambda uow, taxonomy: rows
    try:
        out = tmp_path / "decisions.csv"
        assert triage_handlers.export_decisions(None, Taxonomy(), out) == 1
    finally:
        triage_handlers.decisions_for_training = original
    [written] = list(csv.DictReader(out.open(encoding="utf-8")))
    assert written["subject"].startswith("'=") and written["body"].startswith("'+")


EXPORT_GUARDS = ("spreadsheet_safe", "safe_cell")


def test_every_csv_or_xlsx_writer_in_the_services_guards_against_formulas():
    """A new export (csv.writer, DictWriter, openpyxl) must pass its cells through the guard."""
    unguarded = []
    for path in sorted((ROOT / "services").glob("*/*/**/*.py")):
        if "/tests/" in str(path):
            continue
        source = path.read_text(encoding="utf-8")
        writes = re.search(r"csv\.(writer|DictWriter)\(|openpyxl", source)
        if writes and not any(guard in source for guard in EXPORT_GUARDS):
            unguarded.append(str(path.relative_to(ROOT)))
    # notify's unit_contacts.csv is generated from the shipped reference data, not from anyone's input
    assert unguarded == ["services/notify/notify/content.py"]


# --- SQL is parameterised ---------------------------------------------------------------------------

# statements built with f-strings, each checked: identifiers that cannot be bound parameters
ALLOWED_BUILT_SQL = {
    "libs/wuji-common/wuji_common/migrations.py": "CREATE DATABASE (name checked against [A-Za-z0-9_])",
    "libs/wuji-common/wuji_common/testing.py": "test databases named from a uuid",
    "libs/wuji-common/wuji_common/audit.py": "trigger DDL from two constants",
}
BUILT_SQL = re.compile(r"""(text|execute|exec_driver_sql)\(\s*f["']|\.format\(|%\s*\(""")


def test_no_sql_is_built_from_strings_outside_the_checked_places():
    found = set()
    for path in sorted([*(ROOT / "services").glob("*/*/**/*.py"), *(ROOT / "libs").glob("*/*/**/*.py")]):
        if "/tests/" in str(path) or "/migrations/" in str(path):
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if BUILT_SQL.search(line) and re.search(r"SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|TRIGGER", line):
                found.add(str(path.relative_to(ROOT)))
    assert found <= set(ALLOWED_BUILT_SQL), found - set(ALLOWED_BUILT_SQL)


def test_a_hostile_case_number_is_a_bound_parameter_not_sql(intake_uow):
    from wuji_common.errors import NotFound
    with pytest.raises(NotFound):
        handlers.public_view(intake_uow(), "YC1' OR '1'='1", "x")
    with pytest.raises(NotFound):
        handlers.staff_view(intake_uow(), "YC1'; DROP TABLE appeals; --")
    with intake_uow() as u:
        assert u.session.execute(text("SELECT count(*) FROM appeals")).scalar_one() == 0

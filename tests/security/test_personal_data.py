"""Personal data (个人信息) in intake: encrypted at rest with rotatable keys, masked for staff, hidden
from the unit when the citizen asks, unmasked only for roles that need it with a reason that is
audited, erased after the retention period. Each test is named after what it tries.

Handler tests run on SQLite and PostgreSQL; the end-to-end ones on the platform as processes."""
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.fernet import InvalidToken
from sqlalchemy import create_engine, select, text, update

from intake import encryption, handlers
from intake.models import Appeal, CitizenContact, TimelineEntry, audit_log, metadata
from wuji_common import reference
from wuji_common.auth import Caller
from wuji_common.db import UnitOfWork, make_engine, session_factory
from wuji_common.errors import Forbidden, ValidationError
from wuji_common.migrations import upgrade
from wuji_common.testing_helpers import eventually, http_json, rpc_as_role

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = ROOT / "services/intake/intake/migrations"
NAME, PHONE, ID_NUMBER, ADDRESS = "欧阳建国", "13912348765", "370404198001010030", "坛山街道青檀路88号3单元"
UNIT = "370404-ZJJ"

HEAD = Caller("staff:head-1", "unit_head", unit_code=UNIT, source="rpc")
OTHER_HEAD = Caller("staff:head-2", "unit_head", unit_code="370404-SLJ", source="rpc")
CLERK = Caller("staff:clerk-1", "unit_clerk", unit_code=UNIT, source="rpc")
SUPERVISOR = Caller("staff:sup-1", "supervisor", source="rpc")


def appeal(hide_identity=False, anonymous=False):
    body = {"channel": "web", "title": "楼道堆物堵塞消防通道",
            "content": f"我是{NAME}，电话{PHONE}，楼道里堆满杂物，消防通道被堵，请尽快清理。",
            "location": {"town_code": "370404001", "address": ADDRESS},
            "hide_identity": hide_identity, "anonymous": anonymous}
    if not anonymous:
        body["citizen"] = {"name": NAME, "phone": PHONE, "id_number": ID_NUMBER, "email": "oy@example.cn"}
    return body


@pytest.fixture
def intake(db_url):
    """intake's database at head with the reference divisions; a unit-of-work factory."""
    upgrade(MIGRATIONS, db_url)
    engine = make_engine(db_url)
    factory = session_factory(engine)
    handlers.load_divisions(UnitOfWork(factory, metadata, "intake"), list(reference.divisions()))
    yield db_url, engine, (lambda: UnitOfWork(factory, metadata, "intake"))
    engine.dispose()


@pytest.fixture(autouse=True)
def process_keys():
    """Each test starts from the key ring of the environment and leaves it so."""
    encryption.use_keys(None)
    yield
    encryption.use_keys(None)


def submitted(uow, **kwargs):
    return handlers.submit_appeal(uow(), appeal(**kwargs), citizen_key="k")["case_no"]


def dispatched_to(uow, case_no, unit=UNIT):
    at = datetime.now(timezone.utc).isoformat()
    handlers.apply_order_event(uow(), "test", {
        "event_id": f"ev-{case_no}", "type": "order_dispatched", "case_no": case_no, "occurred_at": at,
        "data": {"unit_code": unit, "unit_name": "区综合执法局", "resolve_due_at": at}})


def stored_contact(engine, case_no):
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT * FROM citizen_contacts WHERE case_no = :c"),
                                 {"c": case_no}).mappings().one())


def audit_rows(engine, action):
    with engine.connect() as conn:
        return conn.execute(select(audit_log).where(audit_log.c.action == action)).mappings().all()


# --- encryption at rest -------------------------------------------------------------------------

def test_reading_the_contact_table_directly_shows_no_personal_data(intake):
    _, engine, uow = intake
    case_no = submitted(uow)
    raw = stored_contact(engine, case_no)
    for column in CitizenContact.ENCRYPTED:
        if raw[column] is not None:
            assert raw[column].startswith("gAAAAA"), column
    dumped = json.dumps(raw, ensure_ascii=False)
    for plain in (NAME, PHONE, ID_NUMBER, ADDRESS, "oy@example.cn"):
        assert plain not in dumped
    with uow() as u:  # through the model it reads as written
        contact = u.session.get(CitizenContact, case_no)
        assert (contact.name, contact.phone, contact.id_number, contact.address) == \
            (NAME, PHONE, ID_NUMBER, ADDRESS)


def test_a_copy_of_the_database_without_the_key_cannot_read_contacts(intake):
    _, _, uow = intake
    case_no = submitted(uow)
    encryption.use_keys(encryption.ContactKeys([encryption.generate_key()]))  # someone else's key
    with uow() as u, pytest.raises(InvalidToken):
        u.session.get(CitizenContact, case_no).phone


def test_a_service_without_keys_refuses_to_store_contacts_rather_than_store_them_plain(monkeypatch):
    monkeypatch.setenv(encryption.KEYS_ENV, "")
    with pytest.raises(encryption.KeysMissing):
        encryption.Encrypted().process_bind_param(PHONE, None)


def test_rotating_keys_reencrypts_every_contact_so_the_old_key_can_be_dropped(intake):
    _, engine, uow = intake
    old = encryption.keys()
    cases = [submitted(uow) for _ in range(3)]
    new_key = encryption.generate_key()
    encryption.use_keys(encryption.ContactKeys([new_key, _first_key()]))  # the new key in front
    report = handlers.rotate_keys(uow())  # five values a row: no WeChat openid here
    assert report["rows"] == 3 and report["values_reencrypted"] == 3 * 5 and report["values_current"] == 0
    assert all(old.can_decrypt(stored_contact(engine, c)["phone"]) is False for c in cases)
    encryption.use_keys(encryption.ContactKeys([new_key]))  # the old key dropped
    with uow() as u:
        assert u.session.get(CitizenContact, cases[0]).id_number == ID_NUMBER
    again = handlers.rotate_keys(uow())
    assert again["values_reencrypted"] == 0 and again["values_current"] == 3 * 5
    assert len(audit_rows(engine, "rotate_keys")) == 2


def _first_key():
    import os
    return os.environ[encryption.KEYS_ENV].split(",")[0]


def test_contacts_stored_plain_before_encryption_are_encrypted_by_the_migration(db_url):
    upgrade(MIGRATIONS, db_url, "0004")
    engine = create_engine(db_url)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO divisions (code, name, level, parent_code) "
                          "VALUES ('370404001', '坛山街道', 'town', '370404')"))
        conn.execute(text(
            "INSERT INTO appeals (case_no, channel, title, content, town_code, attachments, anonymous, "
            "tracking_token_hash, status, received_at, updated_at, version) VALUES ('YC1', 'web', 't', 'c', "
            "'370404001', '[]', false, 'h', 'received', :now, :now, 1)"), {"now": now})
        conn.execute(text("INSERT INTO citizen_contacts (case_no, name, phone) VALUES ('YC1', :n, :p)"),
                     {"n": NAME, "p": PHONE})
    upgrade(MIGRATIONS, db_url)
    raw = stored_contact(engine, "YC1")
    assert raw["phone"].startswith("gAAAAA") and encryption.keys().decrypt(raw["phone"]) == PHONE
    engine.dispose()


# --- masked for staff, hidden from the unit, revealed with a reason ------------------------------

def test_staff_view_shows_the_contact_masked_and_the_text_redacted(intake):
    _, engine, uow = intake
    case_no = submitted(uow)
    dispatched_to(uow, case_no)  # a unit sees the cases it holds the order of
    view = handlers.staff_view(uow(), case_no, CLERK)
    assert view["citizen"] == {"name": "欧***", "phone": "139****8765", "id_number": "3704**********0030"}
    assert PHONE not in view["content"] and NAME not in view["content"]
    assert [r["object_id"] for r in audit_rows(engine, "view_appeal")] == [case_no]


def test_unit_staff_see_the_matter_not_the_person_when_the_citizen_hid_their_identity(intake):
    _, _, uow = intake
    case_no = submitted(uow, hide_identity=True)
    dispatched_to(uow, case_no)
    for caller in (CLERK, HEAD):
        view = handlers.staff_view(uow(), case_no, caller)
        assert view["citizen"] is None and view["identity_hidden"] is True
        assert "欧" not in view["content"] and "楼道" in view["content"]  # not even the family name
    supervised = handlers.staff_view(uow(), case_no, SUPERVISOR)
    assert supervised["citizen"]["phone"] == "139****8765" and supervised["identity_hidden"] is False


def test_the_event_triage_gets_carries_no_name_at_all_when_identity_is_hidden(intake):
    _, engine, uow = intake
    submitted(uow, hide_identity=True)
    with engine.connect() as conn:
        payload = conn.execute(text("SELECT payload FROM outbox")).scalar_one()
    assert "欧" not in payload and PHONE not in payload and "楼道" in payload


def test_notify_still_gets_the_contact_of_a_citizen_hidden_from_the_unit(intake):
    _, engine, uow = intake
    case_no = submitted(uow, hide_identity=True)
    notify = Caller("service:notify", "service", source="rpc")
    assert handlers.contact_for_notification(uow(), case_no, notify)["phone"] == PHONE
    assert [r["subject"] for r in audit_rows(engine, "contact_for_notification")] == ["service:notify"]


def test_reveal_without_a_reason_is_refused(intake):
    _, engine, uow = intake
    case_no = submitted(uow)
    with pytest.raises(ValidationError) as err:
        handlers.reveal_contact(uow(), SUPERVISOR, case_no, "  ")
    assert "reason" in err.value.fields
    assert audit_rows(engine, "reveal_contact") == []


def test_a_clerk_cannot_reveal_a_contact(intake):
    _, _, uow = intake
    case_no = submitted(uow)
    dispatched_to(uow, case_no)
    with pytest.raises(Forbidden):
        handlers.reveal_contact(uow(), CLERK, case_no, "需要电话回访核实情况")


def test_the_head_of_another_unit_cannot_reveal_a_contact(intake):
    _, _, uow = intake
    case_no = submitted(uow)
    dispatched_to(uow, case_no)
    with pytest.raises(Forbidden):
        handlers.reveal_contact(uow(), OTHER_HEAD, case_no, "需要电话回访核实情况")


def test_the_head_of_the_holding_unit_reveals_with_a_reason_that_is_audited(intake):
    _, engine, uow = intake
    case_no = submitted(uow)
    dispatched_to(uow, case_no)
    contact = handlers.reveal_contact(uow(), HEAD, case_no, "需要电话回访核实现场情况")
    assert (contact["name"], contact["phone"], contact["id_number"]) == (NAME, PHONE, ID_NUMBER)
    [row] = audit_rows(engine, "reveal_contact")
    assert (row["subject"], row["role"], row["unit_code"], row["object_id"], row["reason"]) == \
        ("staff:head-1", "unit_head", UNIT, case_no, "需要电话回访核实现场情况")


def test_the_head_of_the_holding_unit_cannot_reveal_a_citizen_hidden_from_the_unit(intake):
    _, _, uow = intake
    case_no = submitted(uow, hide_identity=True)
    dispatched_to(uow, case_no)
    with pytest.raises(Forbidden):
        handlers.reveal_contact(uow(), HEAD, case_no, "需要电话回访核实情况")
    assert handlers.reveal_contact(uow(), SUPERVISOR, case_no, "督办核实：诉求人反映被打击报复")["phone"] == PHONE


def test_an_anonymous_appeal_keeps_no_contact_and_still_gets_a_tracking_token(intake):
    _, engine, uow = intake
    receipt = handlers.submit_appeal(uow(), appeal(anonymous=True), citizen_key="k")
    assert len(receipt["tracking_token"]) >= 20
    view = handlers.public_view(uow(), receipt["case_no"], receipt["tracking_token"])
    assert view["status"] == "received"
    with uow() as u:  # only the place of the matter is kept, nothing about the person
        contact = u.session.get(CitizenContact, receipt["case_no"])
        assert (contact.name, contact.phone, contact.id_number, contact.email) == (None,) * 4
        assert u.session.get(Appeal, 1).citizen_ref is None


# --- retention ---------------------------------------------------------------------------------

def closed_long_ago(engine, case_no, days):
    with engine.begin() as conn:
        conn.execute(update(Appeal.__table__).where(Appeal.__table__.c.case_no == case_no)
                     .values(status="closed", satisfaction="satisfied",
                             updated_at=datetime.now(timezone.utc) - timedelta(days=days)))


def test_retention_erases_personal_data_of_old_closed_cases_only_and_keeps_the_statistics(intake):
    _, engine, uow = intake
    old, recent, still_open = submitted(uow), submitted(uow), submitted(uow)
    closed_long_ago(engine, old, 800)
    closed_long_ago(engine, recent, 10)
    with engine.begin() as conn:  # an open case untouched for years keeps its data
        conn.execute(update(Appeal.__table__).where(Appeal.__table__.c.case_no == still_open)
                     .values(updated_at=datetime.now(timezone.utc) - timedelta(days=900)))

    dry = handlers.apply_retention(uow(), 730, dry_run=True)
    assert dry["case_nos"] == [old] and dry["contacts_deleted"] == 1
    assert stored_contact(engine, old)  # a dry run changes nothing

    report = handlers.apply_retention(uow(), 730)
    assert (report["cases_erased"], report["contacts_deleted"], report["citizen_refs_cleared"],
            report["texts_redacted"]) == (1, 1, 1, 1)
    with uow() as u:
        s = u.session
        assert s.get(CitizenContact, old) is None
        erased = s.execute(select(Appeal).where(Appeal.case_no == old)).scalar_one()
        assert erased.citizen_ref is None and erased.personal_data_erased_at is not None
        assert NAME not in erased.content and PHONE not in erased.content
        # the statistics survive: the appeal, its status, rating and timeline stay
        assert (erased.status, erased.satisfaction, erased.town_code) == ("closed", "satisfied", "370404001")
        assert s.execute(select(TimelineEntry).where(TimelineEntry.case_no == old)).first() is not None
        assert s.get(CitizenContact, recent) is not None and s.get(CitizenContact, still_open) is not None
    assert handlers.apply_retention(uow(), 730)["cases_erased"] == 0  # idempotent
    assert [r["object_id"] for r in audit_rows(engine, "erase_personal_data")] == [old]


def test_retention_command_prints_a_json_report(intake, tmp_path):
    db_url, engine, uow = intake
    case_no = submitted(uow)
    closed_long_ago(engine, case_no, 40)
    out = subprocess.run([str(Path(sys.executable).parent / "intake"), "retention", "--days", "30",
                          "--dry-run", "--db-url", db_url], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["dry_run"] is True and report["case_nos"] == [case_no]


# --- end to end: the unit sees the matter, notify still reaches the citizen ---------------------

def test_hidden_identity_end_to_end_the_unit_sees_no_person_and_the_citizen_is_still_told(secured):
    body = {"channel": "web", "title": "小区路灯不亮", "hide_identity": True,
            "content": f"我叫{NAME}，小区路灯坏了一个月，晚上出行很不安全。",
            "citizen": {"name": NAME, "phone": PHONE, "email": "hidden-citizen@example.cn"},
            "location": {"town_code": "370404101", "address": ADDRESS}}
    status, receipt = http_json("POST", f"{secured.api}/api/v1/appeals", body)
    assert status == 201, receipt
    case_no = receipt["case_no"]
    with rpc_as_role(secured.amqp_uri, "admin") as rpc:
        order = eventually(lambda: (rpc.triage.find_orders(case_no=case_no) or [None])[0], what="dispatch")
    with rpc_as_role(secured.amqp_uri, "unit_clerk", unit_code=order["unit_code"]) as rpc:
        def unit_view():  # once intake has seen the dispatch, the case is the unit's to view
            try:
                return rpc.intake.get_appeal(case_no)
            except Forbidden:
                return None
        view = eventually(unit_view, what="the unit's view of its case")
    assert view["citizen"] is None and view["identity_hidden"] is True and "欧" not in view["content"]
    with rpc_as_role(secured.amqp_uri, "unit_head", unit_code=order["unit_code"]) as rpc:
        with pytest.raises(Forbidden):
            rpc.intake.reveal_contact(case_no, "需要电话回访核实情况")
    # the receipt e-mail reached the citizen all the same
    eventually(lambda: any("hidden-citizen@example.cn" in str(m["To"]) for m in secured.mailbox.messages),
               what="receipt e-mail to the citizen")
    with rpc_as_role(secured.amqp_uri, "supervisor") as rpc:
        contact = rpc.intake.reveal_contact(case_no, "督办核实：诉求人要求回电")
        assert contact["phone"] == PHONE
        entries = rpc.intake.audit_log(object_id=case_no)
    actions = {e["action"] for e in entries}
    assert {"submit_appeal", "reveal_contact", "contact_for_notification"} <= actions
    assert [e["reason"] for e in entries if e["action"] == "reveal_contact"] == ["督办核实：诉求人要求回电"]

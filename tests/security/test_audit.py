"""The audit log (审计日志): every RPC and HTTP entrypoint of the five services is classified here as
read-only or audited; every audited one, called for real on the platform, leaves its row (who, what,
when, from where, why) in its service's append-only log, in the same transaction as its change.
Each test is named after what it tries.

Adding an entrypoint without classifying it fails ``test_no_entrypoint_escapes_classification``;
classifying a write as audited without writing the row fails the platform test."""
import importlib
import inspect
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from nameko.extensions import ENTRYPOINT_EXTENSIONS_ATTR
from nameko.rpc import Rpc
from nameko.web.handlers import HttpRequestHandler
from sqlalchemy import MetaData, create_engine, insert, select, text

from wuji_common import audit
from wuji_common.auth import Caller
from wuji_common.db import UnitOfWork, make_engine, session_factory
from wuji_common.errors import Forbidden
from wuji_common.testing import running_platform
from wuji_common.migrations import upgrade
from wuji_common.testing_helpers import eventually, http_json, rpc_as_role

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"intake": "IntakeService", "triage": "TriageService", "enforcement": "EnforcementService",
            "notify": "NotifyService", "metrics": "MetricsService"}
OPEN311_KEY = "audit-test-" + uuid.uuid4().hex[:8]

# entrypoint → the action its audit row records (audited), or None (read-only: changes nothing and
# reveals no personal data unmasked). One registry for the five services.
REGISTRY = {
    "intake": {
        "post_appeal": "submit_appeal", "submit_appeal": "submit_appeal", "post_rating": "rate_appeal",
        "open311_create_request": "open311_create_request",
        "get_appeal": "view_appeal",                 # masked personal data: the view is recorded
        "reveal_contact": "reveal_contact", "contact_for_notification": "contact_for_notification",
        "contacts_for_notification": "contact_for_notification",   # a batch of sends: a row per case
        "get_appeal_public": None,                   # the citizen's own case, with the tracking token
        "get_openapi": None, "open311_discovery": None, "open311_services": None,
        "open311_service_definition": None, "open311_requests": None, "open311_request": None,
        "open311_token": None,                       # Open311 reads: no personal data published
        "audit_log": None,
    },
    "triage": {
        "accept_order": "accept_order", "return_order": "return_order", "add_progress": "add_progress",
        "resolve_order": "resolve_order", "route_manually": "route_manually",
        "reload_taxonomy": "reload_taxonomy", "request_extension": "request_extension",
        "decide_extension": "decide_extension", "request_suspension": "request_suspension",
        "decide_suspension": "decide_suspension", "resume_order": "resume_order", "urge": "urge",
        "record_urge_outcome": "record_urge_outcome",
        "get_order": None, "find_orders": None, "services_catalogue": None, "pending_review": None,
        "hotspots": None, "repeat_counts": None, "overdue": None, "at_risk": None,
        "supervision_tickets": None, "audit_log": None,
    },
    "enforcement": {
        "blow_whistle": "blow_whistle", "report_in": "report_in", "complete_operation": "complete_operation",
        "issue_rectification_notice": "issue_rectification_notice", "record_inspection": "record_inspection",
        "carry_out_joint_enforcement": "carry_out_joint_enforcement", "record_absence": "record_absence",
        "schedule": "schedule",
        "plan": None, "schedule_status": None, "get_operation": None, "find_operations": None,
        "forces": None, "assessment": None, "audit_log": None,
    },
    "notify": {
        "set_unit_contact": "set_unit_contact", "subscribe": "subscribe", "unsubscribe": "unsubscribe",
        "set_preferences": "set_preferences", "mark_read": "mark_read", "replay": "replay",
        "unit_contact": None, "subscribers": None, "preferences": None, "inbox": None,
        "deliveries": None, "failed": None, "providers": None, "audit_log": None,
    },
    "metrics": {
        "rebuild": "rebuild",
        "kpis": None, "event_count": None, "assessment": None, "audit_log": None,
    },
}


def rpc_and_http_entrypoints(service_class):
    found = set()
    for name, method in inspect.getmembers(service_class):
        for entrypoint in getattr(method, ENTRYPOINT_EXTENSIONS_ATTR, ()):
            if isinstance(entrypoint, (Rpc, HttpRequestHandler)):
                found.add(name)
    return found


def unclassified(service, service_class):
    return rpc_and_http_entrypoints(service_class) - set(REGISTRY[service])


def service_class(service):
    return getattr(importlib.import_module(f"{service}.service"), SERVICES[service])


# --- the registry is complete -------------------------------------------------------------------

@pytest.mark.parametrize("service", sorted(SERVICES))
def test_no_entrypoint_escapes_classification(service):
    cls = service_class(service)
    assert unclassified(service, cls) == set(), \
        f"classify these {service} entrypoints in tests/security/test_audit.py REGISTRY"
    assert set(REGISTRY[service]) - rpc_and_http_entrypoints(cls) == set(), "stale registry entries"


def test_a_new_write_entrypoint_without_an_audit_classification_is_caught():
    from wuji_common.auth import rpc

    class TriageWithANewWrite(service_class("triage")):
        @rpc(roles=("supervisor",))
        def close_everything(self):
            pass

    assert unclassified("triage", TriageWithANewWrite) == {"close_everything"}


# --- the table is append-only and rows go with the transaction ----------------------------------

MIGRATIONS = {s: ROOT / "services" / s / s / "migrations" for s in SERVICES}


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_changing_or_deleting_an_audit_row_is_refused_by_the_database(db_url, service):
    upgrade(MIGRATIONS[service], db_url)
    engine = create_engine(db_url)
    table = audit.add_audit_table(MetaData())
    with engine.begin() as conn:
        conn.execute(insert(table).values(at=datetime.now(timezone.utc), subject="staff:x", role="unit_clerk",
                                          action="accept_order"))
    for statement in ("UPDATE audit_log SET subject = 'staff:someone-else'", "DELETE FROM audit_log"):
        with pytest.raises(Exception, match="append-only"):
            with engine.begin() as conn:
                conn.execute(text(statement))
    with engine.connect() as conn:
        assert conn.execute(select(table.c.subject)).scalars().all() == ["staff:x"]
    engine.dispose()


@pytest.fixture
def intake_uow(db_url):
    from intake.models import metadata
    upgrade(MIGRATIONS["intake"], db_url)
    engine = make_engine(db_url)
    factory = session_factory(engine)
    yield lambda: UnitOfWork(factory, metadata, "intake")
    engine.dispose()


CLERK = Caller("staff:clerk-a", "unit_clerk", unit_code="UNIT-A", source="rpc")


def test_a_change_that_rolls_back_leaves_no_audit_row(intake_uow):
    uow = audit.audited(intake_uow(), CLERK, "accept_order", "order", "WO-1")
    with uow:
        uow.session.execute(text("SELECT 1"))
        # no commit: the handler refused (e.g. not the unit's order)
    assert audit.read(intake_uow(), Caller("staff:s", "supervisor")) == []
    uow = audit.audited(intake_uow(), CLERK, "accept_order", "order", "WO-1", "签收")
    with uow:
        uow.commit()
    [entry] = audit.read(intake_uow(), Caller("staff:s", "supervisor"))
    assert (entry["subject"], entry["role"], entry["unit_code"], entry["action"], entry["object_id"],
            entry["source"], entry["reason"]) == ("staff:clerk-a", "unit_clerk", "UNIT-A", "accept_order",
                                                  "WO-1", "rpc", "签收")


def test_unit_staff_read_their_own_units_entries_only_and_supervisors_read_all(intake_uow):
    for caller in (CLERK, Caller("staff:clerk-b", "unit_clerk", unit_code="UNIT-B", source="rpc")):
        uow = audit.audited(intake_uow(), caller, "add_progress", "order", f"WO-{caller.unit_code}")
        with uow:
            uow.commit()
    assert [e["unit_code"] for e in audit.read(intake_uow(), CLERK)] == ["UNIT-A"]
    assert sorted(e["unit_code"] for e in audit.read(intake_uow(), Caller("staff:s", "supervisor"))) == \
        ["UNIT-A", "UNIT-B"]
    assert len(audit.read(intake_uow(), Caller("staff:l", "district_leader"))) == 2


@pytest.mark.parametrize("role", ["citizen", "integrator", "anonymous", "service"])
def test_callers_without_a_unit_or_oversight_cannot_read_the_log(intake_uow, role):
    with pytest.raises(Forbidden):
        audit.read(intake_uow(), Caller(f"{role}:x", role))


# --- every audited entrypoint, called for real, leaves its row ----------------------------------

@pytest.fixture(scope="module")
def platform(amqp_vhost, tmp_path_factory, database_templates):
    with running_platform(amqp_vhost, tmp_path_factory.mktemp("audit"), "audit",
                          env={"OPEN311_API_KEYS": f"audit-test:{OPEN311_KEY}"},
                          templates=database_templates) as p:
        yield p


def appeal(title, town="370404101", email=None, anonymous=False):
    body = {"channel": "web", "title": title, "content": f"{title}，请相关部门尽快处理。",
            "location": {"town_code": town}, "anonymous": anonymous}
    if not anonymous:
        body["citizen"] = {"name": "钱七", "phone": "13500003333", **({"email": email} if email else {})}
    return body


def order_of(rpc, case_no):
    return eventually(lambda: next((o for o in rpc.triage.find_orders(case_no=case_no)
                                    if o["status"] in ("dispatched", "pending_review")), None),
                      what=f"order of {case_no}")


def key():
    return uuid.uuid4().hex


def audited_actions(platform, service):
    engine = create_engine(platform.db_url(service))
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT action, subject, role, unit_code, source, reason FROM audit_log"))
        found = {}
        for row in rows.mappings():
            found.setdefault(row["action"], []).append(dict(row))
    engine.dispose()
    return found


def test_every_audited_entrypoint_leaves_an_audit_row_when_called(platform):
    api = platform.api
    # --- intake: citizens over HTTP, staff over RPC
    status, receipt = http_json("POST", f"{api}/api/v1/appeals", appeal("小区路灯不亮", email="qq7@example.cn"))
    assert status == 201, receipt
    case_a, token_a = receipt["case_no"], receipt["tracking_token"]
    status, anonymous = http_json("POST", f"{api}/api/v1/appeals", appeal("河道有人倾倒垃圾", anonymous=True))
    assert status == 201
    form = urllib.parse.urlencode({"api_key": OPEN311_KEY, "service_code": "road-damage", "lat": "34.8301",
                                   "long": "117.4702", "description": "村口道路坑洼，雨天积水",
                                   "first_name": "七", "last_name": "钱", "phone": "13500003333"}).encode()
    def open311_post():
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{api}/open311/v2/requests.json", data=form),
                                        timeout=15) as response:
                return response.status == 200
        except urllib.error.HTTPError as err:
            if err.code == 503:  # triage's catalogue not fetched yet: the platform is still starting
                return False
            raise AssertionError(err.read().decode()) from None
    eventually(open311_post, what="Open311 POST")
    with rpc_as_role(platform.amqp_uri, "admin") as rpc:
        case_c = rpc.intake.submit_appeal(appeal("道路井盖缺失"), idempotency_key=key())["case_no"]
        # (matters triage does not send to enforcement itself: the town blows the whistle below)
        case_e = rpc.intake.submit_appeal(appeal("镇区主街路灯不亮", town="370404100"),
                                          idempotency_key=key())["case_no"]
        case_f = rpc.intake.submit_appeal(appeal("村里排水沟堵塞", town="370404100"),
                                          idempotency_key=key())["case_no"]
        order_a, order_b, order_c = (order_of(rpc, c) for c in (case_a, anonymous["case_no"], case_c))
        order_e, order_f = order_of(rpc, case_e), order_of(rpc, case_f)
    with rpc_as_role(platform.amqp_uri, "supervisor") as rpc:
        rpc.intake.get_appeal(case_a)
        rpc.intake.reveal_contact(case_a, "核实诉求人反映的情况")

    # --- triage: a unit works order A through every clock request; C is returned; B re-routed
    unit = order_a["unit_code"]
    with rpc_as_role(platform.amqp_uri, "unit_clerk", unit_code=unit) as clerk, \
            rpc_as_role(platform.amqp_uri, "supervisor") as supervisor:
        clerk.triage.accept_order(order_a["order_no"], unit, key())
        clerk.triage.add_progress(order_a["order_no"], unit, "已联系供电所现场查看", key())
        extension = clerk.triage.request_extension(order_a["order_no"], unit, 2, "需更换线路", key())
        supervisor.triage.decide_extension(extension["request_id"], True, "督办员甲", "同意", key())
        suspension = clerk.triage.request_suspension(order_a["order_no"], unit, 3, "等待配件", key())
        supervisor.triage.decide_suspension(suspension["request_id"], True, "督办员甲", "同意", key())
        clerk.triage.resume_order(order_a["order_no"], unit, key())
        urge = supervisor.triage.urge(order_a["order_no"], "督办员甲", "请加快办理", key())
        supervisor.triage.record_urge_outcome(urge["urge_id"], "handled", "已处理", key())
        clerk.triage.resolve_order(order_a["order_no"], unit, "路灯已修复", key())
    with rpc_as_role(platform.amqp_uri, "admin") as rpc:
        rpc.triage.return_order(order_c["order_no"], order_c["unit_code"], "不属于本单位职责", key())
        detail = rpc.triage.get_order(order_b["order_no"])
        if detail["status"] == "dispatched":
            rpc.triage.route_manually(order_b["order_no"], detail["unit_code"], detail["category"],
                                      detail["item"], key())
        else:  # waiting for a dispatcher: any item of the catalogue will do
            item = rpc.triage.services_catalogue()["items"][0]
            rpc.triage.route_manually(order_b["order_no"], unit, item["category"], item["code"], key())
        rpc.triage.reload_taxonomy()
    eventually(lambda: http_json("GET", f"{api}/api/v1/appeals/{case_a}?token={token_a}")[1]["can_rate"],
               what="citizen may rate")
    status, _ = http_json("POST", f"{api}/api/v1/appeals/{case_a}/rating?token={token_a}",
                          {"satisfaction": "satisfied"})
    assert status == 200

    # --- enforcement: a whistle with report-in, plan and completion; one with the legal procedure
    with rpc_as_role(platform.amqp_uri, "admin") as rpc:
        for order in (order_e, order_f):
            rpc.triage.accept_order(order["order_no"], order["unit_code"], key())
        town = order_e["town_code"]
        op = rpc.enforcement.blow_whistle(order_e["order_no"], "road_occupation", town, "urgent", key())
        for force in op["forces"]:
            rpc.enforcement.report_in(op["operation_id"], force["force_code"],
                                      f"{force['force_code']}-{town}", key())
        rpc.enforcement.schedule(town, 7)
        rpc.enforcement.complete_operation(op["operation_id"], "占道摊点已清理", key(), ["photo:1"])
        team = f"{op['forces'][0]['force_code']}-{town}"
        today = date.today()
        rpc.enforcement.record_absence(f"{team}-01", today.isoformat(),
                                       (today + timedelta(days=1)).isoformat(), "leave", key())
        built = rpc.enforcement.blow_whistle(order_f["order_no"], "illegal_construction", order_f["town_code"],
                                             "normal", key())
        for force in built["forces"]:
            rpc.enforcement.report_in(built["operation_id"], force["force_code"],
                                      f"{force['force_code']}-{order_f['town_code']}", key())
        rpc.enforcement.issue_rectification_notice(built["operation_id"], "峄综执拆字〔2026〕1号", None, key())
        # the statutory ten days pass
        engine = create_engine(platform.db_url("enforcement"))
        with engine.begin() as conn:
            conn.execute(text("UPDATE procedure_steps SET period_ends_at = :past WHERE operation_id = :op"),
                         {"past": datetime.now(timezone.utc) - timedelta(days=1), "op": built["operation_id"]})
        engine.dispose()
        rpc.enforcement.record_inspection(built["operation_id"], False, "未按期拆除", ["photo:2"], key())
        rpc.enforcement.carry_out_joint_enforcement(built["operation_id"], "依法强制拆除", ["photo:3"], key())

    # --- notify and metrics
    with rpc_as_role(platform.amqp_uri, "admin") as rpc:
        rpc.notify.set_unit_contact(unit, email="unit-a@example.cn", idempotency_key=key())
        subscriber = rpc.notify.subscribe(["order_closed"], url="https://hooks.example.invalid/wuji",
                                          name="audit-test", idempotency_key=key())
        rpc.notify.unsubscribe(subscriber["subscriber_id"])
        rpc.notify.set_preferences(case_a, channel="email", idempotency_key=key())
        rpc.notify.mark_read(unit)
        skipped = eventually(lambda: [d for d in rpc.notify.deliveries(anonymous["case_no"])
                                      if d["status"] in ("skipped", "failed")], what="skipped delivery")
        rpc.notify.replay(skipped[0]["delivery_id"], idempotency_key=key())
        rpc.metrics.rebuild()

    missing = {}
    for service, entrypoints in REGISTRY.items():
        found = audited_actions(platform, service)
        for entrypoint, action in entrypoints.items():
            if action and action not in found:
                missing.setdefault(service, []).append(entrypoint)
    reads = {"contact_for_notification", "contacts_for_notification"}
    if reads & set(missing.get("intake", [])):  # notify reads at send time: wait
        eventually(lambda: "contact_for_notification" in audited_actions(platform, "intake"),
                   what="notify's read of the contact")
        missing["intake"] = [e for e in missing["intake"] if e not in reads]
    assert {s: m for s, m in missing.items() if m} == {}

    # who, from where and why are recorded
    triage_rows = audited_actions(platform, "triage")
    [accepted] = [r for r in triage_rows["accept_order"] if r["unit_code"] == unit and r["role"] == "unit_clerk"]
    assert accepted["subject"].startswith("staff:") and accepted["source"] == "rpc"
    assert triage_rows["return_order"][0]["reason"] == "不属于本单位职责"
    intake_rows = audited_actions(platform, "intake")
    assert intake_rows["reveal_contact"][0]["reason"] == "核实诉求人反映的情况"
    assert intake_rows["submit_appeal"][0]["source"].startswith("http:")
    assert intake_rows["contact_for_notification"][0]["subject"] == "service:notify"
    # the log over RPC: a supervisor reads everything, a unit its own entries only
    with rpc_as_role(platform.amqp_uri, "supervisor") as rpc:
        assert {e["action"] for e in rpc.triage.audit_log(object_id=order_a["order_no"])} >= \
            {"accept_order", "resolve_order", "urge"}
    with rpc_as_role(platform.amqp_uri, "unit_clerk", unit_code=unit) as rpc:
        assert {e["unit_code"] for e in rpc.triage.audit_log(limit=500)} == {unit}

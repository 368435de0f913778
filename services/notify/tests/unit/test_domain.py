"""notify's rules, planning, quiet hours, rendering, signing, masking and backoff: pure functions."""
import hashlib
import hmac
import json
import random
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from notify import content, domain
from notify.domain import Address, Outgoing, Rendered, TemplateSet

CASE = "YC20261125000001"
RECEIVED = {"event_id": "e-1", "type": "appeal_received", "case_no": CASE,
            "data": {"channel": "web", "title": "小区路灯不亮", "content": "我家门口（13800000000）路灯坏了",
                     "town_code": "370404001", "village_code": "370404001201", "anonymous": False,
                     "citizen_ref": "abc", "received_at": "2026-11-25T02:00:00+00:00", "attachments": []}}
DISPATCHED = {"event_id": "e-2", "type": "order_dispatched", "case_no": CASE,
              "data": {"order_no": "GD1", "unit_code": "dept-housing", "town_code": "370404001",
                       "category": "housing", "status": "dispatched", "unit_name": "区住房和城乡建设局",
                       "level": "district", "accept_due_at": "2026-11-25T04:00:00+00:00",
                       "resolve_due_at": "2026-11-30T04:00:00+00:00", "policy": "rules",
                       "router_version": "1", "confidence": None, "title": "小区路灯不亮"}}


def entry(code, kind="unit", email=None, phone=None, webhook=None):
    return SimpleNamespace(unit_code=code, unit_name=code, kind=kind, email=email or f"{code}@x.test",
                           phone=phone, webhook_url=webhook, webhook_secret="s" * 40 if webhook else None)


class Directory:
    def __init__(self, *entries):
        self.entries = {e.unit_code: e for e in entries}

    def get(self, code):
        return self.entries.get(code)

    def of_kind(self, kind):
        return [e for e in self.entries.values() if e.kind == kind]


DIRECTORY = Directory(entry("dept-housing"), entry("grid-370404001201", "grid_worker"),
                      entry("dept-command", "supervisor", phone="13900000000"),
                      entry("public_security", "force", phone="13700000000"), entry("water", "force"))


# --- rules and templates ------------------------------------------------------------------------------

def test_shipped_rules_and_templates_agree():
    content.check_templates(content.rules())  # also run when the service starts


def test_every_rule_has_an_event_handler_on_the_service():
    from notify.service import NotifyService
    from wuji_common.topology import event_subscriptions
    subscribed = {event_type for _, event_type, _ in event_subscriptions(NotifyService)}
    assert set(content.rules()) <= subscribed


def test_a_template_using_a_field_its_rule_does_not_keep_is_refused():
    rules = domain.parse_rules({"appeal_received": [{"recipient": "citizen", "channels": ["email"],
                                                     "fields": []}]})
    with pytest.raises(ValueError, match=r"uses \['received_at', 'title'\]"):
        content.check_templates(rules)
    sms_only = domain.parse_rules({"order_dispatched": [{"recipient": "unit", "channels": ["sms"],
                                                         "fields": ["order_no"]}]})
    with pytest.raises(ValueError, match="sms.txt is missing"):
        content.check_templates(sms_only)


@pytest.mark.parametrize("entry_, message", [
    ({"no_such_event": []}, "unknown event type"),
    ({"appeal_received": [{"recipient": "mayor", "channels": ["email"]}]}, "unknown recipient"),
    ({"appeal_received": [{"recipient": "citizen", "channels": ["pigeon"]}]}, "channels"),
    ({"appeal_received": [{"recipient": "citizen", "channels": ["inbox"]}]}, "no inbox"),
    ({"appeal_received": [{"recipient": "unit", "channels": ["email"]}]}, "names no unit"),
    ({"appeal_received": [{"recipient": "citizen", "channels": ["email"], "fields": ["phone"]}]}, "carries no"),
    ({"order_dispatched": [{"recipient": "unit", "channels": ["inbox", "email"]},
                           {"recipient": "unit", "channels": ["email"]}]}, "told twice"),
])
def test_rules_refuse_mistakes_at_load(entry_, message):
    with pytest.raises(ValueError, match=message):
        domain.parse_rules(entry_)


# --- planning -----------------------------------------------------------------------------------------

def test_citizen_receipt_keeps_only_the_fields_its_template_needs_on_the_running_channels():
    citizen, grid = domain.plan(content.rules(), RECEIVED, DIRECTORY, available=("inbox", "sms", "email"))
    assert (citizen.recipient, citizen.chain, citizen.template) == \
        ("citizen", ("sms", "email"), "citizen/appeal_received")  # WeChat not configured here
    # the appeal's free text (which can hold a phone number) is not kept with the delivery
    assert citizen.context == {"case_no": CASE, "title": "小区路灯不亮", "received_at": "2026-11-25T02:00:00+00:00"}
    assert (grid.recipient, grid.chain, grid.template) == \
        ("grid_worker:grid-370404001201", ("inbox",), "grid_worker/appeal_received")


def test_the_citizens_preferred_channel_goes_first():
    [citizen, _] = domain.plan(content.rules(), RECEIVED, DIRECTORY, preferred="email")
    assert citizen.chain == ("email", "wechat", "sms")


def test_anonymous_appeal_is_skipped_up_front():
    envelope = {**RECEIVED, "data": {**RECEIVED["data"], "anonymous": True}}
    assert domain.plan(content.rules(), envelope, DIRECTORY)[0].skip_reason == "anonymous"


def test_dispatch_tells_the_unit_in_its_inbox_and_by_its_system_or_else_email():
    inbox, notice = domain.plan(content.rules(), DISPATCHED, DIRECTORY)
    assert (inbox.recipient, inbox.chain) == ("unit:dept-housing", ("inbox",))
    assert notice.chain == ("email",)  # no webhook endpoint: e-mail only
    with_hook = Directory(entry("dept-housing", webhook="https://h.test/x"))
    assert domain.plan(content.rules(), DISPATCHED, with_hook)[1].chain == ("webhook", "email")


def test_an_order_for_a_grid_worker_uses_the_grid_workers_templates():
    envelope = {**DISPATCHED, "data": {**DISPATCHED["data"], "unit_code": "grid-370404001201", "level": "grid"}}
    inbox, _ = domain.plan(content.rules(), envelope, DIRECTORY)
    assert (inbox.recipient, inbox.template) == ("grid_worker:grid-370404001201", "grid_worker/order_dispatched")


def test_whistle_tells_each_force_and_escalation_the_supervisors_urgently():
    whistle = {"event_id": "e-3", "type": "whistle_blown", "case_no": CASE, "data": {
        "operation_id": "OP1", "order_no": "GD1", "town_code": "370404001", "violation_type": "illegal_construction",
        "forces": ["public_security", "water"], "report_in_due_at": "2026-11-25T04:00:00+00:00"}}
    planned = domain.plan(content.rules(), whistle, DIRECTORY)
    assert [(p.recipient, p.chain, p.urgent) for p in planned] == [
        ("force:public_security", ("inbox",), False), ("force:water", ("inbox",), False),
        ("force:public_security", ("sms", "email"), True), ("force:water", ("email",), True)]
    escalated = {"event_id": "e-4", "type": "force_report_in_escalated", "case_no": None, "data": {
        "operation_id": "OP1", "order_no": "GD1", "town_code": "370404001", "force_code": "water",
        "report_in_due_at": "2026-11-25T04:00:00+00:00", "escalated_at": "2026-11-25T06:00:00+00:00",
        "escalated_to": "district"}}
    assert [(p.recipient, p.chain, p.urgent) for p in domain.plan(content.rules(), escalated, DIRECTORY)] == [
        ("supervisor:dept-command", ("inbox",), True), ("supervisor:dept-command", ("sms", "email"), True)]


def test_unknown_staff_recipient_is_recorded_as_skipped():
    envelope = {**DISPATCHED, "data": {**DISPATCHED["data"], "unit_code": "dept-nowhere"}}
    assert {p.skip_reason for p in domain.plan(content.rules(), envelope, DIRECTORY)} == {"unknown_recipient"}


def test_subscriber_wants_its_types_and_its_unit_only():
    sub = SimpleNamespace(event_types=["order_dispatched"], unit_code="dept-water")
    assert not domain.subscriber_wants(sub, DISPATCHED)
    assert domain.subscriber_wants(SimpleNamespace(event_types=["order_dispatched"], unit_code=None), DISPATCHED)
    assert not domain.subscriber_wants(SimpleNamespace(event_types=["order_closed"], unit_code=None), DISPATCHED)


# --- quiet hours --------------------------------------------------------------------------------------

def utc(h, m=0, day=25):
    return datetime(2026, 11, day, h, m, tzinfo=timezone.utc)


def test_quiet_hours_over_midnight_in_china_time():
    window = domain.parse_quiet_hours("22:00-07:00")
    assert domain.quiet_until(utc(15), window) == utc(23)          # 23:00 CST → until 07:00 CST next day
    assert domain.quiet_until(utc(20), window) == utc(23)          # 04:00 CST → until 07:00 CST
    assert domain.quiet_until(utc(5), window) is None               # 13:00 CST
    assert domain.quiet_until(utc(5), domain.parse_quiet_hours("12:00-14:00")) == utc(6)


def test_urgent_news_and_quiet_channels_ignore_quiet_hours():
    window = ("22:00", "07:00")
    assert domain.hold_for_quiet_hours("sms", False, window, utc(15)) == utc(23)
    assert domain.hold_for_quiet_hours("sms", True, window, utc(15)) == utc(15)
    assert domain.hold_for_quiet_hours("email", False, window, utc(15)) == utc(15)


@pytest.mark.parametrize("text", ["22-07", "25:00-07:00", "07:00-07:00", "abc"])
def test_bad_quiet_hours_are_refused(text):
    with pytest.raises(ValueError):
        domain.parse_quiet_hours(text)


# --- addresses ----------------------------------------------------------------------------------------

def test_citizen_addresses_per_channel():
    contact = {"name": "张三", "phone": "13800000000", "email": " zs@example.com ", "wechat_openid": None}
    assert domain.citizen_address("email", contact).to == "zs@example.com"
    assert domain.citizen_address("sms", contact).to == "13800000000"
    assert domain.citizen_address("wechat", contact).skip_reason == "no_wechat"
    assert domain.citizen_address("sms", None).skip_reason == "no_contact"


def test_logged_addresses_are_masked():
    assert domain.logged_address("citizen", "email", Address(to="zhangsan@example.com")) == "z***@example.com"
    assert domain.logged_address("citizen", "sms", Address(to="13812345678")) == "138****5678"
    assert domain.logged_address("force", "sms", Address(to="13812345678")) == "138****5678"
    assert domain.logged_address("citizen", "wechat", Address(to="oAbCdEfGhIjKlMn")) == "oAbC***"
    assert domain.logged_address("unit", "email", Address(to="dept@demo.wuji.local")) == "dept@demo.wuji.local"


# --- rendering ----------------------------------------------------------------------------------------

def test_times_are_shown_in_china_time_and_codes_in_words():
    assert domain.local_time_text("2026-11-25T16:30:00+00:00") == "2026年11月26日 00:30"
    values = domain.template_values({"level": "district", "violation_type": "illegal_construction",
                                     "force_code": "water", "forces": ["a", "b"]})
    assert values == {"level": "区直部门", "violation_type": "违法建设", "force_code": "水务", "forces": "a、b"}


def test_render_escapes_appeal_text_in_html_only():
    templates = TemplateSet(subject="回执 ${case_no}\n", text="标题：${title}", html="<p>${title}</p>")
    rendered = domain.render(templates, domain.template_values({"case_no": "YC1", "title": "<b>x</b>\n二行"}))
    assert (rendered.subject, rendered.text) == ("回执 YC1", "标题：<b>x</b>\n二行")
    assert rendered.html == "<p>&lt;b&gt;x&lt;/b&gt;<br>\n二行</p>"


def test_sms_sends_the_variables_its_template_names_shortened():
    templates = TemplateSet(sms="您的诉求${title}已受理，编号${case_no}")
    rendered = domain.render(templates, {"title": "很" * 40, "case_no": "YC1", "other": "x"}, "sms")
    assert rendered.sms_params == {"title": "很" * 34 + "…", "case_no": "YC1"}


def test_render_refuses_a_missing_field():
    with pytest.raises(KeyError):
        domain.render(TemplateSet("${order_no}", "", ""), {})


# --- webhooks -----------------------------------------------------------------------------------------

def outgoing(message=Rendered("主题", "正文", "")):
    return Outgoing(delivery_id="d-1", event_id="e-2", event_type="order_dispatched", case_no="YC1",
                    recipient="unit:dept-housing", address=Address(to="http://h", secret="s" * 64),
                    message=message, data={"order_no": "GD1"}, occurred_at="2026-11-25T02:00:00+00:00")


def test_webhook_body_of_a_notice_and_of_an_event():
    body = json.loads(domain.webhook_body(outgoing()))
    assert body["subject"] == "主题" and body["data"] == {"order_no": "GD1"}
    event = json.loads(domain.webhook_body(outgoing(Rendered())))
    assert "subject" not in event and event["occurred_at"] == "2026-11-25T02:00:00+00:00"


def test_webhook_signature_and_its_replay_window():
    body = '{"a": "派单"}'.encode("utf-8")
    expected = hmac.new(b"secret", b"1764036000." + body, hashlib.sha256).hexdigest()
    signature = domain.webhook_signature("secret", 1764036000, body)
    assert signature == f"sha256={expected}"
    assert domain.verify_webhook_signature("secret", "1764036000", body, signature, now=1764036100)
    assert not domain.verify_webhook_signature("secret", "1764036000", body, signature, now=1764040000)
    assert not domain.verify_webhook_signature("other", "1764036000", body, signature, now=1764036100)


# --- backoff ------------------------------------------------------------------------------------------

def test_backoff_doubles_with_jitter_up_to_the_cap():
    rng = random.Random(7)
    for n, ceiling in [(1, 30), (2, 60), (3, 120), (8, 600)]:
        waits = [domain.backoff_seconds(n, 30, 600, rng) for _ in range(50)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert len({round(w, 3) for w in waits}) > 1  # spread, not all together
    now = utc(0)
    assert domain.next_attempt_after_failure(5, 5, 30, 600, now) is None


def test_error_summaries_carry_no_exception_text():
    assert domain.error_summary(ValueError("zs@example.com refused")) == "ValueError"
    assert domain.error_summary(domain.ProviderDown("HTTP 503")) == "HTTP 503"


def test_shipped_unit_contacts_are_generated_from_the_shared_reference_units():
    shipped = (content.DATA / "unit_contacts.csv").read_text(encoding="utf-8")
    assert shipped == content.unit_contacts_csv(), "regenerate with `notify unit-contacts-csv`"
    kinds = {row["unit_code"]: row["kind"] for row in content.unit_contacts()}
    assert (kinds["dept-housing"], kinds["grid-370404001201"], kinds["dept-command"], kinds["water"]) == \
        ("unit", "grid_worker", "supervisor", "force")

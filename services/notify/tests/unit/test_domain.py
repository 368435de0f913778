"""notify's rules, rendering, signing and masking: pure functions, no I/O."""
import hashlib
import hmac
import json
from datetime import datetime, timezone

import pytest

from notify import content, domain
from notify.domain import Address, Outgoing, Rendered, TemplateSet

ENVELOPE_RECEIVED = {
    "event_id": "e-1", "type": "appeal_received", "case_no": "YC20261125000001",
    "data": {"channel": "web", "title": "小区路灯不亮", "content": "我家门口（13800000000）路灯坏了",
             "town_code": "370404001", "anonymous": False, "citizen_ref": "abc",
             "received_at": "2026-11-25T02:00:00+00:00", "attachments": []},
}
ENVELOPE_DISPATCHED = {
    "event_id": "e-2", "type": "order_dispatched", "case_no": "YC20261125000001",
    "data": {"order_no": "GD1", "unit_code": "dept-housing", "town_code": "370404001",
             "category": "housing", "status": "dispatched", "unit_name": "区住房和城乡建设局",
             "level": "district", "accept_due_at": "2026-11-25T04:00:00+00:00",
             "resolve_due_at": "2026-11-30T04:00:00+00:00", "policy": "rules", "router_version": "1",
             "confidence": None, "title": "小区路灯不亮"},
}


# --- rules -------------------------------------------------------------------------------------------

def test_shipped_rules_cover_the_four_notices():
    rules = content.rules()
    assert {e: [(r.recipient, r.channels, r.template) for r in rs] for e, rs in rules.items()} == {
        "appeal_received": [("citizen", ("email",), "appeal_receipt")],
        "order_dispatched": [("unit", ("email", "webhook"), "dispatch_notice")],
        "order_reopened": [("unit", ("email", "webhook"), "reopen_notice")],
        "order_resolved": [("citizen", ("email",), "result_and_rating")],
    }


def test_every_rule_has_an_event_handler_on_the_service():
    from notify.service import NotifyService
    from wuji_common.topology import event_subscriptions
    subscribed = {event_type for _, event_type, _ in event_subscriptions(NotifyService)}
    assert set(content.rules()) == subscribed


@pytest.mark.parametrize("entry, message", [
    ({"no_such_event": []}, "unknown event type"),
    ({"appeal_received": [{"recipient": "mayor", "channels": ["email"], "template": "x"}]},
     "unknown recipient"),
    ({"appeal_received": [{"recipient": "citizen", "channels": ["pigeon"], "template": "x"}]},
     "channels"),
    ({"appeal_received": [{"recipient": "unit", "channels": ["email"], "template": "x"}]}, "no unit"),
    ({"appeal_received": [{"recipient": "citizen", "channels": ["email"], "template": "x",
                           "fields": ["phone"]}]}, "carries no"),
])
def test_rules_refuse_mistakes_at_load(entry, message):
    with pytest.raises(ValueError, match=message):
        domain.parse_rules(entry)


@pytest.mark.parametrize("event_type, rules", list(content.rules().items()))
def test_templates_use_only_what_the_rule_provides(event_type, rules):
    for rule in rules:
        templates = content.templates(rule.template)
        at_send_time = {"citizen": {"salutation"}, "unit": {"unit_name"}}[rule.recipient]
        available = set(rule.fields) | {"case_no", "portal_url"} | at_send_time
        assert domain.template_fields(templates) <= available, rule.template


def test_plan_citizen_receipt_keeps_only_the_fields_the_template_needs():
    [planned] = domain.plan(content.rules(), ENVELOPE_RECEIVED)
    assert (planned.recipient, planned.channel, planned.template, planned.skip_reason) == \
        ("citizen", "email", "appeal_receipt", None)
    # the appeal's free text (which can hold a phone number) is not kept with the delivery
    assert planned.context == {"case_no": "YC20261125000001", "title": "小区路灯不亮",
                               "received_at": "2026-11-25T02:00:00+00:00"}


def test_plan_anonymous_appeal_is_skipped_up_front():
    envelope = {**ENVELOPE_RECEIVED, "data": {**ENVELOPE_RECEIVED["data"], "anonymous": True}}
    [planned] = domain.plan(content.rules(), envelope)
    assert planned.skip_reason == "anonymous"


def test_plan_dispatch_tells_the_unit_on_both_channels():
    planned = domain.plan(content.rules(), ENVELOPE_DISPATCHED)
    assert [(p.recipient, p.channel, p.unit_code) for p in planned] == [
        ("unit:dept-housing", "email", "dept-housing"), ("unit:dept-housing", "webhook", "dept-housing")]


def test_events_without_rules_plan_nothing():
    assert domain.plan(content.rules(), {**ENVELOPE_RECEIVED, "type": "order_accepted"}) == []


# --- addresses ----------------------------------------------------------------------------------------

def test_citizen_address():
    assert domain.citizen_address("email", None).skip_reason == "no_contact"
    assert domain.citizen_address("email", {"name": "张三", "phone": "13800000000", "email": None}) \
        .skip_reason == "no_email"
    address = domain.citizen_address("email", {"name": "张三", "phone": "1", "email": " zs@example.com "})
    assert (address.to, address.name, address.skip_reason) == ("zs@example.com", "张三", None)


def test_mask_email_and_logged_address():
    assert domain.mask_email("zhangsan@example.com") == "z***@example.com"
    assert domain.mask_email("broken") == "***"
    assert domain.logged_address("citizen", "email", Address(to="zhangsan@example.com")) == \
        "z***@example.com"
    assert domain.logged_address("unit", "email", Address(to="dept-housing@demo.wuji.local")) == \
        "dept-housing@demo.wuji.local"


# --- rendering ----------------------------------------------------------------------------------------

def test_times_are_shown_in_china_time():
    assert domain.local_time_text("2026-11-25T16:30:00+00:00") == "2026年11月26日 00:30"
    assert domain.local_time_text("2026-11-25T02:00:00") == "2026年11月25日 10:00"  # naive = UTC


def test_render_escapes_appeal_text_in_html_only():
    templates = TemplateSet(subject="回执 ${case_no}\n", text="标题：${title}", html="<p>${title}</p>")
    values = domain.template_values({"case_no": "YC1", "title": '<script>alert("x")</script>\n二行'})
    rendered = domain.render(templates, values)
    assert rendered.subject == "回执 YC1"
    assert rendered.text == '标题：<script>alert("x")</script>\n二行'
    assert rendered.html == "<p>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;<br>\n二行</p>"


def test_render_shipped_dispatch_notice():
    [rule] = content.rules()["order_dispatched"]
    context = domain.plan(content.rules(), ENVELOPE_DISPATCHED)[0].context
    values = domain.template_values({"unit_name": "ignored", **context, "portal_url": "http://p"})
    rendered = domain.render(content.templates(rule.template), values)
    assert rendered.subject == "【派单通知】工单 GD1：小区路灯不亮"
    assert "区住房和城乡建设局：" in rendered.text
    assert "签收时限：2026年11月25日 12:00 前" in rendered.text
    assert "办理层级：区直部门" in rendered.text
    assert "<td>2026年11月30日 12:00 前</td>" in rendered.html


def test_render_refuses_a_missing_field():
    with pytest.raises(KeyError):
        domain.render(TemplateSet("${order_no}", "", ""), {})


def test_salutation():
    assert domain.salutation("张三") == "尊敬的张三，您好："
    assert domain.salutation(None) == "您好："


# --- webhooks and e-mail ids --------------------------------------------------------------------------

def outgoing(secret="s" * 64):
    return Outgoing(delivery_id="d-1", event_id="e-2", event_type="order_dispatched",
                    case_no="YC1", recipient="unit:dept-housing",
                    address=Address(to="http://127.0.0.1:1/hook", secret=secret),
                    message=Rendered("主题", "正文", "<p>正文</p>"), data={"order_no": "GD1"})


def test_webhook_body_is_utf8_json_with_the_notice_and_its_fields():
    body = json.loads(domain.webhook_body(outgoing()).decode("utf-8"))
    assert body == {"delivery_id": "d-1", "event_id": "e-2", "type": "order_dispatched",
                    "case_no": "YC1", "recipient": "unit:dept-housing", "subject": "主题",
                    "text": "正文", "data": {"order_no": "GD1"}}


def test_webhook_signature_is_hmac_sha256_of_timestamp_dot_body():
    body = '{"a": "派单"}'.encode("utf-8")
    expected = hmac.new(b"secret", b"1764036000." + body, hashlib.sha256).hexdigest()
    assert domain.webhook_signature("secret", 1764036000, body) == f"sha256={expected}"


def test_verify_webhook_signature():
    body = b'{"x": 1}'
    signature = domain.webhook_signature("secret", "1000", body)
    assert domain.verify_webhook_signature("secret", "1000", body, signature, now=1100)
    assert not domain.verify_webhook_signature("other", "1000", body, signature, now=1100)
    assert not domain.verify_webhook_signature("secret", "1000", b'{"x": 2}', signature, now=1100)
    assert not domain.verify_webhook_signature("secret", "1000", body, signature, now=5000)  # stale
    assert not domain.verify_webhook_signature("secret", "x", body, signature, now=1100)
    assert not domain.verify_webhook_signature("secret", "1000", body, None, now=1100)


def test_message_id_is_derived_from_the_delivery_id():
    assert domain.message_id("d-1", "notify@demo.wuji.local") == "<d-1@demo.wuji.local>"
    assert domain.message_id("d-1", "五集 <notify@demo.wuji.local>") == "<d-1@demo.wuji.local>"


# --- retries ------------------------------------------------------------------------------------------

def test_retries_back_off_then_stop():
    now = datetime(2026, 11, 25, tzinfo=timezone.utc)
    delays = (30, 120)
    assert (domain.next_attempt_after_failure(1, delays, now) - now).total_seconds() == 30
    assert (domain.next_attempt_after_failure(2, delays, now) - now).total_seconds() == 120
    assert domain.next_attempt_after_failure(3, delays, now) is None


def test_error_summaries_carry_no_exception_text():
    assert domain.error_summary(ValueError("zs@example.com refused")) == "ValueError"
    assert domain.error_summary(domain.TransientError("HTTP 503")) == "HTTP 503"


# --- shipped data -------------------------------------------------------------------------------------

def test_shipped_unit_contacts_are_generated_from_the_shared_reference_units():
    shipped = (content.DATA / "unit_contacts.csv").read_text(encoding="utf-8")
    assert shipped == content.unit_contacts_csv(), "regenerate with `notify unit-contacts-csv`"
    assert {"unit_code": "dept-housing", "unit_name": "区住房和城乡建设局",
            "email": "dept-housing@demo.wuji.local", "webhook_url": ""} in content.unit_contacts()

"""NotifyService in a real nameko container on the real broker, with real local servers: an SMTP
server, the SMS gateway, the WeChat API and webhook endpoints that check what they receive with code
of their own; intake is stood in for by a real nameko service named "intake" (outside notify's
bounded context). Events are published as the outbox relay does."""
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from nameko.rpc import rpc
from nameko.standalone.rpc import ServiceRpcProxy
from nameko.testing.services import entrypoint_waiter

from notify import content, handlers
from notify.models import metadata
from notify.service import NotifyService
from wuji_common.db import UnitOfWork, make_engine, session_factory
from wuji_common.events import make_event
from wuji_common.migrations import upgrade
from wuji_common.relay import BatchPublisher

from ..conftest import wait_until
from ..servers.providers import WebhookSubscriber

MIGRATIONS = Path(handlers.__file__).parent / "migrations"
CONTACTS = {}  # case_no -> what intake.contact_for_notification answers
CONTACT_CALLS = []  # (method, how many cases): what notify asked intake
WECHAT_KEYWORDS = {"TPL-RECEIPT": ["thing1", "character_string2", "time3", "phrase4"]}


class FakeIntake:
    """Answers notify's contact look-up as intake does: the plain contact, or None."""
    name = "intake"

    @rpc
    def contact_for_notification(self, case_no):
        CONTACT_CALLS.append(("contact_for_notification", 1))
        return CONTACTS.get(case_no)

    @rpc
    def contacts_for_notification(self, case_nos):
        CONTACT_CALLS.append(("contacts_for_notification", len(case_nos)))
        return {c: CONTACTS[c] for c in case_nos if CONTACTS.get(c)}


def with_notify_db(url, use):
    """Run ``use(uow)`` on notify's database outside the service, as ``notify`` the command does."""
    engine = make_engine(url)
    try:
        return use(UnitOfWork(session_factory(engine), metadata, "notify"))
    finally:
        engine.dispose()


@pytest.fixture
def prepared_db(db_url):
    upgrade(MIGRATIONS, db_url)
    with_notify_db(db_url, lambda uow: handlers.load_unit_contacts(uow, content.unit_contacts()))
    return db_url


@pytest.fixture
def config(amqp_uri, prepared_db, smtp_sink):
    return {
        "AMQP_URI": amqp_uri, "DB_URL": prepared_db, "EVENT_RETRY_DELAYS": [0.2, 0.5],
        "METRICS_PORT": 0, "SMTP_HOST": "127.0.0.1", "SMTP_PORT": smtp_sink.port,
        "MAIL_FROM": "notify@demo.wuji.local", "MAIL_FROM_NAME": "峄城区社会治理服务中心",
        "WEBHOOK_TIMEOUT": 2, "SMS_TIMEOUT": 2, "WECHAT_TIMEOUT": 2, "PORTAL_URL": "http://127.0.0.1:8000",
        "DELIVERY_MAX_ATTEMPTS": 3, "DELIVERY_RETRY_BASE_SECONDS": 0.2, "DELIVERY_RETRY_CAP_SECONDS": 0.4,
        "PROVIDER_RETRY_BASE_SECONDS": 0.2, "PROVIDER_RETRY_CAP_SECONDS": 0.4,
        "DELIVERY_SWEEP_SECONDS": 0.2, "DELIVERY_CLAIM_SECONDS": 10,
        "RATE_LIMITS": {"sms": 50, "wechat": 50, "email": 50, "webhook": 200},
    }


def start_notify(container_factory, config):
    container_factory(FakeIntake, {"AMQP_URI": config["AMQP_URI"]}).start()
    container = container_factory(NotifyService, config)
    container.start()
    return container


@pytest.fixture
def notify(container_factory, config):
    return start_notify(container_factory, config)


@pytest.fixture
def rpc_notify(config):
    with ServiceRpcProxy("notify", {"AMQP_URI": config["AMQP_URI"]}, timeout=20) as proxy:
        yield proxy


@pytest.fixture
def publish(amqp_uri):
    publisher = BatchPublisher(amqp_uri)

    def publish(envelope):
        assert publisher.publish([envelope]) == {envelope["event_id"]}, "no queue bound"
    yield publish
    publisher.close()


def new_case():
    return f"YC20261125{uuid.uuid4().int % 10**6:06d}"


def received(case_no, anonymous=False, at=None, citizen_ref=None, title="小区路灯<不亮>"):
    return make_event("appeal_received", case_no, {
        "channel": "wechat", "title": title, "content": "门口路灯坏了", "town_code": "370404001",
        "anonymous": anonymous, "citizen_ref": None if anonymous else (citizen_ref or f"ref-{case_no}"),
        "received_at": "2026-11-25T02:00:00+00:00"}, occurred_at=at)


def dispatched(case_no, unit_code="dept-housing"):
    return make_event("order_dispatched", case_no, {
        "order_no": f"GD{case_no[2:]}", "unit_code": unit_code, "town_code": "370404001",
        "category": "housing", "status": "dispatched", "unit_name": "区住房和城乡建设局",
        "level": "district", "accept_due_at": "2026-11-25T04:00:00+00:00",
        "resolve_due_at": "2026-11-30T04:00:00+00:00", "policy": "rules", "router_version": "1",
        "title": "小区路灯不亮"})


def log_of(rpc_notify, case_no, channel=None):
    return [d for d in rpc_notify.deliveries(case_no) if channel in (None, d["channel"])]


def test_receipt_is_mailed_once_when_the_event_arrives_twice(notify, publish, rpc_notify, smtp_sink):
    case_no = new_case()
    CONTACTS[case_no] = {"name": "张三", "phone": "13812345678", "email": "zhangsan@example.com"}
    envelope = received(case_no)
    for _ in range(2):
        with entrypoint_waiter(notify, "on_appeal_received", timeout=20):
            publish(envelope)
    # the handler reserves; a sender sends after it returned
    [delivery] = wait_until(lambda: [d for d in log_of(rpc_notify, case_no) if d["status"] == "sent"],
                            what="the receipt sent")  # SMS and WeChat are not configured here: e-mail
    assert len(log_of(rpc_notify, case_no)) == 1
    assert (delivery["status"], delivery["address"], delivery["attempts"]) == ("sent", "z***@example.com", 1)
    [mail] = smtp_sink.received(Subject=case_no)
    assert mail["Message-ID"] == f"<{delivery['delivery_id']}@demo.wuji.local>"
    assert mail["X-RcptTo"] == "zhangsan@example.com"
    assert "尊敬的张三，您好：" in mail.get_body(("plain",)).get_content()
    assert "小区路灯&lt;不亮&gt;" in mail.get_body(("html",)).get_content()
    assert "zhangsan" not in json.dumps(rpc_notify.deliveries(case_no))



def test_the_receipts_of_many_appeals_ask_intake_for_their_contacts_together(notify, publish, rpc_notify,
                                                                            smtp_sink):
    """The senders' batch of claims reads its citizens' contacts from intake in one call, not one
    call per receipt; each receipt still goes to its own citizen. A claim takes more lanes than
    there are senders (SENDERS, 6): each receipt is a lane of its own, and the senders work through
    the queued lanes one after the other."""
    cases = [new_case() for _ in range(30)]
    for n, case_no in enumerate(cases):
        CONTACTS[case_no] = {"name": f"市民{n}", "phone": "13812345678", "email": f"citizen{n}@example.com"}
    CONTACT_CALLS.clear()
    with entrypoint_waiter(notify, "on_appeal_received", timeout=20):
        BatchPublisher(notify.config["AMQP_URI"]).publish([received(c) for c in cases])
    for n, case_no in enumerate(cases):
        [mail] = wait_until(lambda: smtp_sink.received(Subject=case_no), what=f"the receipt of {case_no}")
        assert mail["X-RcptTo"] == f"citizen{n}@example.com"
    batched = [n for method, n in CONTACT_CALLS if method == "contacts_for_notification"]
    singles = [n for method, n in CONTACT_CALLS if method == "contact_for_notification"]
    assert sum(batched) == 30 and max(batched) > 6 and not singles, CONTACT_CALLS


@pytest.fixture
def phone_config(config, servers):
    """notify with the SMS gateway and the WeChat API running (the servers are started here)."""
    sms = servers("sms").start()
    wechat = servers("wechat", templates=WECHAT_KEYWORDS).start()
    config.update({
        "SMS_BASE_URL": sms.base_url, "SMS_ACCOUNT": sms.account, "SMS_SECRET": sms.secret,
        "SMS_SIGN_NAME": sms.sign_name, "SMS_TEMPLATE_CODES": {"citizen/appeal_received": "SMS_RECEIPT"},
        "WECHAT_API_BASE": wechat.base_url, "WECHAT_APPID": wechat.appid, "WECHAT_APPSECRET": wechat.appsecret,
        "WECHAT_TEMPLATE_IDS": {"citizen/appeal_received": "TPL-RECEIPT"}})
    config["servers"] = {"sms": sms, "wechat": wechat}
    return config


def test_citizens_are_told_on_wechat_else_by_sms(container_factory, phone_config, publish, rpc_notify):
    sms, wechat = phone_config.pop("servers").values()
    notify = start_notify(container_factory, phone_config)
    follower, texter = new_case(), new_case()
    CONTACTS[follower] = {"name": "李四", "phone": "13812345678", "email": None, "wechat_openid": "oWx1234567890"}
    CONTACTS[texter] = {"name": "王五", "phone": "13987654321", "email": "ww@example.com", "wechat_openid": None}
    for case_no in (follower, texter):
        with entrypoint_waiter(notify, "on_appeal_received", timeout=20):
            publish(received(case_no))
    wait_until(lambda: wechat.sent() and sms.accepted(), what="both citizens told")
    [message] = wechat.sent()
    assert (message["touser"], message["data"]["character_string2"]["value"]) == ("oWx1234567890", follower)
    [text] = sms.accepted()
    assert (text["PhoneNumbers"], text["TemplateCode"]) == ("13987654321", "SMS_RECEIPT")
    assert json.loads(text["TemplateParam"])["case_no"] == texter
    wait_until(lambda: log_of(rpc_notify, texter)[-1]["status"] == "sent", what="the SMS recorded")
    assert [(d["channel"], d["status"], d["address"]) for d in log_of(rpc_notify, texter)] == [
        ("wechat", "skipped", None), ("sms", "sent", "139****4321")]


def test_sms_gateway_down_for_a_while_then_back_delivers_each_once_and_each_citizen_in_order(
        container_factory, phone_config, publish, rpc_notify):
    sms, _ = phone_config.pop("servers").values()
    sms.stop()  # the gateway is away
    notify = start_notify(container_factory, phone_config)
    start = datetime.now(timezone.utc)
    citizens = ["ref-a", "ref-b", "ref-c"]
    appeals = [(citizens[i % 3], new_case()) for i in range(6)]  # two appeals of each citizen
    for i, (ref, case_no) in enumerate(appeals):
        CONTACTS[case_no] = {"name": None, "phone": f"1381234{citizens.index(ref):04d}", "email": None}
        with entrypoint_waiter(notify, "on_appeal_received", timeout=20):
            publish(received(case_no, at=start + timedelta(milliseconds=10 * i), citizen_ref=ref))
    down = wait_until(lambda: [p for p in rpc_notify.providers() if p["name"] == "sms" and p["queued"] == 6],
                      what="the messages held for the gateway")
    assert down[0]["last_error"] == "ConnectionError"
    sms.start()  # back on the same port
    wait_until(lambda: len(sms.accepted()) >= 6 and rpc_notify.providers() == [], what="the held messages sent")
    texts = [(t["PhoneNumbers"], json.loads(t["TemplateParam"])["case_no"]) for t in sms.accepted()]
    assert sorted(case_no for _, case_no in texts) == sorted(case_no for _, case_no in appeals)  # each once
    for n, ref in enumerate(citizens):  # each citizen hears of their appeals in the order they came
        assert [c for phone, c in texts if phone == f"1381234{n:04d}"] == [c for r, c in appeals if r == ref]
    wait_until(lambda: all(log_of(rpc_notify, c, "sms")[0]["status"] == "sent" for _, c in appeals),
               what="every outcome recorded")
    assert {log_of(rpc_notify, c, "sms")[0]["failures"] for _, c in appeals} == {0}  # the outage used no retries


def test_dispatch_goes_to_the_units_inbox_and_its_signed_webhook(notify, publish, rpc_notify, servers):
    unit = rpc_notify.set_unit_contact("dept-housing", webhook_url=WebhookSubscriber().url)
    hook = servers("webhook", secret=unit["webhook_secret"], port=int(unit["webhook_url"].split(":")[2][:5]))
    hook.start()
    case_no = new_case()
    publish(dispatched(case_no))
    [request] = wait_until(lambda: hook.requests, what="the webhook")
    assert request.ok  # signature and timestamp checked by the receiver
    body = request.json()
    assert (body["type"], body["case_no"], body["subject"]) == \
        ("order_dispatched", case_no, f"【派单通知】工单 GD{case_no[2:]}：小区路灯不亮")
    wait_until(lambda: {d["status"] for d in log_of(rpc_notify, case_no)} == {"sent"}, what="all sent")
    assert {d["channel"] for d in log_of(rpc_notify, case_no)} == {"inbox", "webhook"}  # no e-mail needed
    [message] = rpc_notify.inbox("dept-housing", unread_only=True)
    assert message["case_no"] == case_no and message["subject"] == body["subject"]
    assert rpc_notify.mark_read("dept-housing", [message["message_id"]]) == 1
    assert rpc_notify.inbox("dept-housing", unread_only=True) == []


def test_each_units_notices_arrive_in_order_while_units_are_sent_to_in_parallel(
        notify, publish, rpc_notify, servers):
    hooks = {}
    for unit in ("dept-water", "dept-housing"):  # two department systems taking 50 ms a request
        hook = servers("webhook", delay=0.05)
        hook.secret = rpc_notify.set_unit_contact(unit, webhook_url=hook.url)["webhook_secret"]
        hooks[unit] = hook.start()
    start = datetime.now(timezone.utc)
    sent = {unit: [] for unit in hooks}
    for i in range(12):  # a burst, the two units' orders interleaved
        unit = ("dept-water", "dept-housing")[i % 2]
        envelope = dispatched(new_case(), unit)
        envelope["occurred_at"] = (start + timedelta(milliseconds=i)).isoformat(timespec="milliseconds")
        sent[unit].append(envelope["case_no"])
        publish(envelope)
    wait_until(lambda: all(len(h.accepted()) == 6 for h in hooks.values()), what="every notice")
    for unit, hook in hooks.items():
        assert [b["case_no"] for b in hook.accepted()] == sent[unit]  # in the order of the events
        times = sorted(r.at for r in hook.requests)
        assert all(b - a >= 0.045 for a, b in zip(times, times[1:]))  # one request at a time per unit
    water, housing = ([r.at for r in hooks[u].requests] for u in ("dept-water", "dept-housing"))
    assert any(abs(a - b) < 0.05 for a in water for b in housing)  # the two units at the same time


def test_subscribers_get_the_events_they_chose(notify, publish, rpc_notify, servers):
    hook = servers("webhook")
    sub = rpc_notify.subscribe(["order_dispatched"], url=hook.url, name="区大数据局")
    hook.secret = sub["secret"]
    hook.start()
    assert [s["name"] for s in rpc_notify.subscribers()] == ["区大数据局"]
    case_no = new_case()
    publish(dispatched(case_no, "dept-water"))
    [request] = wait_until(lambda: hook.requests, what="the subscriber's webhook")
    assert request.ok and request.json()["data"]["unit_code"] == "dept-water"
    assert rpc_notify.unsubscribe(sub["subscriber_id"]) is None
    assert rpc_notify.subscribers() == []


def test_a_permanent_refusal_is_dead_listed_falls_back_and_can_be_replayed(
        notify, publish, rpc_notify, servers, smtp_sink):
    hook = servers("webhook", status=410)
    hook.secret = rpc_notify.set_unit_contact("dept-water", webhook_url=hook.url)["webhook_secret"]
    hook.start()
    case_no = new_case()
    publish(dispatched(case_no, "dept-water"))
    [dead] = wait_until(lambda: [d for d in log_of(rpc_notify, case_no, "webhook") if d["status"] == "failed"],
                        what="the webhook delivery to die")
    assert dead["last_error"] == "HTTP 410"
    [mail] = wait_until(lambda: log_of(rpc_notify, case_no, "email"), what="the fallback to e-mail")
    assert mail["fallback_of"] == dead["delivery_id"]
    wait_until(lambda: smtp_sink.received(X_Wuji_Delivery=mail["delivery_id"]), what="the e-mail")
    assert dead["delivery_id"] in [d["delivery_id"] for d in rpc_notify.failed()]
    hook.status = 200
    # sent by the call itself, or (when the sweep's sender claimed it first) pending in that sender's hands
    assert rpc_notify.replay(dead["delivery_id"])["status"] in ("sent", "pending")
    wait_until(lambda: [d for d in log_of(rpc_notify, case_no, "webhook") if d["status"] == "sent"],
               what="the replayed webhook delivery sent")
    assert [r.headers["X-Wuji-Delivery"] for r in hook.requests] == [dead["delivery_id"]] * 2
    assert dead["delivery_id"] not in [d["delivery_id"] for d in rpc_notify.failed()]


def test_a_delivery_left_pending_by_a_crash_is_sent_on_start(container_factory, config, smtp_sink):
    case_no = new_case()
    CONTACTS[case_no] = {"name": "王五", "phone": "13812345678", "email": "wangwu@example.com"}
    # reserved, then the process died before sending
    [delivery_id] = with_notify_db(config["DB_URL"], lambda uow: handlers.record_event(
        uow, "notify.on_appeal_received", received(case_no), content.rules(), ("email",)))
    start_notify(container_factory, config)
    [mail] = wait_until(lambda: smtp_sink.received(X_Wuji_Delivery=delivery_id), what="the mail")
    assert case_no in mail["Subject"]

"""NotifyService in a real nameko container on the real broker, with a real SMTP server, a real
HTTP endpoint that checks signatures on its own, and intake stood in for by a real nameko service
named "intake" (outside notify's bounded context). Events are published as the outbox relay does."""
import json
import uuid
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

from ..conftest import WebhookReceiver, wait_until

MIGRATIONS = Path(handlers.__file__).parent / "migrations"
CONTACTS = {}  # case_no -> what intake.contact_for_notification answers


class FakeIntake:
    """Answers notify's contact look-up as intake does: the plain contact, or None."""
    name = "intake"

    @rpc
    def contact_for_notification(self, case_no):
        return CONTACTS.get(case_no)


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
        "WEBHOOK_TIMEOUT": 2, "PORTAL_URL": "http://127.0.0.1:8000",
        "DELIVERY_RETRY_DELAYS": [0.3, 0.3, 0.3], "DELIVERY_SWEEP_SECONDS": 0.2,
        "DELIVERY_CLAIM_SECONDS": 10,
    }


@pytest.fixture
def notify(container_factory, config):
    intake = container_factory(FakeIntake, {"AMQP_URI": config["AMQP_URI"]})
    intake.start()
    container = container_factory(NotifyService, config)
    container.start()
    return container


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


def received(case_no, anonymous=False):
    return make_event("appeal_received", case_no, {
        "channel": "web", "title": "小区路灯<不亮>", "content": "门口路灯坏了", "town_code": "370404001",
        "anonymous": anonymous, "received_at": "2026-11-25T02:00:00+00:00"})


def dispatched(case_no, unit_code="dept-housing"):
    return make_event("order_dispatched", case_no, {
        "order_no": f"GD{case_no[2:]}", "unit_code": unit_code, "town_code": "370404001",
        "category": "housing", "status": "dispatched", "unit_name": "区住房和城乡建设局",
        "level": "district", "accept_due_at": "2026-11-25T04:00:00+00:00",
        "resolve_due_at": "2026-11-30T04:00:00+00:00", "policy": "rules", "router_version": "1",
        "title": "小区路灯不亮"})


def resolved(case_no):
    return make_event("order_resolved", case_no, {
        "order_no": f"GD{case_no[2:]}", "unit_code": "dept-housing", "town_code": "370404001",
        "category": "housing", "status": "resolved", "resolution": "已更换灯泡",
        "resolved_at": "2026-11-26T08:00:00+00:00", "within_deadline": True})


def log_of(rpc_notify, case_no, channel):
    return [d for d in rpc_notify.deliveries(case_no) if d["channel"] == channel]


def test_receipt_is_mailed_once_when_the_event_arrives_twice(notify, publish, rpc_notify, smtp_sink):
    case_no = new_case()
    CONTACTS[case_no] = {"name": "张三", "phone": "13812345678", "email": "zhangsan@example.com"}
    envelope = received(case_no)
    for _ in range(2):
        with entrypoint_waiter(notify, "on_appeal_received", timeout=20):
            publish(envelope)
    [delivery] = rpc_notify.deliveries(case_no)
    assert (delivery["status"], delivery["address"], delivery["attempts"]) == \
        ("sent", "z***@example.com", 1)
    [mail] = smtp_sink.received(Subject=case_no)
    assert mail["Message-ID"] == f"<{delivery['delivery_id']}@demo.wuji.local>"
    assert mail["X-RcptTo"] == "zhangsan@example.com"
    assert mail["Subject"] == f"【受理回执】您的诉求已受理（受理编号 {case_no}）"
    assert "尊敬的张三，您好：" in mail.get_body(("plain",)).get_content()
    assert "小区路灯&lt;不亮&gt;" in mail.get_body(("html",)).get_content()
    # the log is for staff: no plain contact data in it
    assert "zhangsan" not in json.dumps(rpc_notify.deliveries(case_no))


def test_dispatch_notice_reaches_the_units_webhook_signed(notify, publish, rpc_notify, smtp_sink,
                                                            webhook_receiver):
    receiver = webhook_receiver()
    unit = rpc_notify.set_unit_contact("dept-housing", webhook_url=receiver.url)
    receiver.secret = unit["webhook_secret"]  # handed to the department once
    receiver.start()
    case_no = new_case()
    publish(dispatched(case_no))
    [request] = wait_until(lambda: receiver.requests, what="the webhook")
    assert request.signature_ok
    body = json.loads(request.body.decode("utf-8"))
    assert (body["type"], body["case_no"], body["data"]["order_no"]) == \
        ("order_dispatched", case_no, f"GD{case_no[2:]}")
    assert body["subject"] == f"【派单通知】工单 GD{case_no[2:]}：小区路灯不亮"
    wait_until(lambda: {d["status"] for d in rpc_notify.deliveries(case_no)} == {"sent"},
               what="both deliveries recorded sent")
    [hook] = log_of(rpc_notify, case_no, "webhook")
    assert request.headers["X-Wuji-Delivery"] == hook["delivery_id"]
    [mail] = smtp_sink.received(X_Wuji_Delivery=log_of(rpc_notify, case_no, "email")[0]["delivery_id"])
    assert mail["X-RcptTo"] == "dept-housing@demo.wuji.local"


def test_webhook_down_is_retried_and_delivered_when_it_comes_back(notify, publish, rpc_notify,
                                                                   unused_port):
    receiver = WebhookReceiver(port=unused_port)
    receiver.secret = rpc_notify.set_unit_contact(
        "town-370404001", webhook_url=receiver.url)["webhook_secret"]
    case_no = new_case()
    publish(dispatched(case_no, unit_code="town-370404001"))
    wait_until(lambda: [d for d in log_of(rpc_notify, case_no, "webhook")
                        if d["status"] == "pending" and d["last_error"] == "ConnectionError"],
               what="a failed first attempt")
    receiver.start()
    try:
        [hook] = wait_until(lambda: [d for d in log_of(rpc_notify, case_no, "webhook")
                                     if d["status"] == "sent"], what="the retry to succeed")
        assert hook["attempts"] >= 2
        assert len(receiver.requests) == 1 and receiver.requests[0].signature_ok
    finally:
        receiver.stop()


def test_last_failure_is_dead_listed_and_replayable(notify, publish, rpc_notify, webhook_receiver):
    receiver = webhook_receiver(status=503)
    receiver.secret = rpc_notify.set_unit_contact(
        "dept-water", webhook_url=receiver.url)["webhook_secret"]
    receiver.start()
    case_no = new_case()
    publish(dispatched(case_no, unit_code="dept-water"))
    [dead] = wait_until(lambda: [d for d in log_of(rpc_notify, case_no, "webhook")
                                 if d["status"] == "failed"], what="the delivery to die")
    assert (dead["attempts"], dead["last_error"]) == (4, "HTTP 503")  # 1 try + 3 retries
    assert len(receiver.requests) == 4
    assert dead["delivery_id"] in [d["delivery_id"] for d in rpc_notify.failed()]
    receiver.status = 200
    replayed = rpc_notify.replay(dead["delivery_id"])
    assert replayed["status"] == "sent"
    assert {r.headers["X-Wuji-Delivery"] for r in receiver.requests} == {dead["delivery_id"]}
    assert dead["delivery_id"] not in [d["delivery_id"] for d in rpc_notify.failed()]


def test_anonymous_appeal_is_skipped(notify, publish, rpc_notify, smtp_sink):
    case_no = new_case()
    with entrypoint_waiter(notify, "on_appeal_received", timeout=20):
        publish(received(case_no, anonymous=True))
    [delivery] = rpc_notify.deliveries(case_no)
    assert (delivery["status"], delivery["reason"], delivery["address"]) == \
        ("skipped", "anonymous", None)
    assert smtp_sink.received(Subject=case_no) == []


def test_result_and_invitation_to_rate(notify, publish, rpc_notify, smtp_sink):
    case_no, anonymous = new_case(), new_case()
    CONTACTS[case_no] = {"name": None, "phone": "13812345678", "email": "lisi@example.com"}
    with entrypoint_waiter(notify, "on_order_resolved", timeout=20):
        publish(resolved(case_no))
    with entrypoint_waiter(notify, "on_order_resolved", timeout=20):
        publish(resolved(anonymous))  # intake answers None: no one to tell
    [mail] = smtp_sink.received(Subject=case_no)
    assert "请对办理结果进行评价" in mail["Subject"]
    text = mail.get_body(("plain",)).get_content()
    assert text.startswith("您好：") and "已更换灯泡" in text and "http://127.0.0.1:8000" in text
    assert [d["reason"] for d in rpc_notify.deliveries(anonymous)] == ["no_contact"]


def test_a_delivery_left_pending_by_a_crash_is_sent_on_start(container_factory, config, smtp_sink):
    case_no = new_case()
    CONTACTS[case_no] = {"name": "王五", "phone": "13812345678", "email": "wangwu@example.com"}
    # reserved, then the process died before sending
    [delivery_id] = with_notify_db(config["DB_URL"], lambda uow: handlers.record_event(
        uow, "notify.on_appeal_received", received(case_no), content.rules()))
    container_factory(FakeIntake, {"AMQP_URI": config["AMQP_URI"]}).start()
    container_factory(NotifyService, config).start()
    [mail] = wait_until(lambda: smtp_sink.received(X_Wuji_Delivery=delivery_id), what="the mail")
    assert case_no in mail["Subject"]

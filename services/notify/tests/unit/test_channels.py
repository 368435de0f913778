"""The channels against real local servers (SMTP with STARTTLS and AUTH, the SMS gateway, the WeChat
API, a webhook subscriber, the inbox's database): what goes on the wire, what each server checks, and
how failures are sorted into "the provider is away", "try this message later" and "give up"."""
import json

import pytest
from sqlalchemy import create_engine, select

from notify import content, domain
from notify.channels import (
    EmailChannel, InboxChannel, RateLimiter, SmsChannel, WebhookChannel, WechatChannel,
)
from notify.domain import (
    Address, NotConfigured, Outgoing, PermanentError, ProviderDown, Rendered, TransientError,
)
from notify.models import InboxMessage, metadata

from ..conftest import SMTP_PASSWORD, SMTP_USER

DELIVERY = "5f0c7a52-0000-4000-8000-000000000001"
VALUES = domain.template_values({"case_no": "YC20261125000001", "title": "小区门口的路灯已经坏了一个多星期了一直没人来修",
                                 "received_at": "2026-11-25T02:00:00+00:00", "salutation": "您好：",
                                 "portal_url": "http://p"})


def outgoing(to, secret=None, channel="email", template="citizen/appeal_received"):
    message = domain.render(content.templates(template), VALUES, channel) if channel in ("sms", "wechat") \
        else Rendered("【受理回执】您的诉求已受理", "正文：路灯 <坏了>", "<p>正文：路灯 &lt;坏了&gt;</p>")
    return Outgoing(delivery_id=DELIVERY, event_id="e-1", event_type="appeal_received",
                    case_no="YC20261125000001", recipient="citizen", address=Address(to=to, secret=secret),
                    message=message, data={"title": "路灯"}, template=template,
                    occurred_at="2026-11-25T02:00:00+00:00")


# --- e-mail -------------------------------------------------------------------------------------------

def secure_email(port, tls_files, password=SMTP_PASSWORD, starttls=True):
    return EmailChannel("127.0.0.1", port, "notify@demo.wuji.local", "峄城区社会治理服务中心", user=SMTP_USER,
                        password=password, starttls=starttls, timeout=5, ca_file=str(tls_files["cert"]))


def test_email_has_text_and_html_and_a_message_id_from_the_delivery():
    msg = EmailChannel("127.0.0.1", 1025, "notify@demo.wuji.local", "峄城区社会治理服务中心").compose(
        outgoing("zs@example.com"))
    assert msg["Message-ID"] == f"<{DELIVERY}@demo.wuji.local>"
    assert (msg["X-Wuji-Delivery"], msg["To"]) == (DELIVERY, "zs@example.com")
    assert msg.get_body(("plain",)).get_content().strip() == "正文：路灯 <坏了>"
    assert msg.get_body(("html",)).get_content().strip() == "<p>正文：路灯 &lt;坏了&gt;</p>"


def test_email_headers_go_out_encoded_and_folded_and_read_back_as_written():
    from dataclasses import replace
    from email import policy
    from email.parser import BytesParser
    channel = EmailChannel("127.0.0.1", 1025, "notify@demo.wuji.local", "峄城区社会治理服务中心")
    subject = "【派单通知】工单 GD20261125000001：" + "小区门口的路灯已经坏了一个多星期了一直没人来修" * 2
    text = "区住房和城乡建设局：\n\n" + "正文很长" * 100 + "\nhttp://p/x"
    sent = outgoing("zs@example.com")
    sent = replace(sent, urgent=True, message=Rendered(subject, text, "<p>" + text + "</p>"))
    wire = channel.compose(sent).as_bytes(policy=policy.SMTP)
    assert wire.isascii() and max(len(line) for line in wire.split(b"\r\n")) <= 78
    msg = BytesParser(policy=policy.default).parsebytes(wire)
    assert (msg["Subject"], msg["From"].addresses[0].display_name) == (subject, "峄城区社会治理服务中心")
    assert (msg["To"], msg["Importance"], msg["Auto-Submitted"]) == ("zs@example.com", "high", "auto-generated")
    assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n") == text + "\n"
    assert msg.get_body(("html",)).get_content().replace("\r\n", "\n") == "<p>" + text + "</p>\n"
    # a line break cannot start a header of its own (domain.render never makes one; refused anyway)
    with pytest.raises(ValueError):
        channel.compose(replace(sent, message=Rendered("回执\nBcc: someone@else.test", "t", "h")))
    with pytest.raises(ValueError):
        channel.compose(outgoing("zs@example.com\nBcc: someone@else.test"))


@pytest.mark.parametrize("to, urgent, subject", [
    ("zs@example.com", False, "【受理回执】您的诉求已受理"),
    ("一个很长的名字的市民同志 <a-rather-long-address-of-a-citizen@mail.example.com>", True,
     "【派单通知】工单 GD20261125000001：" + "小区门口的路灯已经坏了一个多星期了一直没人来修" * 3),
    ("a@b.test, c@d.test", False, "ASCII subject"),
])
def test_the_bytes_sent_read_back_as_the_composed_message(to, urgent, subject):
    """What goes on the wire is written by hand (the standard library's generator cost too much):
    it must read back, headers and parts, exactly as the message the standard library composes."""
    from dataclasses import replace
    from email import policy
    from email.parser import BytesParser
    channel = EmailChannel("127.0.0.1", 1025, "notify@demo.wuji.local", "峄城区社会治理服务中心")
    text = "区住房和城乡建设局：\n\n" + "正文很长" * 60 + "\nhttp://p/x?a=1&b=2\n最后一行"
    sent = replace(outgoing(to), urgent=urgent, message=Rendered(subject, text, "<p>" + text + "</p>"))
    wire = channel.wire(sent)
    assert wire.isascii() and max(len(line) for line in wire.split(b"\r\n")) <= 78
    assert b"\n" not in wire.replace(b"\r\n", b"")   # CRLF only
    got = BytesParser(policy=policy.default).parsebytes(wire)
    want = BytesParser(policy=policy.default).parsebytes(channel.compose(sent).as_bytes(policy=policy.SMTP))
    assert [(k, str(v)) for k, v in got.items() if k != "Date"] == \
        [(k, str(v)) for k, v in want.items() if k != "Date"]
    assert str(got["Subject"]) == subject
    for kind in ("plain", "html"):
        part, expected = got.get_body((kind,)), want.get_body((kind,))
        assert part.get_content() == expected.get_content() and part["Content-Type"] == expected["Content-Type"]
    assert [p.get_content_type() for p in got.iter_parts()] == ["text/plain", "text/html"]


def test_email_goes_over_starttls_with_auth(secure_smtp, tls_files):
    secure_email(secure_smtp.port, tls_files).send(outgoing("zs@example.com"))
    [msg] = secure_smtp.received(X_Wuji_Delivery=DELIVERY)
    assert msg["Subject"] == "【受理回执】您的诉求已受理" and msg["X-RcptTo"] == "zs@example.com"
    assert msg.get_body(("html",)) is not None


def test_email_with_a_wrong_password_holds_the_queue(secure_smtp, tls_files):
    with pytest.raises(ProviderDown):  # 535, then the server hangs up on the next mechanism
        secure_email(secure_smtp.port, tls_files, password="wrong").send(outgoing("zs@example.com"))


def test_email_without_starttls_is_refused_by_the_server(secure_smtp, tls_files):
    with pytest.raises(ProviderDown):
        secure_email(secure_smtp.port, tls_files, starttls=False).send(outgoing("zs@example.com"))


def test_email_server_with_a_certificate_we_do_not_trust(secure_smtp):
    channel = EmailChannel("127.0.0.1", secure_smtp.port, "notify@demo.wuji.local", user=SMTP_USER,
                           password=SMTP_PASSWORD, starttls=True, timeout=5)
    with pytest.raises(ProviderDown, match="SSLCertVerificationError"):
        channel.send(outgoing("zs@example.com"))


def test_email_to_a_plain_server_and_server_away(smtp_sink, unused_port):
    EmailChannel("127.0.0.1", smtp_sink.port, "notify@demo.wuji.local", timeout=5).send(outgoing("a@b.test"))
    assert smtp_sink.received(X_Wuji_Delivery=DELIVERY)
    with pytest.raises(ProviderDown, match="ConnectionRefusedError"):
        EmailChannel("127.0.0.1", unused_port, "notify@demo.wuji.local", timeout=5).send(outgoing("a@b.test"))


def peers(sink, delivery_ids):
    """The client address (host, port) each message came from: one per SMTP connection."""
    return [m["X-Peer"] for d in delivery_ids for m in sink.received(X_Wuji_Delivery=d)]


def to_deliver(n):
    from dataclasses import replace
    import uuid
    return [replace(outgoing("a@b.test"), delivery_id=str(uuid.uuid4())) for _ in range(n)]


def test_email_sends_messages_one_after_another_over_one_connection(smtp_sink, secure_smtp, tls_files):
    plain = EmailChannel("127.0.0.1", smtp_sink.port, "notify@demo.wuji.local", timeout=5)
    for channel, sink in ((plain, smtp_sink), (secure_email(secure_smtp.port, tls_files), secure_smtp)):
        messages = to_deliver(3)
        for message in messages:
            channel.send(message)
        sent_from = peers(sink, [m.delivery_id for m in messages])
        assert len(sent_from) == 3 and len(set(sent_from)) == 1  # connect, EHLO, STARTTLS, AUTH once
        assert len(channel._idle) == 1
        channel.close()
        assert channel._idle == []


def test_email_to_a_server_that_closed_the_idle_connection_goes_on_a_fresh_one(tmp_path):
    from ..conftest import SmtpSink
    sink = SmtpSink(tmp_path / "inbox").start()
    try:
        channel = EmailChannel("127.0.0.1", sink.port, "notify@demo.wuji.local", timeout=5)
        first, second, third = to_deliver(3)
        channel.send(first)
        sink.stop()   # the server restarts (or timed the idle client out): the pooled connection is dead
        sink.start()
        channel.send(second)
        channel.send(third)
        [before], [after], [then] = (peers(sink, [m.delivery_id]) for m in (first, second, third))
        assert before != after == then  # a fresh connection, kept for the next message
    finally:
        sink.stop()


def test_email_connections_idle_too_long_are_closed_and_not_reused(smtp_sink):
    now = [0.0]
    channel = EmailChannel("127.0.0.1", smtp_sink.port, "notify@demo.wuji.local", timeout=5, idle_seconds=30,
                           clock=lambda: now[0])
    first, second, third = to_deliver(3)
    channel.send(first)
    [(idle, _)] = channel._idle
    now[0] = 29.0
    channel.close_idle()
    assert channel._idle == [(idle, 0.0)]  # not yet
    channel.send(second)  # (put back at 29 s)
    now[0] = 59.0
    channel.close_idle()
    assert channel._idle == [] and idle.sock is None  # closed
    channel.send(third)
    [one], [two], [three] = (peers(smtp_sink, [m.delivery_id]) for m in (first, second, third))
    assert one == two != three


def test_email_never_shares_a_connection_between_concurrent_sends(smtp_sink):
    import threading
    channel = EmailChannel("127.0.0.1", smtp_sink.port, "notify@demo.wuji.local", timeout=5, max_idle=4)
    lanes = [to_deliver(4) for _ in range(6)]
    failures = []

    def sender(messages):
        for message in messages:
            try:
                channel.send(message)
            except Exception as exc:  # a shared connection garbles the dialogue
                failures.append(exc)
    threads = [threading.Thread(target=sender, args=(lane,)) for lane in lanes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    sent_from = peers(smtp_sink, [m.delivery_id for lane in lanes for m in lane])
    assert len(sent_from) == 24 and len(set(sent_from)) <= 6  # at most one connection per sender at once
    assert len(channel._idle) <= 4
    channel.close()


def test_email_connection_on_which_a_send_failed_is_not_reused(secure_smtp, tls_files):
    channel = secure_email(secure_smtp.port, tls_files)
    channel.send(outgoing("zs@example.com"))
    [(pooled, _)] = channel._idle
    with pytest.raises(PermanentError):  # a recipient address the server cannot take (5xx)
        channel.send(outgoing("@example.com"))
    assert channel._idle == [] and pooled.sock is None
    channel.send(outgoing("zs@example.com"))
    assert [c for c, _ in channel._idle] != [pooled]


# --- SMS ----------------------------------------------------------------------------------------------

def sms_channel(gateway, codes=None):
    return SmsChannel(gateway.base_url, gateway.account, gateway.secret, gateway.sign_name,
                      codes if codes is not None else {"citizen/appeal_received": "SMS_0001"}, timeout=5)


def test_sms_is_signed_and_carries_the_template_code_and_parameters(servers):
    gateway = servers("sms").start()
    sms_channel(gateway).send(outgoing("13812345678", channel="sms"))
    [request] = gateway.requests
    assert request.ok  # account, signature and fields checked by the gateway
    sent = request.json()
    assert (sent["PhoneNumbers"], sent["TemplateCode"], sent["OutId"]) == ("13812345678", "SMS_0001", DELIVERY)
    params = json.loads(sent["TemplateParam"])
    assert params == {"title": "小区门口的路灯已经坏了一个多星期了一直没人来修", "case_no": "YC20261125000001"}


def test_sms_signed_with_another_secret_is_refused_and_holds_the_queue(servers):
    gateway = servers("sms").start()
    channel = SmsChannel(gateway.base_url, gateway.account, "x" * 40, gateway.sign_name,
                         {"citizen/appeal_received": "SMS_0001"})
    with pytest.raises(ProviderDown, match="HTTP 401"):
        channel.send(outgoing("13812345678", channel="sms"))
    assert not gateway.requests[0].ok


@pytest.mark.parametrize("code, error", [
    ("isv.MOBILE_NUMBER_ILLEGAL", PermanentError), ("isv.BUSINESS_LIMIT_CONTROL", TransientError),
    ("isp.SYSTEM_ERROR", ProviderDown), ("isv.AMOUNT_NOT_ENOUGH", ProviderDown),
])
def test_sms_answers_sorted(servers, code, error):
    gateway = servers("sms", code=code).start()
    with pytest.raises(error, match=code) as raised:
        sms_channel(gateway).send(outgoing("13812345678", channel="sms"))
    assert type(raised.value) is error


def test_sms_without_template_code_and_gateway_away(servers, unused_port):
    gateway = servers("sms").start()
    with pytest.raises(NotConfigured):
        sms_channel(gateway, codes={}).send(outgoing("13812345678", channel="sms"))
    gateway.stop()
    with pytest.raises(ProviderDown, match="ConnectionError"):
        sms_channel(gateway).send(outgoing("13812345678", channel="sms"))


# --- WeChat -------------------------------------------------------------------------------------------

KEYWORDS = ["thing1", "character_string2", "time3", "phrase4"]


def wechat_channel(api, clock=None):
    kwargs = {"clock": clock} if clock else {}
    return WechatChannel(api.base_url, api.appid, api.appsecret, {"citizen/appeal_received": "TPL-RECEIPT"},
                         link_url="http://portal.test", timeout=5, **kwargs)


def test_wechat_template_message_with_a_cached_token(servers):
    api = servers("wechat", templates={"TPL-RECEIPT": KEYWORDS}).start()
    channel = wechat_channel(api)
    channel.send(outgoing("oAbCdEfGhIjKlMn", channel="wechat"))
    channel.send(outgoing("oAbCdEfGhIjKlMn", channel="wechat"))
    assert api.tokens_issued == 1
    [first, second] = api.sent()
    assert first["touser"] == "oAbCdEfGhIjKlMn" and first["template_id"] == "TPL-RECEIPT"
    assert first["data"]["character_string2"] == {"value": "YC20261125000001"}
    assert first["data"]["thing1"]["value"] == "小区门口的路灯已经坏了一个多星期了一直…"  # 20 characters
    assert first["data"]["time3"] == {"value": "2026年11月25日 10:00"}
    assert first["url"] == "http://portal.test"


def test_wechat_refreshes_a_token_the_api_refused(servers):
    api = servers("wechat", templates={"TPL-RECEIPT": KEYWORDS}).start()
    channel = wechat_channel(api)
    channel.send(outgoing("oAbCdEfGhIjKlMn", channel="wechat"))
    api.expire_token()  # 40001 for the cached one
    channel.send(outgoing("oAbCdEfGhIjKlMn", channel="wechat"))
    assert api.tokens_issued == 2 and len(api.sent()) == 2


def test_wechat_fetches_a_new_token_before_the_old_one_expires(servers):
    api = servers("wechat", templates={"TPL-RECEIPT": KEYWORDS}).start()
    now = [1000.0]
    channel = wechat_channel(api, clock=lambda: now[0])
    channel.send(outgoing("oAbCdEfGhIjKlMn", channel="wechat"))
    now[0] += 7200 - 299  # within the margin of expires_in
    channel.send(outgoing("oAbCdEfGhIjKlMn", channel="wechat"))
    assert api.tokens_issued == 2


@pytest.mark.parametrize("errcode, error", [(43004, PermanentError), (-1, ProviderDown), (45009, ProviderDown),
                                            (99999, TransientError)])
def test_wechat_answers_sorted(servers, errcode, error):
    api = servers("wechat", templates={"TPL-RECEIPT": KEYWORDS}).start()
    api.errcode = errcode
    with pytest.raises(error, match=str(errcode)) as raised:
        wechat_channel(api).send(outgoing("oAbCdEfGhIjKlMn", channel="wechat"))
    assert type(raised.value) is error


def test_wechat_with_a_wrong_secret_holds_the_queue(servers):
    api = servers("wechat", templates={"TPL-RECEIPT": KEYWORDS}).start()
    channel = WechatChannel(api.base_url, api.appid, "wrong", {"citizen/appeal_received": "TPL-RECEIPT"})
    with pytest.raises(ProviderDown, match="token errcode 40125"):
        channel.send(outgoing("oAbCdEfGhIjKlMn", channel="wechat"))


# --- webhooks -----------------------------------------------------------------------------------------

def test_webhook_is_signed_with_a_timestamp_and_carries_the_delivery_id(servers):
    hook = servers("webhook", secret="k" * 64).start()
    WebhookChannel(timeout=5).send(outgoing(hook.url, secret="k" * 64))
    [request] = hook.requests
    assert request.ok and request.headers["X-Wuji-Delivery"] == DELIVERY
    body = request.json()
    assert (body["type"], body["subject"], body["occurred_at"]) == \
        ("appeal_received", "【受理回执】您的诉求已受理", "2026-11-25T02:00:00+00:00")


def test_webhook_outside_the_replay_window_or_with_another_secret_does_not_verify(servers):
    hook = servers("webhook", secret="k" * 64).start()
    with pytest.raises(PermanentError, match="HTTP 401"):  # a capture replayed long after
        WebhookChannel(timeout=5, clock=lambda: 1_000_000).send(outgoing(hook.url, secret="k" * 64))
    with pytest.raises(PermanentError, match="HTTP 401"):
        WebhookChannel(timeout=5).send(outgoing(hook.url, secret="x" * 64))
    assert [r.ok for r in hook.requests] == [False, False]


@pytest.mark.parametrize("status, error", [(503, ProviderDown), (429, ProviderDown), (404, PermanentError),
                                           (302, PermanentError)])
def test_webhook_answers_sorted(servers, status, error):
    hook = servers("webhook", secret="k" * 64, status=status).start()
    with pytest.raises(error, match=f"HTTP {status}"):
        WebhookChannel(timeout=5).send(outgoing(hook.url, secret="k" * 64))


# --- inbox and rate limits ----------------------------------------------------------------------------

def test_inbox_keeps_one_message_per_delivery(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'inbox.db'}")
    metadata.create_all(engine)
    channel = InboxChannel(engine)
    channel.send(outgoing("dept-housing"))
    channel.send(outgoing("dept-housing"))  # a resend after a crash
    with engine.connect() as conn:
        [row] = conn.execute(select(InboxMessage)).all()
    assert (row.id, row.owner_code, row.subject) == (DELIVERY, "dept-housing", "【受理回执】您的诉求已受理")


def test_rate_limiter_spaces_sends_per_provider_after_a_burst():
    now, slept = [0.0], []

    def sleep(seconds):
        slept.append(round(seconds, 3))
        now[0] += seconds
    limiter = RateLimiter({"sms": 2}, clock=lambda: now[0], sleep=sleep)
    waits = [limiter.acquire("sms", "sms") for _ in range(5)]
    assert waits == [0, 0, 0.5, 0.5, 0.5]  # a burst of 2, then one every half second
    assert limiter.acquire("webhook:unit:a", "webhook") == 0  # no limit set for webhooks here
    now[0] += 10
    assert limiter.acquire("sms", "sms") == 0  # a quiet spell refills the burst

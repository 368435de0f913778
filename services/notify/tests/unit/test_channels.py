"""The two channels against real local receivers: what goes on the wire and how failures are sorted
into 'try again' and 'give up'."""
import json

import pytest

from notify.channels import EmailChannel, WebhookChannel
from notify.domain import Address, Outgoing, PermanentError, Rendered, TransientError


def outgoing(to, secret=None):
    return Outgoing(
        delivery_id="5f0c7a52-0000-4000-8000-000000000001", event_id="e-1", event_type="appeal_received",
        case_no="YC20261125000001", recipient="citizen", address=Address(to=to, secret=secret),
        message=Rendered("【受理回执】您的诉求已受理", "正文：路灯 <坏了>", "<p>正文：路灯 &lt;坏了&gt;</p>"),
        data={"title": "路灯"})


def email_channel(port):
    return EmailChannel("127.0.0.1", port, "notify@demo.wuji.local", "峄城区社会治理服务中心", timeout=5)


def test_email_has_text_and_html_and_a_message_id_from_the_delivery():
    msg = email_channel(1025).compose(outgoing("zs@example.com"))
    assert msg["Message-ID"] == "<5f0c7a52-0000-4000-8000-000000000001@demo.wuji.local>"
    assert msg["X-Wuji-Delivery"] == "5f0c7a52-0000-4000-8000-000000000001"
    assert msg["Subject"] == "【受理回执】您的诉求已受理"
    assert msg["To"] == "zs@example.com"
    assert "notify@demo.wuji.local" in msg["From"]
    assert msg.get_body(("plain",)).get_content().strip() == "正文：路灯 <坏了>"
    assert msg.get_body(("html",)).get_content().strip() == "<p>正文：路灯 &lt;坏了&gt;</p>"


def test_email_reaches_a_real_smtp_server(smtp_sink):
    email_channel(smtp_sink.port).send(outgoing("zs@example.com"))
    [msg] = smtp_sink.received(X_Wuji_Delivery="5f0c7a52-0000-4000-8000-000000000001")
    assert msg["Subject"] == "【受理回执】您的诉求已受理"
    assert msg["X-RcptTo"] == "zs@example.com"


def test_email_server_away_is_transient(unused_port):
    with pytest.raises(TransientError, match="ConnectionRefusedError"):
        email_channel(unused_port).send(outgoing("zs@example.com"))


def test_webhook_is_signed_and_carries_the_delivery_id(webhook_receiver):
    receiver = webhook_receiver(secret="k" * 64).start()
    channel = WebhookChannel(timeout=5, clock=lambda: 1764036000.7)
    channel.send(outgoing(receiver.url, secret="k" * 64))
    [request] = receiver.requests
    assert request.signature_ok
    assert request.headers["X-Wuji-Timestamp"] == "1764036000"
    assert request.headers["X-Wuji-Delivery"] == "5f0c7a52-0000-4000-8000-000000000001"
    assert request.headers["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(request.body.decode("utf-8"))["subject"] == "【受理回执】您的诉求已受理"


def test_webhook_signed_with_another_secret_does_not_verify(webhook_receiver):
    receiver = webhook_receiver(secret="k" * 64).start()
    WebhookChannel(timeout=5).send(outgoing(receiver.url, secret="x" * 64))
    assert not receiver.requests[0].signature_ok


@pytest.mark.parametrize("status, error", [
    (503, TransientError), (429, TransientError), (408, TransientError),
    (404, PermanentError), (400, PermanentError), (302, PermanentError),
])
def test_webhook_answers_sorted_into_retry_or_give_up(webhook_receiver, status, error):
    receiver = webhook_receiver(secret="k" * 64, status=status).start()
    with pytest.raises(error, match=f"HTTP {status}"):
        WebhookChannel(timeout=5).send(outgoing(receiver.url, secret="k" * 64))


def test_webhook_endpoint_away_is_transient(unused_port):
    with pytest.raises(TransientError, match="ConnectionError"):
        WebhookChannel(timeout=5).send(outgoing(f"http://127.0.0.1:{unused_port}/x", secret="k"))

"""What an attacker tries against notify's output, on the real service with real local servers:
markup in appeal text (and in a citizen's name) meant to run in a mail client, header injection in a
subject, and webhooks captured on the way and replayed, tampered or re-addressed — checked on the
receiving side by notify's reference verifier (notify.receiver), the code integrators run."""
import html.parser
import time

import pytest
import requests

from notify import content, domain
from notify.receiver import MemorySeen, WebhookRejected, WebhookVerifier

from ..conftest import wait_until
from ..interface.test_notify_service import (  # noqa: F401  (fixtures)
    CONTACTS, config, dispatched, new_case, notify, prepared_db, publish, received, rpc_notify,
)
from ..servers.providers import HttpProvider

SCRIPT = "<script>alert(document.cookie)</script>"
IMG = '<img src=x onerror="alert(1)">'
HOSTILE_TITLE = f"路灯不亮{SCRIPT}{IMG}\r\nBcc: attacker@evil.test"


class Tags(html.parser.HTMLParser):
    """The tags and attribute names of an HTML document."""

    def __init__(self, text):
        super().__init__()
        self.tags, self.attributes = set(), set()
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attributes.update(name for name, _ in attrs)


def template_markup(name):
    """The tags and attributes the district's template itself has (rendered with harmless values)."""
    templates = content.templates(name)
    values = {field: "x" for field in domain.template_fields(templates)}
    page = Tags(domain.render(templates, values, "email").html)
    return page.tags | {"br"}, page.attributes  # a line break in a value becomes <br>


def assert_inert(mail, template):
    page = mail.get_body(("html",)).get_content()
    found = Tags(page)
    tags, attributes = template_markup(template)
    assert found.tags <= tags, f"markup from the appeal made it into the e-mail: {found.tags - tags}"
    assert found.attributes <= attributes and not any(a.startswith("on") for a in found.attributes)
    assert "&lt;script&gt;" in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    # the subject stays one header: no Bcc smuggled in through a line break in the title
    assert mail["Bcc"] is None and "\n" not in str(mail["Subject"])


def test_script_and_img_onerror_in_appeal_text_and_name_stay_text_in_the_emails(
        notify, publish, rpc_notify, smtp_sink):
    case_no = new_case()
    CONTACTS[case_no] = {"name": f"张三{IMG}", "phone": None, "email": "zhangsan@example.com"}
    publish(received(case_no, title=HOSTILE_TITLE))  # the citizen's receipt
    order = dispatched(case_no, "dept-water")         # the unit's notice by e-mail (no webhook set)
    order["data"]["title"] = HOSTILE_TITLE
    publish(order)
    [receipt] = wait_until(lambda: smtp_sink.received(X_RcptTo="zhangsan@example.com", Subject=case_no),
                           what="the receipt")
    assert_inert(receipt, "citizen/appeal_received")
    assert "尊敬的张三&lt;img" in receipt.get_body(("html",)).get_content()  # the name is text too
    assert receipt["X-RcptTo"] == "zhangsan@example.com"  # nobody else got it
    [notice] = wait_until(lambda: smtp_sink.received(X_RcptTo="dept-water@", Subject=case_no[2:]),
                          what="the unit's notice")
    assert_inert(notice, "unit/order_dispatched")


# --- webhooks -----------------------------------------------------------------------------------------

class VerifyingReceiver(HttpProvider):
    """A department system that checks every request with notify.receiver and acts on new ones."""

    def __init__(self, secret=None, **kwargs):
        super().__init__(**kwargs)
        self.verifier = WebhookVerifier(secret) if secret else None
        self.acted = []

    @property
    def url(self):
        return f"{self.base_url}/wuji/notices"

    def answer(self, method, path, query, headers, body):
        try:
            verified = self.verifier.verify(headers, body)
        except WebhookRejected as refused:
            return 401, {"refused": refused.reason}, False
        if not verified.repeat:
            self.acted.append(verified.notice)
        return 200, {"repeat": verified.repeat}, True


def replay(url, captured, **changed_headers):
    headers = {k: v for k, v in captured.headers.items() if k.lower().startswith(("x-wuji", "content-type"))}
    headers.update(changed_headers)
    return requests.post(url, data=captured.body, headers=headers, timeout=5)


@pytest.fixture
def department(rpc_notify):
    """dept-water's system behind a signed webhook, checking with the reference verifier."""
    receiver = VerifyingReceiver()
    unit = rpc_notify.set_unit_contact("dept-water", webhook_url=receiver.url)
    receiver.verifier = WebhookVerifier(unit["webhook_secret"])
    receiver.start()
    yield receiver
    receiver.stop()


def test_replayed_webhook_is_rejected(notify, publish, department):
    case_no = new_case()
    publish(dispatched(case_no, "dept-water"))
    [notice] = wait_until(lambda: department.acted, what="the department's notice")
    assert notice["case_no"] == case_no
    [captured] = department.requests  # what an eavesdropper on the way kept

    # replayed at once: inside the window, but the delivery was seen: answered, not acted on again
    again = replay(department.url, captured)
    assert again.status_code == 200 and again.json() == {"repeat": True}
    # replayed under another delivery id, to pass as new: the header no longer matches what was signed
    assert replay(department.url, captured, **{"X-Wuji-Delivery": "d-0000"}).status_code == 401
    # replayed later, to a receiver that has forgotten it (restarted): the timestamp is stale
    department.verifier = WebhookVerifier(department.verifier.secret.decode(), seen=MemorySeen(),
                                          clock=lambda: time.time() + 301)
    late = replay(department.url, captured)
    assert (late.status_code, late.json()) == (401, {"refused": "timestamp outside the window"})
    # and the stale timestamp cannot be refreshed without the secret
    fresh = replay(department.url, captured, **{"X-Wuji-Timestamp": str(int(time.time()) + 301)})
    assert (fresh.status_code, fresh.json()) == (401, {"refused": "bad signature"})
    assert len(department.acted) == 1


def test_tampered_or_unsigned_webhook_is_rejected(notify, publish, department):
    case_no = new_case()
    publish(dispatched(case_no, "dept-water"))
    [captured] = wait_until(lambda: department.requests, what="a notice")
    tampered = captured.body.replace(case_no.encode(), b"YC20990101000001")  # another case's notice
    assert tampered != captured.body
    headers = {k: v for k, v in captured.headers.items() if k.lower().startswith("x-wuji")}
    assert requests.post(department.url, data=tampered, headers=headers, timeout=5).status_code == 401
    unsigned = {k: v for k, v in headers.items() if k != "X-Wuji-Signature"}
    assert requests.post(department.url, data=captured.body, headers=unsigned, timeout=5).status_code == 401
    assert len(department.acted) == 1


def test_reference_verifier_accepts_notifys_own_resend_as_a_repeat():
    """After a crash notify sends a delivery again with the same id and a fresh timestamp: the
    receiver answers it (so notify records it sent) without acting twice."""
    from notify.channels import WebhookChannel
    secret = "k" * 64
    verifier = WebhookVerifier(secret)
    outgoing = domain.Outgoing(delivery_id="d-1", event_id="e-1", event_type="order_dispatched", case_no="YC1",
                               recipient="unit:dept-water", address=domain.Address(to="http://x", secret=secret),
                               message=domain.Rendered("主题", "正文"), data={"order_no": "GD1"})
    first = WebhookChannel(clock=lambda: time.time() - 60).request(outgoing)
    resend = WebhookChannel().request(outgoing)
    assert first[1]["X-Wuji-Timestamp"] != resend[1]["X-Wuji-Timestamp"]
    assert verifier.verify(first[1], first[0]).repeat is False
    assert verifier.verify(resend[1], resend[0]).repeat is True

"""The channels a notice goes out on, behind one small interface: ``send(outgoing)`` returns when the
message was accepted, or raises :class:`TransientError` (try again later) or :class:`PermanentError`.

Both are plain blocking code (smtplib, requests); under nameko, eventlet's monkey patching makes them
green. Error summaries name the failure, never the address (an SMTP reply can quote it).
"""
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import formataddr, formatdate

import requests

from notify.domain import (
    PermanentError, TransientError, message_id, webhook_body, webhook_signature,
)

USER_AGENT = "wuji-notify/0.1"


class EmailChannel:
    """E-mail over SMTP: a text and an HTML part, and a Message-ID derived from the delivery id so
    that a receiver (or a mail client) can drop a resend of the same delivery."""
    name = "email"

    def __init__(self, host, port, mail_from, from_name="", user=None, password=None, starttls=False,
                 timeout=10):
        self.host = host
        self.port = int(port)
        self.mail_from = mail_from
        self.from_name = from_name or ""
        self.user = user or None
        self.password = password or ""
        self.starttls = starttls
        self.timeout = float(timeout)

    def compose(self, outgoing):
        msg = EmailMessage()
        msg["From"] = formataddr((self.from_name, self.mail_from)) if self.from_name else self.mail_from
        msg["To"] = outgoing.address.to
        msg["Subject"] = outgoing.message.subject
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = message_id(outgoing.delivery_id, self.mail_from)
        msg["X-Wuji-Delivery"] = outgoing.delivery_id
        msg["Auto-Submitted"] = "auto-generated"  # no out-of-office replies to a robot
        msg.set_content(outgoing.message.text)
        msg.add_alternative(outgoing.message.html, subtype="html")
        return msg

    def send(self, outgoing):
        msg = self.compose(outgoing)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.user:
                    smtp.login(self.user, self.password)
                smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = sorted({code for code, _ in exc.recipients.values()})
            raise _by_code(codes[-1] if codes else 0, f"SMTP recipient refused {codes}") from None
        except smtplib.SMTPAuthenticationError as exc:
            # the operator's credentials, not the message: keep it for a retry after the fix
            raise TransientError(f"SMTP authentication failed {exc.smtp_code}") from None
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            raise _by_code(exc.smtp_code, f"{type(exc).__name__} {exc.smtp_code}") from None
        except smtplib.SMTPResponseException as exc:
            raise TransientError(f"{type(exc).__name__} {exc.smtp_code}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientError(type(exc).__name__) from None


def _by_code(code, summary):
    # 5xx: the server will never take it; 4xx: try again later
    return PermanentError(summary) if 500 <= int(code or 0) < 600 else TransientError(summary)


class WebhookChannel:
    """A signed HTTP POST of JSON to the unit's endpoint.

    Headers: ``X-Wuji-Timestamp`` (Unix seconds), ``X-Wuji-Signature: sha256=<hex HMAC-SHA256 of
    "<timestamp>.<body>" keyed with the unit's secret>``, ``X-Wuji-Delivery`` (the delivery id, the
    same on every retry: receivers drop repeats by it). 2xx is delivered; 408, 425, 429 and 5xx are
    retried; any other answer is final. Redirects are not followed: a signed body goes only where
    the unit said.
    """
    name = "webhook"

    def __init__(self, timeout=5, clock=time.time):
        self.timeout = float(timeout)
        self.clock = clock

    def request(self, outgoing):
        """(body, headers) of the POST."""
        body = webhook_body(outgoing)
        timestamp = str(int(self.clock()))
        return body, {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
            "X-Wuji-Event": outgoing.event_type,
            "X-Wuji-Delivery": outgoing.delivery_id,
            "X-Wuji-Timestamp": timestamp,
            "X-Wuji-Signature": webhook_signature(outgoing.address.secret, timestamp, body),
        }

    def send(self, outgoing):
        body, headers = self.request(outgoing)
        try:
            response = requests.post(outgoing.address.to, data=body, headers=headers,
                                     timeout=self.timeout, allow_redirects=False)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(type(exc).__name__) from None
        except requests.RequestException as exc:  # a malformed URL and the like
            raise PermanentError(type(exc).__name__) from None
        status = response.status_code
        response.close()
        if 200 <= status < 300:
            return
        if status in (408, 425, 429) or status >= 500:
            raise TransientError(f"HTTP {status}")
        raise PermanentError(f"HTTP {status}")

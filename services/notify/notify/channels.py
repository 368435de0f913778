"""The channels a notice goes out on, behind one small interface: ``send(outgoing)`` returns when the
provider accepted the message, or raises :class:`ProviderDown` (the provider is away: hold its queue),
:class:`TransientError` (this message may go later), :class:`PermanentError` (give up on this channel)
or :class:`NotConfigured` (this channel cannot carry this notice here: try the next one).
``available`` says whether the channel is configured at all; ``carries(template)``, where a channel has
it, whether it can carry a given notice (SMS and WeChat need a template registered in advance).

All are plain blocking code (smtplib, requests, SQLAlchemy); under nameko, eventlet's monkey patching
makes them green. Error summaries name the failure, never the address or the text.
"""
import base64
import hashlib
import hmac
import json
import smtplib
import ssl
import threading
import time
import uuid
from datetime import datetime, timezone
from email import policy as email_policy
from email.header import Header
from email.message import EmailMessage, MIMEPart
from email.utils import formataddr, formatdate, getaddresses

import requests
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from notify.domain import (
    NotConfigured, PermanentError, ProviderDown, TransientError, message_id, webhook_body,
    webhook_signature,
)
from notify.models import InboxMessage

USER_AGENT = "wuji-notify/0.2"


# --- e-mail -------------------------------------------------------------------------------------------

# e-mail headers are written as they go on the wire (Message.set_raw), already encoded and folded:
# the standard library's header objects parse every value when it is set and fold it again each
# time the message is written, which made composing a message cost more than recording its send
MAX_HEADER_LINE = 78


def _fits(name, value):
    """Whether a header value may go out as it is: ASCII, on one line, short enough."""
    return value.isascii() and len(name) + 2 + len(value) <= MAX_HEADER_LINE and not (
        "\n" in value or "\r" in value)


def _folded(name, value):
    """A header value encoded (RFC 2047) and folded once by the standard library (for the From
    header, the same on every message)."""
    msg = EmailMessage()
    msg[name] = value
    return email_policy.default.fold(name, msg[name])[len(name) + 2:].rstrip("\r\n")


def _encoded(name, value):
    """A header value with non-ASCII text or too long for one line as RFC 2047 encoded words,
    folded. A line break in it is refused, as the standard library does (no header smuggled in)."""
    if _fits(name, value):
        return value
    if "\n" in value or "\r" in value:
        raise ValueError("Header values may not contain linefeed or carriage return characters")
    return Header(value, "utf-8", header_name=name, maxlinelen=MAX_HEADER_LINE).encode(linesep="\n")


def _base64_text(text):
    """UTF-8 text in base64 lines ("\n" after each), the text's own lines ended by CRLF first
    (MIME's canonical form of text, as an 8bit part arrives; its line breaks are its only ones)."""
    lines = text.encode("utf-8").splitlines()
    return base64.encodebytes(b"\r\n".join(lines) + b"\r\n").decode("ascii")


def _text_part(subtype, text):
    """A UTF-8 text part in base64 (:func:`_base64_text`)."""
    part = MIMEPart()
    part.set_raw("Content-Type", f'text/{subtype}; charset="utf-8"')
    part.set_raw("Content-Transfer-Encoding", "base64")
    part.set_payload(_base64_text(text))
    return part


# how long a connection may wait in the pool for the next message. Mail servers hang up on idle
# clients (RFC 5321 asks them to wait 5 minutes; relays often wait less, some 30 s): closed by us
# before the server does, a pooled connection is rarely found dead, and a quiet notify holds none
SMTP_IDLE_SECONDS = 30
# idle connections kept per channel: one per sender (SENDERS, 6) that may be sending e-mail, and a
# few spare; beyond that a connection is closed when its send is done
SMTP_MAX_IDLE = 8


def _dropped(exc):
    """Whether a pooled connection failed because the server had closed it while it was idle (its
    own idle time-out, a restart): the message was not taken, and a fresh connection may go."""
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code == 421   # "closing the connection": smtplib has closed it already
    return isinstance(exc, (smtplib.SMTPServerDisconnected, ConnectionError))


class EmailChannel:
    """E-mail over SMTP (STARTTLS and AUTH when configured): a text and an HTML part, and a
    Message-ID derived from the delivery id so that a receiver (or a mail client) can drop a resend
    of the same delivery.

    Connections are reused: a send takes an idle one from the channel's pool (or opens one:
    connect, EHLO, STARTTLS, AUTH), uses it alone and puts it back when the server has accepted the
    message; one idle longer than ``idle_seconds`` is closed (:meth:`close_idle`), and so is one on
    which a message failed. A pooled connection the server had closed meanwhile is dropped and the
    message sent once more on a fresh one; a fresh connection's failure is the send's. ``close()``
    ends them all (the service's stop)."""
    name = "email"

    def __init__(self, host, port, mail_from, from_name="", user=None, password=None, starttls=False,
                 timeout=10, ca_file=None, idle_seconds=SMTP_IDLE_SECONDS, max_idle=SMTP_MAX_IDLE,
                 clock=time.monotonic):
        self.host = host
        self.port = int(port or 25)
        self.mail_from = mail_from
        self.from_name = from_name or ""
        self.user = user or None
        self.password = password or ""
        self.starttls = starttls
        self.timeout = float(timeout)
        self.ca_file = ca_file or None  # a private CA (the district's mail relay); else the system's
        sender = formataddr((self.from_name, self.mail_from)) if self.from_name else self.mail_from
        self.from_header = _folded("From", sender)
        self.envelope_from = getaddresses([sender])[0][1]
        self.idle_seconds = float(idle_seconds)
        self.max_idle = int(max_idle)
        self.clock = clock
        self._idle = []                 # [(connection, put back at)], the most recent last
        self._lock = threading.Lock()   # green under eventlet; never held across the network
        self._closed = False
        self._tls = None

    @property
    def available(self):
        return bool(self.host)

    def compose(self, outgoing):
        """The message as an EmailMessage (a recipient address that is not ASCII goes out this way:
        send_message then speaks SMTPUTF8). :meth:`wire` writes the same message as bytes."""
        msg = EmailMessage()
        msg.set_raw("From", self.from_header)
        to = outgoing.address.to
        if _fits("To", to):
            msg.set_raw("To", to)
        else:
            msg["To"] = to  # parsed and checked by the standard library (refuses a line break)
        for name, value in self._headers(outgoing):
            msg.set_raw(name, value)
        msg.set_payload([_text_part("plain", outgoing.message.text), _text_part("html", outgoing.message.html)])
        return msg

    def wire(self, outgoing):
        """The message as it goes on the wire (CRLF, ASCII), for a recipient address in ASCII: the
        headers as :meth:`compose` sets them, the two parts in base64. Written here rather than by
        the standard library's generator, which parsed every header and part header again to write
        them out (a sixth of notify's time under load); it reads back as :meth:`compose`'s message."""
        to = outgoing.address.to
        headers = [("From", self.from_header), ("To", to if _fits("To", to) else _folded("To", to)),
                   *self._headers(outgoing)]
        boundary = f"=_{outgoing.delivery_id}"
        head = "\n".join(f"{name}: {value}" for name, value in headers).replace("\n", "\r\n")
        parts = ""
        for subtype, text in (("plain", outgoing.message.text), ("html", outgoing.message.html)):
            body = _base64_text(text).replace("\n", "\r\n")
            parts += (f'--{boundary}\r\nContent-Type: text/{subtype}; charset="utf-8"\r\n'
                      f"Content-Transfer-Encoding: base64\r\n\r\n{body}\r\n")
        return f"{head}\r\n\r\n{parts}--{boundary}--\r\n".encode("ascii")

    def _headers(self, outgoing):
        """The headers after From and To, encoded and folded as they go out (a folded value's lines
        joined by a newline)."""
        headers = [("Subject", _encoded("Subject", outgoing.message.subject)),
                   ("Date", formatdate(localtime=False)),
                   ("Message-ID", message_id(outgoing.delivery_id, self.mail_from)),
                   ("X-Wuji-Delivery", outgoing.delivery_id),
                   ("Auto-Submitted", "auto-generated")]  # no out-of-office replies to a robot
        if outgoing.urgent:
            headers.append(("Importance", "high"))
        # base64 never has "-" at the start of a line: the boundary cannot occur in the parts
        headers += [("MIME-Version", "1.0"),
                    ("Content-Type", f'multipart/alternative;\n boundary="=_{outgoing.delivery_id}"')]
        return headers

    def send(self, outgoing):
        msg = self.wire(outgoing) if outgoing.address.to.isascii() else self.compose(outgoing)
        # the envelope as send_message would read it from the headers, without parsing them
        recipients = [address for _, address in getaddresses([outgoing.address.to])]
        try:
            pooled = self._take()
            if pooled is not None:
                try:
                    return self._send_on(pooled, msg, recipients)
                except Exception as exc:
                    if not _dropped(exc):
                        raise
                    # closed by the server while idle, before it took the message: once more on a
                    # fresh connection (if it had taken it, the same Message-ID lets it drop the repeat)
            self._send_on(self._connect(), msg, recipients)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = sorted({code for code, _ in exc.recipients.values()})
            raise _by_code(codes[-1] if codes else 0, f"SMTP recipient refused {codes}") from None
        except smtplib.SMTPAuthenticationError as exc:
            # the operator's credentials, not the message: hold the queue until they are fixed
            raise ProviderDown(f"SMTP authentication failed {exc.smtp_code}") from None
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            raise _by_code(exc.smtp_code, f"{type(exc).__name__} {exc.smtp_code}") from None
        except smtplib.SMTPResponseException as exc:
            raise ProviderDown(f"{type(exc).__name__} {exc.smtp_code}") from None
        except (smtplib.SMTPException, ssl.SSLError, OSError) as exc:
            raise ProviderDown(type(exc).__name__) from None

    def _connect(self):
        smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            if self.starttls:
                smtp.starttls(context=self._tls_context())
            if self.user:
                smtp.login(self.user, self.password)
        except BaseException:
            _quit(smtp)
            raise
        return smtp

    def _tls_context(self):
        if self._tls is None:  # read the CA file once, not for every connection
            self._tls = ssl.create_default_context(cafile=self.ca_file)
        return self._tls

    def _send_on(self, smtp, msg, recipients):
        """Send on a connection this send alone holds; back to the pool if the server took the
        message, closed if anything failed (the session may be mid-transaction)."""
        try:
            if isinstance(msg, bytes):
                smtp.sendmail(self.envelope_from, recipients, msg)
            else:
                smtp.send_message(msg, self.envelope_from, recipients)
        except BaseException:
            _quit(smtp)
            raise
        self._give_back(smtp)

    def _take(self):
        """An idle connection, most recently used first (the least likely to have been closed by
        the server), or None; those idle too long are closed on the way."""
        expired = []
        with self._lock:
            now = self.clock()
            while self._idle:
                smtp, since = self._idle.pop()
                if now - since < self.idle_seconds:
                    taken = smtp
                    break
                expired.append(smtp)
            else:
                taken = None
            # whatever is older than the one taken is older still
            expired += [smtp for smtp, since in self._idle if now - since >= self.idle_seconds]
            self._idle = [(smtp, since) for smtp, since in self._idle if now - since < self.idle_seconds]
        for smtp in expired:
            _quit(smtp)
        return taken

    def _give_back(self, smtp):
        with self._lock:
            if not self._closed and len(self._idle) < self.max_idle:
                self._idle.append((smtp, self.clock()))
                return
        _quit(smtp)

    def close_idle(self):
        """Close the connections idle for ``idle_seconds`` or more."""
        with self._lock:
            now = self.clock()
            expired = [smtp for smtp, since in self._idle if now - since >= self.idle_seconds]
            self._idle = [(smtp, since) for smtp, since in self._idle if now - since < self.idle_seconds]
        for smtp in expired:
            _quit(smtp)

    def close(self):
        """Close every idle connection; those in use are closed when their send is done."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for smtp, _ in idle:
            _quit(smtp)


def _quit(smtp):
    """QUIT politely if the server still listens; the socket is closed either way."""
    try:
        smtp.quit()
    except Exception:
        pass
    finally:
        smtp.close()


def _by_code(code, summary):
    # 421: the server is going away; other 4xx: try this message later; 5xx: never
    code = int(code or 0)
    if code == 421:
        return ProviderDown(summary)
    return PermanentError(summary) if 500 <= code < 600 else TransientError(summary)


# --- webhooks -----------------------------------------------------------------------------------------

class WebhookChannel:
    """A signed HTTP POST of JSON to a unit's or a subscriber's endpoint.

    Headers: ``X-Wuji-Timestamp`` (Unix seconds), ``X-Wuji-Signature: sha256=<hex HMAC-SHA256 of
    "<timestamp>.<body>" keyed with the endpoint's secret>``, ``X-Wuji-Delivery`` (the delivery id, the
    same on every retry: receivers drop repeats by it). 2xx is delivered; 408, 425, 429, 5xx and no
    answer hold the endpoint's queue; any other answer is final. Redirects are not followed: a
    signed body goes only where the endpoint's owner said.
    """
    name = "webhook"
    available = True

    def __init__(self, timeout=5, clock=time.time):
        self.timeout = float(timeout)
        self.clock = clock
        self.session = requests.Session()  # keep-alive: one connection per endpoint, not per notice

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
        status = _post(self.session, outgoing.address.to, body, headers, self.timeout).status_code
        if 200 <= status < 300:
            return
        raise _by_status(status)


def _post(session, url, body, headers, timeout):
    try:
        response = session.post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise ProviderDown(type(exc).__name__) from None
    except requests.RequestException as exc:  # a malformed URL and the like
        raise PermanentError(type(exc).__name__) from None
    response.close()
    return response


def _by_status(status):
    if status in (408, 425, 429) or status >= 500:
        return ProviderDown(f"HTTP {status}")
    return PermanentError(f"HTTP {status}")


# --- SMS ----------------------------------------------------------------------------------------------

# SendSms answer codes (the Aliyun names most domestic gateways copy) and what they mean here
SMS_PROVIDER_CODES = {"isp.SYSTEM_ERROR", "Throttling.User", "isv.OUT_OF_SERVICE", "isv.AMOUNT_NOT_ENOUGH",
                      "isv.ACCOUNT_ABNORMAL", "isv.ACCOUNT_NOT_EXISTS", "SignatureDoesNotMatch"}
SMS_MESSAGE_LATER = {"isv.BUSINESS_LIMIT_CONTROL", "isv.DAY_LIMIT_CONTROL"}  # per-number flow control
SMS_PERMANENT = {"isv.MOBILE_NUMBER_ILLEGAL", "isv.SMS_TEMPLATE_ILLEGAL", "isv.SMS_SIGNATURE_ILLEGAL",
                 "isv.TEMPLATE_MISSING_PARAMETERS", "isv.INVALID_PARAMETERS", "isv.PARAM_LENGTH_LIMIT",
                 "isv.BLACK_KEY_CONTROL_LIMIT", "isv.MOBILE_COUNT_OVER_LIMIT", "isv.DENY_IP_RANGE"}


def sms_signature(secret, account, timestamp, nonce, body):
    """Hex HMAC-SHA256 over ``account \\n timestamp \\n nonce \\n body`` keyed with the account secret."""
    signed = f"{account}\n{timestamp}\n{nonce}\n".encode("utf-8") + body
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


class SmsChannel:
    """SMS through the district's HTTP SMS gateway, in the request shape of Alibaba Cloud's SendSms
    (which the common domestic providers and gateways follow): a JSON POST to ``<base>/sms/send`` of

        {"PhoneNumbers", "SignName", "TemplateCode", "TemplateParam": "<JSON of the variables>",
         "OutId": "<delivery id>"}

    signed by headers ``X-Sms-Account``, ``X-Sms-Timestamp``, ``X-Sms-Nonce`` and ``X-Sms-Signature``
    (hex HMAC-SHA256 of "account\\ntimestamp\\nnonce\\nbody" with the account secret). The answer is
    ``{"Code": "OK", "BizId": ...}`` or an error code. Carriers only deliver templates registered in
    advance, so the text is the provider's; notify sends its template code (``SMS_TEMPLATE_CODES``,
    keyed by "<audience>/<event_type>") and the variables its ``.sms.txt`` names.
    """
    name = "sms"

    def __init__(self, base_url, account, secret, sign_name, template_codes, timeout=5, clock=time.time):
        self.base_url = (base_url or "").rstrip("/")
        self.account = account or ""
        self.secret = secret or ""
        self.sign_name = sign_name or ""
        self.template_codes = dict(template_codes or {})
        self.timeout = float(timeout)
        self.clock = clock
        self.session = requests.Session()

    @property
    def available(self):
        return bool(self.base_url)

    def carries(self, template):
        """Whether this notice has a registered template here (else the citizen's number is not
        even looked up)."""
        return bool(self.template_codes.get(template))

    def request(self, outgoing):
        code = self.template_codes.get(outgoing.template)
        if not code:
            raise NotConfigured(f"no SMS template code for {outgoing.template}")
        body = json.dumps({
            "PhoneNumbers": outgoing.address.to, "SignName": self.sign_name, "TemplateCode": code,
            "TemplateParam": json.dumps(outgoing.message.sms_params, ensure_ascii=False, sort_keys=True),
            "OutId": outgoing.delivery_id,
        }, ensure_ascii=False, sort_keys=True).encode("utf-8")
        timestamp, nonce = str(int(self.clock())), uuid.uuid4().hex
        return body, {
            "Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT,
            "X-Sms-Account": self.account, "X-Sms-Timestamp": timestamp, "X-Sms-Nonce": nonce,
            "X-Sms-Signature": sms_signature(self.secret, self.account, timestamp, nonce, body),
        }

    def send(self, outgoing):
        body, headers = self.request(outgoing)
        response = _post(self.session, f"{self.base_url}/sms/send", body, headers, self.timeout)
        if response.status_code in (401, 403):
            raise ProviderDown(f"HTTP {response.status_code}")  # our account or signature: hold the queue
        if not 200 <= response.status_code < 300:
            raise _by_status(response.status_code)
        code = _json(response).get("Code")
        if code == "OK":
            return
        summary = f"SMS {code}"
        if code in SMS_PROVIDER_CODES:
            raise ProviderDown(summary)
        if code in SMS_PERMANENT:
            raise PermanentError(summary)
        raise TransientError(summary)


def _json(response):
    try:
        value = response.json()
    except ValueError:
        raise ProviderDown("answer is not JSON") from None
    return value if isinstance(value, dict) else {}


# --- WeChat official account --------------------------------------------------------------------------

WECHAT_TOKEN_INVALID = {40001, 40014, 42001}           # refresh the access token and try once more
WECHAT_PROVIDER = {-1, 45009, 45011, 40013, 40125, 40164, 41004}  # busy, quota, our app id/secret/IP
WECHAT_PERMANENT = {40003, 43004, 43101, 40037, 47003, 41028, 41029}  # bad openid, unsubscribed, template


class WechatChannel:
    """Template messages (模板消息) of the "榴乡诉递" official account to a citizen's openid.

    The access token (``GET /cgi-bin/token``) is cached until shortly before it expires and shared by
    every worker; an answer that it is invalid or expired (40001, 40014, 42001) fetches a new one and
    sends once more. Template ids come from ``WECHAT_TEMPLATE_IDS`` keyed by "<audience>/<event_type>";
    the keywords and their values from the template's ``.wechat.yml``.
    """
    name = "wechat"

    def __init__(self, api_base, appid, appsecret, template_ids, link_url="", timeout=5,
                 clock=time.monotonic, margin_seconds=300):
        self.api_base = (api_base or "https://api.weixin.qq.com").rstrip("/")
        self.appid = appid or ""
        self.appsecret = appsecret or ""
        self.template_ids = dict(template_ids or {})
        self.link_url = link_url or ""
        self.timeout = float(timeout)
        self.clock = clock
        self.margin = float(margin_seconds)
        self.session = requests.Session()
        self._lock = threading.Lock()   # green under eventlet: one token fetch at a time
        self._token = None
        self._expires = 0.0

    @property
    def available(self):
        return bool(self.appid)

    def carries(self, template):
        return bool(self.template_ids.get(template))

    def access_token(self, stale=None):
        """The cached token, fetched anew when it is about to expire or when ``stale`` was refused."""
        with self._lock:
            if self._token and self._token != stale and self.clock() < self._expires:
                return self._token
            try:
                response = self.session.get(f"{self.api_base}/cgi-bin/token", timeout=self.timeout, params={
                    "grant_type": "client_credential", "appid": self.appid, "secret": self.appsecret})
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise ProviderDown(f"token {type(exc).__name__}") from None
            if not 200 <= response.status_code < 300:
                raise ProviderDown(f"token HTTP {response.status_code}")
            answer = _json(response)
            if not answer.get("access_token"):
                raise ProviderDown(f"token errcode {answer.get('errcode')}")
            self._token = answer["access_token"]
            self._expires = self.clock() + float(answer.get("expires_in", 7200)) - self.margin
            return self._token

    def message(self, outgoing):
        template_id = self.template_ids.get(outgoing.template)
        if not template_id:
            raise NotConfigured(f"no WeChat template id for {outgoing.template}")
        return {"touser": outgoing.address.to, "template_id": template_id, "url": self.link_url,
                "data": outgoing.message.wechat_data}

    def send(self, outgoing):
        body = json.dumps(self.message(outgoing), ensure_ascii=False).encode("utf-8")
        token = self.access_token()
        for _ in range(2):
            response = _post(self.session, f"{self.api_base}/cgi-bin/message/template/send?access_token={token}",
                             body, {"Content-Type": "application/json; charset=utf-8"}, self.timeout)
            if not 200 <= response.status_code < 300:
                raise _by_status(response.status_code)
            errcode = int(_json(response).get("errcode", 0) or 0)
            if errcode == 0:
                return
            if errcode not in WECHAT_TOKEN_INVALID:
                break
            token = self.access_token(stale=token)
        summary = f"WeChat errcode {errcode}"
        if errcode in WECHAT_PROVIDER or errcode in WECHAT_TOKEN_INVALID:
            raise ProviderDown(summary)
        if errcode in WECHAT_PERMANENT:
            raise PermanentError(summary)
        raise TransientError(summary)


# --- in-platform inbox --------------------------------------------------------------------------------

class InboxChannel:
    """The unit's or grid worker's inbox in notify's own database (read with ``notify.inbox``). The
    message id is the delivery id: a resend after a crash clashes on the key and is not a second
    message, so this channel is exactly once."""
    name = "inbox"
    available = True

    def __init__(self, engine, clock=None):
        self.engine = engine
        self.clock = clock or (lambda: datetime.now(timezone.utc))

    def send(self, outgoing):
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(InboxMessage).values(
                    id=outgoing.delivery_id, owner_code=outgoing.address.to, event_type=outgoing.event_type,
                    case_no=outgoing.case_no, subject=outgoing.message.subject[:200],
                    text=outgoing.message.text, urgent=outgoing.urgent,
                    created_at=self.clock()))
        except IntegrityError:
            return  # put there by an earlier try whose outcome was lost
        except Exception as exc:
            raise ProviderDown(type(exc).__name__) from None


# --- rate limits --------------------------------------------------------------------------------------

class RateLimiter:
    """At most ``rate`` sends a second per provider (after a burst of ``rate``), per notify instance.
    A send waits for its slot; waiting keeps the order in which sends asked. Slots are taken without
    yielding in between, so green threads need no lock."""

    def __init__(self, rates, clock=time.monotonic, sleep=time.sleep):
        self.rates = {k: float(v) for k, v in (rates or {}).items() if v and float(v) > 0}
        self.clock = clock
        self.sleep = sleep
        self.next_slot = {}

    def acquire(self, provider, channel):
        """Wait until ``provider`` (limited at ``rates[channel]``) may be sent to; returns the wait."""
        rate = self.rates.get(channel)
        if not rate:
            return 0.0
        interval, burst = 1.0 / rate, max(1.0, rate)
        now = self.clock()
        earliest = now - (burst - 1) * interval
        slot = max(earliest, self.next_slot.get(provider, earliest))
        self.next_slot[provider] = slot + interval
        wait = slot - now
        if wait > 0:
            self.sleep(wait)
        return max(0.0, wait)

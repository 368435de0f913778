"""notify's rules, free of I/O: who is told about which event, how a message is rendered and
signed, how addresses are masked, and when a failed delivery is tried again."""
import hashlib
import hmac
import html
import json
import string
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from wuji_common.events import CATALOGUE

RECIPIENT_KINDS = ("citizen", "unit")
CHANNELS = ("email", "webhook")
CITIZEN = "citizen"

PENDING, SENT, FAILED, SKIPPED = "pending", "sent", "failed", "skipped"

# Yicheng keeps China Standard Time all year (no daylight saving), so a fixed offset is exact
CHINA_TIME = timezone(timedelta(hours=8), "CST")

LEVEL_TEXT = {"grid": "网格", "town": "镇街", "district": "区直部门"}


# --- errors a channel raises ---------------------------------------------------------------------

class DeliveryError(Exception):
    """A send that did not go through. ``summary`` goes to the delivery log, so it names the kind of
    failure (exception type, SMTP or HTTP status) and never an address or a message text."""

    def __init__(self, summary):
        super().__init__(summary)
        self.summary = summary[:200]


class TransientError(DeliveryError):
    """Worth trying again later: connection refused, time-out, 4xx SMTP reply, HTTP 5xx/408/429."""


class PermanentError(DeliveryError):
    """Trying again will not help (address refused, endpoint answered 4xx): failed at once."""


def error_summary(exc):
    """What the log may say about an unexpected exception: its type only (its text can carry data)."""
    return exc.summary if isinstance(exc, DeliveryError) else type(exc).__name__


# --- rules: which events notify whom ---------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    event_type: str
    recipient: str            # citizen | unit (the unit named by the event's unit_code)
    channels: tuple
    template: str
    fields: tuple             # event fields the template may use; only these are stored


def parse_rules(mapping):
    """``{event_type: [rule, ...]}`` from rules.yml; refuses unknown events, recipients, channels and
    fields that the event does not carry, so a typo fails at start-up rather than at send time."""
    rules = {}
    for event_type, entries in (mapping or {}).items():
        if event_type not in CATALOGUE:
            raise ValueError(f"rules: unknown event type {event_type!r}")
        payload_fields = set(CATALOGUE[event_type][2]().fields)
        parsed = []
        for entry in entries:
            recipient = entry["recipient"]
            channels = tuple(entry["channels"])
            wanted = tuple(entry.get("fields", ()))
            if recipient not in RECIPIENT_KINDS:
                raise ValueError(f"rules: {event_type}: unknown recipient {recipient!r}")
            if not channels or set(channels) - set(CHANNELS):
                raise ValueError(f"rules: {event_type}: channels must be among {CHANNELS}")
            if recipient == "unit" and "unit_code" not in payload_fields:
                raise ValueError(f"rules: {event_type} names no unit to notify")
            unknown = set(wanted) - payload_fields
            if unknown:
                raise ValueError(f"rules: {event_type}: the event carries no {sorted(unknown)}")
            parsed.append(Rule(event_type, recipient, channels, entry["template"], wanted))
        rules[event_type] = parsed
    return rules


@dataclass(frozen=True)
class Planned:
    """A delivery to reserve: recipient key, kind, channel, template and what it renders."""
    recipient: str
    recipient_kind: str
    channel: str
    template: str
    context: dict
    unit_code: str | None = None
    skip_reason: str | None = None   # known before sending (an anonymous appeal has no one to tell)


def plan(rules, envelope):
    """The deliveries an event calls for, one per recipient and channel."""
    data = envelope["data"]
    planned = []
    for rule in rules.get(envelope["type"], ()):
        context = {"case_no": envelope["case_no"], **{f: data.get(f) for f in rule.fields}}
        if rule.recipient == CITIZEN:
            skip = "anonymous" if data.get("anonymous") else None
            for channel in rule.channels:
                planned.append(Planned(CITIZEN, CITIZEN, channel, rule.template, context,
                                       skip_reason=skip))
        else:
            unit_code = data["unit_code"]
            for channel in rule.channels:
                planned.append(Planned(f"unit:{unit_code}", "unit", channel, rule.template, context,
                                       unit_code=unit_code))
    return planned


# --- addresses ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Address:
    """Where one delivery goes now, or why it goes nowhere."""
    to: str | None = None
    secret: str | None = None      # the unit's webhook secret
    name: str | None = None        # the citizen's name, for the salutation only
    skip_reason: str | None = None


def citizen_address(channel, contact):
    """The citizen's address on ``channel`` from intake's contact (None: anonymous or unknown)."""
    if contact is None:
        return Address(skip_reason="no_contact")
    if channel == "email":
        email = (contact.get("email") or "").strip()
        if not email:
            # SMS and WeChat come later; until then a citizen without e-mail gets nothing
            return Address(skip_reason="no_email")
        return Address(to=email, name=contact.get("name"))
    return Address(skip_reason=f"no_{channel}")


def unit_address(channel, unit):
    """A unit's address on ``channel`` from its contact row (None: unit not configured)."""
    if unit is None:
        return Address(skip_reason="unknown_unit")
    if channel == "email":
        return Address(to=unit.email) if unit.email else Address(skip_reason="no_email")
    if channel == "webhook":
        if unit.webhook_url and unit.webhook_secret:
            return Address(to=unit.webhook_url, secret=unit.webhook_secret)
        return Address(skip_reason="no_webhook")
    return Address(skip_reason=f"no_{channel}")


def has_webhook(unit):
    return unit is not None and bool(unit.webhook_url) and bool(unit.webhook_secret)


def mask_email(email):
    """zhangsan@example.com → z***@example.com: enough to tell addresses apart in the log."""
    if not email or "@" not in email:
        return "***"
    local, _, domain = email.rpartition("@")
    return f"{local[:1]}***@{domain}"


def logged_address(recipient_kind, channel, address):
    """What the delivery log keeps of an address: masked for a citizen, the endpoint for a unit."""
    if address.to is None:
        return None
    if recipient_kind == CITIZEN:
        return mask_email(address.to) if channel == "email" else "***"
    return address.to


# --- rendering ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TemplateSet:
    subject: str
    text: str
    html: str


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


def local_time_text(iso):
    """'2026-11-25T10:00:00+00:00' → '2026年11月25日 18:00' (China time)."""
    if not iso:
        return ""
    at = datetime.fromisoformat(iso)
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    at = at.astimezone(CHINA_TIME)
    return f"{at.year}年{at.month}月{at.day}日 {at:%H:%M}"


def salutation(name):
    return f"尊敬的{name}，您好：" if name else "您好："


def template_values(context, **extra):
    """The values a template sees: the stored event fields (times in China time, codes in words)
    plus what is known only at send time (salutation, unit name, portal URL)."""
    values = {}
    for key, value in {**context, **extra}.items():
        if key.endswith("_at"):
            value = local_time_text(value)
        elif key == "level":
            value = LEVEL_TEXT.get(value, value)
        values[key] = "" if value is None else str(value)
    return values


def render(templates, values):
    """Subject and text as written; in the HTML part every value is escaped (appeal titles and
    resolutions are free text) and line breaks kept."""
    escaped = {k: html.escape(v).replace("\n", "<br>\n") for k, v in values.items()}
    return Rendered(
        subject=" ".join(string.Template(templates.subject).substitute(values).split()),
        text=string.Template(templates.text).substitute(values),
        html=string.Template(templates.html).substitute(escaped),
    )


def template_fields(templates):
    """Names a template set uses (for checking templates against the rules)."""
    names = set()
    for text in (templates.subject, templates.text, templates.html):
        for match in string.Template.pattern.finditer(text):
            name = match.group("named") or match.group("braced")
            if name:
                names.add(name)
    return names


# --- e-mail and webhooks ---------------------------------------------------------------------------

def message_id(delivery_id, mail_from):
    """The same delivery always carries the same Message-ID, so a receiver can drop a resend."""
    domain = mail_from.rpartition("@")[2].strip("> ") or "notify.wuji.local"
    return f"<{delivery_id}@{domain}>"


@dataclass(frozen=True)
class Outgoing:
    """Everything a channel needs to send one delivery."""
    delivery_id: str
    event_id: str
    event_type: str
    case_no: str | None
    recipient: str
    address: Address
    message: Rendered
    data: dict = field(default_factory=dict)


def webhook_body(outgoing):
    """The JSON a unit's endpoint receives: the notice in words plus the fields it was made from."""
    return json.dumps({
        "delivery_id": outgoing.delivery_id,
        "event_id": outgoing.event_id,
        "type": outgoing.event_type,
        "case_no": outgoing.case_no,
        "recipient": outgoing.recipient,
        "subject": outgoing.message.subject,
        "text": outgoing.message.text,
        "data": outgoing.data,
    }, ensure_ascii=False, sort_keys=True).encode("utf-8")


def webhook_signature(secret, timestamp, body):
    """``sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`` keyed with the unit's secret."""
    mac = hmac.new(secret.encode("utf-8"), str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify_webhook_signature(secret, timestamp, body, signature, now, tolerance=300):
    """What a receiving unit does: the signature matches and the timestamp is recent (no replays of
    old captures)."""
    try:
        fresh = abs(now - int(timestamp)) <= tolerance
    except (TypeError, ValueError):
        return False
    return fresh and hmac.compare_digest(webhook_signature(secret, timestamp, body), signature or "")


# --- retries --------------------------------------------------------------------------------------

def next_attempt_after_failure(attempts, delays, now):
    """When to try again after ``attempts`` failed tries, or None when they are used up (dead)."""
    if attempts <= len(delays):
        return now + timedelta(seconds=float(delays[attempts - 1]))
    return None


def demo_unit_email(unit_code):
    return f"{unit_code}@demo.wuji.local"

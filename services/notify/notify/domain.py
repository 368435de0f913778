"""notify's rules, free of I/O: who is told about which event on which channels (in order of
preference), how a message is rendered for each channel and signed, how addresses are masked, when a
failed delivery is tried again, and when a citizen's quiet hours hold a message back."""
import hashlib
import hmac
import html
import json
import random
import re
import string
from dataclasses import dataclass, field
from functools import lru_cache
from datetime import datetime, time, timedelta, timezone

from wuji_common.events import CATALOGUE, CHINA_TIME
from wuji_common.privacy import mask_phone

CITIZEN = "citizen"
# who a rule can name; "unit" is the unit an order went to (a grid worker when the order is the grid's)
RECIPIENTS = ("citizen", "unit", "grid_worker", "force", "supervisor")
# who a template is written for
AUDIENCES = ("citizen", "unit", "grid_worker", "force", "supervisor")
STAFF_KINDS = ("unit", "grid_worker", "force", "supervisor")
SUBSCRIBER = "subscriber"
CHANNELS = ("inbox", "wechat", "sms", "email", "webhook")
# channels that make a phone buzz: a citizen's quiet hours hold non-urgent news back on these
DISTURBING = ("wechat", "sms")
# channels whose receiver drops a repeat by the delivery id (inbox: a key clash; webhook:
# X-Wuji-Delivery; e-mail: Message-ID). A send interrupted by a crash is sent again on these; on the
# others (SMS, WeChat) it is not, so that nobody is told twice: it is dead-listed for ops to check
IDEMPOTENT_CHANNELS = ("inbox", "webhook", "email")
# the template files each channel renders from (templates/<audience>/<event_type>.<part>)
CHANNEL_PARTS = {
    "inbox": ("subject.txt", "txt"),
    "webhook": ("subject.txt", "txt"),
    "email": ("subject.txt", "txt", "html"),
    "sms": ("sms.txt",),
    "wechat": ("wechat.yml",),
}
# reference unit types (wuji_common/reference/units.csv) → recipient kind
KIND_OF_UNIT_TYPE = {"district_department": "unit", "town_office": "unit", "grid_worker": "grid_worker",
                     "command_centre": "supervisor"}

PENDING, SENT, FAILED, SKIPPED = "pending", "sent", "failed", "skipped"

LEVEL_TEXT = {"grid": "网格", "town": "镇街", "district": "区直部门"}
# the words people read for enforcement's codes (enforcement/data/competence.yml and forces.csv)
VIOLATION_TEXT = {
    "illegal_construction": "违法建设", "illegal_land_use": "违法占地", "illegal_mining": "非法采矿",
    "illegal_sand_mining": "非法采砂", "unlicensed_business": "无证经营", "environmental_pollution": "环境污染",
    "road_occupation": "占道经营", "food_safety": "食品安全", "fire_hazard": "消防隐患",
    "production_safety": "安全生产隐患", "overloaded_transport": "超限超载运输", "straw_burning": "秸秆露天焚烧",
    "illegal_medical_practice": "非法行医", "unlicensed_entertainment": "无证经营娱乐场所",
    "illegal_fishing": "非法捕捞"}
FORCE_TEXT = {
    "public_security": "公安", "market_supervision": "市场监管", "comprehensive_enforcement": "综合行政执法",
    "natural_resources": "自然资源", "ecology_environment": "生态环境", "housing_construction": "住房城乡建设",
    "emergency_management": "应急管理", "fire_rescue": "消防救援", "agriculture": "农业农村",
    "culture_tourism": "文化旅游", "health": "卫生健康", "transport": "交通运输", "water": "水务"}


# --- errors a channel raises ---------------------------------------------------------------------

class DeliveryError(Exception):
    """A send that did not go through. ``summary`` goes to the delivery log, so it names the kind of
    failure (exception type, SMTP, HTTP or provider code) and never an address or a message text."""

    def __init__(self, summary):
        super().__init__(summary)
        self.summary = summary[:200]


class TransientError(DeliveryError):
    """This message may go through later (e.g. a per-number limit): retried with backoff, and after
    the last retry failed and fallen back to the next channel."""


class ProviderDown(TransientError):
    """The provider itself is away or throttling (connection refused, time-out, HTTP 5xx/429, SMTP
    421): the message is not to blame. Its deliveries wait, in order, until a probe goes through;
    the wait does not use up any message's retries."""


class NotConfigured(DeliveryError):
    """This notice has no template id (or the like) on this channel here: skipped, and the next
    channel is tried."""


class PermanentError(DeliveryError):
    """Trying again will not help (number invalid, user unsubscribed, endpoint answered 4xx): failed
    at once, and the next channel is tried."""


def error_summary(exc):
    """What the log may say about an unexpected exception: its type only (its text can carry data)."""
    return exc.summary if isinstance(exc, DeliveryError) else type(exc).__name__


# --- rules: which events notify whom ---------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    event_type: str
    recipient: str            # one of RECIPIENTS
    channels: tuple           # in order: the first the recipient can be reached on; the next on failure
    fields: tuple             # event fields the template may use; only these are stored
    urgent: bool = False      # urgent news ignores citizens' quiet hours


# the event field that names the recipient, for rules that name staff
RECIPIENT_FIELDS = {"unit": ("unit_code",), "grid_worker": ("village_code",),
                    "force": ("forces", "force_code")}


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
            if recipient not in RECIPIENTS:
                raise ValueError(f"rules: {event_type}: unknown recipient {recipient!r}")
            if not channels or set(channels) - set(CHANNELS) or len(set(channels)) != len(channels):
                raise ValueError(f"rules: {event_type}: channels must be distinct, among {CHANNELS}")
            if recipient == CITIZEN and "inbox" in channels:
                raise ValueError(f"rules: {event_type}: citizens have no inbox")
            naming = RECIPIENT_FIELDS.get(recipient, ())
            if naming and not set(naming) & payload_fields:
                raise ValueError(f"rules: {event_type} names no {recipient} to notify")
            unknown = set(wanted) - payload_fields
            if unknown:
                raise ValueError(f"rules: {event_type}: the event carries no {sorted(unknown)}")
            parsed.append(Rule(event_type, recipient, channels, wanted, bool(entry.get("urgent", False))))
        for a in parsed:  # one delivery per (event, recipient, channel): two chains must not share one
            for b in parsed:
                if a is not b and a.recipient == b.recipient and set(a.channels) & set(b.channels):
                    raise ValueError(f"rules: {event_type}: {a.recipient} is told twice on "
                                     f"{sorted(set(a.channels) & set(b.channels))}")
        rules[event_type] = parsed
    return rules


def audiences_of(recipient):
    """The audiences whose templates a rule's recipient may need."""
    return ("unit", "grid_worker") if recipient == "unit" else (recipient,)


@dataclass(frozen=True)
class Planned:
    """A notice to reserve: its recipient, the channels to try in order, template and what it renders."""
    recipient: str            # "citizen" | "<kind>:<code>"
    recipient_kind: str       # the audience
    chain: tuple              # channels in order; the first is reserved now, the rest are fallbacks
    template: str             # "<audience>/<event_type>"
    context: dict
    urgent: bool = False
    skip_reason: str | None = None   # known before sending (an anonymous appeal has no one to tell)


def staff_reachable(channel, entry):
    """Whether a staff directory entry has an address on ``channel``."""
    if entry is None:
        return False
    return {"inbox": True, "email": bool(entry.email), "sms": bool(entry.phone),
            "webhook": bool(entry.webhook_url and entry.webhook_secret), "wechat": False}[channel]


def citizen_chain(channels, available, preferred=None):
    """The rule's channels that are running here, the citizen's preferred one first."""
    chain = [c for c in channels if c in available]
    if preferred in chain:
        chain.remove(preferred)
        chain.insert(0, preferred)
    return tuple(chain)


def _staff_codes(recipient, data, directory):
    if recipient == "unit":
        return [data["unit_code"]]
    if recipient == "grid_worker":
        return [f"grid-{data['village_code']}"] if data.get("village_code") else []
    if recipient == "force":
        codes = data.get("forces") or ([data["force_code"]] if data.get("force_code") else [])
        return list(dict.fromkeys(codes))
    return [entry.unit_code for entry in directory.of_kind("supervisor")]


def plan(rules, envelope, directory, available=CHANNELS, preferred=None):
    """The notices an event calls for: per rule and recipient, the chain of channels to try.

    ``directory.get(code)`` / ``directory.of_kind(kind)`` give staff entries; ``available`` are the
    channels running here (a channel without a provider configured is left out); ``preferred`` is
    the citizen's chosen channel."""
    data = envelope["data"]
    planned = []
    for rule in rules.get(envelope["type"], ()):
        context = {"case_no": envelope["case_no"], **{f: data.get(f) for f in rule.fields}}
        template_of = lambda audience: f"{audience}/{envelope['type']}"  # noqa: E731
        if rule.recipient == CITIZEN:
            if envelope["case_no"] is None:
                continue
            chain = citizen_chain(rule.channels, available, preferred)
            skip = "anonymous" if data.get("anonymous") else (None if chain else "no_channel")
            planned.append(Planned(CITIZEN, CITIZEN, chain or rule.channels[:1], template_of(CITIZEN),
                                   context, rule.urgent, skip))
            continue
        for code in _staff_codes(rule.recipient, data, directory):
            entry = directory.get(code)
            kind = entry.kind if entry is not None else ("unit" if rule.recipient == "unit" else rule.recipient)
            if rule.recipient == "unit" and kind not in ("unit", "grid_worker"):
                kind = "unit"
            chain = tuple(c for c in rule.channels if c in available and staff_reachable(c, entry))
            skip = "unknown_recipient" if entry is None else (None if chain else "no_channel")
            planned.append(Planned(f"{kind}:{code}", kind, chain or rule.channels[:1], template_of(kind),
                                   context, rule.urgent, skip))
    return planned


def subscriber_wants(subscriber, envelope):
    """Whether a webhook subscriber asked for this event (and, if it named a unit, whether the
    event is that unit's)."""
    if envelope["type"] not in (subscriber.event_types or ()):
        return False
    return not subscriber.unit_code or envelope["data"].get("unit_code") == subscriber.unit_code


def lane_of(recipient, channel, citizen=None):
    """The queue a delivery keeps its order in: one per recipient and channel, so that two notices to
    the same unit (or citizen) on the same channel arrive in the order their events happened, while
    different recipients are sent to in parallel. A citizen is known by intake's keyed
    ``citizen_ref`` (their appeals share one lane), else by the case."""
    who = f"{CITIZEN}:{citizen}" if recipient == CITIZEN else recipient
    return f"{who}|{channel}"


def relane(lane, channel):
    """The same recipient's lane on another channel (a fallback)."""
    return f"{lane.rpartition('|')[0]}|{channel}"


def provider_of(channel, recipient):
    """Whose outage holds a delivery back: one SMS gateway, one WeChat account, one mail server, the
    inbox; each webhook endpoint is a provider of its own (one department's system being down must
    not hold back another's)."""
    return f"webhook:{recipient}" if channel == "webhook" else channel


# --- quiet hours (免打扰) --------------------------------------------------------------------------

QUIET_HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


def parse_quiet_hours(text):
    """'22:00-07:00' → ('22:00', '07:00'); '' or None → None. Raises ValueError on anything else."""
    if not text:
        return None
    text = text.strip()
    if not QUIET_HOURS.match(text):
        raise ValueError("quiet hours must look like 22:00-07:00")
    start, end = text.split("-")
    if start == end:
        raise ValueError("quiet hours must not start and end at the same time")
    return start, end


def quiet_until(now, window):
    """If ``now`` (aware) falls in the quiet ``window`` (('22:00', '07:00'), China time), the UTC time
    it ends; else None. A window may run over midnight."""
    if not window:
        return None
    local = now.astimezone(CHINA_TIME)
    start, end = (time(*map(int, t.split(":"))) for t in window)
    at = local.time()
    if start < end:
        inside = start <= at < end
        end_day = local.date()
    else:
        inside = at >= start or at < end
        end_day = local.date() + timedelta(days=1) if at >= start else local.date()
    if not inside:
        return None
    return datetime.combine(end_day, end, tzinfo=CHINA_TIME).astimezone(timezone.utc)


def hold_for_quiet_hours(channel, urgent, window, now):
    """When a citizen's message on ``channel`` may go: now, or at the end of their quiet hours."""
    if urgent or channel not in DISTURBING:
        return now
    return quiet_until(now, window) or now


# --- addresses ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Address:
    """Where one delivery goes now, or why it goes nowhere."""
    to: str | None = None
    secret: str | None = None      # the webhook secret
    name: str | None = None        # the citizen's name, for the salutation only
    skip_reason: str | None = None


def citizen_address(channel, contact):
    """The citizen's address on ``channel`` from intake's contact (None: anonymous or unknown)."""
    if contact is None:
        return Address(skip_reason="no_contact")
    key = {"email": "email", "sms": "phone", "wechat": "wechat_openid"}.get(channel)
    value = (contact.get(key) or "").strip() if key else ""
    if not value:
        return Address(skip_reason=f"no_{channel}")
    return Address(to=value, name=contact.get("name"))


def staff_address(channel, entry):
    """A staff entry's address on ``channel`` (None: not in the directory)."""
    if entry is None:
        return Address(skip_reason="unknown_recipient")
    if not staff_reachable(channel, entry):
        return Address(skip_reason=f"no_{channel}")
    if channel == "inbox":
        return Address(to=entry.unit_code)
    if channel == "email":
        return Address(to=entry.email)
    if channel == "sms":
        return Address(to=entry.phone)
    return Address(to=entry.webhook_url, secret=entry.webhook_secret)


def mask_email(email):
    """zhangsan@example.com → z***@example.com: enough to tell addresses apart in the log."""
    if not email or "@" not in email:
        return "***"
    local, _, domain = email.rpartition("@")
    return f"{local[:1]}***@{domain}"


def mask_openid(openid):
    return f"{openid[:4]}***" if openid and len(openid) > 8 else "***"


def logged_address(recipient_kind, channel, address):
    """What the delivery log keeps of an address: phones and openids always masked, a citizen's
    e-mail masked; a unit's mailbox, inbox and endpoint as they are."""
    if address.to is None:
        return None
    if channel == "sms":
        return mask_phone(address.to)
    if channel == "wechat":
        return mask_openid(address.to)
    if recipient_kind == CITIZEN:
        return mask_email(address.to) if channel == "email" else "***"
    return address.to


# --- rendering ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TemplateSet:
    """The parts of one template (``templates/<audience>/<event_type>.*``); a channel uses its own."""
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    sms: str | None = None          # the text registered with the SMS provider, ${name} = a parameter
    wechat: dict | None = None      # WeChat template keyword → value text, e.g. {"thing1": "${title}"}


@dataclass(frozen=True)
class Rendered:
    subject: str = ""
    text: str = ""
    html: str = ""
    sms_params: dict = field(default_factory=dict)
    wechat_data: dict = field(default_factory=dict)


def local_time_text(value):
    """'2026-11-25T10:00:00+00:00' → '2026年11月25日 18:00' (China time)."""
    if not value:
        return ""
    at = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    at = at.astimezone(CHINA_TIME)
    return f"{at.year}年{at.month}月{at.day}日 {at:%H:%M}"


def salutation(name):
    return f"尊敬的{name}，您好：" if name else "您好："


def template_values(context, **extra):
    """The values a template sees: the stored event fields (times in China time, codes in words,
    lists joined) plus what is known only at send time (salutation, recipient name, portal URL)."""
    values = {}
    for key, value in {**context, **extra}.items():
        if key.endswith("_at"):
            value = local_time_text(value)
        elif key == "level":
            value = LEVEL_TEXT.get(value, value)
        elif key == "violation_type":
            value = VIOLATION_TEXT.get(value, value)
        elif key == "force_code":
            value = FORCE_TEXT.get(value, value)
        elif isinstance(value, (list, tuple)):
            value = "、".join(map(str, value))
        values[key] = "" if value is None else str(value)
    return values


@lru_cache(maxsize=1024)
def _names(text):
    return tuple(m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(text or "")
                 if m.group("named") or m.group("braced"))


@lru_cache(maxsize=1024)
def _template(text):
    """Templates are a few dozen files: each is parsed once, not per message."""
    return string.Template(text)


def shorten(value, limit):
    """Provider fields have length limits (WeChat thing: 20 characters; SMS variables: 35)."""
    return value if len(value) <= limit else value[:limit - 1] + "…"


# WeChat template keyword types and their length limits (公众号模板消息参数规则)
WECHAT_LIMITS = {"thing": 20, "character_string": 32, "phrase": 5, "time": 30, "number": 32,
                 "amount": 32, "phone_number": 17, "car_number": 8, "name": 10}


def render(templates, values, channel="email", sms_param_limit=35):
    """The parts ``channel`` needs. Subject and text as written; in the HTML part every value is
    escaped (appeal titles and resolutions are free text) and line breaks kept; SMS parameters and
    WeChat keywords shortened to the providers' limits."""
    if channel == "sms":
        return Rendered(sms_params={name: shorten(values[name], sms_param_limit)
                                    for name in dict.fromkeys(_names(templates.sms))})
    if channel == "wechat":
        data = {}
        for key, text in templates.wechat.items():
            limit = WECHAT_LIMITS.get(re.sub(r"\d+$", "", key), 20)
            data[key] = {"value": shorten(" ".join(_template(text).substitute(values).split()), limit)}
        return Rendered(wechat_data=data)
    html_part = ""
    if channel == "email":
        # every value, whatever its source, is escaped (quotes too: values may sit in attributes)
        escaped = {k: html.escape(v, quote=True).replace("\n", "<br>\n") for k, v in values.items()}
        html_part = _template(templates.html).substitute(escaped)
    return Rendered(
        subject=" ".join(_template(templates.subject).substitute(values).split()),
        text=_template(templates.text).substitute(values),
        html=html_part,
    )


def template_fields(templates):
    """Names a template set uses (for checking templates against the rules)."""
    names = set()
    for text in (templates.subject, templates.text, templates.html, templates.sms,
                 *(templates.wechat or {}).values()):
        names.update(_names(text))
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
    template: str = ""              # "<audience>/<event_type>": picks SMS and WeChat template ids
    occurred_at: str | None = None
    urgent: bool = False


def webhook_body(outgoing):
    """The JSON an endpoint receives. A unit's own endpoint gets the notice in words (subject, text)
    plus the fields it was made from; a subscriber gets the event's data (events carry no personal
    data)."""
    body = {
        "delivery_id": outgoing.delivery_id,
        "event_id": outgoing.event_id,
        "type": outgoing.event_type,
        "case_no": outgoing.case_no,
        "occurred_at": outgoing.occurred_at,
        "recipient": outgoing.recipient,
        "data": outgoing.data,
    }
    if outgoing.message.subject:
        body.update(subject=outgoing.message.subject, text=outgoing.message.text)
    return json.dumps(body, ensure_ascii=False, sort_keys=True).encode("utf-8")


def webhook_signature(secret, timestamp, body):
    """``sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`` keyed with the endpoint's secret."""
    mac = hmac.new(secret.encode("utf-8"), str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify_webhook_signature(secret, timestamp, body, signature, now, tolerance=300):
    """What a receiver does: the signature matches and the timestamp is recent (no replays of old
    captures)."""
    try:
        fresh = abs(now - int(timestamp)) <= tolerance
    except (TypeError, ValueError):
        return False
    return fresh and hmac.compare_digest(webhook_signature(secret, timestamp, body), signature or "")


# --- retries --------------------------------------------------------------------------------------

def backoff_seconds(n, base, cap, rng=random):
    """Exponential backoff with jitter before try ``n + 1`` after ``n`` failures: the n-th ceiling is
    ``min(cap, base * 2**(n-1))`` and the wait is drawn between half of it and all of it, so that
    messages that failed together do not all come back together."""
    ceiling = min(float(cap), float(base) * 2 ** max(0, n - 1))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def next_attempt_after_failure(failures, max_attempts, base, cap, now, rng=random):
    """When to try again after ``failures`` failed tries, or None when they are used up (dead)."""
    if failures >= max_attempts:
        return None
    return now + timedelta(seconds=backoff_seconds(failures, base, cap, rng))


def demo_unit_email(unit_code):
    return f"{unit_code}@demo.wuji.local"

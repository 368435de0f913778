"""notify's use cases as plain functions: no nameko, no eventlet.

At most once per (event, recipient, channel), in three steps that never hold a transaction open
across the network:

1. :func:`record_event` reserves, per notice, a ``pending`` delivery on the first channel of its
   chain, in the same transaction that marks the event processed (a redelivered event reserves
   nothing; the unique key (event_id, recipient, channel) stops a concurrent duplicate);
2. :func:`claim_due` claims many due deliveries in one short transaction (a lease), the first ones
   of each *lane* — one recipient on one channel — so that a recipient hears of two events in the
   order they happened while different recipients are sent to in parallel;
3. :func:`send_claims` sends one lane's claims in order outside any transaction and records the
   outcomes in short transactions: those that simply settle a delivery (sent; skipped or failed
   with no fallback) several at a time, and those of many senders together
   (:func:`record_settled`, through the service's group commit).

:func:`deliver` (one delivery and whatever is ahead of it in its lane) and :func:`send_due` (all
that is due) run these steps one after the other; the service runs one lane per sender.

Order: a lane's delivery is not claimed while an older one of the same lane is due or in flight
(a message waiting for its own retry, or held by quiet hours, does not hold the lane up).

Failures: a message's own transient failure is retried with exponential backoff and jitter; a
permanent one, or the last retry, marks it ``failed`` (the dead list) and reserves the next channel
of its chain. A provider that is away (:class:`ProviderDown`) holds all its deliveries in their
lanes without using up their retries; one probe at a time tries the oldest after the provider's own
backoff, and when it goes through the lanes drain oldest first.

Crashes: an attempt still ``sending`` when its claim ran out was interrupted. On channels whose
receivers drop a repeat by the delivery id (inbox, webhook, e-mail) it is sent again; on SMS and
WeChat it is not — nobody is told twice — it is dead-listed as interrupted for ops to check and
replay, and the next channel is tried. On those two the attempt is written (committed) right
before each send, so a crash interrupts only what was on the wire, never what merely was claimed.
"""
import logging
import random
import secrets
import time
import uuid
import weakref
from bisect import bisect_right
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from functools import lru_cache

from marshmallow import ValidationError as SchemaError
from sqlalchemy import Boolean, and_, bindparam, case, delete, func, insert, null, or_, select, tuple_, update
from sqlalchemy.exc import OperationalError

from notify import content, domain
from notify.domain import CITIZEN, FAILED, PENDING, SENT, SKIPPED, SUBSCRIBER
from notify.models import (
    CaseCitizen, CitizenPreference, Delivery, DeliveryAttempt, InboxMessage, Provider, Subscriber,
    UnitContact,
)
from notify.schemas import (
    AttemptSchema, DeliverySchema, InboxMessageSchema, PreferenceInput, ProviderSchema, SubscribeInput,
    SubscriberSchema, UnitContactInput, UnitContactSchema,
)
from wuji_common import reference
from wuji_common.db import insert_unless_present
from wuji_common.errors import InvalidTransition, NotFound, ValidationError

log = logging.getLogger(__name__)

delivery_schema = DeliverySchema()
attempt_schema = AttemptSchema()
RETRY, PROVIDER_DOWN, SUPERSEDED = "retry", "provider_down", "superseded"
# Core tables: the hot paths (reserve, claim, record) write many rows per statement
D, A, P = Delivery.__table__, DeliveryAttempt.__table__, Provider.__table__
STAFF_COLUMNS = (UnitContact.unit_code, UnitContact.unit_name, UnitContact.kind, UnitContact.email,
                 UnitContact.phone, UnitContact.webhook_url, UnitContact.webhook_secret)


def _now():
    return datetime.now(timezone.utc)


def _aware(at):
    """SQLite hands back naive UTC."""
    return at.replace(tzinfo=timezone.utc) if at is not None and at.tzinfo is None else at


@dataclass(frozen=True)
class Policy:
    """How deliveries are retried, held and batched. ``claim_seconds`` must outlast one send (intake
    look-up, rate-limit wait and the channel's time-out): a claim older than that is taken as its
    sender's crash. A sender starts no send of its batch after half of it has passed."""
    max_attempts: int = 5              # a message's own failures before it is dead
    retry_base: float = 30             # first retry after 15–30 s, then doubling ...
    retry_cap: float = 3600            # ... up to 30–60 min
    provider_base: float = 5           # first probe of a provider that went away after 2.5–5 s ...
    provider_cap: float = 300          # ... then doubling up to 2.5–5 min
    claim_seconds: float = 120
    batch: int = 100                   # deliveries claimed in one transaction
    record_every: int = 8              # sends recorded in one transaction (at most this many are
    #                                    sent again, same delivery id, after a crash)
    record_seconds: float = 1.0        # ... or sooner, once the oldest of them waited this long (a
    #                                    slow lane does not keep what it sent unrecorded)
    portal_url: str = ""
    default_quiet_hours: str = ""      # for citizens without their own; "" = none
    sms_param_limit: int = 35
    reference_seconds: float = 2.0     # the staff directory and the subscribers are read at most
    #                                    this often per process (a change made elsewhere waits that long)
    rng: object = field(default=random, compare=False)


@dataclass(frozen=True)
class StaffPoint:
    """A staff recipient's contact points as read in the claim transaction."""
    unit_code: str
    unit_name: str
    kind: str
    email: str | None
    phone: str | None
    webhook_url: str | None
    webhook_secret: str | None


@dataclass(frozen=True)
class Claim:
    """A delivery claimed for one attempt (``attempts`` counts this one)."""
    id: str
    event_id: str
    event_type: str
    case_no: str | None
    occurred_at: str | None
    recipient: str
    recipient_kind: str
    channel: str
    provider: str
    template: str
    context: dict
    urgent: bool
    attempts: int
    staff: StaffPoint | None = None
    subscriber: StaffPoint | None = None
    lane: str = ""
    lease: datetime | None = None      # the claim's claimed_until: whoever still holds it may record
    probe: bool = False                # the one try of a provider that was away
    fallback: tuple = ()               # the channels still to try after this one, in order


@dataclass(frozen=True)
class Outcome:
    status: str                  # sent | skipped | failed | retry | provider_down | superseded
    address: str | None = None   # as the log keeps it (masked for a citizen)
    reason: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Recorded:
    status: str | None           # the delivery's new status; None: another sender superseded this one
    fallback_id: str | None = None


@dataclass
class Outside:
    """What a delivery needs from outside notify's database: the citizen's contact (intake, at send
    time), the channels, the rate limiter. ``templates`` is the shipped set unless a test gives its
    own."""
    citizen_contact: object                # case_no -> {"name", "phone", "email", "wechat_openid"} | None
    channels: dict                         # channel name -> object with send(outgoing), available
    templates: object = field(default=content.templates)
    limiter: object = None                 # .acquire(provider, channel)
    citizen_contacts: object = None        # [case_no] -> {case_no: contact} of those that have one


def with_contacts(outside, claims):
    """``outside`` for sending ``claims``: the contacts of their citizens read from intake in one
    call (``citizen_contacts``) rather than one call per send. A case that call did not answer for is
    asked on its own at send time, as before; if the call fails, every one is."""
    case_nos = sorted({c.case_no for c in claims if c.recipient_kind == CITIZEN})
    if not case_nos or outside.citizen_contacts is None:
        return outside
    try:
        found = outside.citizen_contacts(case_nos)
    except Exception as exc:   # intake away or slow: each send asks for itself (and fails as before)
        log.warning("contacts of %d cases not read together (%s); asked one by one",
                    len(case_nos), type(exc).__name__)
        return outside
    single = outside.citizen_contact
    known = {case_no: found.get(case_no) for case_no in case_nos}   # None: the case has no contact

    def contact(case_no):
        return known[case_no] if case_no in known else single(case_no)
    return replace(outside, citizen_contact=contact)


def load(schema, payload):
    try:
        return schema.load(payload)
    except SchemaError as err:
        raise ValidationError("请求参数有误", err.normalized_messages()) from None


def available_channels(channels):
    return tuple(name for name, channel in channels.items() if getattr(channel, "available", True))


@lru_cache(maxsize=None)
def _towns():
    return reference.towns()


# --- 1. reserve --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Directory:
    """The staff directory (every entry, a few hundred rows at most) and the subscribers, as this
    process read them: domain.plan reads staff entries from it, the claim their addresses.

    Reference data, edited over RPC and by ``load-reference``, read at most once every
    ``Policy.reference_seconds`` (2 s) per process and database instead of once per event batch and
    per claim (:func:`directory`). A change made through this process applies at once (the handlers
    that make it call :func:`directory_changed`); one made through another instance, within
    ``reference_seconds``. Whether a subscriber still exists is read again when its delivery is
    claimed, so nothing goes to a subscriber after it unsubscribed."""
    staff: dict                 # unit_code -> StaffPoint
    subscribers: tuple          # rows (id, event_types, unit_code), oldest first
    read_at: float = 0.0        # time.monotonic() before it was read
    changes: int = 0            # directory_changed() calls it had seen

    def get(self, code):
        return self.staff.get(code)

    def of_kind(self, kind):
        return sorted((e for e in self.staff.values() if e.kind == kind), key=lambda e: e.unit_code)


# engine -> the last Directory read, and how many changes this process made to the database's
# directory; keyed by engine (not global) so that each database, and each test's, has its own
_directories = weakref.WeakKeyDictionary()
_directory_changes = weakref.WeakKeyDictionary()


def directory(s, max_age, clock=time.monotonic):
    """The staff directory and the subscribers, read anew if older than ``max_age`` seconds or if
    this process changed them since (two statements, whatever the number of events or claims)."""
    engine = s.get_bind()
    changes = _directory_changes.get(engine, 0)
    known = _directories.get(engine)
    now = clock()
    if known is not None and known.changes == changes and now - known.read_at < max_age:
        return known
    staff = {row.unit_code: StaffPoint(*row) for row in s.execute(select(*STAFF_COLUMNS))}
    subscribers = tuple(s.execute(select(Subscriber.id, Subscriber.event_types, Subscriber.unit_code)
                                  .order_by(Subscriber.created_at)).all())
    # a read that began before a change made here is not taken for current: ``changes`` as it was
    _directories[engine] = known = Directory(staff, subscribers, now, changes)
    return known


def directory_changed(s):
    """This process committed a change to the staff directory or the subscribers: the next reader
    reads them again."""
    engine = s.get_bind()
    _directory_changes[engine] = _directory_changes.get(engine, 0) + 1


@dataclass(frozen=True)
class Citizen:
    """The citizen of a case as notify knows them: intake's keyed ref (their lane), their choices."""
    ref: str | None
    channel: str | None = None
    quiet: tuple | None = None


def _quiet_window(preference, policy):
    if preference is not None and preference.quiet_start:
        return preference.quiet_start, preference.quiet_end
    if preference is not None and preference.quiet_start == "":
        return None
    return domain.parse_quiet_hours(policy.default_quiet_hours)


def _remember_citizens(s, envelopes):
    """Each appeal's citizen (by keyed ref), so that their choices hold for all their appeals;
    returns {case_no: ref} of the ``appeal_received`` events that name one."""
    refs = {e["case_no"]: e["data"].get("citizen_ref") for e in envelopes
            if e["type"] == "appeal_received" and e["case_no"] and e["data"].get("citizen_ref")}
    if refs:
        s.execute(insert_unless_present(s, CaseCitizen.__table__),
                  [{"case_no": c, "citizen_ref": r} for c, r in refs.items()])
    return refs


def _citizens(s, case_nos, policy, refs):
    """{case_no: Citizen} of the cases given: their keyed ref (from ``refs`` or as remembered) and
    their choices, read in two statements for all of them."""
    refs = {c: refs[c] for c in case_nos if refs.get(c)}
    missing = [c for c in case_nos if c not in refs]
    if missing:
        refs.update(s.execute(select(CaseCitizen.case_no, CaseCitizen.citizen_ref)
                              .where(CaseCitizen.case_no.in_(missing))).all())
    wanted = {r for r in refs.values() if r}
    preferences = {p.citizen_ref: p for p in s.execute(
        select(CitizenPreference.citizen_ref, CitizenPreference.channel, CitizenPreference.quiet_start,
               CitizenPreference.quiet_end).where(CitizenPreference.citizen_ref.in_(list(wanted))))} \
        if wanted else {}
    citizens = {}
    for case_no in case_nos:
        ref = refs.get(case_no)
        preference = preferences.get(ref) if ref else None
        citizens[case_no] = Citizen(ref, preference.channel if preference else None,
                                    _quiet_window(preference, policy))
    return citizens


def _reservation(envelope, recipient, kind, chain, template, context, urgent, now, lane, quiet=None,
                 skip_reason=None, fallback_of=None):
    """A delivery row on the first channel of ``chain`` (the rest are its fallbacks)."""
    channel = chain[0]
    due = None if skip_reason else now
    if kind == CITIZEN and not skip_reason:
        due = domain.hold_for_quiet_hours(channel, urgent, quiet, now)
    return {
        "id": str(uuid.uuid4()), "event_id": envelope["event_id"], "event_type": envelope["type"],
        "case_no": envelope["case_no"], "occurred_at": _occurred(envelope, now), "recipient": recipient,
        "recipient_kind": kind, "lane": lane, "channel": channel,
        "provider": domain.provider_of(channel, recipient), "template": template, "context": context,
        "fallback": list(chain[1:]), "fallback_of": fallback_of, "urgent": urgent, "address": None,
        "status": SKIPPED if skip_reason else PENDING, "reason": skip_reason, "attempts": 0, "failures": 0,
        "next_attempt_at": due, "claimed_until": None, "last_error": None, "created_at": now,
        "updated_at": now, "sent_at": None}


def _occurred(envelope, now):
    try:
        return datetime.fromisoformat(envelope["occurred_at"]).astimezone(timezone.utc)
    except (KeyError, TypeError, ValueError):
        return now


def record_event(uow, consumer, envelope, rules, available=domain.CHANNELS, policy=None, now=None,
                 templates=content.templates, done=None):
    """Reserve the deliveries an event calls for; returns the ids of those due now.

    At-least-once delivery of events: a redelivered event (same event_id) reserves nothing. The
    citizen's ref and choices are read only for events that tell a citizen. Inbox notices are put
    in the inbox in the same transaction (``done`` gets their (channel, status))."""
    return record_events(uow, consumer, [envelope], rules, available, policy, now, templates, done)


def record_events(uow, consumer, envelopes, rules, available=domain.CHANNELS, policy=None, now=None,
                  templates=content.templates, done=None):
    """:func:`record_event` for a batch of events, in one transaction and a handful of statements
    whatever its size: the events seen before are dropped, the citizens, their choices, the staff
    directory and the subscribers are read once, and each table gets one insert."""
    now = now or _now()
    policy = policy or Policy()
    with uow:
        s = uow.session
        known = directory(s, policy.reference_seconds)
        subscribers = known.subscribers
        if not any(_concerns(e, rules, subscribers) for e in envelopes):
            # no rule and no subscriber for any of them (a hot spot, a repeat, …): nothing to reserve,
            # so nothing to drop a repeat of either; no transaction for events nobody is told of
            return []
        fresh = uow.first_deliveries(consumer, envelopes)
        if not fresh:
            return []
        refs = _remember_citizens(s, fresh)
        told = [e["case_no"] for e in fresh if e["case_no"]
                and any(rule.recipient == CITIZEN for rule in rules.get(e["type"], ()))]
        citizens = _citizens(s, list(dict.fromkeys(told)), policy, refs) if told else {}
        rows, posted = [], []
        for envelope in fresh:
            citizen = citizens.get(envelope["case_no"], Citizen(None))
            for planned in domain.plan(rules, envelope, known, available, citizen.channel):
                lane = domain.lane_of(planned.recipient, planned.chain[0], citizen.ref or envelope["case_no"])
                rows.append(_reservation(envelope, planned.recipient, planned.recipient_kind, planned.chain,
                                         planned.template, planned.context, planned.urgent, now, lane,
                                         citizen.quiet, planned.skip_reason))
                if rows[-1]["channel"] == "inbox" and rows[-1]["status"] == PENDING:
                    message = _inbox_message(rows[-1], known, policy, templates, now)
                    if message:
                        posted.append(message)
            for subscriber in subscribers:
                if domain.subscriber_wants(subscriber, envelope):
                    recipient = f"{SUBSCRIBER}:{subscriber.id}"
                    rows.append(_reservation(envelope, recipient, SUBSCRIBER, ("webhook",), "",
                                             dict(envelope["data"]), False, now,
                                             domain.lane_of(recipient, "webhook")))
        if rows:
            s.execute(insert(D), rows)
        if posted:
            s.execute(insert(InboxMessage.__table__), posted)
            s.execute(insert(A), [{"delivery_id": m["id"], "number": 1, "outcome": SENT, "error": None,
                                   "started_at": now, "finished_at": now} for m in posted])
        uow.commit()
    if done is not None:
        done.extend(("inbox", SENT) for _ in posted)
    return [r["id"] for r in rows if r["status"] == PENDING and r["next_attempt_at"] <= now]


def _concerns(envelope, rules, subscribers):
    """Whether notify has anything to do with an event: a rule tells someone of it, a subscriber
    wants it, or it names a citizen to remember (``appeal_received``)."""
    return envelope["type"] == "appeal_received" or bool(rules.get(envelope["type"])) or \
        any(domain.subscriber_wants(subscriber, envelope) for subscriber in subscribers)


def _inbox_message(row, directory, policy, templates, now):
    """An inbox notice is a row of notify's own database: written in the transaction that reserves
    it, it is there exactly once without a sender. Marks ``row`` sent and returns the message, or
    None if it cannot be rendered here (it is then sent the usual way, and its error recorded)."""
    entry = directory.get(row["recipient"].partition(":")[2])
    address = domain.staff_address("inbox", entry)
    if address.skip_reason:
        return None
    town = row["context"].get("town_code")
    try:
        values = domain.template_values({
            "recipient_name": entry.unit_name, "town_name": _towns().get(town, town or "") if town else "",
            **row["context"], "portal_url": policy.portal_url})
        message = domain.render(templates(row["template"]), values, "inbox")
    except Exception:
        return None
    row.update(status=SENT, sent_at=now, attempts=1, address=address.to, next_attempt_at=None)
    return {"id": row["id"], "owner_code": address.to, "event_type": row["event_type"],
            "case_no": row["case_no"], "subject": message.subject[:200], "text": message.text,
            "urgent": row["urgent"], "created_at": now, "read_at": None}


# --- 2. claim ----------------------------------------------------------------------------------------

def claim_due(uow, policy, limit=None, lanes=None, lane=None, only=None, now=None):
    """Claim, in one short transaction, up to ``limit`` due deliveries that may go now, oldest event
    first: the first ones of each lane (none of a lane while an older delivery of it is due or in
    flight), of providers not held back (of a provider that was away, only its oldest: the probe).
    At most ``lanes`` lanes; only lane ``lane`` or only delivery ``only`` if given.

    Several instances: on PostgreSQL rows another claimer holds are skipped (FOR UPDATE SKIP
    LOCKED), and a lane whose older rows it holds is left to it; on SQLite claimers take turns on
    the database's write lock. Returns the claims in sending order (a lane's in its order)."""
    return claim_batch(uow, policy, limit, lanes, lane, only, now)[0]


def claim_batch(uow, policy, limit=None, lanes=None, lane=None, only=None, now=None):
    """:func:`claim_due`, and whether more may be due (it found as many as it could take)."""
    while True:
        claims, dead_listed, more = _claim_once(uow, policy, limit or policy.batch, lanes, lane, only,
                                                now or _now())
        if claims or not dead_listed:
            return claims, more
        # all it found had been interrupted on SMS or WeChat: their fallbacks may be due now


def _claim_once(uow, policy, limit, lanes, lane, only, now):
    lease = now + timedelta(seconds=policy.claim_seconds)
    with uow:
        s = uow.session
        if s.get_bind().dialect.name == "sqlite":
            # the write lock first (a write that changes nothing): no two claimers read the same rows
            s.execute(update(P).where(P.c.name.is_(None)).values(failures=P.c.failures))
        found = s.execute(_due_query(lane is not None, only is not None),
                          {"now": now, "limit": limit, "lane": lane, "only": only}).all()
        more = len(found) >= limit
        if not found:
            return [], 0, more
        # providers that were away and whose probe is due (those still held back were left out)
        probing = {r.provider for r in found if r.provider_failures}
        keep, probes = _heads(s, found, probing, lanes, now)
        if not keep:
            return [], 0, more
        heads = len(keep)
        keep = _drop_interrupted(s, keep, now, policy)
        probes &= {r.provider for r in keep}
        claims = []
        if keep:
            s.execute(update(D).where(D.c.id.in_([r.id for r in keep]))
                      .values(attempts=D.c.attempts + 1, claimed_until=lease, updated_at=now))
            # on channels that drop repeats the attempt is written now; on the others just before
            # its send (mark_sending), so that a crash does not dead-list what never went out
            written = [{"delivery_id": r.id, "number": r.attempts + 1, "outcome": "sending", "error": None,
                        "started_at": now, "finished_at": None}
                       for r in keep if r.channel in domain.IDEMPOTENT_CHANNELS]
            if written:
                s.execute(insert(A), written)
            if probes:
                # this is the probe of a provider that was away: no other send to it until it answers
                s.execute(update(P).where(P.c.name.in_(probes)).values(retry_at=lease))
            staff, subscribers = _points(s, keep, policy)
            claims = [_claim(r, lease, staff, subscribers, r.provider in probes) for r in keep]
        uow.commit()
    return claims, heads - len(keep), more or len(keep) < len(found)


def _others_claim(s):
    """Whether another claimer may hold rows while this one claims (on SQLite claimers take turns
    on the database's write lock)."""
    return s.get_bind().dialect.name != "sqlite"


@lru_cache(maxsize=None)
def _due_query(lane, only):
    """Due rows, oldest first, none of a lane with something in flight nor of a provider held back,
    each with its provider's failures (``provider_failures``: not 0 or None, the provider was away
    and this would be its probe); built once per shape (the claim runs for every batch). The
    providers' health is read in the same statement: their table is small, and nearly always
    empty.

    The lanes with something in flight are one subquery of their own, not one per due row: a
    PostgreSQL that last analysed the table while the queue was empty believes "pending" matches
    no row, and a per-row subquery then scanned every pending row for every due row (after a burst
    of 2,000 appeals, 300 ms and up to 1.4 s of the database's CPU per claim). Read once (a hashed
    NOT IN), it costs one pass over the rows in flight whatever the plan."""
    now, inflight = bindparam("now"), D.alias("inflight")
    lanes_in_flight = select(inflight.c.lane).where(
        inflight.c.status == PENDING, inflight.c.claimed_until >= now, inflight.c.lane.is_not(None))
    held = select(P.c.name).where(P.c.name == D.c.provider, P.c.retry_at > now)
    failures = select(P.c.failures).where(P.c.name == D.c.provider).scalar_subquery()
    query = (select(D, failures.label("provider_failures")).where(
        D.c.status == PENDING, D.c.next_attempt_at <= now,
        or_(D.c.claimed_until.is_(None), D.c.claimed_until < now),
        or_(D.c.lane.is_(None), D.c.lane.not_in(lanes_in_flight)), ~held.exists())
        .order_by(D.c.occurred_at, D.c.id).limit(bindparam("limit")).with_for_update(skip_locked=True))
    if lane:
        query = query.where(D.c.lane == bindparam("lane"))
    if only:
        query = query.where(D.c.id == bindparam("only"))
    return query


def _lane_ahead(s, found, now):
    """{row id: the due rows of its lane not younger than it} for the rows found, in one read of the
    found lanes' due rows up to the youngest found (locked ones included: SKIP LOCKED left them out
    of ``found``). Counted by bisection: a lane of a unit told of every appeal in a burst holds
    hundreds of due rows, and comparing each found row with each of them took a tenth of notify's
    profile samples."""
    dated = [r for r in found if r.lane is not None and r.occurred_at is not None]
    if not dated:
        return {r.id: 0 for r in found}
    due = {}  # lane → ([occurred_at], {row id})
    for lane, occurred_at, row_id in s.execute(select(D.c.lane, D.c.occurred_at, D.c.id).where(
            D.c.lane.in_(sorted({r.lane for r in dated})), D.c.status == PENDING, D.c.next_attempt_at <= now,
            D.c.occurred_at <= max(r.occurred_at for r in dated))):
        times, ids = due.setdefault(lane, ([], set()))
        times.append(occurred_at)
        ids.add(row_id)
    for times, _ in due.values():
        times.sort()
    ahead = {}
    for r in found:
        times, ids = due.get(r.lane, ((), ()))
        if r.occurred_at is None or not times:
            ahead[r.id] = 0
        else:  # not counting itself
            ahead[r.id] = bisect_right(times, r.occurred_at) - (r.id in ids)
    return ahead


def _heads(s, found, probing, lanes, now):
    """Of the rows found, those at the head of their lanes; one per provider being probed; at most
    ``lanes`` lanes. Once a row of a lane is left out, so are the later ones of that lane."""
    held_ahead = set()
    if _others_claim(s):  # (on SQLite no one else is claiming right now)
        # a row with more due rows of its lane not younger than it than were found: another
        # instance is claiming one of them
        lane_ahead = _lane_ahead(s, found, now)
        found_at = {}
        for r in found:  # (in the order of occurred_at)
            found_at.setdefault(r.lane, []).append(r.occurred_at)
        held_ahead = {r.id for r in found
                      if lane_ahead[r.id] > bisect_right(found_at[r.lane], r.occurred_at) - 1}
    probe_free = set()
    wanted = probing & {r.provider for r in found}
    if wanted:  # one claimer probes: the provider's row, locked, and still due for its probe
        probe_free = set(s.execute(select(P.c.name).where(P.c.name.in_(wanted), P.c.retry_at <= now)
                                   .with_for_update(skip_locked=True)).scalars())
    keep, closed, taken, probed = [], set(), [], set()
    for r in found:
        if r.lane in closed:
            continue
        blocked = r.id in held_ahead
        if r.provider in probing:
            blocked = blocked or r.provider not in probe_free or r.provider in probed
        if not blocked and r.lane not in taken and lanes is not None and len(taken) >= lanes:
            blocked = True
        if blocked:
            closed.add(r.lane)
            continue
        if r.provider in probing:
            probed.add(r.provider)
        if r.lane not in taken:
            taken.append(r.lane)
        keep.append(r)
    return keep, probed


def _drop_interrupted(s, keep, now, policy):
    """Rows whose last claim ran out while ``sending`` were interrupted. On SMS and WeChat the
    provider may have taken the message: it is not sent again but dead-listed (and falls back)."""
    stale = [r.id for r in keep if r.claimed_until is not None]
    interrupted = set()
    if stale:
        interrupted = set(s.execute(select(A.c.delivery_id).where(
            A.c.delivery_id.in_(stale), A.c.outcome == "sending")).scalars())
    if interrupted:
        s.execute(update(A).where(A.c.delivery_id.in_(interrupted), A.c.outcome == "sending")
                  .values(outcome="interrupted", finished_at=now,
                          error="sender stopped mid-send; outcome unknown"))
        for r in keep:
            if r.id in interrupted and r.channel not in domain.IDEMPOTENT_CHANNELS:
                _finish(s, s.get(Delivery, r.id), FAILED, now, error="interrupted: outcome unknown",
                        policy=policy)
        keep = [r for r in keep if r.id not in interrupted or r.channel in domain.IDEMPOTENT_CHANNELS]
    return keep


def _points(s, rows, policy):
    """The staff entries (from the directory, read at most every ``policy.reference_seconds``) and
    the subscribers (read now: none is sent to after it unsubscribed) the claimed rows go to."""
    subscriber_ids, staff = set(), {}
    for r in rows:
        kind, _, code = r.recipient.partition(":")
        if kind == SUBSCRIBER:
            subscriber_ids.add(code)
        elif r.recipient_kind != CITIZEN and not staff:
            staff = directory(s, policy.reference_seconds).staff
    subscribers = {row.id: StaffPoint(row.id, row.name, SUBSCRIBER, None, None, row.url, row.secret)
                   for row in s.execute(select(Subscriber.id, Subscriber.name, Subscriber.url, Subscriber.secret)
                                        .where(Subscriber.id.in_(subscriber_ids)))} if subscriber_ids else {}
    return staff, subscribers


def _claim(r, lease, staff, subscribers, probe):
    kind, _, code = r.recipient.partition(":")
    occurred = _aware(r.occurred_at)
    return Claim(
        id=r.id, event_id=r.event_id, event_type=r.event_type, case_no=r.case_no,
        occurred_at=occurred.isoformat() if occurred else None, recipient=r.recipient,
        recipient_kind=r.recipient_kind, channel=r.channel, provider=r.provider, template=r.template,
        context=dict(r.context or {}), urgent=bool(r.urgent), attempts=r.attempts + 1,
        staff=staff.get(code) if kind != SUBSCRIBER and r.recipient_kind != CITIZEN else None,
        subscriber=subscribers.get(code) if kind == SUBSCRIBER else None,
        lane=r.lane, lease=lease, probe=probe, fallback=tuple(r.fallback or ()))


def claim_delivery(uow, delivery_id, policy, now=None):
    """Claim one delivery if it is pending, due, unclaimed, its provider is not held back and it is
    at the head of its lane; else None (it is left for the sweep)."""
    claims = claim_due(uow, policy, limit=1, only=delivery_id, now=now)
    return claims[0] if claims else None


def by_lane(claims):
    """Claims grouped by lane, each group in its order, groups in the order of their first claim."""
    lanes = {}
    for claim in claims:
        lanes.setdefault(claim.lane, []).append(claim)
    return list(lanes.values())


# --- 3. send and record ------------------------------------------------------------------------------

def _address_and_values(claim, outside, policy):
    if claim.recipient_kind == CITIZEN:
        address = domain.citizen_address(claim.channel, outside.citizen_contact(claim.case_no))
        extra = {"salutation": domain.salutation(address.name)}
    elif claim.recipient_kind == SUBSCRIBER:
        point = claim.subscriber
        address = domain.Address(to=point.webhook_url, secret=point.webhook_secret) if point \
            else domain.Address(skip_reason="unsubscribed")
        extra = {}
    else:
        address = domain.staff_address(claim.channel, claim.staff)
        extra = {"recipient_name": claim.staff.unit_name if claim.staff else ""}
    town = claim.context.get("town_code")
    extra["town_name"] = _towns().get(town, town or "") if town else ""
    return address, extra


def attempt(claim, outside, policy, before_send=None):
    """Look up the address and send; no transaction is open here. ``before_send(claim)`` runs right
    before the channel is called and may refuse (the claim was superseded). Never raises."""
    logged = None
    try:
        channel = outside.channels[claim.channel]
        carries = getattr(channel, "carries", None)
        if not getattr(channel, "available", True) or (carries is not None and not carries(claim.template)):
            # before any look-up: intake is asked for a citizen's contact only when a send will happen
            return Outcome(SKIPPED, reason="not_configured")
        address, extra = _address_and_values(claim, outside, policy)
        if address.skip_reason:
            return Outcome(SKIPPED, reason=address.skip_reason)
        logged = domain.logged_address(claim.recipient_kind, claim.channel, address)
        if claim.recipient_kind == SUBSCRIBER:
            message = domain.Rendered()  # the event itself, no words
        else:
            values = domain.template_values({**extra, **claim.context, "portal_url": policy.portal_url})
            message = domain.render(outside.templates(claim.template), values, claim.channel,
                                    policy.sms_param_limit)
        if outside.limiter is not None:
            outside.limiter.acquire(claim.provider, claim.channel)
        if before_send is not None and not before_send(claim):
            return Outcome(SUPERSEDED)
        channel.send(domain.Outgoing(
            delivery_id=claim.id, event_id=claim.event_id, event_type=claim.event_type,
            case_no=claim.case_no, recipient=claim.recipient, address=address, message=message,
            data=claim.context, template=claim.template, occurred_at=claim.occurred_at,
            urgent=claim.urgent))
        return Outcome(SENT, address=logged)
    except domain.ProviderDown as exc:
        return Outcome(PROVIDER_DOWN, address=logged, error=exc.summary)
    except domain.PermanentError as exc:
        return Outcome(FAILED, address=logged, error=exc.summary)
    except domain.NotConfigured:
        return Outcome(SKIPPED, address=logged, reason="not_configured")
    except Exception as exc:  # transient, or unforeseen: retried within the bound, then failed
        return Outcome(RETRY, address=logged, error=domain.error_summary(exc))


def mark_sending(uow, claim, now=None):
    """Write the attempt as ``sending`` (committed) right before an SMS or WeChat send, if the claim
    is still this sender's: the at-most-once gate of channels whose receivers cannot drop a repeat."""
    now = now or _now()
    with uow:
        s = uow.session
        mine = s.execute(update(D).where(D.c.id == claim.id, D.c.status == PENDING,
                                         D.c.claimed_until == claim.lease).values(updated_at=now)).rowcount
        if mine != 1:
            return False
        s.execute(insert(A).values(delivery_id=claim.id, number=claim.attempts, outcome="sending",
                                   started_at=now))
        uow.commit()
    return True


def _finish(s, d, status, now, error=None, reason=None, policy=None):
    """End a delivery as failed or skipped and reserve the next channel of its chain, if any."""
    d.status, d.claimed_until, d.next_attempt_at, d.updated_at = status, None, None, now
    if error:
        d.last_error = error
    if reason:
        d.reason = reason
    if not d.fallback:
        return None
    chain = list(d.fallback)
    taken = s.execute(select(Delivery.id).where(
        Delivery.event_id == d.event_id, Delivery.recipient == d.recipient,
        Delivery.channel == chain[0])).scalar()
    if taken:  # a replayed delivery that fell back before
        return None
    envelope = {"event_id": d.event_id, "type": d.event_type, "case_no": d.case_no,
                "occurred_at": _aware(d.occurred_at).isoformat() if d.occurred_at else None}
    quiet = None
    if d.recipient_kind == CITIZEN and d.case_no:
        quiet = _citizens(s, [d.case_no], policy or Policy(), {})[d.case_no].quiet
    row = _reservation(envelope, d.recipient, d.recipient_kind, chain, d.template, dict(d.context or {}),
                       bool(d.urgent), now, domain.relane(d.lane or f"{d.recipient}|", chain[0]), quiet,
                       fallback_of=d.id)
    s.execute(insert(D).values(row))
    return row["id"] if row["next_attempt_at"] <= now else None


def record_outcome(uow, claim, outcome, policy, now=None):
    """Write one attempt's outcome; returns :class:`Recorded` (status None if the claim had expired
    and another sender took the delivery over: its outcome wins)."""
    now = now or _now()
    fallback_id = None
    with uow:
        s = uow.session
        d = s.execute(select(Delivery).where(Delivery.id == claim.id, Delivery.status == PENDING,
                                             Delivery.attempts == claim.attempts)
                      .with_for_update()).scalar_one_or_none()
        if d is None:
            return Recorded(None)
        if outcome.address:
            d.address = outcome.address
        if outcome.status == SENT:
            d.status, d.sent_at, d.next_attempt_at, d.last_error = SENT, now, None, None
            d.claimed_until, d.updated_at = None, now
            # it answered: its lanes drain (a statement, not the ORM's delete of a loaded row,
            # which fails when another sender's success removed the row first)
            s.execute(delete(P).where(P.c.name == claim.provider))
        elif outcome.status == PROVIDER_DOWN:
            # the provider, not the message: it waits in its place in its lane, retries untouched
            d.claimed_until, d.updated_at, d.last_error = None, now, outcome.error
            provider = _provider_for_update(s, claim.provider, now)
            provider.failures = (provider.failures or 0) + 1
            provider.down_since = provider.down_since or now
            provider.retry_at = now + timedelta(seconds=domain.backoff_seconds(
                provider.failures, policy.provider_base, policy.provider_cap, policy.rng))
            provider.last_error, provider.updated_at = outcome.error, now
        elif outcome.status == RETRY:
            d.failures = (d.failures or 0) + 1
            retry_at = domain.next_attempt_after_failure(d.failures, policy.max_attempts, policy.retry_base,
                                                         policy.retry_cap, now, policy.rng)
            if retry_at is None:
                fallback_id = _finish(s, d, FAILED, now, error=outcome.error, policy=policy)
            else:
                d.next_attempt_at, d.claimed_until, d.updated_at = retry_at, None, now
                d.last_error = outcome.error
        else:  # FAILED or SKIPPED
            fallback_id = _finish(s, d, outcome.status, now, error=outcome.error, reason=outcome.reason,
                                  policy=policy)
        finished = {"outcome": outcome.status, "error": outcome.error or outcome.reason, "finished_at": now}
        if not s.execute(update(A).where(A.c.delivery_id == claim.id, A.c.number == claim.attempts,
                                         A.c.outcome == "sending").values(**finished)).rowcount:
            # SMS and WeChat write their attempt only right before the send: this one ended earlier
            s.execute(insert(A).values(delivery_id=claim.id, number=claim.attempts, started_at=now, **finished))
        status = d.status
        uow.commit()
    if status not in (SENT, PENDING) or outcome.status != SENT:
        # delivery id, kind and channel only: never the address or the text
        log.warning("delivery %s (%s %s, %s) attempt %d: %s %s", claim.id, claim.recipient_kind,
                    claim.channel, claim.event_type, claim.attempts, outcome.status,
                    outcome.error or outcome.reason or "")
    return Recorded(status, fallback_id)


def _provider_for_update(s, name, now):
    """The provider's row, locked, created if missing. Senders of parallel lanes find a provider
    away at the same moment: created with INSERT … ON CONFLICT DO NOTHING, then read FOR UPDATE, so
    the second waits for the first and counts its own failure on top (a plain insert failed on the
    key, and the lane's sender gave up with its claims in flight)."""
    s.execute(insert_unless_present(s, P), {"name": name, "failures": 0, "down_since": now, "updated_at": now})
    return s.get(Provider, name, with_for_update=True, populate_existing=True)


def settles_simply(claim, outcome):
    """Whether ``outcome`` ends ``claim``'s delivery with nothing more to do: sent, or skipped or
    failed with no channel left to fall back to. Those many senders record together
    (:func:`record_settled`); a retry, a provider away or a fallback to reserve go through
    :func:`record_outcome`."""
    return outcome.status == SENT or (outcome.status in (SKIPPED, FAILED) and not claim.fallback)


def record_settled(uow, settled, now=None):
    """Record many outcomes that :func:`settles_simply` (``settled``: [(claim, outcome)], of any
    lanes and senders) in one transaction, a few statements whatever their number; returns a
    :class:`Recorded` per pair, in order, status None for a claim that no longer holds its delivery
    (its lease ran out and another sender took it over, or it was given back: the other's outcome
    wins). As :func:`record_outcome` would, one by one: the delivery ends sent, skipped or failed,
    its attempt is finished (written now if the send never got as far as writing it), and a probe
    that went through makes its provider healthy again."""
    if not settled:
        return []
    now = now or _now()
    with uow:
        s = uow.session
        # the rows still held by these claims (same lease, same attempt), locked: a claimer that
        # finds a lease just run out skips them (FOR UPDATE SKIP LOCKED) instead of taking them over
        # under our update; with each, whether its attempt was written ('sending') before the send
        current = {r.id: r for r in s.execute(_held_query(), {"ids": [c.id for c, _ in settled]})}

        def holds(claim):
            row = current.get(claim.id)
            return row is not None and (row.attempts, _aware(row.claimed_until)) == (claim.attempts, claim.lease)
        mine = [(c, o) for c, o in settled if holds(c)]
        if mine:
            # one statement each, executed for many rows (fixed statements: compiled once; on
            # PostgreSQL sent as pages of a batch, wuji_common.db.make_engine)
            s.execute(_SETTLE, [{
                "d_id": c.id, "d_status": o.status, "d_sent_at": now if o.status == SENT else None,
                "d_sent": o.status == SENT, "d_error": o.error if o.status != SENT else None,
                "d_reason": o.reason if o.status != SENT else None, "d_address": o.address or None,
                "d_now": now} for c, o in mine])
            # the attempt: claimed on a channel that drops repeats, or marked right before an SMS
            # or WeChat send, it is 'sending'; one that ended before that (a skip) is written now
            written = [(c, o) for c, o in mine if current[c.id].attempt_written]
            if written:
                s.execute(_FINISH_ATTEMPT, [{"a_id": c.id, "a_number": c.attempts, "a_outcome": o.status,
                                             "a_error": o.error or o.reason or None, "a_now": now}
                                            for c, o in written])
            unwritten = [{"delivery_id": c.id, "number": c.attempts, "outcome": o.status,
                          "error": o.error or o.reason, "started_at": now, "finished_at": now}
                         for c, o in mine if not current[c.id].attempt_written and o.status != SENT]
            if unwritten:
                s.execute(insert(A), unwritten)
            probed = {c.provider for c, o in mine if c.probe and o.status == SENT}
            if probed:  # it answered: its lanes drain (one that went away after a claim has its own probe)
                s.execute(delete(P).where(P.c.name.in_(probed)))
        uow.commit()
    results = []
    for c, o in settled:
        if not holds(c):
            results.append(Recorded(None))
            continue
        if o.status != SENT:
            # delivery id, kind and channel only: never the address or the text
            log.warning("delivery %s (%s %s, %s) attempt %d: %s %s", c.id, c.recipient_kind, c.channel,
                        c.event_type, c.attempts, o.status, o.error or o.reason or "")
        results.append(Recorded(o.status))
    return results


@lru_cache(maxsize=None)
def _held_query():
    """:func:`record_settled`'s pending rows among ``ids``, locked, each with its attempt count, its
    lease and whether its current attempt was written as 'sending'."""
    sending = A.alias("sending")
    return (select(D.c.id, D.c.attempts, D.c.claimed_until,
                   (sending.c.delivery_id.is_not(None)).label("attempt_written"))
            .outerjoin(sending, and_(sending.c.delivery_id == D.c.id, sending.c.number == D.c.attempts,
                                     sending.c.outcome == "sending"))
            .where(D.c.status == PENDING, D.c.id.in_(bindparam("ids", expanding=True)))
            .with_for_update(of=D))


# a settled delivery: its status; sent_at if sent; its last error cleared by a send, else its own
# if it has one; its reason and address if it has them (else it keeps theirs); no longer due or held
_SETTLE = update(D).where(D.c.id == bindparam("d_id")).values(
    status=bindparam("d_status"),
    sent_at=func.coalesce(bindparam("d_sent_at", type_=D.c.sent_at.type), D.c.sent_at),
    last_error=case((bindparam("d_sent", type_=Boolean), null()),
                    else_=func.coalesce(bindparam("d_error", type_=D.c.last_error.type), D.c.last_error)),
    reason=func.coalesce(bindparam("d_reason", type_=D.c.reason.type), D.c.reason),
    address=func.coalesce(bindparam("d_address", type_=D.c.address.type), D.c.address),
    next_attempt_at=None, claimed_until=None, updated_at=bindparam("d_now", type_=D.c.updated_at.type))

_FINISH_ATTEMPT = update(A).where(
    A.c.delivery_id == bindparam("a_id"), A.c.number == bindparam("a_number"), A.c.outcome == "sending").values(
    outcome=bindparam("a_outcome"), error=bindparam("a_error", type_=A.c.error.type),
    finished_at=bindparam("a_now", type_=A.c.finished_at.type))


def release(uow, claims, now=None):
    """Give claims back unsent (the sender stops, its provider went away, its lease is half gone):
    they keep their place in their lanes, as if never claimed."""
    if not claims:
        return
    now = now or _now()
    with uow:
        s = uow.session
        for lease in {c.lease for c in claims}:
            s.execute(update(D).where(D.c.id.in_([c.id for c in claims if c.lease == lease]),
                                      D.c.status == PENDING, D.c.claimed_until == lease)
                      .values(claimed_until=None, attempts=D.c.attempts - 1, updated_at=now))
        s.execute(delete(A).where(tuple_(A.c.delivery_id, A.c.number).in_([(c.id, c.attempts) for c in claims]),
                                  A.c.outcome == "sending"))
        probes = {c.provider for c in claims if c.probe}
        if probes:
            s.execute(update(P).where(P.c.name.in_(probes)).values(retry_at=now))
        uow.commit()


def _persist(write, *args, tries=3, pause=0.25):
    """Record what a sender knows (sent, failed, given back) through a moment's trouble with the
    database (restarting, out of connections): tried again after a short pause. If it still fails
    the claim runs out and the sweep sends again, with the same delivery id."""
    for n in range(tries):
        try:
            return write(*args)
        except OperationalError:
            if n == tries - 1:
                raise
            time.sleep(pause * (n + 1))


def send_claims(uow, claims, outside, policy, stopping=lambda: False, now=_now, record=None,
                clock=time.monotonic):
    """Send one lane's claims in order. Outcomes that :func:`settles_simply` (sends, skips and
    failures with nothing to fall back to) are recorded ``policy.record_every`` at a time, or once
    the oldest of them has waited ``policy.record_seconds``, through ``record([(claim, outcome)])``
    → [Recorded] (default: :func:`record_settled` in a transaction of this sender's; the service
    passes a group commit that merges concurrent senders' into one); any other outcome is recorded
    at once (:func:`record_outcome`), and a fallback reserved on the way is sent right after. Stops
    (and gives the rest back) when the provider goes away, when asked to stop, or once half the
    lease is gone. Returns [(channel, new status), ...]."""
    if record is None:
        def record(settled):
            return record_settled(uow, settled)
    done, settled = [], []
    oldest = 0.0  # when the first of ``settled`` came in

    def flush():
        if settled:
            recorded = _persist(record, list(settled))
            done.extend((c.channel, r.status) for (c, _), r in zip(settled, recorded))
            settled.clear()

    def gate(claim):
        return claim.channel in domain.IDEMPOTENT_CHANNELS or mark_sending(uow, claim)

    for i, claim in enumerate(claims):
        half = timedelta(seconds=policy.claim_seconds / 2) if i else timedelta(0)
        if stopping() or now() >= claim.lease - half:
            flush()
            _persist(release, uow, claims[i:])
            break
        if settled and clock() - oldest >= policy.record_seconds:
            flush()
        outcome = attempt(claim, outside, policy, before_send=gate)
        if settles_simply(claim, outcome):
            if not settled:
                oldest = clock()
            settled.append((claim, outcome))
            if len(settled) >= policy.record_every:
                flush()
            continue
        flush()
        if outcome.status == SUPERSEDED:
            done.append((claim.channel, None))
            continue
        recorded = _persist(record_outcome, uow, claim, outcome, policy)
        done.append((claim.channel, recorded.status))
        if recorded.fallback_id:
            done += deliver(uow, recorded.fallback_id, outside, policy)
        if outcome.status == PROVIDER_DOWN:
            _persist(release, uow, claims[i + 1:])  # they wait in their lane for the provider's probe
            break
    flush()
    return done


def _lane_of(uow, delivery_id):
    with uow:
        row = uow.session.execute(select(D.c.lane, D.c.status).where(D.c.id == delivery_id)).first()
    return row.lane if row is not None and row.status == PENDING else None


def deliver(uow, delivery_id, outside, policy, rounds=20):
    """Claim, send and record one delivery, and whatever is ahead of it in its lane (and the
    fallbacks they lead to); returns [(channel, new status), ...]. Empty if it is not pending, not
    yet due, its provider is held back, or another sender has its lane: the sweep takes it up."""
    lane = _lane_of(uow, delivery_id)
    done = []
    for _ in range(rounds if lane else 0):
        claims = claim_due(uow, policy, lane=lane)
        if not claims:
            break
        done += send_claims(uow, claims, outside, policy)
        if any(c.id == delivery_id for c in claims):
            break
    return done


def send_due(uow, outside, policy, limit=1000, budget_seconds=10.0, clock=time.monotonic):
    """Send what is due, lane after lane, batch after batch (the service runs lanes in parallel
    instead): retries, lanes of a provider that came back, deliveries a crash left. Claims no more
    after ``limit`` deliveries or ``budget_seconds``; returns [(channel, new status), ...]."""
    done, claimed = [], 0
    started = clock()
    while claimed < limit and clock() - started <= budget_seconds:
        claims = claim_due(uow, policy, limit=min(policy.batch, limit - claimed))
        if not claims:
            break
        claimed += len(claims)
        for lane in by_lane(claims):
            done += send_claims(uow, lane, outside, policy)
    return done


# --- the log, dead deliveries and replays -------------------------------------------------------------

def _with_attempts(s, rows):
    ids = [d.id for d in rows]
    attempts = {}
    if ids:
        for a in s.execute(select(DeliveryAttempt).where(DeliveryAttempt.delivery_id.in_(ids))
                           .order_by(DeliveryAttempt.delivery_id, DeliveryAttempt.number)).scalars():
            attempts.setdefault(a.delivery_id, []).append(a)
    out = []
    for d in rows:
        view = delivery_schema.dump(d)
        view["attempt_log"] = attempt_schema.dump(attempts.get(d.id, []), many=True)
        out.append(view)
    return out


def deliveries_for_case(uow, case_no):
    """Who was told what about a case, when, over which channel, with every attempt."""
    with uow:
        s = uow.session
        rows = s.execute(select(Delivery).where(Delivery.case_no == case_no)
                         .order_by(Delivery.created_at, Delivery.id)).scalars().all()
        return _with_attempts(s, rows)


def get_delivery(uow, delivery_id):
    with uow:
        d = uow.session.get(Delivery, delivery_id)
        if d is None:
            raise NotFound(f"delivery {delivery_id} not found")
        return _with_attempts(uow.session, [d])[0]


def failed_deliveries(uow, limit=100):
    """Dead deliveries (retries used up, refused for good, or interrupted on a channel that is not
    sent twice), newest first."""
    with uow:
        s = uow.session
        rows = s.execute(select(Delivery).where(Delivery.status == FAILED)
                         .order_by(Delivery.updated_at.desc(), Delivery.id).limit(limit)).scalars().all()
        return _with_attempts(s, rows)


def replay(uow, delivery_id, idempotency_key=None, now=None):
    """Make a failed or skipped delivery pending again with a fresh set of retries. The delivery
    keeps its id, so a receiver that got an earlier try still drops the repeat. A fallback already
    reserved for it stays as it is (ops replay what they mean to resend)."""
    now = now or _now()
    with uow:
        earlier = uow.recall("replay", idempotency_key)
        if earlier:
            return earlier
        s = uow.session
        d = s.get(Delivery, delivery_id)
        if d is None:
            raise NotFound(f"delivery {delivery_id} not found")
        if d.status not in (FAILED, SKIPPED):
            raise InvalidTransition(f"delivery {delivery_id} is {d.status}; only failed or skipped "
                                    "deliveries are replayed")
        d.status, d.reason, d.failures = PENDING, None, 0
        d.next_attempt_at, d.claimed_until, d.updated_at = now, None, now
        result = delivery_schema.dump(d)
        uow.remember("replay", idempotency_key, result)
        uow.commit()
        return result


def providers(uow, now=None):
    """Providers that are away, with how many deliveries wait for each."""
    with uow:
        s = uow.session
        out = []
        for p in s.execute(select(Provider).order_by(Provider.name)).scalars():
            queued = s.execute(select(func.count()).select_from(Delivery).where(
                Delivery.provider == p.name, Delivery.status == PENDING)).scalar()
            out.append(ProviderSchema().dump({**{c: getattr(p, c) for c in (
                "name", "failures", "down_since", "retry_at", "last_error")}, "queued": queued}))
        return out


# --- inbox --------------------------------------------------------------------------------------------

def inbox(uow, owner_code, unread_only=False, limit=100):
    """A unit's or grid worker's inbox, newest first."""
    with uow:
        s = uow.session
        if s.get(UnitContact, owner_code) is None:
            raise NotFound(f"no inbox for {owner_code}")
        query = select(InboxMessage).where(InboxMessage.owner_code == owner_code)
        if unread_only:
            query = query.where(InboxMessage.read_at.is_(None))
        rows = s.execute(query.order_by(InboxMessage.created_at.desc(), InboxMessage.id)
                         .limit(max(1, min(int(limit), 500)))).scalars().all()
        return InboxMessageSchema().dump(rows, many=True)


def mark_read(uow, owner_code, message_ids=None, now=None):
    """Mark the owner's messages read (all unread ones if no ids are given); a repeat changes
    nothing. Returns how many were marked now."""
    now = now or _now()
    with uow:
        s = uow.session
        if s.get(UnitContact, owner_code) is None:
            raise NotFound(f"no inbox for {owner_code}")
        query = update(InboxMessage).where(InboxMessage.owner_code == owner_code,
                                           InboxMessage.read_at.is_(None))
        if message_ids is not None:
            query = query.where(InboxMessage.id.in_(list(message_ids)))
        marked = s.execute(query.values(read_at=now).execution_options(synchronize_session=False)).rowcount
        uow.commit()
        return marked


# --- webhook subscribers ------------------------------------------------------------------------------

def subscribe(uow, payload, idempotency_key=None, now=None):
    """A new subscriber (url and event types; a secret is made if none is given and returned once
    as ``secret``), or more event types for an existing one (``subscriber_id``)."""
    data = load(SubscribeInput(), payload)
    now = now or _now()
    with uow:
        earlier = uow.recall("subscribe", idempotency_key)
        if earlier:
            return earlier
        s = uow.session
        made_secret = None
        if data["subscriber_id"]:
            sub = s.get(Subscriber, data["subscriber_id"])
            if sub is None:
                raise NotFound(f"subscriber {data['subscriber_id']} not found")
            sub.event_types = sorted(set(sub.event_types) | set(data["event_types"]))
            if data["url"]:
                sub.url = data["url"]
            if data["secret"]:
                sub.secret = data["secret"]
            sub.updated_at = now
        else:
            if not data["url"]:
                raise ValidationError("请求参数有误", {"url": ["新订阅须填写接收地址"]})
            if data["unit_code"] and s.get(UnitContact, data["unit_code"]) is None:
                raise NotFound(f"unit {data['unit_code']} not found")
            made_secret = data["secret"] is None and secrets.token_hex(32)
            sub = Subscriber(id=str(uuid.uuid4()), name=data["name"] or data["url"][:100], url=data["url"],
                             secret=data["secret"] or made_secret, event_types=sorted(set(data["event_types"])),
                             unit_code=data["unit_code"], created_at=now, updated_at=now)
            s.add(sub)
        result = SubscriberSchema().dump(sub)
        if made_secret:
            result["secret"] = made_secret
        uow.remember("subscribe", idempotency_key, result)
        uow.commit()
        directory_changed(s)
        return result


def unsubscribe(uow, subscriber_id, event_types=None, now=None):
    """Remove event types from a subscriber, or (none given, or none left) the subscriber itself;
    what was reserved for it and not yet sent is skipped as ``unsubscribed``."""
    now = now or _now()
    with uow:
        s = uow.session
        sub = s.get(Subscriber, subscriber_id)
        if sub is None:
            raise NotFound(f"subscriber {subscriber_id} not found")
        left = sorted(set(sub.event_types) - set(event_types)) if event_types else []
        if left:
            sub.event_types, sub.updated_at = left, now
            result = SubscriberSchema().dump(sub)
        else:
            s.delete(sub)
            s.execute(update(Delivery).where(Delivery.recipient == f"{SUBSCRIBER}:{subscriber_id}",
                                             Delivery.status == PENDING)
                      .values(status=SKIPPED, reason="unsubscribed", next_attempt_at=None, updated_at=now)
                      .execution_options(synchronize_session=False))
            s.execute(delete(Provider).where(Provider.name == f"webhook:{SUBSCRIBER}:{subscriber_id}"))
            result = None
        uow.commit()
        directory_changed(s)
        return result


def list_subscribers(uow):
    with uow:
        rows = uow.session.execute(select(Subscriber).order_by(Subscriber.created_at)).scalars().all()
        return SubscriberSchema().dump(rows, many=True)


# --- citizens' preferences ----------------------------------------------------------------------------

def _citizen_of(s, case_no):
    row = s.get(CaseCitizen, case_no)
    if row is None:
        raise NotFound(f"case {case_no} has no citizen notify knows of (anonymous, or not received yet)")
    return row.citizen_ref


def _preference_view(pref, case_no):
    return {"case_no": case_no, "channel": pref.channel if pref else None,
            "quiet_hours": f"{pref.quiet_start}-{pref.quiet_end}" if pref and pref.quiet_start else None}


def set_preferences(uow, payload, idempotency_key=None, now=None):
    """The citizen of ``case_no`` chooses the channel to be told on first and quiet hours; the choice
    holds for every appeal of theirs. None leaves a value as it is; "" clears it."""
    data = load(PreferenceInput(), payload)
    now = now or _now()
    with uow:
        earlier = uow.recall("set_preferences", idempotency_key)
        if earlier:
            return earlier
        s = uow.session
        ref = _citizen_of(s, data["case_no"])
        pref = s.get(CitizenPreference, ref) or CitizenPreference(citizen_ref=ref)
        if data["channel"] is not None:
            pref.channel = data["channel"] or None
        if data["quiet_hours"] is not None:
            window = domain.parse_quiet_hours(data["quiet_hours"])
            pref.quiet_start, pref.quiet_end = window if window else ("", "")
        pref.updated_at = now
        s.add(pref)
        result = _preference_view(pref, data["case_no"])
        uow.remember("set_preferences", idempotency_key, result)
        uow.commit()
        return result


def get_preferences(uow, case_no):
    with uow:
        s = uow.session
        return _preference_view(s.get(CitizenPreference, _citizen_of(s, case_no)), case_no)


# --- staff directory ----------------------------------------------------------------------------------

def _unit_view(unit):
    return UnitContactSchema().dump({
        "unit_code": unit.unit_code, "unit_name": unit.unit_name, "kind": unit.kind or "unit",
        "email": unit.email, "phone_set": bool(unit.phone), "webhook_url": unit.webhook_url,
        "webhook_secret_set": bool(unit.webhook_secret), "updated_at": unit.updated_at})


def set_unit_contact(uow, payload, idempotency_key=None, now=None):
    """A unit (or grid worker, force, supervisor) sets where it is told. Fields left None stay as
    they are; an empty webhook_url removes the webhook. A webhook set without a secret gets one made
    here, returned once in ``webhook_secret`` (the receiver needs it to check signatures)."""
    remove_webhook = payload.get("webhook_url") == ""
    if remove_webhook:
        payload = {**payload, "webhook_url": None}
    data = load(UnitContactInput(), payload)
    now = now or _now()
    with uow:
        earlier = uow.recall("set_unit_contact", idempotency_key)
        if earlier:
            return earlier
        unit = uow.session.get(UnitContact, data["unit_code"])
        if unit is None:
            raise NotFound(f"unit {data['unit_code']} not found")
        made_secret = None
        if data["email"] is not None:
            unit.email = data["email"]
        if data["phone"] is not None:
            unit.phone = data["phone"]
        if remove_webhook:
            unit.webhook_url = None
            unit.webhook_secret = None
        elif data["webhook_url"] is not None:
            unit.webhook_url = data["webhook_url"]
        if data["webhook_secret"] is not None:
            unit.webhook_secret = data["webhook_secret"]
        elif unit.webhook_url and not unit.webhook_secret:
            made_secret = unit.webhook_secret = secrets.token_hex(32)
        unit.updated_at = now
        result = _unit_view(unit)
        if made_secret:
            result["webhook_secret"] = made_secret
        uow.remember("set_unit_contact", idempotency_key, result)
        uow.commit()
        directory_changed(uow.session)
        return result


def get_unit_contact(uow, unit_code):
    with uow:
        unit = uow.session.get(UnitContact, unit_code)
        if unit is None:
            raise NotFound(f"unit {unit_code} not found")
        return _unit_view(unit)


def load_unit_contacts(uow, rows, now=None):
    """Load the shipped directory. New entries are added; for known ones the name and kind are
    refreshed and a non-empty address in the file replaces the stored one, while an endpoint or
    secret that a unit set itself is never cleared by a reload. Returns how many rows were read."""
    now = now or _now()
    with uow:
        s = uow.session
        for row in rows:
            unit = s.get(UnitContact, row["unit_code"])
            if unit is None:
                unit = UnitContact(unit_code=row["unit_code"])
                s.add(unit)
            unit.unit_name = row["unit_name"]
            unit.kind = row.get("kind") or "unit"
            for column in ("email", "phone", "webhook_url"):
                if row.get(column):
                    setattr(unit, column, row[column])
            unit.updated_at = now
        uow.commit()
        directory_changed(s)
    return len(rows)

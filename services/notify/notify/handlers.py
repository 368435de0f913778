"""notify's use cases as plain functions: no nameko, no eventlet.

At most once per (event, recipient, channel), in three steps that never hold a transaction open
across the network:

1. :func:`record_event` reserves, per notice, a ``pending`` delivery on the first channel of its
   chain, in the same transaction that marks the event processed (a redelivered event reserves
   nothing; the unique key (event_id, recipient, channel) stops a concurrent duplicate);
2. :func:`deliver` claims one delivery in a short transaction (a lease, with an attempt row written
   as ``sending``), looks up the address and sends outside any transaction, then records the outcome
   in another short transaction;
3. :func:`send_due` does the same for every delivery that is due, oldest event first: retries, the
   queue of a provider that came back, and deliveries left claimed by a crash.

Failures: a message's own transient failure is retried with exponential backoff and jitter; a
permanent one, or the last retry, marks it ``failed`` (the dead list) and reserves the next channel
of its chain. A provider that is away (:class:`ProviderDown`) holds all its deliveries, in order,
without using up their retries; one probe at a time tries the oldest after the provider's own
backoff, and when it goes through the queue drains oldest first.

Crashes: an attempt still ``sending`` when its claim ran out was interrupted. On channels whose
receivers drop a repeat by the delivery id (inbox, webhook, e-mail) it is sent again; on SMS and
WeChat it is not — nobody is told twice — it is dead-listed as interrupted for ops to check and
replay, and the next channel is tried.
"""
import logging
import random
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from marshmallow import ValidationError as SchemaError
from sqlalchemy import and_, delete, exists, func, or_, select, update
from sqlalchemy.orm import aliased

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
from wuji_common.errors import InvalidTransition, NotFound, ValidationError

log = logging.getLogger(__name__)

delivery_schema = DeliverySchema()
attempt_schema = AttemptSchema()
RETRY, PROVIDER_DOWN = "retry", "provider_down"


def _now():
    return datetime.now(timezone.utc)


def _aware(at):
    """SQLite hands back naive UTC."""
    return at.replace(tzinfo=timezone.utc) if at is not None and at.tzinfo is None else at


@dataclass(frozen=True)
class Policy:
    """How deliveries are retried and held. ``claim_seconds`` must outlast one send (intake look-up,
    rate-limit wait and the channel's time-out): a claim older than that is taken as its sender's
    crash."""
    max_attempts: int = 5              # a message's own failures before it is dead
    retry_base: float = 30             # first retry after 15–30 s, then doubling ...
    retry_cap: float = 3600            # ... up to 30–60 min
    provider_base: float = 5           # first probe of a provider that went away after 2.5–5 s ...
    provider_cap: float = 300          # ... then doubling up to 2.5–5 min
    claim_seconds: float = 120
    portal_url: str = ""
    default_quiet_hours: str = ""      # for citizens without their own; "" = none
    sms_param_limit: int = 35
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


@dataclass(frozen=True)
class Outcome:
    status: str                  # sent | skipped | failed | retry | provider_down
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


def load(schema, payload):
    try:
        return schema.load(payload)
    except SchemaError as err:
        raise ValidationError("请求参数有误", err.normalized_messages()) from None


def available_channels(channels):
    return tuple(name for name, channel in channels.items() if getattr(channel, "available", True))


# --- 1. reserve --------------------------------------------------------------------------------------

class Directory:
    """The staff directory as domain.plan reads it, within one transaction."""

    def __init__(self, session):
        self.session = session

    def get(self, code):
        return self.session.get(UnitContact, code)

    def of_kind(self, kind):
        return self.session.execute(select(UnitContact).where(UnitContact.kind == kind)
                                    .order_by(UnitContact.unit_code)).scalars().all()


def _preference(s, case_no):
    if not case_no:
        return None
    row = s.execute(select(CitizenPreference).join(
        CaseCitizen, CaseCitizen.citizen_ref == CitizenPreference.citizen_ref)
        .where(CaseCitizen.case_no == case_no)).scalar_one_or_none()
    return row


def _quiet_window(preference, policy):
    if preference is not None and preference.quiet_start:
        return preference.quiet_start, preference.quiet_end
    if preference is not None and preference.quiet_start == "":
        return None
    return domain.parse_quiet_hours(policy.default_quiet_hours)


def _reserve(s, envelope, recipient, kind, chain, template, context, urgent, now, policy,
             skip_reason=None, fallback_of=None):
    channel = chain[0]
    due = now
    if kind == CITIZEN and not skip_reason:
        due = domain.hold_for_quiet_hours(channel, urgent, _quiet_window(_preference(
            s, envelope["case_no"]), policy), now)
    delivery = Delivery(
        id=str(uuid.uuid4()), event_id=envelope["event_id"], event_type=envelope["type"],
        case_no=envelope["case_no"], occurred_at=_occurred(envelope, now), recipient=recipient,
        recipient_kind=kind, channel=channel, provider=domain.provider_of(channel, recipient),
        template=template, context=context, fallback=list(chain[1:]), fallback_of=fallback_of,
        urgent=urgent, status=SKIPPED if skip_reason else PENDING, reason=skip_reason,
        attempts=0, failures=0, next_attempt_at=None if skip_reason else due,
        created_at=now, updated_at=now)
    s.add(delivery)
    return delivery


def _occurred(envelope, now):
    try:
        return datetime.fromisoformat(envelope["occurred_at"]).astimezone(timezone.utc)
    except (KeyError, TypeError, ValueError):
        return now


def record_event(uow, consumer, envelope, rules, available=domain.CHANNELS, policy=None, now=None):
    """Reserve the deliveries an event calls for; returns the ids of those due now.

    At-least-once delivery of events: a redelivered event (same event_id) reserves nothing."""
    now = now or _now()
    policy = policy or Policy()
    with uow:
        if not uow.first_delivery(consumer, envelope["event_id"]):
            return []
        s = uow.session
        citizen_ref = envelope["data"].get("citizen_ref")
        if envelope["type"] == "appeal_received" and citizen_ref and envelope["case_no"]:
            s.merge(CaseCitizen(case_no=envelope["case_no"], citizen_ref=citizen_ref))
            s.flush()
        preference = _preference(s, envelope["case_no"])
        reserved = []
        for planned in domain.plan(rules, envelope, Directory(s), available,
                                   preference.channel if preference else None):
            reserved.append(_reserve(s, envelope, planned.recipient, planned.recipient_kind, planned.chain,
                                     planned.template, planned.context, planned.urgent, now, policy,
                                     planned.skip_reason))
        for subscriber in s.execute(select(Subscriber).order_by(Subscriber.created_at)).scalars():
            if domain.subscriber_wants(subscriber, envelope):
                reserved.append(_reserve(s, envelope, f"{SUBSCRIBER}:{subscriber.id}", SUBSCRIBER,
                                         ("webhook",), "", dict(envelope["data"]), False, now, policy))
        uow.commit()
    return [d.id for d in reserved if d.status == PENDING and _aware(d.next_attempt_at) <= now]


# --- 2. send -----------------------------------------------------------------------------------------

def _claimable(now):
    return (Delivery.status == PENDING, Delivery.next_attempt_at <= now,
            or_(Delivery.claimed_until.is_(None), Delivery.claimed_until < now))


def _provider_free(now):
    """The delivery's provider is not held back (down and before its next probe)."""
    return ~exists().where(Provider.name == Delivery.provider, Provider.retry_at > now)


def _first_in_queue(now):
    """No older delivery of the same provider is waiting: a provider's queue goes out in the order
    the events happened (those in flight, and those waiting for their own retry, do not hold it)."""
    older = aliased(Delivery)
    return ~exists().where(
        older.provider == Delivery.provider, older.status == PENDING, older.next_attempt_at <= now,
        or_(older.claimed_until.is_(None), older.claimed_until < now),
        or_(older.occurred_at < Delivery.occurred_at,
            and_(older.occurred_at == Delivery.occurred_at, older.id < Delivery.id)))


def _take(s, delivery_id, policy, now):
    """Compare-and-set the claim: only one sender wins a delivery, on SQLite as on PostgreSQL."""
    provider_name = s.execute(select(Delivery.provider).where(Delivery.id == delivery_id)).scalar()
    provider = s.execute(select(Provider).where(Provider.name == provider_name)
                         .with_for_update()).scalar_one_or_none()
    if provider is not None and provider.retry_at is not None and _aware(provider.retry_at) > now:
        return None
    taken = s.execute(
        update(Delivery).where(Delivery.id == delivery_id, *_claimable(now), _first_in_queue(now))
        .values(attempts=Delivery.attempts + 1, updated_at=now,
                claimed_until=now + timedelta(seconds=policy.claim_seconds))
        .execution_options(synchronize_session=False))
    if taken.rowcount != 1:
        return None
    if provider is not None and provider.failures:
        # this is the probe of a provider that was away: no other send to it until it answers
        provider.retry_at = now + timedelta(seconds=policy.claim_seconds)
    d = s.execute(select(Delivery).where(Delivery.id == delivery_id)).scalar_one()
    interrupted = s.execute(update(DeliveryAttempt).where(
        DeliveryAttempt.delivery_id == d.id, DeliveryAttempt.outcome == "sending")
        .values(outcome="interrupted", finished_at=now,
                error="sender stopped mid-send; outcome unknown")
        .execution_options(synchronize_session=False)).rowcount
    if interrupted and d.channel not in domain.IDEMPOTENT_CHANNELS:
        # the provider may have taken it: sending again could tell the citizen twice
        _finish(s, d, FAILED, now, error="interrupted: outcome unknown")
        return None
    s.add(DeliveryAttempt(delivery_id=d.id, number=d.attempts, outcome="sending", started_at=now))
    staff = subscriber = None
    kind, _, code = d.recipient.partition(":")
    if kind == SUBSCRIBER:
        row = s.get(Subscriber, code)
        if row is not None:
            subscriber = StaffPoint(row.id, row.name, SUBSCRIBER, None, None, row.url, row.secret)
    elif d.recipient_kind != CITIZEN:
        row = s.get(UnitContact, code)
        if row is not None:
            staff = StaffPoint(row.unit_code, row.unit_name, row.kind, row.email, row.phone,
                               row.webhook_url, row.webhook_secret)
    occurred = _aware(d.occurred_at)
    return Claim(d.id, d.event_id, d.event_type, d.case_no, occurred.isoformat() if occurred else None,
                 d.recipient, d.recipient_kind, d.channel, d.provider, d.template, dict(d.context or {}),
                 bool(d.urgent), d.attempts, staff, subscriber)


def claim_delivery(uow, delivery_id, policy, now=None):
    """Claim one delivery for an attempt if it is pending, due, unclaimed, its provider is not held
    back and it is first in its provider's queue; else None (it is left for the sweep)."""
    now = now or _now()
    with uow:
        claim = _take(uow.session, delivery_id, policy, now)
        uow.commit()
    return claim


def claim_next_due(uow, policy, now=None, skip=(), provider_of=None):
    """Claim the delivery whose event is oldest among those that can go now (of the provider of
    delivery ``provider_of`` only, if given). With several notify instances on PostgreSQL, rows
    another instance is claiming are skipped (FOR UPDATE SKIP LOCKED), not waited for. Returns
    (claim or None, the id looked at or None)."""
    now = now or _now()
    with uow:
        s = uow.session
        query = (select(Delivery.id).where(*_claimable(now), _provider_free(now), _first_in_queue(now))
                 .order_by(Delivery.occurred_at, Delivery.id).limit(1).with_for_update(skip_locked=True))
        if skip:
            query = query.where(Delivery.id.not_in(list(skip)))
        if provider_of:
            query = query.where(Delivery.provider == select(Delivery.provider).where(
                Delivery.id == provider_of).scalar_subquery())
        ids = s.execute(query).scalars().all()
        claim = _take(s, ids[0], policy, now) if ids else None
        uow.commit()
    return claim, (ids[0] if ids else None)


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
    extra["town_name"] = reference.towns().get(town, town or "") if town else ""
    return address, extra


def attempt(claim, outside, policy):
    """Look up the address and send; no transaction is open here. Never raises."""
    logged = None
    try:
        channel = outside.channels[claim.channel]
        if not getattr(channel, "available", True):
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
    nxt = _reserve(s, envelope, d.recipient, d.recipient_kind, chain, d.template, dict(d.context or {}),
                   bool(d.urgent), now, policy or Policy(), fallback_of=d.id)
    return nxt.id if _aware(nxt.next_attempt_at) <= now else None


def record_outcome(uow, claim, outcome, policy, now=None):
    """Write the attempt's outcome; returns :class:`Recorded` (status None if the claim had expired
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
        provider = s.get(Provider, claim.provider)
        if outcome.status == SENT:
            d.status, d.sent_at, d.next_attempt_at, d.last_error = SENT, now, None, None
            d.claimed_until, d.updated_at = None, now
            if provider is not None:
                s.delete(provider)  # it answered: its queue drains
        elif outcome.status == PROVIDER_DOWN:
            # the provider, not the message: it waits in its place in the queue, retries untouched
            d.claimed_until, d.updated_at, d.last_error = None, now, outcome.error
            if provider is None:
                provider = Provider(name=claim.provider, failures=0, down_since=now, updated_at=now)
                s.add(provider)
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
        s.execute(update(DeliveryAttempt).where(
            DeliveryAttempt.delivery_id == claim.id, DeliveryAttempt.number == claim.attempts,
            DeliveryAttempt.outcome == "sending")
            .values(outcome=outcome.status, error=outcome.error or outcome.reason, finished_at=now)
            .execution_options(synchronize_session=False))
        status = d.status
        uow.commit()
    if status not in (SENT, PENDING) or outcome.status != SENT:
        # delivery id, kind and channel only: never the address or the text
        log.warning("delivery %s (%s %s, %s) attempt %d: %s %s", claim.id, claim.recipient_kind,
                    claim.channel, claim.event_type, claim.attempts, outcome.status,
                    outcome.error or outcome.reason or "")
    return Recorded(status, fallback_id)


def _send_claimed(uow, claim, outside, policy):
    """Send a claimed delivery, then any fallback due at once; [(channel, status), ...]."""
    done = []
    while claim is not None:
        recorded = record_outcome(uow, claim, attempt(claim, outside, policy), policy)
        done.append((claim.channel, recorded.status))
        claim = claim_delivery(uow, recorded.fallback_id, policy) if recorded.fallback_id else None
    return done


def deliver(uow, delivery_id, outside, policy, helping=20):
    """Claim, send and record one delivery (and the fallbacks it leads to); returns
    [(channel, new status), ...]. If older deliveries of its provider are waiting, it sends those
    first (up to ``helping`` of them), so that a provider's queue goes out oldest first while every
    worker helps it along. Empty if nothing could be claimed (sent already, not yet due, its
    provider held back, or being sent by another worker): the sweep takes it up then."""
    done = []
    for _ in range(helping):
        claim = claim_delivery(uow, delivery_id, policy)
        if claim is not None:
            return done + _send_claimed(uow, claim, outside, policy)
        older, _ = claim_next_due(uow, policy, provider_of=delivery_id)
        if older is not None:
            done += _send_claimed(uow, older, outside, policy)
        elif _waiting(uow, delivery_id):
            time.sleep(0.005)  # another worker is claiming the head of the queue this instant
        else:
            break  # sent, in flight, not yet due, or its provider is held back
    return done


def _waiting(uow, delivery_id, now=None):
    """Whether a delivery could go now but for others ahead of it in its provider's queue."""
    now = now or _now()
    with uow:
        return uow.session.execute(select(Delivery.id).where(
            Delivery.id == delivery_id, *_claimable(now), _provider_free(now))).first() is not None


def send_due(uow, outside, policy, limit=200, budget_seconds=10.0, clock=time.monotonic):
    """Send up to ``limit`` due deliveries, oldest event first, one claim at a time (a claim outlasts
    one send, not a batch; one at a time keeps a provider's queue in order), and claim no more after
    ``budget_seconds`` so that one run stays short (a stopping service waits for it); returns
    [(channel, new status), ...]."""
    done, passed = [], set()
    started = clock()
    for _ in range(limit):
        if clock() - started > budget_seconds:
            break
        claim, looked_at = claim_next_due(uow, policy, skip=passed)
        if looked_at is None:
            break
        if claim is None:
            passed.add(looked_at)  # interrupted and dead-listed, or taken meanwhile
            continue
        done += _send_claimed(uow, claim, outside, policy)
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
    return len(rows)

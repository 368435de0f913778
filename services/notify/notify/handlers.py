"""notify's use cases as plain functions: no nameko, no eventlet.

Exactly once per (event, recipient, channel), in three steps that never hold a transaction open
across the network:

1. :func:`record_event` reserves one ``pending`` delivery per recipient and channel, in the same
   transaction that marks the event processed (a redelivered event reserves nothing);
2. :func:`deliver` claims one pending delivery in a short transaction (a lease, so that a crashed
   sender's delivery is taken up again after it), looks up the address and sends outside any
   transaction, then records the outcome in another short transaction;
3. :func:`send_due` does the same for every delivery that is due: retries after a transient
   failure, and deliveries left pending by a crash.

Toward the provider this is at-least-once (a crash between send and record sends again); the
delivery id travels with every send (Message-ID, X-Wuji-Delivery) so that receivers drop the repeat.
"""
import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from marshmallow import ValidationError as SchemaError
from sqlalchemy import or_, select, update

from notify import content, domain
from notify.domain import FAILED, PENDING, SENT, SKIPPED, PermanentError
from notify.models import Delivery, UnitContact
from notify.schemas import DeliverySchema, UnitContactInput, UnitContactSchema
from wuji_common.errors import InvalidTransition, NotFound, ValidationError

log = logging.getLogger(__name__)

delivery_schema = DeliverySchema()
unit_contact_input = UnitContactInput()
RETRY = "retry"


def _now():
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Policy:
    """How deliveries are retried. ``claim_seconds`` must outlast one send (intake look-up plus
    SMTP or webhook time-out): a claim older than that is taken as its sender's crash."""
    retry_delays: tuple = (30, 120, 600, 1800)
    claim_seconds: float = 120
    portal_url: str = ""


@dataclass(frozen=True)
class UnitPoint:
    """A unit's contact points as read in the claim transaction."""
    unit_code: str
    unit_name: str
    email: str | None
    webhook_url: str | None
    webhook_secret: str | None


@dataclass(frozen=True)
class Claim:
    """A delivery claimed for one attempt (``attempts`` counts this one)."""
    id: str
    event_id: str
    event_type: str
    case_no: str | None
    recipient: str
    recipient_kind: str
    channel: str
    template: str
    context: dict
    attempts: int
    unit: UnitPoint | None = None


@dataclass(frozen=True)
class Outcome:
    status: str                  # sent | skipped | failed | retry
    address: str | None = None   # as the log keeps it (masked for a citizen)
    reason: str | None = None
    error: str | None = None


@dataclass
class Outside:
    """What a delivery needs from outside notify's database: the citizen's contact (intake, at send
    time) and the channels. ``templates`` is the shipped set unless a test gives its own."""
    citizen_contact: object                # case_no -> {"name", "phone", "email"} | None
    channels: dict                         # channel name -> object with send(outgoing)
    templates: object = field(default=content.templates)


def load(schema, payload):
    try:
        return schema.load(payload)
    except SchemaError as err:
        raise ValidationError("请求参数有误", err.normalized_messages()) from None


# --- 1. reserve --------------------------------------------------------------------------------------

def record_event(uow, consumer, envelope, rules, now=None):
    """Reserve the deliveries an event calls for; returns the ids of those to send now.

    At-least-once delivery of events: a redelivered event (same event_id) reserves nothing, and the
    unique key (event_id, recipient, channel) makes a concurrent duplicate fail and retry instead of
    reserving twice."""
    now = now or _now()
    with uow:
        if not uow.first_delivery(consumer, envelope["event_id"]):
            return []
        s = uow.session
        to_send = []
        for planned in domain.plan(rules, envelope):
            unit = s.get(UnitContact, planned.unit_code) if planned.unit_code else None
            if planned.channel == "webhook" and not domain.has_webhook(unit):
                continue  # a unit without an endpoint gets no webhook
            delivery = Delivery(
                id=str(uuid.uuid4()), event_id=envelope["event_id"], event_type=envelope["type"],
                case_no=envelope["case_no"], recipient=planned.recipient,
                recipient_kind=planned.recipient_kind, channel=planned.channel,
                template=planned.template, context=planned.context,
                status=SKIPPED if planned.skip_reason else PENDING, reason=planned.skip_reason,
                attempts=0, next_attempt_at=None if planned.skip_reason else now,
                created_at=now, updated_at=now)
            s.add(delivery)
            if not planned.skip_reason:
                to_send.append(delivery.id)
        uow.commit()
    return to_send


# --- 2. send -----------------------------------------------------------------------------------------

def _claimable(now):
    return (Delivery.status == PENDING, Delivery.next_attempt_at <= now,
            or_(Delivery.claimed_until.is_(None), Delivery.claimed_until < now))


def _take(s, delivery_id, policy, now):
    """Compare-and-set the claim: only one sender wins a delivery, on SQLite as on PostgreSQL."""
    taken = s.execute(
        update(Delivery).where(Delivery.id == delivery_id, *_claimable(now))
        .values(attempts=Delivery.attempts + 1, updated_at=now,
                claimed_until=now + timedelta(seconds=policy.claim_seconds))
        .execution_options(synchronize_session=False))
    if taken.rowcount != 1:
        return None
    d = s.execute(select(Delivery).where(Delivery.id == delivery_id)).scalar_one()
    unit = None
    if d.recipient_kind == "unit":
        row = s.get(UnitContact, d.recipient.partition(":")[2])
        if row is not None:
            unit = UnitPoint(row.unit_code, row.unit_name, row.email, row.webhook_url, row.webhook_secret)
    return Claim(d.id, d.event_id, d.event_type, d.case_no, d.recipient, d.recipient_kind, d.channel,
                 d.template, dict(d.context or {}), d.attempts, unit)


def claim_delivery(uow, delivery_id, policy, now=None):
    """Claim one pending, due, unclaimed delivery for an attempt; None if it is not (any more)."""
    now = now or _now()
    with uow:
        claim = _take(uow.session, delivery_id, policy, now)
        uow.commit()
    return claim


def claim_next_due(uow, policy, now=None):
    """Claim the delivery that has been due longest. With several notify instances on PostgreSQL,
    rows another instance is claiming are skipped (FOR UPDATE SKIP LOCKED), not waited for."""
    now = now or _now()
    with uow:
        s = uow.session
        ids = s.execute(select(Delivery.id).where(*_claimable(now))
                        .order_by(Delivery.next_attempt_at).limit(1)
                        .with_for_update(skip_locked=True)).scalars().all()
        claim = _take(s, ids[0], policy, now) if ids else None
        uow.commit()
    return claim


def attempt(claim, outside, policy):
    """Look up the address and send; no transaction is open here. Never raises."""
    logged = None
    try:
        if claim.recipient_kind == domain.CITIZEN:
            address = domain.citizen_address(claim.channel, outside.citizen_contact(claim.case_no))
            extra = {"salutation": domain.salutation(address.name)}
        else:
            address = domain.unit_address(claim.channel, claim.unit)
            extra = {"unit_name": claim.unit.unit_name if claim.unit else ""}
        if address.skip_reason:
            return Outcome(SKIPPED, reason=address.skip_reason)
        logged = domain.logged_address(claim.recipient_kind, claim.channel, address)
        values = domain.template_values({**extra, **claim.context, "portal_url": policy.portal_url})
        message = domain.render(outside.templates(claim.template), values)
        outside.channels[claim.channel].send(domain.Outgoing(
            delivery_id=claim.id, event_id=claim.event_id, event_type=claim.event_type,
            case_no=claim.case_no, recipient=claim.recipient, address=address, message=message,
            data=claim.context))
        return Outcome(SENT, address=logged)
    except PermanentError as exc:
        return Outcome(FAILED, address=logged, error=exc.summary)
    except Exception as exc:  # transient, or unforeseen: retried within the bound, then failed
        return Outcome(RETRY, address=logged, error=domain.error_summary(exc))


def record_outcome(uow, claim, outcome, policy, now=None):
    """Write the attempt's outcome; returns the delivery's new status, or None if the claim had
    expired and another sender took the delivery over (its outcome wins)."""
    now = now or _now()
    values = {"claimed_until": None, "updated_at": now}
    if outcome.address:
        values["address"] = outcome.address
    if outcome.status == SENT:
        values.update(status=SENT, sent_at=now, next_attempt_at=None, last_error=None)
    elif outcome.status == SKIPPED:
        values.update(status=SKIPPED, reason=outcome.reason, next_attempt_at=None)
    elif outcome.status == FAILED:
        values.update(status=FAILED, last_error=outcome.error, next_attempt_at=None)
    else:
        retry_at = domain.next_attempt_after_failure(claim.attempts, policy.retry_delays, now)
        values.update(status=PENDING if retry_at else FAILED, next_attempt_at=retry_at,
                      last_error=outcome.error)
    with uow:
        written = uow.session.execute(
            update(Delivery).where(Delivery.id == claim.id, Delivery.status == PENDING,
                                   Delivery.attempts == claim.attempts)
            .values(**values).execution_options(synchronize_session=False))
        uow.commit()
    if written.rowcount != 1:
        return None
    status = values["status"]
    if status != SENT:
        # delivery id, kind and channel only: never the address or the text
        log.warning("delivery %s (%s %s, %s) attempt %d: %s %s", claim.id, claim.recipient_kind,
                    claim.channel, claim.event_type, claim.attempts, status,
                    outcome.error or outcome.reason or "")
    return status


def deliver(uow, delivery_id, outside, policy):
    """Claim, send and record one delivery; returns (channel, new status), or None if it was not
    claimable (sent already, not yet due, or being sent by another worker)."""
    claim = claim_delivery(uow, delivery_id, policy)
    if claim is None:
        return None
    return claim.channel, record_outcome(uow, claim, attempt(claim, outside, policy), policy)


def send_due(uow, outside, policy, limit=50, budget_seconds=10.0, clock=time.monotonic):
    """Send up to ``limit`` due deliveries, one claim at a time (a claim outlasts one send, not a
    batch), and claim no more after ``budget_seconds`` so that one run stays short (a stopping
    service waits for it); returns [(channel, new status), ...]."""
    done = []
    started = clock()
    for _ in range(limit):
        if clock() - started > budget_seconds:
            break
        claim = claim_next_due(uow, policy)
        if claim is None:
            break
        done.append((claim.channel,
                     record_outcome(uow, claim, attempt(claim, outside, policy), policy)))
    return done


# --- the log, dead deliveries and replays -------------------------------------------------------------

def deliveries_for_case(uow, case_no):
    with uow:
        rows = uow.session.execute(select(Delivery).where(Delivery.case_no == case_no)
                                   .order_by(Delivery.created_at, Delivery.id)).scalars().all()
        return delivery_schema.dump(rows, many=True)


def get_delivery(uow, delivery_id):
    with uow:
        d = uow.session.get(Delivery, delivery_id)
        if d is None:
            raise NotFound(f"delivery {delivery_id} not found")
        return delivery_schema.dump(d)


def failed_deliveries(uow, limit=100):
    """Dead deliveries (every attempt used up, or refused for good), newest first."""
    with uow:
        rows = uow.session.execute(select(Delivery).where(Delivery.status == FAILED)
                                   .order_by(Delivery.updated_at.desc(), Delivery.id)
                                   .limit(limit)).scalars().all()
        return delivery_schema.dump(rows, many=True)


def replay(uow, delivery_id, idempotency_key=None, now=None):
    """Make a failed or skipped delivery pending again with a fresh set of attempts. The delivery
    keeps its id, so a receiver that got an earlier try still drops the repeat."""
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
        d.status, d.reason, d.attempts = PENDING, None, 0
        d.next_attempt_at, d.claimed_until, d.updated_at = now, None, now
        result = delivery_schema.dump(d)
        uow.remember("replay", idempotency_key, result)
        uow.commit()
        return result


# --- units' contact points ----------------------------------------------------------------------------

def _unit_view(unit):
    return UnitContactSchema().dump({
        "unit_code": unit.unit_code, "unit_name": unit.unit_name, "email": unit.email,
        "webhook_url": unit.webhook_url, "webhook_secret_set": bool(unit.webhook_secret),
        "updated_at": unit.updated_at})


def set_unit_contact(uow, payload, idempotency_key=None, now=None):
    """A unit sets where it is told about its orders. Fields left None stay as they are; an empty
    webhook_url removes the webhook. A webhook set without a secret gets one made here, returned
    once in ``webhook_secret`` (the receiver needs it to check signatures)."""
    remove_webhook = payload.get("webhook_url") == ""
    if remove_webhook:
        payload = {**payload, "webhook_url": None}
    data = load(unit_contact_input, payload)
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
    """Load the shipped unit contacts. New units are added; for known ones the name is refreshed
    and a non-empty address in the file replaces the stored one, while an endpoint or secret that a
    unit set itself is never cleared by a reload. Returns how many rows were read."""
    now = now or _now()
    with uow:
        s = uow.session
        for row in rows:
            unit = s.get(UnitContact, row["unit_code"])
            if unit is None:
                unit = UnitContact(unit_code=row["unit_code"])
                s.add(unit)
            unit.unit_name = row["unit_name"]
            if row.get("email"):
                unit.email = row["email"]
            if row.get("webhook_url"):
                unit.webhook_url = row["webhook_url"]
            unit.updated_at = now
        uow.commit()
    return len(rows)

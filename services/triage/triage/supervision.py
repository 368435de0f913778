"""Clocks and supervision (限时办结 · 督查督办) as plain functions of a unit of work: no nameko.

- The order's use cases (triage.handlers) start and stop its clocks in their own transaction:
  :func:`start_clocks` at dispatch, :func:`stop_clock` when a step is done, :func:`leave_clocks`
  when the order leaves the unit (退单, 改派), :func:`restart_resolve` on a rework (返工).
- :func:`sweep` watches the clocks: every running clock whose next checkpoint has passed fires it
  once — ``order_deadline_approaching`` at 50 % and 80 % of the window, ``order_overdue`` and a
  supervision ticket (督办单) at the deadline, and for a unit that has not reported in,
  ``order_escalated`` one level up (grid → town → district). Several instances may sweep at once:
  on PostgreSQL each claims clocks with ``FOR UPDATE SKIP LOCKED``; everywhere a marker per
  (clock, checkpoint) whose key clashes for a second firing. A deadline passed while nothing ran
  fires at the first sweep after start.
- The supervision zone: extensions (延期) and suspensions (挂账) asked by the unit before expiry
  and decided by a supervisor, urges (催办) and their outcome, lists of overdue and at-risk orders.
Times are UTC; ``now`` is injected (tests drive the clock).
"""
import json
import os
from datetime import timedelta, timezone
from uuid import uuid4

from marshmallow import Schema, ValidationError as SchemaError, fields, validate
from sqlalchemy import and_, insert, select
from sqlalchemy.exc import IntegrityError

from triage import clocks, domain
from triage.calendar import working_calendar
from triage.domain import aware
from triage.models import ClockFire, ClockRequest, OrderClock, SupervisionTicket, Urge, WorkOrder
from triage.orders import event_base, order_for_unit
from wuji_common.errors import InvalidTransition, NotFound, ValidationError
from wuji_common.events import CHINA_TIME
from wuji_common.privacy import redact_text

SWEEP_BATCH = 200
OPEN_ORDER = ("dispatched", "accepted", "reopened")
URGE_OUTCOMES = ("handled", "in_progress", "no_response")


def calendar_in_force():
    """The working calendar: the packaged calendar.yml over chinese-calendar, or the file named by
    TRIAGE_CALENDAR_PATH (a district's own), loaded once per process."""
    return working_calendar(os.environ.get("TRIAGE_CALENDAR_PATH") or None)


# --- the order's clocks ---------------------------------------------------------------------------

def order_policy(order):
    """(policy code, version, {clock: Limit}) the order was dispatched under."""
    limits = json.loads(order.time_limits or "{}")
    return order.time_policy, order.time_policy_version, \
        {c: clocks.Limit.parse(v) for c, v in limits.items() if c in clocks.CLOCKS and v}


def start_clocks(s, order, now, names=clocks.CLOCKS, round_=0, rows=None):
    """Start the order's clocks (held by its unit, at its level) from ``now`` to its deadlines.
    With ``rows`` (a list), the clocks are appended to it as rows for the caller to insert with
    the rest of its batch (:func:`insert_clocks`) instead of being added to the session: three
    ORM objects per dispatched order were a sixth of a dispatch batch's time."""
    policy, version, limits = order_policy(order)
    due = {"report_in": order.accept_due_at, "first_contact": order.first_contact_due_at or order.accept_due_at,
           "resolve": order.resolve_due_at}
    for name in names:
        due_at = aware(due[name])
        row = dict(
            order_no=order.order_no, case_no=order.case_no, clock=name, round=round_,
            holder_unit_code=order.unit_code, level=order.level, town_code=order.town_code,
            category=order.category, policy=policy or "", policy_version=version or "",
            limit=str(limits[name]) if name in limits else "", started_at=now, due_at=due_at,
            next_check_at=_first_checkpoint(name, now, due_at), paused_seconds=0, extended_days=0)
        if rows is None:
            s.add(OrderClock(**row))
        else:
            rows.append(row)


def insert_clocks(s, rows):
    """The clocks :func:`start_clocks` gathered in ``rows``, in one INSERT."""
    if rows:
        s.execute(insert(OrderClock.__table__), rows)


def _first_checkpoint(name, started_at, due_at):
    return clocks.checkpoints(name, started_at, due_at)[0][1]


def _running(s, order_no, names=clocks.CLOCKS):
    return s.execute(select(OrderClock).where(
        OrderClock.order_no == order_no, OrderClock.clock.in_(names),
        OrderClock.stopped_at.is_(None))).scalars().all()


def stop_clock(s, order_no, name, now):
    """The step is done: the clock stops ``met`` (in time) or ``late``."""
    for clock in _running(s, order_no, (name,)):
        _stop(clock, now, "met" if now <= aware(clock.due_at) and clock.overdue_at is None else "late")


def leave_clocks(s, order_no, now, outcome="returned"):
    """The order leaves its unit (退单, 改派): its running clocks stop, keeping who held them and
    whether time had run out while they did."""
    for clock in _running(s, order_no):
        if clock.overdue_at is None and aware(clock.due_at) < now:
            clock.overdue_at = aware(clock.due_at)
        _stop(clock, now, outcome)


def restart_resolve(s, order, now):
    """返工: the resolve clock starts again, a new round, to the order's new deadline."""
    for clock in _running(s, order.order_no, ("resolve",)):
        _stop(clock, now, "superseded")
    start_clocks(s, order, now, names=("resolve",), round_=order.reopen_count)


def _stop(clock, now, outcome):
    if clock.paused_at is not None:
        _unpause(clock, now)
    clock.stopped_at, clock.outcome, clock.next_check_at = now, outcome, None


# --- watching the clocks --------------------------------------------------------------------------

def sweep(uow, now=None, batch=SWEEP_BATCH):
    """Fire every checkpoint that has passed, once, and resume suspensions that ended. Returns
    {"checked", "fired": {checkpoint: n}}. Safe to run in every instance at once."""
    now = (now or domain.utcnow()).astimezone(timezone.utc)
    fired = {}
    checked = 0
    with uow:
        s = uow.session
        query = (select(OrderClock).where(OrderClock.stopped_at.is_(None),
                                          OrderClock.next_check_at <= now)
                 .order_by(OrderClock.next_check_at).limit(batch))
        if s.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        for clock in s.execute(query).scalars().all():
            checked += 1
            if clock.paused_at is not None:
                if clock.resumes_at is not None and aware(clock.resumes_at) <= now:
                    _unpause(clock, aware(clock.resumes_at))
                    _emit_clock_event(uow, s, clock, "order_resumed", {"resumed_at": _iso(now)})
                else:
                    clock.next_check_at = aware(clock.resumes_at) if clock.resumes_at else None
                    continue
            for checkpoint in _fire(uow, s, clock, now):
                fired[checkpoint] = fired.get(checkpoint, 0) + 1
        uow.commit()
    return {"checked": checked, "fired": fired}


def _fire(uow, s, clock, now):
    done = set(s.execute(select(ClockFire.checkpoint).where(ClockFire.clock_id == clock.id)).scalars())
    due_at, started_at = aware(clock.due_at), aware(clock.started_at)
    passed, upcoming = clocks.due_checkpoints(clock.clock, started_at + _paused(clock), due_at, now, done)
    fired = []
    for checkpoint in passed:
        if not _mark(s, clock, checkpoint, now):
            continue  # another instance fired it
        order = s.execute(select(WorkOrder).where(WorkOrder.order_no == clock.order_no)).scalar_one()
        if checkpoint in ("50", "80"):
            _emit_clock_event(uow, s, clock, "order_deadline_approaching", {
                "threshold": int(checkpoint), "due_at": _iso(due_at)}, order)
        elif checkpoint == clocks.DUE:
            clock.overdue_at = due_at
            ticket = _open_ticket(s, clock, now)
            _emit_clock_event(uow, s, clock, "order_overdue", {
                "due_at": _iso(due_at), "ticket_no": ticket.ticket_no}, order)
        elif checkpoint == clocks.ESCALATE:
            target = clocks.escalation_target(clock.level, clock.town_code)
            if target is not None:
                clock.escalated_to = target[1]
                _emit_clock_event(uow, s, clock, "order_escalated", {
                    "from_level": clock.level, "to_level": target[0], "to_unit_code": target[1],
                    "due_at": _iso(due_at)}, order)
        fired.append(checkpoint)
    clock.next_check_at = upcoming
    return fired


def _mark(s, clock, checkpoint, now):
    """The once-only marker: False if it is there already (a racing instance's commit clashes on
    the key at flush; the savepoint keeps this sweep's other work)."""
    if s.get(ClockFire, (clock.id, checkpoint)) is not None:
        return False
    try:
        with s.begin_nested():
            s.add(ClockFire(clock_id=clock.id, checkpoint=checkpoint, fired_at=now))
    except IntegrityError:
        return False
    return True


def _paused(clock):
    return timedelta(seconds=clock.paused_seconds or 0)


def _open_ticket(s, clock, now):
    ticket = SupervisionTicket(
        ticket_no=f"DB{now.astimezone(CHINA_TIME):%Y%m%d}{uuid4().hex[:8].upper()}",
        order_no=clock.order_no, clock_id=clock.id, clock=clock.clock, unit_code=clock.holder_unit_code,
        town_code=clock.town_code, level=clock.level, due_at=clock.due_at, opened_at=now, status="open")
    s.add(ticket)
    return ticket


def _emit_clock_event(uow, s, clock, event_type, extra, order=None):
    order = order or s.execute(select(WorkOrder).where(WorkOrder.order_no == clock.order_no)).scalar_one()
    uow.emit(event_type, order.case_no, {
        "order_no": order.order_no, "unit_code": clock.holder_unit_code, "town_code": order.town_code,
        "category": order.category, "status": order.status if order.status != "pending_review" else "dispatched",
        "clock": clock.clock, "level": clock.level, **extra})


def _iso(value):
    return aware(value).isoformat()


# --- extensions (延期) and suspensions (挂账) ---------------------------------------------------------

class _RequestSchema(Schema):
    order_no = fields.String(required=True, validate=validate.Length(1, 40))
    unit_code = fields.String(required=True, validate=validate.Length(1, 40))
    days = fields.Float(required=True, validate=validate.Range(min=0.5, max=90))
    reason = fields.String(required=True, validate=validate.Length(2, 1000))
    idempotency_key = fields.String(required=True, validate=validate.Length(1, 64))


class _DecisionSchema(Schema):
    request_id = fields.String(required=True, validate=validate.Length(1, 40))
    approve = fields.Boolean(required=True)
    supervisor = fields.String(required=True, validate=validate.Length(1, 64))
    note = fields.String(load_default="", validate=validate.Length(0, 1000))
    idempotency_key = fields.String(required=True, validate=validate.Length(1, 64))


def _load(schema, payload):
    try:
        return schema.load(payload)
    except SchemaError as err:
        raise ValidationError("请求参数有误", err.normalized_messages()) from None


def request_clock_change(uow, kind, order_no, unit_code, days, reason, idempotency_key, now=None):
    """The unit holding an order asks, before its resolve deadline, for an extension of ``days``
    (延期: working days under a working-time policy, else calendar days) or a suspension (挂账: the
    clocks pause for at most ``days`` calendar days). Returns the request (status pending)."""
    args = _load(_RequestSchema(), {"order_no": order_no, "unit_code": unit_code, "days": days,
                                    "reason": reason, "idempotency_key": idempotency_key})
    key = f"{args['order_no']}:{args['unit_code']}:{args['idempotency_key']}"
    now = (now or domain.utcnow()).astimezone(timezone.utc)
    with uow:
        earlier = uow.recall(f"request_{kind}", key)
        if earlier is not None:
            return earlier
        s = uow.session
        order = order_for_unit(s, args["order_no"], args["unit_code"])
        resolve = _resolve_clock(s, order)
        if resolve is None or order.status not in OPEN_ORDER:
            raise InvalidTransition("工单未在办理中，不能申请延期或挂账")
        if now > aware(resolve.due_at):
            raise InvalidTransition("办理时限已过，延期须在到期前申请")
        if s.execute(select(ClockRequest.request_id).where(
                ClockRequest.order_no == order.order_no, ClockRequest.status == "pending")).first():
            raise InvalidTransition("已有待审批的延期或挂账申请")
        if kind == "extension":
            _, _, limits = order_policy(order)
            policy = _policy_max(order)
            limit = limits.get("resolve") or clocks.Limit(order.resolve_hours, "hours")
            if not clocks.within_extension(policy, resolve.extended_days, args["days"], limit):
                raise ValidationError("请求参数有误", {"days": ["超出本类事项可延期的最长时限"]})
        request = ClockRequest(
            request_id=f"{'YQ' if kind == 'extension' else 'GZ'}{now.astimezone(CHINA_TIME):%Y%m%d}"
                       f"{uuid4().hex[:8].upper()}",
            kind=kind, order_no=order.order_no, clock_id=resolve.id, unit_code=order.unit_code,
            town_code=order.town_code, days=args["days"], reason=args["reason"], requested_at=now,
            status="pending")
        s.add(request)
        uow.emit(f"order_{kind}_requested", order.case_no, {
            **event_base(order), "request_id": request.request_id, "days": args["days"],
            "reason": redact_text(args["reason"]), "resolve_due_at": _iso(resolve.due_at)})
        s.flush()
        result = request_view(request)
        uow.remember(f"request_{kind}", key, result)
        uow.commit()
        return result


def decide_clock_change(uow, kind, request_id, approve, supervisor, note, idempotency_key, now=None):
    """The supervision zone approves or refuses a pending request. An approved extension moves the
    resolve deadline; an approved suspension pauses the order's running clocks until the unit
    resumes (``resume``) or the days run out. Either way ``order_<kind>_decided``."""
    args = _load(_DecisionSchema(), {"request_id": request_id, "approve": approve,
                                     "supervisor": supervisor, "note": note or "",
                                     "idempotency_key": idempotency_key})
    key = f"{args['request_id']}:{args['idempotency_key']}"
    now = (now or domain.utcnow()).astimezone(timezone.utc)
    with uow:
        earlier = uow.recall(f"decide_{kind}", key)
        if earlier is not None:
            return earlier
        s = uow.session
        request = s.get(ClockRequest, args["request_id"])
        if request is None or request.kind != kind:
            raise NotFound(f"申请 {args['request_id']} 不存在")
        if request.status != "pending":
            raise InvalidTransition("该申请已审批")
        order = s.execute(select(WorkOrder).where(WorkOrder.order_no == request.order_no)).scalar_one()
        request.status = "approved" if args["approve"] else "refused"
        request.supervisor, request.note, request.decided_at = args["supervisor"], args["note"], now
        resolve = _resolve_clock(s, order)
        if args["approve"] and (resolve is None or order.status not in OPEN_ORDER):
            raise InvalidTransition("工单已不在办理中")
        if args["approve"] and kind == "extension":
            _, _, limits = order_policy(order)
            limit = limits.get("resolve") or clocks.Limit(order.resolve_hours, "hours")
            resolve.due_at = domain.due_at(aware(resolve.due_at), clocks.extension_limit(limit, request.days),
                                           calendar_in_force())
            resolve.extended_days += request.days
            order.resolve_due_at = resolve.due_at
            _reschedule(s, resolve, now)
        elif args["approve"]:
            for clock in _running(s, order.order_no):
                if clock.paused_at is None:
                    clock.paused_at = now
                    clock.resumes_at = now + timedelta(days=request.days)
                    clock.next_check_at = clock.resumes_at
        uow.emit(f"order_{kind}_decided", order.case_no, {
            **event_base(order), "request_id": request.request_id, "approved": args["approve"],
            "days": request.days, "resolve_due_at": _iso(order.resolve_due_at)})
        s.flush()
        result = request_view(request)
        uow.remember(f"decide_{kind}", key, result)
        uow.commit()
        return result


def resume(uow, order_no, unit_code, idempotency_key, now=None):
    """挂账 ends early: the unit takes the suspended order up again; its clocks run on, their
    deadlines later by the time they stood still (``order_resumed``)."""
    key = f"{order_no}:{unit_code}:{idempotency_key}"
    now = (now or domain.utcnow()).astimezone(timezone.utc)
    with uow:
        earlier = uow.recall("resume_order", key)
        if earlier is not None:
            return earlier
        s = uow.session
        order = order_for_unit(s, order_no, unit_code)
        paused = [c for c in _running(s, order_no) if c.paused_at is not None]
        if not paused:
            raise InvalidTransition("工单未挂账")
        for clock in paused:
            _unpause(clock, now)
        order.resolve_due_at = _resolve_clock(s, order).due_at
        _emit_clock_event(uow, s, next(c for c in paused if c.clock == "resolve") if any(
            c.clock == "resolve" for c in paused) else paused[0], "order_resumed", {"resumed_at": _iso(now)},
            order)
        result = {"order_no": order_no, "resolve_due_at": _iso(order.resolve_due_at)}
        uow.remember("resume_order", key, result)
        uow.commit()
        return result


def _unpause(clock, now):
    """The clock runs again: its deadline moves by the time it stood still."""
    stood = now - aware(clock.paused_at)
    clock.due_at = aware(clock.due_at) + stood
    clock.paused_seconds = (clock.paused_seconds or 0) + stood.total_seconds()
    clock.paused_at = clock.resumes_at = None
    _reschedule(None, clock, now)


def _reschedule(s, clock, now):
    """The next checkpoint after a deadline moved (those fired stay fired)."""
    started = aware(clock.started_at) + _paused(clock)
    points = [instant for name, instant in clocks.checkpoints(clock.clock, started, aware(clock.due_at))]
    ahead = [p for p in points if p > now]
    clock.next_check_at = min(ahead) if ahead else now


def _policy_max(order):
    limits = json.loads(order.time_limits or "{}")
    return clocks.Limit.parse(limits["extension_max"]) if limits.get("extension_max") else None


def _resolve_clock(s, order):
    return s.execute(select(OrderClock).where(
        OrderClock.order_no == order.order_no, OrderClock.clock == "resolve",
        OrderClock.stopped_at.is_(None))).scalar_one_or_none()




def request_view(r):
    return {"request_id": r.request_id, "kind": r.kind, "order_no": r.order_no, "unit_code": r.unit_code,
            "town_code": r.town_code, "days": r.days, "reason": r.reason, "status": r.status,
            "requested_at": _iso(r.requested_at), "supervisor": r.supervisor, "note": r.note,
            "decided_at": _iso(r.decided_at) if r.decided_at else None}


# --- the supervision zone's views and urges -----------------------------------------------------

def _clock_rows(s, condition, town_code, unit_code):
    query = (select(OrderClock, WorkOrder).join(WorkOrder, WorkOrder.order_no == OrderClock.order_no)
             .where(OrderClock.stopped_at.is_(None), condition))
    if town_code:
        query = query.where(OrderClock.town_code == town_code)
    if unit_code:
        query = query.where(OrderClock.holder_unit_code == unit_code)
    return s.execute(query.order_by(OrderClock.due_at, OrderClock.id).limit(5000)).all()


def _clock_view(clock, order, now):
    due = aware(clock.due_at)
    started = aware(clock.started_at) + _paused(clock)
    window = (due - started).total_seconds() or 1
    return {"order_no": order.order_no, "case_no": order.case_no, "clock": clock.clock,
            "unit_code": clock.holder_unit_code, "unit_name": order.unit_name, "level": clock.level,
            "town_code": clock.town_code, "category": clock.category, "status": order.status,
            "policy": clock.policy, "limit": clock.limit, "started_at": _iso(started), "due_at": _iso(due),
            "elapsed": round(min(max((now - started).total_seconds() / window, 0), 9.99), 4),
            "overdue_hours": round(max((now - due).total_seconds(), 0) / 3600, 2),
            "suspended": clock.paused_at is not None, "escalated_to": clock.escalated_to}


def overdue(uow, town_code=None, unit_code=None, now=None):
    """Running clocks past their deadline (not suspended), by town and/or unit, most overdue first."""
    now = (now or domain.utcnow()).astimezone(timezone.utc)
    with uow:
        rows = _clock_rows(uow.session, and_(OrderClock.due_at < now, OrderClock.paused_at.is_(None)),
                           town_code, unit_code)
        return [_clock_view(c, o, now) for c, o in rows]


def at_risk(uow, town_code=None, unit_code=None, threshold=0.8, now=None):
    """Running clocks not yet overdue with at least ``threshold`` of their window gone."""
    now = (now or domain.utcnow()).astimezone(timezone.utc)
    with uow:
        rows = _clock_rows(uow.session, and_(OrderClock.due_at >= now, OrderClock.paused_at.is_(None)),
                           town_code, unit_code)
        views = [_clock_view(c, o, now) for c, o in rows]
        return [v for v in views if v["elapsed"] >= float(threshold)]


class _UrgeSchema(Schema):
    order_no = fields.String(required=True, validate=validate.Length(1, 40))
    supervisor = fields.String(required=True, validate=validate.Length(1, 64))
    note = fields.String(required=True, validate=validate.Length(1, 1000))
    idempotency_key = fields.String(required=True, validate=validate.Length(1, 64))


def urge(uow, order_no, supervisor, note, idempotency_key, now=None):
    """催办: a supervision notice to the unit holding an open order (``order_urged``), linked to its
    open supervision ticket if there is one."""
    args = _load(_UrgeSchema(), {"order_no": order_no, "supervisor": supervisor, "note": note,
                                 "idempotency_key": idempotency_key})
    key = f"{args['order_no']}:{args['idempotency_key']}"
    now = (now or domain.utcnow()).astimezone(timezone.utc)
    with uow:
        earlier = uow.recall("urge", key)
        if earlier is not None:
            return earlier
        s = uow.session
        order = s.execute(select(WorkOrder).where(WorkOrder.order_no == args["order_no"])).scalar_one_or_none()
        if order is None:
            raise NotFound(f"工单 {args['order_no']} 不存在")
        if order.status not in OPEN_ORDER:
            raise InvalidTransition("工单不在办理中，无需催办")
        ticket = s.execute(select(SupervisionTicket.ticket_no).where(
            SupervisionTicket.order_no == order.order_no, SupervisionTicket.status == "open")
            .order_by(SupervisionTicket.opened_at.desc())).scalars().first()
        record = Urge(urge_id=f"CB{now.astimezone(CHINA_TIME):%Y%m%d}{uuid4().hex[:8].upper()}",
                      order_no=order.order_no, ticket_no=ticket, unit_code=order.unit_code,
                      town_code=order.town_code, supervisor=args["supervisor"], note=args["note"],
                      issued_at=now)
        s.add(record)
        uow.emit("order_urged", order.case_no, {**event_base(order), "urge_id": record.urge_id,
                                                 "ticket_no": ticket, "note": redact_text(args["note"])})
        s.flush()
        result = urge_view(record)
        uow.remember("urge", key, result)
        uow.commit()
        return result


def record_urge_outcome(uow, urge_id, outcome, note, idempotency_key, now=None):
    """What came of an urge: handled | in_progress | no_response (recorded once)."""
    if outcome not in URGE_OUTCOMES:
        raise ValidationError("请求参数有误", {"outcome": [f"one of {URGE_OUTCOMES}"]})
    now = (now or domain.utcnow()).astimezone(timezone.utc)
    with uow:
        earlier = uow.recall("record_urge_outcome", f"{urge_id}:{idempotency_key}")
        if earlier is not None:
            return earlier
        record = uow.session.get(Urge, urge_id)
        if record is None:
            raise NotFound(f"催办 {urge_id} 不存在")
        if record.outcome is not None:
            raise InvalidTransition("催办结果已登记")
        record.outcome, record.outcome_note, record.outcome_at = outcome, note or "", now
        uow.session.flush()
        result = urge_view(record)
        uow.remember("record_urge_outcome", f"{urge_id}:{idempotency_key}", result)
        uow.commit()
        return result


def urge_view(u):
    return {"urge_id": u.urge_id, "order_no": u.order_no, "ticket_no": u.ticket_no, "unit_code": u.unit_code,
            "town_code": u.town_code, "supervisor": u.supervisor, "note": u.note,
            "issued_at": _iso(u.issued_at), "outcome": u.outcome, "outcome_note": u.outcome_note,
            "outcome_at": _iso(u.outcome_at) if u.outcome_at else None}


def tickets(uow, town_code=None, unit_code=None, status="open"):
    """督办单, oldest first."""
    with uow:
        query = select(SupervisionTicket)
        if status:
            query = query.where(SupervisionTicket.status == status)
        if town_code:
            query = query.where(SupervisionTicket.town_code == town_code)
        if unit_code:
            query = query.where(SupervisionTicket.unit_code == unit_code)
        return [{"ticket_no": t.ticket_no, "order_no": t.order_no, "clock": t.clock, "unit_code": t.unit_code,
                 "town_code": t.town_code, "level": t.level, "due_at": _iso(t.due_at),
                 "opened_at": _iso(t.opened_at), "status": t.status}
                for t in uow.session.execute(query.order_by(SupervisionTicket.opened_at)).scalars()]


def close_tickets(s, order_no, now):
    """The order was resolved or returned: its open supervision tickets close."""
    for ticket in s.execute(select(SupervisionTicket).where(
            SupervisionTicket.order_no == order_no, SupervisionTicket.status == "open")).scalars():
        ticket.status, ticket.closed_at = "closed", now

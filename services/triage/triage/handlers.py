"""triage's use cases as plain functions of a unit of work: no nameko, no eventlet.

- Events in are handled at least once: each handler records the event id in the same transaction as
  its effect, so a redelivery changes nothing.
- Mutating calls take an idempotency key (scoped to the order and the unit): a retry returns the
  first result.
- Data, events (outbox) and dedup records commit together, or nothing does.
- Units' free text (reasons, notes, resolutions) is kept as written for the units, and redacted
  (phones, ID numbers) in the events that leave triage.
- Two writers racing on one order: the loser's update is rejected by the order's version number (or
  a unique key) and the use case runs again on fresh data, where it either succeeds or fails with a
  typed error (e.g. InvalidTransition).
"""
from datetime import datetime
from functools import wraps
from uuid import uuid4

from marshmallow import ValidationError as SchemaError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from triage import domain
from triage.domain import aware
from triage.models import Appeal, Division, ProgressNote, Unit, WorkOrder
from triage.schemas import (
    MAX_ORDERS, FindOrdersSchema, OrderActionSchema, OrderSchema, OrderSummarySchema, ProgressSchema,
    ResolveOrderSchema, ReturnOrderSchema,
)
from wuji_common.errors import InvalidTransition, NotFound, NotYourOrder, ValidationError
from wuji_common.events import CATALOGUE
from wuji_common.privacy import redact_text

CONFLICT_ATTEMPTS = 3

order_schema = OrderSchema()
summary_schema = OrderSummarySchema(many=True)
payload_schemas = {name: CATALOGUE[name][2]() for name in
                   ("appeal_received", "appeal_rated", "operation_completed")}


def retry_on_conflict(use_case):
    """Run the use case again when a concurrent writer got there first (stale version, unique key)."""
    @wraps(use_case)
    def run(*args, **kwargs):
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                return use_case(*args, **kwargs)
            except (StaleDataError, IntegrityError):
                if attempt == CONFLICT_ATTEMPTS:
                    raise
    return run


def load(schema, payload, message="请求参数有误"):
    try:
        return schema.load(payload)
    except SchemaError as err:
        raise ValidationError(message, err.normalized_messages()) from None


def iso(value):
    return aware(value).isoformat()


# --- appeals in -------------------------------------------------------------------------------

@retry_on_conflict
def dispatch_appeal(uow, router, consumer, envelope, now=None):
    """``appeal_received`` → one work order routed to a unit, and ``order_dispatched``.

    Returns a summary of the new order, or None when there is nothing to do: the same event delivered
    again, or an appeal that already has its order."""
    case_no = envelope["case_no"]
    data = load(payload_schemas["appeal_received"], envelope["data"], "appeal_received payload invalid")
    assessment = router.assess(data["title"], data["content"])  # CPU only: before the transaction
    with uow:
        if not uow.first_delivery(consumer, envelope["event_id"]):
            return None
        s = uow.session
        if _active_order(s, case_no) is not None:
            uow.commit()  # keep the dedup record: this event is done with
            return None
        town_code, village_code = _location(s, data["town_code"], data["village_code"])
        # no order yet, so no appeal row yet either (a racing duplicate clashes on the key and retries)
        appeal = Appeal(case_no=case_no, channel=data["channel"], title=data["title"],
                        content=data["content"], town_code=town_code, village_code=village_code,
                        citizen_ref=data["citizen_ref"],
                        received_at=_timestamp(data["received_at"]))
        s.add(appeal)
        routing = router.route(assessment, town_code, village_code, _unit_lookup(s))
        order = _open_order(uow, appeal, routing, now or domain.utcnow())
        uow.commit()
        return {"order_no": order.order_no, "level": order.level, "unit_code": order.unit_code,
                "routing_basis": order.routing_basis, "policy": order.policy}


def _timestamp(value):
    # the catalogue's schema may hand a time over parsed or as its ISO 8601 text
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _location(s, town_code, village_code):
    """The appeal's town (it must be one of ours) and its village if that lies in the town."""
    codes = [town_code, village_code] if village_code else [town_code]
    found = {d.code: d for d in s.execute(select(Division).where(Division.code.in_(codes))).scalars()}
    town = found.get(town_code)
    if town is None or town.level != "town":
        raise ValidationError("appeal_received for an unknown town",
                              {"town_code": [f"{town_code} is not a town of the district"]})
    village = found.get(village_code)
    if village is None or village.parent_code != town_code:
        village_code = None  # route to the town office rather than to a wrong grid worker
    return town_code, village_code


def _unit_lookup(s):
    def lookup(codes):
        rows = s.execute(select(Unit).where(Unit.code.in_(codes))).scalars()
        return {u.code: domain.UnitRef(u.code, u.name, u.type) for u in rows}
    return lookup


def _open_order(uow, appeal, routing, now, previous=None):
    """A new work order for ``appeal`` as routed, with its deadlines, and its order_dispatched."""
    s = uow.session
    accept_due_at, resolve_due_at = domain.deadlines(routing.limit, now)
    order = WorkOrder(
        order_no=f"pending-{uuid4().hex}", case_no=appeal.case_no,
        unit_code=routing.unit.code, unit_name=routing.unit.name,
        town_code=appeal.town_code, village_code=appeal.village_code,
        category=routing.item.category, category_name=routing.item.category_name,
        item=routing.item.code, item_name=routing.item.name, level=routing.level,
        co_handlers=",".join(c for c in routing.item.co_handlers if c != routing.unit.code),
        status="dispatched", urgent=routing.urgent, policy=routing.policy,
        accept_hours=routing.limit.accept_hours, resolve_hours=routing.limit.resolve_hours,
        accept_due_at=accept_due_at, resolve_due_at=resolve_due_at,
        confidence=routing.confidence, routing_basis=routing.basis,
        taxonomy_version=routing.taxonomy_version, router_version=routing.router_version,
        reopen_count=0, previous_order_no=previous.order_no if previous else None,
        dispatched_at=now, updated_at=now)
    s.add(order)
    s.flush()  # the row id numbers the order
    order.order_no = domain.order_no_for(now, order.id)
    if previous is not None:
        previous.successor_order_no = order.order_no
    uow.emit("order_dispatched", appeal.case_no, {
        **_event_base(order), "unit_name": order.unit_name, "level": order.level,
        "accept_due_at": iso(accept_due_at), "resolve_due_at": iso(resolve_due_at),
        "policy": order.policy, "router_version": order.router_version,
        "confidence": order.confidence, "title": appeal.title,
    })
    return order


def _event_base(order):
    return {"order_no": order.order_no, "unit_code": order.unit_code, "town_code": order.town_code,
            "category": order.category, "status": order.status}


def _active_order(s, case_no):
    return s.execute(select(WorkOrder).where(WorkOrder.case_no == case_no,
                                             WorkOrder.status != "returned")).scalar_one_or_none()


# --- the unit's actions -----------------------------------------------------------------------

def _order_for_unit(s, order_no, unit_code):
    order = s.execute(select(WorkOrder).where(WorkOrder.order_no == order_no)).scalar_one_or_none()
    if order is None:
        raise NotFound(f"工单 {order_no} 不存在")
    if order.unit_code != unit_code:
        raise NotYourOrder(f"工单 {order_no} 未派给 {unit_code}")
    return order


def _scoped_key(args):
    # a key is the caller's own: the same key from another unit or for another order is another call
    return f"{args['order_no']}:{args['unit_code']}:{args['idempotency_key']}"


def _finish(uow, operation, key, order):
    """Flush (bumping the version), remember the result for retries, commit, return it."""
    uow.session.flush()
    result = _view(uow.session, order)
    uow.remember(operation, key, result)
    uow.commit()
    return result


@retry_on_conflict
def accept_order(uow, order_no, unit_code, idempotency_key, now=None):
    """The unit signs for the order (签收/报到) → ``order_accepted``."""
    args = load(OrderActionSchema(), {"order_no": order_no, "unit_code": unit_code,
                                      "idempotency_key": idempotency_key})
    key = _scoped_key(args)
    with uow:
        earlier = uow.recall("accept_order", key)
        if earlier is not None:
            return earlier
        order = _order_for_unit(uow.session, order_no, unit_code)
        order.status = domain.next_status("accept", order.status)
        now = now or domain.utcnow()
        order.accepted_at = order.updated_at = now
        uow.emit("order_accepted", order.case_no, {
            **_event_base(order), "accepted_at": iso(now),
            "within_deadline": domain.within(now, aware(order.accept_due_at))})
        return _finish(uow, "accept_order", key, order)


@retry_on_conflict
def return_order(uow, router, order_no, unit_code, reason, idempotency_key, now=None):
    """The unit returns an order that is not its own (退单) → ``order_returned``; the appeal is routed
    again, to a unit that has not returned it → ``order_dispatched`` for the new order.
    Returns the returned order (``successor_order_no`` names the new one)."""
    args = load(ReturnOrderSchema(), {"order_no": order_no, "unit_code": unit_code, "reason": reason,
                                      "idempotency_key": idempotency_key})
    key = _scoped_key(args)
    with uow:
        earlier = uow.recall("return_order", key)
        if earlier is not None:
            return earlier
        s = uow.session
        order = _order_for_unit(s, order_no, unit_code)
        if order.unit_code == domain.COMMAND_CENTRE:
            raise InvalidTransition("指挥中心为兜底承办单位，不能退单，请改派或办理")
        order.status = domain.next_status("return", order.status)
        now = now or domain.utcnow()
        order.return_reason = args["reason"]
        order.returned_at = order.updated_at = now
        s.flush()  # the returned order leaves the active slot before its successor takes it
        excluded = set(s.execute(select(WorkOrder.unit_code).where(
            WorkOrder.case_no == order.case_no, WorkOrder.status == "returned")).scalars())
        appeal = s.get(Appeal, order.case_no)
        assessment = router.assess(appeal.title, appeal.content)
        routing = router.route(assessment, appeal.town_code, appeal.village_code, _unit_lookup(s),
                               excluded)
        uow.emit("order_returned", order.case_no, {**_event_base(order),
                                                   "reason": redact_text(args["reason"])})
        _open_order(uow, appeal, routing, now, previous=order)
        return _finish(uow, "return_order", key, order)


@retry_on_conflict
def add_progress(uow, order_no, unit_code, note, idempotency_key, now=None):
    """The unit records progress (办理进展) → ``order_progressed``."""
    args = load(ProgressSchema(), {"order_no": order_no, "unit_code": unit_code, "note": note,
                                   "idempotency_key": idempotency_key})
    key = _scoped_key(args)
    with uow:
        earlier = uow.recall("add_progress", key)
        if earlier is not None:
            return earlier
        s = uow.session
        order = _order_for_unit(s, order_no, unit_code)
        order.status = domain.next_status("progress", order.status)
        now = now or domain.utcnow()
        order.updated_at = now
        s.add(ProgressNote(order_no=order_no, unit_code=unit_code, note=args["note"], at=now))
        uow.emit("order_progressed", order.case_no, {**_event_base(order),
                                                     "note": redact_text(args["note"])})
        return _finish(uow, "add_progress", key, order)


@retry_on_conflict
def resolve_order(uow, order_no, unit_code, resolution, idempotency_key, now=None):
    """The unit finishes handling (办结) → ``order_resolved``; the citizen is invited to rate it."""
    args = load(ResolveOrderSchema(), {"order_no": order_no, "unit_code": unit_code,
                                       "resolution": resolution, "idempotency_key": idempotency_key})
    key = _scoped_key(args)
    with uow:
        earlier = uow.recall("resolve_order", key)
        if earlier is not None:
            return earlier
        order = _order_for_unit(uow.session, order_no, unit_code)
        order.status = domain.next_status("resolve", order.status)
        _resolve(uow, order, args["resolution"], now or domain.utcnow())
        return _finish(uow, "resolve_order", key, order)


def _resolve(uow, order, resolution, now):
    order.resolution = resolution
    order.resolved_at = order.updated_at = now
    uow.emit("order_resolved", order.case_no, {
        **_event_base(order), "resolution": redact_text(resolution), "resolved_at": iso(now),
        "within_deadline": domain.within(now, aware(order.resolve_due_at))})


# --- other services' events -------------------------------------------------------------------

@retry_on_conflict
def apply_rating(uow, consumer, envelope, now=None):
    """``appeal_rated``: unsatisfied → the same unit handles it again (返工, ``order_reopened``, with
    a new resolve deadline; counted against the unit); otherwise the loop closes (``order_closed``).
    Returns the order's new status, or None for a redelivery."""
    data = load(payload_schemas["appeal_rated"], envelope["data"], "appeal_rated payload invalid")
    with uow:
        if not uow.first_delivery(consumer, envelope["event_id"]):
            return None
        s = uow.session
        order = _active_order(s, envelope["case_no"])
        if order is None:
            raise NotFound(f"no work order for case {envelope['case_no']}")
        now = now or domain.utcnow()
        order.satisfaction = data["satisfaction"]
        order.updated_at = now
        if data["satisfaction"] == "unsatisfied":
            order.status = domain.next_status("reopen", order.status)
            order.reopen_count += 1
            order.reopened_at = now
            order.resolve_due_at = domain.due_at(now, order.resolve_hours)
            uow.emit("order_reopened", order.case_no, {
                **_event_base(order), "reopen_count": order.reopen_count,
                "resolve_due_at": iso(order.resolve_due_at)})
        else:
            order.status = domain.next_status("close", order.status)
            order.closed_at = now
            uow.emit("order_closed", order.case_no, {
                **_event_base(order), "satisfaction": data["satisfaction"], "closed_at": iso(now)})
        uow.commit()
        return order.status


@retry_on_conflict
def complete_by_operation(uow, consumer, envelope, now=None):
    """``operation_completed`` (joint enforcement, 吹哨报到): the order it was opened for is resolved
    with the operation's outcome, if it is still open; an order already resolved or closed stays as
    it is. Returns the order number resolved, or None."""
    data = load(payload_schemas["operation_completed"], envelope["data"],
                "operation_completed payload invalid")
    with uow:
        if not uow.first_delivery(consumer, envelope["event_id"]):
            return None
        s = uow.session
        resolved = None
        if data["order_no"]:
            order = s.execute(select(WorkOrder).where(WorkOrder.order_no == data["order_no"])
                              ).scalar_one_or_none()
            if order is None:
                raise NotFound(f"operation {data['operation_id']} names unknown order {data['order_no']}")
            if order.status == "returned":  # re-routed meanwhile: the case's active order carries it on
                order = _active_order(s, order.case_no)
            if order is not None and domain.can("complete_operation", order.status):
                order.status = domain.next_status("complete_operation", order.status)
                _resolve(uow, order, data["outcome"], now or domain.utcnow())
                resolved = order.order_no
        uow.commit()
        return resolved


# --- queries ----------------------------------------------------------------------------------

def get_order(uow, order_no):
    with uow:
        order = uow.session.execute(select(WorkOrder).where(WorkOrder.order_no == order_no)
                                    ).scalar_one_or_none()
        if order is None:
            raise NotFound(f"工单 {order_no} 不存在")
        return _view(uow.session, order)


def find_orders(uow, case_no=None, unit_code=None, status=None, limit=None):
    """Orders matching every filter given, oldest first (a case's history; a unit's queue)."""
    args = load(FindOrdersSchema(), {"case_no": case_no, "unit_code": unit_code, "status": status,
                                     "limit": limit})
    query = select(WorkOrder)
    for column in ("case_no", "unit_code", "status"):
        if args[column] is not None:
            query = query.where(getattr(WorkOrder, column) == args[column])
    with uow:
        query = query.order_by(WorkOrder.dispatched_at, WorkOrder.id).limit(args["limit"] or MAX_ORDERS)
        rows = uow.session.execute(query).scalars().all()
        return summary_schema.dump(rows)


def _view(s, order):
    appeal = s.get(Appeal, order.case_no)
    notes = s.execute(select(ProgressNote).where(ProgressNote.order_no == order.order_no)
                      .order_by(ProgressNote.at, ProgressNote.id)).scalars().all()
    fields = {c.key: getattr(order, c.key) for c in WorkOrder.__table__.columns}
    return order_schema.dump({
        **fields, "title": appeal.title if appeal else None,
        "co_handlers": [c for c in order.co_handlers.split(",") if c], "progress": notes})


# --- reference data ---------------------------------------------------------------------------

def load_reference(uow, divisions, units):
    """Load (or refresh) the divisions and units that routing reads; returns the rows written."""
    with uow:
        s = uow.session
        for row in divisions:
            s.merge(Division(code=row["code"], name=row["name"], level=row["level"],
                             parent_code=row["parent_code"]))
        for row in units:
            s.merge(Unit(code=row["code"], name=row["name"], type=row["type"],
                         town_code=row["town_code"] or None, village_code=row["village_code"] or None))
        uow.commit()
    return len(divisions) + len(units)

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
import csv
import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache, wraps
from types import SimpleNamespace
from uuid import uuid4

from marshmallow import ValidationError as SchemaError
from sqlalchemy import bindparam, func, or_, select
from sqlalchemy.orm import aliased
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from triage import domain, supervision
from triage.orders import event_base, order_for_unit
from triage.domain import aware
from triage.models import (
    Appeal, DispatcherDecision, Division, Hotspot, HotspotMember, ProgressNote, Unit, WorkOrder,
)
from triage.schemas import (
    MAX_ORDERS, FindOrdersSchema, HotspotQuerySchema, HotspotSchema, OrderActionSchema, OrderSchema,
    OrderSummarySchema, ProgressSchema, ResolveOrderSchema, ReturnOrderSchema, ReviewItemSchema,
    RouteManuallySchema,
)
from wuji_common.errors import InvalidTransition, NotFound, ValidationError
from wuji_common.events import CATALOGUE, CHINA_TIME
from wuji_common.privacy import redact_text, spreadsheet_safe

CONFLICT_ATTEMPTS = 3
MAX_NEIGHBOURS = 200  # the most similar recent appeals looked at to cluster a hot spot
# what clustering reads of a stored neighbour (not the whole appeal, content and all)
NEIGHBOUR_COLUMNS = (Appeal.case_no, Appeal.citizen_ref, Appeal.received_at, Appeal.village_code, Appeal.title)

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
def dispatch_appeal(uow, router, consumer, envelope, now=None, index=None):
    """``appeal_received`` → one work order, and what the appeal shows:

    - routed to a unit (``order_dispatched``, with co-handlers), or held for a dispatcher when the
      router is unsure (status ``pending_review``, no event until a dispatcher routes it);
    - urgent (``urgent_appeal_flagged``, with the rules and words that made it so);
    - a repeat by the same person (``repeat_detected``; routed to the earlier case's unit);
    - a cross-level petition (``cross_level_petition_detected``; routed down to the lower level);
    - one more appeal of a hot spot (``hotspot_detected`` once, when the cluster reaches its size);
    - joint enforcement needed at once (``enforcement_requested``).
    All in one transaction with the order. ``index`` (optional: an AppealIndex) answers the
    near-duplicate questions; without it there is no hot-spot detection.

    Returns a summary of the new order, or None when there is nothing to do: the same event delivered
    again, or an appeal that already has its order."""
    return dispatch_appeals(uow, router, consumer, [envelope], now, index)[0]


def dispatch_appeals(uow, router, consumer, envelopes, now=None, index=None, on_handled=None):
    """:func:`dispatch_appeal` for a batch of ``appeal_received`` events, in one transaction: one
    commit, the texts classified together, each appeal seeing those before it in the batch (its
    repeats, its hot spot). All or nothing: a failing appeal fails the batch, which the caller then
    handles one event at a time. ``on_handled(uow, envelopes)``, if given, adds records of its own
    for the events handled (e.g. their audit rows, :func:`wuji_common.audit.record_events`). Returns a summary or None per envelope, in order."""
    payloads = [load(payload_schemas["appeal_received"], e["data"], "appeal_received payload invalid")
                for e in envelopes]
    # CPU only, before the transaction: classification of the whole batch at once
    assessments = router.assess_many([(p["title"], p["content"]) for p in payloads])
    signatures = index.signatures([(p["title"], p["content"]) for p in payloads]) if index is not None \
        else [None] * len(payloads)
    now = now or domain.utcnow()
    results = [None] * len(envelopes)
    # what the batch has read and added: the process's divisions and units, the cases' orders, the
    # people's histories, the batch's appeals and the clusters they joined
    batch = {}
    with uow:
        batch.update(_reference_read(uow.session))
        fresh = {e["event_id"] for e in uow.first_deliveries(consumer, envelopes)}
        handled = []
        for n, envelope in enumerate(envelopes):
            if envelope["event_id"] in fresh:
                fresh.discard(envelope["event_id"])  # the same event twice in one batch: once
                handled.append(n)
        if handled:
            handled_envelopes, handled_payloads = [envelopes[n] for n in handled], [payloads[n] for n in handled]
            changes = index.changes if index is not None else None  # as it stands when asked
            before = _stored_neighbours(router, index, handled_envelopes, handled_payloads,
                                        [signatures[n] for n in handled])
            batch["neighbours_before"] = (changes, before)
            # what the batch's appeals ask of the database, read once for all of them
            _read_for_batch(uow, [e["case_no"] for e in handled_envelopes], handled_payloads, batch,
                            {c for found in before.values() for c, _ in found})
        for n in handled:
            results[n] = _dispatch(uow, router, index, envelopes[n], payloads[n], assessments[n],
                                   signatures[n], now, batch)
        if handled:
            supervision.insert_clocks(uow.session, batch.get("clocks"))
            if on_handled is not None:
                on_handled(uow, [envelopes[n] for n in handled])
            uow.commit()  # with the dedup records, also of events whose appeal already had its order
    return results


def _received_at(data):
    return aware(_timestamp(data["received_at"])).astimezone(timezone.utc)


def _neighbours(router, index, case_no, data, signature):
    """[(case_no, similarity)] of the recent appeals in the town that this one is a near duplicate
    of, as the index holds them now (at most MAX_NEIGHBOURS)."""
    if index is None:
        return []
    detection = router.taxonomy.detection
    since = _received_at(data) - timedelta(hours=detection.hotspot_window_hours)
    return index.neighbours(signature, data["town_code"], since, detection.hotspot_min_similarity,
                            exclude=case_no)[:MAX_NEIGHBOURS]


def _stored_neighbours(router, index, envelopes, payloads, signatures):
    """{event id: :func:`_neighbours`} of the batch's appeals among the stored ones (the index as it
    stands before the batch adds its own), for :func:`_read_for_batch` to read their hot spots at
    once."""
    return {envelope["event_id"]: _neighbours(router, index, envelope["case_no"], data, signature)
            for envelope, data, signature in zip(envelopes, payloads, signatures)}


def _neighbours_now(router, index, envelope, data, signature, batch):
    """:func:`_neighbours` as the index holds them now: those found before the batch if nothing was
    added to the index or dropped from it since (the first appeal of a batch; every appeal when they
    arrive one at a time), else asked again (the batch's earlier appeals are in it now)."""
    changes, before = batch.get("neighbours_before", (None, {}))
    if index is not None and changes == index.changes and envelope["event_id"] in before:
        return before[envelope["event_id"]]
    return _neighbours(router, index, envelope["case_no"], data, signature)


def _read_for_batch(uow, case_nos, payloads, batch, neighbours=()):
    """One read per question for the whole batch, instead of one per appeal: the work orders the
    cases have already, the divisions they name, the earlier appeals of the people who wrote (and
    those appeals' orders), the hot spots the stored ``neighbours`` (near duplicates) are in and
    what clustering reads of them, and the ids the new orders will be numbered by. Kept in
    ``batch``, which the appeals of the batch then add to as they are stored."""
    s = uow.session
    if neighbours:
        codes = sorted(neighbours)
        memberships = batch.setdefault("memberships", {})   # case_no → [hotspot_id] as stored
        stored = batch.setdefault("neighbours", {})         # case_no → the row _cluster reads
        memberships.update({c: [] for c in codes})
        for case_no, hotspot_id in s.execute(select(HotspotMember.case_no, HotspotMember.hotspot_id)
                                             .where(HotspotMember.case_no.in_(codes))):
            memberships[case_no].append(hotspot_id)
        stored.update({r.case_no: r for r in s.execute(select(*NEIGHBOUR_COLUMNS).where(Appeal.case_no.in_(codes)))})
    codes = {c for p in payloads for c in (p["town_code"], p["village_code"]) if c}
    _read_once(batch.setdefault("divisions", {}), sorted(codes), lambda missing: _divisions(s, missing))
    people = sorted({(p["citizen_ref"], p["town_code"]) for p in payloads if p["citizen_ref"]})
    histories = batch.setdefault("histories", {})
    if people:
        rows = s.execute(_latest_appeals_query(), {"refs": sorted({ref for ref, _ in people}),
                                                   "rank": EARLIER_LIMIT + 1}).scalars().all()
        for key in people:
            histories[key] = []
        for row in rows:
            if (row.citizen_ref, row.town_code) in histories:
                histories[(row.citizen_ref, row.town_code)].append(row)
        for key, found in histories.items():
            # more than the limit: the person's history is read per appeal, limited by the database
            if len(found) > EARLIER_LIMIT:
                histories[key] = None
    earlier = [a.case_no for found in histories.values() if found for a in found]
    _active_orders(s, [*case_nos, *earlier], batch)
    uow.reserve_ids_ahead("work_orders", len(case_nos))


@lru_cache(maxsize=None)
def _latest_appeals_query():
    """The latest appeals (up to ``rank``) of each person of ``refs`` in each town, newest first;
    built once (an aliased subquery costs more to build than the database takes to answer it)."""
    recent = (select(Appeal, func.row_number().over(
                  partition_by=(Appeal.citizen_ref, Appeal.town_code),
                  order_by=Appeal.received_at.desc()).label("rank"))
              .where(Appeal.citizen_ref.in_(bindparam("refs", expanding=True))).subquery())
    latest = aliased(Appeal, recent)
    return select(latest).where(recent.c.rank <= bindparam("rank"))


def _dispatch(uow, router, index, envelope, data, assessment, signature, now, batch):
    """One appeal of :func:`dispatch_appeals`, inside its transaction, its event seen for the first
    time. Returns the summary of its new order, or None when the appeal already has one."""
    case_no = envelope["case_no"]
    title, content = data["title"], data["content"]
    received_at = _received_at(data)
    detection = router.taxonomy.detection
    s = uow.session
    if _active_orders(s, [case_no], batch).get(case_no) is not None:
        return None  # the dedup record stays: this event is done with
    neighbours = _neighbours_now(router, index, envelope, data, signature, batch)
    town_code, village_code = _location(s, data["town_code"], data["village_code"], batch)
    # no order yet, so no appeal row yet either (a racing duplicate clashes on the key and retries)
    appeal = Appeal(case_no=case_no, channel=data["channel"], title=title, content=content,
                    town_code=town_code, village_code=village_code, citizen_ref=data["citizen_ref"],
                    received_at=received_at, stored_at=now,
                    reception_level=detection.reception_level(data["channel"], data["reception_level"]),
                    urgency=assessment.urgency, cross_level=False,
                    risk_reasons=json.dumps(_reasons(assessment.flags), ensure_ascii=False))
    s.add(appeal)
    batch.setdefault("appeals", {})[case_no] = appeal
    units = _unit_lookup(s, batch)
    # the person's earlier appeals, read once for the repeat and cross-level rules
    memo = _memo_for(appeal, batch)
    repeat = _repeat_of(s, router, index, appeal, assessment.item, signature, memo)
    if repeat is not None and repeat.order is not None and repeat.order.status != "pending_review":
        # the same matter again: the unit that has it handles it again
        item = router.taxonomy.items.get(repeat.order.item, assessment.item)
        unit = units([repeat.order.unit_code]).get(repeat.order.unit_code)
        routing = router.route_to(assessment, item, unit, units, basis="repeat") if unit else None
    else:
        routing = None
    held = routing is None and assessment.review is not None
    if routing is None:
        routing = router.hold(assessment, units) if held else \
            router.route(assessment, town_code, village_code, units)
    order = _open_order(uow, appeal, routing, now, review_reason=assessment.review if held else None,
                        label=assessment.label, clock_rows=batch.setdefault("clocks", []))
    # the next appeals of the batch see this one and its order, as they would in the database
    batch.setdefault("orders", {})[case_no] = order
    history = batch.get("histories", {}).get((appeal.citizen_ref, appeal.town_code))
    if history is not None:
        history.append(appeal)
    if assessment.flags:
        _flag_urgent(uow, appeal, order, routing, assessment, held)
    if repeat is not None:
        _link_repeat(uow, appeal, order, routing, repeat, held)
    _check_cross_level(uow, router, index, appeal, order, routing, signature, held, memo)
    if neighbours:
        _cluster(uow, router.taxonomy, appeal, routing.item, neighbours, now, batch)
    if index is not None:
        # now, not after the commit: the next appeal of the batch must find this one. Should the
        # batch roll back, the entry stays until it expires; the appeals it points at are looked up
        # in the database, so a case that was never stored counts for nothing
        index.remember(case_no, title, content, town_code, received_at, signature)
    return {"order_no": order.order_no, "level": order.level, "unit_code": order.unit_code,
            "routing_basis": order.routing_basis, "policy": order.policy, "status": order.status,
            "urgency": order.urgency, "repeat_of": appeal.repeat_of, "cross_level": appeal.cross_level}


def _timestamp(value):
    # the catalogue's schema may hand a time over parsed or as its ISO 8601 text
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _reasons(flags):
    return [{"rule": f.rule, "name": f.name, "keywords": list(f.keywords)} for f in flags]


def _location(s, town_code, village_code, reference=None):
    """The appeal's town (it must be one of ours) and its village if that lies in the town.
    ``reference`` (a dict) keeps the divisions read, for the next appeals of a batch."""
    codes = [town_code, village_code] if village_code else [town_code]
    found = _read_once({} if reference is None else reference.setdefault("divisions", {}), codes,
                       lambda missing: _divisions(s, missing))
    town = found.get(town_code)
    if town is None or town.level != "town":
        raise ValidationError("appeal_received for an unknown town",
                              {"town_code": [f"{town_code} is not a town of the district"]})
    village = found.get(village_code)
    if village is None or village.parent_code != town_code:
        village_code = None  # route to the town office rather than to a wrong grid worker
    return town_code, village_code


# Reference data (divisions, units) read by this process, per database: read once, not per batch.
# ``load_reference`` through this process clears it; a load through another (the triage command)
# is seen within REFERENCE_TTL seconds.
REFERENCE_TTL = 60.0
_reference_by_database = {}


def _reference_read(s):
    """{"divisions": {...}, "units": {...}} this process has read from the session's database."""
    key = str(s.get_bind().url)
    read_at, known = _reference_by_database.get(key, (0.0, None))
    if known is None or time.monotonic() - read_at > REFERENCE_TTL:
        known = {"divisions": {}, "units": {}}
        _reference_by_database[key] = (time.monotonic(), known)
    return known


def _divisions(s, codes):
    """{code: division} of the codes that exist, as plain values (kept beyond the session)."""
    with s.no_autoflush:  # reference data, which routing never writes
        return {d.code: SimpleNamespace(code=d.code, level=d.level, parent_code=d.parent_code)
                for d in s.execute(select(Division).where(Division.code.in_(codes))).scalars()}


def _unit_lookup(s, reference=None):
    """``lookup(codes)`` → {code: UnitRef} of the units that exist; ``reference`` (a dict) keeps what
    was read, for the next appeals of a batch."""
    known = {} if reference is None else reference.setdefault("units", {})

    def read(missing):
        # reference data, which routing never writes: nothing pending needs flushing first (a flush
        # here would write each appeal of a batch on its own)
        with s.no_autoflush:
            return {u.code: domain.UnitRef(u.code, u.name, u.type)
                    for u in s.execute(select(Unit).where(Unit.code.in_(missing))).scalars()}

    def lookup(codes):
        return _read_once(known, codes, read)
    return lookup


def _read_once(known, keys, read):
    """{key: row} of the ``keys`` that exist; ``read(missing)`` → {key: row} is asked only for keys
    not in ``known`` (a dict kept by the caller, which remembers absent keys as None too)."""
    missing = [k for k in dict.fromkeys(keys) if k not in known]
    if missing:
        rows = read(missing)
        known.update({k: rows.get(k) for k in missing})
    return {k: known[k] for k in keys if known[k] is not None}


def _apply_routing(order, routing, now):
    """Put the order in the routed unit's hands under the routed item and policy, its clocks
    starting at ``now``."""
    due = domain.deadlines(routing.limit, now, routing.clock_policy,
                           supervision.calendar_in_force() if routing.clock_policy else None)
    accept_due_at, resolve_due_at = due["report_in"], due["resolve"]
    if routing.clock_policy is not None:
        policy = routing.clock_policy
        order.time_policy, order.time_policy_version = policy.code, policy.version
        order.time_limits = json.dumps(policy.describe())
        accept_hours, resolve_hours = policy.report_in.nominal_hours(), policy.resolve.nominal_hours()
    else:  # the item's own time_limit, in calendar hours
        order.time_policy = f"item:{routing.item.code}"[:40]
        order.time_policy_version = routing.taxonomy_version
        order.time_limits = json.dumps({"report_in": f"{routing.limit.accept_hours} hours",
                                        "first_contact": f"{routing.limit.accept_hours} hours",
                                        "resolve": f"{routing.limit.resolve_hours} hours"})
        accept_hours, resolve_hours = routing.limit.accept_hours, routing.limit.resolve_hours
    order.first_contact_due_at = due["first_contact"]
    order.unit_code, order.unit_name, order.level = routing.unit.code, routing.unit.name, routing.level
    order.category, order.category_name = routing.item.category, routing.item.category_name
    order.item, order.item_name = routing.item.code, routing.item.name
    order.co_handlers = ",".join(routing.co_handlers)
    order.urgent, order.urgency, order.policy = routing.urgent, routing.urgency, routing.policy
    order.accept_hours, order.resolve_hours = accept_hours, resolve_hours
    order.accept_due_at, order.resolve_due_at = accept_due_at, resolve_due_at
    order.confidence, order.routing_basis = routing.confidence, routing.basis
    order.taxonomy_version, order.router_version = routing.taxonomy_version, routing.router_version
    order.violation_type = routing.item.violation_type
    order.dispatched_at = order.updated_at = now


def _open_order(uow, appeal, routing, now, previous=None, review_reason=None, label=None, clock_rows=None):
    """A new work order for ``appeal`` as routed, with its deadlines: dispatched (and announced), or
    held for a dispatcher when ``review_reason`` says why. ``clock_rows``: see _announce_dispatch."""
    s = uow.session
    row_id = uow.reserve_id("work_orders")  # the row id numbers the order
    order_no = domain.order_no_for(now, row_id) if row_id else f"pending-{uuid4().hex}"
    order = WorkOrder(id=row_id, order_no=order_no, case_no=appeal.case_no,
                      town_code=appeal.town_code, village_code=appeal.village_code,
                      status="pending_review" if review_reason else "dispatched", reopen_count=0,
                      previous_order_no=previous.order_no if previous else None,
                      review_reason=review_reason, classifier_label=label, enforcement_requested=False)
    _apply_routing(order, routing, now)
    s.add(order)
    if row_id is None:  # no sequence (SQLite): the row's id once it is inserted
        s.flush()
        order.order_no = domain.order_no_for(now, order.id)
    if previous is not None:
        previous.successor_order_no = order.order_no
    if not review_reason:
        _announce_dispatch(uow, appeal, order, routing, clock_rows)
    return order


def _announce_dispatch(uow, appeal, order, routing, clock_rows=None):
    """``order_dispatched`` (the unit and its co-handlers are told), and ``enforcement_requested``
    when the item needs joint enforcement at once and the case has not asked for it yet. With
    ``clock_rows`` (a batch's list) the order's clocks are gathered there for one insert at the end
    of the batch (supervision.insert_clocks), else added to the session."""
    uow.emit("order_dispatched", appeal.case_no, {
        **event_base(order), "unit_name": order.unit_name, "level": order.level,
        "accept_due_at": iso(order.accept_due_at), "resolve_due_at": iso(order.resolve_due_at),
        "policy": order.policy, "router_version": order.router_version,
        "confidence": order.confidence, "title": appeal.title, "co_handlers": list(routing.co_handlers),
    })
    supervision.start_clocks(uow.session, order, aware(order.dispatched_at), rows=clock_rows)  # 限时办结 starts
    if routing.item.needs_enforcement_at_dispatch and not _enforcement_asked(uow.session, appeal.case_no):
        order.enforcement_requested = True
        uow.emit("enforcement_requested", appeal.case_no, {
            "order_no": order.order_no, "town_code": order.town_code,
            "violation_type": routing.item.violation_type, "urgency": routing.urgency})


def _enforcement_asked(s, case_no):
    # without flushing (a flush here wrote a dispatch batch's pending rows in the middle of the
    # batch): the stored orders, and those of this transaction not written yet
    if any(isinstance(o, WorkOrder) and o.case_no == case_no and o.enforcement_requested
           for o in (*s.new, *s.dirty)):
        return True
    with s.no_autoflush:
        return s.execute(select(WorkOrder.id).where(WorkOrder.case_no == case_no,
                                                    WorkOrder.enforcement_requested.is_(True))).first() is not None



def _active_order(s, case_no):
    return s.execute(select(WorkOrder).where(WorkOrder.case_no == case_no,
                                             WorkOrder.status != "returned")).scalar_one_or_none()


# --- what an appeal shows: urgency, repeats, cross-level petitions, hot spots --------------------

def _flag_urgent(uow, appeal, order, routing, assessment, held):
    """风险研判: the command centre is told at once, with the rules and words that matched."""
    uow.emit("urgent_appeal_flagged", appeal.case_no, {
        "order_no": order.order_no, "unit_code": None if held else order.unit_code,
        "town_code": appeal.town_code, "category": routing.item.category, "item": routing.item.code,
        "urgency": assessment.urgency, "reasons": _reasons(assessment.flags)})


@dataclass
class EarlierCase:
    appeal: Appeal
    order: WorkOrder | None
    similarity: float | None


EARLIER_LIMIT = 50  # the most recent earlier appeals of a person looked at


def _same_matter_before(s, router, index, appeal, item, signature, since=None, levels=None,
                        memo=None):
    """The same person's earlier appeals about the same matter (in the same town: the same item, or
    text at least ``repeat.min_similarity`` similar), most recent first; ``levels`` keeps those
    received at these levels only. ``memo`` (a dict per appeal) lets the repeat and the cross-level
    rules share one read of the person's earlier appeals, their orders and their similarities."""
    if not appeal.citizen_ref:
        return []
    detection = router.taxonomy.detection
    memo = {} if memo is None else memo
    history = _history(s, appeal, memo)
    if history is not None:  # all of them at hand: filtered here as the query below would
        earlier_appeals = [a for a in history
                           if (since is None or aware(a.received_at) >= since)
                           and (levels is None or a.reception_level in levels)][:EARLIER_LIMIT]
    else:  # a prolific petitioner: let the database filter before the limit
        query = _earlier_appeals(appeal)
        if since is not None:
            query = query.where(Appeal.received_at >= since)
        if levels is not None:
            query = query.where(Appeal.reception_level.in_(levels))
        earlier_appeals = s.execute(query.limit(EARLIER_LIMIT)).scalars().all()
    active = _active_orders(s, [a.case_no for a in earlier_appeals], memo)
    similarities = memo.setdefault("similarity", {})
    found = []
    for earlier in earlier_appeals:
        order = active.get(earlier.case_no)
        same_item = order is not None and order.item == item.code
        if earlier.case_no not in similarities:
            similarities[earlier.case_no] = index.similarity(signature, earlier.title, earlier.content) \
                if index is not None else _plain_similarity(earlier, appeal)
        similar = similarities[earlier.case_no]
        if same_item or similar >= detection.repeat_min_similarity:
            found.append(EarlierCase(earlier, order, round(similar, 4)))
    return found


def _memo_for(appeal, batch):
    """The memo of one appeal's repeat and cross-level rules (:func:`_same_matter_before`), from
    what :func:`_read_for_batch` read: the orders known to the batch, and the person's earlier
    appeals in the town (None when there are more than EARLIER_LIMIT: then read per appeal)."""
    memo = {"orders": batch.setdefault("orders", {})}
    histories = batch.get("histories", {})
    key = (appeal.citizen_ref, appeal.town_code)
    if appeal.citizen_ref and key in histories:
        found = histories[key]
        earlier = None if found is None else sorted(
            (a for a in found if a.case_no != appeal.case_no
             and aware(a.received_at) <= aware(appeal.received_at)),
            key=lambda a: aware(a.received_at), reverse=True)
        memo["history"] = earlier if earlier is not None and len(earlier) <= EARLIER_LIMIT else None
    return memo


def _history(s, appeal, memo):
    """The person's earlier appeals in the town (a matter has a place: only the same town's appeals
    can be about it), most recent first — or None when there are more than EARLIER_LIMIT."""
    if "history" not in memo:
        rows = s.execute(_earlier_appeals(appeal).limit(EARLIER_LIMIT + 1)).scalars().all()
        memo["history"] = rows if len(rows) <= EARLIER_LIMIT else None
    return memo["history"]


def _earlier_appeals(appeal):
    """The query of the person's earlier appeals in the appeal's town, most recent first."""
    return (select(Appeal).where(Appeal.citizen_ref == appeal.citizen_ref, Appeal.case_no != appeal.case_no,
                                 Appeal.received_at <= appeal.received_at, Appeal.town_code == appeal.town_code)
            .order_by(Appeal.received_at.desc()))


def _active_orders(s, case_nos, memo):
    """{case_no: active order} in one query, not one per earlier appeal; remembered in ``memo``."""
    return _read_once(memo.setdefault("orders", {}), case_nos, lambda missing: {
        o.case_no: o for o in s.execute(select(WorkOrder).where(
            WorkOrder.case_no.in_(missing), WorkOrder.status != "returned")).scalars()})


def _plain_similarity(a, b):
    from triage.similarity import AppealIndex
    plain = AppealIndex()
    return plain.similarity(plain.signature(a.title, a.content), b.title, b.content)


def _repeat_of(s, router, index, appeal, item, signature, memo=None):
    """重复访: the most recent earlier appeal of the same person about the same matter within the
    repeat window, or None."""
    window = timedelta(days=router.taxonomy.detection.repeat_window_days)
    earlier = _same_matter_before(s, router, index, appeal, item, signature,
                                  since=appeal.received_at - window, memo=memo)
    return earlier[0] if earlier else None


def _link_repeat(uow, appeal, order, routing, repeat, held):
    """Link the appeal to the first case of the chain, count it against the unit that has the matter,
    and tell that unit (``repeat_detected``)."""
    s = uow.session
    root = repeat.appeal.repeat_of or repeat.appeal.case_no
    appeal.repeat_of = root
    appeal.repeat_unit_code = repeat.order.unit_code if repeat.order is not None else None
    s.flush()
    count = s.scalar(select(func.count()).select_from(Appeal).where(
        or_(Appeal.repeat_of == root, Appeal.case_no == root)))
    uow.emit("repeat_detected", appeal.case_no, {
        "earlier_case_no": root,
        "earlier_order_no": repeat.order.order_no if repeat.order is not None else None,
        "unit_code": appeal.repeat_unit_code, "order_no": None if held else order.order_no,
        "town_code": appeal.town_code, "category": routing.item.category, "item": routing.item.code,
        "repeat_count": count, "similarity": repeat.similarity})


def _check_cross_level(uow, router, index, appeal, order, routing, signature, held, memo=None):
    """越级访: received at district level about a matter for the grid or the town, never raised below
    by the same person → flagged; the order goes down to the lower level, which is told."""
    level = routing.item.level if held else routing.level
    if appeal.reception_level != "district" or level not in ("grid", "town"):
        return
    raised_below = _same_matter_before(uow.session, router, index, appeal, routing.item, signature,
                                       levels=("town", "village"), memo=memo)
    if raised_below:
        return
    appeal.cross_level = True
    uow.emit("cross_level_petition_detected", appeal.case_no, {
        "order_no": order.order_no, "unit_code": None if held else order.unit_code,
        "town_code": appeal.town_code, "category": routing.item.category, "item": routing.item.code,
        "level": level, "reception_level": appeal.reception_level, "channel": appeal.channel})


def _cluster(uow, taxonomy, appeal, item, neighbours, now, batch):
    """热点: join the cluster a near-duplicate neighbour is in, or open one when enough people wrote
    about it (``hotspot_detected``, once per cluster).

    ``batch`` (a dict kept by :func:`dispatch_appeals`) holds the appeals this transaction added and
    the clusters they joined: the stored ones are read without flushing first, and the batch's own
    are added from there, so that the batch's rows are written together at its end."""
    s = uow.session
    detection = taxonomy.detection
    joined = batch.setdefault("joined", {})      # case_no → Hotspot, joined or opened in this batch
    added = batch.setdefault("appeals", {})      # case_no → Appeal, added in this batch
    people_of = batch.setdefault("people", {})   # hotspot_id → citizen refs of members added in this batch
    similarity = dict(neighbours)
    codes = list(similarity)
    memberships = batch.get("memberships", {})
    with s.no_autoflush:
        # the hot spots the neighbours are in: as read for the batch (_read_for_batch), else asked
        # now (an appeal of this batch is in none that is stored; one it joined is in ``joined``)
        unread = [c for c in codes if c not in memberships and c not in added]
        stored = {h for c in codes for h in memberships.get(c, ())}
        if unread:
            stored.update(s.execute(select(HotspotMember.hotspot_id).where(HotspotMember.case_no.in_(unread))
                                    .distinct()).scalars())
        stored = sorted(stored)
        # the clusters as this transaction has them (a stored one the batch joined has counts and a
        # last receipt that are not written yet): the latest is joined
        clusters = {h.hotspot_id: h for h in (s.get(Hotspot, hotspot_id) for hotspot_id in stored)}
        clusters.update({joined[c].hotspot_id: joined[c] for c in codes if c in joined})
        if clusters:
            hotspot = max(clusters.values(), key=lambda h: aware(h.last_received_at))
            if hotspot not in s.new:
                # counted on, not counted again: a hot spot can hold thousands of appeals, and its
                # row is locked, so the counts stay exact
                hotspot = s.execute(select(Hotspot).where(Hotspot.hotspot_id == hotspot.hotspot_id)
                                    .with_for_update()).scalar_one()
            # the people of its members this batch added (or all of them, for one it opened), and
            # those stored
            refs = people_of.setdefault(hotspot.hotspot_id, set())
            known_person = appeal.citizen_ref is not None and (
                appeal.citizen_ref in refs
                or s.execute(select(HotspotMember.case_no).join(Appeal, Appeal.case_no == HotspotMember.case_no)
                             .where(HotspotMember.hotspot_id == hotspot.hotspot_id,
                                    Appeal.citizen_ref == appeal.citizen_ref).limit(1)).first() is not None)
            if appeal.citizen_ref is not None:
                refs.add(appeal.citizen_ref)
            s.add(HotspotMember(case_no=appeal.case_no, hotspot_id=hotspot.hotspot_id,
                                similarity=max(similarity.values()), joined_at=now))
            joined[appeal.case_no] = hotspot
            hotspot.appeals += 1
            hotspot.people += 0 if known_person else 1
            hotspot.last_received_at = max(aware(hotspot.last_received_at), appeal.received_at)
            return
        read = batch.get("neighbours", {})
        rows = {c: read[c] for c in codes if c in read}
        unread = [c for c in codes if c not in read and c not in added]
        if unread:
            rows.update({r.case_no: r for r in s.execute(select(*NEIGHBOUR_COLUMNS).where(Appeal.case_no.in_(unread)))})
    rows.update({c: added[c] for c in codes if c in added})
    members = [*rows.values(), appeal]
    people = _people(a.citizen_ref for a in members)
    if len(members) < detection.hotspot_min_appeals or people < detection.hotspot_min_people:
        return
    first = min(members, key=lambda a: aware(a.received_at))
    villages = {a.village_code for a in members}
    hotspot = Hotspot(hotspot_id=f"RD{now.astimezone(CHINA_TIME):%Y%m%d}{uuid4().hex[:8].upper()}",
                      town_code=appeal.town_code, village_code=villages.pop() if len(villages) == 1 else None,
                      category=item.category, item=item.code, title=first.title, appeals=len(members),
                      people=people, first_received_at=aware(first.received_at),
                      last_received_at=max(aware(a.received_at) for a in members), detected_at=now)
    # written with the rest of the batch at its end (the unit of work puts the hot spot before its
    # members); the next appeals of the batch find it in ``joined``, its people in ``people_of``
    s.add(hotspot)
    for member in members:
        s.add(HotspotMember(case_no=member.case_no, hotspot_id=hotspot.hotspot_id,
                            similarity=similarity.get(member.case_no), joined_at=now))
        joined[member.case_no] = hotspot
    people_of[hotspot.hotspot_id] = {a.citizen_ref for a in members if a.citizen_ref}
    uow.emit("hotspot_detected", appeal.case_no, {
        "hotspot_id": hotspot.hotspot_id, "town_code": hotspot.town_code,
        "village_code": hotspot.village_code, "category": hotspot.category, "item": hotspot.item,
        "title": hotspot.title, "appeals": hotspot.appeals, "people": hotspot.people,
        "case_nos": sorted(m.case_no for m in members), "first_received_at": iso(hotspot.first_received_at),
        "window_hours": detection.hotspot_window_hours})


def _people(citizen_refs):
    """Distinct people: by their keyed reference; every anonymous appeal counts as one more."""
    refs = list(citizen_refs)
    return len({r for r in refs if r}) + sum(1 for r in refs if not r)


# --- the unit's actions -----------------------------------------------------------------------


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
        order = order_for_unit(uow.session, order_no, unit_code)
        order.status = domain.next_status("accept", order.status)
        now = now or domain.utcnow()
        order.accepted_at = order.updated_at = now
        supervision.stop_clock(uow.session, order.order_no, "report_in", now)
        uow.emit("order_accepted", order.case_no, {
            **event_base(order), "accepted_at": iso(now),
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
        order = order_for_unit(s, order_no, unit_code)
        if order.unit_code == domain.COMMAND_CENTRE:
            raise InvalidTransition("指挥中心为兜底承办单位，不能退单，请改派或办理")
        order.status = domain.next_status("return", order.status)
        now = now or domain.utcnow()
        order.return_reason = args["reason"]
        order.returned_at = order.updated_at = now
        supervision.leave_clocks(s, order.order_no, now)  # they keep who held it when time ran out
        supervision.close_tickets(s, order.order_no, now)
        s.flush()  # the returned order leaves the active slot before its successor takes it
        excluded = set(s.execute(select(WorkOrder.unit_code).where(
            WorkOrder.case_no == order.case_no, WorkOrder.status == "returned")).scalars())
        appeal = s.get(Appeal, order.case_no)
        assessment = router.assess(appeal.title, appeal.content)
        uow.emit("order_returned", order.case_no, {**event_base(order),
                                                   "reason": redact_text(args["reason"])})
        if router.taxonomy.review.returned_orders == "review":
            # 退单审核: a dispatcher decides where it goes next
            _open_order(uow, appeal, router.hold(assessment, _unit_lookup(s)), now, previous=order,
                        review_reason="returned", label=assessment.label)
        else:
            routing = router.route(assessment, appeal.town_code, appeal.village_code, _unit_lookup(s),
                                   excluded)
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
        order = order_for_unit(s, order_no, unit_code)
        order.status = domain.next_status("progress", order.status)
        now = now or domain.utcnow()
        order.updated_at = now
        s.add(ProgressNote(order_no=order_no, unit_code=unit_code, note=args["note"], at=now))
        supervision.stop_clock(s, order_no, "first_contact", now)
        uow.emit("order_progressed", order.case_no, {**event_base(order),
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
        order = order_for_unit(uow.session, order_no, unit_code)
        order.status = domain.next_status("resolve", order.status)
        _resolve(uow, order, args["resolution"], now or domain.utcnow())
        return _finish(uow, "resolve_order", key, order)


def _resolve(uow, order, resolution, now):
    order.resolution = resolution
    order.resolved_at = order.updated_at = now
    for clock in ("report_in", "first_contact", "resolve"):
        supervision.stop_clock(uow.session, order.order_no, clock, now)
    supervision.close_tickets(uow.session, order.order_no, now)
    uow.emit("order_resolved", order.case_no, {
        **event_base(order), "resolution": redact_text(resolution), "resolved_at": iso(now),
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
            limits = supervision.order_policy(order)[2]
            order.resolve_due_at = domain.due_at(now, limits["resolve"], supervision.calendar_in_force()) \
                if "resolve" in limits else domain.due_at(now, order.resolve_hours)
            s.flush()
            supervision.restart_resolve(s, order, now)
            uow.emit("order_reopened", order.case_no, {
                **event_base(order), "reopen_count": order.reopen_count,
                "resolve_due_at": iso(order.resolve_due_at)})
        else:
            order.status = domain.next_status("close", order.status)
            order.closed_at = now
            uow.emit("order_closed", order.case_no, {
                **event_base(order), "satisfaction": data["satisfaction"], "closed_at": iso(now)})
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


# --- dispatchers (人工研判) ----------------------------------------------------------------------

@retry_on_conflict
def route_manually(uow, router, order_no, unit_code, category, item, idempotency_key, now=None):
    """A dispatcher routes an order by hand → ``order_dispatched`` (and what the item calls for):

    - an order waiting in the review queue (``pending_review``) is dispatched to the unit;
    - a returned order: the order now carrying its case is taken over — dispatched if it waits for
      review, re-routed (改派) if it is dispatched and not yet signed for;
    - a dispatched order not yet signed for is re-routed (改派): it is closed as returned
      (``order_returned``, reason 调度员改派) and a new order goes to the unit.
    Every decision is recorded (``export_decisions`` turns them into training data). Returns the
    order that carries the decision."""
    args = load(RouteManuallySchema(), {"order_no": order_no, "unit_code": unit_code, "category": category,
                                        "item": item, "idempotency_key": idempotency_key})
    taxonomy = router.taxonomy
    chosen = taxonomy.items.get(args["item"])
    if chosen is None or chosen.category != args["category"]:
        raise ValidationError("请求参数有误", {"item": [f"事项 {args['item']} 不在类别 {args['category']} 中"]})
    key = f"{args['order_no']}:{args['idempotency_key']}"
    with uow:
        earlier = uow.recall("route_manually", key)
        if earlier is not None:
            return earlier
        s = uow.session
        order = s.execute(select(WorkOrder).where(WorkOrder.order_no == args["order_no"])).scalar_one_or_none()
        if order is None:
            raise NotFound(f"工单 {args['order_no']} 不存在")
        target = _active_order(s, order.case_no) if order.status == "returned" else order
        if target is None or target.status not in ("pending_review", "dispatched"):
            raise InvalidTransition("工单已签收或已办结，不能改派")
        unit = _unit_lookup(s)([args["unit_code"]]).get(args["unit_code"])
        if unit is None:
            raise ValidationError("请求参数有误", {"unit_code": [f"单位 {args['unit_code']} 不存在"]})
        appeal = s.get(Appeal, target.case_no)
        flags = taxonomy.risk_flags(appeal.title, appeal.content, chosen)
        assessment = domain.Assessment((chosen,), "manual", None, flags)
        routing = router.route_to(assessment, chosen, unit, _unit_lookup(s))
        now = now or domain.utcnow()
        previous_unit, previous_item, reason = target.unit_code, target.item, target.review_reason
        if target.status == "pending_review":
            kind = "review"
            target.status = "dispatched"
            _apply_routing(target, routing, now)
            _announce_dispatch(uow, appeal, target, routing)
            carried = target
        else:
            kind = "reroute"
            target.status = domain.next_status("return", target.status)
            target.return_reason, target.returned_at, target.updated_at = "调度员改派", now, now
            supervision.leave_clocks(s, target.order_no, now)
            supervision.close_tickets(s, target.order_no, now)
            s.flush()  # the superseded order leaves the active slot before its successor takes it
            uow.emit("order_returned", target.case_no, {**event_base(target), "reason": "调度员改派"})
            carried = _open_order(uow, appeal, routing, now, previous=target)
        s.add(DispatcherDecision(
            case_no=appeal.case_no, order_no=args["order_no"], new_order_no=carried.order_no, kind=kind,
            review_reason=reason, previous_unit_code=previous_unit, previous_item=previous_item,
            unit_code=unit.code, category=chosen.category, item=chosen.code,
            label=taxonomy.label_of(chosen.category), taxonomy_version=taxonomy.version, decided_at=now))
        return _finish(uow, "route_manually", key, carried)


URGENCY_FIRST = {"emergency": 0, "urgent": 1, "normal": 2}


def pending_review(uow, limit=None):
    """The review queue: orders waiting for a dispatcher, the most urgent first, then the oldest, with
    the appeal's text and what the router suggested."""
    with uow:
        rows = uow.session.execute(
            select(WorkOrder, Appeal).join(Appeal, Appeal.case_no == WorkOrder.case_no)
            .where(WorkOrder.status == "pending_review").order_by(WorkOrder.dispatched_at, WorkOrder.id)
            .limit(min(int(limit or MAX_ORDERS), MAX_ORDERS))).all()
        items = [{
            "order_no": o.order_no, "case_no": o.case_no, "title": a.title, "content": a.content,
            "channel": a.channel, "town_code": o.town_code, "village_code": o.village_code,
            "review_reason": o.review_reason, "classifier_label": o.classifier_label,
            "confidence": o.confidence, "suggested_category": o.category,
            "suggested_category_name": o.category_name, "suggested_item": o.item,
            "suggested_item_name": o.item_name, "urgency": o.urgency,
            "risk_reasons": json.loads(a.risk_reasons or "[]"), "repeat_of": a.repeat_of,
            "cross_level": a.cross_level, "waiting_since": o.dispatched_at,
            "previous_order_no": o.previous_order_no, "taxonomy_version": o.taxonomy_version,
        } for o, a in rows]
        items.sort(key=lambda i: URGENCY_FIRST.get(i["urgency"], 3))  # stable: oldest first within
        return ReviewItemSchema(many=True).dump(items)


def decisions_for_training(uow, taxonomy):
    """Dispatchers' decisions as training rows (id, subject, body, label): the latest decision per
    case; the label is the classifier label of the category decided (a category no label covers
    gives its own name, a new label for a district's retraining)."""
    with uow:
        rows = uow.session.execute(
            select(DispatcherDecision, Appeal).join(Appeal, Appeal.case_no == DispatcherDecision.case_no)
            .order_by(DispatcherDecision.decided_at, DispatcherDecision.id)).all()
        latest = {}
        for decision, appeal in rows:
            label = taxonomy.label_of(decision.category) if decision.category in taxonomy.categories \
                else decision.label
            latest[appeal.case_no] = {"id": appeal.case_no, "subject": appeal.title,
                                      "body": appeal.content, "label": label}
        return list(latest.values())


def export_decisions(uow, taxonomy, out):
    """Write the training rows to ``out`` (a path) as CSV with the columns the classifier's ``train``
    reads; returns how many rows."""
    rows = decisions_for_training(uow, taxonomy)
    with open(out, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=("id", "subject", "body", "label"))
        writer.writeheader()
        # citizens' text: a cell like =HYPERLINK(...) must stay text when the file is opened
        writer.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in rows)
    return len(rows)


# --- hot spots and repeat counts ----------------------------------------------------------------

def hotspots(uow, since=None, town_code=None, limit=None):
    """Hot-spot clusters, the most recently active first, with their appeals."""
    args = load(HotspotQuerySchema(), {"since": since, "town_code": town_code, "limit": limit})
    query = select(Hotspot)
    if args["since"] is not None:
        query = query.where(Hotspot.last_received_at >= args["since"].astimezone(timezone.utc))
    if args["town_code"] is not None:
        query = query.where(Hotspot.town_code == args["town_code"])
    with uow:
        s = uow.session
        clusters = s.execute(query.order_by(Hotspot.last_received_at.desc())
                             .limit(args["limit"] or 100)).scalars().all()
        members = {}
        if clusters:
            for m in s.execute(select(HotspotMember).where(
                    HotspotMember.hotspot_id.in_([c.hotspot_id for c in clusters]))
                    .order_by(HotspotMember.case_no)).scalars():
                members.setdefault(m.hotspot_id, []).append(m.case_no)
        return HotspotSchema(many=True).dump([
            {**{c.key: getattr(h, c.key) for c in Hotspot.__table__.columns},
             "case_nos": members.get(h.hotspot_id, [])} for h in clusters])


def repeat_counts(uow):
    """重复访 per unit: {unit_code: appeals linked as repeats of a matter the unit had}."""
    with uow:
        rows = uow.session.execute(
            select(Appeal.repeat_unit_code, func.count()).where(Appeal.repeat_unit_code.is_not(None))
            .group_by(Appeal.repeat_unit_code)).all()
        return {unit: count for unit, count in rows}


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
    _reference_by_database.clear()
    return len(divisions) + len(units)

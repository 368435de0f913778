"""The event catalogue: every event the platform publishes, its envelope and its payload schema.

Events are public API for integrators: names are past tense, in the domain's words, and never carry
personal data (name, phone, ID number, precise address). Each is published to the topic exchange
``<source>.events`` with the event type as routing key, as a JSON object:

    {"event_id", "type", "version", "occurred_at", "case_no", "source", "data": {...}}
"""
import functools
import uuid
from datetime import datetime, timedelta, timezone

from marshmallow import Schema, ValidationError, fields, validate

CHANNELS = ("wechat", "web", "hotline", "walk_in", "grid_patrol", "video")
ORDER_STATUSES = ("dispatched", "accepted", "returned", "resolved", "reopened", "closed")
SATISFACTION = ("satisfied", "basically_satisfied", "unsatisfied")
RECEPTION_LEVELS = ("district", "town", "village")


class Timestamp(fields.DateTime):
    """An ISO 8601 time with its offset (e.g. 2026-11-25T08:00:00+00:00): a time without a zone
    is refused, so that no consumer has to guess which one was meant."""

    def _deserialize(self, value, attr, data, **kwargs):
        result = super()._deserialize(value, attr, data, **kwargs)
        if result.tzinfo is None:
            raise self.make_error("invalid", input=value, obj_type="aware datetime")
        return result


class EnvelopeSchema(Schema):
    event_id = fields.String(required=True)
    type = fields.String(required=True)
    version = fields.Integer(required=True)
    occurred_at = fields.String(required=True)  # ISO 8601, UTC
    case_no = fields.String(required=True, allow_none=True)
    source = fields.String(required=True)
    data = fields.Dict(required=True)


# --- payloads -----------------------------------------------------------------------------------

class AppealReceived(Schema):
    """intake: a citizen's appeal was registered (一次登记)."""
    channel = fields.String(required=True, validate=validate.OneOf(CHANNELS))
    title = fields.String(required=True)
    content = fields.String(required=True)
    town_code = fields.String(required=True)
    village_code = fields.String(allow_none=True, load_default=None)
    anonymous = fields.Boolean(required=True)
    # keyed hash (HMAC) of the phone / ID number: lets triage link repeats without the plain value
    citizen_ref = fields.String(allow_none=True, load_default=None)
    received_at = Timestamp(required=True)
    attachments = fields.List(fields.String(), load_default=list)
    # where the appeal was received (接访层级), when known: an appeal received at district level about a
    # matter for the grid or the town is a cross-level petition (越级访)
    reception_level = fields.String(allow_none=True, load_default=None,
                                    validate=validate.OneOf(RECEPTION_LEVELS))


class OrderEvent(Schema):
    """Common part of every work-order (工单) event."""
    order_no = fields.String(required=True)
    unit_code = fields.String(required=True)
    town_code = fields.String(required=True)
    category = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(ORDER_STATUSES))


class OrderDispatched(OrderEvent):
    """triage: a work order was routed to a unit (派单), with its deadlines (限时办结)."""
    unit_name = fields.String(required=True)
    level = fields.String(required=True)  # grid | town | district
    accept_due_at = Timestamp(required=True)
    resolve_due_at = Timestamp(required=True)
    policy = fields.String(required=True)
    router_version = fields.String(required=True)
    confidence = fields.Float(allow_none=True, load_default=None)
    title = fields.String(required=True)
    # units that handle the order jointly with the lead unit (协办, 吹哨报到); they are told too
    co_handlers = fields.List(fields.String(), load_default=list)


class OrderAccepted(OrderEvent):
    """triage: the unit reported in / signed for the order (部门报到/签收)."""
    accepted_at = Timestamp(required=True)
    within_deadline = fields.Boolean(required=True)


class OrderReturned(OrderEvent):
    """triage: the unit returned the order as not its own (退单); it is routed again."""
    reason = fields.String(required=True)


class OrderProgressed(OrderEvent):
    """triage: the unit recorded progress (办理进展)."""
    note = fields.String(required=True)


class OrderResolved(OrderEvent):
    """triage: the unit finished handling (办结)."""
    resolution = fields.String(required=True)
    resolved_at = Timestamp(required=True)
    within_deadline = fields.Boolean(required=True)


class AppealRated(Schema):
    """intake: the citizen rated the handling (评价反馈)."""
    satisfaction = fields.String(required=True, validate=validate.OneOf(SATISFACTION))
    comment = fields.String(allow_none=True, load_default=None)
    rated_at = Timestamp(required=True)


class OrderReopened(OrderEvent):
    """triage: an unsatisfied rating sent the order back to the same unit (返工)."""
    reopen_count = fields.Integer(required=True)
    resolve_due_at = Timestamp(required=True)


class OrderClosed(OrderEvent):
    """triage: the loop is closed (结案)."""
    satisfaction = fields.String(allow_none=True, load_default=None)
    closed_at = Timestamp(required=True)


class WhistleBlown(Schema):
    """enforcement: a town blew the whistle (吹哨) and opened a joint operation."""
    operation_id = fields.String(required=True)
    order_no = fields.String(allow_none=True, load_default=None)
    town_code = fields.String(required=True)
    violation_type = fields.String(required=True)
    forces = fields.List(fields.String(), required=True)
    report_in_due_at = Timestamp(required=True)


class ForceReportedIn(Schema):
    """enforcement: a called force reported in (报到)."""
    operation_id = fields.String(required=True)
    force_code = fields.String(required=True)
    team = fields.String(required=True)
    within_deadline = fields.Boolean(required=True)


class ForceReportInOverdue(Schema):
    """enforcement: a called force had not reported in by its deadline (报到超时); marked once."""
    operation_id = fields.String(required=True)
    order_no = fields.String(allow_none=True, load_default=None)
    town_code = fields.String(required=True)
    force_code = fields.String(required=True)
    report_in_due_at = Timestamp(required=True)
    marked_at = Timestamp(required=True)


class OperationCompleted(Schema):
    """enforcement: the joint operation finished, with its outcome."""
    operation_id = fields.String(required=True)
    order_no = fields.String(allow_none=True, load_default=None)
    town_code = fields.String(required=True)
    outcome = fields.String(required=True)


class EnforcementRequested(Schema):
    """triage: a work order needs joint enforcement (吹哨); enforcement opens the operation."""
    order_no = fields.String(required=True)
    town_code = fields.String(required=True)
    violation_type = fields.String(required=True)
    urgency = fields.String(required=True, validate=validate.OneOf(("emergency", "urgent", "normal")))


class ForceReportInReminded(Schema):
    """enforcement: a force past its report-in deadline was reminded (催报); once."""
    operation_id = fields.String(required=True)
    order_no = fields.String(allow_none=True, load_default=None)
    town_code = fields.String(required=True)
    force_code = fields.String(required=True)
    team = fields.String(allow_none=True, load_default=None)
    report_in_due_at = Timestamp(required=True)
    reminded_at = Timestamp(required=True)


class ForceReportInEscalated(Schema):
    """enforcement: a force still not reported in after its reminder was escalated to the district
    (上报区级督办); once. It counts in the force's assessment."""
    operation_id = fields.String(required=True)
    order_no = fields.String(allow_none=True, load_default=None)
    town_code = fields.String(required=True)
    force_code = fields.String(required=True)
    report_in_due_at = Timestamp(required=True)
    escalated_at = Timestamp(required=True)
    escalated_to = fields.String(required=True)  # district


class RectificationNoticeIssued(Schema):
    """enforcement: a rectification notice (限期整改/拆除通知书) was issued; nothing further may
    happen before its waiting period ends."""
    operation_id = fields.String(required=True)
    order_no = fields.String(allow_none=True, load_default=None)
    town_code = fields.String(required=True)
    violation_type = fields.String(required=True)
    notice_no = fields.String(required=True)
    issued_at = Timestamp(required=True)
    period_days = fields.Integer(required=True)
    period_ends_at = Timestamp(required=True)


class FollowUpInspectionRecorded(Schema):
    """enforcement: the follow-up inspection (复查) after the waiting period found the violation
    rectified or not."""
    operation_id = fields.String(required=True)
    order_no = fields.String(allow_none=True, load_default=None)
    town_code = fields.String(required=True)
    inspected_at = Timestamp(required=True)
    rectified = fields.Boolean(required=True)
    evidence_count = fields.Integer(required=True)


class JointEnforcementCarriedOut(Schema):
    """enforcement: the called forces carried out the joint enforcement (联合执法) together."""
    operation_id = fields.String(required=True)
    order_no = fields.String(allow_none=True, load_default=None)
    town_code = fields.String(required=True)
    forces = fields.List(fields.String(), required=True)
    carried_out_at = Timestamp(required=True)
    evidence_count = fields.Integer(required=True)


class ScheduledAssignment(Schema):
    operation_id = fields.String(required=True)
    day = fields.String(required=True)  # ISO date, local (China Standard Time)
    force_code = fields.String(required=True)
    team = fields.String(required=True)


class OperationsScheduled(Schema):
    """enforcement: a new version of a town's plan of joint operations (排班计划): each called force
    of each open operation on a team and a day; forces' own systems follow the latest version."""
    town_code = fields.String(required=True)
    plan_version = fields.Integer(required=True)
    horizon_start = fields.String(required=True)
    horizon_days = fields.Integer(required=True)
    solver = fields.String(required=True)
    reason = fields.String(required=True)
    assignments = fields.List(fields.Nested(ScheduledAssignment), required=True)
    unscheduled = fields.List(fields.String(), required=True)
    moved = fields.Integer(required=True)


class RepeatDetected(Schema):
    """triage: the same person raised the same matter again within the repeat window (重复访); the
    case is linked to the earlier one, whose unit is told. ``repeat_count`` counts this one too."""
    earlier_case_no = fields.String(required=True)
    earlier_order_no = fields.String(allow_none=True, load_default=None)
    unit_code = fields.String(allow_none=True, load_default=None)  # the earlier case's unit
    order_no = fields.String(allow_none=True, load_default=None)   # this case's order, if routed yet
    town_code = fields.String(required=True)
    category = fields.String(required=True)
    item = fields.String(required=True)
    repeat_count = fields.Integer(required=True)
    similarity = fields.Float(allow_none=True, load_default=None)


class HotspotDetected(Schema):
    """triage: many people wrote about the same place and problem within a short window (热点); once
    per cluster, when it reaches the thresholds. Dispatchers see the cluster (triage.hotspots)."""
    hotspot_id = fields.String(required=True)
    town_code = fields.String(required=True)
    village_code = fields.String(allow_none=True, load_default=None)
    category = fields.String(required=True)
    item = fields.String(required=True)
    title = fields.String(required=True)
    appeals = fields.Integer(required=True)
    people = fields.Integer(required=True)
    case_nos = fields.List(fields.String(), required=True)
    first_received_at = Timestamp(required=True)
    window_hours = fields.Float(required=True)


class CrossLevelPetitionDetected(Schema):
    """triage: an appeal received at district level about a grid- or town-level matter never raised
    below (越级访); it is routed back down and the lower level (``unit_code``) is told."""
    order_no = fields.String(allow_none=True, load_default=None)
    unit_code = fields.String(allow_none=True, load_default=None)
    town_code = fields.String(required=True)
    category = fields.String(required=True)
    item = fields.String(required=True)
    level = fields.String(required=True, validate=validate.OneOf(("grid", "town")))
    reception_level = fields.String(required=True, validate=validate.OneOf(RECEPTION_LEVELS))
    channel = fields.String(required=True, validate=validate.OneOf(CHANNELS))


class RiskReason(Schema):
    rule = fields.String(required=True)
    name = fields.String(required=True)
    keywords = fields.List(fields.String(), required=True)


class UrgentAppealFlagged(Schema):
    """triage: an appeal shows a threat to life or safety, a mass gathering, self-harm or escalation
    (风险研判); the command centre is told at once. ``reasons`` say which rules and words."""
    order_no = fields.String(allow_none=True, load_default=None)
    unit_code = fields.String(allow_none=True, load_default=None)
    town_code = fields.String(required=True)
    category = fields.String(required=True)
    item = fields.String(required=True)
    urgency = fields.String(required=True, validate=validate.OneOf(("emergency", "urgent")))
    reasons = fields.List(fields.Nested(RiskReason), required=True)


CLOCKS = ("report_in", "first_contact", "resolve")
LEVELS = ("grid", "town", "district")


class OrderClockEvent(OrderEvent):
    """Common part of the clock (限时办结) events: which of the order's clocks, held by ``unit_code``
    at ``level``: report_in (签收/报到), first_contact (首次联系) or resolve (办结)."""
    clock = fields.String(required=True, validate=validate.OneOf(CLOCKS))
    level = fields.String(required=True, validate=validate.OneOf(LEVELS))


class OrderDeadlineApproaching(OrderClockEvent):
    """triage: ``threshold`` per cent (50 or 80) of a clock's window has gone (临期提醒); once per
    clock and threshold, to the holder."""
    threshold = fields.Integer(required=True)
    due_at = Timestamp(required=True)


class OrderOverdue(OrderClockEvent):
    """triage: a clock ran out while ``unit_code`` held the order (超时); once per clock. A
    supervision ticket (督办单) ``ticket_no`` is opened for the supervision zone."""
    due_at = Timestamp(required=True)
    ticket_no = fields.String(required=True)


class OrderEscalated(OrderClockEvent):
    """triage: the unit had not reported in (签收) by the deadline; the level above (grid → town →
    district) is told (逐级上报); once per clock."""
    from_level = fields.String(required=True, validate=validate.OneOf(LEVELS))
    to_level = fields.String(required=True, validate=validate.OneOf(LEVELS))
    to_unit_code = fields.String(required=True)
    due_at = Timestamp(required=True)


class OrderClockChangeRequested(OrderEvent):
    """triage: the unit asked, before expiry and with a reason, for an extension (延期) or a
    suspension (挂账) of ``days``; the supervision zone decides."""
    request_id = fields.String(required=True)
    days = fields.Float(required=True)
    reason = fields.String(required=True)
    resolve_due_at = Timestamp(required=True)


class OrderClockChangeDecided(OrderEvent):
    """triage: the supervision zone approved or refused an extension (延期) or a suspension (挂账);
    ``resolve_due_at`` is the deadline now in force (a suspended clock's moves when it resumes)."""
    request_id = fields.String(required=True)
    approved = fields.Boolean(required=True)
    days = fields.Float(required=True)
    resolve_due_at = Timestamp(required=True)


class OrderExtensionRequested(OrderClockChangeRequested):
    """triage: the unit asked for an extension (延期) of the resolve deadline by ``days``."""


class OrderSuspensionRequested(OrderClockChangeRequested):
    """triage: the unit asked for the order's clocks to stand still (挂账) for at most ``days``."""


class OrderExtensionDecided(OrderClockChangeDecided):
    """triage: an extension (延期) was approved or refused."""


class OrderSuspensionDecided(OrderClockChangeDecided):
    """triage: a suspension (挂账) was approved (the clocks pause) or refused."""


class OrderResumed(OrderClockEvent):
    """triage: a suspended order's clocks run again (挂账结束), their deadlines later by the pause."""
    resumed_at = Timestamp(required=True)


class OrderUrged(OrderEvent):
    """triage: the supervision zone sent the unit a supervision notice (催办) about the order."""
    urge_id = fields.String(required=True)
    ticket_no = fields.String(allow_none=True, load_default=None)
    note = fields.String(required=True)


class TokenRevoked(Schema):
    """auth: the platform revoked an access token (``wuji token revoke``); every service refuses it
    from now on. Published by the token issuer to ``auth.events``; carries the token's id only."""
    jti = fields.String(required=True)
    expires_at = Timestamp(required=True)   # when the token would have expired anyway
    revoked_at = Timestamp(required=True)


CATALOGUE = {
    # event type: (source service, version, payload schema)
    "appeal_received": ("intake", 1, AppealReceived),
    "appeal_rated": ("intake", 1, AppealRated),
    "order_dispatched": ("triage", 1, OrderDispatched),
    "order_accepted": ("triage", 1, OrderAccepted),
    "order_returned": ("triage", 1, OrderReturned),
    "order_progressed": ("triage", 1, OrderProgressed),
    "order_resolved": ("triage", 1, OrderResolved),
    "order_reopened": ("triage", 1, OrderReopened),
    "order_closed": ("triage", 1, OrderClosed),
    "whistle_blown": ("enforcement", 1, WhistleBlown),
    "force_reported_in": ("enforcement", 1, ForceReportedIn),
    "operation_completed": ("enforcement", 1, OperationCompleted),
    "force_report_in_overdue": ("enforcement", 1, ForceReportInOverdue),
    "enforcement_requested": ("triage", 1, EnforcementRequested),
    "force_report_in_reminded": ("enforcement", 1, ForceReportInReminded),
    "force_report_in_escalated": ("enforcement", 1, ForceReportInEscalated),
    "rectification_notice_issued": ("enforcement", 1, RectificationNoticeIssued),
    "follow_up_inspection_recorded": ("enforcement", 1, FollowUpInspectionRecorded),
    "joint_enforcement_carried_out": ("enforcement", 1, JointEnforcementCarriedOut),
    "operations_scheduled": ("enforcement", 1, OperationsScheduled),
    "repeat_detected": ("triage", 1, RepeatDetected),
    "hotspot_detected": ("triage", 1, HotspotDetected),
    "cross_level_petition_detected": ("triage", 1, CrossLevelPetitionDetected),
    "urgent_appeal_flagged": ("triage", 1, UrgentAppealFlagged),
    "order_deadline_approaching": ("triage", 1, OrderDeadlineApproaching),
    "order_overdue": ("triage", 1, OrderOverdue),
    "order_escalated": ("triage", 1, OrderEscalated),
    "order_extension_requested": ("triage", 1, OrderExtensionRequested),
    "order_extension_decided": ("triage", 1, OrderExtensionDecided),
    "order_suspension_requested": ("triage", 1, OrderSuspensionRequested),
    "order_suspension_decided": ("triage", 1, OrderSuspensionDecided),
    "order_resumed": ("triage", 1, OrderResumed),
    "order_urged": ("triage", 1, OrderUrged),
    "token_revoked": ("auth", 1, TokenRevoked),
}


# China Standard Time (no daylight saving): case and order numbers carry the local date, and people
# are shown local times; the wire and the databases keep UTC.
CHINA_TIME = timezone(timedelta(hours=8), "CST")


def now_iso():
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def make_event(event_type, case_no, data, source=None, occurred_at=None):
    """Build an envelope; the payload is validated against the catalogue so a service cannot emit
    something integrators were not promised (and an unknown field, e.g. a phone number, is refused)."""
    catalogue_source, version, schema_cls = CATALOGUE[event_type]
    schema = _schema(schema_cls)
    try:
        loaded = schema.load(data)
    except ValidationError as err:
        raise ValueError(f"event {event_type} payload invalid: {err.messages}") from None
    return {
        "event_id": str(uuid.uuid4()),
        "type": event_type,
        "version": version,
        "occurred_at": occurred_at.isoformat(timespec="milliseconds") if occurred_at else now_iso(),
        "case_no": case_no,
        "source": source or catalogue_source,
        "data": schema.dump(loaded),
    }


@functools.lru_cache(maxsize=None)
def _schema(schema_cls):
    """One instance per payload schema: making a marshmallow schema copies its declared fields,
    which cost more than checking the payload (a schema keeps no state between loads)."""
    return schema_cls()

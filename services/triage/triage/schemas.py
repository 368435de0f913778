"""triage's wire contract: what a unit's system may send over RPC, and the work orders it gets back
(JSON primitives only; datetimes as ISO 8601 strings with their UTC offset)."""
from datetime import timezone

from marshmallow import RAISE, Schema, fields, validate

from wuji_common.events import ORDER_STATUSES


class UtcDateTime(fields.DateTime):
    """SQLite hands back naive datetimes; every one stored here is UTC, so say so on the wire."""

    def _serialize(self, value, attr, obj, **kwargs):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return super()._serialize(value, attr, obj, **kwargs)


class Strict(Schema):
    class Meta:
        unknown = RAISE


# --- input ----------------------------------------------------------------------------------

def _text(max_length):
    return fields.String(required=True, validate=validate.Length(1, max_length))


class OrderActionSchema(Strict):
    """A unit acting on one of its orders; ``idempotency_key`` makes a retry return the first result."""
    order_no = _text(40)
    unit_code = _text(40)
    idempotency_key = _text(64)


class ReturnOrderSchema(OrderActionSchema):
    reason = _text(500)


class ProgressSchema(OrderActionSchema):
    note = _text(2000)


class ResolveOrderSchema(OrderActionSchema):
    resolution = _text(4000)


MAX_ORDERS = 10000


# pending_review: waiting for a dispatcher (人工研判); triage's own, never in an event
STATUSES = ORDER_STATUSES + ("pending_review",)


class FindOrdersSchema(Strict):
    case_no = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 32))
    unit_code = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 40))
    status = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(STATUSES))
    # no limit given: every match, up to MAX_ORDERS (a unit's whole queue, a case's history)
    limit = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(1, MAX_ORDERS))


class RouteManuallySchema(Strict):
    """A dispatcher's routing decision."""
    order_no = _text(40)
    unit_code = _text(40)
    category = _text(40)
    item = _text(40)
    idempotency_key = _text(64)


class HotspotQuerySchema(Strict):
    since = fields.AwareDateTime(load_default=None, allow_none=True)
    town_code = fields.String(load_default=None, allow_none=True, validate=validate.Length(9, 9))
    limit = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(1, 1000))


# --- output ---------------------------------------------------------------------------------

class ProgressNoteSchema(Schema):
    at = UtcDateTime()
    unit_code = fields.String()
    note = fields.String()


class OrderSummarySchema(Schema):
    """One line of ``find_orders``."""
    order_no = fields.String()
    case_no = fields.String()
    unit_code = fields.String()
    unit_name = fields.String()
    town_code = fields.String()
    category = fields.String()
    category_name = fields.String()
    item = fields.String()
    item_name = fields.String()
    level = fields.String()
    status = fields.String()
    urgent = fields.Boolean()
    policy = fields.String()
    accept_due_at = UtcDateTime()
    resolve_due_at = UtcDateTime()
    dispatched_at = UtcDateTime()
    reopen_count = fields.Integer()
    urgency = fields.String()
    version = fields.Integer()


class OrderSchema(OrderSummarySchema):
    """``get_order`` and the result of every mutating call."""
    village_code = fields.String(allow_none=True)
    title = fields.String()
    co_handlers = fields.List(fields.String())
    confidence = fields.Float(allow_none=True)
    routing_basis = fields.String()
    taxonomy_version = fields.String()
    router_version = fields.String()
    previous_order_no = fields.String(allow_none=True)
    successor_order_no = fields.String(allow_none=True)
    return_reason = fields.String(allow_none=True)
    resolution = fields.String(allow_none=True)
    satisfaction = fields.String(allow_none=True)
    accepted_at = UtcDateTime(allow_none=True)
    returned_at = UtcDateTime(allow_none=True)
    resolved_at = UtcDateTime(allow_none=True)
    reopened_at = UtcDateTime(allow_none=True)
    closed_at = UtcDateTime(allow_none=True)
    updated_at = UtcDateTime()
    progress = fields.List(fields.Nested(ProgressNoteSchema))
    violation_type = fields.String(allow_none=True)  # the joint enforcement the town may call for
    enforcement_requested = fields.Boolean()
    review_reason = fields.String(allow_none=True)


class RiskReasonSchema(Schema):
    rule = fields.String()
    name = fields.String()
    keywords = fields.List(fields.String())


class ReviewItemSchema(Schema):
    """One line of the dispatchers' review queue (``pending_review``)."""
    order_no = fields.String()
    case_no = fields.String()
    title = fields.String()
    content = fields.String()
    channel = fields.String()
    town_code = fields.String()
    village_code = fields.String(allow_none=True)
    review_reason = fields.String()  # low_confidence | ambiguous | unidentified | returned
    classifier_label = fields.String(allow_none=True)
    confidence = fields.Float(allow_none=True)
    suggested_category = fields.String()
    suggested_category_name = fields.String()
    suggested_item = fields.String()
    suggested_item_name = fields.String()
    urgency = fields.String()
    risk_reasons = fields.List(fields.Nested(RiskReasonSchema))
    repeat_of = fields.String(allow_none=True)
    cross_level = fields.Boolean()
    waiting_since = UtcDateTime()
    previous_order_no = fields.String(allow_none=True)
    taxonomy_version = fields.String()


class HotspotSchema(Schema):
    """A hot-spot cluster (热点) as dispatchers see it."""
    hotspot_id = fields.String()
    town_code = fields.String()
    village_code = fields.String(allow_none=True)
    category = fields.String()
    item = fields.String()
    title = fields.String()
    appeals = fields.Integer()
    people = fields.Integer()
    first_received_at = UtcDateTime()
    last_received_at = UtcDateTime()
    detected_at = UtcDateTime()
    case_nos = fields.List(fields.String())


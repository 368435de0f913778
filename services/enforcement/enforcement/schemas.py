"""enforcement's wire contract: what a town, a force or triage may send, and what it gets back.
Output is dumped to JSON primitives (ISO 8601 strings in UTC for times)."""
from datetime import timezone

from marshmallow import RAISE, Schema, fields, validate

from enforcement.domain import FORCE_STATUSES, OPERATION_STATUSES, URGENCIES

CODE = validate.Length(1, 64)


class Strict(Schema):
    class Meta:
        unknown = RAISE


class UtcDateTime(fields.DateTime):
    """SQLite hands back naive datetimes; everything stored is UTC, so say so on the wire."""

    def _serialize(self, value, attr, obj, **kwargs):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return super()._serialize(value, attr, obj, **kwargs)


# --- input ----------------------------------------------------------------------------------------

class WhistleSchema(Strict):
    """``blow_whistle``: the town calls the forces competent for a violation (吹哨)."""
    order_no = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 32))
    violation_type = fields.String(required=True, validate=CODE)
    town_code = fields.String(required=True, validate=validate.Length(9, 12))
    urgency = fields.String(required=True, validate=validate.OneOf(URGENCIES))


class ReportInSchema(Strict):
    """``report_in``: a called force reports in (报到) with one of its teams."""
    operation_id = fields.String(required=True, validate=CODE)
    force_code = fields.String(required=True, validate=CODE)
    team = fields.String(required=True, validate=CODE)


class CompletionSchema(Strict):
    """``complete_operation``: the outcome is shown to the citizen; no personal data in it."""
    operation_id = fields.String(required=True, validate=CODE)
    outcome = fields.String(required=True, validate=validate.Length(1, 500))


class OperationQuerySchema(Strict):
    town_code = fields.String(load_default=None, allow_none=True, validate=validate.Length(9, 12))
    status = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(OPERATION_STATUSES))


# --- output ---------------------------------------------------------------------------------------

class CalledForceSchema(Schema):
    force_code = fields.String()
    force_name = fields.String()
    role = fields.String()
    status = fields.String(validate=validate.OneOf(FORCE_STATUSES))
    status_text = fields.String()
    assigned_team = fields.String(allow_none=True)
    assigned_team_name = fields.String(allow_none=True)
    report_in_due_at = UtcDateTime()
    team = fields.String(allow_none=True)
    team_name = fields.String(allow_none=True)
    reported_at = UtcDateTime(allow_none=True)
    within_deadline = fields.Boolean(allow_none=True)
    overdue_at = UtcDateTime(allow_none=True)


class OperationSchema(Schema):
    operation_id = fields.String()
    order_no = fields.String(allow_none=True)
    town_code = fields.String()
    town_name = fields.String()
    violation_type = fields.String()
    violation_name = fields.String()
    legal_basis = fields.String(allow_none=True)
    urgency = fields.String()
    status = fields.String()
    status_text = fields.String()
    whistle_at = UtcDateTime()
    report_in_due_at = UtcDateTime()
    completed_at = UtcDateTime(allow_none=True)
    outcome = fields.String(allow_none=True)
    version = fields.Integer()
    forces = fields.List(fields.Nested(CalledForceSchema))


class ReportInResultSchema(Schema):
    operation_id = fields.String()
    force_code = fields.String()
    team = fields.String()
    reported_at = UtcDateTime()
    within_deadline = fields.Boolean()
    operation_status = fields.String()


class TeamSchema(Schema):
    team = fields.String(attribute="code")
    team_name = fields.String(attribute="name")


class TownForceSchema(Schema):
    """``forces(town_code)``: a force and its teams serving the town."""
    force_code = fields.String()
    force_name = fields.String()
    unit_code = fields.String(allow_none=True)
    teams = fields.List(fields.Nested(TeamSchema))

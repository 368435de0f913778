"""enforcement's wire contract: what a town, a force or triage may send, and what it gets back.
Output is dumped to JSON primitives (ISO 8601 strings in UTC for times)."""
from datetime import timezone

from marshmallow import RAISE, Schema, fields, validate

from enforcement.domain import ABSENCE_KINDS, FORCE_STATUSES, OPERATION_STATUSES, URGENCIES

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


EVIDENCE = fields.List(fields.String(validate=validate.Length(1, 200)), load_default=list,
                      validate=validate.Length(0, 50))


class CompletionSchema(Strict):
    """``complete_operation``: the outcome is shown to the citizen; no personal data in it.
    ``evidence``: references to stored evidence (photo or record ids), required after a legal
    procedure."""
    operation_id = fields.String(required=True, validate=CODE)
    outcome = fields.String(required=True, validate=validate.Length(1, 500))
    evidence = EVIDENCE


class NoticeSchema(Strict):
    """``issue_rectification_notice``: 限期整改/拆除通知书; the period may exceed the statutory one."""
    operation_id = fields.String(required=True, validate=CODE)
    notice_no = fields.String(required=True, validate=validate.Length(1, 64))
    period_days = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(1, 365))


class InspectionSchema(Strict):
    """``record_inspection``: the follow-up inspection (复查) once the period is over."""
    operation_id = fields.String(required=True, validate=CODE)
    rectified = fields.Boolean(required=True)
    findings = fields.String(required=True, validate=validate.Length(1, 500))
    evidence = EVIDENCE


class JointEnforcementSchema(Strict):
    """``carry_out_joint_enforcement``: the forces act together (强制拆除, 查封 ...)."""
    operation_id = fields.String(required=True, validate=CODE)
    action = fields.String(required=True, validate=validate.Length(1, 500))
    evidence = EVIDENCE


class AbsenceSchema(Strict):
    """``record_absence``: an officer drops out for whole days."""
    officer_code = fields.String(required=True, validate=validate.Length(1, 80))
    first_day = fields.Date(required=True)
    last_day = fields.Date(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(ABSENCE_KINDS))


class ScheduleSchema(Strict):
    town_code = fields.String(required=True, validate=validate.Length(9, 12))
    horizon_days = fields.Integer(load_default=14, validate=validate.Range(1, 31))


class AssessmentQuerySchema(Strict):
    town_code = fields.String(load_default=None, allow_none=True, validate=validate.Length(9, 12))
    since = fields.AwareDateTime(load_default=None, allow_none=True)
    until = fields.AwareDateTime(load_default=None, allow_none=True)


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
    reminded_at = UtcDateTime(allow_none=True)
    escalated_at = UtcDateTime(allow_none=True)


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
    due_at = UtcDateTime(allow_none=True)
    forces = fields.List(fields.Nested(CalledForceSchema))
    procedure = fields.Nested(lambda: ProcedureSchema(), allow_none=True)


class ProcedureStepSchema(Schema):
    step = fields.String()
    recorded_at = UtcDateTime()
    document_no = fields.String(allow_none=True)
    period_ends_at = UtcDateTime(allow_none=True)
    rectified = fields.Boolean(allow_none=True)
    findings = fields.String(allow_none=True)
    evidence = fields.List(fields.String())


class ProcedureSchema(Schema):
    """The legal procedure of the case: which notice, its waiting period, the steps taken."""
    notice_name = fields.String()
    waiting_days = fields.Integer()
    step = fields.String(allow_none=True)
    step_text = fields.String()
    steps = fields.List(fields.Nested(ProcedureStepSchema))


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


class StepResultSchema(Schema):
    """What a legal-procedure step returns."""
    operation_id = fields.String()
    step = fields.String()
    recorded_at = UtcDateTime()
    document_no = fields.String(allow_none=True)
    period_ends_at = UtcDateTime(allow_none=True)
    rectified = fields.Boolean(allow_none=True)
    evidence = fields.List(fields.String())


class AbsenceResultSchema(Schema):
    officer_code = fields.String()
    team = fields.String()
    first_day = fields.Date()
    last_day = fields.Date()
    kind = fields.String()
    replan_towns = fields.List(fields.String())


class AssessmentSchema(Schema):
    """A force's report-in record (考核): how often it was called, on time, late, reminded,
    escalated, and the minutes it was late in all."""
    force_code = fields.String()
    force_name = fields.String()
    called = fields.Integer()
    reported_in = fields.Integer()
    on_time = fields.Integer()
    late = fields.Integer()
    not_reported = fields.Integer()
    reminded = fields.Integer()
    escalated = fields.Integer()
    minutes_late = fields.Integer()
    on_time_rate = fields.Float(allow_none=True)


class AssignmentSchema(Schema):
    operation_id = fields.String()
    day = fields.Date()
    force_code = fields.String()
    team = fields.String()


class PlanSchema(Schema):
    """A version of a town's plan: the assignments and how good the plan is."""
    town_code = fields.String()
    plan_version = fields.Integer()
    created_at = UtcDateTime()
    reason = fields.String()
    horizon_start = fields.Date()
    horizon_days = fields.Integer()
    solver = fields.String()
    status = fields.String()
    on_time = fields.Integer()
    late = fields.Integer()
    lateness_hours = fields.Float()
    moved = fields.Integer()
    bound_on_time = fields.Integer(allow_none=True)
    solve_seconds = fields.Float()
    utilisation = fields.Float()
    unscheduled = fields.List(fields.String())
    assignments = fields.List(fields.Nested(AssignmentSchema))

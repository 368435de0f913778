"""metrics' wire contract: the KPI query and its rows."""
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from metrics.domain import GROUP_BY

MAX_WINDOW_DAYS = 366 * 3  # a bound on what one call may scan


class KpiQuerySchema(Schema):
    """``metrics.kpis(start, end, group_by)``: ISO calendar dates, both inclusive."""

    class Meta:
        unknown = RAISE

    start = fields.Date(required=True)
    end = fields.Date(required=True)
    group_by = fields.String(required=True, validate=validate.OneOf(GROUP_BY))

    @validates_schema
    def _ordered_window(self, data, **_):
        start, end = data.get("start"), data.get("end")
        if start and end:
            if end < start:
                raise ValidationError("结束日期不能早于开始日期", "end")
            if (end - start).days >= MAX_WINDOW_DAYS:
                raise ValidationError(f"统计区间不得超过 {MAX_WINDOW_DAYS} 天", "end")


class KpiRowSchema(Schema):
    group = fields.String(allow_none=True)  # town code, unit code or category; None: not yet known
    name = fields.String(allow_none=True)   # the town's or unit's name where reference data has it
    appeals = fields.Integer()
    orders = fields.Integer()
    due_for_acceptance = fields.Integer()
    accepted_on_time = fields.Integer()
    response_rate = fields.Float(allow_none=True)
    resolved = fields.Integer()
    resolved_on_time = fields.Integer()
    on_time_resolution_rate = fields.Float(allow_none=True)
    rated = fields.Integer()
    satisfied = fields.Integer()
    satisfaction_rate = fields.Float(allow_none=True)
    reopened = fields.Integer()
    rework_rate = fields.Float(allow_none=True)
    cross_level = fields.Integer()                  # 越级访
    cross_level_rate = fields.Float(allow_none=True)

"""intake's wire contract: what a citizen or a department system may send, and what it gets back."""
import re
from datetime import timezone

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates, validates_schema

from wuji_common.events import CHANNELS, CHINA_TIME, RECEPTION_LEVELS, SATISFACTION

PHONE = re.compile(r"^(1[3-9]\d{9}|0\d{2,3}-?\d{7,8})$")  # mobile, or landline with area code
ID_NUMBER = re.compile(r"^\d{17}[\dXx]$")
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK = "10X98765432"


def id_number_is_valid(value):
    """GB 11643 check digit of an 18-digit resident ID number."""
    if not ID_NUMBER.match(value):
        return False
    total = sum(int(d) * w for d, w in zip(value[:17], ID_WEIGHTS))
    return ID_CHECK[total % 11] == value[17].upper()


class Strict(Schema):
    class Meta:
        unknown = RAISE


class CitizenSchema(Strict):
    name = fields.String(required=True, validate=validate.Length(1, 64))
    phone = fields.String(required=True, validate=validate.Regexp(PHONE, error="手机号或电话号码格式不正确"))
    id_number = fields.String(load_default=None, allow_none=True)
    email = fields.Email(load_default=None, allow_none=True, validate=validate.Length(max=254))
    wechat_openid = fields.String(load_default=None, allow_none=True,
                                  validate=validate.Regexp(r"^[A-Za-z0-9_-]{6,64}$", error="openid 格式不正确"))

    @validates("id_number")
    def _check_id_number(self, value, **_):
        if value is not None and not id_number_is_valid(value):
            raise ValidationError("身份证号码格式或校验位不正确")


class LocationSchema(Strict):
    town_code = fields.String(required=True, validate=validate.Length(9, 9))
    village = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=12))
    address = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))
    lat = fields.Float(load_default=None, allow_none=True, validate=validate.Range(-90, 90))
    lon = fields.Float(load_default=None, allow_none=True, validate=validate.Range(-180, 180))


class AppealSubmissionSchema(Strict):
    """``POST /api/v1/appeals`` and ``intake.submit_appeal``."""
    channel = fields.String(required=True, validate=validate.OneOf(CHANNELS))
    title = fields.String(required=True, validate=validate.Length(1, 100))
    content = fields.String(required=True, validate=validate.Length(1, 5000))
    citizen = fields.Nested(CitizenSchema, load_default=None, allow_none=True)
    anonymous = fields.Boolean(load_default=False)
    # "hide my identity from the unit": the handling unit sees the matter, not the person
    hide_identity = fields.Boolean(load_default=False)
    location = fields.Nested(LocationSchema, required=True)
    # where the appeal was received (接待层级); e.g. the district's video reception or 12345 hotline
    reception_level = fields.String(load_default=None, allow_none=True,
                                    validate=validate.OneOf(RECEPTION_LEVELS))
    attachments = fields.List(fields.Url(validate=validate.Length(max=500)), load_default=list,
                              validate=validate.Length(max=10))

    @validates_schema
    def _citizen_or_anonymous(self, data, **_):
        if not data.get("anonymous") and not data.get("citizen"):
            raise ValidationError("实名诉求须填写诉求人信息，或选择匿名（anonymous: true）", "citizen")


class RatingSchema(Strict):
    satisfaction = fields.String(required=True, validate=validate.OneOf(SATISFACTION))
    comment = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500))


class ChinaTime(fields.DateTime):
    """Times shown to people are China time (2026-11-25T08:00:00+08:00)."""

    def _serialize(self, value, attr, obj, **kwargs):
        if value is not None and value.tzinfo is None:  # SQLite hands back naive UTC
            value = value.replace(tzinfo=timezone.utc)
        return super()._serialize(value and value.astimezone(CHINA_TIME), attr, obj, **kwargs)


class TimelineEntrySchema(Schema):
    at = ChinaTime()
    status = fields.String()
    text = fields.String()


class PublicAppealSchema(Schema):
    """What the citizen sees with their tracking token."""
    case_no = fields.String()
    title = fields.String()
    status = fields.String()
    status_text = fields.String()
    received_at = ChinaTime()
    timeline = fields.List(fields.Nested(TimelineEntrySchema))
    can_rate = fields.Boolean()


class StaffAppealSchema(Schema):
    """What staff see over RPC: personal data masked."""
    case_no = fields.String()
    channel = fields.String()
    title = fields.String()
    content = fields.String()
    town_code = fields.String()
    village_code = fields.String(allow_none=True)
    anonymous = fields.Boolean()
    identity_hidden = fields.Boolean()  # the citizen hid their identity from this (unit) reader
    status = fields.String()
    satisfaction = fields.String(allow_none=True)
    received_at = fields.DateTime()
    citizen = fields.Dict(allow_none=True)  # masked name/phone/id_number
    timeline = fields.List(fields.Nested(TimelineEntrySchema))


# --- answers of the citizen API (documented in the OpenAPI description, intake.openapi) ----------

class AppealReceiptSchema(Schema):
    """``POST /api/v1/appeals`` (201): keep the tracking token, it is shown once."""
    case_no = fields.String(required=True)
    tracking_token = fields.String(required=True)
    status = fields.String(required=True)


class RatingResultSchema(Schema):
    case_no = fields.String(required=True)
    status = fields.String(required=True)
    satisfaction = fields.String(required=True, validate=validate.OneOf(SATISFACTION))


class ApiErrorSchema(Schema):
    """Every 4xx of the citizen API: a code word, a message in Chinese, and the fields at fault."""
    error = fields.String(required=True, validate=validate.OneOf(
        ("validation_error", "not_found", "invalid_state", "forbidden", "rate_limited")))
    message = fields.String(required=True)
    fields_ = fields.Dict(data_key="fields", metadata={"description": "field → messages (400 only)"})

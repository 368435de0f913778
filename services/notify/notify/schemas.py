"""notify's wire contract: what units, subscribers and citizens may send to configure how they are
told, and what they can read back (no message bodies with personal data; a citizen's address is
masked in the log)."""
from marshmallow import RAISE, Schema, fields, validate, validates

from notify.domain import CHANNELS, parse_quiet_hours
from wuji_common.events import CATALOGUE


class Strict(Schema):
    class Meta:
        unknown = RAISE


def _url(**kwargs):
    return fields.Url(schemes={"http", "https"}, require_tld=False, validate=validate.Length(max=500),
                      **kwargs)


# long enough that it cannot be guessed; notify makes one when none is given
SECRET = dict(validate=validate.Length(32, 128))


class UnitContactInput(Strict):
    """``notify.set_unit_contact``: None leaves a value as it is; an empty webhook_url removes the
    webhook."""
    unit_code = fields.String(required=True, validate=validate.Length(1, 64))
    email = fields.Email(load_default=None, allow_none=True, validate=validate.Length(max=254))
    phone = fields.String(load_default=None, allow_none=True,
                          validate=validate.Regexp(r"^(1[3-9]\d{9}|0\d{2,3}-?\d{7,8})$",
                                                   error="手机号或电话号码格式不正确"))
    webhook_url = _url(load_default=None, allow_none=True)
    webhook_secret = fields.String(load_default=None, allow_none=True, **SECRET)


class UnitContactSchema(Schema):
    unit_code = fields.String()
    unit_name = fields.String()
    kind = fields.String()
    email = fields.String(allow_none=True)
    phone_set = fields.Boolean()
    webhook_url = fields.String(allow_none=True)
    webhook_secret_set = fields.Boolean()
    updated_at = fields.DateTime()


EVENT_TYPES = validate.OneOf(sorted(CATALOGUE))


class SubscribeInput(Strict):
    """``notify.subscribe``: a new subscriber (no subscriber_id) or more event types for one."""
    url = _url(load_default=None, allow_none=True)
    event_types = fields.List(fields.String(validate=EVENT_TYPES), required=True,
                              validate=validate.Length(min=1))
    name = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 100))
    unit_code = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 64))
    secret = fields.String(load_default=None, allow_none=True, **SECRET)
    subscriber_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 36))


class SubscriberSchema(Schema):
    subscriber_id = fields.String(attribute="id")
    name = fields.String()
    url = fields.String()
    event_types = fields.List(fields.String())
    unit_code = fields.String(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class PreferenceInput(Strict):
    """``notify.set_preferences``: the channel a citizen wants first and quiet hours ("22:00-07:00",
    China time; "" for none). None leaves a value as it is."""
    case_no = fields.String(required=True, validate=validate.Length(1, 32))
    channel = fields.String(load_default=None, allow_none=True,
                            validate=validate.OneOf([c for c in CHANNELS if c != "inbox"] + [""]))
    quiet_hours = fields.String(load_default=None, allow_none=True)

    @validates("quiet_hours")
    def _quiet_hours(self, value, **_):
        try:
            parse_quiet_hours(value)
        except ValueError as exc:
            from marshmallow import ValidationError
            raise ValidationError("免打扰时段格式应为 22:00-07:00") from exc


class InboxMessageSchema(Schema):
    message_id = fields.String(attribute="id")
    event_type = fields.String()
    case_no = fields.String(allow_none=True)
    subject = fields.String()
    text = fields.String()
    urgent = fields.Boolean()
    created_at = fields.DateTime()
    read_at = fields.DateTime(allow_none=True)


class AttemptSchema(Schema):
    number = fields.Integer()
    outcome = fields.String()     # sending | sent | retry | provider_down | failed | skipped | interrupted
    error = fields.String(allow_none=True)
    started_at = fields.DateTime()
    finished_at = fields.DateTime(allow_none=True)


class DeliverySchema(Schema):
    """One line of the delivery log, with its attempts."""
    delivery_id = fields.String(attribute="id")
    event_id = fields.String()
    event_type = fields.String()
    case_no = fields.String(allow_none=True)
    recipient = fields.String()            # "citizen" | "<kind>:<code>" | "subscriber:<id>"
    recipient_kind = fields.String()
    channel = fields.String()
    provider = fields.String(allow_none=True)
    template = fields.String()
    address = fields.String(allow_none=True)   # masked for a citizen; phones always masked
    urgent = fields.Boolean()
    status = fields.String()               # pending | sent | failed | skipped
    reason = fields.String(allow_none=True)
    attempts = fields.Integer()
    failures = fields.Integer()
    last_error = fields.String(allow_none=True)
    fallback_of = fields.String(allow_none=True)
    occurred_at = fields.DateTime(allow_none=True)
    next_attempt_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    sent_at = fields.DateTime(allow_none=True)
    attempt_log = fields.List(fields.Nested(AttemptSchema))


class ProviderSchema(Schema):
    name = fields.String()
    failures = fields.Integer()
    down_since = fields.DateTime(allow_none=True)
    retry_at = fields.DateTime(allow_none=True)
    last_error = fields.String(allow_none=True)
    queued = fields.Integer()

"""notify's wire contract: what a unit may send to configure its contact points, and the delivery
log it can read (no message bodies, no personal data: the citizen's address is masked)."""
from marshmallow import RAISE, Schema, fields, validate


class Strict(Schema):
    class Meta:
        unknown = RAISE


class UnitContactInput(Strict):
    """``notify.set_unit_contact``: None leaves a value as it is; an empty webhook_url removes the
    webhook."""
    unit_code = fields.String(required=True, validate=validate.Length(1, 64))
    email = fields.Email(load_default=None, allow_none=True, validate=validate.Length(max=254))
    webhook_url = fields.Url(load_default=None, allow_none=True, schemes={"http", "https"},
                             require_tld=False, validate=validate.Length(max=500))
    # long enough that it cannot be guessed; notify makes one when a webhook is set without it
    webhook_secret = fields.String(load_default=None, allow_none=True, validate=validate.Length(32, 128))


class UnitContactSchema(Schema):
    unit_code = fields.String()
    unit_name = fields.String()
    email = fields.String(allow_none=True)
    webhook_url = fields.String(allow_none=True)
    webhook_secret_set = fields.Boolean()
    updated_at = fields.DateTime()


class DeliverySchema(Schema):
    """One line of the delivery log."""
    delivery_id = fields.String(attribute="id")
    event_id = fields.String()
    event_type = fields.String()
    case_no = fields.String(allow_none=True)
    recipient = fields.String()            # "citizen" | "unit:<unit_code>"
    recipient_kind = fields.String()
    channel = fields.String()
    template = fields.String()
    address = fields.String(allow_none=True)   # masked for a citizen
    status = fields.String()               # pending | sent | failed | skipped
    reason = fields.String(allow_none=True)
    attempts = fields.Integer()
    last_error = fields.String(allow_none=True)
    next_attempt_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    sent_at = fields.DateTime(allow_none=True)

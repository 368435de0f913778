"""Plain rules of intake: case numbers, tracking tokens, masking, and what the citizen is told."""
import hashlib
import hmac
import secrets

from wuji_common import privacy
from wuji_common.events import CHINA_TIME
from wuji_common.privacy import mask_id_number, mask_name, mask_phone  # noqa: F401  (staff views)


def case_no_for(received_at, sequence):
    """Human-readable and unique: YC + date + sequence, e.g. YC20261125000123."""
    return f"YC{received_at.astimezone(CHINA_TIME):%Y%m%d}{sequence:06d}"


def new_tracking_token():
    return secrets.token_urlsafe(18)


def token_hash(token):
    # only the hash is stored: a leaked database does not let anyone read other people's cases
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def citizen_ref(key, phone=None, id_number=None):
    """Keyed hash (HMAC-SHA256) of the ID number, else the phone: links one person's appeals for
    repeat detection without the plain value ever leaving intake."""
    value = id_number.upper() if id_number else phone
    if not value:
        return None
    return hmac.new(key.encode("utf-8"), value.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def redact_text(text, citizen=None, hide_identity=False, address=None):
    """The appeal's text as it may leave intake: the citizen's phone, ID number, name or precise
    address written into the message itself are masked before the text goes into an event; with
    "hide my identity from the unit" the name is removed altogether (a masked family name can be
    enough to tell)."""
    name = citizen.get("name") if citizen else None
    text = privacy.redact_text(text, names=[name] if name and not hide_identity else ())
    if name and hide_identity and text:
        text = text.replace(name, "[姓名已隐藏]")
    if address and text and len(address) >= 4:
        text = text.replace(address, "[详细地址已隐藏]")
    return text


# roles that work a unit's (or a force's) orders: they see the matter, and the person only when
# the citizen did not ask to stay hidden from the unit
UNIT_ROLES = frozenset({"grid_worker", "unit_clerk", "unit_head", "force"})
# who may see a contact unmasked (with a reason, audited): supervisors and the district leader on
# any case; the head of the unit holding the order on that case, unless the citizen hid their
# identity from the unit
REVEAL_ANY_ROLES = frozenset({"supervisor", "district_leader"})
REVEAL_OWN_ORDER_ROLES = frozenset({"unit_head"})


def identity_hidden_from(caller_role, appeal_hides_identity):
    return bool(appeal_hides_identity) and caller_role in UNIT_ROLES


def may_reveal(caller_role, caller_unit, appeal_unit, appeal_hides_identity):
    if caller_role in REVEAL_ANY_ROLES:
        return True
    return (caller_role in REVEAL_OWN_ORDER_ROLES and caller_unit is not None
            and caller_unit == appeal_unit and not appeal_hides_identity)


def masked_citizen(contact):
    if contact is None:
        return None
    return {"name": mask_name(contact.name), "phone": mask_phone(contact.phone),
            "id_number": mask_id_number(contact.id_number)}


def retention_cutoff(now, days):
    """Closed cases last changed before this lose their personal data."""
    from datetime import timedelta
    return now - timedelta(days=days)


STATUS_TEXT = {
    "received": "已受理",
    "dispatched": "已派单",
    "accepted": "承办单位已签收，正在办理",
    "returned": "重新分派中",
    "resolved": "已办结，请您评价",
    "rated": "已评价，正在归档",
    "reopened": "根据您的评价重新办理",
    "closed": "已办结归档",
}


def timeline_text(event_type, data):
    """One line for the citizen, in Chinese, naming only the handling unit."""
    unit = data.get("unit_name")
    return {
        "appeal_received": "您的诉求已登记受理",
        "order_dispatched": f"已派至{unit}办理" if unit else "已派单办理",
        "order_accepted": "承办单位已签收",
        "order_returned": "承办单位申请退单，正在重新分派",
        "order_progressed": "承办单位更新了办理进展",
        "order_resolved": "承办单位已办结，欢迎您对办理结果进行评价",
        "appeal_rated": "感谢您的评价",
        "order_reopened": "您对办理结果不满意，已退回承办单位重新办理",
        "order_closed": "诉求已办结归档",
    }[event_type]


# order event → the appeal status the citizen sees
STATUS_AFTER = {
    "order_dispatched": "dispatched",
    "order_accepted": "accepted",
    "order_returned": "returned",
    "order_progressed": None,  # status unchanged
    "order_resolved": "resolved",
    "order_reopened": "reopened",
    "order_closed": "closed",
}

# the order in which a case passes through the statuses: of two order events raised in the same
# millisecond (events carry milliseconds; a return and the new dispatch share one transaction),
# the one later in this order is the later one
LIFECYCLE = ("received", "returned", "dispatched", "accepted", "resolved", "rated", "reopened", "closed")


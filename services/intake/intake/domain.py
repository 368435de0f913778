"""Plain rules of intake: case numbers, tracking tokens, masking, and what the citizen is told."""
import hashlib
import hmac
import re
import secrets


def case_no_for(received_at, sequence):
    """Human-readable and unique: YC + date + sequence, e.g. YC20261125000123."""
    return f"YC{received_at:%Y%m%d}{sequence:06d}"


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


PHONE_IN_TEXT = re.compile(r"(?<!\d)(1[3-9]\d{9}|0\d{2,3}-?\d{7,8})(?!\d)")
ID_IN_TEXT = re.compile(r"(?<!\d)\d{17}[\dXx](?!\d)")


def redact_text(text, citizen=None):
    """The appeal's text as it may leave intake: citizens often write their phone, ID number or name
    into the message itself; those are masked before the text goes into an event."""
    text = ID_IN_TEXT.sub("[身份证号已隐藏]", text)
    text = PHONE_IN_TEXT.sub("[电话已隐藏]", text)
    if citizen and citizen.get("name") and len(citizen["name"]) >= 2:
        text = text.replace(citizen["name"], mask_name(citizen["name"]))
    return text


def mask_phone(phone):
    if not phone:
        return phone
    return phone[:3] + "****" + phone[-4:] if len(phone) >= 8 else "****"


def mask_name(name):
    if not name:
        return name
    return name[0] + "*" * max(1, len(name) - 1)


def mask_id_number(id_number):
    if not id_number:
        return id_number
    return id_number[:4] + "*" * 10 + id_number[-4:]


def masked_citizen(contact):
    if contact is None:
        return None
    return {"name": mask_name(contact.name), "phone": mask_phone(contact.phone),
            "id_number": mask_id_number(contact.id_number)}


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

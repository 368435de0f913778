"""Personal data (个人信息) rules shared by every service: how a phone, a name or an ID number is
masked when shown to staff, and how free text is redacted before it leaves the service that holds it."""
import re

PHONE_IN_TEXT = re.compile(r"(?<!\d)(1[3-9]\d{9}|0\d{2,3}-?\d{7,8})(?!\d)")
ID_IN_TEXT = re.compile(r"(?<!\d)\d{17}[\dXx](?!\d)")


def mask_phone(phone):
    """138****5678"""
    if not phone:
        return phone
    return phone[:3] + "****" + phone[-4:] if len(phone) >= 8 else "****"


def mask_name(name):
    """张*, 欧阳** — the family name stays, so staff can address the person politely."""
    if not name:
        return name
    return name[0] + "*" * max(1, len(name) - 1)


def mask_id_number(id_number):
    if not id_number:
        return id_number
    return id_number[:4] + "*" * 10 + id_number[-4:]


def redact_text(text, names=()):
    """Free text as it may leave its service: people write phones, ID numbers and names into
    messages, resolutions and outcomes; those are masked before the text goes into an event."""
    if not text:
        return text
    text = ID_IN_TEXT.sub("[身份证号已隐藏]", text)
    text = PHONE_IN_TEXT.sub("[电话已隐藏]", text)
    for name in names:
        if name and len(name) >= 2:
            text = text.replace(name, mask_name(name))
    return text


# a cell starting so is a formula to Excel, LibreOffice or WPS (CSV/formula injection)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value):
    """Text written into a CSV or XLSX export: a leading quote keeps a would-be formula text."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value

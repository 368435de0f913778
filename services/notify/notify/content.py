"""The editable content that ships in notify/data: the rules (rules.yml), the Chinese templates
(templates/<audience>/<event_type>.subject.txt, .txt, .html, .sms.txt, .wechat.yml) and the staff
directory's demo entries (unit_contacts.csv from the shared reference units, force_contacts.csv)."""
import csv
import io
from functools import lru_cache
from pathlib import Path

import yaml

from notify.domain import (
    CHANNEL_PARTS, KIND_OF_UNIT_TYPE, TemplateSet, audiences_of, demo_unit_email, parse_rules,
    template_fields,
)
from wuji_common import reference

DATA = Path(__file__).parent / "data"
TEMPLATES = DATA / "templates"
UNIT_CONTACT_COLUMNS = ("unit_code", "unit_name", "kind", "email", "phone", "webhook_url")
# values a template may use besides its rule's fields: known at send time (town_name from the
# event's town_code, recipient_name from the staff directory)
AT_SEND_TIME = {"citizen": {"salutation"}}
ALWAYS = {"case_no", "portal_url", "recipient_name", "town_name"}


@lru_cache(maxsize=None)
def rules():
    with open(DATA / "rules.yml", encoding="utf-8") as f:
        return parse_rules(yaml.safe_load(f))


def _read(path):
    return path.read_text(encoding="utf-8") if path.exists() else None


@lru_cache(maxsize=None)
def templates(name):
    """The parts of template ``<audience>/<event_type>`` that exist (a part a channel needs and that
    is missing is found by :func:`check_templates` at start)."""
    base = TEMPLATES / name
    wechat = _read(base.with_name(base.name + ".wechat.yml"))
    return TemplateSet(
        subject=_read(base.with_name(base.name + ".subject.txt")),
        text=_read(base.with_name(base.name + ".txt")),
        html=_read(base.with_name(base.name + ".html")),
        sms=_read(base.with_name(base.name + ".sms.txt")),
        wechat={str(k): str(v) for k, v in yaml.safe_load(wechat).items()} if wechat else None)


def check_templates(rules_by_event, load=templates):
    """Every template a rule can need exists with the parts of each of its channels, and uses only
    the fields that rule keeps (plus what is known at send time). Raises ValueError naming the first
    problem; run when notify starts."""
    attribute = {"subject.txt": "subject", "txt": "text", "html": "html", "sms.txt": "sms",
                 "wechat.yml": "wechat"}
    for event_type, rules_of_event in rules_by_event.items():
        for rule in rules_of_event:
            for audience in audiences_of(rule.recipient):
                name = f"{audience}/{event_type}"
                found = load(name)
                for channel in rule.channels:
                    for part in CHANNEL_PARTS[channel]:
                        if getattr(found, attribute[part]) is None:
                            raise ValueError(f"template {name}.{part} is missing ({channel})")
                allowed = set(rule.fields) | ALWAYS | AT_SEND_TIME.get(audience, set())
                extra = template_fields(found) - allowed
                if extra:
                    raise ValueError(f"template {name} uses {sorted(extra)}, which its rule does not keep")


def unit_contacts():
    """Rows of the shipped unit_contacts.csv and force_contacts.csv (a force's row has kind force)."""
    rows = []
    for name in ("unit_contacts.csv", "force_contacts.csv"):
        with open(DATA / name, encoding="utf-8", newline="") as f:
            rows += [dict(row) for row in csv.DictReader(f)]
    return rows


def unit_contacts_csv():
    """unit_contacts.csv as generated from the shared reference units: a demo address per unit, its
    kind (unit, grid_worker, supervisor), no phone and no webhook (a unit sets its endpoint with
    ``notify.set_unit_contact``)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=UNIT_CONTACT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for unit in reference.units():
        writer.writerow({"unit_code": unit["code"], "unit_name": unit["name"],
                         "kind": KIND_OF_UNIT_TYPE.get(unit["type"], "unit"),
                         "email": demo_unit_email(unit["code"]), "phone": "", "webhook_url": ""})
    return out.getvalue()

"""The editable content that ships in notify/data: the rules (rules.yml), the Chinese templates
(templates/<name>.subject.txt, .txt, .html) and the units' demo contact points (unit_contacts.csv)."""
import csv
import io
from functools import lru_cache
from pathlib import Path

import yaml

from notify.domain import TemplateSet, demo_unit_email, parse_rules
from wuji_common import reference

DATA = Path(__file__).parent / "data"
UNIT_CONTACT_COLUMNS = ("unit_code", "unit_name", "email", "webhook_url")


@lru_cache(maxsize=None)
def rules():
    with open(DATA / "rules.yml", encoding="utf-8") as f:
        return parse_rules(yaml.safe_load(f))


@lru_cache(maxsize=None)
def templates(name):
    folder = DATA / "templates"

    def read(suffix):
        return (folder / f"{name}.{suffix}").read_text(encoding="utf-8")

    return TemplateSet(subject=read("subject.txt"), text=read("txt"), html=read("html"))


def unit_contacts():
    """Rows of the shipped unit_contacts.csv."""
    with open(DATA / "unit_contacts.csv", encoding="utf-8", newline="") as f:
        return [dict(row) for row in csv.DictReader(f)]


def unit_contacts_csv():
    """unit_contacts.csv as generated from the shared reference units: a demo address per unit, no
    webhook (a unit sets its endpoint with ``notify.set_unit_contact``)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=UNIT_CONTACT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for unit in reference.units():
        writer.writerow({"unit_code": unit["code"], "unit_name": unit["name"],
                         "email": demo_unit_email(unit["code"]), "webhook_url": ""})
    return out.getvalue()

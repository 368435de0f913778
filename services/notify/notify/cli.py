"""``notify db upgrade``, ``notify load-reference`` and ``notify unit-contacts-csv``."""
import sys
from pathlib import Path

from notify import content, handlers
from notify.models import metadata
from wuji_common.cli import service_cli


def load_reference(uow):
    return handlers.load_unit_contacts(uow, content.unit_contacts())


def print_unit_contacts_csv(_args):
    sys.stdout.write(content.unit_contacts_csv())
    return 0


def _unit_contacts_csv(sub):
    p = sub.add_parser("unit-contacts-csv",
                       help="print unit_contacts.csv generated from the shared reference units "
                            "(demo addresses; redirect into notify/data/unit_contacts.csv)")
    p.set_defaults(func=print_unit_contacts_csv)


main = service_cli("notify", Path(__file__).parent / "migrations", metadata, load_reference,
                   extra=_unit_contacts_csv)

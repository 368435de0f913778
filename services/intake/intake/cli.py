"""``intake db upgrade``, ``intake load-reference``, and the personal-data commands:

    intake generate-key                       print a new contact-encryption key
    intake rotate-keys [--db-url URL]         re-encrypt every contact under the newest key
                                              (the first of WUJI_CONTACT_KEYS); prints counts (JSON)
    intake retention [--days N] [--dry-run]   erase the personal data of cases closed more than N
                                              days ago (default INTAKE_RETENTION_DAYS, else 730);
                                              prints a JSON report
"""
import json
import os
from pathlib import Path

from intake import encryption, handlers
from intake.models import metadata
from wuji_common import reference
from wuji_common.cli import default_db_url, service_cli, unit_of_work_for

DEFAULT_RETENTION_DAYS = 730


def load_reference(uow):
    return handlers.load_divisions(uow, list(reference.divisions()))


def _uow(args):
    return unit_of_work_for("intake", metadata, args.db_url or default_db_url("intake"))


def generate_key(args):
    print(encryption.generate_key())
    return 0


def rotate_keys(args):
    print(json.dumps(handlers.rotate_keys(_uow(args)), ensure_ascii=False))
    return 0


def retention(args):
    days = args.days if args.days is not None else \
        int(os.environ.get("INTAKE_RETENTION_DAYS") or DEFAULT_RETENTION_DAYS)
    report = handlers.apply_retention(_uow(args), days, dry_run=args.dry_run)
    print(json.dumps(report, ensure_ascii=False))
    return 0


def personal_data_commands(sub):
    key = sub.add_parser("generate-key", help="print a new contact-encryption key (WUJI_CONTACT_KEYS)")
    key.set_defaults(func=generate_key)
    rotate = sub.add_parser("rotate-keys", help="re-encrypt every contact under the newest key")
    rotate.add_argument("--db-url", default=None)
    rotate.set_defaults(func=rotate_keys)
    keep = sub.add_parser("retention", help="erase personal data of cases closed long enough ago")
    keep.add_argument("--db-url", default=None)
    keep.add_argument("--days", type=int, default=None,
                      help=f"retention period (default INTAKE_RETENTION_DAYS or {DEFAULT_RETENTION_DAYS})")
    keep.add_argument("--dry-run", action="store_true", help="report what would be erased, change nothing")
    keep.set_defaults(func=retention)


main = service_cli("intake", Path(__file__).parent / "migrations", metadata, load_reference,
                   extra=personal_data_commands)

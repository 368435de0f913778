"""``triage db upgrade``, ``triage load-reference``, ``triage export-decisions``, and the classifier's
``train`` / ``evaluate`` (from triage.cli_model, when it is installed)."""
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path

from triage import handlers
from triage.dependencies import load_taxonomy
from triage.models import metadata
from wuji_common import reference
from wuji_common.cli import default_db_url, service_cli, unit_of_work_for


def load_reference(uow):
    return handlers.load_reference(uow, list(reference.divisions()), list(reference.units()))


def export_decisions(args):
    """Dispatchers' decisions as training data: CSV id,subject,body,label (``triage train`` reads it)."""
    uow = unit_of_work_for("triage", metadata, args.db_url or default_db_url("triage"))
    count = handlers.export_decisions(uow, load_taxonomy(args.taxonomy), args.out)
    print(f"triage: wrote {count} dispatcher decisions to {args.out}")
    return 0


def add_commands(sub):
    """Register triage's own subcommands and the classifier's; each sets ``args.func``."""
    export = sub.add_parser("export-decisions",
                            help="write dispatchers' routing decisions as training data (CSV)")
    export.add_argument("--out", required=True, help="CSV file to write (id,subject,body,label)")
    export.add_argument("--db-url", default=None)
    export.add_argument("--taxonomy", default=None, help="taxonomy file (default: the packaged one)")
    export.set_defaults(func=export_decisions)
    if find_spec("triage.cli_model") is not None:
        import_module("triage.cli_model").add_subcommands(sub)


main = service_cli("triage", Path(__file__).parent / "migrations", metadata, load_reference,
                   extra=add_commands)

"""``metrics db upgrade`` and ``metrics rebuild`` (replay the event log into fresh facts)."""
import json
from pathlib import Path

from metrics import handlers
from metrics.models import metadata
from wuji_common.cli import default_db_url, service_cli, unit_of_work_for


def _extra(sub):
    rebuild = sub.add_parser("rebuild", help="drop the appeal and order facts and fold them again "
                                             "from the event log (safe while the service runs)")
    rebuild.add_argument("--db-url", default=None)
    rebuild.set_defaults(func=_rebuild)


def _rebuild(args):
    url = args.db_url or default_db_url("metrics")
    print(json.dumps(handlers.rebuild(unit_of_work_for("metrics", metadata, url))))
    return 0


main = service_cli("metrics", Path(__file__).parent / "migrations", metadata, extra=_extra)

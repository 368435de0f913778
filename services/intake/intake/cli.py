"""``intake db upgrade`` and ``intake load-reference``."""
from pathlib import Path

from intake import handlers
from intake.models import metadata
from wuji_common import reference
from wuji_common.cli import service_cli


def load_reference(uow):
    return handlers.load_divisions(uow, list(reference.divisions()))


main = service_cli("intake", Path(__file__).parent / "migrations", metadata, load_reference)

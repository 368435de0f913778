"""``enforcement db upgrade`` and ``enforcement load-reference``."""
from pathlib import Path

from enforcement import handlers, reference
from enforcement.models import metadata
from wuji_common.cli import service_cli


def load_reference(uow):
    return handlers.load_reference(uow, *reference.shipped())


main = service_cli("enforcement", Path(__file__).parent / "migrations", metadata, load_reference)

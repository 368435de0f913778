"""``metrics db upgrade``."""
from pathlib import Path

from metrics.models import metadata
from wuji_common.cli import service_cli

main = service_cli("metrics", Path(__file__).parent / "migrations", metadata)

"""intake's providers: its database (unit of work + outbox relay) and the citizen hash key."""
from nameko.extensions import DependencyProvider

from intake.models import metadata
from wuji_common.dependencies import Database, MetricsExporter  # noqa: F401


def IntakeDatabase():
    return Database(metadata)


class CitizenKey(DependencyProvider):
    """The secret of the keyed hash that links one citizen's appeals (repeat petitions)."""

    def get_dependency(self, worker_ctx):
        return self.container.config["CITIZEN_KEY"]

"""metrics' providers: its database (unit of work), the domain series it serves, and its settings."""
from nameko.extensions import DependencyProvider
from prometheus_client import REGISTRY

from metrics.exposition import DomainCollector
from metrics.handlers import LogCounts
from metrics.models import metadata
from wuji_common.dependencies import Database, MetricsExporter  # noqa: F401

# one per process: the default registry is what MetricsExporter serves, and a collector can only be
# registered once (two metrics containers in one process read the same database anyway)
COLLECTOR = DomainCollector()
REGISTRY.register(COLLECTOR)


def MetricsDatabase():
    return Database(metadata)


class DomainMetrics(DependencyProvider):
    """Gives the worker ``publish(snapshot)``, which replaces the domain series on ``/metrics``."""

    def get_dependency(self, worker_ctx):
        return COLLECTOR.publish

    def stop(self):
        # a stopped service must not keep serving numbers it no longer refreshes
        COLLECTOR.publish(None)


class LogTally(DependencyProvider):
    """The event log's counts kept between snapshots (handlers.LogCounts), one per container."""

    def setup(self):
        self.counts = LogCounts()

    def get_dependency(self, worker_ctx):
        return self.counts


class KpiTimeZone(DependencyProvider):
    """The zone of the calendar days in ``metrics.kpis`` (config ``KPI_TIMEZONE``)."""

    def setup(self):
        from zoneinfo import ZoneInfo
        self.tz = self.container.config.get("KPI_TIMEZONE", "Asia/Shanghai")
        ZoneInfo(self.tz)  # an unknown zone fails at start, not at the first call

    def get_dependency(self, worker_ctx):
        return self.tz

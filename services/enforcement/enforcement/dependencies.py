"""enforcement's extensions: its database (unit of work + outbox relay), the metrics exporter, and a
timer whose interval comes from the config."""
from nameko import timer as nameko_timer

from enforcement.models import metadata
from wuji_common.dependencies import Database, MetricsExporter  # noqa: F401


def EnforcementDatabase():
    return Database(metadata)


class Timer(nameko_timer.Timer):
    """nameko's timer, with the interval read from ``config[config_key]`` at setup (the decorator
    runs at import, before any config exists), so that deployments and tests can tune it. Same class
    name as nameko's, so that metrics label its calls kind="timer"."""

    def __init__(self, config_key, default_interval, **kwargs):
        self.config_key = config_key
        super().__init__(interval=default_interval, **kwargs)

    def setup(self):
        self.interval = float(self.container.config.get(self.config_key, self.interval))


timer_from_config = Timer.decorator

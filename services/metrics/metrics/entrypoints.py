"""A timer whose interval comes from the service's config (nameko's takes it at decoration time)."""
from nameko import timer as nameko_timer


class Timer(nameko_timer.Timer):
    """Fires every ``config[interval_key]`` seconds (else ``default``), once at start if ``eager``."""

    def __init__(self, interval_key, default, eager=False, **kwargs):
        self.interval_key = interval_key
        self.default = default
        super().__init__(interval=default, eager=eager, **kwargs)

    def setup(self):
        super().setup()
        self.interval = float(self.container.config.get(self.interval_key, self.default))


# same class name as nameko's, so that MetricsExporter labels its calls kind="timer"
config_timer = Timer.decorator

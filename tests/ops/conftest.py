"""Fixtures of the operations tests: a broker vhost of the test's own, and a way to run the platform
as real processes — once, or as several instances of every service sharing one broker and one set
of databases (each instance its own API and metrics ports and its own logs)."""

import pytest

from wuji_common.local_platform import SERVICES, Platform
from wuji_common.testing import own_vhost

# quick timers, so that a test sees the series, the sweeps and the deadlines within seconds; the
# keyword router (no model to load: ten processes start on two cores)
FAST = {
    "METRICS_REFRESH_SECONDS": "0.5",
    "ENFORCEMENT_REPORT_IN_WATCH_SECONDS": "0.5",
    "NOTIFY_SWEEP_SECONDS": "1",
    "TRIAGE_CLASSIFIER": "off",
}


@pytest.fixture
def vhost_uri(amqp_vhost):
    with own_vhost(f"{amqp_vhost}-ops") as uri:
        yield uri


@pytest.fixture
def run_platform(vhost_uri, tmp_path, mailbox):
    """``run_platform(db_urls, instances=1, max_workers=None, copied=False)``: prepares the databases
    (unless they are ``copied`` from prepared ones) and queues once, then starts
    ``instances`` copies of all five services (one Platform each: its own API and metrics ports,
    logs under log/<n>/); returns the list of Platforms. Everything is stopped at the end."""
    started = []

    def run(db_urls, instances=1, max_workers=None, copied=False):
        env = {**FAST, **mailbox.env()}
        if max_workers:
            env.update({f"{service.upper()}_MAX_WORKERS": str(max_workers) for service in SERVICES})
        platforms = [Platform(vhost_uri, db_urls, tmp_path / "log" / str(n), env=env)
                     for n in range(1, instances + 1)]
        platforms[0].prepare(databases=not copied)
        for platform in platforms:
            platform.mailbox = mailbox
            platform.start(wait=False)
            started.append(platform)
        for platform in platforms:
            platform.wait_ready(*SERVICES, timeout=120, rpc_consumers=instances)
        return platforms

    yield run
    for platform in started:
        platform.stop()

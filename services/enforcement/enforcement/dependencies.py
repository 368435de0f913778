"""enforcement's extensions: its database (unit of work + outbox relay), the metrics exporter, and
the planner that runs the scheduler in a worker process."""
import json
import logging
import sys
import time

import eventlet
from eventlet.green import subprocess as green_subprocess
from nameko.extensions import DependencyProvider

from enforcement import scheduling
from enforcement.models import metadata
from wuji_common.dependencies import Database, MetricsExporter  # noqa: F401

log = logging.getLogger(__name__)


def EnforcementDatabase():
    return Database(metadata)


class Planner(DependencyProvider):
    """Solves scheduling problems in a worker process and waits for it cooperatively, so the
    container keeps its heartbeats and serves other calls meanwhile.

    Config: ``SCHEDULE_TIME_LIMIT_SECONDS`` (CP-SAT's limit, default 10), ``SCHEDULE_SOLVER_WORKERS``
    (CP-SAT's threads, default 2). The process is killed after the limit plus a margin; if it fails
    or is killed, the greedy plan is computed here instead (a few milliseconds of CPU).
    The service gets ``solve(problem) -> Plan``; ``solving`` tells which towns this instance is
    planning now."""

    MARGIN_SECONDS = 20

    def setup(self):
        config = self.container.config
        self.time_limit = float(config.get("SCHEDULE_TIME_LIMIT_SECONDS", 10))
        self.workers = int(config.get("SCHEDULE_SOLVER_WORKERS", 2))
        self.solving = {}

    def get_dependency(self, worker_ctx):
        return self

    def solve(self, problem, town_code=None):
        request = json.dumps({"problem": problem.to_dict(), "time_limit": self.time_limit,
                              "workers": self.workers}).encode("utf-8")
        key = town_code or id(problem)
        self.solving[key] = time.time()
        try:
            return scheduling.Plan.from_dict(json.loads(self._run(request)))
        except Exception:
            log.warning("scheduling worker failed; falling back to the greedy plan", exc_info=True)
            return scheduling.solve_greedy(problem, status="fallback")
        finally:
            self.solving.pop(key, None)

    def _run(self, request):
        process = green_subprocess.Popen(
            [sys.executable, "-m", "enforcement.solver_process"],
            stdin=green_subprocess.PIPE, stdout=green_subprocess.PIPE, stderr=green_subprocess.PIPE)
        try:
            with eventlet.Timeout(self.time_limit + self.MARGIN_SECONDS):
                out, err = process.communicate(request)
        except eventlet.Timeout:
            process.kill()
            process.wait()
            raise RuntimeError("scheduling worker did not finish in time") from None
        if process.returncode != 0:
            raise RuntimeError(f"scheduling worker exited {process.returncode}: {err[-500:]!r}")
        return out

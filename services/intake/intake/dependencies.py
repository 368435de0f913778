"""intake's providers: its database (unit of work + outbox relay), the writer that registers
submitted appeals in group commits, the citizen hash key, and the Open311 settings with the service
catalogue."""
import logging
import time
from types import SimpleNamespace

from nameko.extensions import DependencyProvider

from intake.models import metadata
from wuji_common.dependencies import BoundedRpcProxy, Database, GroupCommit, MetricsExporter  # noqa: F401

log = logging.getLogger(__name__)


def IntakeDatabase():
    return Database(metadata)


class AppealWriter(GroupCommit):
    """Registers submitted appeals (``handlers.Submission``) in group commits: the submissions that
    arrive while one transaction is written go together into the next (``handlers.submit_appeals``).
    Each caller is answered when its appeal is stored; a refused one (unknown town) fails alone.
    Config as :class:`wuji_common.dependencies.GroupCommit`."""

    def setup(self):
        super().setup()
        self.database = next(d for d in self.container.dependencies if isinstance(d, Database))

    def write_batch(self, submissions):
        from intake import handlers
        unit_of_work = self.database.get_dependency(None)
        return handlers.submit_appeals(unit_of_work(), submissions, self.container.config["CITIZEN_KEY"])


class CitizenKey(DependencyProvider):
    """The secret of the keyed hash that links one citizen's appeals (repeat petitions); also
    installs the contact-encryption keys (config CONTACT_KEYS, else $WUJI_CONTACT_KEYS)."""

    def setup(self):
        from intake import encryption
        configured = self.container.config.get("CONTACT_KEYS")
        if configured:
            encryption.use_keys(encryption.ContactKeys.from_text(configured))

    def get_dependency(self, worker_ctx):
        return self.container.config["CITIZEN_KEY"]


class RateLimits(DependencyProvider):
    """Rate limits of the public endpoints (intake.ratelimit), shared by the container's workers.

    Config: ``RATE_LIMIT_PER_IP``, ``RATE_LIMIT_PER_PHONE`` (requests a minute; config.yml gives 30
    and 5; absent or 0: no limit), ``RATE_LIMIT_STORAGE`` (default memory://; a redis:// URI makes
    replicas count together)."""

    def setup(self):
        from intake.ratelimit import PublicRateLimits
        config = self.container.config
        self.limits = PublicRateLimits(config.get("RATE_LIMIT_PER_IP"), config.get("RATE_LIMIT_PER_PHONE"),
                                       config.get("RATE_LIMIT_STORAGE") or "memory://")

    def get_dependency(self, worker_ctx):
        return self.limits


DEFAULT_JURISDICTION = "yicheng.zaozhuang.gov.cn"
DEFAULT_CONTACT = "峄城区12345政务服务便民热线（演示）"
DEFAULT_KEY_SERVICE = "API key: 向峄城区社会治理服务中心申请（演示）；见 docs/integrators.md"


class Open311Settings(DependencyProvider):
    """Open311 GeoReport v2 settings and the service catalogue it offers.

    Config: ``OPEN311_JURISDICTION_ID`` (default yicheng.zaozhuang.gov.cn), ``OPEN311_API_KEYS``
    (comma separated ``client:key``; none: POST requests is refused), ``OPEN311_BASE_URL`` (the public
    URL of the endpoint, for discovery), ``OPEN311_CONTACT``, ``OPEN311_KEY_SERVICE``,
    ``OPEN311_CATALOGUE_TTL_SECONDS`` (default 300). The catalogue is triage's (RPC
    ``services_catalogue``), kept for the TTL; when triage does not answer, the last copy serves."""

    def setup(self):
        from intake.open311_http import parse_api_keys
        config = self.container.config
        self.settings = SimpleNamespace(
            jurisdiction_id=str(config.get("OPEN311_JURISDICTION_ID") or DEFAULT_JURISDICTION),
            api_keys=parse_api_keys(config.get("OPEN311_API_KEYS")),
            base_url=config.get("OPEN311_BASE_URL") or None,
            contact=str(config.get("OPEN311_CONTACT") or DEFAULT_CONTACT),
            key_service=str(config.get("OPEN311_KEY_SERVICE") or DEFAULT_KEY_SERVICE),
            catalogue=self._catalogue)
        self.ttl = float(config.get("OPEN311_CATALOGUE_TTL_SECONDS", 300))
        self._cached, self._fetched_at = None, 0.0

    def _catalogue(self, fetch):
        if self._cached is None or time.monotonic() - self._fetched_at > self.ttl:
            try:
                self._cached, self._fetched_at = fetch(), time.monotonic()
            except Exception as exc:  # triage away or too slow: the last copy, if there is one
                log.warning("service catalogue not refreshed (%s)", type(exc).__name__)
                if self._cached is None:
                    from intake.open311 import Open311Error
                    raise Open311Error(503, "service catalogue temporarily unavailable; try again later") \
                        from None
        return self._cached

    def get_dependency(self, worker_ctx):
        return self.settings

"""notify's providers: its database (unit of work + outbox relay), the channels, the delivery
policy."""
from nameko.extensions import DependencyProvider

from notify import content
from notify.channels import EmailChannel, WebhookChannel
from notify.handlers import Policy
from notify.models import metadata
from wuji_common.dependencies import BoundedRpcProxy, Database, MetricsExporter  # noqa: F401


def NotifyDatabase():
    return Database(metadata)


def _flag(value):
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


class Channels(DependencyProvider):
    """``{"email": EmailChannel, "webhook": WebhookChannel}`` configured from SMTP_*, MAIL_FROM*
    and WEBHOOK_TIMEOUT."""

    def setup(self):
        c = self.container.config
        self.channels = {
            "email": EmailChannel(
                host=c.get("SMTP_HOST", "127.0.0.1"), port=c.get("SMTP_PORT", 1025),
                mail_from=c.get("MAIL_FROM", "notify@demo.wuji.local"),
                from_name=c.get("MAIL_FROM_NAME") or "", user=c.get("SMTP_USER"),
                password=c.get("SMTP_PASSWORD"), starttls=_flag(c.get("SMTP_STARTTLS", False)),
                timeout=c.get("SMTP_TIMEOUT", 10)),
            "webhook": WebhookChannel(timeout=c.get("WEBHOOK_TIMEOUT", 5)),
        }

    def get_dependency(self, worker_ctx):
        return self.channels


class DeliveryPolicy(DependencyProvider):
    """Retry delays (DELIVERY_RETRY_DELAYS), claim lease (DELIVERY_CLAIM_SECONDS), PORTAL_URL."""

    def setup(self):
        c = self.container.config
        defaults = Policy()
        self.policy = Policy(
            retry_delays=tuple(float(d) for d in c.get("DELIVERY_RETRY_DELAYS", defaults.retry_delays)),
            claim_seconds=float(c.get("DELIVERY_CLAIM_SECONDS", defaults.claim_seconds)),
            portal_url=c.get("PORTAL_URL", "http://127.0.0.1:8000"))

    def get_dependency(self, worker_ctx):
        return self.policy


class NotificationRules(DependencyProvider):
    """notify/data/rules.yml, read and checked at start: a mistake in it stops the service from
    starting instead of failing on the first event."""

    def setup(self):
        self.rules = content.rules()

    def get_dependency(self, worker_ctx):
        return self.rules




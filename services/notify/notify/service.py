"""notify service: entrypoints only. Each turns a message into a call of a plain handler.

Events in (at-least-once; a duplicate event id is dropped, so each recipient is told once):
    intake.appeal_received   → the citizen's receipt (受理回执)
    triage.order_dispatched  → the unit's dispatch notice (派单通知)
    triage.order_reopened    → the unit's rework notice (返工通知)
    triage.order_resolved    → the citizen's result and invitation to rate (评价邀请)
Who is told what is notify/data/rules.yml. Each delivery is reserved before it is sent and sent at
least once toward the provider, carrying its delivery id for receivers to drop repeats.
RPC: set_unit_contact, unit_contact, deliveries(case_no), failed(), replay(delivery_id).
"""
import logging

from nameko.rpc import rpc
from prometheus_client import Counter

from notify import handlers
from notify.dependencies import (
    BoundedRpcProxy, Channels, DeliveryPolicy, MetricsExporter, NotificationRules, NotifyDatabase,
)
from wuji_common.entrypoints import config_timer, event_handler
from wuji_common.errors import EXPECTED

log = logging.getLogger(__name__)

DELIVERIES = Counter("wuji_notify_deliveries_total",
                     "Delivery attempts by channel and outcome (pending: a retry is scheduled)",
                     ["channel", "status"])


class NotifyService:
    name = "notify"

    uow = NotifyDatabase()
    intake = BoundedRpcProxy("intake")  # bound: config RPC_TIMEOUT_SECONDS
    channels = Channels()
    policy = DeliveryPolicy()
    rules = NotificationRules()
    metrics = MetricsExporter()

    def _outside(self):
        return handlers.Outside(citizen_contact=self.intake.contact_for_notification,
                                channels=self.channels)

    def _count(self, done):
        for channel, status in done:
            if status:  # None: another sender's claim superseded this one
                DELIVERIES.labels(channel, status).inc()

    def _notify(self, method_name, envelope):
        ids = handlers.record_event(self.uow(), f"notify.{method_name}", envelope, self.rules)
        for delivery_id in ids:
            self._deliver_now(delivery_id)

    def _deliver_now(self, delivery_id):
        try:
            done = handlers.deliver(self.uow(), delivery_id, self._outside(), self.policy)
        except Exception:
            # it is reserved: the sweep sends it later; the event itself must not be retried for it
            log.warning("delivery %s left for the sweep", delivery_id, exc_info=True)
            return
        self._count([done] if done else [])

    # --- events ----------------------------------------------------------------------------------
    @event_handler("intake", "appeal_received")
    def on_appeal_received(self, envelope):
        self._notify("on_appeal_received", envelope)

    @event_handler("triage", "order_dispatched")
    def on_order_dispatched(self, envelope):
        self._notify("on_order_dispatched", envelope)

    @event_handler("triage", "order_reopened")
    def on_order_reopened(self, envelope):
        self._notify("on_order_reopened", envelope)

    @event_handler("triage", "order_resolved")
    def on_order_resolved(self, envelope):
        self._notify("on_order_resolved", envelope)

    # --- retries and crash recovery ------------------------------------------------------------
    @config_timer("DELIVERY_SWEEP_SECONDS", 5, eager=True)
    def send_due(self):
        """Due retries and deliveries left pending by a crash (also once at start)."""
        self._count(handlers.send_due(self.uow(), self._outside(), self.policy))

    # --- RPC -----------------------------------------------------------------------------------
    @rpc(expected_exceptions=EXPECTED, sensitive_arguments=("webhook_secret",))
    def set_unit_contact(self, unit_code, email=None, webhook_url=None, webhook_secret=None,
                         idempotency_key=None):
        """A unit sets its e-mail and webhook endpoint. An empty webhook_url removes the webhook;
        a webhook without a secret gets one, returned once as ``webhook_secret``."""
        return handlers.set_unit_contact(self.uow(), {
            "unit_code": unit_code, "email": email, "webhook_url": webhook_url,
            "webhook_secret": webhook_secret}, idempotency_key)

    @rpc(expected_exceptions=EXPECTED)
    def unit_contact(self, unit_code):
        """A unit's contact points (the secret itself is never shown)."""
        return handlers.get_unit_contact(self.uow(), unit_code)

    @rpc(expected_exceptions=EXPECTED)
    def deliveries(self, case_no):
        """The delivery log of a case: who was told what, when, over which channel (no message
        bodies, no personal data)."""
        return handlers.deliveries_for_case(self.uow(), case_no)

    @rpc(expected_exceptions=EXPECTED)
    def failed(self, limit=100):
        """Dead deliveries, newest first."""
        return handlers.failed_deliveries(self.uow(), limit)

    @rpc(expected_exceptions=EXPECTED)
    def replay(self, delivery_id, idempotency_key=None):
        """Try a failed or skipped delivery again now, with a fresh set of attempts."""
        handlers.replay(self.uow(), delivery_id, idempotency_key)
        self._deliver_now(delivery_id)
        return handlers.get_delivery(self.uow(), delivery_id)

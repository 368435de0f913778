"""notify service: entrypoints only. Each turns a message into a call of a plain handler.

Events in (at-least-once, in batches; a duplicate event id is dropped, so each recipient is told
once per channel): every event of the catalogue, for the rules (notify/data/rules.yml: who is told
what, on which channels in order) and for webhook subscribers (who chose event types over RPC).
Each delivery is reserved before it is sent; see notify.handlers for retries, fallbacks, provider
outages and crashes.

RPC:
    set_unit_contact, unit_contact               a staff recipient's e-mail, duty phone, webhook
    subscribe, unsubscribe, subscribers          webhook subscribers and their event types
    set_preferences, preferences                 a citizen's first channel and quiet hours
    inbox(unit_code, unread_only), mark_read     the in-platform inbox of a unit or grid worker
    deliveries(case_no), failed(), replay(id), providers()   the log, the dead list, outages
"""
import logging

from prometheus_client import Counter

from notify import handlers
from notify.dependencies import (
    BoundedRpcProxy, Channels, DeliveryPolicy, MetricsExporter, NotificationRules, NotifyDatabase,
    OutcomeRecorder, Senders,
)
from wuji_common import audit, auth
from wuji_common.audit import audited
from wuji_common.auth import CurrentCaller, rpc
from wuji_common.entrypoints import batch_event_handler, config_timer, event_handler
from wuji_common.events import CATALOGUE

log = logging.getLogger(__name__)

# who may call what (wuji_common.auth.ROLES); unit staff name their own unit only
CITIZEN_DESK = ("dispatcher", "supervisor", "ops")   # a citizen's preferences, taken by the hotline

DELIVERIES = Counter("wuji_notify_deliveries_total",
                     "Delivery attempts by channel and outcome (pending: a retry is scheduled or the "
                     "provider is away)", ["channel", "status"])


class NotifyService:
    name = "notify"

    uow = NotifyDatabase()
    intake = BoundedRpcProxy("intake")  # bound: config RPC_TIMEOUT_SECONDS
    channels = Channels()
    policy = DeliveryPolicy()
    rules = NotificationRules()
    senders = Senders()
    recorder = OutcomeRecorder()  # the senders' outcomes that arrive together: one transaction
    metrics = MetricsExporter()
    caller = CurrentCaller()

    def _audited(self, action, object_type, object_id=None, reason=None):
        """The unit of work of a call that changes state: its commit writes the audit row."""
        return audited(self.uow(), self.caller, action, object_type, object_id, reason)

    def _outside(self):
        return handlers.Outside(citizen_contact=self.intake.contact_for_notification,
                                citizen_contacts=self.intake.contacts_for_notification,
                                channels=self.channels.channels, limiter=self.channels.limiter)

    def _count(self, done):
        for channel, status in done:
            if status:  # None: another sender's claim superseded this one
                DELIVERIES.labels(channel, status).inc()

    def _work(self):
        return self.uow, self._outside(), self.policy, self._count

    def _notify(self, method_name, envelopes):
        done = []  # inbox notices, put in the inbox with their reservation
        if handlers.record_events(self.uow(), f"notify.{method_name}", envelopes, self.rules,
                                  handlers.available_channels(self.channels.channels), self.policy, done=done):
            # reserved and committed: the senders go on after this handler returns (and acks the event)
            self.senders.wake(self._work())
        self._count(done)

    def _deliver_now(self, delivery_id):
        try:
            done = handlers.deliver(self.uow(), delivery_id, self._outside(), self.policy)
        except Exception:
            # it is reserved: the sweep sends it later
            log.warning("delivery %s left for the sweep", delivery_id, exc_info=True)
            return
        self._count(done)

    # --- retries, provider outages and crash recovery -----------------------------------------------
    @config_timer("DELIVERY_SWEEP_SECONDS", 5, eager=True)
    def send_due(self):
        """Due retries, lanes of providers that came back, deliveries a crash left (also at start):
        the senders take them up."""
        self.senders.wake(self._work())

    @event_handler("auth", "token_revoked")
    def record_revoked_token(self, envelope):
        """Every instance refuses the token from now on (auth.CurrentCaller reads the record)."""
        auth.record_revocation(self.uow(), "notify.record_revoked_token", envelope)

    # --- RPC: staff directory -------------------------------------------------------------------------
    @rpc(roles=("unit_head", "ops"), sensitive_arguments=("webhook_secret", "phone"))
    def set_unit_contact(self, unit_code, email=None, webhook_url=None, webhook_secret=None, phone=None,
                         idempotency_key=None):
        """A unit sets its e-mail, duty phone and webhook endpoint. An empty webhook_url removes the
        webhook; a webhook without a secret gets one, returned once as ``webhook_secret``."""
        return handlers.set_unit_contact(self._audited("set_unit_contact", "unit", unit_code), {
            "unit_code": self.caller.require_unit(unit_code), "email": email, "webhook_url": webhook_url,
            "webhook_secret": webhook_secret, "phone": phone}, idempotency_key)

    @rpc(roles=auth.UNIT_STAFF + ("supervisor", "ops"))
    def unit_contact(self, unit_code):
        """A unit's contact points (secrets and phone never shown)."""
        return handlers.get_unit_contact(self.uow(), self.caller.require_unit(unit_code))

    # --- RPC: webhook subscribers ---------------------------------------------------------------------
    @rpc(roles=("ops",), sensitive_arguments=("secret",))
    def subscribe(self, event_types, url=None, name=None, unit_code=None, secret=None, subscriber_id=None,
                  idempotency_key=None):
        """Subscribe an endpoint to event types (optionally only one unit's); a new subscriber gets
        its signing secret once, as ``secret``. With ``subscriber_id``: add event types to it."""
        return handlers.subscribe(self._audited("subscribe", "subscriber", subscriber_id or name), {
            "event_types": event_types, "url": url, "name": name, "unit_code": unit_code,
            "secret": secret, "subscriber_id": subscriber_id}, idempotency_key)

    @rpc(roles=("ops",))
    def unsubscribe(self, subscriber_id, event_types=None):
        """Drop event types; none given (or none left): drop the subscriber. Returns what is left."""
        return handlers.unsubscribe(self._audited("unsubscribe", "subscriber", subscriber_id), subscriber_id,
                                    event_types)

    @rpc(roles=("ops",))
    def subscribers(self):
        return handlers.list_subscribers(self.uow())

    # --- RPC: citizens' preferences -------------------------------------------------------------------
    @rpc(roles=CITIZEN_DESK)
    def set_preferences(self, case_no, channel=None, quiet_hours=None, idempotency_key=None):
        """The channel the citizen of ``case_no`` wants first, and quiet hours such as "22:00-07:00"
        (China time) during which non-urgent news waits; for all of the citizen's appeals."""
        return handlers.set_preferences(self._audited("set_preferences", "appeal", case_no), {
            "case_no": case_no, "channel": channel, "quiet_hours": quiet_hours}, idempotency_key)

    @rpc(roles=CITIZEN_DESK)
    def preferences(self, case_no):
        return handlers.get_preferences(self.uow(), case_no)

    # --- RPC: inbox -----------------------------------------------------------------------------------
    @rpc(roles=auth.UNIT_STAFF + ("supervisor", "district_leader"))
    def inbox(self, unit_code, unread_only=False, limit=100):
        """The in-platform inbox of a unit or grid worker, newest first."""
        return handlers.inbox(self.uow(), self.caller.require_unit(unit_code), unread_only, limit)

    @rpc(roles=auth.UNIT_STAFF)
    def mark_read(self, unit_code, message_ids=None):
        """Mark messages read (all unread if no ids); returns how many changed."""
        return handlers.mark_read(self._audited("mark_read", "unit", unit_code),
                                  self.caller.require_unit(unit_code), message_ids)

    # --- RPC: the log, the dead list, outages ---------------------------------------------------------
    @rpc(roles=("dispatcher", "supervisor", "ops"))
    def deliveries(self, case_no):
        """The delivery log of a case: who was told what, when, over which channel, every attempt
        (no message bodies, no personal data)."""
        return handlers.deliveries_for_case(self.uow(), case_no)

    @rpc(roles=("ops",))
    def failed(self, limit=100):
        """Dead deliveries, newest first."""
        return handlers.failed_deliveries(self.uow(), limit)

    @rpc(roles=("ops",))
    def replay(self, delivery_id, idempotency_key=None):
        """Try a failed or skipped delivery again now, with a fresh set of retries."""
        handlers.replay(self._audited("replay", "delivery", delivery_id), delivery_id, idempotency_key)
        self._deliver_now(delivery_id)
        return handlers.get_delivery(self.uow(), delivery_id)

    @rpc(roles=("ops",))
    def providers(self):
        """Providers that are away, and how many deliveries wait for each."""
        return handlers.providers(self.uow())


    @rpc(roles=auth.UNIT_STAFF + ("dispatcher", "supervisor", "district_leader", "ops"))
    def audit_log(self, object_id=None, since=None, limit=100):
        """notify's audit log: a unit's staff their own unit's entries, supervisors everything."""
        return audit.read(self.uow(), self.caller, object_id, since, limit)


def _listener(source, event_type):
    method_name = f"on_{event_type}"

    def handle(self, envelopes):
        self._notify(method_name, envelopes)
    handle.__name__ = handle.__qualname__ = method_name
    handle.__doc__ = f"{source}.{event_type}: the rules' notices and the subscribers' webhooks."
    # in batches: the events that arrived together are reserved in one transaction
    return batch_event_handler(source, event_type)(handle)


# one handler per event of the catalogue (queue evt-<source>-<type>--notify.on_<type>): rules and
# subscribers may name any of them
for _event_type, (_source, _version, _schema) in CATALOGUE.items():
    setattr(NotifyService, f"on_{_event_type}", _listener(_source, _event_type))

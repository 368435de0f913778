"""notify's providers: its database (unit of work + outbox relay), the channels with their rate
limiter, the delivery policy, the rules."""
import json
import logging
from collections import deque

from nameko.extensions import DependencyProvider

from notify import content, handlers
from notify.channels import (
    SMTP_IDLE_SECONDS, EmailChannel, InboxChannel, RateLimiter, SmsChannel, WebhookChannel, WechatChannel,
)
from notify.models import metadata
from wuji_common.db import make_engine
from wuji_common.dependencies import (  # noqa: F401
    BoundedRpcProxy, Database, GroupCommit, MetricsExporter, pool_settings,
)

log = logging.getLogger(__name__)


def NotifyDatabase():
    return Database(metadata)


def _flag(value):
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _mapping(value):
    """A mapping from config.yml, or from the environment as JSON."""
    if isinstance(value, str):
        return json.loads(value) if value.strip() else {}
    return dict(value or {})


class Channels(DependencyProvider):
    """The channels, configured from config.yml: ``{"inbox", "wechat", "sms", "email", "webhook"}``
    → channel, and the rate limiter (``RATE_LIMITS``: sends a second per provider and instance).
    E-mail reuses its SMTP connections: those idle ``SMTP_IDLE_SECONDS`` (30) are closed by a
    thread of this provider, and all of them when the service stops."""

    def setup(self):
        c = self.container.config
        # the inbox writes in a transaction of its own, outside the delivery's: a connection for
        # each sender that may be writing at once (fewer would close and reopen them under load)
        self.inbox_engine = make_engine(c["DB_URL"], **pool_settings(c, self.container.max_workers, extra=0))
        self.channels = {
            "inbox": InboxChannel(self.inbox_engine),
            "wechat": WechatChannel(
                api_base=c.get("WECHAT_API_BASE"), appid=c.get("WECHAT_APPID"),
                appsecret=c.get("WECHAT_APPSECRET"), template_ids=_mapping(c.get("WECHAT_TEMPLATE_IDS")),
                link_url=c.get("PORTAL_URL", ""), timeout=c.get("WECHAT_TIMEOUT", 5)),
            "sms": SmsChannel(
                base_url=c.get("SMS_BASE_URL"), account=c.get("SMS_ACCOUNT"), secret=c.get("SMS_SECRET"),
                sign_name=c.get("SMS_SIGN_NAME"), template_codes=_mapping(c.get("SMS_TEMPLATE_CODES")),
                timeout=c.get("SMS_TIMEOUT", 5)),
            "email": EmailChannel(
                host=c.get("SMTP_HOST", "127.0.0.1"), port=c.get("SMTP_PORT", 1025),
                mail_from=c.get("MAIL_FROM", "notify@demo.wuji.local"),
                from_name=c.get("MAIL_FROM_NAME") or "", user=c.get("SMTP_USER"),
                password=c.get("SMTP_PASSWORD"), starttls=_flag(c.get("SMTP_STARTTLS", False)),
                timeout=c.get("SMTP_TIMEOUT", 10), ca_file=c.get("SMTP_CA_FILE"),
                idle_seconds=float(c.get("SMTP_IDLE_SECONDS", SMTP_IDLE_SECONDS))),
            "webhook": WebhookChannel(timeout=c.get("WEBHOOK_TIMEOUT", 5)),
        }
        self.limiter = RateLimiter(_mapping(c.get("RATE_LIMITS")))

    def start(self):
        self.stopping = False
        self.container.spawn_managed_thread(self._close_idle_mail_connections)

    def _close_idle_mail_connections(self):
        """SMTP connections idle too long are closed even when no send comes to find them."""
        import eventlet
        email = self.channels["email"]
        while not self.stopping:
            eventlet.sleep(max(email.idle_seconds / 2, 0.5))
            email.close_idle()

    def stop(self):
        self.stopping = True
        self.channels["email"].close()
        self.inbox_engine.dispose()

    def kill(self):
        self.stopping = True
        self.channels["email"].close()
        self.inbox_engine.dispose()

    def get_dependency(self, worker_ctx):
        return self


class DeliveryPolicy(DependencyProvider):
    """Retries (DELIVERY_MAX_ATTEMPTS, DELIVERY_RETRY_BASE_SECONDS, DELIVERY_RETRY_CAP_SECONDS),
    provider probes (PROVIDER_RETRY_BASE_SECONDS, PROVIDER_RETRY_CAP_SECONDS), claim lease
    (DELIVERY_CLAIM_SECONDS), batches (DELIVERY_BATCH claimed at once; DELIVERY_RECORD_EVERY sends
    recorded at once, or those that waited DELIVERY_RECORD_SECONDS), citizens' default quiet hours
    (QUIET_HOURS), PORTAL_URL, how often the staff directory and the subscribers are read again
    (DIRECTORY_REFRESH_SECONDS, 2: a change made through another instance takes that long to apply
    here)."""

    def setup(self):
        c = self.container.config
        d = handlers.Policy()
        self.policy = handlers.Policy(
            max_attempts=int(c.get("DELIVERY_MAX_ATTEMPTS", d.max_attempts)),
            retry_base=float(c.get("DELIVERY_RETRY_BASE_SECONDS", d.retry_base)),
            retry_cap=float(c.get("DELIVERY_RETRY_CAP_SECONDS", d.retry_cap)),
            provider_base=float(c.get("PROVIDER_RETRY_BASE_SECONDS", d.provider_base)),
            provider_cap=float(c.get("PROVIDER_RETRY_CAP_SECONDS", d.provider_cap)),
            claim_seconds=float(c.get("DELIVERY_CLAIM_SECONDS", d.claim_seconds)),
            batch=int(c.get("DELIVERY_BATCH", d.batch)),
            record_every=int(c.get("DELIVERY_RECORD_EVERY", d.record_every)),
            record_seconds=float(c.get("DELIVERY_RECORD_SECONDS", d.record_seconds)),
            portal_url=c.get("PORTAL_URL", "http://127.0.0.1:8000"),
            default_quiet_hours=c.get("QUIET_HOURS") or "",
            sms_param_limit=int(c.get("SMS_PARAM_MAX_CHARS", d.sms_param_limit)),
            reference_seconds=float(c.get("DIRECTORY_REFRESH_SECONDS", d.reference_seconds)))

    def get_dependency(self, worker_ctx):
        return self.policy


class NotificationRules(DependencyProvider):
    """notify/data/rules.yml and the templates, read and checked at start: a mistake in them stops
    the service from starting instead of failing on the first event."""

    def setup(self):
        self.rules = content.rules()
        content.check_templates(self.rules)

    def get_dependency(self, worker_ctx):
        return self.rules


class OutcomeRecorder(GroupCommit):
    """Records the senders' outcomes that simply settle a delivery (sent; skipped or failed with
    nothing to fall back to) in group commits: what concurrent senders hand in while one
    transaction is written goes together into the next (``handlers.record_settled``), so that six
    senders of one-claim lanes cost one transaction, not six. Each sender is answered once its
    outcomes are committed, with its own results; a batch that fails is written again sender by
    sender, so that one sender's trouble (say, the database refusing a connection) is its own and
    its ``_persist`` tries again. Config as :class:`wuji_common.dependencies.GroupCommit`."""

    def setup(self):
        super().setup()
        self.database = next(d for d in self.container.dependencies if isinstance(d, Database))

    def write_batch(self, items):
        unit_of_work = self.database.get_dependency(None)
        recorded = iter(handlers.record_settled(unit_of_work(), [pair for item in items for pair in item]))
        return [[next(recorded) for _ in item] for item in items]

    def record(self, settled):
        """``handlers.send_claims``'s ``record``: [(claim, outcome)] → [Recorded], in order."""
        return self.submit(list(settled))


class Senders(DependencyProvider):
    """Sends reserved deliveries after the event handler has committed the reservation and returned,
    so that the rate at which events are taken off the queue does not fall to the rate at which
    providers accept messages.

    ``wake(work)`` (``work`` = (unit-of-work factory, handlers.Outside, Policy, count)) starts one
    dispatcher per instance if none is running: it claims due deliveries in batches
    (handlers.claim_due) and queues their lanes for a bounded pool of green threads (config
    ``SENDERS``, default 6: each holds a database connection while it records). A sender takes the
    next lane off the queue and sends its claims in order (handlers.send_claims), then the next
    lane, until the queue is empty. The queue holds up to ``SENDER_LANES`` (default 16) lanes per
    sender: most lanes are one citizen's or one unit's single notice, and a claim of one lane per
    free sender cost a claim transaction and a contact look-up at intake per six notices. A sender
    whose lane may have more (the claim left some, or news came while it was busy) wakes the
    dispatcher again. A send cut off by a stop or a crash stays reserved, and the sweep sends it (it runs at
    start, too). The senders' simple outcomes are recorded together through the service's
    :class:`OutcomeRecorder`, if it has one (else each sender writes its own)."""

    def setup(self):
        import eventlet
        self.pool = eventlet.GreenPool(int(self.container.config.get("SENDERS", 6)))
        self.lanes_per_sender = max(1, int(self.container.config.get("SENDER_LANES", 16)))
        self.queue = deque()  # claimed lanes waiting for a sender: (claims, handlers.Outside)
        recorder = next((d for d in self.container.dependencies if isinstance(d, OutcomeRecorder)), None)
        self.record = recorder.record if recorder is not None else None
        self.work = None
        self.dispatching = self.again = self.starved = self.stopping = False
        self.busy = {}  # lane being sent here -> whether news came meanwhile

    def stop(self):
        import eventlet
        self.stopping = True  # senders give their remaining claims back
        with eventlet.Timeout(20, False):  # shorter than the deployment's grace period
            self.pool.waitall()

    def kill(self):
        self.stopping = True
        for thread in list(self.pool.coroutines_running):
            thread.kill()

    def get_dependency(self, worker_ctx):
        return self

    def wake(self, work):
        if self.stopping:
            return
        self.work = work
        for lane in self.busy:
            self.busy[lane] = True  # its sender looks again when it is done
        if self.dispatching:
            self.again = True
            return
        self.dispatching = True
        self.container.spawn_managed_thread(self._dispatch)

    def _dispatch(self):
        try:
            while not self.stopping:
                self.again = False
                room = self.pool.size * self.lanes_per_sender - len(self.queue)
                if room <= 0:
                    self.starved = True  # the next sender to finish a lane wakes us
                    break
                uow, outside, policy, count = self.work
                claims, more = handlers.claim_batch(uow(), policy, lanes=room)
                if not claims:
                    if self.again:
                        continue
                    break
                sending = handlers.with_contacts(outside, claims)  # one call to intake per batch
                for lane in handlers.by_lane(claims):
                    self.busy[lane[0].lane] = more  # its sender looks again when it is done
                    self.queue.append((lane, sending))
                for _ in range(min(self.pool.free(), len(self.queue))):
                    self.pool.spawn_n(self._send_queued)
                if not more and not self.again:
                    break  # it took all that was due: what comes next wakes us
        except Exception:
            # the database is away: what is reserved stays so, and the sweep tries again
            log.warning("claiming deliveries failed; left for the sweep", exc_info=True)
        finally:
            self.dispatching = False

    def _send_queued(self):
        """A sender: the queued lanes one after the other, until none is left (once stopping, each
        is given back unsent by send_claims)."""
        while self.queue:
            if self.stopping:
                self._give_back_queued()
                break
            self._send(*self.queue.popleft())

    def _give_back_queued(self):
        """Stopping: the lanes no sender has started go back unsent, in one transaction."""
        rest = [claim for lane, _ in self.queue for claim in lane]
        for lane, _ in self.queue:
            self.busy.pop(lane[0].lane, None)
        self.queue.clear()
        try:
            handlers.release(self.work[0](), rest)
        except Exception:
            # claimed and unsent: taken up again when the claim runs out
            log.warning("giving back %d claims failed; left for the sweep", len(rest), exc_info=True)

    def _send(self, claims, outside):
        uow, _, policy, count = self.work
        try:
            count(handlers.send_claims(uow(), claims, outside, policy, stopping=lambda: self.stopping,
                                       record=self.record))
        except Exception:
            # claimed and unrecorded: taken up again when the claim runs out
            log.warning("sending lane %s failed; left for the sweep", claims[0].id, exc_info=True)
        finally:
            more = self.busy.pop(claims[0].lane, False)
            if more or self.starved:
                self.starved = False
                self.wake(self.work)

"""A reliable event handler: failures are retried after a delay, then dead-lettered — never dropped.

nameko's own ``event_handler`` acks and forgets a message whose handler raised
(``requeue_on_error=False``), or requeues it in a hot loop (``True``). This one republishes the failed
message to a delay queue whose TTL dead-letters it back onto the handler's queue, up to
``len(EVENT_RETRY_DELAYS)`` times, and then to ``<queue>.dead`` for ops to inspect and replay. The
original is acked only after the copy is confirmed by the broker.

Queues, per handler (nameko's name ``evt-<source>-<type>--<service>.<method>``):
    <queue>                the handler's queue (durable)
    <queue>.retry.<n>      delay queue n: x-message-ttl = EVENT_RETRY_DELAYS[n-1] seconds
    <queue>.dead           dead letters
both bound to the direct exchange ``<service>.retry`` with their own names as routing keys.
"""
import logging

from kombu import Connection, Exchange, Queue
from nameko import timer as nameko_timer
from nameko.amqp.publish import Publisher
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.events import EventHandler

from wuji_common import metrics
from wuji_common.errors import WujiError

log = logging.getLogger(__name__)

DEFAULT_RETRY_DELAYS = (1, 5, 30)
ATTEMPT_HEADER = "x-wuji-attempt"


def retry_exchange(service_name):
    """Failed messages are parked through an exchange of the consuming service's own, not the
    default exchange, so that a service's broker user may write to its own delay queues only."""
    return Exchange(f"{service_name}.retry", type="direct", durable=True)


def retry_queues(queue_name, delays, service_name):
    exchange = retry_exchange(service_name)
    queues = [
        Queue(f"{queue_name}.retry.{n}", exchange=exchange, routing_key=f"{queue_name}.retry.{n}",
              durable=True, queue_arguments={
                  "x-message-ttl": int(delay * 1000),
                  "x-dead-letter-exchange": "",
                  "x-dead-letter-routing-key": queue_name,
              })
        for n, delay in enumerate(delays, start=1)
    ]
    queues.append(Queue(f"{queue_name}.dead", exchange=exchange, routing_key=f"{queue_name}.dead",
                        durable=True))
    return queues


class ReliableEventHandler(EventHandler):

    def setup(self):
        super().setup()
        config = self.container.config
        self.delays = tuple(config.get("EVENT_RETRY_DELAYS", DEFAULT_RETRY_DELAYS))
        self.amqp_uri = config[AMQP_URI_CONFIG_KEY]
        self.publisher = Publisher(self.amqp_uri, use_confirms=True)
        with Connection(self.amqp_uri) as conn:
            for queue in retry_queues(self.queue.name, self.delays, self.container.service_name):
                queue(conn.default_channel).declare()

    @property
    def consumer_name(self):
        return f"{self.container.service_name}.{self.method_name}"

    def handle_message_processed(self, message, result=None, exc_info=None):
        if exc_info is not None:
            try:
                self._retry_or_dead_letter(message, exc_info)
            except Exception:
                # could not park the copy: leave the message unacked for redelivery instead of losing it
                log.exception("could not park failed event; requeueing")
                self.queue_consumer.requeue_message(message)
                return
        self.queue_consumer.ack_message(message)

    def _retry_or_dead_letter(self, message, exc_info):
        headers = dict(message.headers or {})
        attempt = int(headers.get(ATTEMPT_HEADER, 0)) + 1
        headers[ATTEMPT_HEADER] = attempt
        service = self.container.service_name
        exc = exc_info[1]
        # the type only, except for the platform's own typed errors: other exception text (e.g. a
        # database error with its bound parameters) can carry personal data into the queues
        headers["x-wuji-error"] = f"{type(exc).__name__}: {str(exc)[:200]}" \
            if isinstance(exc, WujiError) else type(exc).__name__
        if attempt <= len(self.delays):
            target = f"{self.queue.name}.retry.{attempt}"
            metrics.EVENTS_RETRIED.labels(service, self.consumer_name).inc()
            log.warning("%s failed on attempt %d (%s); retry in %ss", self.consumer_name, attempt,
                        type(exc).__name__, self.delays[attempt - 1])
        else:
            target = f"{self.queue.name}.dead"
            metrics.EVENTS_DEAD_LETTERED.labels(service, self.consumer_name).inc()
            log.error("%s failed %d times (%s); dead-lettered to %s", self.consumer_name, attempt,
                      type(exc).__name__, target)
        self.publisher.publish(
            message.body, exchange=retry_exchange(self.container.service_name), routing_key=target,
            headers=headers, serializer=None,
            content_type=message.content_type, content_encoding=message.content_encoding,
            message_id=message.properties.get("message_id"), mandatory=True)


event_handler = ReliableEventHandler.decorator


class Timer(nameko_timer.Timer):
    """nameko's timer with its interval read from ``config[config_key]`` at setup (nameko's takes it
    at decoration time, before any config exists), so that deployments and tests can tune it.
    ``eager`` fires once at start, to pick up what a crash or a stop left due. Keeps nameko's class
    name, so that metrics label its calls kind="timer"."""

    def __init__(self, config_key, default_interval, eager=False, **kwargs):
        super().__init__(interval=default_interval, eager=eager, **kwargs)
        self.config_key = config_key

    def setup(self):
        super().setup()
        self.interval = float(self.container.config.get(self.config_key, self.interval))


config_timer = Timer.decorator

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

:class:`BatchEventHandler` is the same contract for a handler that takes a list of events: it hands
the handler what has arrived (up to ``EVENT_BATCH_SIZE``, waiting at most ``EVENT_BATCH_LINGER_MS``
for more), so that one transaction and one commit serve many events. The batch is acked after the
handler returned; if it raised, every event of the batch is handled again on its own, so that a poison
message goes to retry and dead-letter alone and the others are not held back.

Every consumer here (these handlers, :class:`Rpc` under ``auth.rpc``, the RPC proxies' replies) runs
on :class:`PromptQueueConsumer`, so that a service stops in well under a second.
"""
import logging
from functools import partial

from eventlet.hubs import get_hub

from kombu import Connection, Exchange, Queue
from nameko import timer as nameko_timer
from nameko.amqp.publish import Publisher
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.containers import ContainerBeingKilled
from nameko.events import EventHandler
from nameko.messaging import QueueConsumer
from nameko.rpc import ReplyListener, Rpc as NamekoRpc, RpcConsumer

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


# kombu's consumer loop looks at its stop flag between drains, and a drain waits up to a second
# when no message comes. nameko's stop takes three such turns per queue consumer (cancel the
# entrypoints' consumers, then the reply listener's, then leave the loop): 2-3 s for every service,
# every stop (a Ctrl-C, a rolling restart, each test's teardown). Short drains make a stop take a
# fraction of a second, for five wake-ups a second of an idle consumer (measured: the five idle
# services went from 1.6% to 2.8% of a core in all).
STOP_POLL_SECONDS = 0.2


class PromptQueueConsumer(QueueConsumer):
    """nameko's queue consumer (one connection per container, shared by the RPC entrypoints, the RPC
    proxies' reply listener and the event handlers), which notices a stop within
    :data:`STOP_POLL_SECONDS`."""

    def consume(self, *args, **kwargs):
        kwargs["safety_interval"] = STOP_POLL_SECONDS
        return super().consume(*args, **kwargs)


class PromptRpcConsumer(RpcConsumer):
    queue_consumer = PromptQueueConsumer()


class Rpc(NamekoRpc):
    """nameko's RPC entrypoint on the :class:`PromptQueueConsumer`."""
    rpc_consumer = PromptRpcConsumer()


class PromptReplyListener(ReplyListener):
    """The RPC proxies' reply listener on the :class:`PromptQueueConsumer`."""
    queue_consumer = PromptQueueConsumer()


class ReliableEventHandler(EventHandler):

    queue_consumer = PromptQueueConsumer()

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


DEFAULT_BATCH_SIZE = 100
DEFAULT_BATCH_LINGER_MS = 3
DEFAULT_BATCHES_IN_FLIGHT = 2


class BatchQueueConsumer(PromptQueueConsumer):
    """nameko's queue consumer (a connection of its own per container) with a prefetch big enough to
    fill every batch in flight: nameko's gives each queue ``max_workers`` unacked messages, which
    would cap a batch at ten, and a prefetch of one batch would leave the other batches in flight
    empty (the broker sends no more until the first batch is acked). Messages are handed to the
    entrypoint in the consumer's thread: the entrypoint only queues them, it never blocks."""

    @property
    def prefetch_count(self):
        config = self.container.config
        return int(config.get("EVENT_BATCH_SIZE", DEFAULT_BATCH_SIZE)) * \
            int(config.get("EVENT_BATCHES_IN_FLIGHT", DEFAULT_BATCHES_IN_FLIGHT))

    def handle_message(self, provider, body, message):
        provider.handle_message(body, message)


class BatchEventHandler(ReliableEventHandler):
    """A reliable event handler whose method takes a list of envelopes (oldest first).

    Config: ``EVENT_BATCH_SIZE`` (default 100: the most events per call; the queue's prefetch is
    that times the batches in flight),
    ``EVENT_BATCH_LINGER_MS`` (default 3: how long the first event waits for others),
    ``EVENT_BATCHES_IN_FLIGHT`` (default 2 per handler: while they run, events pile up into the next
    batch, so batches grow with the load and stay small when it is light).

    The handler must be all-or-nothing for its batch (one transaction) and drop each event it has
    seen before (``UnitOfWork.first_deliveries``): a batch that fails is rolled back and its events
    are handled again one at a time, each acked, retried or dead-lettered on its own.
    """

    queue_consumer = BatchQueueConsumer()

    def setup(self):
        super().setup()
        config = self.container.config
        self.batch_size = max(1, int(config.get("EVENT_BATCH_SIZE", DEFAULT_BATCH_SIZE)))
        self.linger = float(config.get("EVENT_BATCH_LINGER_MS", DEFAULT_BATCH_LINGER_MS)) / 1000
        self.max_in_flight = max(1, int(config.get("EVENT_BATCHES_IN_FLIGHT", DEFAULT_BATCHES_IN_FLIGHT)))
        self._pending = []
        self._in_flight = 0
        self._timer = None
        self._stopping = False

    def stop(self):
        super().stop()  # no more deliveries after this
        self._stopping = True
        self._cancel_timer()
        while self._pending:  # what was delivered is handled before the container stops
            self._in_flight += 1
            self._spawn(self._take())

    def kill(self):
        # unacked messages go back to the queue when the connection closes
        self._cancel_timer()
        self._pending = []
        super().kill()

    # --- gathering ------------------------------------------------------------------------------
    def handle_message(self, body, message):
        self._pending.append((body, message))
        self._schedule()

    def _schedule(self):
        if not self._pending or self._in_flight >= self.max_in_flight:
            return  # a running batch picks them up when it is done
        if len(self._pending) >= self.batch_size:
            self._cancel_timer()
            self._start_batch()
        elif self._timer is None:
            # a hub timer, not a green thread: cancelling a green thread (eventlet's kill) switches
            # to the hub, and deliveries coming in meanwhile started batches of their own, one of
            # them empty
            self._timer = get_hub().schedule_call_global(self.linger, self._linger_over)

    def _linger_over(self):
        self._timer = None
        if self._pending and self._in_flight < self.max_in_flight:
            self._start_batch()

    def _cancel_timer(self):
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _take(self):
        batch, self._pending = self._pending[:self.batch_size], self._pending[self.batch_size:]
        return batch

    def _start_batch(self):
        if not self._pending or self._in_flight >= self.max_in_flight:
            return
        self._in_flight += 1
        # spawning may wait for a free worker: not in the consumer's thread
        self.container.spawn_managed_thread(partial(self._spawn, self._take()),
                                            identifier=f"{self.consumer_name}.batch")

    def _spawn(self, batch):
        try:
            self.container.spawn_worker(
                self, ([body for body, _ in batch],), {},
                context_data=self.unpack_message_headers(batch[0][1]),
                handle_result=partial(self._batch_done, batch))
        except ContainerBeingKilled:
            for _, message in batch:
                self.queue_consumer.requeue_message(message)
            self._finished()

    def _finished(self):
        self._in_flight -= 1
        if not self._stopping:
            self._schedule()

    # --- results --------------------------------------------------------------------------------
    def calls_in(self, worker_ctx):
        """How many events this worker's call counts for in the entrypoint metrics."""
        return 0 if getattr(worker_ctx, "handed_over", False) else len(worker_ctx.args[0])

    def _batch_done(self, batch, worker_ctx, result=None, exc_info=None):
        if exc_info is None or len(batch) == 1:
            for _, message in batch:
                self.handle_message_processed(message, result, exc_info)
            self._finished()
            return result, exc_info
        log.warning("%s: a batch of %d failed (%s); handling its events one by one",
                    self.consumer_name, len(batch), type(exc_info[1]).__name__)
        worker_ctx.handed_over = True
        # from a thread of its own: this worker still holds its slot in the pool
        self.container.spawn_managed_thread(partial(self._one_by_one, batch),
                                            identifier=f"{self.consumer_name}.one_by_one")
        # the events' own outcomes are counted as they are handled one by one
        return result, None

    def _one_by_one(self, batch):
        remaining = [len(batch)]

        def one_done(message, worker_ctx, result=None, exc_info=None):
            self.handle_message_processed(message, result, exc_info)
            remaining[0] -= 1
            if remaining[0] == 0:
                self._finished()
            return result, exc_info

        for n, (body, message) in enumerate(batch):
            try:
                self.container.spawn_worker(
                    self, ([body],), {}, context_data=self.unpack_message_headers(message),
                    handle_result=partial(one_done, message))
            except ContainerBeingKilled:
                for _, unhandled in batch[n:]:
                    self.queue_consumer.requeue_message(unhandled)
                self._finished()
                return


batch_event_handler = BatchEventHandler.decorator


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

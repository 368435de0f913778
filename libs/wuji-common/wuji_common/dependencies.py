"""Nameko dependency providers shared by the services.

- :class:`Database` gives a worker a unit-of-work factory and runs the outbox relay in the container.
- :class:`MetricsExporter` serves ``/metrics`` on the service's own port from a green thread of its
  own, so a scrape is answered even when every worker is busy.
- :class:`GroupCommit` writes the calls that arrive together in one transaction (group commit).
- :class:`BoundedRpcProxy` is nameko's RpcProxy with a time bound and a message expiry, calling as
  the service itself (its own token), not as the user whose call it is serving.
"""
import logging
import time
import weakref
from collections import deque

import eventlet
from eventlet.event import Event
from nameko.events import EventHandler
from nameko.extensions import DependencyProvider
from nameko.messaging import Consumer
from nameko.rpc import Rpc, RpcProxy, ServiceProxy
from nameko.timer import Timer
from nameko.web.handlers import HttpRequestHandler
from prometheus_client import start_http_server

from wuji_common import auth, metrics
from wuji_common.db import UnitOfWork, make_engine, session_factory
from wuji_common.entrypoints import PromptReplyListener
from wuji_common.errors import EXPECTED, RpcTimeout
from wuji_common.relay import BatchPublisher, OutboxRelay

log = logging.getLogger(__name__)


def pool_settings(config, max_workers, extra=2):
    """The connection pool of a service database: as many kept connections as can be busy at once
    (``DB_POOL_SIZE``, default ``max_workers`` + ``extra``), a few more for bursts (``DB_MAX_OVERFLOW``,
    default 4); nothing for SQLite, which has no server to connect to."""
    if str(config["DB_URL"]).startswith("sqlite"):
        return {}
    return {"pool_size": int(config.get("DB_POOL_SIZE", max_workers + extra)),
            "max_overflow": int(config.get("DB_MAX_OVERFLOW", 4))}


class Database(DependencyProvider):
    """Unit of work + transactional outbox relay for one service database.

    Config: ``DB_URL``; ``DB_POOL_SIZE`` (PostgreSQL connections kept open; default ``max_workers``
    + 2, so that every worker and the relay keep theirs: a pool smaller than that closes and opens a
    connection per transaction under load, and PostgreSQL forks a backend for each) and
    ``DB_MAX_OVERFLOW`` (default 4, for the odd burst beyond).

    A commit that emitted events hands them to the relay of its process, which publishes them at
    once (what commits while it publishes goes in its next confirm window) and marks them: their
    outbox rows were written claimed for this relay for ``OUTBOX_HANDOFF_SECONDS`` (default 5), so
    no claim statement is needed, and should the process die first, any relay publishes them once
    that claim has run out. Every ``OUTBOX_POLL_SECONDS`` (default 1) the relay also claims and
    publishes rows nobody handed it: a dead instance's, a command's. ``OUTBOX_LINGER_MS`` (default 0)
    lets a woken relay wait for the commits right behind the first. ``OUTBOX_MARK_MS`` (default
    250) is how often handed events, once published, are marked, all together: publishing is not
    delayed by it, and it must stay well under the hand-off (see OutboxRelay.publish_handed).
    """

    def __init__(self, metadata):
        self.metadata = metadata

    def setup(self):
        config = self.container.config
        self.engine = make_engine(config["DB_URL"], **pool_settings(config, self.container.max_workers))
        self.session_factory = session_factory(self.engine)
        self.source = self.container.service_name
        self.poll_seconds = float(config.get("OUTBOX_POLL_SECONDS", 1))
        self.linger = float(config.get("OUTBOX_LINGER_MS", 0)) / 1000
        self.handoff_seconds = float(config.get("OUTBOX_HANDOFF_SECONDS", 5))
        self._handed = []   # committed events waiting for this relay, in commit order
        self._backlog_read = self._polled = 0.0
        mark_every = float(config.get("OUTBOX_MARK_MS", 250)) / 1000
        if mark_every >= self.handoff_seconds / 2:
            raise ValueError("OUTBOX_MARK_MS must be well under OUTBOX_HANDOFF_SECONDS: a row not "
                             "marked when its claim runs out is published twice")
        self.relay = OutboxRelay(self.engine, self.metadata.tables["outbox"],
                                 BatchPublisher(config["AMQP_URI"]), mark_every=mark_every)
        self._wake = Event()
        self._running = False

    def start(self):
        self._running = True
        self._thread = self.container.spawn_managed_thread(self._relay_forever)

    def stop(self):
        self._running = False
        self._poke()
        if getattr(self, "_thread", None) is not None:
            self._thread.wait()
        self.relay.publisher.close()
        self.engine.dispose()

    def kill(self):
        self._running = False
        self.relay.publisher.close()

    def _poke(self, events=None):
        if events:
            self._handed.extend(events)
        if not self._wake.ready():
            self._wake.send(True)

    def _relay_forever(self):
        service = self.source
        while self._running:
            marks_due = self.relay.marks_due_in()
            with eventlet.Timeout(self.poll_seconds if marks_due is None else min(self.poll_seconds, marks_due),
                                  False):
                self._wake.wait()
            if self._wake.ready() and self.linger:
                eventlet.sleep(self.linger)
            self._wake = Event()
            try:
                while self._handed:
                    batch = self._handed[:self.relay.batch_size]
                    del self._handed[:len(batch)]
                    metrics.OUTBOX_PUBLISHED.labels(service).inc(self.relay.publish_handed(batch))
                if self.relay.marks_due_in() == 0 or not self._running:
                    self.relay.mark_published()
                if time.monotonic() - self._polled >= self.poll_seconds:
                    # what nobody handed over: a dead instance's rows, a command's, unrouted ones
                    self._polled = time.monotonic()
                    while self._running:
                        published = self.relay.publish_pending()
                        metrics.OUTBOX_PUBLISHED.labels(service).inc(published)
                        if published < self.relay.batch_size:
                            break
                if time.monotonic() - self._backlog_read >= self.poll_seconds:
                    # a gauge for scrapes: at most once per poll interval, not after every commit
                    self._backlog_read = time.monotonic()
                    # published rows waiting for their mark are no backlog: marked first (at most
                    # once a poll interval more), so that the count and the oldest age are exact
                    self.relay.mark_published()
                    backlog, age = self.relay.backlog()
                    metrics.OUTBOX_BACKLOG.labels(service).set(backlog)
                    metrics.OUTBOX_OLDEST_AGE.labels(service).set(age)
            except Exception:
                # broker or database away: everything stays in the outbox and is retried (handed
                # events once their claim has run out)
                log.warning("outbox relay of %s failed; retrying", service, exc_info=True)
                eventlet.sleep(min(5.0, self.poll_seconds * 2))

    def get_dependency(self, worker_ctx):
        def unit_of_work():
            return UnitOfWork(self.session_factory, self.metadata, self.source, on_commit=self._poke,
                              handoff_seconds=self.handoff_seconds)
        return unit_of_work


class GroupCommit(DependencyProvider):
    """Group commit (组提交) for an entrypoint that writes: the calls that arrive while a transaction
    is being written wait and go together into the next one, so that N concurrent submissions cost
    one transaction and a handful of statements, not N of each. There is no linger: a call that
    finds a writer free is written at once, and batches form only from calls queued behind busy
    writers, so a quiet service answers as fast as before and a busy one commits less often. The
    caller is answered once its transaction has committed: nothing is acknowledged before it is
    stored.

    A subclass implements ``write_batch(items)`` → one result or one exception per item, in order,
    all written in one transaction. A batch that raises is written again one item at a time, so
    that an item that cannot be written fails its own call only.

    Config: ``GROUP_COMMIT_MAX`` (default 64) items per transaction; ``GROUP_COMMIT_WRITERS``
    (default 2) transactions in flight (one more overlaps one batch's round trips with the next).
    """

    def setup(self):
        config = self.container.config
        self.max_batch = int(config.get("GROUP_COMMIT_MAX", 64))
        self.max_writers = int(config.get("GROUP_COMMIT_WRITERS", 2))
        self._pending = deque()
        self._writers = 0
        self._size = metrics.GROUP_COMMIT_SIZE.labels(self.container.service_name, type(self).__name__)

    def write_batch(self, items):
        raise NotImplementedError

    def submit(self, item):
        """Write ``item`` with whatever else is waiting; its result, or raise its exception."""
        done = Event()
        self._pending.append((item, done))
        if self._writers < self.max_writers:
            self._writers += 1
            self.container.spawn_managed_thread(self._write_pending)
        return done.wait()

    def _write_pending(self):
        try:
            # cooperative threads: nothing can be queued between the last check and the exit
            while self._pending:
                batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
                self._size.observe(len(batch))
                self._write(batch)
        finally:
            self._writers -= 1

    def _write(self, batch):
        try:
            results = self.write_batch([item for item, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                batch[0][1].send_exception(exc)
            else:
                for one in batch:
                    self._write([one])
            return
        for (_, done), result in zip(batch, results):
            if isinstance(result, Exception):
                done.send_exception(result)
            else:
                done.send(result)

    def get_dependency(self, worker_ctx):
        return self


_exporters_started = {}
# the `kind` label, stable and low-cardinality whatever subclass implements the entrypoint (the
# platform's ReliableEventHandler and config Timer included); EventHandler before Consumer, its base
ENTRYPOINT_KINDS = ((Rpc, "rpc"), (HttpRequestHandler, "http"), (EventHandler, "event"), (Timer, "timer"),
                    (Consumer, "consumer"))
OUTCOMES = ("ok", "expected_error", "error")


def entrypoint_kind(entrypoint):
    for cls, kind in ENTRYPOINT_KINDS:
        if isinstance(entrypoint, cls):
            return kind
    return type(entrypoint).__name__.lower()


class MetricsExporter(DependencyProvider):
    """Counts every entrypoint call by outcome and latency, tracks busy workers, and serves
    ``/metrics`` from a thread of its own (not a worker), so a scrape is answered while every
    worker is busy.

    Config: ``METRICS_PORT`` (0 or absent: not served; several containers in one process share one
    registry, so the first to bind a port serves them all), ``METRICS_ADDRESS`` (default 127.0.0.1).
    """

    def setup(self):
        self.service = self.container.service_name
        self.started = weakref.WeakKeyDictionary()
        self._declare_series()
        port = int(self.container.config.get("METRICS_PORT", 0) or 0)
        address = self.container.config.get("METRICS_ADDRESS", "127.0.0.1")
        if port and (address, port) not in _exporters_started:
            _exporters_started[(address, port)] = start_http_server(port, addr=address)

    def _declare_series(self):
        """Every series this service can produce, at zero, from the start: a counter that first
        appears at 1 is invisible to ``increase()``, so the first error or dead letter after a
        restart would not raise an alert."""
        service = self.service
        metrics.WORKERS_BUSY.labels(service)
        metrics.WORKERS_MAX.labels(service).set(self.container.max_workers)
        for entrypoint in self.container.entrypoints:
            kind = entrypoint_kind(entrypoint)
            for outcome in OUTCOMES:
                metrics.ENTRYPOINT_CALLS.labels(service, entrypoint.method_name, kind, outcome)
            metrics.ENTRYPOINT_LATENCY.labels(service, entrypoint.method_name, kind)
            consumer = getattr(entrypoint, "consumer_name", None)   # the platform's event handlers
            if consumer:
                for counter in (metrics.EVENTS_RETRIED, metrics.EVENTS_DEAD_LETTERED,
                                metrics.EVENTS_DUPLICATE):
                    counter.labels(service, consumer)

    def get_dependency(self, worker_ctx):
        return None

    def worker_setup(self, worker_ctx):
        self.started[worker_ctx] = time.perf_counter()
        metrics.WORKERS_BUSY.labels(self.service).inc()

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        entrypoint = worker_ctx.entrypoint
        kind = entrypoint_kind(entrypoint)
        name = entrypoint.method_name
        started = self.started.pop(worker_ctx, None)
        metrics.WORKERS_BUSY.labels(self.service).dec()
        if exc_info is None:
            outcome = "ok"
        else:
            expected = getattr(entrypoint, "expected_exceptions", ()) or ()
            outcome = "expected_error" if isinstance(exc_info[1], tuple(expected) or EXPECTED) \
                else "error"
        # a batch event handler's call counts once per event it handled (none for a batch that was
        # handed over to be handled one by one: those calls count themselves)
        calls = entrypoint.calls_in(worker_ctx) if hasattr(entrypoint, "calls_in") else 1
        metrics.ENTRYPOINT_CALLS.labels(self.service, name, kind, outcome).inc(calls)
        if started is not None:
            metrics.ENTRYPOINT_LATENCY.labels(self.service, name, kind).observe(
                time.perf_counter() - started)


class _BoundedServiceProxy:
    def __init__(self, proxy, timeout):
        self._proxy = proxy
        self._timeout = timeout

    def __getattr__(self, method_name):
        method = getattr(self._proxy, method_name)

        def call(*args, **kwargs):
            reply = method.call_async(*args, **kwargs)
            try:
                with eventlet.Timeout(self._timeout):
                    return reply.result()
            except eventlet.Timeout:
                raise RpcTimeout(f"{self._proxy.service_name}.{method_name} did not answer "
                                 f"within {self._timeout}s")
        return call


class _AsService:
    """The worker context as the proxy sees it, with the calling service's own token in place of
    whatever ``authorization`` the worker was called with: nameko would propagate the user's token,
    and the called service would then authorise the user, not the service that asks."""

    def __init__(self, worker_ctx, authorization):
        self._worker_ctx = worker_ctx
        self._authorization = authorization

    def __getattr__(self, name):
        return getattr(self._worker_ctx, name)

    @property
    def context_data(self):
        data = dict(self._worker_ctx.context_data)
        data["authorization"] = self._authorization   # None: nameko leaves the header out
        return data


class BoundedRpcProxy(RpcProxy):
    """RpcProxy whose calls give up after ``timeout`` seconds; the request message expires too, so
    a stopped service does not run stale calls when it starts again. Calls carry the service's own
    token (config ``SERVICE_TOKEN``, else ``$WUJI_SERVICE_TOKEN_<SERVICE>``)."""

    rpc_reply_listener = PromptReplyListener()

    def __init__(self, target_service, timeout=None, **options):
        super().__init__(target_service, **options)
        self.timeout = timeout

    def setup(self):
        super().setup()
        # config RPC_TIMEOUT_SECONDS (default 5) unless the service fixed a bound in code
        if self.timeout is None:
            self.timeout = float(self.container.config.get("RPC_TIMEOUT_SECONDS", 5))
        self.options.setdefault("expiration", self.timeout)
        token = auth.service_token(self.container.config, self.container.service_name)
        if not token:
            log.warning("%s has no service token: its calls to %s will be refused",
                        self.container.service_name, self.target_service)
        self.authorization = auth.bearer(token) if token else None

    def get_dependency(self, worker_ctx):
        proxy = ServiceProxy(_AsService(worker_ctx, self.authorization), self.target_service,
                             self.rpc_reply_listener, **self.options)
        return _BoundedServiceProxy(proxy, self.timeout)

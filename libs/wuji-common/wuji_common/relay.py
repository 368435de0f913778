"""The outbox relay: publishes committed events to RabbitMQ and marks them published.

Delivery is at-least-once: a row is marked published only after the broker confirmed it *and* routed
it to at least one queue (``mandatory``). If the process dies between confirm and mark, the row is
published again and consumers drop the duplicate by event id.

Publishing waits for confirms per window, not per message: waiting for each confirm is a network
round trip (~1 ms) per event and caps a publisher near 1,000 msg/s; pipelining a window of messages
and then collecting the confirms costs one round trip per window.
"""
import json
import logging
import time
from datetime import timedelta

import amqp
from kombu import Connection
from nameko.standalone.events import get_event_exchange
from sqlalchemy import func, or_, select, update

from wuji_common.db import utcnow

log = logging.getLogger(__name__)

CLAIM_SECONDS = 30


class BatchPublisher:
    """Publishes a list of envelopes with publisher confirms collected per window."""

    def __init__(self, amqp_uri, confirm_timeout=10):
        self.amqp_uri = amqp_uri
        self.confirm_timeout = confirm_timeout
        self._conn = None
        self._channel = None
        self._declared = set()

    def _ensure_channel(self):
        if self._channel is None:
            self._conn = Connection(self.amqp_uri, heartbeat=0)
            self._conn.ensure_connection(max_retries=1)
            self._channel = self._conn.channel()
            self._channel.confirm_select()
            self._acked, self._nacked, self._returned = set(), set(), set()
            self._next_tag = 1
            self._channel.events["basic_ack"].add(self._on_ack)
            self._channel.events["basic_nack"].add(self._on_nack)
            self._channel.events["basic_return"].add(self._on_return)
        return self._channel

    def _on_ack(self, tag, multiple):
        self._settle(self._acked, tag, multiple)

    def _on_nack(self, tag, multiple):
        self._settle(self._nacked, tag, multiple)

    def _settle(self, into, tag, multiple):
        if multiple:
            into.update(t for t in self._outstanding if t <= tag)
        else:
            into.add(tag)

    def _on_return(self, exc, exchange, routing_key, message):
        self._returned.add(message.properties.get("message_id"))

    def close(self):
        if self._conn is not None:
            try:
                self._conn.release()
            except Exception:  # closing a broken connection must not mask the original error
                pass
        self._conn = self._channel = None

    def declare_exchange(self, exchange_name):
        if exchange_name in self._declared:
            return
        source = exchange_name[: -len(".events")]
        get_event_exchange(source, {})(self._ensure_channel()).declare()
        self._declared.add(exchange_name)

    def publish(self, envelopes):
        """Publish envelopes (dicts with event_id, type, source); return the event ids that the broker
        confirmed and routed. Raises on connection failure (nothing is marked, all is retried)."""
        try:
            channel = self._ensure_channel()
            by_tag = {}
            self._outstanding = set()
            for env in envelopes:
                exchange = f"{env['source']}.events"
                self.declare_exchange(exchange)
                body = json.dumps(env, ensure_ascii=False).encode("utf-8")
                msg = amqp.Message(body, content_type="application/json", content_encoding="utf-8",
                                   delivery_mode=2, message_id=env["event_id"])
                channel.basic_publish(msg, exchange=exchange, routing_key=env["type"], mandatory=True)
                tag = self._next_tag
                self._next_tag += 1
                by_tag[tag] = env["event_id"]
                self._outstanding.add(tag)
            while not self._outstanding <= (self._acked | self._nacked):
                self._conn.drain_events(timeout=self.confirm_timeout)
            confirmed = {by_tag[t] for t in by_tag if t in self._acked}
            routed = confirmed - self._returned
            if self._returned:
                log.warning("outbox relay: %d event(s) had no queue bound; kept for retry",
                            len(self._returned & set(by_tag.values())))
            self._acked.difference_update(by_tag)
            self._nacked.difference_update(by_tag)
            self._returned.clear()
            return routed
        except Exception:
            self.close()
            raise


class OutboxRelay:
    """Moves outbox rows to the broker. Safe with several instances on PostgreSQL: a batch is claimed
    with ``FOR UPDATE SKIP LOCKED`` in a short transaction, published outside any transaction (so no
    lock is held across network I/O), then marked. A claim left by a dead instance expires."""

    def __init__(self, engine, outbox_table, publisher, batch_size=500, mark_every=0.0):
        self.engine = engine
        self.outbox = outbox_table
        self.publisher = publisher
        self.batch_size = batch_size
        # handed events published but not marked yet (see publish_handed), and when marks were written
        self.mark_every = mark_every
        self._published = []
        self._marked_at = time.monotonic()

    def _claim(self):
        now = utcnow()
        o = self.outbox
        pending = (select(o.c.id)
                   .where(o.c.published_at.is_(None),
                          or_(o.c.claimed_until.is_(None), o.c.claimed_until < now))
                   .order_by(o.c.id).limit(self.batch_size)
                   .with_for_update(skip_locked=True))
        claim = {"claimed_until": now + timedelta(seconds=CLAIM_SECONDS)}
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # select, lock and claim in one statement: one round trip
                rows = conn.execute(update(o).where(o.c.id.in_(pending.scalar_subquery())).values(claim)
                                    .returning(o.c.id, o.c.payload)).all()
                return sorted(rows, key=lambda r: r.id)
            rows = conn.execute(pending.add_columns(o.c.payload)).all()
            if rows:
                conn.execute(update(o).where(o.c.id.in_([r.id for r in rows])).values(claim))
        return rows

    def publish_pending(self):
        """Publish one batch; return how many rows were marked published."""
        rows = self._claim()
        if not rows:
            return 0
        envelopes = [json.loads(r.payload) for r in rows]
        try:
            routed = self.publisher.publish(envelopes)
        except Exception:
            self._release([r.id for r in rows])
            raise
        ids_by_event = {env["event_id"]: r.id for env, r in zip(envelopes, rows)}
        done = {ids_by_event[e] for e in routed}
        self._mark(self.outbox.c.id, sorted(done), [r.id for r in rows if r.id not in done])
        return len(done)

    def publish_handed(self, envelopes):
        """Publish events their writer handed over at commit: their rows were written claimed for
        this relay (``UnitOfWork(handoff_seconds=...)``), so there is nothing to claim, one statement
        and a transaction less per batch. If publishing fails, the rows stay claimed until the claim
        runs out and a poll takes them up.

        With ``mark_every`` (seconds), what was published is marked at most that often, for all the
        batches published meanwhile (:meth:`mark_published`): under load a relay publishes after
        every commit, and a mark per publish was a transaction per commit. Until marked, the rows
        stay claimed for this relay (that claim must outlast ``mark_every``); should the process die
        first, they are published again once the claim runs out and consumers drop the repeats, as
        when a process dies between confirm and mark."""
        if not envelopes:
            return 0
        routed = self.publisher.publish(envelopes)
        event_ids = [e["event_id"] for e in envelopes]
        self._published.extend(e for e in event_ids if e in routed)
        unrouted = [e for e in event_ids if e not in routed]
        if unrouted or self.marks_due_in() == 0:
            self.mark_published(unrouted)
        return len(routed)

    def marks_due_in(self):
        """Seconds until the published events should be marked (0: now), or None if none wait."""
        if not self._published:
            return None
        return max(0.0, self.mark_every - (time.monotonic() - self._marked_at))

    def mark_published(self, unrouted=()):
        """Mark what :meth:`publish_handed` published (and put ``unrouted`` back for a retry)."""
        done, self._published = self._published, []
        self._marked_at = time.monotonic()
        if done or unrouted:
            self._mark(self.outbox.c.event_id, done, list(unrouted))

    @property
    def unmarked(self):
        """How many published events wait for their mark."""
        return len(self._published)

    def _mark(self, column, done, unrouted):
        with self.engine.begin() as conn:
            if done:
                conn.execute(update(self.outbox).where(column.in_(done))
                             .values(published_at=utcnow(), claimed_until=None))
            if unrouted:
                # retried after a short pause rather than in a hot loop
                conn.execute(update(self.outbox).where(column.in_(unrouted))
                             .values(claimed_until=utcnow() + timedelta(seconds=2)))

    def _release(self, ids):
        with self.engine.begin() as conn:
            conn.execute(update(self.outbox).where(self.outbox.c.id.in_(ids)).values(claimed_until=None))

    def backlog(self):
        """(unpublished rows, age in seconds of the oldest) for the metrics exporter."""
        o = self.outbox
        with self.engine.connect() as conn:
            count, oldest = conn.execute(
                select(func.count(), func.min(o.c.created_at)).where(o.c.published_at.is_(None))
            ).one()
        if not oldest:
            return count, 0.0
        if oldest.tzinfo is None:  # SQLite returns naive datetimes
            from datetime import timezone
            oldest = oldest.replace(tzinfo=timezone.utc)
        return count, max(0.0, (utcnow() - oldest).total_seconds())

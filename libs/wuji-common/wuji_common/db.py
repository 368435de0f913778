"""Database plumbing shared by the services: engine set-up, the reliability tables, and the unit of work.

Each service owns its own database. Every one of them carries the same three reliability tables,
added to the service's own MetaData by :func:`add_reliability_tables` and created by that service's
own Alembic history:

- ``outbox``: events written in the same transaction as the data they describe (transactional outbox);
- ``processed_events``: ``(consumer, event_id)`` of every event already handled, written in the same
  transaction as the handler's effect, so a redelivered event is a key clash, not a second effect;
- ``idempotency_keys``: the first result of every mutating call, so a retry returns it again.
"""
import json
import time
from datetime import datetime, timedelta, timezone

from sqlalchemy import (
    JSON, Column, DateTime, Integer, MetaData, String, Table, Text, UniqueConstraint, create_engine,
    event, exc, insert, select, text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import sessionmaker

from wuji_common.events import make_event


def utcnow():
    return datetime.now(timezone.utc)


def normalize_url(url):
    """``postgresql://`` means psycopg2 here: SQLAlchemy 2.1 would pick psycopg 3, which blocks the
    eventlet hub, while psycopg2 is made green by monkey patching."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def make_engine(url, **kwargs):
    """An engine for a service database. SQLite gets WAL and a busy timeout so that the relay and the
    handlers of one process don't trip over each other; PostgreSQL gets a pool sized for workers,
    whose connections are pinged before use after idling ``ping_after_idle_seconds`` (default
    PING_AFTER_IDLE_SECONDS; None: never)."""
    url = normalize_url(url)
    ping_after = kwargs.pop("ping_after_idle_seconds", PING_AFTER_IDLE_SECONDS)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 5}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if "poolclass" not in kwargs:
        # a service sizes its pool to its workers (dependencies.pool_settings); this default is for
        # commands and tools, which hold one or two connections at a time
        kwargs.setdefault("pool_size", 4)
        kwargs.setdefault("max_overflow", 20)
    if url.startswith("postgresql+psycopg2"):
        # an UPDATE or DELETE executed for many rows goes in pages of one round trip each
        # (psycopg2's execute_batch), not one round trip per row; INSERTs are unchanged (one
        # multi-row VALUES)
        kwargs.setdefault("executemany_mode", "values_plus_batch")
    engine = create_engine(url, **kwargs)
    if ping_after is not None and not kwargs.get("pool_pre_ping"):
        _ping_when_idle(engine, ping_after)
    return engine


# A pooled connection that sat idle this long is pinged before use (a PostgreSQL restart, or a
# firewall dropping idle connections, leaves it dead); one used a moment ago is not. pool_pre_ping
# pings on every checkout: a round trip per transaction, ~5% of a busy service's time. A connection
# that dies while in use fails that one transaction, and SQLAlchemy then discards every connection
# the pool holds, so the next checkouts connect afresh.
PING_AFTER_IDLE_SECONDS = 2.0


def _ping_when_idle(engine, seconds):
    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_conn, record):
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn, record, proxy):
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < seconds:
            return
        try:
            if not engine.dialect.do_ping(dbapi_conn):
                raise exc.DisconnectionError("connection did not answer a ping")
        except exc.DisconnectionError:
            raise
        except Exception as err:
            # the pool drops this connection and checks out another (up to three times)
            raise exc.DisconnectionError(f"connection dead after idling: {err}") from err


def add_reliability_tables(metadata: MetaData):
    """Add outbox, processed_events and idempotency_keys to a service's metadata; returns them."""
    outbox = Table(
        "outbox", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False, unique=True),
        Column("event_type", String(64), nullable=False),
        Column("exchange", String(64), nullable=False),
        Column("payload", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, default=utcnow),
        # a relay instance claims a batch until this time; another instance takes over after it
        Column("claimed_until", DateTime(timezone=True), nullable=True),
        Column("published_at", DateTime(timezone=True), nullable=True, index=True),
    )
    processed = Table(
        "processed_events", metadata,
        Column("consumer", String(128), primary_key=True),
        Column("event_id", String(36), primary_key=True),
        Column("processed_at", DateTime(timezone=True), nullable=False, default=utcnow),
    )
    idempotency = Table(
        "idempotency_keys", metadata,
        Column("operation", String(64), primary_key=True),
        Column("key", String(128), primary_key=True),
        Column("result", JSON, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, default=utcnow),
    )
    return outbox, processed, idempotency


class UnitOfWork:
    """One transaction: the service's data, the events it raises and its dedup records commit or roll
    back together. Rolls back unless :meth:`commit` is called. No framework imports: handlers take a
    unit of work and are tested with SQLite or a fake."""

    def __init__(self, session_factory, metadata, source, on_commit=None, handoff_seconds=None):
        self._session_factory = session_factory
        self._outbox = metadata.tables["outbox"]
        self._processed = metadata.tables["processed_events"]
        self._idempotency = metadata.tables["idempotency_keys"]
        self.source = source
        self._on_commit = on_commit
        # events handed to this process's relay at commit (``on_commit``) are written claimed for
        # it, for this long: no other relay takes them meanwhile, and if this process dies before
        # publishing them, any relay does once the claim has run out
        self._handoff = timedelta(seconds=handoff_seconds) if handoff_seconds else None
        self.session = None
        self.events = []
        self._ids_ahead = {}

    def __enter__(self):
        self.session = self._session_factory()
        self.events = []
        self._ids_ahead = {}
        return self

    def __exit__(self, *exc):
        try:
            self.session.rollback()
        finally:
            self.session.close()

    def commit(self):
        if self.events:
            now = utcnow()
            claimed_until = now + self._handoff if self._handoff and self._on_commit else None
            self.session.execute(insert(self._outbox), [
                {"event_id": e["event_id"], "event_type": e["type"], "exchange": f"{e['source']}.events",
                 "payload": json.dumps(e, ensure_ascii=False), "created_at": now,
                 "claimed_until": claimed_until}
                for e in self.events
            ])
        self.session.commit()
        emitted, self.events = self.events, []
        if emitted and self._on_commit:
            self._on_commit(emitted)
        return emitted

    # --- events out ------------------------------------------------------------------------------
    def emit(self, event_type, case_no, data):
        """Raise an event; it is written to the outbox at commit and published by the relay."""
        envelope = make_event(event_type, case_no, data, source=self.source)
        self.events.append(envelope)
        return envelope

    # --- events in -------------------------------------------------------------------------------
    def first_delivery(self, consumer, event_id):
        """True the first time ``consumer`` sees ``event_id``; records it in this transaction."""
        return bool(self._record_deliveries(consumer, [event_id]))

    def first_deliveries(self, consumer, envelopes):
        """The envelopes ``consumer`` sees for the first time (in order, each event id once), recorded
        in this transaction: :meth:`first_delivery` for a batch, in one statement."""
        fresh = {}
        for envelope in envelopes:
            fresh.setdefault(envelope["event_id"], envelope)
        if not fresh:
            return []
        recorded = self._record_deliveries(consumer, list(fresh))
        return [e for event_id, e in fresh.items() if event_id in recorded]

    def _record_deliveries(self, consumer, event_ids):
        """Insert ``(consumer, event_id)`` for each id not recorded yet; the set of those inserted.
        One statement (INSERT … ON CONFLICT DO NOTHING RETURNING), not a look-up and an insert: a
        concurrent transaction recording the same event makes this one wait for its outcome and
        then skip the row, so exactly one of them handles the event."""
        p, now = self._processed, utcnow()
        rows = [{"consumer": consumer, "event_id": event_id, "processed_at": now} for event_id in event_ids]
        return set(self.session.execute(
            insert_unless_present(self.session, p).returning(p.c.event_id), rows).scalars())

    # --- numbering ---------------------------------------------------------------------------------
    def reserve_id(self, table):
        """The next row id of ``table`` (its ``id`` serial) taken before the insert, on PostgreSQL,
        so that a number built from it (case_no, order_no) goes into the INSERT itself; None on
        SQLite, which has no sequence: the caller flushes the row and numbers it after. Saves an
        UPDATE of a uniquely indexed column per row."""
        if self._ids_ahead.get(table):
            return self._ids_ahead[table].pop(0)
        ids = self.reserve_ids(table, 1)
        return ids[0] if ids else None

    def reserve_ids_ahead(self, table, count):
        """Take ``count`` ids of ``table`` now, in one statement, for this transaction's next
        :meth:`reserve_id` calls (a batch that will insert that many rows). On PostgreSQL only; an id
        not used is a gap in the numbers, as a rolled-back insert leaves one."""
        ids = self.reserve_ids(table, count)
        if ids:
            self._ids_ahead.setdefault(table, []).extend(ids)

    def reserve_ids(self, table, count):
        """:meth:`reserve_id` for ``count`` rows in one statement: a list of ids, or None on SQLite."""
        if self.session.get_bind().dialect.name != "postgresql":
            return None
        if count <= 0:
            return []
        return list(self.session.scalars(
            text("SELECT nextval(pg_get_serial_sequence(:table, 'id')) FROM generate_series(1, :count)"),
            {"table": table, "count": count}))

    # --- idempotent calls ------------------------------------------------------------------------
    def recall(self, operation, key):
        """The stored result of an earlier call with this idempotency key, or None."""
        if not key:
            return None
        row = self.session.execute(
            select(self._idempotency.c.result).where(
                self._idempotency.c.operation == operation, self._idempotency.c.key == key)
        ).first()
        return row[0] if row else None

    def recall_many(self, operation, keys):
        """{key: stored result} of the earlier calls among ``keys``: :meth:`recall` in one statement."""
        keys = sorted({k for k in keys if k})
        if not keys:
            return {}
        i = self._idempotency
        return dict(self.session.execute(select(i.c.key, i.c.result).where(
            i.c.operation == operation, i.c.key.in_(keys))).all())

    def remember(self, operation, key, result):
        if key:
            self.remember_many(operation, {key: result})
        return result

    def remember_many(self, operation, results):
        """Store ``{key: result}`` of calls made in this transaction, in one statement."""
        if results:
            now = utcnow()
            self.session.execute(insert(self._idempotency), [
                {"operation": operation, "key": key, "result": result, "created_at": now}
                for key, result in results.items()])


def session_factory(engine):
    return sessionmaker(engine, expire_on_commit=False)


def insert_unless_present(session, table, **conflict):
    """``INSERT … ON CONFLICT DO NOTHING`` into ``table`` on the two databases the platform runs on,
    to execute with a row or a list of rows (``session.execute(statement, rows)``: one statement,
    compiled once for any number of rows, not once per row count). For a row that two transactions
    may create at once: the second waits for the first and skips the row, where a look-up and an
    insert would fail on the key."""
    dml = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dml.insert(table).on_conflict_do_nothing(**conflict)

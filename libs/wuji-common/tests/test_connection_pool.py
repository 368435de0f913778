"""Pooled PostgreSQL connections: pinged only after idling, and a connection that died while idle
(a server restart, a dropped connection) is replaced, not handed to a transaction."""
import time

import pytest
from sqlalchemy import text

from wuji_common.db import make_engine
from wuji_common.testing import PG_BASE, backends

pytestmark = pytest.mark.skipif("postgresql" not in backends(), reason="PostgreSQL only")


@pytest.fixture
def engine(monkeypatch):
    engine = make_engine(f"{PG_BASE}/postgres", pool_size=1, max_overflow=0, ping_after_idle_seconds=0.2)
    pings = []
    original = engine.dialect.do_ping
    monkeypatch.setattr(engine.dialect, "do_ping", lambda conn: pings.append(1) or original(conn))
    yield engine, pings
    engine.dispose()


def backend_pid(engine):
    with engine.connect() as conn:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar()


def test_a_connection_used_a_moment_ago_is_not_pinged(engine):
    engine, pings = engine
    first = backend_pid(engine)
    for _ in range(5):
        assert backend_pid(engine) == first
    assert pings == []


def test_a_connection_that_died_while_idle_is_replaced_before_use(engine):
    engine, pings = engine
    dead = backend_pid(engine)
    killer = make_engine(f"{PG_BASE}/postgres", ping_after_idle_seconds=None)
    with killer.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": dead}).scalar()
    killer.dispose()
    time.sleep(0.3)
    assert backend_pid(engine) != dead   # the ping found it dead; a new connection served the call
    assert len(pings) == 1


def test_an_update_for_many_rows_goes_in_pages_not_one_round_trip_per_row(monkeypatch):
    """psycopg2's plain executemany runs one statement per row, a round trip each; the engine sends
    an UPDATE executed for many rows as pages of a batch (psycopg2.extras.execute_batch)."""
    import psycopg2.extras
    from sqlalchemy import Column, Integer, MetaData, Table, bindparam, insert, select, update
    batches = []
    original = psycopg2.extras.execute_batch
    monkeypatch.setattr(psycopg2.extras, "execute_batch",
                        lambda cur, sql, args, **kw: batches.append(len(args)) or original(cur, sql, args, **kw))
    engine = make_engine(f"{PG_BASE}/postgres", ping_after_idle_seconds=None)
    table = Table("many_rows", MetaData(), Column("id", Integer, primary_key=True), Column("n", Integer),
                  prefixes=["TEMPORARY"])
    try:
        with engine.begin() as conn:
            table.create(conn)
            conn.execute(insert(table), [{"id": i, "n": 0} for i in range(30)])
            conn.execute(update(table).where(table.c.id == bindparam("row")).values(n=bindparam("value")),
                         [{"row": i, "value": i * 2} for i in range(30)])
            assert conn.execute(select(table.c.n).order_by(table.c.id)).scalars().all() == [i * 2 for i in range(30)]
    finally:
        engine.dispose()
    assert batches == [30]

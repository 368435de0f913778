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

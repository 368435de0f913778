"""Pytest fixtures for Wuji's tests, used by every service's test suite and the cross-service suite
(``pytest_plugins = ["wuji_common.testing"]``).

- ``amqp_uri``: a RabbitMQ vhost of its own for this test session (created with rabbitmqctl, deleted
  after), on the broker at ``WUJI_TEST_AMQP`` (default 127.0.0.1:5672, guest/guest).
- ``db_url``: parametrised over SQLite (a fresh file) and the local PostgreSQL (a fresh database);
  PostgreSQL is ``WUJI_TEST_PG`` (default postgresql://postgres@127.0.0.1:5432) and is required
  unless ``WUJI_TEST_SKIP_PG=1`` is set.
"""
import os
import subprocess
import uuid

import pytest
from sqlalchemy import create_engine, pool, text

AMQP_HOST = os.environ.get("WUJI_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")
PG_BASE = os.environ.get("WUJI_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")
# intake encrypts contact data with keys from the environment; tests (and the processes they start)
# use this fixed test key unless one is given
TEST_CONTACT_KEY = "3Eg-u_FCtG5ZfHz4R8g3MfEsYs0c-a8es_0E3ReHdGA="
os.environ.setdefault("WUJI_CONTACT_KEYS", TEST_CONTACT_KEY)


def _rabbitmqctl(*args):
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def amqp_vhost():
    vhost = f"wuji-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield vhost
    _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def amqp_uri(amqp_vhost):
    return f"{AMQP_HOST}/{amqp_vhost}"


def new_postgres_database(prefix="wuji_test"):
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{PG_BASE}/postgres", isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{PG_BASE}/{name}", name


def drop_postgres_database(name):
    admin = create_engine(f"{PG_BASE}/postgres", isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def backends():
    return ["sqlite"] if os.environ.get("WUJI_TEST_SKIP_PG") == "1" else ["sqlite", "postgresql"]


@pytest.fixture(params=backends())
def db_url(request, tmp_path):
    """A fresh, empty database URL on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    url, name = new_postgres_database()
    yield url
    drop_postgres_database(name)

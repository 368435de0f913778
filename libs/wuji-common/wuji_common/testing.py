"""Pytest fixtures for Wuji's tests, used by every service's test suite and the cross-service suite
(``pytest_plugins = ["wuji_common.testing"]``).

- ``amqp_uri``: a RabbitMQ vhost of its own for this test session (created with rabbitmqctl, deleted
  after), on the broker at ``WUJI_TEST_AMQP`` (default 127.0.0.1:5672, guest/guest).
- ``db_url``: parametrised over SQLite (a fresh file) and the local PostgreSQL (a fresh database);
  PostgreSQL is ``WUJI_TEST_PG`` (default postgresql://postgres@127.0.0.1:5432) and is required
  unless ``WUJI_TEST_SKIP_PG=1`` is set.
- ``database_templates`` (:class:`DatabaseTemplates`): the five platform databases, prepared once per
  session and backend, copied for each platform a test starts.
"""
import json
import os
import sqlite3
import subprocess
import uuid
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from nameko.standalone import rpc as standalone_rpc
from sqlalchemy import create_engine, pool, text

from wuji_common import auth

AMQP_HOST = os.environ.get("WUJI_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")
PG_BASE = os.environ.get("WUJI_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")
# intake encrypts contact data with keys from the environment; tests (and the processes they start)
# use this fixed test key unless one is given
TEST_CONTACT_KEY = "3Eg-u_FCtG5ZfHz4R8g3MfEsYs0c-a8es_0E3ReHdGA="
os.environ.setdefault("WUJI_CONTACT_KEYS", TEST_CONTACT_KEY)


# --- tokens: a signing key of this test run; services (in-process or started as processes, which
# inherit the environment) verify with its public key, and call each other with their own tokens
_TEST_PRIVATE, _TEST_PUBLIC = auth.generate_key("wuji-test")
_TEST_SIGNING = auth.load_signing_key(json.dumps(_TEST_PRIVATE))


def issue_test_token(role, subject=None, ttl_seconds=3600, **scope):
    """A token signed with this run's key, e.g. ``issue_test_token("unit_clerk", unit_code="U1")``."""
    token, _ = auth.issue_token(_TEST_SIGNING, subject or f"staff:test-{role}", role,
                                ttl_seconds=ttl_seconds, **scope)
    return token


def as_caller(token):
    """``context_data`` for a standalone proxy calling with ``token``."""
    return {"authorization": auth.bearer(token)}


os.environ["WUJI_AUTH_PUBLIC_KEYS"] = json.dumps({"keys": [_TEST_PUBLIC]})
os.environ["WUJI_AUTH_ALLOW_ADMIN"] = "1"   # the suites act as many units at once (ADMIN_TOKEN)
for _service in ("intake", "triage", "enforcement", "notify", "metrics"):
    os.environ[f"WUJI_SERVICE_TOKEN_{_service.upper()}"] = issue_test_token(
        "service", f"service:{_service}", ttl_seconds=86400)
# the suites that test what services do (not who may do it) call as the platform administrator:
# any standalone proxy made without context_data, and the wuji command (WUJI_TOKEN), carry this
# token. The security suite passes scoped tokens of its own (as_caller).
ADMIN_TOKEN = issue_test_token("admin", "staff:test-admin", ttl_seconds=86400)
os.environ["WUJI_TOKEN"] = ADMIN_TOKEN
_standalone_init = standalone_rpc.StandaloneProxyBase.__init__


def _init_with_admin_token(self, config, context_data=None, *args, **kwargs):
    if context_data is None:
        context_data = as_caller(ADMIN_TOKEN)
    _standalone_init(self, config, context_data, *args, **kwargs)


standalone_rpc.StandaloneProxyBase.__init__ = _init_with_admin_token


def _rabbitmqctl(*args):
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def own_vhost(prefix):
    """The URI of a RabbitMQ vhost of the caller's own (``<prefix>-<random>``), deleted afterwards."""
    vhost = f"{prefix}-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield f"{AMQP_HOST}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


class DatabaseTemplates:
    """The five platform databases, migrated and loaded with reference data once per test session
    and backend (by the services' own ``db upgrade --load-reference``, as :meth:`Platform.prepare`
    runs it), then copied for each platform a test starts: SQLite files with SQLite's backup,
    PostgreSQL databases with ``CREATE DATABASE ... TEMPLATE``. A copy takes a fraction of a second
    where the five migrations and loads took five seconds of both cores, for every platform. The
    migrations and ``prepare`` itself are still tested on empty databases: here, each service's
    migration tests, ``make run``'s tests and the two-instances test."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self._prepared = {}      # backend → {service: template URL}
        self._postgres = {}      # service → template database name (dropped at the end)

    def prepared(self, backend):
        """{service: URL} of the prepared databases on ``backend``, made on first use."""
        from wuji_common.local_platform import SERVICES, Platform
        if backend not in self._prepared:
            if backend == "sqlite":
                urls = Platform.sqlite_urls(self.folder / "sqlite")
                (self.folder / "sqlite").mkdir(parents=True, exist_ok=True)
            else:
                urls = {}
                for service in SERVICES:
                    urls[service], self._postgres[service] = new_postgres_database(f"wuji_template_{service}")
            Platform("amqp://unused", urls, self.folder / "log" / backend).prepare(queues=False)
            self._prepared[backend] = urls
        return self._prepared[backend]

    def copy(self, backend, folder):
        """Fresh copies on ``backend`` ("sqlite": files under ``folder``): (service → URL, names of
        the PostgreSQL databases made, for :func:`drop_postgres_database`)."""
        from wuji_common.local_platform import Platform
        templates = self.prepared(backend)
        if backend == "sqlite":
            urls = Platform.sqlite_urls(folder)
            Path(folder).mkdir(parents=True, exist_ok=True)
            for service, url in urls.items():
                with closing(sqlite3.connect(_sqlite_path(templates[service]))) as source, \
                        closing(sqlite3.connect(_sqlite_path(url))) as target:
                    source.backup(target)
            return urls, []
        urls, names = {}, []
        for service, template in self._postgres.items():
            urls[service], name = new_postgres_database(f"wuji_e2e_{service}", template=template)
            names.append(name)
        return urls, names

    def drop(self):
        for name in self._postgres.values():
            drop_postgres_database(name)


def _sqlite_path(url):
    return url.removeprefix("sqlite:///")


@pytest.fixture(scope="session")
def database_templates(tmp_path_factory):
    templates = DatabaseTemplates(tmp_path_factory.mktemp("database-templates"))
    yield templates
    templates.drop()


@contextmanager
def running_platform(amqp_vhost, folder, label, env=None, mailbox=True, templates=None):
    """The five services as processes on a vhost of their own (named after ``amqp_vhost`` and
    ``label``) and SQLite databases under ``folder`` (copies of ``templates``, a
    :class:`DatabaseTemplates`, when given), with a local mailbox unless ``mailbox=False``;
    yields the started Platform (``.vhost``, ``.mailbox``) and stops everything afterwards."""
    from wuji_common.local_platform import Mailbox, Platform
    with own_vhost(f"{amqp_vhost}-{label}") as amqp_uri:
        box = Mailbox(folder).start() if mailbox else None
        db_urls = templates.copy("sqlite", folder)[0] if templates else Platform.sqlite_urls(folder)
        platform = Platform(amqp_uri, db_urls, folder / "log",
                            env={**(box.env() if box else {}), **(env or {})})
        platform.vhost, platform.mailbox = amqp_uri.rsplit("/", 1)[1], box
        try:
            platform.prepare(databases=templates is None)
            platform.start()
            yield platform
        finally:
            platform.stop()
            if box:
                box.stop()


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


def new_postgres_database(prefix="wuji_test", template=None):
    """A new database (a copy of the database ``template`` when given): (URL, name)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{PG_BASE}/postgres", isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
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

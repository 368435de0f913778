"""Fixtures of enforcement's tests: databases migrated with enforcement's own Alembic history and
loaded with the reference data that ships in the package, and units of work on them."""
import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from enforcement import cli
from enforcement.models import metadata, outbox
from wuji_common.db import UnitOfWork, make_engine, session_factory
from wuji_common.migrations import upgrade

MIGRATIONS = Path(cli.__file__).parent / "migrations"


def prepare(url):
    """Migrate an empty database to head and load the shipped reference data."""
    upgrade(MIGRATIONS, url)
    engine = make_engine(url)
    cli.load_reference(UnitOfWork(session_factory(engine), metadata, "enforcement"))
    engine.dispose()
    return url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    path = tmp_path_factory.mktemp("enforcement-template") / "enforcement.db"
    prepare(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(sqlite_template, tmp_path):
    """A migrated SQLite database with the reference data, copied from a template (fast)."""
    path = tmp_path / "enforcement.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


class Database:
    """Units of work on one database, and a look into its outbox."""

    def __init__(self, url):
        self.url = url
        self.engine = make_engine(url)
        self.sessions = session_factory(self.engine)

    def uow(self):
        return UnitOfWork(self.sessions, metadata, "enforcement")

    def events(self, event_type=None):
        with self.engine.connect() as conn:
            rows = conn.execute(select(outbox.c.payload).order_by(outbox.c.id)).scalars().all()
        envelopes = [json.loads(r) for r in rows]
        return [e for e in envelopes if event_type is None or e["type"] == event_type]


@pytest.fixture
def db(sqlite_url):
    database = Database(sqlite_url)
    yield database
    database.engine.dispose()


@pytest.fixture
def any_db(db_url):
    """The same, on each backend (SQLite and PostgreSQL), migrated from empty."""
    database = Database(prepare(db_url))
    yield database
    database.engine.dispose()

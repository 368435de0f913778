"""Alembic helpers: one migration history per service, each in ``<service>/migrations``.

A service's ``migrations/env.py`` is two lines (import its metadata, call :func:`run_env`), and
``<service> db upgrade`` / :func:`upgrade` run it programmatically against ``DB_URL``.
"""
import re
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import pool

from wuji_common.db import make_engine, normalize_url


def alembic_config(migrations_dir, url):
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(migrations_dir, url, revision="head"):
    ensure_database(url)
    command.upgrade(alembic_config(Path(migrations_dir), url), revision)


def ensure_database(url):
    """Create the PostgreSQL database named in ``url`` if it does not exist (one per service);
    SQLite creates its file itself, but its folder must exist."""
    from sqlalchemy.engine import make_url
    u = make_url(normalize_url(url))
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        return
    if u.get_backend_name() == "postgresql":
        from sqlalchemy import create_engine, text
        admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT",
                              poolclass=pool.NullPool)
        with admin.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"),
                                  {"n": u.database}).first()
            if not exists:
                # an identifier cannot be a bound parameter: the name is checked instead
                if not re.fullmatch(r"[A-Za-z0-9_]+", u.database or ""):
                    raise ValueError(f"database name {u.database!r}: letters, digits and _ only")
                conn.execute(text(f'CREATE DATABASE "{u.database}"'))
        admin.dispose()


def run_env(target_metadata):
    """Body of every service's alembic env.py."""
    url = context.config.get_main_option("sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(url, poolclass=pool.NullPool) if not url.startswith("sqlite") \
        else make_engine(url)
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # replicas of a service starting together must not migrate at the same time: the
            # first takes the lock and migrates, the others wait and then find nothing to do
            connection.exec_driver_sql("SELECT pg_advisory_lock(7190254)")
            connection.commit()
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=url.startswith("sqlite"))
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()

"""The test suites' prepared databases: each copy holds what the services' own migrations and
reference load put in the template, and is a database of its own (a write to one shows in no other)."""
import pytest
from sqlalchemy import create_engine, inspect, pool, text

from wuji_common.testing import DatabaseTemplates, backends, drop_postgres_database


def row_counts(url):
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return {table: conn.execute(text(f'SELECT count(*) FROM "{table}"')).scalar()
                    for table in inspect(conn).get_table_names()}
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", backends())
def test_copies_hold_the_prepared_reference_data_and_are_independent(backend, tmp_path):
    templates = DatabaseTemplates(tmp_path / "templates")
    made = []
    try:
        first, names = templates.copy(backend, tmp_path / "first")
        made += names
        second, names = templates.copy(backend, tmp_path / "second")
        made += names
        prepared = templates.prepared(backend)
        for service, url in first.items():
            counts = row_counts(url)
            assert counts == row_counts(prepared[service]), service
            assert "alembic_version" in counts, service      # migrated by the service's own history
        divisions = row_counts(prepared["intake"])["divisions"]
        engine = create_engine(first["intake"], poolclass=pool.NullPool)
        with engine.begin() as conn:     # Yicheng's seven towns, loaded
            assert conn.execute(text("SELECT count(*) FROM divisions WHERE level = 'town'")).scalar() == 7
            conn.execute(text("DELETE FROM divisions"))
        engine.dispose()
        assert row_counts(first["intake"])["divisions"] == 0
        assert row_counts(second["intake"])["divisions"] == divisions > 7
        assert row_counts(prepared["intake"])["divisions"] == divisions
    finally:
        for name in made:
            drop_postgres_database(name)
        templates.drop()

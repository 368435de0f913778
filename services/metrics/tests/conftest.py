import importlib.util
from pathlib import Path

import pytest

from metrics.models import metadata
from wuji_common.db import UnitOfWork, make_engine, session_factory
from wuji_common.migrations import upgrade

HERE = Path(__file__).resolve().parent
MIGRATIONS = HERE.parent / "metrics" / "migrations"


def _load_story():
    # pytest's importlib mode puts no test folder on sys.path: load the shared scenario by its path
    spec = importlib.util.spec_from_file_location("metrics_tests_story", HERE / "story.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STORY = _load_story()


@pytest.fixture
def story():
    """The week of events in tests/story.py and the KPI counts it must give."""
    return STORY


@pytest.fixture
def metrics_db(db_url):
    """metrics' database, migrated; yields (url, unit-of-work factory)."""
    upgrade(MIGRATIONS, db_url)
    engine = make_engine(db_url)
    factory = session_factory(engine)
    yield db_url, (lambda: UnitOfWork(factory, metadata, "metrics"))
    engine.dispose()

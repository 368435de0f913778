from pathlib import Path

import pytest

from intake import handlers
from intake.models import metadata
from wuji_common import reference
from wuji_common.db import UnitOfWork, make_engine, session_factory
from wuji_common.migrations import upgrade

MIGRATIONS = Path(__file__).resolve().parents[1] / "intake" / "migrations"


@pytest.fixture
def intake_db(db_url):
    """intake's database, migrated and loaded with the reference divisions."""
    upgrade(MIGRATIONS, db_url)
    engine = make_engine(db_url)
    factory = session_factory(engine)
    handlers.load_divisions(UnitOfWork(factory, metadata, "intake"), list(reference.divisions()))
    yield db_url, (lambda: UnitOfWork(factory, metadata, "intake"))
    engine.dispose()


@pytest.fixture
def appeal_payload():
    return {
        "channel": "web",
        "title": "小区门口道路破损",
        "content": "阴平镇金寺村村口道路坑洼，雨天积水，老人孩子出行不便，请尽快修复。",
        "citizen": {"name": "张三", "phone": "13812345678", "id_number": "11010519491231002X"},
        "location": {"town_code": "370404101", "village": "370404101201", "address": "金寺村东头12号"},
    }

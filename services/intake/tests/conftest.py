import uuid
from pathlib import Path

import pytest

from intake import handlers
from intake.models import metadata
from wuji_common import reference
from wuji_common.db import UnitOfWork, make_engine, session_factory
from wuji_common.migrations import upgrade
from wuji_common.testing import own_vhost
from wuji_common.testing_helpers import free_port

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


OPEN311_API_KEY = "test-key-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def module_amqp_uri(amqp_vhost):
    """A vhost of the test module's own: its queues' retry settings differ from other suites' ones."""
    with own_vhost(amqp_vhost) as uri:
        yield uri


@pytest.fixture(scope="module")
def intake_and_triage(module_amqp_uri, tmp_path_factory):
    """intake (with the Open311 endpoint) and triage (routing, the catalogue) as running containers,
    on SQLite and a vhost of the module's own; yields the API's URLs, a unit of work on intake's
    database and the broker config."""
    from nameko.containers import ServiceContainer

    from intake.service import IntakeService
    from triage import handlers as triage_handlers
    from triage.models import metadata as triage_metadata
    from triage.service import TriageService
    from wuji_common.topology import declare

    folder = tmp_path_factory.mktemp("open311")
    urls = {s: f"sqlite:///{folder / s}.db" for s in ("intake", "triage")}
    services = Path(__file__).resolve().parents[2]
    upgrade(services / "intake" / "intake" / "migrations", urls["intake"])
    upgrade(services / "triage" / "triage" / "migrations", urls["triage"])
    engines = {s: make_engine(u) for s, u in urls.items()}
    intake_uow = lambda: UnitOfWork(session_factory(engines["intake"]), metadata, "intake")  # noqa: E731
    handlers.load_divisions(intake_uow(), list(reference.divisions()))
    triage_handlers.load_reference(UnitOfWork(session_factory(engines["triage"]), triage_metadata, "triage"),
                                   list(reference.divisions()), list(reference.units()))
    port = free_port()
    common = {"AMQP_URI": module_amqp_uri, "METRICS_PORT": 0, "EVENT_RETRY_DELAYS": [0.2, 0.5],
              "OUTBOX_POLL_SECONDS": 0.2}
    declare(module_amqp_uri, [IntakeService, TriageService], retry_delays=[0.2, 0.5])
    containers = [
        ServiceContainer(TriageService, {**common, "DB_URL": urls["triage"], "CLASSIFIER": "off"}),
        ServiceContainer(IntakeService, {**common, "DB_URL": urls["intake"], "CITIZEN_KEY": "k",
                                         "WEB_SERVER_ADDRESS": f"127.0.0.1:{port}",
                                         "OPEN311_API_KEYS": f"test-client:{OPEN311_API_KEY}"}),
    ]
    for container in containers:
        container.start()
    yield {"api": f"http://127.0.0.1:{port}", "base": f"http://127.0.0.1:{port}/open311/v2",
           "uow": intake_uow, "config": common, "api_key": OPEN311_API_KEY}
    for container in containers:
        container.stop()
    for engine in engines.values():
        engine.dispose()

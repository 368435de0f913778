"""The same rules on each backend (SQLite and PostgreSQL): migrations, the command, the whole path of
an operation, and the watcher's claim when another instance holds a row."""
from datetime import datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, text

from enforcement import cli, handlers
from enforcement.models import CalledForce, metadata
from wuji_common.db import UnitOfWork, make_engine, session_factory

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=timezone.utc)
SHORE = ["transport", "public_security"]  # overloaded_transport: lead, then assist


def test_migrations_build_what_the_models_describe(any_db):
    with any_db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_the_command_migrates_and_loads_reference_data(db_url, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["db", "upgrade", "--db-url", db_url])
    assert done.value.code == 0
    with pytest.raises(SystemExit) as done:
        cli.main(["load-reference", "--db-url", db_url])
    assert done.value.code == 0
    assert "loaded 776 reference rows" in capsys.readouterr().out


def test_an_operation_from_whistle_to_completion(any_db):
    op = handlers.blow_whistle(any_db.uow(), {
        "order_no": "GD20261125000007", "violation_type": "overloaded_transport",
        "town_code": "370404102", "urgency": "urgent"}, "w-1", now=T0)
    oid = op["operation_id"]
    assert [f["force_code"] for f in op["forces"]] == SHORE
    assert op["whistle_at"] == "2026-11-25T08:00:00+00:00"
    assert handlers.blow_whistle(any_db.uow(), {
        "order_no": "GD20261125000007", "violation_type": "overloaded_transport",
        "town_code": "370404102", "urgency": "urgent"}, "w-1") == op

    assert handlers.mark_overdue(any_db.uow(), now=T0 + timedelta(minutes=119)) == []
    handlers.report_in(any_db.uow(), {"operation_id": oid, "force_code": "transport",
                                      "team": "transport-370404102"}, "r-1", now=T0 + timedelta(minutes=5))
    assert handlers.mark_overdue(any_db.uow(), now=T0 + timedelta(minutes=121)) == \
        [(oid, "public_security")]
    late = handlers.report_in(any_db.uow(), {"operation_id": oid, "force_code": "public_security",
                                             "team": "public_security-370404102"}, "r-1",
                              now=T0 + timedelta(minutes=130))
    assert late == {"operation_id": oid, "force_code": "public_security",
                    "team": "public_security-370404102", "reported_at": "2026-11-25T10:10:00+00:00",
                    "within_deadline": False, "operation_status": "assembled"}
    done = handlers.complete_operation(any_db.uow(), {"operation_id": oid, "outcome": "已卸载超限货物"},
                                       "c-1", now=T0 + timedelta(hours=4))
    assert done["status"] == "completed"
    assert [e["type"] for e in any_db.events()] == [
        "whistle_blown", "force_reported_in", "force_report_in_overdue", "force_reported_in",
        "operation_completed"]


def test_the_watcher_skips_a_force_another_instance_holds(any_db):
    if not any_db.url.startswith("postgresql"):
        pytest.skip("row locks are PostgreSQL's; SQLite serialises writers instead")
    op = handlers.blow_whistle(any_db.uow(), {
        "order_no": None, "violation_type": "overloaded_transport", "town_code": "370404102",
        "urgency": "emergency"}, None, now=T0)
    oid = op["operation_id"]
    later = T0 + timedelta(hours=1)
    # a second engine whose lock waits fail fast: were the claim not SKIP LOCKED, this test would
    # fail on the lock timeout instead of hanging
    impatient = make_engine(any_db.url, connect_args={"options": "-c lock_timeout=2000"})
    other = any_db.engine.connect()
    tx = other.begin()
    other.execute(select(CalledForce.force_code).where(
        CalledForce.operation_id == oid, CalledForce.force_code == "transport").with_for_update())
    try:
        watcher_uow = UnitOfWork(session_factory(impatient), metadata, "enforcement")
        assert handlers.mark_overdue(watcher_uow, now=later) == [(oid, "public_security")]
    finally:
        tx.rollback()
        other.close()
    assert handlers.mark_overdue(any_db.uow(), now=later) == [(oid, "transport")]
    assert handlers.mark_overdue(any_db.uow(), now=later) == []
    impatient.dispose()
    with any_db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM called_forces WHERE status = 'overdue'")).scalar() == 2

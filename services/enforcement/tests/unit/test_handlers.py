"""The use cases on a real SQLite unit of work (migrated, reference data loaded): whistle, report-in,
completion, the deadline watcher, queries, and reference loading."""
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from enforcement import cli, handlers
from enforcement.models import CalledForce, Competence, Operation, Team
from wuji_common.errors import InvalidTransition, NotFound, NotYourOrder, ValidationError

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=timezone.utc)
GUSHAO = "370404100"  # 古邵镇
MINING = ["natural_resources", "public_security", "ecology_environment", "emergency_management"]


def whistle(db, order_no="GD20261125000001", violation_type="illegal_mining", town_code=GUSHAO,
            urgency="emergency", key=None, now=T0):
    return handlers.blow_whistle(db.uow(), {
        "order_no": order_no, "violation_type": violation_type, "town_code": town_code,
        "urgency": urgency}, key, now=now)


def report(db, operation_id, force_code, team=None, key=None, now=T0 + timedelta(minutes=10)):
    return handlers.report_in(db.uow(), {
        "operation_id": operation_id, "force_code": force_code,
        "team": team or f"{force_code}-{GUSHAO}"}, key, now=now)


def complete(db, operation_id, outcome="已责令停止开采，依法立案查处", key=None,
             now=T0 + timedelta(hours=3)):
    return handlers.complete_operation(db.uow(), {"operation_id": operation_id, "outcome": outcome},
                                       key, now=now)


def count(db, model):
    with db.uow() as uow:
        return uow.session.scalar(select(func.count()).select_from(model))


# --- blow the whistle (吹哨) -----------------------------------------------------------------------

def test_whistle_calls_the_competent_forces_of_the_town_with_a_deadline(db):
    op = whistle(db)

    assert op["operation_id"].startswith("CZ20261125")
    assert op["status"] == "called" and op["town_name"] == "古邵镇" and op["violation_name"] == "非法采矿"
    assert [f["force_code"] for f in op["forces"]] == MINING
    assert [f["role"] for f in op["forces"]] == ["lead", "assist", "assist", "assist"]
    assert op["forces"][1]["assigned_team"] == "public_security-370404100"
    assert op["forces"][1]["assigned_team_name"] == "峄城分局古邵派出所"
    assert {f["status"] for f in op["forces"]} == {"called"}
    due = "2026-11-25T08:30:00+00:00"  # emergency: 30 minutes
    assert op["report_in_due_at"] == due and {f["report_in_due_at"] for f in op["forces"]} == {due}

    [event] = db.events("whistle_blown")
    assert event["source"] == "enforcement" and event["case_no"] is None
    assert event["data"] == {
        "operation_id": op["operation_id"], "order_no": "GD20261125000001", "town_code": GUSHAO,
        "violation_type": "illegal_mining", "forces": MINING, "report_in_due_at": due}


def test_the_deadline_depends_on_urgency_and_violation_type(db):
    normal = whistle(db, order_no=None, violation_type="road_occupation", urgency="normal")
    fire = whistle(db, order_no=None, violation_type="fire_hazard", urgency="emergency")
    assert normal["report_in_due_at"] == "2026-11-26T08:00:00+00:00"
    assert fire["report_in_due_at"] == "2026-11-25T08:15:00+00:00"


@pytest.mark.parametrize("change, field", [
    ({"violation_type": "jaywalking"}, "violation_type"),
    ({"town_code": "370404999"}, "town_code"),
    ({"urgency": "whenever"}, "urgency"),
    ({"town_code": None}, "town_code"),
])
def test_whistle_with_unknown_input_names_the_field_and_writes_nothing(db, change, field):
    payload = {"order_no": "GD1", "violation_type": "illegal_mining", "town_code": GUSHAO,
               "urgency": "urgent", **change}
    with pytest.raises(ValidationError) as err:
        handlers.blow_whistle(db.uow(), payload, "k1")
    assert list(err.value.fields) == [field]
    assert count(db, Operation) == 0 and db.events() == []


def test_a_retried_whistle_returns_the_first_operation_once(db):
    first = whistle(db, key="town-370404100-0001")
    again = whistle(db, key="town-370404100-0001", now=T0 + timedelta(minutes=1))
    assert again == first
    assert count(db, Operation) == 1 and len(db.events("whistle_blown")) == 1


def test_an_order_has_one_open_operation_at_a_time(db):
    op = whistle(db, key="a")
    with pytest.raises(InvalidTransition, match=op["operation_id"]):
        whistle(db, key="b")
    for force in MINING:
        report(db, op["operation_id"], force)
    complete(db, op["operation_id"])
    # reworked after the citizen's rating (返工): the town may blow the whistle again
    assert whistle(db, key="c")["operation_id"] != op["operation_id"]


# --- report in (报到) ------------------------------------------------------------------------------

def test_report_in_is_recorded_and_the_last_one_assembles_the_operation(db):
    op = whistle(db)
    oid = op["operation_id"]
    results = [report(db, oid, force) for force in MINING]

    assert [r["operation_status"] for r in results] == ["called", "called", "called", "assembled"]
    assert all(r["within_deadline"] for r in results)
    view = handlers.get_operation(db.uow(), oid)
    assert view["status"] == "assembled" and view["version"] == 5
    assert {f["status"] for f in view["forces"]} == {"reported_in"}
    assert view["forces"][0]["team_name"] == "古邵镇自然资源和规划所"
    events = db.events("force_reported_in")
    assert [e["data"]["force_code"] for e in events] == MINING
    assert events[0]["data"] == {"operation_id": oid, "force_code": "natural_resources",
                                 "team": "natural_resources-370404100", "within_deadline": True}


def test_a_force_may_report_in_with_a_team_from_another_town(db):
    op = whistle(db)
    result = report(db, op["operation_id"], "public_security", team="public_security-370404101")
    assert result["team"] == "public_security-370404101"


def test_late_report_in_is_accepted_and_marked_late(db):
    op = whistle(db)
    result = report(db, op["operation_id"], "public_security", now=T0 + timedelta(minutes=31))
    assert result["within_deadline"] is False
    assert db.events("force_reported_in")[-1]["data"]["within_deadline"] is False


def test_a_force_that_was_not_called_is_told_so(db):
    op = whistle(db)
    with pytest.raises(NotYourOrder):
        report(db, op["operation_id"], "health")
    assert db.events("force_reported_in") == []


@pytest.mark.parametrize("force, team, field", [
    ("army", "army-1", "force_code"),
    ("public_security", "water-370404100", "team"),
    ("public_security", "no-such-team", "team"),
])
def test_report_in_with_an_unknown_force_or_team_names_the_field(db, force, team, field):
    op = whistle(db)
    with pytest.raises(ValidationError) as err:
        report(db, op["operation_id"], force, team=team)
    assert list(err.value.fields) == [field]


def test_report_in_to_an_unknown_operation_is_not_found(db):
    with pytest.raises(NotFound):
        report(db, "CZ20261125999999", "public_security")


def test_a_retried_report_in_returns_the_first_result_once(db):
    op = whistle(db)
    first = report(db, op["operation_id"], "public_security", key="ps-1")
    again = report(db, op["operation_id"], "public_security", key="ps-1",
                   now=T0 + timedelta(hours=5))
    assert again == first and again["within_deadline"] is True
    assert len(db.events("force_reported_in")) == 1
    # the same key from another force is that force's own call
    other = report(db, op["operation_id"], "natural_resources", key="ps-1")
    assert other["force_code"] == "natural_resources"


def test_reporting_in_twice_without_the_key_is_refused(db):
    op = whistle(db)
    report(db, op["operation_id"], "public_security", key="first")
    with pytest.raises(InvalidTransition, match="已于"):
        report(db, op["operation_id"], "public_security", key="second")
    assert len(db.events("force_reported_in")) == 1


# --- complete --------------------------------------------------------------------------------------

def test_completion_waits_for_every_called_force(db):
    op = whistle(db)
    report(db, op["operation_id"], "natural_resources")
    with pytest.raises(InvalidTransition) as err:
        complete(db, op["operation_id"])
    assert err.value.args[1] == {"not_reported_in": ["ecology_environment", "emergency_management",
                                                     "public_security"]}
    assert db.events("operation_completed") == []


def test_completion_closes_the_operation_and_tells_triage(db):
    op = whistle(db)
    for force in MINING:
        report(db, op["operation_id"], force)
    done = complete(db, op["operation_id"], key="done-1")

    assert done["status"] == "completed" and done["status_text"] == "联合执法已完成"
    assert done["completed_at"] == "2026-11-25T11:00:00+00:00"
    assert done["outcome"] == "已责令停止开采，依法立案查处"
    [event] = db.events("operation_completed")
    assert event["data"] == {"operation_id": op["operation_id"], "order_no": "GD20261125000001",
                             "town_code": GUSHAO, "outcome": "已责令停止开采，依法立案查处"}
    assert complete(db, op["operation_id"], key="done-1") == done
    with pytest.raises(InvalidTransition, match="已完成"):
        complete(db, op["operation_id"], key="done-2")
    assert len(db.events("operation_completed")) == 1


def test_completion_needs_an_outcome(db):
    op = whistle(db)
    with pytest.raises(ValidationError) as err:
        complete(db, op["operation_id"], outcome="")
    assert list(err.value.fields) == ["outcome"]


def test_an_overlong_idempotency_key_is_refused(db):
    with pytest.raises(ValidationError) as err:
        whistle(db, key="k" * 65)
    assert list(err.value.fields) == ["idempotency_key"]


# --- the report-in deadline watcher ----------------------------------------------------------------

def test_forces_past_the_deadline_are_marked_late_once(db):
    op = whistle(db)  # due 08:30
    oid = op["operation_id"]
    report(db, oid, "natural_resources")  # in time: never overdue

    assert handlers.mark_overdue(db.uow(), now=T0 + timedelta(minutes=30)) == []  # at the deadline
    marked = handlers.mark_overdue(db.uow(), now=T0 + timedelta(minutes=31))
    assert sorted(marked) == sorted((oid, f) for f in MINING[1:])
    assert handlers.mark_overdue(db.uow(), now=T0 + timedelta(minutes=45)) == []

    events = db.events("force_report_in_overdue")
    assert sorted(e["data"]["force_code"] for e in events) == sorted(MINING[1:])
    assert events[0]["data"]["report_in_due_at"] == "2026-11-25T08:30:00+00:00"
    assert events[0]["data"]["marked_at"] == "2026-11-25T08:31:00+00:00"
    assert events[0]["data"]["order_no"] == "GD20261125000001"
    view = handlers.get_operation(db.uow(), oid)
    assert [f["status"] for f in view["forces"]] == ["reported_in", "overdue", "overdue", "overdue"]


def test_a_late_force_still_reports_in_and_the_lateness_stays_on_record(db):
    op = whistle(db)
    oid = op["operation_id"]
    handlers.mark_overdue(db.uow(), now=T0 + timedelta(minutes=31))
    result = report(db, oid, "public_security", now=T0 + timedelta(minutes=40))
    assert result["within_deadline"] is False
    ps = next(f for f in handlers.get_operation(db.uow(), oid)["forces"]
              if f["force_code"] == "public_security")
    assert ps["status"] == "reported_in" and ps["overdue_at"] == "2026-11-25T08:31:00+00:00"
    for force in MINING:
        if force != "public_security":
            report(db, oid, force, now=T0 + timedelta(minutes=50))
    assert complete(db, oid)["status"] == "completed"


def test_the_watcher_works_in_batches(db):
    for n in range(3):
        whistle(db, order_no=f"GD{n}")
    later = T0 + timedelta(hours=1)
    assert len(handlers.mark_overdue(db.uow(), now=later, batch_size=5)) == 5
    assert len(handlers.mark_overdue(db.uow(), now=later, batch_size=5)) == 5
    assert len(handlers.mark_overdue(db.uow(), now=later, batch_size=5)) == 2
    assert len(db.events("force_report_in_overdue")) == 12


# --- queries ---------------------------------------------------------------------------------------

def test_find_operations_by_town_and_status(db):
    a = whistle(db, order_no="GD1")
    b = whistle(db, order_no="GD2", town_code="370404001", violation_type="road_occupation")
    for force in MINING:
        report(db, a["operation_id"], force)

    found = handlers.find_operations(db.uow())
    assert [o["operation_id"] for o in found] == [b["operation_id"], a["operation_id"]]
    assert found[1]["forces"] == handlers.get_operation(db.uow(), a["operation_id"])["forces"]
    assert [o["operation_id"] for o in handlers.find_operations(db.uow(), town_code=GUSHAO)] == \
        [a["operation_id"]]
    assert [o["operation_id"] for o in handlers.find_operations(db.uow(), status="called")] == \
        [b["operation_id"]]
    assert handlers.find_operations(db.uow(), town_code="370404101", status="assembled") == []
    with pytest.raises(ValidationError) as err:
        handlers.find_operations(db.uow(), status="lost")
    assert list(err.value.fields) == ["status"]


def test_get_unknown_operation_is_not_found(db):
    with pytest.raises(NotFound):
        handlers.get_operation(db.uow(), "CZ20261125999999")


def test_the_forces_serving_a_town(db):
    forces = handlers.town_forces(db.uow(), GUSHAO)
    assert len(forces) == 13
    assert forces[0] == {"force_code": "public_security", "force_name": "公安", "unit_code": "dept-police",
                         "teams": [{"team": "public_security-370404100", "team_name": "峄城分局古邵派出所"}]}
    with pytest.raises(ValidationError) as err:
        handlers.town_forces(db.uow(), "110101001")
    assert list(err.value.fields) == ["town_code"]


def test_a_phone_number_in_the_outcome_does_not_leave_in_the_event(db):
    op = whistle(db)
    for force in MINING:
        report(db, op["operation_id"], force)
    done = complete(db, op["operation_id"], outcome="已约谈矿主（电话13912345678），责令停止开采")
    assert done["outcome"] == "已约谈矿主（电话[电话已隐藏]），责令停止开采"
    assert "13912345678" not in str(db.events())


# --- reference data --------------------------------------------------------------------------------

def test_reloading_the_reference_data_changes_nothing(db):
    before = count(db, Team), count(db, Competence)
    cli.load_reference(db.uow())
    assert (count(db, Team), count(db, Competence)) == before == (95, 51)

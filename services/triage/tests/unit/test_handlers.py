"""triage's use cases against a real database (SQLite and PostgreSQL), no broker."""
import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.orm.exc import StaleDataError

from triage import handlers
from triage.models import ProgressNote, WorkOrder, processed_events
from wuji_common import reference
from wuji_common.errors import InvalidTransition, NotFound, NotYourOrder, ValidationError
from wuji_common.events import make_event

CONSUMER = "triage.on_appeal_received"
JINSI, YINPING = "370404101201", "370404101"
GRID = f"grid-{JINSI}"
T0 = datetime(2026, 11, 25, 8, 0, tzinfo=timezone.utc)


@pytest.fixture
def db(triage_db):
    return triage_db[1]


@pytest.fixture
def dispatched(db, router, appeal_received):
    """An appeal routed to 金寺村's grid worker at T0; returns its order number."""
    routed = handlers.dispatch_appeal(db(), router, CONSUMER, appeal_received(), now=T0)
    return routed["order_no"]


def orders(db):
    with db() as uow:
        rows = uow.session.execute(select(WorkOrder).order_by(WorkOrder.id)).scalars().all()
        uow.session.expunge_all()  # keep them readable after the unit of work rolls back
        return rows


def of_type(events, event_type):
    return [e for e in events if e["type"] == event_type]


def accept(db, order_no, unit=GRID, key="k-accept", at=None):
    return handlers.accept_order(db(), order_no, unit, key, now=at or T0 + timedelta(minutes=10))


# --- dispatch ---------------------------------------------------------------------------------

def test_an_appeal_becomes_one_order_routed_with_deadlines(db, dispatched, outbox_events, taxonomy, router):
    [order] = orders(db)
    assert order.order_no == dispatched and dispatched.startswith("GD20261125") and len(dispatched) == 16
    assert (order.case_no, order.unit_code, order.unit_name) == ("YC20261125000001", GRID, "金寺村网格员")
    assert (order.level, order.category, order.item, order.status) == (
        "grid", "municipal", "street-lights", "dispatched")
    assert (order.taxonomy_version, order.router_version) == (taxonomy.version, router.version)
    assert order.accept_hours == 1 and order.resolve_hours == 72
    [event] = outbox_events(db)
    assert event["type"] == "order_dispatched" and event["source"] == "triage"
    data = event["data"]
    assert data["unit_code"] == GRID and data["status"] == "dispatched" and data["policy"] == "normal"
    assert data["accept_due_at"] == (T0 + timedelta(hours=1)).isoformat()
    assert data["resolve_due_at"] == (T0 + timedelta(days=3)).isoformat()
    assert data["router_version"] == router.version and data["title"] == "村口路灯不亮"


def test_the_same_appeal_delivered_twice_makes_one_order(db, router, appeal_received, outbox_events):
    envelope = appeal_received()
    assert handlers.dispatch_appeal(db(), router, CONSUMER, envelope) is not None
    assert handlers.dispatch_appeal(db(), router, CONSUMER, envelope) is None
    # announced again under another event id: still one order
    again = appeal_received()
    assert handlers.dispatch_appeal(db(), router, CONSUMER, again) is None
    assert len(orders(db)) == 1 and len(outbox_events(db)) == 1


def test_the_active_order_is_unique_per_case_in_the_database(db, dispatched):
    [order] = orders(db)
    with db() as uow:
        clone = {c.key: getattr(order, c.key) for c in WorkOrder.__table__.columns if c.key != "id"}
        uow.session.add(WorkOrder(**{**clone, "order_no": "GD-clone"}))
        with pytest.raises(Exception) as err:
            uow.session.flush()
        assert "unique" in str(err.value).lower()


def test_an_appeal_for_an_unknown_town_fails_and_leaves_nothing_behind(db, router, appeal_received):
    envelope = appeal_received(town_code="370404999", village_code=None)
    with pytest.raises(ValidationError) as err:
        handlers.dispatch_appeal(db(), router, CONSUMER, envelope)
    assert "town_code" in err.value.fields
    with db() as uow:  # not even the dedup record: a retry runs again
        assert uow.session.execute(select(processed_events)).all() == []
    assert orders(db) == []


def test_a_village_outside_the_town_is_ignored_and_the_town_office_takes_it(db, router, appeal_received):
    handlers.dispatch_appeal(db(), router, CONSUMER, appeal_received(village_code="370404102201"))
    [order] = orders(db)
    assert (order.unit_code, order.level, order.village_code) == (f"town-{YINPING}", "town", None)


def test_urgent_and_district_routing_from_the_event(db, router, appeal_received, outbox_events):
    envelope = appeal_received(title="小区燃气泄漏", content="楼道里闻到很浓的煤气味", village_code=None)
    handlers.dispatch_appeal(db(), router, CONSUMER, envelope, now=T0)
    [order] = orders(db)
    assert (order.unit_code, order.level, order.urgent, order.policy) == ("dept-housing", "district", True, "urgent")
    assert order.resolve_due_at.replace(tzinfo=timezone.utc) == T0 + timedelta(hours=4)
    assert outbox_events(db)[0]["data"]["policy"] == "urgent"


# --- accept -----------------------------------------------------------------------------------

def test_accept_records_it_and_says_whether_it_was_in_time(db, dispatched, outbox_events):
    result = accept(db, dispatched)
    assert result["status"] == "accepted" and result["accepted_at"].startswith("2026-11-25T08:10")
    event = of_type(outbox_events(db), "order_accepted")[0]
    assert event["data"]["within_deadline"] is True and event["data"]["unit_code"] == GRID


def test_late_acceptance_is_flagged(db, dispatched, outbox_events):
    accept(db, dispatched, at=T0 + timedelta(hours=2))
    assert of_type(outbox_events(db), "order_accepted")[0]["data"]["within_deadline"] is False


def test_a_retry_with_the_same_key_returns_the_first_result_and_emits_nothing_new(db, dispatched, outbox_events):
    first = accept(db, dispatched, key="same")
    again = accept(db, dispatched, key="same", at=T0 + timedelta(hours=5))
    assert again == first
    assert len(of_type(outbox_events(db), "order_accepted")) == 1
    with pytest.raises(InvalidTransition):
        accept(db, dispatched, key="another")


def test_only_the_orders_unit_may_act_on_it(db, dispatched):
    with pytest.raises(NotYourOrder):
        accept(db, dispatched, unit="dept-police")
    with pytest.raises(NotFound):
        accept(db, "GD20261125999999")
    # the same key used by another unit is another call, not a replay of the first
    accept(db, dispatched, key="shared")
    with pytest.raises(NotYourOrder):
        accept(db, dispatched, unit="dept-police", key="shared")


@pytest.mark.parametrize("call, field", [
    (lambda db, o: handlers.accept_order(db(), o, GRID, None), "idempotency_key"),
    (lambda db, o: handlers.accept_order(db(), o, "", "k"), "unit_code"),
    (lambda db, o: handlers.accept_order(db(), o, GRID, "k" * 65), "idempotency_key"),
    (lambda db, o: handlers.return_order(db(), None, o, GRID, "", "k"), "reason"),
    (lambda db, o: handlers.add_progress(db(), o, GRID, None, "k"), "note"),
    (lambda db, o: handlers.resolve_order(db(), o, GRID, 42, "k"), "resolution"),
    (lambda db, o: handlers.find_orders(db(), status="lost"), "status"),
])
def test_bad_input_names_the_field(db, dispatched, call, field):
    with pytest.raises(ValidationError) as err:
        call(db, dispatched)
    assert field in err.value.fields


# --- return -----------------------------------------------------------------------------------

def test_a_returned_order_is_routed_again_to_another_unit(db, dispatched, router, outbox_events):
    result = handlers.return_order(db(), router, dispatched, GRID, "路灯归镇里管", "k-ret",
                                   now=T0 + timedelta(minutes=5))
    assert result["status"] == "returned" and result["return_reason"] == "路灯归镇里管"
    old, new = orders(db)
    assert (old.status, new.status) == ("returned", "dispatched")
    assert new.unit_code == f"town-{YINPING}" and new.level == "town"
    assert (old.successor_order_no, new.previous_order_no) == (new.order_no, old.order_no)
    assert result["successor_order_no"] == new.order_no
    assert new.accept_due_at.replace(tzinfo=timezone.utc) == T0 + timedelta(minutes=5, hours=1)
    types = [e["type"] for e in outbox_events(db)]
    assert types == ["order_dispatched", "order_returned", "order_dispatched"]
    assert outbox_events(db)[2]["data"]["order_no"] == new.order_no
    # the retry returns the first result and routes nothing new
    assert handlers.return_order(db(), router, dispatched, GRID, "路灯归镇里管", "k-ret") == result
    assert len(orders(db)) == 2


def test_returns_end_at_the_command_centre_which_cannot_return(db, dispatched, router):
    handlers.return_order(db(), router, dispatched, GRID, "不归网格管", "k1")
    town_order = orders(db)[-1].order_no
    handlers.accept_order(db(), town_order, f"town-{YINPING}", "k2")  # returning after signing is allowed
    handlers.return_order(db(), router, town_order, f"town-{YINPING}", "需区里统筹", "k3")
    last = orders(db)[-1]
    assert last.unit_code == "dept-command"
    with pytest.raises(InvalidTransition):
        handlers.return_order(db(), router, last.order_no, "dept-command", "不想办", "k4")
    assert [o.status for o in orders(db)] == ["returned", "returned", "dispatched"]


def test_a_resolved_order_cannot_be_returned(db, dispatched, router):
    accept(db, dispatched)
    handlers.resolve_order(db(), dispatched, GRID, "已修好", "k-res")
    with pytest.raises(InvalidTransition):
        handlers.return_order(db(), router, dispatched, GRID, "不是我的", "k-ret")


# --- progress and resolution ------------------------------------------------------------------

def test_progress_needs_acceptance_and_is_kept_in_order(db, dispatched, outbox_events):
    with pytest.raises(InvalidTransition):
        handlers.add_progress(db(), dispatched, GRID, "已到现场", "p0")
    accept(db, dispatched)
    handlers.add_progress(db(), dispatched, GRID, "已到现场", "p1", now=T0 + timedelta(hours=1))
    handlers.add_progress(db(), dispatched, GRID, "已联系供电所", "p2", now=T0 + timedelta(hours=2))
    handlers.add_progress(db(), dispatched, GRID, "已联系供电所", "p2")  # a retry
    view = handlers.get_order(db(), dispatched)
    assert [p["note"] for p in view["progress"]] == ["已到现场", "已联系供电所"]
    assert [e["data"]["note"] for e in of_type(outbox_events(db), "order_progressed")] == ["已到现场", "已联系供电所"]


def test_resolve_after_acceptance(db, dispatched, outbox_events):
    with pytest.raises(InvalidTransition):
        handlers.resolve_order(db(), dispatched, GRID, "已修好", "r0")
    accept(db, dispatched)
    result = handlers.resolve_order(db(), dispatched, GRID, "已更换灯泡", "r1", now=T0 + timedelta(days=4))
    assert result["status"] == "resolved" and result["resolution"] == "已更换灯泡"
    event = of_type(outbox_events(db), "order_resolved")[0]
    assert event["data"]["within_deadline"] is False  # 3 days allowed, 4 taken


def test_units_free_text_leaves_triage_without_phone_or_id_numbers(db, dispatched, router, outbox_events):
    accept(db, dispatched)
    handlers.add_progress(db(), dispatched, GRID, "已电话联系13812345678", "p1")
    handlers.resolve_order(db(), dispatched, GRID, "身份证11010519491231002X的户主已确认修好", "r1")
    text = json.dumps(outbox_events(db), ensure_ascii=False)
    assert "13812345678" not in text and "11010519491231002X" not in text
    assert "[电话已隐藏]" in text
    # the unit still sees what it wrote
    assert handlers.get_order(db(), dispatched)["progress"][0]["note"] == "已电话联系13812345678"


def test_orders_are_dumped_as_json_primitives(db, dispatched):
    view = handlers.get_order(db(), dispatched)
    assert json.loads(json.dumps(view)) == view
    assert view["accept_due_at"] == "2026-11-25T09:00:00+00:00"
    assert view["co_handlers"] == ["dept-urban"] and view["title"] == "村口路灯不亮"
    assert isinstance(view["version"], int)
    with pytest.raises(NotFound):
        handlers.get_order(db(), "GD00000000000000")


def test_find_orders_by_case_unit_and_status(db, router, appeal_received):
    for n, town, village in ((1, YINPING, JINSI), (2, YINPING, JINSI), (3, "370404001", None)):
        handlers.dispatch_appeal(db(), router, CONSUMER, appeal_received(
            case_no=f"YC2026112500000{n}", town_code=town, village_code=village))
    first = handlers.find_orders(db(), unit_code=GRID)
    assert [o["case_no"] for o in first] == ["YC20261125000001", "YC20261125000002"]
    assert {"order_no", "case_no", "unit_code", "status", "accept_due_at", "resolve_due_at"} <= set(first[0])
    accept(db, first[0]["order_no"])
    assert [o["case_no"] for o in handlers.find_orders(db(), unit_code=GRID, status="dispatched")] == [
        "YC20261125000002"]
    [only] = handlers.find_orders(db(), case_no="YC20261125000003")
    assert only["unit_code"] == "town-370404001"
    assert len(handlers.find_orders(db())) == 3 and len(handlers.find_orders(db(), limit=2)) == 2
    assert handlers.find_orders(db(), case_no="YC-none") == []


# --- rating -----------------------------------------------------------------------------------

def rated(satisfaction, case_no="YC20261125000001"):
    return make_event("appeal_rated", case_no, {"satisfaction": satisfaction, "comment": None,
                                                 "rated_at": "2026-11-26T08:00:00+00:00"})


def resolved(db, order_no):
    accept(db, order_no)
    handlers.resolve_order(db(), order_no, GRID, "已修好", f"res-{order_no}-{len(orders(db))}")


@pytest.mark.parametrize("satisfaction", ["satisfied", "basically_satisfied"])
def test_a_satisfied_rating_closes_the_order(db, dispatched, outbox_events, satisfaction):
    resolved(db, dispatched)
    assert handlers.apply_rating(db(), "triage.on_appeal_rated", rated(satisfaction)) == "closed"
    [order] = orders(db)
    assert (order.status, order.satisfaction, order.reopen_count) == ("closed", satisfaction, 0)
    event = of_type(outbox_events(db), "order_closed")[0]
    assert event["data"]["satisfaction"] == satisfaction


def test_an_unsatisfied_rating_reopens_it_to_the_same_unit(db, dispatched, outbox_events):
    resolved(db, dispatched)
    event = rated("unsatisfied")
    later = T0 + timedelta(days=2)
    assert handlers.apply_rating(db(), "triage.on_appeal_rated", event, now=later) == "reopened"
    assert handlers.apply_rating(db(), "triage.on_appeal_rated", event) is None  # redelivered
    [order] = orders(db)
    assert (order.status, order.unit_code, order.reopen_count) == ("reopened", GRID, 1)
    assert order.resolve_due_at.replace(tzinfo=timezone.utc) == later + timedelta(hours=72)
    [reopened] = of_type(outbox_events(db), "order_reopened")
    assert reopened["data"]["reopen_count"] == 1 and reopened["data"]["unit_code"] == GRID
    # the unit works on it and resolves it again; a second unsatisfied rating counts again
    handlers.add_progress(db(), dispatched, GRID, "重新维修", "again-1")
    handlers.resolve_order(db(), dispatched, GRID, "已彻底修好", "again-2")
    handlers.apply_rating(db(), "triage.on_appeal_rated", rated("unsatisfied"))
    assert orders(db)[0].reopen_count == 2


def test_a_rating_of_an_unresolved_order_is_refused(db, dispatched):
    with pytest.raises(InvalidTransition):
        handlers.apply_rating(db(), "triage.on_appeal_rated", rated("satisfied"))
    with pytest.raises(NotFound):
        handlers.apply_rating(db(), "triage.on_appeal_rated", rated("satisfied", "YC-unknown"))


# --- joint enforcement ------------------------------------------------------------------------

def operation_completed(order_no, outcome="联合执法已拆除违建"):
    return make_event("operation_completed", None, {"operation_id": "OP1", "order_no": order_no,
                                                    "town_code": YINPING, "outcome": outcome})


@pytest.mark.parametrize("accepted_first", [False, True])
def test_a_completed_operation_resolves_its_order(db, dispatched, outbox_events, accepted_first):
    if accepted_first:
        accept(db, dispatched)
    event = operation_completed(dispatched)
    assert handlers.complete_by_operation(db(), "triage.on_operation_completed", event) == dispatched
    assert handlers.complete_by_operation(db(), "triage.on_operation_completed", event) is None
    [order] = orders(db)
    assert (order.status, order.resolution) == ("resolved", "联合执法已拆除违建")
    [resolved_event] = of_type(outbox_events(db), "order_resolved")
    assert resolved_event["case_no"] == order.case_no


def test_a_completed_operation_leaves_a_resolved_order_alone(db, dispatched, outbox_events):
    resolved(db, dispatched)
    assert handlers.complete_by_operation(db(), "c", operation_completed(dispatched)) is None
    assert orders(db)[0].resolution == "已修好"
    assert handlers.complete_by_operation(db(), "c", operation_completed(None)) is None
    with pytest.raises(NotFound):
        handlers.complete_by_operation(db(), "c", operation_completed("GD20261125999999"))


def test_a_completed_operation_for_a_returned_order_resolves_its_successor(db, dispatched, router):
    handlers.return_order(db(), router, dispatched, GRID, "不归网格管", "k")
    successor = orders(db)[-1].order_no
    assert handlers.complete_by_operation(db(), "c", operation_completed(dispatched)) == successor


# --- concurrency ------------------------------------------------------------------------------

def test_a_stale_update_is_rejected_not_merged(db, dispatched):
    with db() as stale:
        order = stale.session.execute(select(WorkOrder)).scalar_one()
        assert order.status == "dispatched"
        accept(db, dispatched)  # another worker got there first
        order.status = "returned"
        with pytest.raises(StaleDataError):
            stale.session.flush()
    assert orders(db)[0].status == "accepted"


def test_progress_notes_belong_to_the_order(db, dispatched):
    accept(db, dispatched)
    handlers.add_progress(db(), dispatched, GRID, "已到现场", "p1")
    with db() as uow:
        [note] = uow.session.execute(select(ProgressNote)).scalars()
        assert (note.order_no, note.unit_code) == (dispatched, GRID)


# --- reference data and schema ----------------------------------------------------------------

def test_loading_reference_data_twice_changes_nothing(db):
    rows = list(reference.divisions()), list(reference.units())
    assert handlers.load_reference(db(), *rows) == len(rows[0]) + len(rows[1])
    assert handlers.load_reference(db(), *rows) == len(rows[0]) + len(rows[1])


def test_the_migrations_build_exactly_the_models(triage_db):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from triage.models import metadata
    engine = create_engine(triage_db[0])
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    engine.dispose()


def test_racing_deliveries_of_one_appeal_still_make_one_order(triage_db, router, appeal_received):
    """Deliveries of the same appeal (same and different event ids) handled at the same time, as
    several workers would: the unique keys turn the losers into retries that find the order."""
    import eventlet
    url, db = triage_db
    if url.startswith("sqlite"):
        pytest.skip("SQLite serialises writers; the race needs concurrent transactions")
    pool = eventlet.GreenPool()
    for n in range(5):
        envelope = appeal_received(case_no=f"YC2026112510000{n}")
        for event in (envelope, envelope, appeal_received(case_no=f"YC2026112510000{n}")):
            pool.spawn(handlers.dispatch_appeal, db(), router, CONSUMER, event)
    pool.waitall()
    per_case = [o.case_no for o in orders(db)]
    assert sorted(per_case) == [f"YC2026112510000{n}" for n in range(5)]

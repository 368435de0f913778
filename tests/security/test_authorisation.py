"""What each caller may do once authenticated: a unit its own orders, a force its own operations, a
town its own towns' data, each role its own RPCs. Each test tries to break one rule, on the five
services as processes; a positive control shows the rightful caller still gets through."""
import uuid

import pytest

from wuji_common.errors import Forbidden, NotYourOrder
from wuji_common.testing_helpers import eventually
from wuji_common.testing_helpers import rpc_as_role as _rpc_as_role

YINPING, GUSHAO = "370404101", "370404100"


def key():
    return uuid.uuid4().hex


@pytest.fixture(scope="module")
def as_role(secured):
    return lambda role, **scope: _rpc_as_role(secured.amqp_uri, role, **scope)


@pytest.fixture(scope="module")
def order(submit):
    """A dispatched order of the unit the appeal was routed to, and a unit that is not it."""
    routed = submit(YINPING)
    other = "dept-education" if routed["unit_code"] != "dept-education" else "dept-housing"
    return {**routed, "other_unit": other}


@pytest.fixture(scope="module")
def operation(secured, submit, as_role):
    """A joint operation in 古邵镇 calling comprehensive enforcement, public security and market
    supervision (not natural resources)."""
    routed = submit(GUSHAO, title="路边占道经营堵塞交通")
    with as_role("admin") as rpc:
        return rpc.enforcement.blow_whistle(routed["order_no"], "road_occupation", GUSHAO, "urgent",
                                            idempotency_key=key())


# --- a unit: its own orders only -------------------------------------------------------------------

def test_unit_cannot_accept_another_units_order(order, as_role):
    with as_role("unit_clerk", unit_code=order["other_unit"]) as rpc:
        with pytest.raises(NotYourOrder):     # as itself: not its order
            rpc.triage.accept_order(order["order_no"], order["other_unit"], idempotency_key=key())
        with pytest.raises(Forbidden):        # naming the order's unit: not its name to use
            rpc.triage.accept_order(order["order_no"], order["unit_code"], idempotency_key=key())
        assert rpc.triage.find_orders(case_no=order["case_no"]) == []


def test_unit_cannot_return_progress_resolve_or_delay_another_units_order(order, as_role):
    n, unit = order["order_no"], order["unit_code"]
    with as_role("unit_head", unit_code=order["other_unit"]) as rpc:
        for attempt in (lambda: rpc.triage.return_order(n, unit, "不归我们管", idempotency_key=key()),
                        lambda: rpc.triage.add_progress(n, unit, "假进展", idempotency_key=key()),
                        lambda: rpc.triage.resolve_order(n, unit, "假办结", idempotency_key=key()),
                        lambda: rpc.triage.request_extension(n, unit, 3, "理由", idempotency_key=key()),
                        lambda: rpc.triage.request_suspension(n, unit, 3, "理由", idempotency_key=key())):
            with pytest.raises(Forbidden):
                attempt()


def test_unit_cannot_read_another_units_order_or_queue(order, as_role):
    with as_role("unit_clerk", unit_code=order["other_unit"]) as rpc:
        with pytest.raises(NotYourOrder):
            rpc.triage.get_order(order["order_no"])
        with pytest.raises(Forbidden):
            rpc.triage.find_orders(unit_code=order["unit_code"])
        with pytest.raises(Forbidden):
            rpc.triage.overdue(unit_code=order["unit_code"])
        assert all(o["unit_code"] == order["other_unit"] for o in rpc.triage.find_orders())


def test_unit_cannot_view_another_units_case_in_intake(order, as_role):
    def own_view():
        try:
            return rpc.intake.get_appeal(order["case_no"])
        except Forbidden:
            return None  # intake has not projected the dispatch yet (it batches order events)
    with as_role("unit_clerk", unit_code=order["unit_code"]) as rpc:
        assert eventually(own_view, what="intake's projection of the dispatch")["case_no"] == order["case_no"]
    with as_role("unit_clerk", unit_code=order["other_unit"]) as rpc:
        with pytest.raises(Forbidden):
            rpc.intake.get_appeal(order["case_no"])


def test_unit_cannot_read_or_clear_another_units_inbox(order, as_role):
    with as_role("grid_worker", unit_code=order["other_unit"]) as rpc:
        with pytest.raises(Forbidden):
            rpc.notify.inbox(order["unit_code"])
        with pytest.raises(Forbidden):
            rpc.notify.mark_read(order["unit_code"])
        with pytest.raises(Forbidden):
            rpc.notify.unit_contact(order["unit_code"])
        assert isinstance(rpc.notify.inbox(order["other_unit"]), list)


def test_the_orders_own_unit_reads_and_acts_on_it(order, as_role):
    with as_role("unit_clerk", unit_code=order["unit_code"]) as rpc:
        assert rpc.triage.get_order(order["order_no"])["order_no"] == order["order_no"]
        assert [o["order_no"] for o in rpc.triage.find_orders(case_no=order["case_no"])] == [order["order_no"]]
        accepted = rpc.triage.accept_order(order["order_no"], order["unit_code"], idempotency_key=key())
        assert accepted["status"] == "accepted"


# --- a force: its own operations only ----------------------------------------------------------------

def test_force_cannot_report_in_as_another_force(operation, as_role):
    with as_role("force", force_code="public_security") as rpc:
        with pytest.raises(Forbidden):
            rpc.enforcement.report_in(operation["operation_id"], "market_supervision",
                                      f"market_supervision-{GUSHAO}", idempotency_key=key())
        reported = rpc.enforcement.report_in(operation["operation_id"], "public_security",
                                             f"public_security-{GUSHAO}", idempotency_key=key())
        assert reported["force_code"] == "public_security"


def test_force_cannot_see_or_act_on_an_operation_it_was_not_called_to(operation, as_role):
    oid = operation["operation_id"]
    with as_role("force", force_code="natural_resources") as rpc:
        with pytest.raises(Forbidden):
            rpc.enforcement.get_operation(oid)
        with pytest.raises(Forbidden):
            rpc.enforcement.complete_operation(oid, "假完成", idempotency_key=key())
        with pytest.raises(NotYourOrder):     # as itself: not called to this operation
            rpc.enforcement.report_in(oid, "natural_resources", f"natural_resources-{GUSHAO}",
                                      idempotency_key=key())
        assert all(oid != o["operation_id"] for o in rpc.enforcement.find_operations())
    with as_role("force", force_code="market_supervision") as rpc:
        assert rpc.enforcement.get_operation(oid)["operation_id"] == oid


# --- a town: its own towns' data only ---------------------------------------------------------------

def test_town_cannot_read_another_towns_supervision_lists(order, operation, as_role):
    with as_role("supervisor", town_codes=(GUSHAO,)) as rpc:
        for listing in (rpc.triage.overdue, rpc.triage.at_risk, rpc.triage.supervision_tickets):
            with pytest.raises(Forbidden):
                listing(town_code=YINPING)
            assert all(row["town_code"] == GUSHAO for row in listing())
        with pytest.raises(Forbidden):
            rpc.triage.get_order(order["order_no"])          # an order in 阴平镇
        assert all(o["town_code"] == GUSHAO for o in rpc.triage.find_orders())
        with pytest.raises(Forbidden):
            rpc.enforcement.find_operations(town_code=YINPING)
        assert rpc.enforcement.get_operation(operation["operation_id"])["town_code"] == GUSHAO


def test_town_cannot_read_another_towns_kpis_or_assessment(order, as_role):
    with as_role("supervisor", town_codes=(GUSHAO,)) as rpc:
        with pytest.raises(Forbidden):
            rpc.metrics.kpis("2026-01-01", "2026-12-31", "unit")
        rows = rpc.metrics.kpis("2026-01-01", "2026-12-31", "town")
        assert {r["group"] for r in rows} <= {GUSHAO}
        with pytest.raises(Forbidden):
            rpc.metrics.assessment("2026-11", "unit")
    with as_role("district_leader") as rpc:
        # metrics folds events in batches that wait up to a second for more
        eventually(lambda: YINPING in {r["group"] for r in rpc.metrics.kpis("2026-01-01", "2027-12-31", "town")},
                   what="metrics' count of the order")


def test_town_cannot_blow_the_whistle_in_another_town(order, as_role):
    with as_role("unit_clerk", unit_code="town-gushao", town_codes=(GUSHAO,)) as rpc:
        with pytest.raises(Forbidden):
            rpc.enforcement.blow_whistle(order["order_no"], "road_occupation", YINPING, "normal",
                                         idempotency_key=key())
        with pytest.raises(Forbidden):
            rpc.enforcement.schedule(YINPING, 7)


# --- roles: each its own RPCs ------------------------------------------------------------------------

def test_only_dispatchers_work_the_review_queue(order, as_role):
    with as_role("unit_clerk", unit_code=order["unit_code"]) as rpc:
        with pytest.raises(Forbidden):
            rpc.triage.pending_review()
    for role in ("supervisor", "district_leader", "ops"):
        with as_role(role) as rpc:
            with pytest.raises(Forbidden):
                rpc.triage.route_manually(order["order_no"], order["other_unit"], "c", "i",
                                          idempotency_key=key())
    with as_role("dispatcher") as rpc:
        assert isinstance(rpc.triage.pending_review(), list)


def test_only_supervisors_decide_extensions_and_urge(order, as_role):
    for role, scope in (("unit_head", {"unit_code": order["unit_code"]}), ("dispatcher", {}),
                        ("district_leader", {})):
        with as_role(role, **scope) as rpc:
            with pytest.raises(Forbidden):
                rpc.triage.decide_extension("EXT-1", True, "x", "批准", idempotency_key=key())
            with pytest.raises(Forbidden):
                rpc.triage.urge(order["order_no"], "x", "请尽快办理", idempotency_key=key())


def test_district_leader_reads_everything_but_changes_nothing(order, operation, as_role):
    with as_role("district_leader") as rpc:
        assert rpc.triage.get_order(order["order_no"])["order_no"] == order["order_no"]
        assert rpc.enforcement.get_operation(operation["operation_id"])
        assert rpc.intake.get_appeal(order["case_no"])["case_no"] == order["case_no"]
        with pytest.raises(Forbidden):
            rpc.triage.resolve_order(order["order_no"], order["unit_code"], "x", idempotency_key=key())
        with pytest.raises(Forbidden):
            rpc.enforcement.blow_whistle(order["order_no"], "road_occupation", YINPING, "normal",
                                         idempotency_key=key())
        with pytest.raises(Forbidden):
            rpc.intake.submit_appeal({}, idempotency_key=key())


def test_ops_rpcs_need_the_ops_role_and_ops_cannot_work_orders(order, as_role):
    with as_role("supervisor") as rpc:
        for attempt in (rpc.metrics.rebuild, rpc.notify.failed, rpc.notify.providers,
                        rpc.triage.reload_taxonomy, rpc.notify.subscribers):
            with pytest.raises(Forbidden):
                attempt()
    with as_role("ops") as rpc:
        assert isinstance(rpc.notify.failed(), list)
        assert isinstance(rpc.metrics.event_count(), int)
        with pytest.raises(Forbidden):
            rpc.triage.get_order(order["order_no"])
        with pytest.raises(Forbidden):
            rpc.intake.get_appeal(order["case_no"])

"""The legal procedure of illegal construction on a real SQLite unit of work, with the clock in the
test's hands: notice → statutory waiting period → follow-up inspection → joint enforcement →
outcome with evidence; no step skipped, none early, each an event."""
from datetime import datetime, timedelta, timezone

import pytest

from enforcement import handlers
from wuji_common.errors import InvalidTransition, ValidationError

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=timezone.utc)
GUSHAO = "370404100"
CONSTRUCTION = ["comprehensive_enforcement", "public_security", "natural_resources",
                "housing_construction"]
EVIDENCE = ["photo:ev-0001", "record:ev-0002"]


class Clock:
    def __init__(self):
        self.now = T0

    def advance(self, **delta):
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def construction(db, clock):
    """An illegal-construction operation in 古邵镇 whose lead force has reported in."""
    op = handlers.blow_whistle(db.uow(), {"order_no": "GD20261125000101", "violation_type":
                                          "illegal_construction", "town_code": GUSHAO,
                                          "urgency": "normal"}, None, now=clock.now)
    report(db, clock, op["operation_id"], "comprehensive_enforcement")
    return op["operation_id"]


def report(db, clock, oid, force):
    return handlers.report_in(db.uow(), {"operation_id": oid, "force_code": force,
                                         "team": f"{force}-{GUSHAO}"}, None, now=clock.advance(minutes=5))


def notice(db, clock, oid, period_days=None, key=None):
    return handlers.issue_rectification_notice(db.uow(), {
        "operation_id": oid, "notice_no": "峄综执限拆〔2026〕101号", "period_days": period_days},
        key, now=clock.now)


def inspect(db, clock, oid, rectified=False, key=None):
    return handlers.record_inspection(db.uow(), {
        "operation_id": oid, "rectified": rectified, "findings": "违建未拆除，仍在施工",
        "evidence": ["photo:ev-0001"]}, key, now=clock.now)


def enforce(db, clock, oid, key=None):
    return handlers.carry_out_joint_enforcement(db.uow(), {
        "operation_id": oid, "action": "依法强制拆除违法建筑120平方米", "evidence": EVIDENCE},
        key, now=clock.now)


def complete(db, clock, oid, evidence=EVIDENCE, key=None):
    return handlers.complete_operation(db.uow(), {
        "operation_id": oid, "outcome": "违法建筑已拆除，恢复原状", "evidence": evidence}, key,
        now=clock.now)


def report_the_rest(db, clock, oid):
    for force in CONSTRUCTION[1:]:
        report(db, clock, oid, force)


def test_the_whole_procedure_in_order(db, clock, construction):
    oid = construction
    issued = notice(db, clock, oid)
    assert issued["step"] == "notice_issued" and issued["document_no"] == "峄综执限拆〔2026〕101号"
    assert issued["period_ends_at"] == (clock.now + timedelta(days=10)).isoformat()

    clock.advance(days=10, minutes=1)
    inspected = inspect(db, clock, oid)
    assert inspected["rectified"] is False
    report_the_rest(db, clock, oid)
    clock.advance(days=1)
    assert enforce(db, clock, oid)["step"] == "enforced"
    done = complete(db, clock, oid)

    assert done["status"] == "completed" and done["procedure"]["step"] == "concluded"
    steps = done["procedure"]["steps"]
    assert [s["step"] for s in steps] == ["notice_issued", "inspected", "enforced", "concluded"]
    assert steps[-1]["evidence"] == EVIDENCE
    assert [e["type"] for e in db.events() if e["type"] not in ("force_reported_in",)] == [
        "whistle_blown", "rectification_notice_issued", "follow_up_inspection_recorded",
        "joint_enforcement_carried_out", "operation_completed"]
    [notice_event] = db.events("rectification_notice_issued")
    assert notice_event["data"]["period_days"] == 10 and notice_event["data"]["order_no"] == "GD20261125000101"
    [enforced] = db.events("joint_enforcement_carried_out")
    assert enforced["data"]["forces"] == sorted(CONSTRUCTION) and enforced["data"]["evidence_count"] == 2


def test_no_step_may_run_early(db, clock, construction):
    oid = construction
    for early in (inspect, enforce, complete):
        with pytest.raises(InvalidTransition, match="尚未下达|法定程序未完成"):
            early(db, clock, oid)
    notice(db, clock, oid)
    with pytest.raises(InvalidTransition, match="不能重复下达"):
        notice(db, clock, oid)

    clock.advance(days=9, hours=23, minutes=59)  # one minute before the period ends
    with pytest.raises(InvalidTransition, match="期满前不能复查"):
        inspect(db, clock, oid)
    with pytest.raises(InvalidTransition, match="复查前不能联合执法"):
        enforce(db, clock, oid)
    with pytest.raises(InvalidTransition, match="法定程序未完成"):
        complete(db, clock, oid)

    clock.advance(minutes=1)  # the period is over: now the inspection may take place
    inspect(db, clock, oid)
    with pytest.raises(InvalidTransition, match="不能重复复查"):
        inspect(db, clock, oid)
    with pytest.raises(InvalidTransition, match="尚有执法力量未报到"):
        enforce(db, clock, oid)  # every called force must be there
    with pytest.raises(InvalidTransition, match="法定程序未完成"):
        complete(db, clock, oid)
    report_the_rest(db, clock, oid)
    enforce(db, clock, oid)
    with pytest.raises(InvalidTransition, match="办结须附证据"):
        complete(db, clock, oid, evidence=[])
    assert complete(db, clock, oid)["status"] == "completed"
    assert len(db.events("rectification_notice_issued")) == 1
    assert len(db.events("follow_up_inspection_recorded")) == 1


def test_the_notice_waits_for_the_lead_force(db, clock):
    op = handlers.blow_whistle(db.uow(), {"order_no": None, "violation_type": "illegal_construction",
                                          "town_code": GUSHAO, "urgency": "normal"}, None, now=clock.now)
    with pytest.raises(InvalidTransition, match="主办执法力量尚未报到"):
        notice(db, clock, op["operation_id"])


def test_the_period_may_be_longer_but_not_shorter_than_the_statutory_one(db, clock, construction):
    with pytest.raises(ValidationError) as err:
        notice(db, clock, construction, period_days=5)
    assert list(err.value.fields) == ["period_days"]
    issued = notice(db, clock, construction, period_days=20)
    clock.advance(days=15)
    with pytest.raises(InvalidTransition, match="期满前不能复查"):
        inspect(db, clock, construction)
    assert issued["period_ends_at"] == (T0 + timedelta(minutes=5, days=20)).isoformat()


def test_rectified_at_inspection_needs_no_joint_enforcement(db, clock, construction):
    notice(db, clock, construction)
    clock.advance(days=10)
    inspect(db, clock, construction, rectified=True)
    with pytest.raises(InvalidTransition, match="无需联合执法"):
        enforce(db, clock, construction)
    report_the_rest(db, clock, construction)  # the called forces still answer the call
    done = complete(db, clock, construction)
    assert [s["step"] for s in done["procedure"]["steps"]] == ["notice_issued", "inspected", "concluded"]


def test_retried_steps_return_the_first_result_once(db, clock, construction):
    first = notice(db, clock, construction, key="n-1")
    clock.advance(days=1)
    assert notice(db, clock, construction, key="n-1") == first
    clock.advance(days=10)
    assert inspect(db, clock, construction, key="i-1") == inspect(db, clock, construction, key="i-1")
    assert len(db.events("rectification_notice_issued")) == 1
    assert len(db.events("follow_up_inspection_recorded")) == 1


def test_a_violation_without_procedure_refuses_its_steps_and_completes_as_before(db, clock):
    op = handlers.blow_whistle(db.uow(), {"order_no": None, "violation_type": "road_occupation",
                                          "town_code": GUSHAO, "urgency": "urgent"}, None, now=clock.now)
    with pytest.raises(InvalidTransition, match="无限期整改程序"):
        notice(db, clock, op["operation_id"])
    assert op["procedure"] is None
    for force in ("comprehensive_enforcement", "public_security", "market_supervision"):
        report(db, clock, op["operation_id"], force)
    assert complete(db, clock, op["operation_id"], evidence=[])["status"] == "completed"


def test_findings_are_masked_and_stay_out_of_events(db, clock, construction):
    notice(db, clock, construction)
    clock.advance(days=10)
    handlers.record_inspection(db.uow(), {
        "operation_id": construction, "rectified": False,
        "findings": "当事人（13812345678）拒不拆除", "evidence": []}, None, now=clock.now)
    view = handlers.get_operation(db.uow(), construction)
    assert view["procedure"]["steps"][1]["findings"] == "当事人（[电话已隐藏]）拒不拆除"
    assert "13812345678" not in str(db.events()) and "拒不拆除" not in str(db.events())

"""The rules: legal competence from the shipped reference data, deadlines, and state transitions."""
from datetime import datetime, timedelta, timezone

import pytest

from enforcement import domain, reference
from wuji_common.reference import towns

AT = datetime(2026, 11, 25, 8, 0, tzinfo=timezone.utc)
FORCES = {"public_security", "natural_resources", "comprehensive_enforcement", "water"}
MINUTES = {"emergency": 30, "urgent": 120, "normal": 1440}


# --- the shipped reference data ---------------------------------------------------------------------

def test_the_thirteen_forces_each_have_a_demo_team_in_every_town():
    forces, teams = domain.parse_forces(reference.force_rows(), set(towns()))
    assert [f.code for f in forces] == [
        "public_security", "transport", "natural_resources", "market_supervision",
        "comprehensive_enforcement", "ecology_environment", "emergency_management",
        "housing_construction", "agriculture", "water", "culture_tourism", "health", "fire_rescue"]
    assert {f.name for f in forces} >= {"公安", "综合行政执法", "消防救援"}
    served = {(t.force_code, t.town_code) for t in teams}
    assert served == {(f.code, town) for f in forces for town in towns()}
    assert {t.source for t in teams} == {"demo"}


def test_competence_calls_the_lead_first_and_uses_every_force():
    ref = reference.shipped()
    forces, violations = ref.forces, ref.violation_types
    by_code = {v.code: v for v in violations}
    assert {"illegal_construction", "illegal_mining", "unlicensed_business", "environmental_pollution",
            "road_occupation", "food_safety", "fire_hazard"} <= set(by_code)
    construction = by_code["illegal_construction"]
    assert construction.name == "违法建设"
    assert construction.forces[0] == "comprehensive_enforcement"
    assert construction.role_of("comprehensive_enforcement") == domain.LEAD
    assert construction.role_of("natural_resources") == domain.ASSIST
    assert by_code["illegal_mining"].lead == "natural_resources"
    assert by_code["fire_hazard"].lead == "fire_rescue"
    assert {f for v in violations for f in v.forces} == {f.code for f in forces}


def test_a_violation_type_may_shorten_the_report_in_deadline():
    violations = reference.shipped().violation_types
    by_code = {v.code: v for v in violations}
    assert by_code["road_occupation"].report_in_minutes == MINUTES
    assert by_code["fire_hazard"].report_in_minutes == {"emergency": 15, "urgent": 60, "normal": 1440}


# --- reference data that contradicts itself is refused ----------------------------------------------

def competence(**entry):
    return {"report_in_minutes": MINUTES,
            "violation_types": {"x": {"name": "x", "lead": "water", **entry}}}


@pytest.mark.parametrize("doc, problem", [
    (competence(assist=["fishery"]), "unknown forces fishery"),
    (competence(assist=["water"]), "listed twice"),
    (competence(report_in_minutes={"emergency": 0}), "positive"),
    (competence(report_in_minutes={"someday": 5}), "unknown urgency"),
    ({"report_in_minutes": {"emergency": 30}, "violation_types": {}}, "lacks urgent, normal"),
])
def test_contradictory_competence_is_refused(doc, problem):
    with pytest.raises(domain.ReferenceDataError, match=problem):
        domain.parse_competence(doc, FORCES)


def test_a_team_in_an_unknown_town_is_refused():
    rows = [{"force_code": "water", "force_name": "水务", "unit_code": "", "team_code": "w-1",
             "team_name": "某水利站", "town_code": "999999999", "source": "demo"}]
    with pytest.raises(domain.ReferenceDataError, match="unknown town"):
        domain.parse_forces(rows, {"370404100"})


def test_a_force_named_two_ways_is_refused():
    row = {"force_code": "water", "force_name": "水务", "unit_code": "", "team_code": "w-1",
           "team_name": "古邵镇水利站", "town_code": "370404100", "source": "demo"}
    other = {**row, "force_name": "水利", "team_code": "w-2"}
    with pytest.raises(domain.ReferenceDataError, match="named differently"):
        domain.parse_forces([row, other], {"370404100"})


# --- operations -----------------------------------------------------------------------------------

def test_operation_id_reads_as_date_and_sequence():
    assert domain.operation_id_for(AT, 12) == "CZ20261125000012"


@pytest.mark.parametrize("urgency, minutes", [("emergency", 30), ("urgent", 120), ("normal", 1440)])
def test_report_in_deadline_follows_urgency(urgency, minutes):
    assert domain.report_in_due_at(AT, urgency, MINUTES) == AT + timedelta(minutes=minutes)


def test_reporting_in_at_the_deadline_is_in_time():
    due = AT + timedelta(minutes=30)
    assert domain.within_deadline(due, due)
    assert not domain.within_deadline(due + timedelta(seconds=1), due)


def test_the_operation_is_assembled_when_every_force_has_reported_in():
    statuses = {"water": domain.FORCE_REPORTED_IN, "public_security": domain.FORCE_OVERDUE}
    assert domain.status_after_report_in(statuses) == domain.CALLED
    assert domain.not_reported_in(statuses) == ["public_security"]
    statuses["public_security"] = domain.FORCE_REPORTED_IN
    assert domain.status_after_report_in(statuses) == domain.ASSEMBLED
    assert domain.not_reported_in(statuses) == []


def test_phone_and_id_numbers_are_masked_in_the_outcome():
    text = "已约谈当事人（13812345678，身份证370404199001011234），责令拆除；联系0632-7711234"
    assert domain.redact_outcome(text) == \
        "已约谈当事人（[电话已隐藏]，身份证[身份证号已隐藏]），责令拆除；联系[电话已隐藏]"
    assert domain.redact_outcome("已拆除违法建筑120平方米") == "已拆除违法建筑120平方米"


# --- rosters (demo data) -----------------------------------------------------------------------------

def test_every_team_has_a_demo_roster_and_district_teams_serve_every_town():
    ref = reference.shipped()
    rosters = {r.team_code: r for r in ref.rosters}
    assert set(rosters) == {t.code for t in ref.teams}
    district = rosters["comprehensive_enforcement-district"]
    assert district.jurisdiction == tuple(sorted(towns()))
    assert rosters["water-370404100"].jurisdiction == ("370404100",)
    assert {o.source for o in ref.officers} == {"demo"} and {t.source for t in ref.teams} == {"demo"}
    police = [o for o in ref.officers if o.team_code == "public_security-370404100"]
    assert len(police) == 8 and all(len(o.duty_days) == 6 for o in police)  # one rest day each
    assert {o.duty_days for o in police} >= {"234567", "134567"}  # in turn
    water = [o for o in ref.officers if o.team_code == "water-370404100"]
    assert {o.duty_days for o in water} == {"12345"}


def test_illegal_construction_has_its_notice_and_waiting_period():
    by_code = {v.code: v for v in reference.shipped().violation_types}
    assert by_code["illegal_construction"].procedure == {"notice": "限期拆除通知书", "waiting_days": 10}
    assert by_code["road_occupation"].procedure is None
    assert by_code["road_occupation"].follow_up["escalate_after_minutes"]["emergency"] == 30


@pytest.mark.parametrize("change, problem", [
    ({"duty_days": "12389"}, "ISO weekdays"),
    ({"hours": "18:00-08:00"}, "HH:MM-HH:MM"),
    ({"max_concurrent_operations": 0}, "positive"),
])
def test_contradictory_rosters_are_refused(change, problem):
    ref = reference.shipped()
    doc = reference.rosters_doc()
    doc["forces"]["water"] = {**doc["forces"]["water"], **change}
    plain = [t for t in ref.teams if not t.code.endswith("-district")]
    with pytest.raises(domain.ReferenceDataError, match=problem):
        domain.parse_rosters(doc, ref.forces, plain, set(towns()))


def test_a_procedure_without_waiting_days_is_refused():
    doc = competence(procedure={"notice": "限期拆除通知书"})
    with pytest.raises(domain.ReferenceDataError, match="waiting_days"):
        domain.parse_competence(doc, FORCES)


def test_escalation_must_come_after_the_reminder():
    doc = {**competence(), "report_in_follow_up": {
        "remind_after_minutes": {"emergency": 30, "urgent": 15, "normal": 60},
        "escalate_after_minutes": {"emergency": 30, "urgent": 120, "normal": 480}}}
    with pytest.raises(domain.ReferenceDataError, match="escalate after reminding"):
        domain.parse_competence(doc, FORCES)

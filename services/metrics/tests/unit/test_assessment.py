"""The monthly assessment (考核): every number from the event history alone, a replay gives the same
table, a hand-worked month gives the expected rates, and the table exports to XLSX and CSV with
Chinese headers and no formula a spreadsheet would run."""
import csv
import random
from datetime import datetime, timedelta, timezone

import pytest
from openpyxl import load_workbook
from sqlalchemy import func, select

from metrics import assessment, handlers
from metrics.models import EventLog, metadata
from metrics.simulate import simulate_month
from wuji_common.cli import unit_of_work_for
from wuji_common.errors import ValidationError
from wuji_common.events import CHINA_TIME, make_event

WEIGHTS = assessment.load_weights()
TOWN = "370404101"


def at(day, hour):
    return datetime(2026, 11, day, hour, tzinfo=CHINA_TIME)


def ev(kind, case_no, data, when, source=None):
    envelope = make_event(kind, case_no, data, source=source)
    envelope["occurred_at"] = when.astimezone(timezone.utc).isoformat(timespec="milliseconds")
    return envelope


def order_events(case_no, order_no, unit, when, level="grid", accept_after=1, resolve_after=None,
                 rating=None, returned=False):
    base = {"order_no": order_no, "unit_code": unit, "town_code": TOWN, "category": "municipal"}
    out = [ev("order_dispatched", case_no, {
        **base, "status": "dispatched", "unit_name": unit, "level": level, "policy": "general",
        "router_version": "t", "title": "t", "accept_due_at": (when + timedelta(hours=2)).isoformat(),
        "resolve_due_at": (when + timedelta(days=7)).isoformat()}, when)]
    if returned:
        return out + [ev("order_returned", case_no, {**base, "status": "returned", "reason": "非本单位"},
                         when + timedelta(hours=1))]
    accepted = when + timedelta(hours=accept_after)
    out.append(ev("order_accepted", case_no, {**base, "status": "accepted", "accepted_at": accepted.isoformat(),
                                              "within_deadline": accept_after <= 2}, accepted))
    if resolve_after is not None:
        resolved = when + timedelta(days=resolve_after)
        out.append(ev("order_resolved", case_no, {**base, "status": "resolved", "resolution": "已办",
                                                  "resolved_at": resolved.isoformat(),
                                                  "within_deadline": resolve_after <= 7}, resolved))
        if rating:
            rated = resolved + timedelta(hours=2)
            out.append(ev("appeal_rated", case_no, {"satisfaction": rating, "rated_at": rated.isoformat()}, rated))
            out.append(ev("order_closed", case_no, {**base, "status": "closed", "satisfaction": rating,
                                                    "closed_at": rated.isoformat()}, rated))
    return out


def received(case_no, when):
    return ev("appeal_received", case_no, {"channel": "wechat", "title": "t", "content": "t", "town_code": TOWN,
                                           "anonymous": True, "received_at": when.isoformat()}, when)


GRID, OTHER = "grid-370404101201", "grid-370404101202"


def hand_worked_month():
    """GRID: A accepted on time, resolved on time, satisfied, closed; B returned as not its own
    (→ the town office); C accepted late, resolved late (after the month: not resolved in it).
    OTHER: D accepted on time, resolved on time, rated unsatisfied (not closed). One repeat of A
    counted against GRID; one cross-level petition against OTHER."""
    history = [received("A", at(2, 9)), received("B", at(3, 9)), received("C", at(20, 9)), received("D", at(5, 9))]
    history += order_events("A", "GD-A", GRID, at(2, 10), resolve_after=2, rating="satisfied")
    history += order_events("B", "GD-B", GRID, at(3, 10), returned=True)
    history += order_events("B", "GD-B2", f"town-{TOWN}", at(3, 12), level="town", resolve_after=1,
                            rating="basically_satisfied")
    history += order_events("C", "GD-C", GRID, at(20, 10), accept_after=5, resolve_after=12)
    history += order_events("D", "GD-D", OTHER, at(5, 10), resolve_after=3, rating="unsatisfied")
    history = [e for e in history if not (e["type"] == "order_closed" and e["case_no"] == "D")]
    history.append(ev("repeat_detected", "E", {"earlier_case_no": "A", "unit_code": GRID, "town_code": TOWN,
                                               "category": "municipal", "item": "street-lights",
                                               "repeat_count": 2}, at(10, 9)))
    history.append(ev("cross_level_petition_detected", "F", {
        "unit_code": OTHER, "town_code": TOWN, "category": "municipal", "item": "street-lights",
        "level": "grid", "reception_level": "district", "channel": "hotline"}, at(11, 9)))
    return history


def test_a_hand_worked_month_gives_the_expected_rates():
    rows = {r["group"]: r for r in assessment.assess(hand_worked_month(), "2026-11", "unit", WEIGHTS)}
    grid = rows[GRID]
    assert (grid["orders"], grid["returned"]) == (3, 1)
    assert grid["dispatch_accuracy_rate"] == round(2 / 3, 4)         # 准确派遣率: B was returned
    assert grid["response_rate"] == 0.5                              # A on time, C late (B returned)
    assert grid["resolution_rate"] == 0.5 and grid["closure_rate"] == 0.5   # A of A and C
    assert grid["on_time_closure_rate"] == 0.5
    assert grid["on_time_resolution_rate"] == 1.0                    # only A resolved in November
    assert grid["satisfaction_rate"] == 1.0 and grid["rework_rate"] == 0.0
    assert grid["repeat_rate"] == round(1 / 3, 4) and grid["cross_level_rate"] == 0.0
    other = rows[OTHER]
    assert other["satisfaction_rate"] == 0.0 and other["closure_rate"] == 0.0
    assert other["resolution_rate"] == 1.0 and other["cross_level_rate"] == 1.0
    assert rows[f"town-{TOWN}"]["score"] == 100.0 and rows[f"town-{TOWN}"]["rank"] == 1
    assert [r["rank"] for r in assessment.assess(hand_worked_month(), "2026-11", "unit", WEIGHTS)] == [1, 2, 3]
    [town] = assessment.assess(hand_worked_month(), "2026-11", "town", WEIGHTS)
    assert town["appeals"] == 4 and town["repeats"] == 1 and town["repeat_rate"] == 0.25


def test_later_events_do_not_change_a_past_months_table():
    history = hand_worked_month()
    before = assessment.assess(history, "2026-11", "unit", WEIGHTS)
    late = order_events("Z", "GD-Z", GRID, datetime(2026, 12, 2, 10, tzinfo=CHINA_TIME), returned=True)
    assert assessment.assess(history + late, "2026-11", "unit", WEIGHTS) == before


def test_the_score_weighs_what_was_measured_and_equal_scores_share_a_rank():
    weights = assessment.Weights("t", {"satisfaction_rate": 1, "rework_rate": 1})
    assert assessment.score({"satisfaction_rate": 0.8, "rework_rate": 0.2}, weights) == 80.0
    assert assessment.score({"satisfaction_rate": None, "rework_rate": 0.5}, weights) == 50.0
    assert assessment.score({}, weights) is None
    rows = assessment.rank([{"group": g, "score": s, "unit_level": "grid"} for g, s in
                            (("a", 90), ("b", 95), ("c", 90), ("d", None))])
    assert [(r["group"], r["rank"]) for r in rows] == [("b", 1), ("a", 2), ("c", 2), ("d", None)]
    with pytest.raises(ValueError):
        assessment.Weights.from_dict({"weights": {"popularity": 1}})


def test_replaying_the_recorded_event_log_gives_the_same_table(metrics_db):
    _, uow = metrics_db
    history = simulate_month("2026-11", seed=11, appeals=60)
    shuffled = history[:]
    random.Random(3).shuffle(shuffled)  # the queues deliver in any order
    for envelope in shuffled:
        handlers.record_event(uow(), "metrics.test", envelope)
    served = assessment.assessment(uow(), "2026-11", "unit")
    with uow() as u:
        recorded = u.session.execute(select(EventLog.envelope)).scalars().all()
    replayed = assessment.assess(list(reversed(recorded)), "2026-11", "unit", WEIGHTS,
                                 names=handlers.group_names("unit"))
    assert served["rows"] == replayed and len(replayed) > 10
    assert served["rows"] == assessment.assess(history, "2026-11", "unit", WEIGHTS, names=handlers.group_names("unit"))
    assert [r["rank"] for r in served["rows"] if r["rank"]] == sorted(r["rank"] for r in served["rows"] if r["rank"])
    towns = assessment.assessment(uow(), "2026-11", "town")["rows"]
    assert {r["name"] for r in towns} >= {"阴平镇"}
    with pytest.raises(ValidationError):
        assessment.assessment(uow(), "November", "unit")
    with pytest.raises(ValidationError):
        assessment.assessment(uow(), "2026-11", "village")


def test_the_simulation_is_reproducible_from_its_seed():
    first = assessment.assess(simulate_month("2026-11", seed=5, appeals=80), "2026-11", "town", WEIGHTS)
    again = assessment.assess(simulate_month("2026-11", seed=5, appeals=80), "2026-11", "town", WEIGHTS)
    other = assessment.assess(simulate_month("2026-11", seed=6, appeals=80), "2026-11", "town", WEIGHTS)
    assert first == again and first != other


def test_the_table_exports_to_xlsx_and_csv_with_chinese_headers_and_no_formulas(tmp_path):
    rows = assessment.assess(hand_worked_month(), "2026-11", "unit", WEIGHTS)
    rows[0]["name"] = '=HYPERLINK("http://evil","点我")'
    rows[1]["name"] = "@SUM(A1)"
    xlsx, text = tmp_path / "t.xlsx", tmp_path / "t.csv"
    assessment.write_xlsx(rows, xlsx)
    assessment.write_csv(rows, text)
    sheet = load_workbook(xlsx).active
    header = [c.value for c in sheet[1]]
    assert header[:6] == ["排名", "代码", "名称", "层级", "层级内排名", "综合得分"]
    assert {"响应率", "按时办结率", "解决率", "满意率", "返工率", "重复访率", "越级访率", "结案率", "按期结案率",
            "准确派遣率"} <= set(header)
    assert sheet.cell(2, 3).value == '\'=HYPERLINK("http://evil","点我")' and sheet.cell(2, 3).data_type == "s"
    assert sheet.cell(3, 3).value == "'@SUM(A1)"
    assert sheet.cell(2, 6).value == rows[0]["score"] and sheet.cell(2, 4).value == "镇街"  # the town office ranks first
    assert sheet.max_row == len(rows) + 1
    with open(text, encoding="utf-8-sig", newline="") as f:
        lines = list(csv.reader(f))
    assert lines[0] == header and lines[1][2].startswith("'=") and len(lines) == len(rows) + 1
    assert not any(cell.startswith(("=", "+", "@")) for line in lines for cell in line)


def test_the_simulate_command_records_the_month_and_prints_its_table(tmp_path, capsys):
    """``metrics simulate`` records the simulated month in batches; the table it stores is the one
    the simulated history gives, and it prints it."""
    from metrics import cli
    url = f"sqlite:///{tmp_path / 'simulated.db'}"
    with pytest.raises(SystemExit) as done:
        cli.main(["simulate", "--month", "2026-11", "--seed", "11", "--appeals", "60", "--db-url", url])
    assert done.value.code == 0
    history = simulate_month("2026-11", seed=11, appeals=60)
    uow = unit_of_work_for("metrics", metadata, url)
    with uow:
        assert uow.session.execute(select(func.count()).select_from(EventLog)).scalar() == len(history)
    stored = assessment.assessment(unit_of_work_for("metrics", metadata, url), "2026-11", "unit")["rows"]
    assert stored == assessment.assess(history, "2026-11", "unit", WEIGHTS, names=handlers.group_names("unit"))
    printed = capsys.readouterr().out
    assert f"{len(history)} events of 60 simulated appeals (seed 11)" in printed
    assert str(stored[0]["group"]) in printed

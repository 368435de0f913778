"""What triage does besides routing, against a real database (SQLite and PostgreSQL), no broker:
joint handling and joint enforcement, urgency, the dispatchers' review queue and their decisions as
training data, repeat petitions, cross-level petitions and hot spots."""
import copy
import csv
from collections import namedtuple
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from triage import cli, handlers
from triage.domain import Router, Taxonomy
from triage.models import Appeal, DispatcherDecision, WorkOrder
from triage.similarity import AppealIndex
from wuji_common.errors import InvalidTransition, NotFound, ValidationError

CONSUMER = "triage.on_appeal_received"
JINSI, ZHANGZHUANG, YINPING, GUSHAO = "370404101201", "370404101202", "370404101", "370404100"
GRID, TOWN = f"grid-{JINSI}", f"town-{YINPING}"
T0 = datetime(2026, 11, 25, 8, 0, tzinfo=timezone.utc)
PERSON_A, PERSON_B, PERSON_C, PERSON_D = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)

Classification = namedtuple("Classification", "label probability ranked")


class FixedClassifier:
    version = "test-1"

    def __init__(self, *ranked):
        self.ranked = list(ranked)

    def classify(self, subject, body):
        return Classification(self.ranked[0][0], self.ranked[0][1], self.ranked)


@pytest.fixture
def db(triage_db):
    return triage_db[1]


@pytest.fixture
def appeal(db, router, appeal_received):
    """Dispatch an appeal (case number n) and return the handler's summary."""
    def dispatch(n, title="村口路灯不亮", content="金寺村村口的路灯坏了一个多月，晚上出行不便。",
                 at=T0, router_=None, index=None, **data):
        envelope = appeal_received(case_no=f"YC20261125{n:06d}", title=title, content=content,
                                   received_at=at.isoformat(), **data)
        return handlers.dispatch_appeal(db(), router_ or router, CONSUMER, envelope, now=at, index=index)
    return dispatch


def orders(db, case_no=None):
    with db() as uow:
        query = select(WorkOrder).order_by(WorkOrder.id)
        if case_no:
            query = query.where(WorkOrder.case_no == case_no)
        rows = uow.session.execute(query).scalars().all()
        uow.session.expunge_all()
        return rows


def events(outbox_events, db, event_type):
    return [e for e in outbox_events(db) if e["type"] == event_type]


# --- joint handling and joint enforcement ----------------------------------------------------------

def test_co_handlers_are_named_on_the_order_and_in_order_dispatched(db, appeal, outbox_events):
    routed = appeal(1, "有人私搭乱建", "村西头有人私搭乱建，占用公共通道", village_code=JINSI)
    assert (routed["unit_code"], routed["level"]) == (TOWN, "town")
    view = handlers.get_order(db(), routed["order_no"])
    assert view["co_handlers"] == ["dept-urban", "dept-natural-resources"]
    [dispatched] = events(outbox_events, db, "order_dispatched")
    assert dispatched["data"]["co_handlers"] == ["dept-urban", "dept-natural-resources"]


def test_an_item_needing_joint_enforcement_asks_for_it_with_the_order(db, appeal, outbox_events, router):
    routed = appeal(1, "有人私搭乱建", "村西头有人私搭乱建", village_code=JINSI)
    [requested] = events(outbox_events, db, "enforcement_requested")
    assert requested["data"] == {"order_no": routed["order_no"], "town_code": YINPING,
                                 "violation_type": "illegal_construction", "urgency": "normal"}
    view = handlers.get_order(db(), routed["order_no"])
    assert view["violation_type"] == "illegal_construction" and view["enforcement_requested"] is True
    # routed again after a return: the operation asked for already carries the case, no second ask
    handlers.return_order(db(), router, routed["order_no"], TOWN, "需区里统筹", "k-ret")
    assert len(events(outbox_events, db, "enforcement_requested")) == 1


def test_an_item_the_town_whistles_for_names_the_type_and_asks_nothing(db, appeal, outbox_events):
    routed = appeal(1, "路边占道经营堵塞交通", "流动摊贩占道经营，车辆无法通行", town_code=GUSHAO,
                    village_code=None)
    assert events(outbox_events, db, "enforcement_requested") == []
    view = handlers.get_order(db(), routed["order_no"])
    assert (view["unit_code"], view["violation_type"]) == (f"town-{GUSHAO}", "road_occupation")


def test_an_emergency_enforcement_request_carries_its_urgency(db, appeal, outbox_events):
    appeal(1, "违建工地起火", "村里私搭乱建的棚子起火了", village_code=JINSI)
    [requested] = events(outbox_events, db, "enforcement_requested")
    assert requested["data"]["urgency"] == "emergency"


# --- urgency and risk ------------------------------------------------------------------------------

def test_urgent_appeals_are_flagged_with_their_reasons_and_shorter_limits(db, appeal, outbox_events):
    routed = appeal(1, "工地拖欠工资", "老板拖欠农民工工资半年，工友说再不给就跳楼", village_code=JINSI)
    [flagged] = events(outbox_events, db, "urgent_appeal_flagged")
    assert flagged["data"]["urgency"] == "emergency" and flagged["data"]["unit_code"] == "dept-hrss"
    assert flagged["data"]["reasons"] == [{"rule": "self_harm", "name": "自伤自杀风险", "keywords": ["跳楼"]}]
    [order] = orders(db)
    assert (order.policy, order.urgency, order.resolve_hours) == ("urgent", "emergency", 24)
    # the rule calls the police in beside the item's own co-handler
    assert order.co_handlers.split(",") == ["dept-justice", "dept-police"]
    assert routed["urgency"] == "emergency"


def test_each_kind_of_risk_has_its_rule(taxonomy):
    router = Router(taxonomy)
    cases = {"小区里燃气泄漏了": "life_safety", "几十人在镇政府门口拉横幅": "mass_gathering",
             "他说活不下去了": "self_harm", "再不解决就去北京上访，媒体曝光": "escalation"}
    for text, rule in cases.items():
        flags = router.assess("反映", text).flags
        assert rule in {f.rule for f in flags}, text
    escalation = next(f for f in router.assess("反映", "再不解决就去北京上访").flags if f.rule == "escalation")
    assert escalation.keywords == ("去北京上访",) and escalation.urgency == "urgent"
    assert router.assess("村口路灯不亮", "请维修").flags == ()


# --- the dispatchers' review queue -----------------------------------------------------------------

@pytest.fixture
def unsure(taxonomy):
    return Router(taxonomy, FixedClassifier(("城乡建设", 0.45), ("环境保护", 0.4)))


def test_an_unsure_appeal_waits_for_a_dispatcher_without_an_event(db, appeal, unsure, outbox_events):
    routed = appeal(1, "反映一件事", "家门口那块地方一直没人管", router_=unsure)
    assert routed["status"] == "pending_review" and outbox_events(db) == []
    [waiting] = handlers.pending_review(db())
    assert waiting["order_no"] == routed["order_no"] and waiting["review_reason"] == "low_confidence"
    assert waiting["classifier_label"] == "城乡建设" and waiting["suggested_item"] == "general-other"
    assert waiting["title"] == "反映一件事" and waiting["waiting_since"].startswith("2026-11-25T08:00")
    # units cannot touch it meanwhile
    with pytest.raises(InvalidTransition):
        handlers.accept_order(db(), routed["order_no"], "dept-command", "k")


def test_a_dispatcher_routes_it_and_the_decision_is_kept(db, appeal, unsure, outbox_events, tmp_path):
    routed = appeal(1, "反映一件事", "家门口那块地方一直没人管", router_=unsure)
    later = T0 + timedelta(minutes=30)
    result = handlers.route_manually(db(), unsure, routed["order_no"], GRID, "sanitation", "clutter",
                                     "d-1", now=later)
    assert (result["status"], result["unit_code"], result["item"], result["routing_basis"]) == (
        "dispatched", GRID, "clutter", "manual")
    assert result["accept_due_at"] == (later + timedelta(hours=1)).isoformat()  # clock starts now
    assert handlers.route_manually(db(), unsure, routed["order_no"], GRID, "sanitation", "clutter",
                                   "d-1") == result
    [dispatched] = events(outbox_events, db, "order_dispatched")
    assert dispatched["data"]["unit_code"] == GRID and dispatched["data"]["level"] == "grid"
    assert handlers.pending_review(db()) == []
    with db() as uow:
        [decision] = uow.session.execute(select(DispatcherDecision)).scalars()
        assert (decision.kind, decision.review_reason, decision.previous_unit_code, decision.label) == (
            "review", "low_confidence", "dept-command", "环境卫生")
    out = tmp_path / "decisions.csv"
    assert handlers.export_decisions(db(), unsure.taxonomy, out) == 1
    with open(out, encoding="utf-8") as f:
        assert list(csv.DictReader(f)) == [{"id": "YC20261125000001", "subject": "反映一件事",
                                            "body": "家门口那块地方一直没人管", "label": "环境卫生"}]


def test_nothing_recognisable_waits_too_and_the_most_urgent_comes_first(db, appeal):
    appeal(1, "咨询", "想问一件事情")
    appeal(2, "咨询", "对方扬言要报复", at=T0 + timedelta(minutes=5))
    queue = handlers.pending_review(db())
    assert [q["case_no"][-1] for q in queue] == ["2", "1"]
    assert queue[0]["urgency"] == "urgent" and queue[0]["risk_reasons"][0]["rule"] == "escalation"
    assert {q["review_reason"] for q in queue} == {"unidentified"}


def test_a_dispatchers_bad_decision_is_refused(db, appeal, unsure):
    routed = appeal(1, "反映一件事", "一直没人管", router_=unsure)
    with pytest.raises(ValidationError) as err:
        handlers.route_manually(db(), unsure, routed["order_no"], GRID, "ecology", "clutter", "d-1")
    assert "item" in err.value.fields
    with pytest.raises(ValidationError) as err:
        handlers.route_manually(db(), unsure, routed["order_no"], "dept-nowhere", "sanitation", "clutter", "d-2")
    assert "unit_code" in err.value.fields
    with pytest.raises(NotFound):
        handlers.route_manually(db(), unsure, "GD00000000000000", GRID, "sanitation", "clutter", "d-3")


def test_a_dispatcher_reroutes_a_returned_order(db, appeal, router, outbox_events):
    routed = appeal(1)
    handlers.return_order(db(), router, routed["order_no"], GRID, "不归网格管", "r-1")
    successor = orders(db)[-1]
    assert successor.unit_code == TOWN and successor.status == "dispatched"
    result = handlers.route_manually(db(), router, routed["order_no"], "dept-urban", "municipal",
                                     "street-lights", "d-1")
    assert result["unit_code"] == "dept-urban" and result["previous_order_no"] == successor.order_no
    assert [o.status for o in orders(db)] == ["returned", "returned", "dispatched"]
    returned = events(outbox_events, db, "order_returned")
    assert [e["data"]["reason"] for e in returned] == ["不归网格管", "调度员改派"]
    # a signed-for order is the unit's now
    handlers.accept_order(db(), result["order_no"], "dept-urban", "a-1")
    with pytest.raises(InvalidTransition):
        handlers.route_manually(db(), router, result["order_no"], TOWN, "municipal", "street-lights", "d-2")


def test_returned_orders_can_be_sent_to_the_dispatchers(db, appeal, taxonomy, raw_taxonomy):
    data = copy.deepcopy(raw_taxonomy)
    data["review"]["returned_orders"] = "review"
    router = Router(Taxonomy.from_dict(data))
    routed = appeal(1, router_=router)
    handlers.return_order(db(), router, routed["order_no"], GRID, "不归网格管", "r-1")
    [waiting] = handlers.pending_review(db())
    assert waiting["review_reason"] == "returned" and waiting["previous_order_no"] == routed["order_no"]
    result = handlers.route_manually(db(), router, routed["order_no"], TOWN, "municipal", "street-lights", "d")
    assert result["status"] == "dispatched" and result["unit_code"] == TOWN


def test_the_export_command_writes_training_rows(triage_db, appeal, unsure, tmp_path, capsys):
    url, db = triage_db
    routed = appeal(1, "反映一件事", "一直没人管", router_=unsure)
    handlers.route_manually(db(), unsure, routed["order_no"], "dept-police", "public-order", "vice", "d")
    out = tmp_path / "out.csv"
    with pytest.raises(SystemExit) as done:
        cli.main(["export-decisions", "--out", str(out), "--db-url", url])
    assert done.value.code == 0 and "wrote 1" in capsys.readouterr().out
    with open(out, encoding="utf-8") as f:
        # 社会治安 is no classifier label: its own name is the new label to learn
        assert [r["label"] for r in csv.DictReader(f)] == ["社会治安"]


# --- repeat petitions (重复访) --------------------------------------------------------------------

def test_the_same_person_on_the_same_matter_is_a_repeat_linked_and_told(db, appeal, router, outbox_events):
    first = appeal(1, citizen_ref=PERSON_A, village_code=JINSI)
    handlers.return_order(db(), router, first["order_no"], GRID, "路灯归镇里管", "r")  # now the town's
    second = appeal(2, "路灯还是不亮", "上次反映的村口路灯还没修", citizen_ref=PERSON_A,
                    village_code=JINSI, at=T0 + timedelta(days=10))
    # the unit that has the matter gets it again
    assert (second["unit_code"], second["routing_basis"], second["repeat_of"]) == (
        TOWN, "repeat", "YC20261125000001")
    [repeat] = events(outbox_events, db, "repeat_detected")
    assert repeat["case_no"] == "YC20261125000002"
    assert repeat["data"]["earlier_case_no"] == "YC20261125000001" and repeat["data"]["unit_code"] == TOWN
    assert repeat["data"]["repeat_count"] == 2 and repeat["data"]["order_no"] == second["order_no"]
    third = appeal(3, "第三次反映路灯", "村口路灯坏了一直没人修", citizen_ref=PERSON_A,
                   village_code=JINSI, at=T0 + timedelta(days=20))
    assert third["repeat_of"] == "YC20261125000001"
    assert events(outbox_events, db, "repeat_detected")[-1]["data"]["repeat_count"] == 3
    assert handlers.repeat_counts(db()) == {TOWN: 2}


def test_other_people_other_towns_and_old_cases_are_not_repeats(db, appeal, outbox_events):
    appeal(1, citizen_ref=PERSON_A, village_code=JINSI)
    assert appeal(2, citizen_ref=PERSON_B, village_code=JINSI)["repeat_of"] is None
    assert appeal(3, citizen_ref=PERSON_A, town_code=GUSHAO, village_code=None)["repeat_of"] is None
    assert appeal(4, citizen_ref=PERSON_A, village_code=JINSI, at=T0 + timedelta(days=91))["repeat_of"] is None
    assert appeal(5, citizen_ref=None, anonymous=True, village_code=JINSI)["repeat_of"] is None
    # another matter of the same person in the same town
    assert appeal(6, "拖欠工资", "老板欠工资三个月", citizen_ref=PERSON_A)["repeat_of"] is None
    assert events(outbox_events, db, "repeat_detected") == []


# --- cross-level petitions (越级访) -----------------------------------------------------------------

def test_a_district_hotline_call_about_a_grid_matter_is_a_cross_level_petition(db, appeal, outbox_events):
    routed = appeal(1, channel="hotline", citizen_ref=PERSON_A, village_code=JINSI)
    assert routed["cross_level"] is True and routed["unit_code"] == GRID  # routed back down
    [flag] = events(outbox_events, db, "cross_level_petition_detected")
    assert flag["data"] == {"order_no": routed["order_no"], "unit_code": GRID, "town_code": YINPING,
                            "category": "municipal", "item": "street-lights", "level": "grid",
                            "reception_level": "district", "channel": "hotline"}
    with db() as uow:
        assert uow.session.get(Appeal, "YC20261125000001").reception_level == "district"


def test_the_reception_level_given_by_intake_counts_over_the_channel(db, appeal, outbox_events):
    assert appeal(1, channel="web", reception_level="district", citizen_ref=PERSON_A,
                  village_code=JINSI)["cross_level"] is True
    assert appeal(2, channel="hotline", reception_level="town", citizen_ref=PERSON_B,
                  village_code=JINSI)["cross_level"] is False


def test_a_matter_raised_below_first_or_for_the_district_is_not_cross_level(db, appeal, outbox_events):
    appeal(1, channel="grid_patrol", citizen_ref=PERSON_A, village_code=JINSI)  # raised to the grid worker
    assert appeal(2, channel="hotline", citizen_ref=PERSON_A, village_code=JINSI,
                  at=T0 + timedelta(days=120))["cross_level"] is False
    assert appeal(3, "工地拖欠工资", "拖欠农民工工资三个月", channel="hotline",
                  citizen_ref=PERSON_B)["cross_level"] is False  # a district department's matter
    assert events(outbox_events, db, "cross_level_petition_detected") == []


# --- hot spots (热点) -----------------------------------------------------------------------------

# neighbours passing one message round and sending it, each with a word of their own
TEXTS = ["阴平镇金寺村东头的化工厂每天晚上偷排污水，河里的鱼都死了，气味刺鼻，请尽快处理",
         "阴平镇金寺村东头的化工厂每天晚上偷排污水，河里的鱼都死了，气味刺鼻，请政府尽快处理",
         "金寺村东头的化工厂每天晚上偷排污水，河里的鱼都死了，气味刺鼻，请尽快处理！",
         "强烈反映：阴平镇金寺村东头的化工厂每天晚上偷排污水，河里的鱼都死了，气味刺鼻"]


def test_several_people_on_one_problem_make_one_hot_spot(db, appeal, outbox_events):
    index = AppealIndex()
    people = [PERSON_A, PERSON_B, PERSON_C, PERSON_D]
    for n, (text, person) in enumerate(zip(TEXTS, people), start=1):
        appeal(n, "化工厂偷排污水", text, citizen_ref=person, village_code=JINSI, index=index,
               at=T0 + timedelta(hours=n))
        if n == 2:
            assert events(outbox_events, db, "hotspot_detected") == []  # two are not yet a hot spot
    [hotspot] = events(outbox_events, db, "hotspot_detected")  # once, at the third
    data = hotspot["data"]
    assert data["case_nos"] == [f"YC20261125{n:06d}" for n in (1, 2, 3)]
    assert (data["appeals"], data["people"], data["town_code"], data["village_code"]) == (3, 3, YINPING, JINSI)
    assert data["item"] == "water-pollution" and data["window_hours"] == 72
    [cluster] = handlers.hotspots(db())
    assert cluster["hotspot_id"] == data["hotspot_id"] and cluster["appeals"] == 4 and cluster["people"] == 4
    assert cluster["case_nos"] == [f"YC20261125{n:06d}" for n in (1, 2, 3, 4)]
    assert handlers.hotspots(db(), town_code=GUSHAO) == []


def test_a_hot_spot_opened_within_a_batch_is_joined_by_the_next_appeals_of_that_batch(
        db, router, appeal, appeal_received, outbox_events):
    """Two neighbours are stored; one batch brings the third (the hot spot opens, with the stored
    two as members) and the fourth and fifth, which join it, the fifth from someone already in it:
    the batch reads the stored members' hot spots once, writes the hot spot with its rows at the
    end, and counts its people right."""
    index = AppealIndex()
    for n, person in ((1, PERSON_A), (2, PERSON_B)):
        appeal(n, "化工厂偷排污水", TEXTS[n - 1], citizen_ref=person, village_code=JINSI, index=index,
               at=T0 + timedelta(hours=n))
    batch = [appeal_received(case_no=f"YC20261125{n:06d}", title="化工厂偷排污水", content=TEXTS[(n - 1) % 4],
                             received_at=(T0 + timedelta(hours=n)).isoformat(), citizen_ref=person,
                             village_code=JINSI)
             for n, person in ((3, PERSON_C), (4, PERSON_D), (5, PERSON_A))]
    results = handlers.dispatch_appeals(db(), router, CONSUMER, batch, now=T0 + timedelta(hours=6), index=index)
    assert all(r is not None for r in results)
    [hotspot] = events(outbox_events, db, "hotspot_detected")
    assert hotspot["case_no"] == "YC20261125000003" and hotspot["data"]["appeals"] == 3
    [cluster] = handlers.hotspots(db())
    assert cluster["case_nos"] == [f"YC20261125{n:06d}" for n in (1, 2, 3, 4, 5)]
    assert (cluster["appeals"], cluster["people"]) == (5, 4)


class WatchedIndex(AppealIndex):
    """Counts the questions asked of it; ``meanwhile`` runs at the first (another batch adding an
    appeal while this one reads the database)."""

    def __init__(self, meanwhile=None):
        super().__init__()
        self.asked, self.meanwhile = 0, meanwhile

    def neighbours(self, *args, **kwargs):
        self.asked += 1
        found = super().neighbours(*args, **kwargs)
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            meanwhile(self)
        return found


@pytest.mark.parametrize("changed_meanwhile", [False, True])
def test_an_appeal_arriving_alone_asks_the_index_once_unless_it_changed_meanwhile(
        db, router, appeal, appeal_received, outbox_events, changed_meanwhile):
    """The batch asks the index for each appeal's neighbours before it reads the database; an appeal
    arriving alone takes that answer, unless the index changed in between (then it asks again and
    finds the appeal added meanwhile: here the second neighbour, and with it the hot spot)."""
    appeal(1, "化工厂偷排污水", TEXTS[0], citizen_ref=PERSON_A, village_code=JINSI, at=T0 + timedelta(hours=1))
    appeal(2, "化工厂偷排污水", TEXTS[1], citizen_ref=PERSON_B, village_code=JINSI, at=T0 + timedelta(hours=2))

    def another_batch_adds_the_second(index):
        index.remember("YC20261125000002", "化工厂偷排污水", TEXTS[1], YINPING, T0 + timedelta(hours=2))
    index = WatchedIndex(another_batch_adds_the_second if changed_meanwhile else None)
    index.remember("YC20261125000001", "化工厂偷排污水", TEXTS[0], YINPING, T0 + timedelta(hours=1))
    if not changed_meanwhile:
        another_batch_adds_the_second(index)
    third = appeal_received(case_no="YC20261125000003", title="化工厂偷排污水", content=TEXTS[2],
                            citizen_ref=PERSON_C, village_code=JINSI,
                            received_at=(T0 + timedelta(hours=3)).isoformat())
    handlers.dispatch_appeals(db(), router, CONSUMER, [third], now=T0 + timedelta(hours=3), index=index)
    assert index.asked == (2 if changed_meanwhile else 1)
    [hotspot] = events(outbox_events, db, "hotspot_detected")
    assert hotspot["data"]["case_nos"] == [f"YC20261125{n:06d}" for n in (1, 2, 3)]


def test_one_person_many_times_other_towns_and_old_appeals_make_no_hot_spot(db, appeal, outbox_events):
    index = AppealIndex()
    for n, text in enumerate(TEXTS[:3], start=1):  # one person, three times
        appeal(n, "化工厂偷排污水", text, citizen_ref=PERSON_A, village_code=JINSI, index=index)
    appeal(4, "化工厂偷排污水", TEXTS[3], citizen_ref=PERSON_B, town_code=GUSHAO, village_code=None,
           index=index)  # same words, another town
    appeal(5, "化工厂偷排污水", TEXTS[3], citizen_ref=PERSON_C, village_code=JINSI, index=index,
           at=T0 + timedelta(days=10))  # long after
    assert events(outbox_events, db, "hotspot_detected") == []


def test_a_batch_sees_its_own_appeals_and_counts_a_hot_spot_as_one_by_one(db, router, appeal_received,
                                                                         outbox_events):
    """dispatch_appeals (the batch handler's path): each appeal of the batch sees those before it —
    the hot spot forms at the third, a person writing twice is one person and a repeat — and an
    event delivered twice in the batch makes one order."""
    index = AppealIndex()
    people = [PERSON_A, PERSON_B, PERSON_C, PERSON_D, PERSON_A]
    texts = [*TEXTS, TEXTS[0]]
    batch = [appeal_received(case_no=f"YC20261125{n:06d}", title="化工厂偷排污水", content=text,
                             citizen_ref=person, village_code=JINSI,
                             received_at=(T0 + timedelta(hours=n)).isoformat())
             for n, (text, person) in enumerate(zip(texts, people), start=1)]
    results = handlers.dispatch_appeals(db(), router, CONSUMER, batch + batch[:1], now=T0 + timedelta(hours=6),
                                        index=index)
    assert [r is not None for r in results] == [True] * 5 + [False]
    assert results[4]["repeat_of"] == "YC20261125000001"
    assert len(orders(db)) == 5
    [hotspot] = events(outbox_events, db, "hotspot_detected")
    assert hotspot["data"]["case_nos"] == [f"YC20261125{n:06d}" for n in (1, 2, 3)]
    [cluster] = handlers.hotspots(db())
    assert (cluster["appeals"], cluster["people"]) == (5, 4)
    assert handlers.dispatch_appeals(db(), router, CONSUMER, batch, index=index) == [None] * 5


def test_a_later_batch_joins_the_stored_hot_spot_and_counts_each_person_once(db, router, appeal_received):
    """The hot spot a first batch opened, joined by a second batch without writing each appeal on
    its own: one person already in it and one new person writing twice add three appeals, one person."""
    index = AppealIndex()

    def envelopes(first, people):
        return [appeal_received(case_no=f"YC20261125{n:06d}", title="化工厂偷排污水", content=TEXTS[n % len(TEXTS)],
                                citizen_ref=person, village_code=JINSI,
                                received_at=(T0 + timedelta(hours=n)).isoformat())
                for n, person in enumerate(people, start=first)]
    handlers.dispatch_appeals(db(), router, CONSUMER, envelopes(1, [PERSON_A, PERSON_B, PERSON_C]),
                              now=T0 + timedelta(hours=4), index=index)
    [cluster] = handlers.hotspots(db())
    assert (cluster["appeals"], cluster["people"]) == (3, 3)
    handlers.dispatch_appeals(db(), router, CONSUMER, envelopes(4, [PERSON_A, PERSON_D, PERSON_D]),
                              now=T0 + timedelta(hours=8), index=index)
    [cluster] = handlers.hotspots(db())
    assert (cluster["appeals"], cluster["people"]) == (6, 4)


def _statements(db, run):
    """How many SQL statements ``run()`` sends to the database behind the unit of work ``db``."""
    from sqlalchemy import event
    with db() as uow:
        engine = uow.session.get_bind()
    seen = []
    listener = lambda *args: seen.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    return seen


def test_a_batch_reads_the_database_once_per_question_not_once_per_appeal(db, router, appeal_received):
    """The orders the cases have, the people's earlier appeals, their orders and the divisions are
    read once for the whole batch: a batch of 20 appeals sends no more statements than one of 4."""
    def batch(first, count):
        return [appeal_received(case_no=f"YC20261125{n:06d}", citizen_ref=f"{n:064x}", village_code=JINSI,
                                received_at=(T0 + timedelta(minutes=n)).isoformat())
                for n in range(first, first + count)]
    small, large = batch(1, 4), batch(100, 20)
    few = _statements(db, lambda: handlers.dispatch_appeals(db(), router, CONSUMER, small, now=T0))
    many = _statements(db, lambda: handlers.dispatch_appeals(db(), router, CONSUMER, large, now=T0))
    assert len(orders(db)) == 24

    def reads(statements):
        return [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(reads(many)) <= len(reads(few)), "\n".join(reads(many))
    with db() as uow:
        batched_writes = uow.session.get_bind().dialect.name == "postgresql"  # SQLite numbers row by row
    if batched_writes:   # the rows too: one INSERT per table for the batch
        assert len(many) <= len(few), "\n".join(many)


def test_a_person_with_more_earlier_appeals_than_the_batch_reads_is_still_found_a_repeat(db, router, appeal,
                                                                                         appeal_received):
    """Beyond EARLIER_LIMIT earlier appeals the batch read gives up on the person and the database
    is asked per appeal, as before: the repeat is still found, in a batch too."""
    for n in range(1, handlers.EARLIER_LIMIT + 3):
        appeal(n, f"第{n}件事", f"不相干的第{n}件事情，各不相同的内容{n * 7919}", citizen_ref=PERSON_A,
               village_code=JINSI, at=T0 + timedelta(minutes=n))
    lamp = appeal(500, citizen_ref=PERSON_A, village_code=JINSI, at=T0 + timedelta(hours=5))
    again = [appeal_received(case_no=f"YC20261125{n:06d}", title="路灯还是不亮", content="上次反映的村口路灯还没修",
                             citizen_ref=PERSON_A, village_code=JINSI,
                             received_at=(T0 + timedelta(hours=6, minutes=n)).isoformat())
             for n in (501, 502)]
    results = handlers.dispatch_appeals(db(), router, CONSUMER, again, now=T0 + timedelta(hours=7))
    assert [r["repeat_of"] for r in results] == [lamp["repeat_of"] or "YC20261125000500"] * 2


def test_reference_data_is_read_once_per_process_and_again_after_a_load(db, router, appeal_received):
    """Divisions and units are read by the first batch only; a load through this process is seen
    by the next batch (a load elsewhere within REFERENCE_TTL)."""
    from wuji_common import reference
    handlers.load_reference(db(), list(reference.divisions()), list(reference.units()))

    def dispatch(n):
        return handlers.dispatch_appeals(db(), router, CONSUMER, [appeal_received(
            case_no=f"YC20261125{n:06d}", citizen_ref=None, village_code=JINSI)], now=T0)[0]

    def reference_reads(statements):
        return [s for s in statements if "FROM units" in s or "FROM divisions" in s]
    assert reference_reads(_statements(db, lambda: dispatch(1)))
    assert reference_reads(_statements(db, lambda: dispatch(2))) == []
    units = [dict(u, name="金寺村网格员（新）") if u["code"] == GRID else u for u in reference.units()]
    handlers.load_reference(db(), list(reference.divisions()), units)
    assert dispatch(3)["unit_code"] == GRID
    with db() as uow:
        order = uow.session.execute(select(WorkOrder).where(WorkOrder.case_no == "YC20261125000003")).scalar_one()
        assert order.unit_name == "金寺村网格员（新）"
    handlers.load_reference(db(), list(reference.divisions()), list(reference.units()))

"""triage's rules without a database: the shipped taxonomy, routing at each level, the classifier as
a collaborator, deadlines and the work-order life cycle."""
import copy
from collections import namedtuple
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from triage import domain
from triage.dependencies import DEFAULT_TAXONOMY_PATH, build_router
from triage.domain import COMMAND_CENTRE, Router, Taxonomy, TaxonomyError, UnitRef
from wuji_common import reference
from wuji_common.errors import InvalidTransition

YINPING, JINSI = "370404101", "370404101201"
UNITS = {u["code"]: UnitRef(u["code"], u["name"], u["type"]) for u in reference.units()}
CLASSIFIER_LABELS = ("城乡建设", "劳动和社会保障", "教育文体", "商贸旅游", "环境保护", "卫生计生", "交通运输")


def lookup(codes):
    return {c: UNITS[c] for c in codes if c in UNITS}


def route(router, title, content="", town=YINPING, village=None, excluded=()):
    return router.route(router.assess(title, content), town, village, lookup, excluded)


# --- the shipped taxonomy -------------------------------------------------------------------

def test_shipped_taxonomy_is_versioned_and_names_only_real_units(taxonomy):
    assert taxonomy.version
    assert taxonomy.unit_codes() <= set(UNITS)
    assert set(taxonomy.labels) == set(CLASSIFIER_LABELS)
    for item in taxonomy.items.values():
        assert item.policy.urgent.resolve_hours <= item.policy.normal.resolve_hours
    # every level is used, so each routing branch is live configuration
    assert {i.level for i in taxonomy.items.values()} == set(domain.LEVELS)


def raw_taxonomy():
    with open(DEFAULT_TAXONOMY_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("break_it, complaint", [
    (lambda d: d.pop("version"), "no version"),
    (lambda d: d["categories"][0]["items"][0].update(level="province"), "level"),
    (lambda d: d["categories"][0]["items"][1].update(department=None), "department"),
    (lambda d: d["categories"][0]["items"][0].update(
        time_limit={"accept_hours": 2, "resolve_hours": 10, "urgent": {"accept_hours": 1, "resolve_hours": 20}}),
     "urgent limits"),
    (lambda d: d["categories"][0]["items"][1].update(code=d["categories"][0]["items"][0]["code"]), "duplicate"),
    (lambda d: d["classifier"]["labels"].update(新标签="no-such-category"), "unknown categories"),
    (lambda d: d.update(fallback_item="nothing"), "fallback_item"),
    (lambda d: d["categories"][0].update(default_item="wage-arrears"), "default_item"),
])
def test_an_inconsistent_taxonomy_is_refused_at_load(break_it, complaint):
    data = copy.deepcopy(raw_taxonomy())
    break_it(data)
    with pytest.raises(TaxonomyError, match=complaint):
        Taxonomy.from_dict(data)


def test_items_inherit_from_their_category_and_the_defaults(taxonomy):
    property_mgmt = taxonomy.items["property-management"]
    assert (property_mgmt.level, property_mgmt.department) == ("district", "dept-housing")
    assert property_mgmt.policy.normal == domain.TimeLimit(2, 120)  # defaults: 2 h, 5 days
    water = taxonomy.items["water-supply"]
    assert water.department == "dept-water" and water.policy.urgent == domain.TimeLimit(0.25, 6)


def test_keywords_in_the_title_and_longer_keywords_weigh_more(taxonomy):
    [(best, score), *_] = taxonomy.keyword_matches("拖欠工资", "工地施工")
    assert best.code == "wage-arrears" and score == 8  # 4 characters, in the title
    [(best, _), *_] = taxonomy.keyword_matches("反映问题", "夜间施工噪音扰民")
    assert best.code == "noise"  # 夜间施工 + 噪音 + 扰民 beat 施工 alone
    assert taxonomy.keyword_matches("你好", "想问一件事") == []


def test_the_keywords_found_are_those_a_search_for_each_keyword_finds(taxonomy):
    """keyword_matches looks up keywords by their first two characters; it finds exactly what
    searching the title and the content for each keyword in turn finds: on real messages, on the
    keywords themselves, and on texts made of keyword fragments (a pair across title and content
    is not a keyword found)."""
    from triage import classifier as clf
    here = Path(__file__).resolve()
    training = next(p for p in (here.parents[5] / "shared" / "data" / "appeals-train.csv",
                                here.parents[4] / "shared" / "data" / "appeals-train.csv") if p.exists())
    keywords = [k for item in taxonomy.items.values() for k in item.keywords]

    def each_in_turn(title, content):
        return {k for k in keywords if k in title or k in content}
    texts = [(m["subject"], m["body"]) for m in clf.read_csv(training)[:300]]
    texts += [(k, "") for k in keywords] + [("", k) for k in keywords]
    texts += [(k[:-1], k[-1:]) for k in keywords]
    texts += [(keywords[i][1:], keywords[i - 1][:1]) for i in range(len(keywords))]
    for title, content in texts:
        assert taxonomy._keywords_in(title, content) == each_in_turn(title, content), (title, content)


# --- routing: category × location → unit ----------------------------------------------------

def test_grid_items_go_to_the_villages_grid_worker(router):
    r = route(router, "村口路灯不亮", "路灯坏了", village=JINSI)
    assert (r.unit.code, r.level, r.item.code) == (f"grid-{JINSI}", "grid", "street-lights")


def test_grid_items_without_a_village_go_to_the_town_office(router):
    r = route(router, "路边垃圾成堆", "没人清理")
    assert (r.unit.code, r.level) == (f"town-{YINPING}", "town")


def test_town_items_go_to_the_town_office(router):
    r = route(router, "有人私搭乱建", "占用公共通道", village=JINSI)
    assert (r.unit.code, r.level, r.item.code) == (f"town-{YINPING}", "town", "illegal-construction")
    assert set(r.item.co_handlers) == {"dept-urban", "dept-natural-resources"}


def test_district_items_go_to_the_department(router):
    r = route(router, "工地老板拖欠工资", "拖欠农民工工资三个月", village=JINSI)
    assert (r.unit.code, r.level) == ("dept-hrss", "district")
    assert r.unit.name == "区人力资源和社会保障局" and r.item.category == "labour"


def test_nothing_recognisable_falls_back_to_the_town_office(router):
    r = route(router, "咨询", "想问一件事情", village=JINSI)
    assert (r.unit.code, r.basis, r.item.code) == (f"town-{YINPING}", "fallback", "general-other")
    assert r.confidence is None and r.taxonomy_version == router.taxonomy.version


def test_urgent_appeals_get_the_shorter_limits(router):
    normal = route(router, "小区暖气不热", "供暖温度不够")
    urgent = route(router, "小区燃气泄漏", "闻到煤气味，很危险")
    assert normal.item.code == urgent.item.code == "gas-heating"
    assert (normal.policy, urgent.policy) == ("normal", "urgent")
    assert urgent.limit == domain.TimeLimit(0.25, 4)
    assert urgent.limit.resolve_hours < normal.limit.resolve_hours


def test_a_returned_appeal_goes_elsewhere_then_to_the_town_then_the_command_centre(router):
    r = route(router, "村口路灯不亮", village=JINSI, excluded={f"grid-{JINSI}"})
    assert r.unit.code == f"town-{YINPING}"
    r = route(router, "村口路灯不亮", village=JINSI, excluded={f"grid-{JINSI}", f"town-{YINPING}"})
    assert (r.unit.code, r.level) == (COMMAND_CENTRE, "district")
    # the command centre takes what no one else fits, even if it were excluded
    r = route(router, "村口路灯不亮", village=JINSI,
              excluded={f"grid-{JINSI}", f"town-{YINPING}", COMMAND_CENTRE})
    assert r.unit.code == COMMAND_CENTRE


def test_a_returned_appeal_tries_the_other_matching_items_first(router):
    # 噪音 (environment) and 渣土车 (transport) both match: the transport bureau is next in line
    first = route(router, "夜间施工噪音扰民，渣土车撒漏")
    second = route(router, "夜间施工噪音扰民，渣土车撒漏", excluded={first.unit.code})
    assert first.unit.code == "dept-environment" and first.item.code == "noise"
    assert second.unit.code == "dept-transport" and second.item.code == "overloading"


def test_a_village_grid_worker_missing_from_the_reference_data_means_the_town_office(router):
    r = route(router, "村口路灯不亮", village="370404101299")
    assert r.unit.code == f"town-{YINPING}"


def test_an_unknown_place_with_no_units_at_all_is_an_error(router):
    with pytest.raises(LookupError):
        router.route(router.assess("咨询", ""), YINPING, None, lambda codes: {})


# --- the classifier as a collaborator -------------------------------------------------------

Classification = namedtuple("Classification", "label probability ranked")


class FixedClassifier:
    """Answers what the test says it answers (the real model is tested on its own)."""
    version = "test-1"

    def __init__(self, *ranked):
        self.ranked = list(ranked)

    def classify(self, subject, body):
        return Classification(self.ranked[0][0], self.ranked[0][1], self.ranked)


def test_a_confident_classifier_decides_the_category_and_keywords_the_item(taxonomy):
    router = Router(taxonomy, FixedClassifier(("环境保护", 0.9), ("城乡建设", 0.05)))
    a = router.assess("反映情况", "附近工厂偷排")  # a weak match alone would not decide
    assert (a.item.code, a.basis, a.confidence) == ("water-pollution", "keywords+classifier", 0.9)
    a = router.assess("反映情况", "附近一直有问题")
    assert (a.item.code, a.basis) == ("air-pollution", "classifier")  # the label's default item
    assert router.version == "router-2+model-test-1"


def test_a_strong_keyword_match_decides_over_the_classifier(taxonomy):
    router = Router(taxonomy, FixedClassifier(("劳动和社会保障", 0.8), ("城乡建设", 0.15)))
    a = router.assess("村口路灯不亮", "晚上出行不便")
    assert (a.item.code, a.basis) == ("street-lights", "keywords")
    assert a.confidence == 0.15  # the model's probability for the label covering the rules' choice
    assert a.review is None  # the district's rules decided: nothing for a dispatcher
    agreeing = Router(taxonomy, FixedClassifier(("城乡建设", 0.8)))
    assert agreeing.assess("村口路灯不亮", "").basis == "keywords+classifier"


def test_an_unsure_classifier_leaves_it_to_keywords_or_the_fallback(taxonomy):
    router = Router(taxonomy, FixedClassifier(("卫生计生", 0.3), ("教育文体", 0.25)))
    weak = router.assess("反映", "孩子的学校")
    assert weak.item.code == "education" and weak.review == "low_confidence"
    a = router.assess("反映", "一件事")
    assert (a.item.code, a.basis, a.review) == ("general-other", "fallback", "low_confidence")
    # its guesses remain as alternatives for a re-routing
    assert [i.code for i in a.items[1:3]] == ["health-service", "education"]


def test_ranked_labels_may_come_as_a_mapping(taxonomy):
    router = Router(taxonomy, FixedClassifier(("环境保护", 0.9)))
    router.classifier.classify = lambda s, b: Classification("环境保护", 0.9, {"城乡建设": 0.1, "环境保护": 0.9})
    a = router.assess("反映情况", "附近一直有问题")
    assert (a.item.code, a.confidence) == ("air-pollution", 0.9)
    assert a.items[1].code == "housing-development"


def test_labels_the_taxonomy_does_not_know_are_ignored(taxonomy):
    router = Router(taxonomy, FixedClassifier(("外星来客", 0.99)))
    assert router.assess("反映", "一件事").basis == "fallback"


def test_the_router_runs_with_or_without_a_model_file():
    router = build_router()
    assert router.version.startswith("router-2+")
    a = router.assess("村口路灯不亮", "阴平镇金寺村村口的路灯坏了一个多月")
    assert a.item.code == "street-lights"
    assert build_router(classifier="off").classifier is None
    assert build_router(classifier=False).classifier is None  # TRIAGE_CLASSIFIER=off read by YAML


# --- deadlines and the life cycle -----------------------------------------------------------

def test_an_items_own_time_limit_is_calendar_hours_from_dispatch():
    at = datetime(2026, 11, 25, 22, 0, tzinfo=timezone.utc)
    due = domain.deadlines(domain.TimeLimit(0.5, 72), at)
    accept, resolve = due["report_in"], due["resolve"]
    assert due["first_contact"] == accept  # no first-contact limit of its own
    assert accept == at + timedelta(minutes=30) and resolve == datetime(2026, 11, 28, 22, 0, tzinfo=timezone.utc)
    assert domain.within(accept, accept) and not domain.within(accept + timedelta(seconds=1), accept)


@pytest.mark.parametrize("action, status, after", [
    ("accept", "dispatched", "accepted"),
    ("return", "dispatched", "returned"),
    ("return", "accepted", "returned"),
    ("progress", "accepted", "accepted"),
    ("progress", "reopened", "reopened"),
    ("resolve", "accepted", "resolved"),
    ("resolve", "reopened", "resolved"),
    ("complete_operation", "dispatched", "resolved"),
    ("reopen", "resolved", "reopened"),
    ("close", "resolved", "closed"),
])
def test_allowed_transitions(action, status, after):
    assert domain.next_status(action, status) == after


@pytest.mark.parametrize("action, status", [
    ("accept", "accepted"), ("accept", "closed"), ("return", "resolved"), ("progress", "dispatched"),
    ("resolve", "dispatched"), ("resolve", "closed"), ("reopen", "closed"), ("close", "accepted"),
    ("complete_operation", "closed"), ("accept", "returned"),
])
def test_illegal_transitions_are_refused(action, status):
    with pytest.raises(InvalidTransition):
        domain.next_status(action, status)


def test_order_numbers_carry_the_local_date():
    late_evening_utc = datetime(2026, 11, 25, 17, 30, tzinfo=timezone.utc)  # 01:30 on the 26th in China
    assert domain.order_no_for(late_evening_utc, 123) == "GD20261126000123"

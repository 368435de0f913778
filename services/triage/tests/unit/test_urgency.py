"""Risk words read in context (triage.urgency): a denied risk does not make an appeal urgent; a risk
word that holds a negation itself, a question, a double negation or a precaution still does."""
import pytest

from triage.domain import Router
from triage.urgency import mentions, risk_words


@pytest.mark.parametrize("text, keyword", [
    ("经检查没有危险，请放心", "危险"),
    ("他说自己不会自杀，只是想讨个说法", "自杀"),
    ("现场无人员被困", "被困"),
    ("仓库未发生火灾，只是冒烟", "火灾"),
    ("燃气公司上门检查，没有发现燃气泄漏", "燃气泄漏"),
    ("这件事不紧急，有空来看看就行", "紧急"),
    ("我们不会去北京上访，只希望镇里解决", "去北京上访"),
    ("已排除燃气泄漏", "燃气泄漏"),
    ("他不会再跳楼了，家人一直陪着", "跳楼"),
])
def test_a_denied_risk_is_not_raised(text, keyword):
    assert not mentions(text, keyword)


@pytest.mark.parametrize("text, keyword", [
    ("我真的不想活了", "不想活了"),         # the negation is part of the risk word
    ("工资再不发我们就活不下去了", "活不下去"),
    ("受不了不想活了", "不想活了"),
    ("小区里燃气泄漏了", "燃气泄漏"),
    ("会不会有危险？请来看看", "危险"),      # asking, not denying
    ("有没有危险谁也说不清", "危险"),
    ("不是没有危险，是很危险", "危险"),      # double negation
    ("不及时处理会有生命危险", "生命危险"),  # the negation is about something else
    ("不处理有危险", "危险"),
    ("劝他不要自杀", "自杀"),
    ("请加装护栏，以免发生溺水", "溺水"),    # a precaution is a warning
    ("我们没有人身安全保障", "人身安全"),    # its denial is itself a risk
])
def test_a_risk_that_is_not_denied_is_raised(text, keyword):
    assert mentions(text, keyword)


def test_one_undenied_occurrence_is_enough():
    assert mentions("楼下没有起火，但是隔壁起火了", "起火")
    assert not mentions("没有起火，也不会起火", "起火")
    assert risk_words("他说不会自杀，可昨天又说要跳楼", ("自杀", "跳楼", "轻生")) == ("跳楼",)


def test_the_router_flags_what_is_raised_and_not_what_is_denied(taxonomy):
    router = Router(taxonomy)
    assert router.assess("楼道里闻到煤气", "邻居家没有人，门口一直漏气").urgency == "emergency"
    assert router.assess("燃气表读数问题", "师傅检查过了，没有漏气，也没有危险，只是读数不对").flags == ()
    calm = router.assess("拖欠工资", "老板拖了三个月工资，我不会轻生，只想讨个说法").flags
    assert "self_harm" not in {f.rule for f in calm}
    desperate = router.assess("拖欠工资", "老板拖了三个月工资，我真的不想活了")
    assert [f.keywords for f in desperate.flags if f.rule == "self_harm"] == [("不想活了",)]
    assert desperate.urgency == "emergency"

"""Reading risk words (风险研判) in context: a risk word the citizen denies does not make an appeal
urgent. Plain functions, no I/O; ``Taxonomy.risk_flags`` asks ``mentions`` for every keyword.

"没有危险", "不会自杀", "无人员被困", "未发生火灾", "没有发现燃气泄漏" deny the risk word: a negation
(没有, 没, 无, 未, 不, 不会, 并未, 不存在, 排除, …) directly before it, with at most a few words
between that keep the negation on it (有, 任何, 发生, 发现, 出现, 人员, 再, …). Anything else between
them ends the negation's reach: "不及时处理会有生命危险" and "不处理有危险" stay urgent. So do:

- risk words that hold a negation themselves ("不想活了", "活不下去"): only what comes before the
  word can deny it, and "我真的不想活了" has nothing there;
- questions of the A-not-A kind ("会不会有危险", "有没有危险"): the citizen is asking, not denying;
- double negations ("不是没有危险", "并非没有危险"): the risk is affirmed;
- precautions ("防止火灾", "以免发生坍塌"): a warning about a risk, kept as the rules had it;
- words that name a good rather than a harm (人身安全): "没有人身安全" is itself a risk.

An appeal is urgent for a word when at least one of its occurrences is not denied.
"""
import re

# negations that can deny what follows; longer first, so the regex takes the whole cue
_NEGATIONS = ("并没有", "并不会", "不存在", "不至于", "不构成", "排除了", "没有", "并未", "并无", "不会",
              "不是", "从未", "未曾", "排除", "否认", "没", "无", "未", "不")
# words that may stand between a negation and the risk word without ending its reach
# (not 要: "劝他不要自杀" speaks of someone at risk; not 了: "受不了不想活了")
_BRIDGES = ("任何", "什么", "发生", "发现", "出现", "造成", "存在", "构成", "人员", "有人", "人",
            "有", "再", "曾", "过")
# a negation right before another cancels it (不是没有危险 = there is danger)
_DOUBLE = ("不是", "并非", "并不是", "不能说", "不代表", "不等于")
# words whose denial is itself a risk
NOT_NEGATABLE = frozenset({"人身安全"})
MAX_BRIDGE_CHARS = 6

_CUE = re.compile("(?:%s)(?:%s){0,3}$" % ("|".join(_NEGATIONS), "|".join(_BRIDGES)))
_CLAUSE_END = re.compile(r"[，。！？；、：,.!?;:\n]")


def denied(text: str, start: int) -> bool:
    """Whether the risk word at ``text[start:]`` is denied by what stands right before it."""
    before = _CLAUSE_END.split(text[max(0, start - len("并没有") - MAX_BRIDGE_CHARS - 3):start])[-1]
    match = _CUE.search(before)
    if match is None or len(match.group()) > len("并没有") + MAX_BRIDGE_CHARS:
        return False
    cue_at = match.start()
    cue = next(n for n in _NEGATIONS if match.group().startswith(n))
    preceding = before[:cue_at]
    # A-not-A question: 有没有, 会不会, 是不是, 能不能 … (the verb before the negation repeats after it)
    negated_verb = "有" if cue in ("没", "没有") else match.group()[len(cue):len(cue) + 1] \
        if cue in ("不", "没") else cue[-1] if cue in ("不会", "不是") else ""
    if negated_verb and preceding.endswith(negated_verb):
        return False
    if any(preceding.endswith(d) for d in _DOUBLE):
        return False
    return True


def mentions(text: str, keyword: str) -> bool:
    """Whether ``text`` raises ``keyword`` as a risk: it occurs at least once without being denied."""
    start = text.find(keyword)
    if start < 0:
        return False
    if keyword in NOT_NEGATABLE:
        return True
    while start >= 0:
        if not denied(text, start):
            return True
        start = text.find(keyword, start + 1)
    return False


def risk_words(text: str, keywords) -> tuple:
    """The keywords ``text`` raises as risks, in the order given."""
    return tuple(k for k in keywords if mentions(text, k))

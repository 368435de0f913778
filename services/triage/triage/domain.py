"""triage's rules, without I/O: the taxonomy (事项目录) and routing policy, the router, deadlines
(限时办结) and the work-order (工单) life cycle.

The taxonomy is parsed from data handed in (``Taxonomy.from_dict``), units are looked up through a
function the caller passes, and the classifier is an injected collaborator: the router works on
keywords alone when there is none.
"""
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from triage.clocks import ClockPolicy, Limit
from triage.urgency import risk_words
from wuji_common.errors import InvalidTransition
from wuji_common.events import CHINA_TIME  # order numbers carry the local date

ROUTER_VERSION = "2"
LEVELS = ("grid", "town", "district")
URGENCIES = ("emergency", "urgent", "normal")  # as enforcement_requested carries them
ENFORCEMENT_WHEN = ("dispatch", "whistle")
RECEPTION_LEVELS = ("district", "town", "village")
COMMAND_CENTRE = "dept-command"  # 区社会治理服务中心: takes what no other unit fits, cannot return it


class TaxonomyError(ValueError):
    """The taxonomy file is inconsistent; raised at load time, never while routing."""


# --- taxonomy -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TimeLimit:
    accept_hours: float
    resolve_hours: float


@dataclass(frozen=True)
class Policy:
    """Time-limit policy (时限) of an item: the normal limits and the shorter urgent ones."""
    normal: TimeLimit
    urgent: TimeLimit

    def pick(self, urgent):
        return ("urgent", self.urgent) if urgent else ("normal", self.normal)


@dataclass(frozen=True)
class Item:
    """An item (事项): what an appeal is routed as."""
    code: str
    name: str
    category: str
    category_name: str
    level: str
    department: str | None
    co_handlers: tuple
    keywords: tuple
    urgent_keywords: tuple
    policy: Policy
    violation_type: str | None = None   # joint enforcement (联合执法) this item may call for
    enforcement_on: str | None = None   # dispatch: requested at once | whistle: the town decides

    @property
    def needs_enforcement_at_dispatch(self):
        return self.violation_type is not None and self.enforcement_on == "dispatch"


@dataclass(frozen=True)
class Category:
    code: str
    name: str
    default_item: str
    items: tuple


def _time_limit(raw, where):
    try:
        accept = float(raw["accept_hours"])
        resolve = float(raw["resolve_hours"]) if "resolve_hours" in raw else float(raw["resolve_days"]) * 24
    except (KeyError, TypeError, ValueError):
        raise TaxonomyError(f"{where}: time_limit needs accept_hours and resolve_hours or resolve_days")
    if accept <= 0 or resolve <= 0 or accept > resolve:
        raise TaxonomyError(f"{where}: time limits must be positive, accepting before resolving")
    return TimeLimit(accept, resolve)


def _policy(raw, where):
    normal = _time_limit(raw, where)
    urgent = _time_limit(raw.get("urgent") or raw, f"{where} (urgent)")
    if urgent.accept_hours > normal.accept_hours or urgent.resolve_hours > normal.resolve_hours:
        raise TaxonomyError(f"{where}: urgent limits must not be longer than normal ones")
    return Policy(normal, urgent)


@dataclass(frozen=True)
class LabelMap:
    """A classifier label: the categories it covers (its own first) and the item it means when no
    keyword narrows it down."""
    categories: tuple
    default_item: str


@dataclass(frozen=True)
class RiskRule:
    """A risk rule (风险研判): words that make an appeal urgent, and who else must join."""
    code: str
    name: str
    urgency: str  # emergency | urgent
    keywords: tuple
    co_handlers: tuple = ()


@dataclass(frozen=True)
class RiskFlag:
    """Why an appeal is urgent: the rule and the words of it found in the appeal."""
    rule: str
    name: str
    urgency: str
    keywords: tuple
    co_handlers: tuple = ()


@dataclass(frozen=True)
class ReviewPolicy:
    threshold: float = 0.6
    margin: float = 0.1
    unidentified: str = "review"       # review | fallback
    returned_orders: str = "auto"      # auto | review


@dataclass(frozen=True)
class DetectionPolicy:
    """Repeat petitions (重复访), hot spots (热点) and cross-level petitions (越级访)."""
    repeat_window_days: float = 90
    repeat_min_similarity: float = 0.4
    hotspot_window_hours: float = 72
    hotspot_min_similarity: float = 0.5
    hotspot_min_appeals: int = 3
    hotspot_min_people: int = 3
    reception_by_channel: tuple = ()   # ((channel, level), ...)

    def reception_level(self, channel, given=None):
        """Where the appeal was received: as intake says, else as its channel implies, else None."""
        return given or dict(self.reception_by_channel).get(channel)


class Taxonomy:
    """Categories and items with their routing and time-limit policy, as shipped in taxonomy.yml."""

    def __init__(self, version, categories, labels, risk_rules, fallback_item, min_confidence,
                 keyword_precedence, review=ReviewPolicy(), detection=DetectionPolicy()):
        self.version = version
        self.categories = {c.code: c for c in categories}
        self.items = {i.code: i for c in categories for i in c.items}
        self.labels = labels  # classifier label → LabelMap
        self.risk_rules = risk_rules
        self.fallback = self.items[fallback_item]
        self.min_confidence = min_confidence
        self.keyword_precedence = keyword_precedence
        self.review = review
        self.detection = detection
        # the items' keywords by their first character: an appeal is searched only for those
        # starting with a character it has (most of the 447 shipped are absent from any one appeal)
        self._keywords_by_start, self._items_by_keyword = {}, {}
        for order, item in enumerate(self.items.values()):
            for k in item.keywords:
                self._keywords_by_start.setdefault(k[:1], set()).add(k)
                self._items_by_keyword.setdefault(k, set()).add(order)
        self._item_list = list(self.items.values())

    def label_of(self, category_code):
        """The classifier label whose own category this is, else the category's name: what a
        dispatcher's decision becomes as training data (a new name is a new label to learn)."""
        for label, mapped in self.labels.items():
            if mapped.categories[0] == category_code:
                return label
        return self.categories[category_code].name

    @classmethod
    def from_dict(cls, data):
        """Parse and check the taxonomy; any inconsistency is a TaxonomyError naming where it is."""
        version = str(data.get("version") or "")
        if not version:
            raise TaxonomyError("taxonomy has no version")
        default_limit = (data.get("defaults") or {}).get("time_limit")
        categories, seen = [], set()
        for raw_cat in data.get("categories") or ():
            code = raw_cat["code"]
            items = []
            for raw in raw_cat.get("items") or ():
                where = f"item {raw.get('code')} of {code}"
                if raw.get("code") in seen or not raw.get("code"):
                    raise TaxonomyError(f"{where}: missing or duplicate code")
                seen.add(raw["code"])
                level = raw.get("level", raw_cat.get("level"))
                if level not in LEVELS:
                    raise TaxonomyError(f"{where}: level must be one of {LEVELS}")
                department = raw.get("department", raw_cat.get("department"))
                if level == "district" and not (department or "").startswith("dept-"):
                    raise TaxonomyError(f"{where}: a district item needs a dept-* department")
                limit = raw.get("time_limit") or raw_cat.get("time_limit") or default_limit
                if not limit:
                    raise TaxonomyError(f"{where}: no time_limit and no default")
                joint = raw.get("joint_enforcement") or {}
                if joint and (not joint.get("violation_type") or joint.get("when") not in ENFORCEMENT_WHEN):
                    raise TaxonomyError(f"{where}: joint_enforcement needs a violation_type and "
                                        f"when: one of {ENFORCEMENT_WHEN}")
                items.append(Item(
                    code=raw["code"], name=raw["name"], category=code, category_name=raw_cat["name"],
                    level=level, department=department,
                    co_handlers=tuple(raw.get("co_handlers", raw_cat.get("co_handlers")) or ()),
                    keywords=tuple(raw.get("keywords") or ()),
                    urgent_keywords=tuple(raw.get("urgent_keywords") or ()),
                    policy=_policy(limit, where),
                    violation_type=joint.get("violation_type"), enforcement_on=joint.get("when")))
            if not items:
                raise TaxonomyError(f"category {code} has no items")
            default_item = raw_cat.get("default_item") or items[0].code
            if default_item not in {i.code for i in items}:
                raise TaxonomyError(f"category {code}: default_item {default_item} is not one of its items")
            categories.append(Category(code, raw_cat["name"], default_item, tuple(items)))
        if not categories:
            raise TaxonomyError("taxonomy has no categories")
        clf = data.get("classifier") or {}
        by_code = {c.code: c for c in categories}
        labels = {label: _label_map(label, raw, by_code) for label, raw in (clf.get("labels") or {}).items()}
        fallback = data.get("fallback_item")
        if fallback not in seen:
            raise TaxonomyError(f"fallback_item {fallback!r} is not an item")
        return cls(version, categories, labels, _risk_rules(data.get("risk_rules") or ()), fallback,
                   float(clf.get("min_confidence", 0.5)), float(clf.get("keyword_precedence", 4)),
                   _review(data.get("review") or {}), _detection(data))

    def unit_codes(self):
        """Every unit code the taxonomy names (to check against the reference units)."""
        codes = set()
        for item in self.items.values():
            codes.update(item.co_handlers)
            if item.department:
                codes.add(item.department)
        for rule in self.risk_rules:
            codes.update(rule.co_handlers)
        return codes

    def violation_types(self):
        return {i.violation_type for i in self.items.values() if i.violation_type}

    def keyword_matches(self, title, content):
        """(item, score) for the items whose keywords occur in the appeal, best first. A keyword scores
        its length (longer is more specific), doubled in the title; ties keep the file's order."""
        present = self._keywords_in(title, content)
        scored = []
        for order in set().union(*(self._items_by_keyword[k] for k in present)):
            item = self._item_list[order]
            found = [k for k in item.keywords if k in present]
            # a keyword inside a longer one that matched (欠工资 in 拖欠工资) adds nothing
            found = [k for k in found if not any(k != other and k in other for other in found)]
            score = sum(len(k) * (2 if k in title else 1) for k in found)
            if score:
                scored.append((-score, order, item))
        return [(item, -neg) for neg, _, item in sorted(scored)]

    def _keywords_in(self, title, content):
        """The items' keywords that occur in the title or the content."""
        starts = set(title).union(content, ("",))  # "": an empty keyword is in every text
        candidates = set().union(*(self._keywords_by_start[c] for c in starts if c in self._keywords_by_start))
        return {k for k in candidates if k in title or k in content}

    def risk_flags(self, title, content, item):
        """Every risk rule the appeal meets, and the item's own urgent words, each with the words
        found and not denied ("没有危险": triage.urgency): the reasons an appeal is urgent (风险研判)."""
        text = f"{title}\n{content}"
        flags = []
        for rule in self.risk_rules:
            found = risk_words(text, rule.keywords)
            if found:
                flags.append(RiskFlag(rule.code, rule.name, rule.urgency, found, rule.co_handlers))
        found = risk_words(text, item.urgent_keywords)
        if found:
            flags.append(RiskFlag(f"item:{item.code}", f"{item.name}紧急情形", "urgent", found))
        return tuple(flags)


def _label_map(label, raw, categories):
    """``label: category`` or ``label: {categories: [...], default_item: ...}``."""
    if isinstance(raw, str):
        raw = {"categories": [raw]}
    codes = tuple(raw.get("categories") or ())
    unknown = sorted(set(codes) - set(categories))
    if not codes or unknown:
        raise TaxonomyError(f"classifier label {label} maps to unknown categories: {unknown or codes}")
    default_item = raw.get("default_item") or categories[codes[0]].default_item
    if default_item not in {i.code for c in codes for i in categories[c].items}:
        raise TaxonomyError(f"classifier label {label}: default_item {default_item} is not in its categories")
    return LabelMap(codes, default_item)


def _risk_rules(raw_rules):
    rules = []
    for raw in raw_rules:
        if raw.get("urgency") not in ("emergency", "urgent") or not raw.get("keywords"):
            raise TaxonomyError(f"risk rule {raw.get('code')}: needs keywords and urgency emergency|urgent")
        rules.append(RiskRule(raw["code"], raw["name"], raw["urgency"], tuple(raw["keywords"]),
                              tuple(raw.get("co_handlers") or ())))
    return tuple(rules)


def _review(raw):
    policy = ReviewPolicy(**{k: raw[k] for k in ("threshold", "margin", "unidentified", "returned_orders")
                             if k in raw})
    if policy.unidentified not in ("review", "fallback") or policy.returned_orders not in ("auto", "review"):
        raise TaxonomyError("review: unidentified is review|fallback, returned_orders is auto|review")
    if not 0 <= float(policy.threshold) <= 1:
        raise TaxonomyError("review: threshold is a probability")
    return policy


def _detection(data):
    repeat, hotspot = data.get("repeat") or {}, data.get("hotspot") or {}
    channels = (data.get("cross_level") or {}).get("reception_by_channel") or {}
    if set(channels.values()) - set(RECEPTION_LEVELS):
        raise TaxonomyError(f"cross_level: reception levels are {RECEPTION_LEVELS}")
    defaults = DetectionPolicy()
    policy = DetectionPolicy(
        repeat_window_days=float(repeat.get("window_days", defaults.repeat_window_days)),
        repeat_min_similarity=float(repeat.get("min_similarity", defaults.repeat_min_similarity)),
        hotspot_window_hours=float(hotspot.get("window_hours", defaults.hotspot_window_hours)),
        hotspot_min_similarity=float(hotspot.get("min_similarity", defaults.hotspot_min_similarity)),
        hotspot_min_appeals=int(hotspot.get("min_appeals", defaults.hotspot_min_appeals)),
        hotspot_min_people=int(hotspot.get("min_people", defaults.hotspot_min_people)),
        reception_by_channel=tuple(sorted(channels.items())))
    if policy.hotspot_min_appeals < 2 or policy.hotspot_min_people < 1:
        raise TaxonomyError("hotspot: min_appeals >= 2 and min_people >= 1")
    return policy


# --- routing ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Assessment:
    """What the appeal is about: candidate items, best first, how that was decided, how urgent it is
    and why, and whether a dispatcher should look at it first (``review``: None, low_confidence,
    ambiguous or unidentified)."""
    items: tuple
    basis: str  # keywords | classifier | keywords+classifier | fallback | repeat | manual
    confidence: float | None  # the classifier's probability for the chosen category, if it ran
    flags: tuple = ()  # RiskFlag, the reasons it is urgent
    review: str | None = None
    label: str | None = None  # the classifier's best label, if it ran

    @property
    def item(self):
        return self.items[0]

    @property
    def urgent(self):
        return bool(self.flags)

    @property
    def urgency(self):
        """emergency | urgent | normal: the most pressing of the flags."""
        levels = {f.urgency for f in self.flags}
        return next((u for u in URGENCIES if u in levels), "normal")


@dataclass(frozen=True)
class UnitRef:
    code: str
    name: str
    type: str


@dataclass(frozen=True)
class Routing:
    """Where a work order goes, under which item and policy, who joins, and who decided it."""
    item: Item
    unit: UnitRef
    level: str
    urgent: bool
    policy: str  # normal | urgent
    limit: TimeLimit
    basis: str
    confidence: float | None
    taxonomy_version: str
    router_version: str
    co_handlers: tuple = ()
    urgency: str = "normal"
    # the time-limit policy of policies.yml the order gets; None: the item's own time_limit
    clock_policy: ClockPolicy | None = None


@dataclass
class Router:
    """Routes an appeal: item × location → lead unit plus co-handlers. ``classifier`` (optional) has
    ``classify(subject, body) -> Classification(label, probability, ranked)`` and ``version``."""
    taxonomy: Taxonomy
    classifier: object = None
    policies: object = None  # clocks.PolicyBook; None: deadlines from the items' own time_limit
    version: str = field(init=False)

    def __post_init__(self):
        model = getattr(self.classifier, "version", None) if self.classifier else None
        self.version = f"router-{ROUTER_VERSION}+" + (f"model-{model}" if self.classifier else "keywords")

    def with_taxonomy(self, taxonomy):
        """The same router (and model) under another version of the taxonomy."""
        return Router(taxonomy, self.classifier, self.policies)

    def with_policies(self, policies):
        return Router(self.taxonomy, self.classifier, policies)

    def assess(self, title, content):
        """Rules first, the model fills in: a strong keyword match decides; else a confident
        classifier decides the categories meant and keywords pick the item inside them (else the
        label's default item); else the best keyword match; when nothing identifies the appeal, the
        fallback item. An unsure or torn classifier, or nothing recognised at all, sends the appeal
        to a dispatcher (review) as the taxonomy's review policy says."""
        return self._assess(title, content, self._ranked_labels(title, content))

    def assess_many(self, texts):
        """:meth:`assess` for a list of (title, content): the classifier scores them all in one call
        (several times faster per appeal than one by one)."""
        texts = list(texts)
        if self.classifier is None or len(texts) < 2 or not hasattr(self.classifier, "classify_many"):
            return [self.assess(title, content) for title, content in texts]
        results = self.classifier.classify_many(texts)
        return [self._assess(title, content, self._ranked(result))
                for (title, content), result in zip(texts, results)]

    def _assess(self, title, content, ranked):
        """``ranked``: the classifier's labels known to the taxonomy, [(label, LabelMap, probability)]."""
        tax = self.taxonomy
        scored = tax.keyword_matches(title, content)
        matches = [item for item, _ in scored]
        top, probability = (ranked[0][1], ranked[0][2]) if ranked else (None, None)
        confident = top is not None and probability >= tax.min_confidence
        strong = bool(scored) and scored[0][1] >= tax.keyword_precedence
        if strong:
            chosen = matches[0]
            basis = "keywords+classifier" if confident and chosen.category in top.categories else "keywords"
        elif confident:
            inside = [i for i in matches if i.category in top.categories]
            chosen = inside[0] if inside else tax.items[top.default_item]
            basis = "keywords+classifier" if inside else "classifier"
        elif matches:
            chosen, basis = matches[0], "keywords"
        else:
            chosen, basis = tax.fallback, "fallback"
        confidence = next((p for _, mapped, p in ranked if chosen.category in mapped.categories), None)
        # alternatives for a re-routing after a return: other keyword matches, then the classifier's
        # other labels, most probable first
        alternatives = matches + [tax.items[mapped.default_item] for _, mapped, _ in ranked]
        items = tuple(dict.fromkeys([chosen, *alternatives]))
        review = None if strong else self._review_reason(ranked, basis)
        return Assessment(items, basis, confidence, tax.risk_flags(title, content, chosen), review,
                          ranked[0][0] if ranked else None)

    def _review_reason(self, ranked, basis):
        policy = self.taxonomy.review
        if ranked:
            if ranked[0][2] < policy.threshold:
                return "low_confidence"
            if len(ranked) > 1 and ranked[0][2] - ranked[1][2] < policy.margin:
                return "ambiguous"
        if basis == "fallback" and policy.unidentified == "review":
            return "unidentified"
        return None

    def _ranked_labels(self, title, content):
        if self.classifier is None:
            return []
        return self._ranked(self.classifier.classify(title, content))

    def _ranked(self, result):
        ranked = getattr(result, "ranked", None) or [(result.label, result.probability)]
        if isinstance(ranked, dict):  # {label: probability}
            ranked = sorted(ranked.items(), key=lambda pair: -pair[1])
        out = []
        for label, probability in ranked:
            mapped = self.taxonomy.labels.get(label)
            if mapped and label not in {known for known, _, _ in out}:
                out.append((label, mapped, float(probability)))
        return out

    def route(self, assessment, town_code, village_code, unit_lookup, excluded=()):
        """The first candidate unit that exists and has not returned this appeal. Candidates: the
        unit of each assessed item at this location, then the town office, then the command centre
        (always eligible: it takes what no one else fits).

        ``unit_lookup(codes)`` returns ``{code: UnitRef}`` for the codes that exist."""
        primary = assessment.item
        candidates = []
        for item in assessment.items:
            candidates += [(item, code, level) for code, level in _units_for(item, town_code, village_code)]
        candidates += [(primary, f"town-{town_code}", "town"), (primary, COMMAND_CENTRE, "district")]
        co_handlers = self._co_handler_codes(assessment)
        units = unit_lookup(list(dict.fromkeys([*(code for _, code, _ in candidates), *co_handlers])))
        for item, code, level in candidates:
            if code in units and (code not in excluded or code == COMMAND_CENTRE):
                return self._routing(assessment, item, units[code], level, units)
        raise LookupError(f"no unit at all for town {town_code}: reference data not loaded?")

    def route_to(self, assessment, item, unit, unit_lookup, basis="manual"):
        """A decision made elsewhere (a dispatcher's, or the earlier case's unit for a repeat): this
        item, this unit; its level follows from the unit's type."""
        level = LEVEL_OF_UNIT_TYPE.get(unit.type, "district")
        assessment = Assessment((item,), basis, None, assessment.flags, None, assessment.label)
        units = unit_lookup(list(self._co_handler_codes(assessment)))
        return self._routing(assessment, item, unit, level, units)

    def hold(self, assessment, unit_lookup):
        """Where an appeal waits for a dispatcher: with the command centre (指挥中心), under the item
        the router would have chosen (a suggestion the dispatcher confirms or corrects)."""
        units = unit_lookup([COMMAND_CENTRE])
        if COMMAND_CENTRE not in units:
            raise LookupError("no command centre unit: reference data not loaded?")
        return self._routing(assessment, assessment.item, units[COMMAND_CENTRE], "district", {})

    def _co_handler_codes(self, assessment):
        codes = list(assessment.item.co_handlers)
        for flag in assessment.flags:
            codes += flag.co_handlers
        return tuple(dict.fromkeys(codes))

    def _routing(self, assessment, item, unit, level, units):
        urgent = assessment.urgent
        policy, limit = item.policy.pick(urgent)
        confidence = assessment.confidence if item == assessment.item else None
        # the item's own co-handlers and those its risk flags call in, never the lead itself
        co_handlers = [c for c in item.co_handlers if c != unit.code]
        for flag in assessment.flags:
            co_handlers += [c for c in flag.co_handlers if c != unit.code]
        co_handlers = tuple(c for c in dict.fromkeys(co_handlers) if c in units)
        clock_policy = self.policies.pick(item.code, item.category, assessment.urgency) \
            if self.policies is not None else None
        return Routing(item, unit, level, urgent, policy, limit, assessment.basis, confidence,
                       self.taxonomy.version, self.version, co_handlers, assessment.urgency, clock_policy)


LEVEL_OF_UNIT_TYPE = {"grid_worker": "grid", "town_office": "town", "district_department": "district",
                      "command_centre": "district"}


def _units_for(item, town_code, village_code):
    """(unit code, effective level) pairs for an item at a place, preferred first."""
    if item.level == "grid":
        pairs = [(f"grid-{village_code}", "grid")] if village_code else []
        return pairs + [(f"town-{town_code}", "town")]
    if item.level == "town":
        return [(f"town-{town_code}", "town")]
    return [(item.department, "district")]


# --- deadlines ----------------------------------------------------------------------------------

def due_at(start, limit, calendar=None):
    """The one place where a time limit becomes a deadline. ``limit``: a clocks.Limit — calendar
    time for minutes, hours and days, the working calendar (triage.calendar: weekends, public
    holidays, 调休) for working hours and working days — or a number of calendar hours (an item's
    own time_limit in taxonomy.yml)."""
    if not isinstance(limit, Limit):
        return start + timedelta(hours=limit)
    if limit.unit == "minutes":
        return start + timedelta(minutes=limit.amount)
    if limit.unit == "hours":
        return start + timedelta(hours=limit.amount)
    if limit.unit == "days":
        return start + timedelta(days=limit.amount)
    if calendar is None:
        raise ValueError(f"a limit of {limit} needs the working calendar")
    if limit.unit == "working_hours":
        return calendar.add_working_hours(start, limit.amount)
    return calendar.add_working_days(start, limit.amount)


def deadlines(limit, dispatched_at, clock_policy=None, calendar=None):
    """{clock: deadline} of an order dispatched at ``dispatched_at``: report_in, first_contact and
    resolve under its clock policy, or report_in and resolve under the item's own time_limit
    (first contact then due with acceptance)."""
    if clock_policy is not None:
        return {clock: due_at(dispatched_at, clock_policy.limit(clock), calendar)
                for clock in ("report_in", "first_contact", "resolve")}
    accept = due_at(dispatched_at, limit.accept_hours)
    return {"report_in": accept, "first_contact": accept,
            "resolve": due_at(dispatched_at, limit.resolve_hours)}


def within(at, deadline):
    return at <= deadline


# --- work orders --------------------------------------------------------------------------------

# action → (statuses it is allowed from, status after; None keeps the status)
TRANSITIONS = {
    "accept": ({"dispatched"}, "accepted"),
    "return": ({"dispatched", "accepted"}, "returned"),
    "progress": ({"accepted", "reopened"}, None),
    "resolve": ({"accepted", "reopened"}, "resolved"),
    "complete_operation": ({"dispatched", "accepted", "reopened"}, "resolved"),
    "reopen": ({"resolved"}, "reopened"),
    "close": ({"resolved"}, "closed"),
}

STATUS_NAMES = {
    "dispatched": "已派单", "accepted": "已签收", "returned": "已退单", "resolved": "已办结",
    "reopened": "已重办", "closed": "已结案",
}
ACTION_NAMES = {
    "accept": "签收", "return": "退单", "progress": "填报进展", "resolve": "办结",
    "complete_operation": "联合执法办结", "reopen": "重办", "close": "结案",
}


def can(action, status):
    return status in TRANSITIONS[action][0]


def next_status(action, status):
    """The status after ``action``, or InvalidTransition saying why not."""
    allowed, after = TRANSITIONS[action]
    if status not in allowed:
        raise InvalidTransition(f"工单{STATUS_NAMES.get(status, status)}，不能{ACTION_NAMES[action]}")
    return after or status


def order_no_for(dispatched_at, sequence):
    """Human-readable and unique: GD + local date + sequence, e.g. GD20261125000123."""
    return f"GD{dispatched_at.astimezone(CHINA_TIME):%Y%m%d}{sequence:06d}"


def aware(value):
    """SQLite hands back naive datetimes; everything stored here is UTC."""
    if value is None or value.tzinfo:
        return value
    return value.replace(tzinfo=timezone.utc)


def utcnow():
    return datetime.now(timezone.utc)

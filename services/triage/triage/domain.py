"""triage's rules, without I/O: the taxonomy (事项目录) and routing policy, the router, deadlines
(限时办结) and the work-order (工单) life cycle.

The taxonomy is parsed from data handed in (``Taxonomy.from_dict``), units are looked up through a
function the caller passes, and the classifier is an injected collaborator: the router works on
keywords alone when there is none.
"""
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from wuji_common.errors import InvalidTransition
from wuji_common.events import CHINA_TIME  # order numbers carry the local date

ROUTER_VERSION = "1"
LEVELS = ("grid", "town", "district")
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


class Taxonomy:
    """Categories and items with their routing and time-limit policy, as shipped in taxonomy.yml."""

    def __init__(self, version, categories, labels, urgent_keywords, fallback_item, min_confidence,
                 keyword_precedence):
        self.version = version
        self.categories = {c.code: c for c in categories}
        self.items = {i.code: i for c in categories for i in c.items}
        self.labels = labels  # classifier label → category code
        self.urgent_keywords = urgent_keywords
        self.fallback = self.items[fallback_item]
        self.min_confidence = min_confidence
        self.keyword_precedence = keyword_precedence

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
                items.append(Item(
                    code=raw["code"], name=raw["name"], category=code, category_name=raw_cat["name"],
                    level=level, department=department,
                    co_handlers=tuple(raw.get("co_handlers", raw_cat.get("co_handlers")) or ()),
                    keywords=tuple(raw.get("keywords") or ()),
                    urgent_keywords=tuple(raw.get("urgent_keywords") or ()),
                    policy=_policy(limit, where)))
            if not items:
                raise TaxonomyError(f"category {code} has no items")
            default_item = raw_cat.get("default_item") or items[0].code
            if default_item not in {i.code for i in items}:
                raise TaxonomyError(f"category {code}: default_item {default_item} is not one of its items")
            categories.append(Category(code, raw_cat["name"], default_item, tuple(items)))
        if not categories:
            raise TaxonomyError("taxonomy has no categories")
        clf = data.get("classifier") or {}
        labels = dict(clf.get("labels") or {})
        codes = {c.code for c in categories}
        unknown = sorted(set(labels.values()) - codes)
        if unknown:
            raise TaxonomyError(f"classifier labels map to unknown categories: {unknown}")
        fallback = data.get("fallback_item")
        if fallback not in seen:
            raise TaxonomyError(f"fallback_item {fallback!r} is not an item")
        return cls(version, categories, labels, tuple(data.get("urgent_keywords") or ()), fallback,
                   float(clf.get("min_confidence", 0.5)), float(clf.get("keyword_precedence", 4)))

    def unit_codes(self):
        """Every unit code the taxonomy names (to check against the reference units)."""
        codes = set()
        for item in self.items.values():
            codes.update(item.co_handlers)
            if item.department:
                codes.add(item.department)
        return codes

    def keyword_matches(self, title, content):
        """(item, score) for the items whose keywords occur in the appeal, best first. A keyword scores
        its length (longer is more specific), doubled in the title; ties keep the file's order."""
        scored = []
        for order, item in enumerate(self.items.values()):
            found = [k for k in item.keywords if k in title or k in content]
            if not found:
                continue
            # a keyword inside a longer one that matched (欠工资 in 拖欠工资) adds nothing
            found = [k for k in found if not any(k != other and k in other for other in found)]
            score = sum(len(k) * (2 if k in title else 1) for k in found)
            if score:
                scored.append((-score, order, item))
        return [(item, -neg) for neg, _, item in sorted(scored)]

    def is_urgent(self, title, content, item):
        text = f"{title}\n{content}"
        return any(k in text for k in self.urgent_keywords + item.urgent_keywords)


# --- routing ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Assessment:
    """What the appeal is about: candidate items, best first, and how that was decided."""
    items: tuple
    basis: str  # keywords | classifier | keywords+classifier | fallback
    confidence: float | None  # the classifier's probability for the chosen category, if it ran
    urgent: bool

    @property
    def item(self):
        return self.items[0]


@dataclass(frozen=True)
class UnitRef:
    code: str
    name: str
    type: str


@dataclass(frozen=True)
class Routing:
    """Where a work order goes, under which item and policy, and who decided it."""
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


@dataclass
class Router:
    """Routes an appeal: category × location → unit. ``classifier`` (optional) has
    ``classify(subject, body) -> Classification(label, probability, ranked)`` and ``version``."""
    taxonomy: Taxonomy
    classifier: object = None
    version: str = field(init=False)

    def __post_init__(self):
        model = getattr(self.classifier, "version", None) if self.classifier else None
        self.version = f"router-{ROUTER_VERSION}+" + (f"model-{model}" if self.classifier else "keywords")

    def assess(self, title, content):
        """Rules first, the model fills in: a strong keyword match decides; else a confident
        classifier decides the category and keywords pick the item inside it; else the best keyword
        match; when nothing identifies the appeal, the fallback item (the town office)."""
        tax = self.taxonomy
        scored = tax.keyword_matches(title, content)
        matches = [item for item, _ in scored]
        ranked = self._ranked_categories(title, content)  # [(category code, probability)]
        top, probability = ranked[0] if ranked else (None, None)
        confident = top is not None and probability >= tax.min_confidence
        if scored and scored[0][1] >= tax.keyword_precedence:
            chosen = matches[0]
            basis = "keywords+classifier" if confident and chosen.category == top else "keywords"
        elif confident:
            inside = [i for i in matches if i.category == top]
            chosen = inside[0] if inside else tax.items[tax.categories[top].default_item]
            basis = "keywords+classifier" if inside else "classifier"
        elif matches:
            chosen, basis = matches[0], "keywords"
        else:
            chosen, basis = tax.fallback, "fallback"
        confidence = dict(ranked).get(chosen.category) if ranked else None
        # alternatives for a re-routing after a return: other keyword matches, then the classifier's
        # other categories, most probable first
        alternatives = matches + [tax.items[tax.categories[code].default_item] for code, _ in ranked]
        items = tuple(dict.fromkeys([chosen, *alternatives]))
        return Assessment(items, basis, confidence, tax.is_urgent(title, content, chosen))

    def _ranked_categories(self, title, content):
        if self.classifier is None:
            return []
        result = self.classifier.classify(title, content)
        ranked = getattr(result, "ranked", None) or [(result.label, result.probability)]
        if isinstance(ranked, dict):  # {label: probability}
            ranked = sorted(ranked.items(), key=lambda pair: -pair[1])
        out = []
        for label, probability in ranked:
            code = self.taxonomy.labels.get(label)
            if code and code not in dict(out):
                out.append((code, float(probability)))
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
        units = unit_lookup(list(dict.fromkeys(code for _, code, _ in candidates)))
        for item, code, level in candidates:
            if code in units and (code not in excluded or code == COMMAND_CENTRE):
                return self._routing(assessment, item, units[code], level)
        raise LookupError(f"no unit at all for town {town_code}: reference data not loaded?")

    def _routing(self, assessment, item, unit, level):
        urgent = assessment.urgent
        policy, limit = item.policy.pick(urgent)
        confidence = assessment.confidence if item == assessment.item else None
        return Routing(item, unit, level, urgent, policy, limit, assessment.basis, confidence,
                       self.taxonomy.version, self.version)


def _units_for(item, town_code, village_code):
    """(unit code, effective level) pairs for an item at a place, preferred first."""
    if item.level == "grid":
        pairs = [(f"grid-{village_code}", "grid")] if village_code else []
        return pairs + [(f"town-{town_code}", "town")]
    if item.level == "town":
        return [(f"town-{town_code}", "town")]
    return [(item.department, "district")]


# --- deadlines ----------------------------------------------------------------------------------

def due_at(start, hours):
    """The one place where a time limit becomes a deadline. Calendar hours for now; the working-day
    calendar (工作日) replaces this body."""
    return start + timedelta(hours=hours)


def deadlines(limit, dispatched_at):
    """(accept_due_at, resolve_due_at) of an order dispatched at ``dispatched_at``."""
    return due_at(dispatched_at, limit.accept_hours), due_at(dispatched_at, limit.resolve_hours)


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

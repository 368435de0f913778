"""Clocks (限时办结), without I/O: the time-limit policies, how a limit becomes a deadline, and when a
running clock must remind, fall overdue or escalate.

A work order runs three clocks, each held by the unit that has the order, at its level:
``report_in`` (签收/报到), ``first_contact`` (首次联系) and ``resolve`` (办结). A clock runs from
dispatch until the step is done (stopped ``met`` or ``late``), the order leaves the unit (``returned``:
the clock keeps who held it and whether time had run out), or the order is re-dispatched. An
approved suspension (挂账) pauses it; an approved extension (延期) moves its deadline.

While it runs, a clock has checkpoints: ``50`` and ``80`` (per cent of its window gone: a reminder
to the holder), ``due`` (overdue: event, supervision ticket), and for ``report_in`` also the
escalation one level up at ``due``. Each fires once per clock: the caller records a marker per
(clock, checkpoint) and a clash means someone else fired it.
"""
from dataclasses import dataclass

CLOCKS = ("report_in", "first_contact", "resolve")
UNITS = ("minutes", "hours", "days", "working_hours", "working_days")
REMINDERS = (50, 80)  # per cent of the window
DUE = "due"
ESCALATE = "escalate"
# one level up from each level: who is told when a unit has not reported in (grid → town → district)
LEVEL_ABOVE = {"grid": "town", "town": "district", "district": None}
COMMAND_CENTRE = "dept-command"


class PolicyError(ValueError):
    """The policy file is inconsistent; raised at load time."""


@dataclass(frozen=True)
class Limit:
    amount: float
    unit: str

    @classmethod
    def parse(cls, text, where=""):
        """``"7 working_days"``, ``"24 hours"``, ``"15 minutes"``."""
        try:
            amount, unit = str(text).split()
            amount = float(amount)
        except ValueError:
            raise PolicyError(f"{where}: a limit is '<amount> <unit>', not {text!r}") from None
        if unit not in UNITS or amount <= 0:
            raise PolicyError(f"{where}: {text!r}: a positive amount in one of {UNITS}")
        return cls(amount, unit)

    def __str__(self):
        amount = int(self.amount) if self.amount == int(self.amount) else self.amount
        return f"{amount} {self.unit}"

    @property
    def working(self):
        return self.unit.startswith("working_")

    def nominal_hours(self):
        """The limit in hours, a working day counted as 24 (for display and legacy fields)."""
        per = {"minutes": 1 / 60, "hours": 1, "days": 24, "working_hours": 1, "working_days": 24}
        return self.amount * per[self.unit]


@dataclass(frozen=True)
class ClockPolicy:
    """A time-limit policy (时限规定) as an order gets it: its name, the file version, the limits."""
    code: str
    name: str
    version: str
    report_in: Limit
    first_contact: Limit
    resolve: Limit
    extension_max: Limit | None = None

    def limit(self, clock):
        return getattr(self, clock)

    def describe(self):
        return {"report_in": str(self.report_in), "first_contact": str(self.first_contact),
                "resolve": str(self.resolve),
                "extension_max": str(self.extension_max) if self.extension_max else None}


@dataclass(frozen=True)
class Rule:
    policy: str
    urgency: tuple = ()
    items: tuple = ()
    categories: tuple = ()

    def matches(self, item, category, urgency):
        return ((not self.urgency or urgency in self.urgency)
                and (not self.items or item in self.items)
                and (not self.categories or category in self.categories))


class PolicyBook:
    """The policies of policies.yml and the rules that pick one per order."""

    def __init__(self, version, policies, rules):
        self.version = version
        self.policies = policies
        self.rules = rules

    @classmethod
    def from_dict(cls, data, known_items=None, known_categories=None):
        version = str(data.get("version") or "")
        if not version:
            raise PolicyError("policies have no version")
        policies = {}
        for code, raw in (data.get("policies") or {}).items():
            where = f"policy {code}"
            try:
                limits = {c: Limit.parse(raw[c], f"{where}.{c}") for c in CLOCKS}
            except (KeyError, TypeError):
                raise PolicyError(f"{where}: needs report_in, first_contact and resolve") from None
            extension = Limit.parse(raw["extension_max"], f"{where}.extension_max") \
                if raw.get("extension_max") else None
            policies[code] = ClockPolicy(code, str(raw.get("name") or code), version,
                                         extension_max=extension, **limits)
        rules = []
        for n, raw in enumerate(data.get("rules") or (), start=1):
            rule = Rule(raw.get("policy"), tuple(raw.get("urgency") or ()), tuple(raw.get("items") or ()),
                        tuple(raw.get("categories") or ()))
            if rule.policy not in policies:
                raise PolicyError(f"rule {n}: unknown policy {rule.policy!r}")
            unknown = [i for i in rule.items if known_items is not None and i not in known_items] + \
                [c for c in rule.categories if known_categories is not None and c not in known_categories]
            if unknown:
                raise PolicyError(f"rule {n}: unknown items or categories {unknown}")
            rules.append(rule)
        if not rules or rules[-1].urgency or rules[-1].items or rules[-1].categories:
            raise PolicyError("the last rule must match every order (no conditions)")
        return cls(version, policies, tuple(rules))

    def pick(self, item, category, urgency):
        for rule in self.rules:
            if rule.matches(item, category, urgency):
                return self.policies[rule.policy]
        raise AssertionError("the last rule matches everything")  # checked at load


# --- a running clock ----------------------------------------------------------------------------

def checkpoints(clock, started_at, due):
    """(checkpoint, instant) of a clock, in time order: the reminders, the deadline, and for the
    report-in clock the escalation at the deadline."""
    window = due - started_at
    points = [(str(p), started_at + window * (p / 100)) for p in REMINDERS]
    points.append((DUE, due))
    if clock == "report_in":
        points.append((ESCALATE, due))
    return points


def due_checkpoints(clock, started_at, due, now, fired):
    """The checkpoints passed by ``now`` that have not fired yet (``fired``: a set of names), and
    the instant of the next one still ahead (or None)."""
    passed, upcoming = [], None
    for name, instant in checkpoints(clock, started_at, due):
        if name in fired:
            continue
        if instant <= now:
            passed.append(name)
        elif upcoming is None or instant < upcoming:
            upcoming = instant
    if DUE in passed:
        # a clock found past its deadline (e.g. after everything was down) does not remind first
        passed = [p for p in passed if p in (DUE, ESCALATE)]
    return passed, upcoming


def escalation_target(level, town_code):
    """Who is one level up: (level, unit code) — the town office above a grid worker, the district
    command centre above a town office; None above the district."""
    above = LEVEL_ABOVE.get(level)
    if above == "town":
        return above, f"town-{town_code}"
    if above == "district":
        return above, COMMAND_CENTRE
    return None


def extension_limit(resolve_limit, days):
    """An extension of ``days``: working days under a working-time policy, calendar days otherwise."""
    return Limit(days, "working_days" if resolve_limit.working else "days")


def within_extension(policy_max, granted_days, asked_days, resolve_limit):
    """Whether ``asked_days`` more stay within the policy's extension_max (None: no extension)."""
    if policy_max is None:
        return False
    total = extension_limit(resolve_limit, granted_days + asked_days)
    return total.nominal_hours() <= policy_max.nominal_hours() + 1e-9

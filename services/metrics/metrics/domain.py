"""metrics' rules, with no I/O: how a set of events folds into an appeal or an order fact, and what
each KPI counts.

Folds are functions of the *set* of events, sorted by when they happened, so a projection does not
depend on the order in which queues delivered them (order_accepted may arrive before
order_dispatched). Refolding after every event also makes a replay of the event log the same code.

KPI definitions (a window is the calendar days ``start``..``end`` inclusive, in the KPI time zone;
an order or appeal is counted in the group of its own town, unit or category):

- appeals: appeals received in the window.
- orders: orders (last) dispatched in the window.
- due_for_acceptance: orders whose acceptance deadline (accept_due_at) falls in the window and has
  been decided — the order was accepted (at any time) or the deadline has passed by ``now``. Orders
  whose current status is ``returned`` (退单, back with triage to be routed again) are left out: the
  order that replaces them is measured instead. An order whose deadline is still ahead and that is
  not yet accepted is not counted yet.
- accepted_on_time: of those, orders accepted at or before the deadline.
- response_rate (响应率) = accepted_on_time ÷ due_for_acceptance.
- resolved: orders first resolved (办结) in the window; each order counts once, with its first
  resolution.
- resolved_on_time: of those, orders whose first resolution met the deadline in force at the time.
- on_time_resolution_rate (按时办结率) = resolved_on_time ÷ resolved.
- rated: appeals whose latest rating was given in the window (an appeal counts once, with its latest
  rating).
- satisfied: of those, rated satisfied or basically satisfied.
- satisfaction_rate (满意率) = satisfied ÷ rated.
- reopened: of the resolved orders, those reopened (返工) at least once (by now).
- rework_rate (返工率) = reopened ÷ resolved.
- cross_level: cross-level petitions (越级访) flagged by triage in the window (by the event's time;
  grouped by the appeal's town, the lower unit it was sent down to, or its category).
- cross_level_rate (越级访率) = cross_level ÷ appeals. The district's headline KPI: ask for a
  calendar month (start..end) to get it per town and month.
A rate is None (not 0) when its denominator is 0.
"""
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

SATISFIED = ("satisfied", "basically_satisfied")
GROUP_BY = ("town", "unit", "category")
TOTAL = "total"

OPEN_STATUSES = ("dispatched", "accepted", "reopened")  # with the unit, not yet resolved
ORDER_EVENTS = ("order_dispatched", "order_accepted", "order_progressed", "order_returned",
                "order_resolved", "order_reopened", "order_closed")
APPEAL_EVENTS = ("appeal_received", "order_dispatched", "appeal_rated")

# tie-break for events stamped in the same millisecond: the order in which they can happen
_RANK = {"appeal_received": 0, "whistle_blown": 1, "order_dispatched": 2, "order_accepted": 3,
         "force_reported_in": 4, "order_progressed": 5, "order_returned": 6, "operation_completed": 7,
         "order_resolved": 8, "appeal_rated": 9, "order_reopened": 10, "order_closed": 11}

COUNTS = ("appeals", "orders", "due_for_acceptance", "accepted_on_time", "resolved",
          "resolved_on_time", "rated", "satisfied", "reopened", "cross_level")
CROSS_LEVEL_EVENT = "cross_level_petition_detected"


# --- instants ---------------------------------------------------------------------------------

def parse_instant(value):
    """An ISO 8601 timestamp as an aware UTC datetime; naive means UTC. None for a missing or
    unreadable value: a bad field must not cost the rest of the event."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def seconds_between(earlier, later):
    if earlier is None or later is None or later < earlier:
        return None
    return (later - earlier).total_seconds()


@dataclass(frozen=True)
class Window:
    """Calendar days ``start``..``end`` (inclusive) in time zone ``tz``, as a half-open UTC range."""
    start: date
    end: date
    tz: str = "Asia/Shanghai"

    @property
    def lo(self):
        return datetime.combine(self.start, time(), ZoneInfo(self.tz)).astimezone(timezone.utc)

    @property
    def hi(self):
        return datetime.combine(self.end + timedelta(days=1), time(),
                                ZoneInfo(self.tz)).astimezone(timezone.utc)

    def contains(self, instant):
        return instant is not None and self.lo <= instant < self.hi


# --- folds ------------------------------------------------------------------------------------

def chronological(events):
    return sorted(events, key=lambda e: (parse_instant(e["occurred_at"]) or datetime.min.replace(
        tzinfo=timezone.utc), _RANK.get(e["type"], 99), e["event_id"]))


def fold_order(order_no, events):
    """The order fact from all the events known for ``order_no`` (any order of arrival)."""
    order = {
        "order_no": order_no, "case_no": None, "unit_code": None, "town_code": None, "category": None,
        "level": None, "dispatched_at": None, "accept_due_at": None, "accepted_at": None,
        "resolve_due_at": None, "resolved_at": None, "first_resolved_at": None,
        "resolved_on_time": None, "closed_at": None, "status": None, "returned": False,
        "reopen_count": 0, "satisfaction": None,
    }
    for event in chronological(events):
        kind, data = event["type"], event["data"]
        if kind not in ORDER_EVENTS:
            continue  # e.g. whistle_blown naming the order: kept in the log, no order milestone
        at = parse_instant(event["occurred_at"])
        order["case_no"] = event.get("case_no") or order["case_no"]
        for field in ("unit_code", "town_code", "category", "status"):
            order[field] = data.get(field) or order[field]
        if kind == "order_dispatched":
            # a new dispatch (after a return) starts the unit's clock again
            order.update(dispatched_at=at, level=data.get("level"), accepted_at=None,
                         accept_due_at=parse_instant(data.get("accept_due_at")),
                         resolve_due_at=parse_instant(data.get("resolve_due_at")))
        elif kind == "order_accepted":
            order["accepted_at"] = parse_instant(data.get("accepted_at")) or at
        elif kind == "order_returned":
            order["returned"] = True
        elif kind == "order_resolved":
            resolved_at = parse_instant(data.get("resolved_at")) or at
            order["resolved_at"] = resolved_at
            if order["first_resolved_at"] is None:
                order["first_resolved_at"] = resolved_at
                due = order["resolve_due_at"]
                order["resolved_on_time"] = None if due is None else resolved_at <= due
        elif kind == "order_reopened":
            # each reopen event is one more; triage's own count wins if an earlier one is missing
            order["reopen_count"] = max(order["reopen_count"] + 1, int(data.get("reopen_count") or 0))
            order["resolve_due_at"] = parse_instant(data.get("resolve_due_at")) or order["resolve_due_at"]
        elif kind == "order_closed":
            order["closed_at"] = parse_instant(data.get("closed_at")) or at
            order["satisfaction"] = data.get("satisfaction") or order["satisfaction"]
    order["report_in_seconds"] = seconds_between(order["dispatched_at"], order["accepted_at"])
    order["resolve_seconds"] = seconds_between(order["dispatched_at"], order["first_resolved_at"])
    order["close_seconds"] = seconds_between(order["dispatched_at"], order["closed_at"])
    return order


def fold_appeal(case_no, events):
    """The appeal fact from its appeal_received, its orders' dispatches and its ratings."""
    appeal = {"case_no": case_no, "channel": None, "town_code": None, "unit_code": None,
              "category": None, "received_at": None, "satisfaction": None, "rated_at": None}
    order_town = None
    for event in chronological(events):
        kind, data = event["type"], event["data"]
        at = parse_instant(event["occurred_at"])
        if kind == "appeal_received":
            appeal.update(channel=data.get("channel"), town_code=data.get("town_code"),
                          received_at=parse_instant(data.get("received_at")) or at)
        elif kind == "order_dispatched":
            appeal.update(category=data.get("category"), unit_code=data.get("unit_code"))
            order_town = data.get("town_code")
        elif kind == "appeal_rated":
            appeal.update(satisfaction=data.get("satisfaction"),
                          rated_at=parse_instant(data.get("rated_at")) or at)
    # until appeal_received arrives, the order's town stands in so that a rating lands somewhere
    appeal["town_code"] = appeal["town_code"] or order_town
    return appeal


# --- KPI definitions over one fact --------------------------------------------------------------

def _get(row, name):
    return row[name] if isinstance(row, dict) else getattr(row, name)


def is_due_for_acceptance(order, window, now):
    due = _get(order, "accept_due_at")
    decided = _get(order, "accepted_at") is not None or (due is not None and due <= now)
    return window.contains(due) and decided and _get(order, "status") != "returned"


def is_accepted_on_time(order, window, now):
    accepted_at = _get(order, "accepted_at")
    return (is_due_for_acceptance(order, window, now) and accepted_at is not None
            and accepted_at <= _get(order, "accept_due_at"))


def order_counts(order, window, now):
    """What one order adds to a KPI row."""
    resolved = window.contains(_get(order, "first_resolved_at"))
    return {
        "orders": int(window.contains(_get(order, "dispatched_at"))),
        "due_for_acceptance": int(is_due_for_acceptance(order, window, now)),
        "accepted_on_time": int(is_accepted_on_time(order, window, now)),
        "resolved": int(resolved),
        "resolved_on_time": int(resolved and _get(order, "resolved_on_time") is True),
        "reopened": int(resolved and (_get(order, "reopen_count") or 0) > 0),
    }


def appeal_counts(appeal, window):
    """What one appeal adds to a KPI row."""
    rated = window.contains(_get(appeal, "rated_at"))
    return {
        "appeals": int(window.contains(_get(appeal, "received_at"))),
        "rated": int(rated),
        "satisfied": int(rated and _get(appeal, "satisfaction") in SATISFIED),
    }


def overdue_stage(order, now):
    """Which deadline an open order has let pass by ``now``: "resolve" (办结 overdue, whatever
    happened to acceptance), else "accept" (not yet accepted/签收 past its deadline), else None."""
    status = _get(order, "status")
    if status not in OPEN_STATUSES:
        return None
    resolve_due, accept_due = _get(order, "resolve_due_at"), _get(order, "accept_due_at")
    if resolve_due is not None and resolve_due < now:
        return "resolve"
    if status == "dispatched" and accept_due is not None and accept_due < now:
        return "accept"
    return None


# --- rates --------------------------------------------------------------------------------------

def ratio(numerator, denominator):
    """None when there is nothing to measure (a rate of 0 would read as a failure)."""
    if not denominator:
        return None
    return round(numerator / denominator, 4)


def response_rate(row):
    """响应率: accepted within the deadline ÷ orders whose acceptance fell due in the window."""
    return ratio(row["accepted_on_time"], row["due_for_acceptance"])


def on_time_resolution_rate(row):
    """按时办结率: first resolved within the deadline ÷ first resolved in the window."""
    return ratio(row["resolved_on_time"], row["resolved"])


def satisfaction_rate(row):
    """满意率: satisfied + basically satisfied ÷ rated."""
    return ratio(row["satisfied"], row["rated"])


def rework_rate(row):
    """返工率: orders reopened at least once ÷ orders resolved in the window."""
    return ratio(row["reopened"], row["resolved"])


def cross_level_rate(row):
    """越级访率: cross-level petitions ÷ appeals received in the window."""
    return ratio(row["cross_level"], row["appeals"])


def kpi_row(group, counts, name=None):
    row = {"group": group, "name": name, **{c: int(counts.get(c, 0) or 0) for c in COUNTS}}
    row.update(response_rate=response_rate(row), on_time_resolution_rate=on_time_resolution_rate(row),
               satisfaction_rate=satisfaction_rate(row), rework_rate=rework_rate(row),
               cross_level_rate=cross_level_rate(row))
    return row


def total_row(rows, name="合计"):
    """The sum of the groups' counts, with rates recomputed from the sums (not averaged)."""
    return kpi_row(TOTAL, {c: sum(r[c] for r in rows) for c in COUNTS}, name)


def group_key(group_by):
    if group_by not in GROUP_BY:
        raise ValueError(group_by)
    return {"town": "town_code", "unit": "unit_code", "category": "category"}[group_by]


def kpi_rows(orders, appeals, group_by, window, now, names=None):
    """The reference computation of ``metrics.kpis`` over facts in memory; the service computes the
    same counts with SQL aggregation (and the tests hold the two to each other)."""
    key = group_key(group_by)
    sums = {}
    for facts, counts_of in ((orders, lambda o: order_counts(o, window, now)),
                             (appeals, lambda a: appeal_counts(a, window))):
        for fact in facts:
            counts = counts_of(fact)
            if any(counts.values()):
                group = sums.setdefault(_get(fact, key), dict.fromkeys(COUNTS, 0))
                for c, n in counts.items():
                    group[c] += n
    return assemble(sums, names)


def assemble(counts_by_group, names=None):
    """Rows sorted by group (the unknown group, None, last), then the total row."""
    names = names or {}
    groups = sorted(counts_by_group, key=lambda g: (g is None, g or ""))
    rows = [kpi_row(g, counts_by_group[g], names.get(g)) for g in groups]
    return rows + [total_row(rows)]

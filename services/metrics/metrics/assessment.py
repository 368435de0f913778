"""考核: the monthly assessment of units and towns, computed from the event history alone.

:func:`assess` is a pure function of a list of event envelopes (the metrics event_log, or any
recorded history): it folds every order and appeal as the fact tables do (``domain.fold_order``,
``domain.fold_appeal``), keeps only what happened before the month's end (the table of a past
month does not change when later events arrive), and counts per group. The same history always
gives the same table; :func:`handlers.assessment` feeds it from the log.

Indicators (month M: calendar days in the KPI time zone; an order counts in its unit's and its
town's group, an appeal in those of its latest dispatch; "orders of M": dispatched in M, the last
dispatch of each order):
- 响应率 response_rate: accepted by the acceptance deadline ÷ orders whose acceptance fell due in M
  (decided by the end of M; returned orders left out) — as ``metrics.kpis``.
- 按时办结率 on_time_resolution_rate: first resolved within the deadline ÷ first resolved in M.
- 解决率 resolution_rate: orders of M resolved (办结) by the end of M ÷ orders of M not returned.
- 满意率 satisfaction_rate: satisfied or basically satisfied ÷ appeals rated in M.
- 返工率 rework_rate: of the orders first resolved in M, those reopened (返工) ÷ first resolved in M.
- 重复访率 repeat_rate: repeat petitions (repeat_detected in M, counted against the unit that had
  the matter) ÷ orders of M (per unit) or appeals received in M (per town).
- 越级访率 cross_level_rate: cross-level petitions (cross_level_petition_detected in M) ÷ the same.
- 结案率 closure_rate: orders of M closed (结案) by the end of M ÷ orders of M not returned.
- 按期结案率 on_time_closure_rate: orders of M closed by their resolve deadline ÷ orders of M not
  returned.
- 准确派遣率 dispatch_accuracy_rate: orders of M not returned as wrongly dispatched (退单) ÷ orders
  of M (returned ones included).
A rate is None when its denominator is 0. The composite score weighs them (assessment.yml).
"""
from dataclasses import dataclass
from datetime import date

from metrics import domain

LEVELS = ("unit", "town")
INDICATORS = (
    # (key, Chinese name, higher is better)
    ("response_rate", "响应率", True),
    ("on_time_resolution_rate", "按时办结率", True),
    ("resolution_rate", "解决率", True),
    ("satisfaction_rate", "满意率", True),
    ("rework_rate", "返工率", False),
    ("repeat_rate", "重复访率", False),
    ("cross_level_rate", "越级访率", False),
    ("closure_rate", "结案率", True),
    ("on_time_closure_rate", "按期结案率", True),
    ("dispatch_accuracy_rate", "准确派遣率", True),
)
COUNTS = ("orders", "returned", "due_for_acceptance", "accepted_on_time", "resolved", "resolved_on_time",
          "resolved_by_month_end", "closed", "closed_on_time", "rated", "satisfied", "reopened",
          "appeals", "repeats", "cross_level")
COLUMNS = (("rank", "排名"), ("group", "代码"), ("name", "名称"), ("unit_level", "层级"),
           ("rank_in_level", "层级内排名"), ("score", "综合得分"),
           *((key, name) for key, name, _ in INDICATORS),
           ("orders", "派单数"), ("returned", "退单数"), ("resolved", "办结数"), ("closed", "结案数"),
           ("rated", "评价数"), ("appeals", "诉求数"), ("repeats", "重复访数"), ("cross_level", "越级访数"))
LEVEL_NAMES = {"grid": "网格", "town": "镇街", "district": "区级"}
REPEAT_EVENT = "repeat_detected"


@dataclass(frozen=True)
class Weights:
    version: str
    weights: dict

    @classmethod
    def from_dict(cls, data):
        weights = {k: float(v) for k, v in (data.get("weights") or {}).items()}
        unknown = set(weights) - {key for key, _, _ in INDICATORS}
        if unknown or any(w < 0 for w in weights.values()) or not any(weights.values()):
            raise ValueError(f"assessment weights: unknown {sorted(unknown)} or no positive weight")
        return cls(str(data.get("version") or ""), weights)


def month_window(month, tz="Asia/Shanghai"):
    """``"2026-11"`` → the window of its calendar days."""
    year, mon = (int(p) for p in str(month).split("-"))
    start = date(year, mon, 1)
    end = date(year + (mon == 12), mon % 12 + 1, 1)
    from datetime import timedelta
    return domain.Window(start, end - timedelta(days=1), tz)


def assess(envelopes, month, level, weights, tz="Asia/Shanghai", names=None, unit_levels=None):
    """The assessment table of ``month`` per ``level`` (unit | town) from a history of events:
    rows ranked by composite score (best first; groups with nothing to score last), each with
    its rank within its unit level (grid / town / district) for units."""
    if level not in LEVELS:
        raise ValueError(level)
    window = month_window(month, tz)
    asof = window.hi
    key = "unit_code" if level == "unit" else "town_code"
    events = [e for e in envelopes if (domain.parse_instant(e.get("occurred_at")) or asof) < asof]
    by_order, by_case = {}, {}
    for e in events:
        data = e.get("data") or {}
        if e["type"] in domain.ORDER_EVENTS and data.get("order_no"):
            by_order.setdefault(data["order_no"], []).append(e)
        if e["type"] in domain.APPEAL_EVENTS and e.get("case_no"):
            by_case.setdefault(e["case_no"], []).append(e)
    sums = {}

    def add(group, counts):
        if group is None or not any(counts.values()):
            return
        row = sums.setdefault(group, dict.fromkeys(COUNTS, 0))
        for name, n in counts.items():
            row[name] += n

    order_levels = {}
    for order_no, order_events in by_order.items():
        order = domain.fold_order(order_no, order_events)
        order_levels.setdefault(order["unit_code"], order["level"])
        add(order[key], _order_counts(order, window, asof))
    for case_no, case_events in by_case.items():
        add(domain.fold_appeal(case_no, case_events)[key], domain.appeal_counts(
            domain.fold_appeal(case_no, case_events), window))
    for e in events:
        data = e.get("data") or {}
        if e["type"] in (REPEAT_EVENT, domain.CROSS_LEVEL_EVENT) and window.contains(
                domain.parse_instant(e["occurred_at"])):
            add(data.get(key), {"repeats" if e["type"] == REPEAT_EVENT else "cross_level": 1})
    levels = dict(order_levels, **(unit_levels or {}))
    rows = [_row(group, counts, level, weights, (names or {}).get(group),
                 levels.get(group) if level == "unit" else "town") for group, counts in sums.items()]
    return rank(rows)


def _order_counts(order, window, asof):
    counts = domain.order_counts(order, window, asof)
    of_month = window.contains(order["dispatched_at"])
    kept = of_month and not order["returned"]
    resolved_at, closed_at, due = order["first_resolved_at"], order["closed_at"], order["resolve_due_at"]
    return {
        "orders": counts["orders"], "returned": int(of_month and order["returned"]),
        "due_for_acceptance": counts["due_for_acceptance"], "accepted_on_time": counts["accepted_on_time"],
        "resolved": counts["resolved"], "resolved_on_time": counts["resolved_on_time"],
        "reopened": counts["reopened"],
        "resolved_by_month_end": int(kept and resolved_at is not None and resolved_at < asof),
        "closed": int(kept and closed_at is not None and closed_at < asof),
        "closed_on_time": int(kept and closed_at is not None and closed_at < asof
                              and due is not None and closed_at <= due),
    }


def _row(group, c, level, weights, name, unit_level):
    kept = c["orders"] - c["returned"]
    base = c["orders"] if level == "unit" else c["appeals"]
    rates = {
        "response_rate": domain.ratio(c["accepted_on_time"], c["due_for_acceptance"]),
        "on_time_resolution_rate": domain.ratio(c["resolved_on_time"], c["resolved"]),
        "resolution_rate": domain.ratio(c["resolved_by_month_end"], kept),
        "satisfaction_rate": domain.ratio(c["satisfied"], c["rated"]),
        "rework_rate": domain.ratio(c["reopened"], c["resolved"]),
        "repeat_rate": domain.ratio(c["repeats"], base),
        "cross_level_rate": domain.ratio(c["cross_level"], base),
        "closure_rate": domain.ratio(c["closed"], kept),
        "on_time_closure_rate": domain.ratio(c["closed_on_time"], kept),
        "dispatch_accuracy_rate": domain.ratio(kept, c["orders"]),
    }
    return {"group": group, "name": name, "unit_level": unit_level, **rates,
            "score": score(rates, weights), **c}


def score(rates, weights):
    """100 × the weighted mean of the indicators that have a value (lower-is-better ones as 1 − rate)."""
    total = weighed = 0.0
    for key, _, higher in INDICATORS:
        value, weight = rates.get(key), weights.weights.get(key, 0)
        if value is None or not weight:
            continue
        total += weight * (value if higher else 1 - value)
        weighed += weight
    return round(100 * total / weighed, 2) if weighed else None


def rank(rows):
    """Best score first; equal scores share a rank (1, 2, 2, 4); no score: no rank, last. Units
    are ranked within their level (grid / town / district) too."""
    rows = sorted(rows, key=lambda r: (r["score"] is None, -(r["score"] or 0), str(r["group"])))
    _competition(rows, "rank")
    for unit_level in {r["unit_level"] for r in rows}:
        _competition([r for r in rows if r["unit_level"] == unit_level], "rank_in_level")
    return rows


def _competition(rows, field):
    previous, position = None, 0
    for n, row in enumerate(rows, start=1):
        if row["score"] is None:
            row[field] = None
            continue
        if row["score"] != previous:
            position, previous = n, row["score"]
        row[field] = position


# --- export -------------------------------------------------------------------------------------

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value):
    """A text cell that a spreadsheet would read as a formula gets a leading quote (CSV/formula
    injection); numbers stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def table_rows(rows):
    """The header (Chinese) and the rows as lists of cells, level names in Chinese."""
    header = [name for _, name in COLUMNS]
    body = []
    for row in rows:
        cells = []
        for key, _ in COLUMNS:
            value = row.get(key)
            if key == "unit_level":
                value = LEVEL_NAMES.get(value, value)
            cells.append(safe_cell(value))
        body.append(cells)
    return header, body


def write_csv(rows, path):
    import csv
    header, body = table_rows(rows)
    # UTF-8 with a byte-order mark: Excel on a district office's Windows opens Chinese correctly
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in cells] for cells in body])


def write_xlsx(rows, path, title="考核"):
    from openpyxl import Workbook
    from openpyxl.styles import Font
    header, body = table_rows(rows)
    book = Workbook()
    sheet = book.active
    sheet.title = title[:31]
    sheet.append(header)
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for cells in body:
        sheet.append(cells)
        for cell in sheet[sheet.max_row]:
            if isinstance(cell.value, str):
                cell.data_type = "s"  # text stays text, never a formula
    sheet.freeze_panes = "A2"
    book.save(path)


# --- use case -----------------------------------------------------------------------------------

DEFAULT_WEIGHTS_PATH = __import__("pathlib").Path(__file__).parent / "data" / "assessment.yml"


def load_weights(path=None):
    import yaml
    with open(path or DEFAULT_WEIGHTS_PATH, encoding="utf-8") as f:
        return Weights.from_dict(yaml.safe_load(f))


def assessment(uow, month, level, weights=None, tz="Asia/Shanghai"):
    """``metrics.assessment(month, level)``: the table of :func:`assess` over the event log (the
    events before the month's end), with the names of towns and units from the reference data."""
    from sqlalchemy import select

    from metrics.handlers import group_names
    from metrics.models import EventLog
    from wuji_common.errors import ValidationError
    try:
        window = month_window(month, tz)
    except (ValueError, TypeError):
        raise ValidationError("请求参数有误", {"month": ["月份格式为 YYYY-MM"]}) from None
    if level not in LEVELS:
        raise ValidationError("请求参数有误", {"level": [f"one of {LEVELS}"]})
    weights = weights or load_weights()
    with uow:
        envelopes = uow.session.execute(select(EventLog.envelope).where(EventLog.occurred_at < window.hi)
                                        .order_by(EventLog.id)).scalars().all()
    rows = assess(envelopes, month, level, weights, tz, group_names(level))
    return {"month": str(month), "level": level, "weights_version": weights.version,
            "indicators": [{"key": k, "name": n, "higher_is_better": h} for k, n, h in INDICATORS],
            "rows": rows}

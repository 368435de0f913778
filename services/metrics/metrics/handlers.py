"""metrics' use cases as plain functions of a unit of work: no nameko, no Prometheus.

- :func:`record_event` keeps an event in the log and refolds the facts it touches, in one
  transaction with the dedup record (at-least-once delivery; a redelivered event is dropped by id).
- :func:`kpis` answers ``metrics.kpis`` with SQL aggregation over the facts.
- :func:`metrics_snapshot` reads the numbers behind the Prometheus series from the database, so they
  are right after a restart and the same in every instance.
- :func:`rebuild` replays the event log into fresh facts (after a change of a fold, or to repair).
"""
import logging
from collections import Counter
from datetime import timedelta, timezone
from zoneinfo import ZoneInfo

from marshmallow import ValidationError as SchemaError
from sqlalchemy import and_, bindparam, case, delete, func, insert, or_, select, text, update

from metrics import domain
from metrics.models import AppealFact, EventLog, OrderFact
from metrics.schemas import KpiQuerySchema, KpiRowSchema
from wuji_common import reference
from wuji_common.db import insert_unless_present, utcnow
from wuji_common.errors import ValidationError

log = logging.getLogger(__name__)

# bucket bounds (seconds) of the duration histograms: report-in deadlines are hours, resolution days
HOUR = 3600
REPORT_IN_BUCKETS = (300, 900, 1800, HOUR, 2 * HOUR, 4 * HOUR, 8 * HOUR, 24 * HOUR, 48 * HOUR,
                     72 * HOUR)
RESOLVE_BUCKETS = (HOUR, 4 * HOUR, 8 * HOUR, 24 * HOUR, 48 * HOUR, 72 * HOUR, 120 * HOUR,
                   168 * HOUR, 360 * HOUR, 720 * HOUR)
# closing waits for the citizen's rating too, so the tail is longer
CLOSE_BUCKETS = (4 * HOUR, 24 * HOUR, 48 * HOUR, 72 * HOUR, 120 * HOUR, 168 * HOUR, 360 * HOUR,
                 720 * HOUR, 1440 * HOUR)

ENFORCEMENT_EVENTS = ("whistle_blown", "operation_completed", "force_report_in_overdue")
# what triage's analysis found (研判): counted per town and category
TRIAGE_FINDINGS = ("repeat_detected", "hotspot_detected", "cross_level_petition_detected",
                   "urgent_appeal_flagged")
# the KPI counts served as series: the calendar day and the month so far, in the KPI time zone
KPI_PERIODS = ("today", "month")
REBUILD_BATCH = 500


# --- events in ----------------------------------------------------------------------------------

def record_event(uow, consumer, envelope, now=None):
    """Keep the event and refold the order and/or appeal it concerns. Returns False for a duplicate."""
    return record_events(uow, consumer, [envelope], now) == 1


def record_events(uow, consumer, envelopes, now=None):
    """Keep a batch of events and refold the orders and appeals they concern, in one transaction with
    their dedup records. Returns how many were new (duplicates, by event id, are dropped)."""
    now = now or utcnow()
    with uow:
        new = uow.first_deliveries(consumer, envelopes)
        if not new:
            return 0
        s = uow.session
        logged = set(s.execute(select(EventLog.event_id).where(
            EventLog.event_id.in_([e["event_id"] for e in new]))).scalars())
        rows = [{**_log_columns(e, e.get("data") or {}, now), "recorded_at": now}
                for e in new if e["event_id"] not in logged]
        if rows:
            s.execute(insert(EventLog.__table__), rows)
        orders = {(e.get("data") or {}).get("order_no") for e in new if e["type"] in domain.ORDER_EVENTS}
        appeals = {e.get("case_no") for e in new if e["type"] in domain.APPEAL_EVENTS}
        # orders before appeals, each in key order, always: batches locking the same facts never
        # wait on each other in a cycle
        _refold_orders(s, sorted(orders - {None}), now)
        _refold_appeals(s, sorted(appeals - {None}), now)
        uow.commit()
        return len(new)


def _log_columns(envelope, data, now):
    return {
        "event_id": envelope["event_id"], "type": envelope["type"], "source": envelope["source"],
        "version": envelope["version"],
        "occurred_at": domain.parse_instant(envelope["occurred_at"]) or now,
        "case_no": envelope.get("case_no"), "order_no": data.get("order_no"),
        "operation_id": data.get("operation_id"), "town_code": data.get("town_code"),
        "category": data.get("category"), "unit_code": data.get("unit_code"), "envelope": envelope,
    }


def _lock_facts(s, model, key_name, keys, now):
    """Lock the fact rows of ``keys`` for this transaction, created if missing: concurrent events of
    one order (queues are consumed in parallel) queue up here, and each refold sees the events the
    others committed. SQLite serialises writers anyway, so its FOR UPDATE is a no-op. Only the keys
    are read: a refold writes every column from the events again."""
    key = model.__table__.c[key_name]
    s.execute(insert_unless_present(s, model.__table__, index_elements=[key_name]),
              [{key_name: k, "updated_at": now} for k in keys])
    s.execute(select(key).where(key.in_(keys)).order_by(key).with_for_update()).all()


def _refold(s, model, key_name, keys, events, fold, now):
    """Write each fact folded from its events, in one UPDATE for all of them (executemany; the ORM
    loaded, compared and flushed every fact for the same result)."""
    table = model.__table__
    rows = [{**fold(k, events.get(k, [])), "updated_at": now} for k in keys]
    columns = [c for c in rows[0] if c != key_name]
    s.execute(update(table).where(table.c[key_name] == bindparam("fact_key"))
              .values({c: bindparam(f"fact_{c}") for c in columns}),
              [{"fact_key": r[key_name], **{f"fact_{c}": r[c] for c in columns}} for r in rows])


def _refold_orders(s, order_nos, now):
    if not order_nos:
        return
    _lock_facts(s, OrderFact, "order_no", order_nos, now)
    events = {}
    for order_no, envelope in s.execute(select(EventLog.order_no, EventLog.envelope)
                                        .where(EventLog.order_no.in_(order_nos)).order_by(EventLog.id)):
        events.setdefault(order_no, []).append(envelope)
    _refold(s, OrderFact, "order_no", order_nos, events, domain.fold_order, now)


def _refold_appeals(s, case_nos, now):
    if not case_nos:
        return
    _lock_facts(s, AppealFact, "case_no", case_nos, now)
    events = {}
    for case_no, envelope in s.execute(select(EventLog.case_no, EventLog.envelope).where(
            EventLog.case_no.in_(case_nos), EventLog.type.in_(domain.APPEAL_EVENTS)).order_by(EventLog.id)):
        events.setdefault(case_no, []).append(envelope)
    _refold(s, AppealFact, "case_no", case_nos, events, domain.fold_appeal, now)


def event_count(uow, event_type=None):
    """How many events the log holds (of one type); lets callers see that a stream has landed."""
    with uow:
        stmt = select(func.count()).select_from(EventLog)
        if event_type:
            stmt = stmt.where(EventLog.type == event_type)
        return uow.session.scalar(stmt)


# --- replay -------------------------------------------------------------------------------------

def rebuild(uow, now=None, batch_size=REBUILD_BATCH):
    """Replay the event log into fresh facts: every appeal and order fact is dropped and folded again
    from its logged events, as :func:`record_event` folds them. Use it after a fold changed (a new
    field, a corrected rule) or to repair facts damaged by hand; the log itself is never touched.

    One transaction: readers see the old facts or the new ones, never half of them. On PostgreSQL
    the fact tables are locked against writers meanwhile; an event that arrives then waits, and
    refolds its fact (its own event included) once the new facts are committed. Memory stays
    bounded: facts are folded ``batch_size`` keys at a time. Returns what was rebuilt."""
    now = now or utcnow()
    with uow:
        s = uow.session
        if s.get_bind().dialect.name == "postgresql":
            s.execute(text("LOCK TABLE orders, appeals IN EXCLUSIVE MODE"))
        s.execute(delete(OrderFact))
        s.execute(delete(AppealFact))
        orders = _refold_all(s, OrderFact, EventLog.order_no, None, domain.fold_order, now, batch_size)
        appeals = _refold_all(s, AppealFact, EventLog.case_no, EventLog.type.in_(domain.APPEAL_EVENTS),
                              domain.fold_appeal, now, batch_size)
        events = s.scalar(select(func.count()).select_from(EventLog))
        uow.commit()
    log.info("rebuilt %d order and %d appeal facts from %d events", orders, appeals, events)
    return {"events": events, "orders": orders, "appeals": appeals}


def _refold_all(s, model, key_column, condition, fold, now, batch_size):
    """Fold every key of the log into a new fact row, a page of keys at a time."""
    keys_stmt = select(key_column).where(key_column.is_not(None)).distinct().order_by(key_column)
    if condition is not None:
        keys_stmt = keys_stmt.where(condition)
    written, after = 0, None
    while True:
        page_stmt = keys_stmt if after is None else keys_stmt.where(key_column > after)
        keys = s.execute(page_stmt.limit(batch_size)).scalars().all()
        if not keys:
            return written
        events_stmt = select(key_column, EventLog.envelope).where(key_column.in_(keys))
        if condition is not None:
            events_stmt = events_stmt.where(condition)
        events = {}
        for key, envelope in s.execute(events_stmt):
            events.setdefault(key, []).append(envelope)
        s.execute(insert(model), [{**fold(key, events[key]), "updated_at": now} for key in keys])
        written += len(keys)
        after = keys[-1]


# --- KPIs ---------------------------------------------------------------------------------------

def kpis(uow, start, end, group_by, tz="Asia/Shanghai", now=None):
    """KPI rows per town, unit or category over calendar days start..end, and a total row (see
    :mod:`metrics.domain` for what each number counts)."""
    try:
        query = KpiQuerySchema().load({"start": start, "end": end, "group_by": group_by})
    except SchemaError as err:
        raise ValidationError("请求参数有误", err.normalized_messages()) from None
    window = domain.Window(query["start"], query["end"], tz)
    now = _utc(now)
    key = domain.group_key(query["group_by"])
    with uow:
        counts = _kpi_counts(uow.session, key, window, now)
    rows = domain.assemble(counts, group_names(query["group_by"]))
    return KpiRowSchema(many=True).dump(rows)


def _kpi_counts(s, key, window, now):
    """{group: {count name: n}}: the KPI counts of each group over the window (SQL)."""
    counts = {}
    for group, row in (*_order_counts(s, key, window, now), *_appeal_counts(s, key, window),
                       *_cross_level_counts(s, key, window)):
        counts.setdefault(group, {}).update(row)
    return counts


def kpi_windows(now, tz):
    """The windows of KPI_PERIODS at ``now``: today, and the month up to today (local days)."""
    today = now.astimezone(ZoneInfo(tz)).date()
    return {"today": domain.Window(today, today, tz),
            "month": domain.Window(today.replace(day=1), today, tz)}


def _utc(now):
    # SQLite stores datetimes without their offset: every instant compared in SQL must be UTC
    return (now or utcnow()).astimezone(timezone.utc)


def _count(condition):
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _within(column, window):
    return and_(column >= window.lo, column < window.hi)


def _order_counts(s, key, window, now):
    """The SQL form of domain.order_counts, summed per group."""
    o = OrderFact
    due = and_(_within(o.accept_due_at, window),
               or_(o.accepted_at.is_not(None), o.accept_due_at <= now),
               func.coalesce(o.status, "") != "returned")
    resolved = _within(o.first_resolved_at, window)
    group = getattr(o, key)
    stmt = (select(group,
                   _count(_within(o.dispatched_at, window)),
                   _count(due),
                   _count(and_(due, o.accepted_at <= o.accept_due_at)),
                   _count(resolved),
                   _count(and_(resolved, o.resolved_on_time.is_(True))),
                   _count(and_(resolved, o.reopen_count > 0)))
            .where(or_(_within(o.dispatched_at, window), _within(o.accept_due_at, window), resolved))
            .group_by(group))
    names = ("orders", "due_for_acceptance", "accepted_on_time", "resolved", "resolved_on_time",
             "reopened")
    return [(row[0], dict(zip(names, row[1:]))) for row in s.execute(stmt)]


def _appeal_counts(s, key, window):
    """The SQL form of domain.appeal_counts, summed per group."""
    a = AppealFact
    rated = _within(a.rated_at, window)
    group = getattr(a, key)
    stmt = (select(group,
                   _count(_within(a.received_at, window)),
                   _count(rated),
                   _count(and_(rated, a.satisfaction.in_(domain.SATISFIED))))
            .where(or_(_within(a.received_at, window), rated))
            .group_by(group))
    return [(row[0], dict(zip(("appeals", "rated", "satisfied"), row[1:]))) for row in s.execute(stmt)]


def _cross_level_counts(s, key, window):
    """越级访 per group, from triage's cross_level_petition_detected events in the log."""
    e = EventLog
    group = getattr(e, key)
    stmt = (select(group, func.count()).where(e.type == domain.CROSS_LEVEL_EVENT,
                                              _within(e.occurred_at, window)).group_by(group))
    return [(row[0], {"cross_level": row[1]}) for row in s.execute(stmt)]


def group_names(group_by):
    """Display names from the reference data that ships with the platform (categories have none)."""
    if group_by == "town":
        return reference.towns()
    if group_by == "unit":
        return {u["code"]: u["name"] for u in reference.units()}
    return {}


# --- Prometheus ---------------------------------------------------------------------------------

def metrics_snapshot(uow, now=None, tz="Asia/Shanghai", log_counts=None):
    """Every number behind the domain series, read from the log and the facts. Counts of the log only
    grow (it is append-only), so they are exposed as counters that survive restarts. The KPI counts
    of today and of the month so far (calendar days in ``tz``) are those ``metrics.kpis`` gives,
    per town and per unit. With ``log_counts`` (a :class:`LogCounts` the caller keeps between
    snapshots) the log's counts are read incrementally; without, the whole log is counted."""
    o = OrderFact
    now = _utc(now)
    windows = kpi_windows(now, tz)
    # the SQL form of domain.overdue_stage
    resolve_late = and_(o.status.in_(domain.OPEN_STATUSES), o.resolve_due_at < now)
    accept_late = and_(o.status == "dispatched", o.accept_due_at < now)
    stage = case((resolve_late, "resolve"), else_="accept")
    with uow:
        s = uow.session

        def kpi_counts(key):
            return [((period, group, measure), n)
                    for period, window in windows.items()
                    for group, counts in _kpi_counts(s, key, window, now).items()
                    for measure, n in counts.items()]

        logged = log_counts.read(s, now) if log_counts is not None else _count_log(s)
        return {
            **logged,
            **_appeals_received(s),
            **_orders_by_status(s, stage, or_(resolve_late, accept_late)),
            "kpi_by_town": kpi_counts("town_code"),
            "kpi_by_unit": kpi_counts("unit_code"),
            **_histograms(s, {"report_in_seconds": (o.report_in_seconds, REPORT_IN_BUCKETS),
                              "resolve_seconds": (o.resolve_seconds, RESOLVE_BUCKETS),
                              "close_seconds": (o.close_seconds, CLOSE_BUCKETS)}),
        }


def _appeals_received(s):
    """The appeals received per town by channel and per town by category, in one pass over the
    appeals (one row per appeal, kept for good) instead of two."""
    a = AppealFact
    by_channel, by_category = Counter(), Counter()
    for town, channel, category, n in s.execute(
            select(a.town_code, a.channel, a.category, func.count()).where(a.received_at.is_not(None))
            .group_by(a.town_code, a.channel, a.category)):
        by_channel[(town, channel)] += n
        by_category[(town, category)] += n
    return {"appeals_received": list(by_channel.items()), "appeals_by_category": list(by_category.items())}


def _orders_by_status(s, stage, late):
    """The orders by status and the overdue ones by stage, per town and per unit, in one pass over
    the orders (one per appeal and more, kept for good) instead of four."""
    o = OrderFact
    overdue = case((late, stage), else_=None)
    series = {name: Counter() for name in ("orders_by_status", "orders_overdue", "unit_orders_by_status",
                                           "unit_orders_overdue")}
    for town, unit, status, overdue_stage, n in s.execute(
            select(o.town_code, o.unit_code, o.status, overdue, func.count())
            .group_by(o.town_code, o.unit_code, o.status, overdue)):
        series["orders_by_status"][(town, status)] += n
        series["unit_orders_by_status"][(unit, status)] += n
        if overdue_stage is not None:
            series["orders_overdue"][(town, overdue_stage)] += n
            series["unit_orders_overdue"][(unit, overdue_stage)] += n
    return {name: list(counts.items()) for name, counts in series.items()}


def _log_series():
    """The snapshot's counts of the event log: series name → a GROUP BY count over the log."""
    e = EventLog
    return {
        "events": select(e.type, func.count()).group_by(e.type),
        "order_events": select(e.type, e.town_code, e.category, func.count())
        .where(e.type.in_(domain.ORDER_EVENTS)).group_by(e.type, e.town_code, e.category),
        "ratings": _by_payload_field(e, "appeal_rated", "satisfaction"),
        "triage_findings": select(e.type, e.town_code, e.category, func.count())
        .where(e.type.in_(TRIAGE_FINDINGS)).group_by(e.type, e.town_code, e.category),
        "enforcement_events": select(e.type, e.town_code, func.count())
        .where(e.type.in_(ENFORCEMENT_EVENTS)).group_by(e.type, e.town_code),
        "forces_reported_in": _by_payload_field(e, "force_reported_in", "within_deadline", as_boolean=True),
    }


def _count_log(s, after=None, upto=None):
    """{series: [(key, count)]} of the log's rows with ``after`` < id <= ``upto`` (either open)."""
    counts = {}
    for name, stmt in _log_series().items():
        if after is not None:
            stmt = stmt.where(EventLog.id > after)
        if upto is not None:
            stmt = stmt.where(EventLog.id <= upto)
        counts[name] = [(tuple(r[:-1]), r[-1]) for r in s.execute(stmt)]
    return counts


class LogCounts:
    """The log's counts for :func:`metrics_snapshot`, kept between snapshots so that each reads only
    the rows added since: counting the whole log every 15 s cost about 150 ms per 100,000 events
    here, and a district's log grows by about six events per appeal, for good.

    Ids are taken at insert and rows show at commit, so a row can still appear below the highest
    id counted while its transaction is open. Rows are therefore kept ("settled") only once rows
    recorded ``settle_seconds`` later exist; younger ones are counted afresh at every snapshot.
    Should a transaction stay open longer than that, the whole log is counted again every
    ``recount_seconds``, which puts its rows back."""

    def __init__(self, settle_seconds=300, recount_seconds=3600):
        self.settle_seconds, self.recount_seconds = settle_seconds, recount_seconds
        # (settled counts {series: Counter}, id of the last settled row, when counted from scratch):
        # replaced whole, so that two snapshots taken at once each see a consistent state
        self.state = None

    def read(self, s, now):
        """{series: [(key, count)]}: the settled counts plus the rows after them."""
        settled, upto, counted_at = self.state or ({}, 0, None)
        if counted_at is None or (now - counted_at).total_seconds() >= self.recount_seconds:
            settled, upto, counted_at = {}, 0, now
        # the last row recorded before the cut: a range scan from the last settled id
        cut = now - timedelta(seconds=self.settle_seconds)
        newest = s.scalar(select(func.max(EventLog.id)).where(EventLog.id > upto, EventLog.recorded_at <= cut))
        if newest is not None:
            settled = _added(settled, _count_log(s, after=upto, upto=newest))
            upto = newest
        self.state = (settled, upto, counted_at)
        return {name: list(counts.items()) for name, counts in _added(settled, _count_log(s, after=upto)).items()}


def _added(counts, rows):
    """``counts`` ({series: Counter}) plus ``rows`` ({series: [(key, n)]}), as a new dict."""
    total = {name: Counter(keyed) for name, keyed in counts.items()}
    for name, pairs in rows.items():
        keyed = total.setdefault(name, Counter())
        for key, n in pairs:
            keyed[key] += n
    return total


def _by_payload_field(e, event_type, field, as_boolean=False):
    """Counts of one event type by a field of its payload (JSON path: portable across databases)."""
    path = e.envelope[("data", field)]
    value = path.as_boolean() if as_boolean else path.as_string()
    return select(value, func.count()).where(e.type == event_type).group_by(value)


def _histograms(s, histograms):
    """{name: per town, cumulative bucket counts, sum and count of the durations known so far} for
    ``histograms`` ({name: (column, buckets)}), in one pass over the orders. A town with no
    duration of a kind has no series of it."""
    columns = []
    for column, buckets in histograms.values():
        columns += [*[_count(column <= bound) for bound in buckets],
                    func.coalesce(func.sum(column), 0.0), func.count(column)]
    o = OrderFact
    result = {name: [] for name in histograms}
    for r in s.execute(select(o.town_code, *columns).group_by(o.town_code)):
        at = 1
        for name, (_, buckets) in histograms.items():
            counts, total, known = r[at:at + len(buckets)], r[at + len(buckets)], r[at + len(buckets) + 1]
            at += len(buckets) + 2
            if known:
                result[name].append(((r[0],), list(counts), float(total), known))
    return result



"""The domain series on ``/metrics``, built from the latest database snapshot.

Every value is read from the event log and the facts (see ``handlers.metrics_snapshot``), not counted
in the process: a restart, a second instance or a replay shows the same numbers. Counts of events
only grow with the append-only log, so they are counters and ``rate()`` works on them. Several
instances report the same totals: aggregate them with ``max``, not ``sum``.

Labels stay low-cardinality: town code, channel, category, status — never case or order numbers,
units' staff or citizens.
"""
import threading
import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from metrics.handlers import CLOSE_BUCKETS, REPORT_IN_BUCKETS, RESOLVE_BUCKETS

UNKNOWN = "unknown"

# order event type → counter
ORDER_COUNTERS = {
    "order_dispatched": ("wuji_orders_dispatched", "Work orders dispatched (派单), re-dispatches included"),
    "order_accepted": ("wuji_orders_accepted", "Work orders accepted by their unit (签收/报到)"),
    "order_returned": ("wuji_orders_returned", "Work orders returned by their unit (退单)"),
    "order_resolved": ("wuji_orders_resolved", "Work order resolutions (办结)"),
    "order_reopened": ("wuji_orders_reopened", "Work orders reopened after an unsatisfied rating (返工)"),
    "order_closed": ("wuji_orders_closed", "Work orders closed (结案)"),
}
# triage's findings (研判) → counter, by town and category
FINDING_COUNTERS = {
    "repeat_detected": ("wuji_appeals_repeated", "Repeat petitions (重复访): the same person about the "
                        "same matter again within the window"),
    "hotspot_detected": ("wuji_hotspots_detected", "Hot spots (热点): clusters of people writing about "
                         "the same place and problem, once per cluster"),
    "cross_level_petition_detected": ("wuji_cross_level_petitions", "Cross-level petitions (越级访): "
                                      "received at district level about a matter never raised below"),
    "urgent_appeal_flagged": ("wuji_appeals_flagged_urgent", "Appeals flagged urgent by risk rules "
                              "(风险研判: safety, gatherings, self-harm, escalation)"),
}
ENFORCEMENT_COUNTERS = {
    "whistle_blown": ("wuji_whistles_blown", "Joint enforcement operations opened (吹哨)"),
    "operation_completed": ("wuji_operations_completed", "Joint enforcement operations completed"),
    "force_report_in_overdue": ("wuji_forces_report_in_overdue",
                                "Called forces marked late for report-in (报到超时), each once"),
}


def _label(value):
    if value is None or value == "":
        return UNKNOWN
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _labels(values):
    return [_label(v) for v in values]


def build_families(snapshot):
    """Prometheus metric families from a snapshot (an empty snapshot gives empty families)."""
    snap = snapshot or {}
    families = []

    events = CounterMetricFamily("wuji_events_recorded", "Events kept in the metrics event log",
                                 labels=["type"])
    for (kind,), n in snap.get("events", []):
        events.add_metric(_labels([kind]), n)
    families.append(events)

    appeals = CounterMetricFamily("wuji_appeals_received", "Appeals received (受理) by channel and town",
                                  labels=["town", "channel"])
    for labels, n in snap.get("appeals_received", []):
        appeals.add_metric(_labels(labels), n)
    families.append(appeals)

    by_category = GaugeMetricFamily(
        "wuji_appeals_by_category", "Appeals received, by town and by the category of their latest "
        "dispatch (unknown until dispatched)", labels=["town", "category"])
    for labels, n in snap.get("appeals_by_category", []):
        by_category.add_metric(_labels(labels), n)
    families.append(by_category)

    order_families = {kind: CounterMetricFamily(name, doc, labels=["town", "category"])
                      for kind, (name, doc) in ORDER_COUNTERS.items()}
    for (kind, town, category), n in snap.get("order_events", []):
        if kind in order_families:
            order_families[kind].add_metric(_labels([town, category]), n)
    families.extend(order_families.values())

    ratings = CounterMetricFamily("wuji_ratings", "Citizens' ratings (评价) by satisfaction",
                                  labels=["satisfaction"])
    for labels, n in snap.get("ratings", []):
        ratings.add_metric(_labels(labels), n)
    families.append(ratings)

    findings = {kind: CounterMetricFamily(name, doc, labels=["town", "category"])
                for kind, (name, doc) in FINDING_COUNTERS.items()}
    for (kind, town, category), n in snap.get("triage_findings", []):
        if kind in findings:
            findings[kind].add_metric(_labels([town, category]), n)
    families.extend(findings.values())

    statuses = GaugeMetricFamily("wuji_orders", "Work orders now in each status", labels=["town", "status"])
    for labels, n in snap.get("orders_by_status", []):
        statuses.add_metric(_labels(labels), n)
    families.append(statuses)

    overdue = GaugeMetricFamily(
        "wuji_orders_overdue", "Open work orders past a deadline now: stage=resolve (办结超期) or "
        "stage=accept (签收超期, not yet accepted); each order counts once", labels=["town", "stage"])
    for labels, n in snap.get("orders_overdue", []):
        overdue.add_metric(_labels(labels), n)
    families.append(overdue)

    unit_statuses = GaugeMetricFamily("wuji_unit_orders", "Work orders now in each status, per unit",
                                      labels=["unit", "status"])
    for labels, n in snap.get("unit_orders_by_status", []):
        unit_statuses.add_metric(_labels(labels), n)
    families.append(unit_statuses)

    unit_overdue = GaugeMetricFamily(
        "wuji_unit_orders_overdue", "Open work orders past a deadline now, per unit (as "
        "wuji_orders_overdue)", labels=["unit", "stage"])
    for labels, n in snap.get("unit_orders_overdue", []):
        unit_overdue.add_metric(_labels(labels), n)
    families.append(unit_overdue)

    for key, name, doc, label in (
            ("kpi_by_town", "wuji_kpi_count", "The counts behind metrics.kpis (响应率, 按时办结率, "
             "满意率, 返工率) for today and the month so far, per town", "town"),
            ("kpi_by_unit", "wuji_unit_kpi_count", "The counts behind metrics.kpis for today and the "
             "month so far, per unit", "unit")):
        family = GaugeMetricFamily(name, doc, labels=["period", label, "measure"])
        for labels, n in snap.get(key, []):
            family.add_metric(_labels(labels), n)
        families.append(family)

    enforcement = {kind: CounterMetricFamily(name, doc, labels=["town"])
                   for kind, (name, doc) in ENFORCEMENT_COUNTERS.items()}
    for (kind, town), n in snap.get("enforcement_events", []):
        if kind in enforcement:
            enforcement[kind].add_metric(_labels([town]), n)
    families.extend(enforcement.values())

    forces = CounterMetricFamily("wuji_forces_reported_in", "Forces that reported in (报到) to an operation",
                                 labels=["within_deadline"])
    for labels, n in snap.get("forces_reported_in", []):
        forces.add_metric(_labels(labels), n)
    families.append(forces)

    for key, name, doc, bounds in (
            ("report_in_seconds", "wuji_order_report_in_seconds",
             "Time from dispatch to acceptance (报到) of work orders", REPORT_IN_BUCKETS),
            ("resolve_seconds", "wuji_order_resolve_seconds",
             "Time from dispatch to first resolution (办结) of work orders", RESOLVE_BUCKETS),
            ("close_seconds", "wuji_order_close_seconds",
             "Time from dispatch to closing (结案) of work orders", CLOSE_BUCKETS)):
        histogram = HistogramMetricFamily(name, doc, labels=["town"])
        for labels, cumulative, total, count in snap.get(key, []):
            buckets = [(str(float(b)), c) for b, c in zip(bounds, cumulative)] + [("+Inf", count)]
            histogram.add_metric(_labels(labels), buckets, sum_value=total)
        families.append(histogram)

    refreshed = GaugeMetricFamily("wuji_metrics_snapshot_timestamp_seconds",
                                  "When the domain series were last read from the database")
    if snapshot:
        refreshed.add_metric([], snapshot.get("_taken_at", 0.0))
    families.append(refreshed)
    return families


class DomainCollector:
    """Serves the latest snapshot; the service's timer replaces it. Scrapes never touch the database,
    so they answer even while every worker is busy."""

    def __init__(self):
        self._lock = threading.Lock()
        self._snapshot = None

    def publish(self, snapshot):
        with self._lock:
            self._snapshot = {**snapshot, "_taken_at": time.time()} if snapshot is not None else None

    def collect(self):
        with self._lock:
            snapshot = self._snapshot
        return build_families(snapshot)

    def describe(self):
        return build_families(None)

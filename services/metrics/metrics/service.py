"""metrics service: entrypoints only, each turning a message or call into a plain handler call.

Events in: every event of the catalogue (intake, triage, enforcement), at-least-once; duplicates are
dropped by event id in the same transaction as their effect. Each is kept in the event log and
folded into the appeal and order facts.
RPC: kpis(start, end, group_by) — 响应率, 按时办结率, 满意率, 返工率, 越级访 per town, unit or category;
event_count(event_type=None); rebuild() — replays the event log into fresh facts.
Prometheus: the domain series, recomputed from the database every REFRESH_SECONDS (and at start),
plus wuji_common's entrypoint series, on METRICS_PORT.
"""

from metrics import assessment, handlers
from metrics.dependencies import DomainMetrics, KpiTimeZone, LogTally, MetricsDatabase, MetricsExporter
from wuji_common import audit, auth, metrics as common_metrics
from wuji_common.audit import audited
from wuji_common.auth import CurrentCaller, rpc
from wuji_common.entrypoints import batch_event_handler, config_timer, event_handler
from wuji_common.errors import Forbidden

# who may call what (wuji_common.auth.ROLES); a town-scoped caller sees its own towns' rows only
OVERSIGHT = ("dispatcher", "supervisor", "district_leader")


class MetricsService:
    name = "metrics"

    uow = MetricsDatabase()
    exporter = MetricsExporter()
    publish_series = DomainMetrics()
    kpi_timezone = KpiTimeZone()
    log_counts = LogTally()  # the log is counted incrementally between snapshots
    caller = CurrentCaller()

    # --- RPC ------------------------------------------------------------------------------------
    @rpc(roles=OVERSIGHT)
    def kpis(self, start, end, group_by="town"):
        """KPI rows for calendar days start..end (ISO dates, inclusive), grouped by town, unit or
        category, then a total row (group "total"). Rates are null when nothing was measured."""
        return self._own_towns(handlers.kpis(self.uow(), start, end, group_by, tz=self.kpi_timezone),
                               group_by)

    def _own_towns(self, rows, grouped_by):
        """A town-scoped caller (a town's leader or supervisor) gets its towns' rows, grouped by
        town (other groupings and the district total would show other towns' figures)."""
        towns = self.caller.town_codes
        if not towns:
            return rows
        if grouped_by != "town":
            raise Forbidden("本镇街账号只能按镇街查看")
        return [row for row in rows if row.get("group") in towns]

    @rpc(roles=("ops",))
    def event_count(self, event_type=None):
        return handlers.event_count(self.uow(), event_type)

    @rpc(roles=("ops",))
    def rebuild(self):
        """Drop the appeal and order facts and fold them again from the event log (one transaction;
        events arriving meanwhile wait and then refold). Returns {"events", "orders", "appeals"}.
        Long on a big log: call it with a generous timeout, or run `metrics rebuild` instead."""
        result = handlers.rebuild(audited(self.uow(), self.caller, "rebuild", "projections"))
        self._publish_snapshot()
        return result

    @rpc(roles=OVERSIGHT + ("ops",))
    def audit_log(self, object_id=None, since=None, limit=100):
        """metrics' audit log (rebuilds of the projections): supervisors and the district leader."""
        return audit.read(self.uow(), self.caller, object_id, since, limit)

    # --- Prometheus -----------------------------------------------------------------------------
    @config_timer("REFRESH_SECONDS", 15, eager=True)
    def refresh_series(self):
        self._publish_snapshot()

    def _publish_snapshot(self):
        self.publish_series(handlers.metrics_snapshot(self.uow(), tz=self.kpi_timezone,
                                                      log_counts=self.log_counts))

    # --- events ---------------------------------------------------------------------------------
    @event_handler("auth", "token_revoked")
    def record_revoked_token(self, envelope):
        """Every instance refuses the token from now on (auth.CurrentCaller reads the record)."""
        auth.record_revocation(self.uow(), "metrics.record_revoked_token", envelope)

    def _record(self, envelopes, method):
        consumer = f"metrics.{method}"
        duplicates = len(envelopes) - handlers.record_events(self.uow(), consumer, envelopes)
        if duplicates:
            common_metrics.EVENTS_DUPLICATE.labels(self.name, consumer).inc(duplicates)

    @batch_event_handler("intake", "appeal_received")
    def on_appeal_received(self, envelopes):
        self._record(envelopes, "on_appeal_received")

    @batch_event_handler("intake", "appeal_rated")
    def on_appeal_rated(self, envelopes):
        self._record(envelopes, "on_appeal_rated")

    @batch_event_handler("triage", "order_dispatched")
    def on_order_dispatched(self, envelopes):
        self._record(envelopes, "on_order_dispatched")

    @batch_event_handler("triage", "order_accepted")
    def on_order_accepted(self, envelopes):
        self._record(envelopes, "on_order_accepted")

    @batch_event_handler("triage", "order_returned")
    def on_order_returned(self, envelopes):
        self._record(envelopes, "on_order_returned")

    @batch_event_handler("triage", "order_progressed")
    def on_order_progressed(self, envelopes):
        self._record(envelopes, "on_order_progressed")

    @batch_event_handler("triage", "order_resolved")
    def on_order_resolved(self, envelopes):
        self._record(envelopes, "on_order_resolved")

    @batch_event_handler("triage", "order_reopened")
    def on_order_reopened(self, envelopes):
        self._record(envelopes, "on_order_reopened")

    @batch_event_handler("triage", "order_closed")
    def on_order_closed(self, envelopes):
        self._record(envelopes, "on_order_closed")

    @batch_event_handler("triage", "cross_level_petition_detected")
    def on_cross_level_petition_detected(self, envelopes):
        self._record(envelopes, "on_cross_level_petition_detected")

    @batch_event_handler("triage", "repeat_detected")
    def on_repeat_detected(self, envelopes):
        self._record(envelopes, "on_repeat_detected")

    @batch_event_handler("triage", "hotspot_detected")
    def on_hotspot_detected(self, envelopes):
        self._record(envelopes, "on_hotspot_detected")

    @batch_event_handler("triage", "urgent_appeal_flagged")
    def on_urgent_appeal_flagged(self, envelopes):
        self._record(envelopes, "on_urgent_appeal_flagged")

    @batch_event_handler("enforcement", "whistle_blown")
    def on_whistle_blown(self, envelopes):
        self._record(envelopes, "on_whistle_blown")

    @batch_event_handler("enforcement", "force_reported_in")
    def on_force_reported_in(self, envelopes):
        self._record(envelopes, "on_force_reported_in")

    @batch_event_handler("enforcement", "operation_completed")
    def on_operation_completed(self, envelopes):
        self._record(envelopes, "on_operation_completed")

    @batch_event_handler("enforcement", "force_report_in_overdue")
    def on_force_report_in_overdue(self, envelopes):
        self._record(envelopes, "on_force_report_in_overdue")

    # --- 考核: the monthly assessment (metrics.assessment) ------------------------------------------
    @rpc(roles=OVERSIGHT)
    def assessment(self, month, level="unit"):
        """The assessment table of a month ("2026-11") per unit or town: 响应率, 按时办结率, 解决率,
        满意率, 返工率, 重复访率, 越级访率, 结案率, 按期结案率, 准确派遣率, the composite score and the
        ranking, computed from the event log alone."""
        table = assessment.assessment(self.uow(), month, level, tz=self.kpi_timezone)
        return dict(table, rows=self._own_towns(table["rows"], level))

    @batch_event_handler("triage", "repeat_detected")
    def on_repeat_detected(self, envelopes):
        self._record(envelopes, "on_repeat_detected")

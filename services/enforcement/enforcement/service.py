"""enforcement service: entrypoints only. Each turns a request into a call of a plain handler.

RPC (towns' and forces' systems, triage):
    blow_whistle(order_no, violation_type, town_code, urgency, idempotency_key)   吹哨
    report_in(operation_id, force_code, team, idempotency_key)                   报到
    complete_operation(operation_id, outcome, idempotency_key, evidence=None)    完成（结果与证据）
    legal procedure, in this order and none early:
        issue_rectification_notice(operation_id, notice_no, period_days=None, idempotency_key)
        record_inspection(operation_id, rectified, findings, evidence=None, idempotency_key)
        carry_out_joint_enforcement(operation_id, action, evidence=None, idempotency_key)
    record_absence(officer_code, first_day, last_day, kind, idempotency_key)     an officer drops out
    schedule(town_code, horizon_days=14, idempotency_key=None)                   排班 → the plan
    get_operation, find_operations, forces(town_code), plan(town_code), schedule_status(town_code),
    assessment(town_code=None, since=None, until=None)                           考核
Mutating calls are idempotent: a retry with the same idempotency_key returns the first result.
Caller-caused failures raise wuji_common.errors types (ValidationError naming the field, NotFound,
NotYourOrder, InvalidTransition).

Events in (at-least-once; duplicates dropped by event id; failures retried, then ``<queue>.dead``):
    triage.enforcement_requested → open the operation, as blow_whistle does (once per open order)
Timers: the report-in watcher marks forces past their deadline, reminds them, then escalates them
to the district, each once however many instances run; the re-plan watcher revises the plans of
towns where an officer dropped out or an urgent operation arrived.
Events out (via the outbox, exchange ``enforcement.events``): whistle_blown, force_reported_in,
force_report_in_overdue, force_report_in_reminded, force_report_in_escalated,
rectification_notice_issued, follow_up_inspection_recorded, joint_enforcement_carried_out,
operation_completed, operations_scheduled.
"""
import logging

from enforcement import handlers
from enforcement.dependencies import EnforcementDatabase, MetricsExporter, Planner
from wuji_common import audit, auth, metrics
from wuji_common.audit import audited
from wuji_common.auth import CurrentCaller, rpc
from wuji_common.entrypoints import config_timer, event_handler
from wuji_common.errors import Forbidden, InvalidTransition

log = logging.getLogger(__name__)

DEFAULT_WATCH_SECONDS = 30
DEFAULT_REPLAN_SECONDS = 60
WATCH_BATCH = 100

# who may call what (wuji_common.auth.ROLES); within a role, a force acts on the operations it was
# called to, a town-scoped caller on its own towns' (checked in the entrypoints)
TOWNS = auth.UNIT_STAFF + ("dispatcher", "supervisor")
ON_SITE = auth.UNIT_STAFF + ("force", "supervisor")
READERS = auth.UNIT_STAFF + ("force", "dispatcher", "supervisor", "district_leader")


class EnforcementService:
    name = "enforcement"

    uow = EnforcementDatabase()
    planner = Planner()
    metrics = MetricsExporter()
    caller = CurrentCaller()

    # --- events -----------------------------------------------------------------------------------
    @event_handler("triage", "enforcement_requested")
    def on_enforcement_requested(self, envelope):
        """triage asks for joint enforcement of a work order: the whistle, without a town's call."""
        consumer = "enforcement.on_enforcement_requested"
        uow = audited(self.uow(), audit.event_caller(envelope), "enforcement_requested", "order",
                      envelope["data"].get("order_no"))
        if handlers.open_requested_operation(uow, consumer, envelope) is None:
            metrics.EVENTS_DUPLICATE.labels(self.name, consumer).inc()

    @event_handler("auth", "token_revoked")
    def record_revoked_token(self, envelope):
        """Every instance refuses the token from now on (auth.CurrentCaller reads the record)."""
        auth.record_revocation(self.uow(), "enforcement.record_revoked_token", envelope)

    def _audited(self, action, object_type, object_id=None, reason=None):
        """The unit of work of a call that changes state: its commit writes the audit row."""
        return audited(self.uow(), self.caller, action, object_type, object_id, reason)

    # --- RPC: towns and forces ------------------------------------------------------------------
    @rpc(roles=TOWNS)
    def blow_whistle(self, order_no, violation_type, town_code, urgency, idempotency_key=None):
        """Open a joint operation and call the forces competent for the violation in the town."""
        return handlers.blow_whistle(self._audited("blow_whistle", "order", order_no), {
            "order_no": order_no, "violation_type": violation_type,
            "town_code": self.caller.require_town(town_code),
            "urgency": urgency}, idempotency_key)

    @rpc(roles=("force",))
    def report_in(self, operation_id, force_code, team, idempotency_key=None):
        """A called force reports in with one of its teams (late is recorded, not refused)."""
        return handlers.report_in(self._audited("report_in", "operation", operation_id), {
            "operation_id": operation_id, "force_code": self.caller.require_force(force_code),
            "team": team}, idempotency_key)

    @rpc(roles=ON_SITE)
    def complete_operation(self, operation_id, outcome, idempotency_key=None, evidence=None):
        """Close the operation once every called force has reported in (and, for a case with a legal
        procedure, once the procedure allows it, with evidence)."""
        self._operation_in_scope(operation_id)
        return handlers.complete_operation(self._audited("complete_operation", "operation", operation_id), {
            "operation_id": operation_id, "outcome": outcome, "evidence": evidence or []},
            idempotency_key)

    # --- RPC: legal procedure -----------------------------------------------------------------------
    @rpc(roles=ON_SITE)
    def issue_rectification_notice(self, operation_id, notice_no, period_days=None, idempotency_key=None):
        """限期整改/拆除通知书, with the statutory waiting period (or a longer one)."""
        self._operation_in_scope(operation_id)
        return handlers.issue_rectification_notice(
            self._audited("issue_rectification_notice", "operation", operation_id), {
            "operation_id": operation_id, "notice_no": notice_no, "period_days": period_days},
            idempotency_key)

    @rpc(roles=ON_SITE)
    def record_inspection(self, operation_id, rectified, findings, evidence=None, idempotency_key=None):
        """复查, once the waiting period is over."""
        self._operation_in_scope(operation_id)
        return handlers.record_inspection(self._audited("record_inspection", "operation", operation_id), {
            "operation_id": operation_id, "rectified": rectified, "findings": findings,
            "evidence": evidence or []}, idempotency_key)

    @rpc(roles=ON_SITE)
    def carry_out_joint_enforcement(self, operation_id, action, evidence=None, idempotency_key=None):
        """联合执法, after an inspection that found the violation not rectified."""
        self._operation_in_scope(operation_id)
        return handlers.carry_out_joint_enforcement(
            self._audited("carry_out_joint_enforcement", "operation", operation_id), {
            "operation_id": operation_id, "action": action, "evidence": evidence or []},
            idempotency_key)

    # --- RPC: rosters and scheduling ----------------------------------------------------------------
    @rpc(roles=("force", "supervisor"))
    def record_absence(self, officer_code, first_day, last_day, kind, idempotency_key=None):
        """An officer is away (leave, sick, training, other_duty) from first_day to last_day."""
        return handlers.record_absence(self._audited("record_absence", "officer", officer_code, kind), {
            "officer_code": officer_code, "first_day": first_day, "last_day": last_day, "kind": kind},
            idempotency_key)

    @rpc(roles=TOWNS)
    def schedule(self, town_code, horizon_days=14, idempotency_key=None):
        """Plan the town's open operations onto days and teams; returns and publishes the plan.
        The solver runs in a worker process for up to SCHEDULE_TIME_LIMIT_SECONDS."""
        self.caller.require_town(town_code)
        return handlers.schedule(self._audited("schedule", "town", town_code), self._solver(town_code),
                                 {"town_code": town_code, "horizon_days": horizon_days},
                                 idempotency_key=idempotency_key)

    @rpc(roles=READERS)
    def plan(self, town_code):
        """The town's plan in force (its latest version)."""
        return handlers.latest_plan(self.uow(), self.caller.require_town(town_code))

    @rpc(roles=READERS)
    def schedule_status(self, town_code):
        """Whether this instance is computing a plan for the town right now."""
        return {"town_code": self.caller.require_town(town_code),
                "solving": town_code in self.planner.solving}

    # --- RPC: queries ---------------------------------------------------------------------------------
    @rpc(roles=READERS)
    def get_operation(self, operation_id):
        return self._operation_in_scope(operation_id)

    @rpc(roles=READERS)
    def find_operations(self, town_code=None, status=None):
        """At most 200 operations, newest first."""
        operations = self.caller.visible(handlers.find_operations(self.uow(), self.caller.own_town(town_code),
                                                                  status))
        if self.caller.role == "force":
            operations = [o for o in operations if self._called(o)]
        return operations

    @rpc(roles=READERS)
    def forces(self, town_code):
        """The forces and the teams with jurisdiction over a town (its own first)."""
        return handlers.town_forces(self.uow(), self.caller.require_town(town_code))

    @rpc(roles=("supervisor", "district_leader"))
    def assessment(self, town_code=None, since=None, until=None):
        """Each force's report-in record: called, on time, late, reminded, escalated, minutes late."""
        return handlers.assessment(self.uow(), self.caller.own_town(town_code), since, until)

    # --- timers -----------------------------------------------------------------------------------------
    @config_timer("REPORT_IN_WATCH_SECONDS", DEFAULT_WATCH_SECONDS)
    def watch_report_in_deadlines(self):
        """Mark forces past their report-in deadline as late, remind them, then escalate them (fires
        in every instance; each force is marked, reminded and escalated once). One short
        transaction per batch, so no lock is held for long."""
        for step in (handlers.mark_overdue, handlers.remind_late_forces, handlers.escalate_late_forces):
            uow = audited(self.uow(), self.caller, step.__name__, "operation", only_with_events=True)
            while len(step(uow, batch_size=WATCH_BATCH)) == WATCH_BATCH:
                pass

    @config_timer("REPLAN_WATCH_SECONDS", DEFAULT_REPLAN_SECONDS)
    def replan_requested_towns(self):
        """Revise the plan of each town where an officer dropped out or an urgent operation arrived.
        A request stays until a plan that saw it commits, so a failed re-plan is tried again."""
        for town_code, reason, horizon_days in handlers.replan_requests(self.uow()):
            try:
                handlers.schedule(audited(self.uow(), self.caller, "replan", "town", town_code, reason),
                                  self._solver(town_code),
                                  {"town_code": town_code, "horizon_days": horizon_days}, reason=reason)
            except InvalidTransition:
                log.info("plan of %s changed while re-planning; next round", town_code)

    @rpc(roles=READERS + ("ops",))
    def audit_log(self, object_id=None, since=None, limit=100):
        """enforcement's audit log: a unit's staff (a force) their own entries, supervisors everything."""
        return audit.read(self.uow(), self.caller, object_id, since, limit)

    def _called(self, operation):
        return self.caller.force_code in {f["force_code"] for f in operation["forces"]}

    def _operation_in_scope(self, operation_id):
        """The operation, if the caller may see and act on it: a force only those it was called to,
        a town-scoped caller its own towns'."""
        operation = handlers.get_operation(self.uow(), operation_id)
        if self.caller.role == "force" and not self._called(operation):
            raise Forbidden(f"本力量未被召集参与行动 {operation_id}")
        self.caller.require_town(operation["town_code"])
        return operation

    def _solver(self, town_code):
        return lambda problem: self.planner.solve(problem, town_code)

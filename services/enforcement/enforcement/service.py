"""enforcement service: entrypoints only. Each turns a request into a call of a plain handler.

RPC (towns' and forces' systems, triage):
    blow_whistle(order_no, violation_type, town_code, urgency, idempotency_key)   吹哨
    report_in(operation_id, force_code, team, idempotency_key)                   报到
    complete_operation(operation_id, outcome, idempotency_key)                   完成
    get_operation(operation_id), find_operations(town_code=None, status=None), forces(town_code)
Mutating calls are idempotent: a retry with the same idempotency_key returns the first result.
Caller-caused failures raise wuji_common.errors types (ValidationError naming the field, NotFound,
NotYourOrder, InvalidTransition).

Timer: the report-in deadline watcher marks forces that missed their deadline, once each, however
many instances run.
Events out (via the outbox, exchange ``enforcement.events``): whistle_blown, force_reported_in,
force_report_in_overdue, operation_completed.
"""
from nameko.rpc import rpc

from enforcement import handlers
from enforcement.dependencies import EnforcementDatabase, MetricsExporter, timer_from_config
from wuji_common.errors import EXPECTED

DEFAULT_WATCH_SECONDS = 30
WATCH_BATCH = 100


class EnforcementService:
    name = "enforcement"

    uow = EnforcementDatabase()
    metrics = MetricsExporter()

    # --- RPC: towns and forces ------------------------------------------------------------------
    @rpc(expected_exceptions=EXPECTED)
    def blow_whistle(self, order_no, violation_type, town_code, urgency, idempotency_key=None):
        """Open a joint operation and call the forces competent for the violation in the town."""
        return handlers.blow_whistle(self.uow(), {
            "order_no": order_no, "violation_type": violation_type, "town_code": town_code,
            "urgency": urgency}, idempotency_key)

    @rpc(expected_exceptions=EXPECTED)
    def report_in(self, operation_id, force_code, team, idempotency_key=None):
        """A called force reports in with one of its teams (late is recorded, not refused)."""
        return handlers.report_in(self.uow(), {
            "operation_id": operation_id, "force_code": force_code, "team": team}, idempotency_key)

    @rpc(expected_exceptions=EXPECTED)
    def complete_operation(self, operation_id, outcome, idempotency_key=None):
        """Close the operation once every called force has reported in."""
        return handlers.complete_operation(self.uow(), {
            "operation_id": operation_id, "outcome": outcome}, idempotency_key)

    @rpc(expected_exceptions=EXPECTED)
    def get_operation(self, operation_id):
        return handlers.get_operation(self.uow(), operation_id)

    @rpc(expected_exceptions=EXPECTED)
    def find_operations(self, town_code=None, status=None):
        """At most 200 operations, newest first."""
        return handlers.find_operations(self.uow(), town_code, status)

    @rpc(expected_exceptions=EXPECTED)
    def forces(self, town_code):
        """The forces and their teams serving a town."""
        return handlers.town_forces(self.uow(), town_code)

    # --- timer: report-in deadlines ---------------------------------------------------------------
    @timer_from_config("REPORT_IN_WATCH_SECONDS", DEFAULT_WATCH_SECONDS)
    def watch_report_in_deadlines(self):
        """Mark forces past their report-in deadline as late (fires in every instance; each force
        is marked once). One short transaction per batch, so no lock is held for long."""
        while len(handlers.mark_overdue(self.uow(), batch_size=WATCH_BATCH)) == WATCH_BATCH:
            pass

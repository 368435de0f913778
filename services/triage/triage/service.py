"""triage service: entrypoints only. Each turns a message into a call of a plain handler.

Events in (at-least-once; duplicates dropped by event id; failures retried with delays, then parked
in ``<queue>.dead``):
    intake.appeal_received          → route the appeal (or hold it for a dispatcher), open its work
                                      order; flag urgency, repeats, cross-level petitions, hot spots
    intake.appeal_rated             → close the order, or reopen it (返工)     → order_closed | order_reopened
    enforcement.operation_completed → resolve the order the operation was for → order_resolved
RPC (units' systems and dispatchers; every mutating call takes an idempotency_key, and a retry
returns the first result): get_order, find_orders, accept_order, return_order, add_progress,
resolve_order; pending_review, route_manually, hotspots, repeat_counts, reload_taxonomy;
services_catalogue (read-only: the taxonomy's items, for Open311 GET services and units' forms).
Errors: NotFound, NotYourOrder (not the order's unit), InvalidTransition, ValidationError (fields).
Events out (via the outbox): order_dispatched, order_accepted, order_returned, order_progressed,
order_resolved, order_reopened, order_closed, enforcement_requested, urgent_appeal_flagged,
repeat_detected, cross_level_petition_detected, hotspot_detected.
"""

from triage import handlers, supervision
from triage.catalogue import services_catalogue
from triage.dependencies import (
    APPEALS_FLAGGED, ORDERS_ROUTED, MetricsExporter, NearDuplicates, RouterProvider, TaxonomyReloader,
    TriageDatabase,
)
from triage.domain import TaxonomyError, utcnow
from wuji_common import audit, auth, metrics
from wuji_common.audit import audited
from wuji_common.auth import CurrentCaller, rpc
from wuji_common.entrypoints import batch_event_handler, config_timer, event_handler
from wuji_common.errors import NotYourOrder, ValidationError

# who may call what (wuji_common.auth.ROLES); scope within a role is checked in the entrypoint:
# unit staff act and read for their own unit only, town-scoped callers see their own towns
UNITS = auth.UNIT_STAFF
OVERSIGHT = ("dispatcher", "supervisor", "district_leader")
READERS = UNITS + OVERSIGHT


class TriageService:
    name = "triage"

    uow = TriageDatabase()
    router = RouterProvider()
    reload = TaxonomyReloader()
    near_duplicates = NearDuplicates()
    metrics = MetricsExporter()
    caller = CurrentCaller()

    # --- events -------------------------------------------------------------------------------
    @batch_event_handler("intake", "appeal_received")
    def on_appeal_received(self, envelopes):
        """Exactly one work order per appeal, however often the event arrives; the appeals that
        have arrived are routed together, in one transaction."""
        for routed in handlers.dispatch_appeals(self.uow(), self.router, "triage.on_appeal_received",
                                                envelopes, index=self.near_duplicates,
                                                on_handled=audit.record_events):
            if routed is None:
                metrics.EVENTS_DUPLICATE.labels(self.name, "triage.on_appeal_received").inc()
                continue
            if routed["status"] == "pending_review":
                APPEALS_FLAGGED.labels("review").inc()
            else:
                ORDERS_ROUTED.labels(routed["level"], routed["routing_basis"], routed["policy"]).inc()
            for kind, shown in (("repeat", routed["repeat_of"]), ("cross_level", routed["cross_level"]),
                                ("urgent", routed["urgency"] != "normal")):
                if shown:
                    APPEALS_FLAGGED.labels(kind).inc()

    @event_handler("intake", "appeal_rated")
    def on_appeal_rated(self, envelope):
        if handlers.apply_rating(self._by_event(envelope), "triage.on_appeal_rated", envelope) is None:
            metrics.EVENTS_DUPLICATE.labels(self.name, "triage.on_appeal_rated").inc()

    @event_handler("enforcement", "operation_completed")
    def on_operation_completed(self, envelope):
        handlers.complete_by_operation(self._by_event(envelope), "triage.on_operation_completed",
                                       envelope)

    @event_handler("auth", "token_revoked")
    def record_revoked_token(self, envelope):
        """Every instance refuses the token from now on (auth.CurrentCaller reads the record)."""
        auth.record_revocation(self.uow(), "triage.record_revoked_token", envelope)

    def _by_event(self, envelope):
        """The unit of work of an event's effect, audited as done by the event's source service."""
        return audited(self.uow(), audit.event_caller(envelope), envelope["type"], "appeal",
                       envelope.get("case_no"))

    def _audited(self, action, object_type, object_id=None, reason=None):
        """The unit of work of a call that changes state: its commit writes the audit row."""
        return audited(self.uow(), self.caller, action, object_type, object_id, reason)

    # --- RPC: the units' systems ----------------------------------------------------------------
    @rpc(roles=READERS)
    def get_order(self, order_no):
        """The order with its deadlines, routing record and progress notes."""
        return self._in_scope(handlers.get_order(self.uow(), order_no))

    @rpc(roles=READERS)
    def find_orders(self, case_no=None, unit_code=None, status=None, limit=None):
        """Orders matching every filter given, oldest first (at most ``limit``, else 10,000)."""
        orders = handlers.find_orders(self.uow(), case_no, self.caller.own_unit(unit_code), status, limit)
        return self.caller.visible(orders)

    def _in_scope(self, order):
        """A unit sees its own orders (and those it handles jointly); a town-scoped caller its towns'."""
        caller = self.caller
        if caller.is_unit and caller.unit_code != order["unit_code"] \
                and caller.unit_code not in order.get("co_handlers", ()):
            raise NotYourOrder(f"工单 {order['order_no']} 不属于本单位")
        caller.require_town(order["town_code"])
        return order

    @rpc(roles=auth.STAFF + ("force", "ops", "service:intake"))
    def services_catalogue(self):
        """The taxonomy's categories and items (事项目录) with level, department and time limits."""
        return services_catalogue(self.uow(), self.router.taxonomy, self.router.policies)

    @rpc(roles=UNITS)
    def accept_order(self, order_no, unit_code, idempotency_key):
        """签收: the unit takes the order on."""
        return handlers.accept_order(self._audited("accept_order", "order", order_no), order_no,
                                     self.caller.require_unit(unit_code), idempotency_key)

    @rpc(roles=UNITS)
    def return_order(self, order_no, unit_code, reason, idempotency_key):
        """退单: not this unit's business; the appeal is routed to another unit (or to a dispatcher)."""
        return handlers.return_order(self._audited("return_order", "order", order_no, reason),
                                     self.router, order_no, self.caller.require_unit(unit_code), reason,
                                     idempotency_key)

    @rpc(roles=UNITS)
    def add_progress(self, order_no, unit_code, note, idempotency_key):
        """办理进展."""
        return handlers.add_progress(self._audited("add_progress", "order", order_no), order_no,
                                     self.caller.require_unit(unit_code), note, idempotency_key)

    @rpc(roles=UNITS)
    def resolve_order(self, order_no, unit_code, resolution, idempotency_key):
        """办结: the citizen is then invited to rate the handling."""
        return handlers.resolve_order(self._audited("resolve_order", "order", order_no), order_no,
                                      self.caller.require_unit(unit_code), resolution, idempotency_key)

    # --- RPC: dispatchers (人工研判) -------------------------------------------------------------
    @rpc(roles=OVERSIGHT)
    def pending_review(self, limit=None):
        """The review queue: appeals waiting for a dispatcher, most urgent first, then oldest."""
        return self.caller.visible(handlers.pending_review(self.uow(), limit))

    @rpc(roles=("dispatcher",))
    def route_manually(self, order_no, unit_code, category, item, idempotency_key):
        """A dispatcher routes a waiting order, or re-routes a returned or not yet signed one."""
        return handlers.route_manually(self._audited("route_manually", "order", order_no), self.router,
                                       order_no, unit_code, category, item, idempotency_key)

    @rpc(roles=OVERSIGHT)
    def hotspots(self, since=None, town_code=None, limit=None):
        """Hot-spot clusters (热点), the most recently active first, with their cases."""
        return self.caller.visible(handlers.hotspots(self.uow(), since, self.caller.own_town(town_code),
                                                     limit))

    @rpc(roles=OVERSIGHT)
    def repeat_counts(self):
        """重复访 per unit: {unit_code: count}."""
        return handlers.repeat_counts(self.uow())

    @rpc(roles=("ops",))
    def reload_taxonomy(self):
        """Read the taxonomy file again now; an invalid file is refused (ValidationError) and the
        version in force stays."""
        try:
            previous, version = self.reload()
        except TaxonomyError as err:
            raise ValidationError("事项清单配置有误，未生效", {"taxonomy": [str(err)]}) from None
        audit.note(self.uow(), self.caller, "reload_taxonomy", "taxonomy", version, f"from {previous}")
        return {"previous_version": previous, "version": version}

    # --- housekeeping ---------------------------------------------------------------------------
    @config_timer("NEAR_DUPLICATE_EXPIRY_SECONDS", 600)
    def forget_old_appeals(self):
        """Drop appeals past the retention from this instance's near-duplicate index."""
        self.near_duplicates.forget_expired(utcnow())

    # --- clocks and supervision (限时办结 · 督查督办; triage.supervision) ---------------------------
    @config_timer("CLOCK_SWEEP_SECONDS", 30, eager=True)
    def sweep_clocks(self):
        """Fire what the clocks owe: reminders at 50 % and 80 %, overdue + supervision ticket,
        escalation of a unit not reported in. Every instance sweeps; each checkpoint fires once
        (SKIP LOCKED claims, a marker per clock and checkpoint); eager: what fell due while the
        service was down fires at start."""
        supervision.sweep(audited(self.uow(), self.caller, "sweep_clocks", "order", only_with_events=True))

    @rpc(roles=UNITS)
    def request_extension(self, order_no, unit_code, days, reason, idempotency_key):
        """延期: the unit asks, before the resolve deadline, for ``days`` more (working days under a
        working-time policy); the supervision zone decides."""
        return supervision.request_clock_change(
            self._audited("request_extension", "order", order_no, reason), "extension", order_no,
            self.caller.require_unit(unit_code), days, reason, idempotency_key)

    @rpc(roles=("supervisor",))
    def decide_extension(self, request_id, approve, supervisor, note, idempotency_key):
        return supervision.decide_clock_change(
            self._audited("decide_extension", "clock_request", request_id, note), "extension",
            request_id, approve, supervisor, note, idempotency_key)

    @rpc(roles=UNITS)
    def request_suspension(self, order_no, unit_code, days, reason, idempotency_key):
        """挂账: the unit asks for the order's clocks to stand still for at most ``days`` days."""
        return supervision.request_clock_change(
            self._audited("request_suspension", "order", order_no, reason), "suspension", order_no,
            self.caller.require_unit(unit_code), days, reason, idempotency_key)

    @rpc(roles=("supervisor",))
    def decide_suspension(self, request_id, approve, supervisor, note, idempotency_key):
        return supervision.decide_clock_change(
            self._audited("decide_suspension", "clock_request", request_id, note), "suspension",
            request_id, approve, supervisor, note, idempotency_key)

    @rpc(roles=UNITS + ("supervisor",))
    def resume_order(self, order_no, unit_code, idempotency_key):
        """挂账 ends early: the clocks run again."""
        return supervision.resume(self._audited("resume_order", "order", order_no), order_no,
                                  self.caller.require_unit(unit_code), idempotency_key)

    @rpc(roles=READERS)
    def overdue(self, town_code=None, unit_code=None):
        """Clocks past their deadline, per town and/or unit."""
        return self.caller.visible(supervision.overdue(
            self.uow(), self.caller.own_town(town_code), self.caller.own_unit(unit_code)))

    @rpc(roles=READERS)
    def at_risk(self, town_code=None, unit_code=None, threshold=0.8):
        """Clocks with at least ``threshold`` of their window gone, not yet overdue."""
        return self.caller.visible(supervision.at_risk(
            self.uow(), self.caller.own_town(town_code), self.caller.own_unit(unit_code), threshold))

    @rpc(roles=READERS)
    def supervision_tickets(self, town_code=None, unit_code=None, status="open"):
        """督办单."""
        return self.caller.visible(supervision.tickets(
            self.uow(), self.caller.own_town(town_code), self.caller.own_unit(unit_code), status))

    @rpc(roles=("supervisor",))
    def urge(self, order_no, supervisor, note, idempotency_key):
        """催办: a supervision notice to the unit holding the order."""
        return supervision.urge(self._audited("urge", "order", order_no, note), order_no, supervisor, note,
                                idempotency_key)

    @rpc(roles=("supervisor",))
    def record_urge_outcome(self, urge_id, outcome, note, idempotency_key):
        """What came of an urge: handled | in_progress | no_response."""
        return supervision.record_urge_outcome(self._audited("record_urge_outcome", "urge", urge_id, note),
                                               urge_id, outcome, note, idempotency_key)

    @rpc(roles=READERS + ("ops",))
    def audit_log(self, object_id=None, since=None, limit=100):
        """triage's audit log: a unit's staff their own unit's entries, supervisors everything."""
        return audit.read(self.uow(), self.caller, object_id, since, limit)

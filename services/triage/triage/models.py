"""triage's database: reference divisions and units, the appeals as triage received them, work orders
(工单) with their progress notes, and the reliability tables."""
from datetime import datetime

from sqlalchemy import (
    Boolean, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Text, text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from wuji_common.audit import add_audit_table
from wuji_common.auth import add_auth_tables
from wuji_common.db import add_reliability_tables


class Base(DeclarativeBase):
    metadata = MetaData()


class Division(Base):
    """Reference data: district, towns and villages (loaded by ``triage load-reference``)."""
    __tablename__ = "divisions"
    code: Mapped[str] = mapped_column(String(12), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    level: Mapped[str] = mapped_column(String(16))
    parent_code: Mapped[str] = mapped_column(String(12))


class Unit(Base):
    """Reference data: who can be handed an order — departments, town offices, grid workers and the
    command centre."""
    __tablename__ = "units"
    code: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    type: Mapped[str] = mapped_column(String(32))
    town_code: Mapped[str | None] = mapped_column(String(12))
    village_code: Mapped[str | None] = mapped_column(String(12))


class Appeal(Base):
    """The appeal as intake announced it (no personal data): what routing and re-routing read."""
    __tablename__ = "appeals"
    case_no: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(String(200))
    content: Mapped[str] = mapped_column(Text)
    town_code: Mapped[str] = mapped_column(String(12))
    village_code: Mapped[str | None] = mapped_column(String(12))
    citizen_ref: Mapped[str | None] = mapped_column(String(64), index=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # where it was received (district | town | village), as intake said or its channel implies
    reception_level: Mapped[str | None] = mapped_column(String(16))
    # 重复访: the first case of the same person about the same matter, and the unit told about it
    repeat_of: Mapped[str | None] = mapped_column(String(32), index=True)
    repeat_unit_code: Mapped[str | None] = mapped_column(String(40), index=True)
    cross_level: Mapped[bool] = mapped_column(Boolean, default=False)  # 越级访
    urgency: Mapped[str] = mapped_column(String(16), default="normal")
    risk_reasons: Mapped[str] = mapped_column(Text, default="[]")  # JSON: the rules that made it urgent
    # when triage stored it: other instances pick it up into their near-duplicate index from here
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class WorkOrder(Base):
    """A work order (工单): one unit's charge to handle an appeal. An appeal has exactly one active
    order; a returned order stays as history and its successor carries the case on."""
    __tablename__ = "work_orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    order_no: Mapped[str] = mapped_column(String(40), unique=True)
    case_no: Mapped[str] = mapped_column(ForeignKey("appeals.case_no"), index=True)
    unit_code: Mapped[str] = mapped_column(String(40))
    unit_name: Mapped[str] = mapped_column(String(100))
    town_code: Mapped[str] = mapped_column(String(12))
    village_code: Mapped[str | None] = mapped_column(String(12))
    category: Mapped[str] = mapped_column(String(40))
    category_name: Mapped[str] = mapped_column(String(40))
    item: Mapped[str] = mapped_column(String(40))
    item_name: Mapped[str] = mapped_column(String(40))
    level: Mapped[str] = mapped_column(String(16))
    co_handlers: Mapped[str] = mapped_column(String(400), default="")  # comma-separated unit codes
    status: Mapped[str] = mapped_column(String(16))
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    policy: Mapped[str] = mapped_column(String(16))  # normal | urgent
    # the limits the order was dispatched under, so a rework deadline does not depend on a later taxonomy
    accept_hours: Mapped[float] = mapped_column(Float)
    resolve_hours: Mapped[float] = mapped_column(Float)
    accept_due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    resolve_due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    confidence: Mapped[float | None] = mapped_column(Float)
    routing_basis: Mapped[str] = mapped_column(String(24))
    taxonomy_version: Mapped[str] = mapped_column(String(40))
    router_version: Mapped[str] = mapped_column(String(128))
    reopen_count: Mapped[int] = mapped_column(Integer, default=0)
    previous_order_no: Mapped[str | None] = mapped_column(String(40))
    successor_order_no: Mapped[str | None] = mapped_column(String(40))
    return_reason: Mapped[str | None] = mapped_column(String(500))
    resolution: Mapped[str | None] = mapped_column(Text)
    satisfaction: Mapped[str | None] = mapped_column(String(24))
    dispatched_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    accepted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    returned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reopened_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # optimistic concurrency: an update made from a stale read fails instead of overwriting
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    urgency: Mapped[str] = mapped_column(String(16), default="normal")  # emergency | urgent | normal
    # joint enforcement (联合执法) the item calls for, and whether triage requested it at dispatch
    violation_type: Mapped[str | None] = mapped_column(String(40))
    enforcement_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # status pending_review: why it waits for a dispatcher (low_confidence | ambiguous | unidentified |
    # returned); the classifier's best label then, for the dispatcher to see
    review_reason: Mapped[str | None] = mapped_column(String(24))
    classifier_label: Mapped[str | None] = mapped_column(String(40))
    # 限时办结: the time-limit policy (policies.yml, or item:<code> for the item's own time_limit), the
    # version it came from, its limits as JSON ({"report_in": "2 working_hours", ...}) and the
    # first-contact deadline (the others are accept_due_at and resolve_due_at)
    time_policy: Mapped[str | None] = mapped_column(String(40))
    time_policy_version: Mapped[str | None] = mapped_column(String(40))
    time_limits: Mapped[str | None] = mapped_column(String(400))
    first_contact_due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __mapper_args__ = {"version_id_col": version}
    __table_args__ = (
        # exactly one active order per appeal, even if two deliveries of it race
        Index("uq_work_orders_active_case", "case_no", unique=True,
              sqlite_where=text("status != 'returned'"), postgresql_where=text("status != 'returned'")),
        Index("ix_work_orders_unit_status", "unit_code", "status"),
        Index("ix_work_orders_status", "status"),
    )


class ProgressNote(Base):
    """办理进展: what the unit reported while handling the order."""
    __tablename__ = "progress_notes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    order_no: Mapped[str] = mapped_column(ForeignKey("work_orders.order_no"), index=True)
    unit_code: Mapped[str] = mapped_column(String(40))
    note: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DispatcherDecision(Base):
    """人工研判: a dispatcher routed an appeal by hand (from the review queue, or re-routing a returned
    or dispatched order). Kept as history and exported as training data."""
    __tablename__ = "dispatcher_decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_no: Mapped[str] = mapped_column(ForeignKey("appeals.case_no"), index=True)
    order_no: Mapped[str] = mapped_column(String(40))         # the order decided on
    new_order_no: Mapped[str] = mapped_column(String(40))     # the order that carries the decision
    kind: Mapped[str] = mapped_column(String(16))             # review | reroute
    review_reason: Mapped[str | None] = mapped_column(String(24))
    previous_unit_code: Mapped[str] = mapped_column(String(40))
    previous_item: Mapped[str] = mapped_column(String(40))
    unit_code: Mapped[str] = mapped_column(String(40))
    category: Mapped[str] = mapped_column(String(40))
    item: Mapped[str] = mapped_column(String(40))
    label: Mapped[str] = mapped_column(String(40))            # the classifier label it teaches
    taxonomy_version: Mapped[str] = mapped_column(String(40))
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class Hotspot(Base):
    """热点: a cluster of appeals by several people about one place and problem in a short window."""
    __tablename__ = "hotspots"
    hotspot_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    town_code: Mapped[str] = mapped_column(String(12), index=True)
    village_code: Mapped[str | None] = mapped_column(String(12))
    category: Mapped[str] = mapped_column(String(40))
    item: Mapped[str] = mapped_column(String(40))
    title: Mapped[str] = mapped_column(String(200))
    appeals: Mapped[int] = mapped_column(Integer)
    people: Mapped[int] = mapped_column(Integer)
    first_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    detected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class HotspotMember(Base):
    """An appeal in a hot spot; an appeal belongs to one cluster at most (the key makes two workers
    racing to cluster the same appeals clash, and the loser retries and joins)."""
    __tablename__ = "hotspot_members"
    case_no: Mapped[str] = mapped_column(ForeignKey("appeals.case_no"), primary_key=True)
    hotspot_id: Mapped[str] = mapped_column(ForeignKey("hotspots.hotspot_id"), index=True)
    similarity: Mapped[float | None] = mapped_column(Float)
    joined_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# --- clocks and supervision (限时办结 · 督查督办; triage.supervision) ---------------------------------

class OrderClock(Base):
    """One clock of one order, held by the unit that has the order at its level: report_in (签收),
    first_contact (首次联系) or resolve (办结); ``round`` counts reopenings (返工 starts a new resolve
    clock). ``next_check_at`` is when the sweep must look at it next (None: nothing left to fire)."""
    __tablename__ = "order_clocks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    order_no: Mapped[str] = mapped_column(String(40), index=True)
    case_no: Mapped[str] = mapped_column(String(32))
    clock: Mapped[str] = mapped_column(String(16))
    round: Mapped[int] = mapped_column(Integer, default=0)
    holder_unit_code: Mapped[str] = mapped_column(String(40), index=True)
    level: Mapped[str] = mapped_column(String(16))
    town_code: Mapped[str] = mapped_column(String(12), index=True)
    category: Mapped[str] = mapped_column(String(40))
    policy: Mapped[str] = mapped_column(String(40))
    policy_version: Mapped[str] = mapped_column(String(40))
    limit: Mapped[str] = mapped_column(String(40))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_check_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    paused_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))   # 挂账 since
    resumes_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # 挂账 until
    paused_seconds: Mapped[float] = mapped_column(Float, default=0)
    extended_days: Mapped[float] = mapped_column(Float, default=0)                 # 延期 granted
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str | None] = mapped_column(String(16))  # met | late | returned | superseded
    # when time ran out while this unit held it (kept when the order is returned or transferred)
    overdue_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    escalated_to: Mapped[str | None] = mapped_column(String(40))

    __table_args__ = (Index("uq_order_clocks_order_clock_round", "order_no", "clock", "round", unique=True),)


class ClockFire(Base):
    """The marker that a clock's checkpoint (50, 80, due, escalate) fired: its key makes a second
    instance (or a second sweep after a restart) clash instead of firing again."""
    __tablename__ = "clock_fires"
    clock_id: Mapped[int] = mapped_column(ForeignKey("order_clocks.id"), primary_key=True)
    checkpoint: Mapped[str] = mapped_column(String(16), primary_key=True)
    fired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ClockRequest(Base):
    """A unit's request for an extension (延期) or a suspension (挂账) of an order, and the
    supervision zone's decision."""
    __tablename__ = "clock_requests"
    request_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # extension | suspension
    order_no: Mapped[str] = mapped_column(String(40), index=True)
    clock_id: Mapped[int | None] = mapped_column(Integer)
    unit_code: Mapped[str] = mapped_column(String(40))
    town_code: Mapped[str] = mapped_column(String(12))
    days: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending | approved | refused
    supervisor: Mapped[str | None] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SupervisionTicket(Base):
    """督办单: opened for the supervision zone when a clock runs out."""
    __tablename__ = "supervision_tickets"
    ticket_no: Mapped[str] = mapped_column(String(40), primary_key=True)
    order_no: Mapped[str] = mapped_column(String(40), index=True)
    clock_id: Mapped[int] = mapped_column(Integer, unique=True)
    clock: Mapped[str] = mapped_column(String(16))
    unit_code: Mapped[str] = mapped_column(String(40), index=True)
    town_code: Mapped[str] = mapped_column(String(12), index=True)
    level: Mapped[str] = mapped_column(String(16))
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))  # open | closed
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Urge(Base):
    """催办: a supervision notice to the unit holding an order, and what came of it."""
    __tablename__ = "urges"
    urge_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    order_no: Mapped[str] = mapped_column(String(40), index=True)
    ticket_no: Mapped[str | None] = mapped_column(String(40))
    unit_code: Mapped[str] = mapped_column(String(40))
    town_code: Mapped[str] = mapped_column(String(12))
    supervisor: Mapped[str] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str | None] = mapped_column(String(24))  # handled | in_progress | no_response
    outcome_note: Mapped[str | None] = mapped_column(Text)
    outcome_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


metadata = Base.metadata
outbox, processed_events, idempotency_keys = add_reliability_tables(metadata)
audit_log = add_audit_table(metadata)
revoked_tokens = add_auth_tables(metadata)

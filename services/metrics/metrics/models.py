"""metrics' database: the event log (the history every number can be replayed from) and the two fact
tables folded from it, one row per appeal and one per work order."""
from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, Float, Index, Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from wuji_common.audit import add_audit_table
from wuji_common.auth import add_auth_tables
from wuji_common.db import add_reliability_tables


class Base(DeclarativeBase):
    metadata = MetaData()


class EventLog(Base):
    """Every event consumed, as received (the full envelope). The keys that the folds and the
    counters look up are copied into columns; everything else stays in ``envelope``."""
    __tablename__ = "event_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    case_no: Mapped[str | None] = mapped_column(String(64), index=True)
    order_no: Mapped[str | None] = mapped_column(String(64), index=True)
    operation_id: Mapped[str | None] = mapped_column(String(64), index=True)
    town_code: Mapped[str | None] = mapped_column(String(12))
    category: Mapped[str | None] = mapped_column(String(64))
    unit_code: Mapped[str | None] = mapped_column(String(64))
    envelope: Mapped[dict] = mapped_column(JSON)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_event_log_type_town_category", "type", "town_code", "category"),)


class AppealFact(Base):
    """One appeal (诉求): where and how it came in, where it went, and its latest rating."""
    __tablename__ = "appeals"
    case_no: Mapped[str] = mapped_column(String(64), primary_key=True)
    channel: Mapped[str | None] = mapped_column(String(16))
    town_code: Mapped[str | None] = mapped_column(String(12), index=True)
    unit_code: Mapped[str | None] = mapped_column(String(64))  # once dispatched (latest dispatch)
    category: Mapped[str | None] = mapped_column(String(64))   # once dispatched (latest dispatch)
    received_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    satisfaction: Mapped[str | None] = mapped_column(String(24))
    rated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class OrderFact(Base):
    """One work order (工单): its unit, deadlines, milestones and outcome."""
    __tablename__ = "orders"
    order_no: Mapped[str] = mapped_column(String(64), primary_key=True)
    case_no: Mapped[str | None] = mapped_column(String(64), index=True)
    unit_code: Mapped[str | None] = mapped_column(String(64))
    town_code: Mapped[str | None] = mapped_column(String(12))
    category: Mapped[str | None] = mapped_column(String(64))
    level: Mapped[str | None] = mapped_column(String(16))
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    accept_due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    accepted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolve_due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # latest
    first_resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    # the first resolution against the deadline in force when it happened
    resolved_on_time: Mapped[bool | None] = mapped_column(Boolean)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str | None] = mapped_column(String(16))
    returned: Mapped[bool] = mapped_column(Boolean, default=False)
    reopen_count: Mapped[int] = mapped_column(Integer, default=0)
    satisfaction: Mapped[str | None] = mapped_column(String(24))
    report_in_seconds: Mapped[float | None] = mapped_column(Float)  # dispatch → acceptance
    resolve_seconds: Mapped[float | None] = mapped_column(Float)    # dispatch → first resolution
    close_seconds: Mapped[float | None] = mapped_column(Float)      # dispatch → closed (结案)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


metadata = Base.metadata
outbox, processed_events, idempotency_keys = add_reliability_tables(metadata)
audit_log = add_audit_table(metadata)
revoked_tokens = add_auth_tables(metadata)

"""notify's database: the units' contact points and the delivery log.

The delivery log is the exactly-once record: one row per (event_id, recipient, channel), written
before anything is sent. It holds no message bodies and no personal data: the citizen's address is
kept masked, and only the event fields that the template needs are stored to render it again.
"""
from datetime import datetime

from sqlalchemy import JSON, DateTime, Index, Integer, MetaData, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from wuji_common.db import add_reliability_tables


class Base(DeclarativeBase):
    metadata = MetaData()


class UnitContact(Base):
    """Where a unit (承办单位) is told about its orders. Loaded from notify/data/unit_contacts.csv and
    set by the unit itself over RPC (``notify.set_unit_contact``)."""
    __tablename__ = "unit_contacts"
    unit_code: Mapped[str] = mapped_column(String(64), primary_key=True)
    unit_name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str | None] = mapped_column(String(254))
    webhook_url: Mapped[str | None] = mapped_column(String(500))
    webhook_secret: Mapped[str | None] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Delivery(Base):
    """One message to one recipient over one channel, for one event."""
    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "recipient", "channel", name="uq_deliveries_event_recipient_channel"),
        Index("ix_deliveries_due", "status", "next_attempt_at"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # also the Message-ID / X-Wuji-Delivery
    event_id: Mapped[str] = mapped_column(String(36))
    event_type: Mapped[str] = mapped_column(String(64))
    case_no: Mapped[str | None] = mapped_column(String(32), index=True)
    recipient: Mapped[str] = mapped_column(String(80))        # "citizen" | "unit:<unit_code>"
    recipient_kind: Mapped[str] = mapped_column(String(16))   # citizen | unit
    channel: Mapped[str] = mapped_column(String(16))          # email | webhook
    template: Mapped[str] = mapped_column(String(64))
    context: Mapped[dict] = mapped_column(JSON)               # the event fields the template renders
    address: Mapped[str | None] = mapped_column(String(254))  # masked for citizens
    status: Mapped[str] = mapped_column(String(16))           # pending | sent | failed | skipped
    reason: Mapped[str | None] = mapped_column(String(64))    # why skipped
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


metadata = Base.metadata
outbox, processed_events, idempotency_keys = add_reliability_tables(metadata)

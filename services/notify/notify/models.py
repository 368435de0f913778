"""notify's database: who staff recipients are, who subscribed to which events, citizens' choices,
the delivery log with its attempts, the providers' health, and the in-platform inbox.

The delivery log is the at-most-once record: one row per (event_id, recipient, channel), written
before anything is sent. It holds no message bodies and no personal data: a citizen's address is kept
masked, and only the event fields that the template needs are stored to render it again.
"""
from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, Index, Integer, MetaData, String, Text, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from wuji_common.audit import add_audit_table
from wuji_common.auth import add_auth_tables
from wuji_common.db import add_reliability_tables


class Base(DeclarativeBase):
    metadata = MetaData()


class UnitContact(Base):
    """A staff recipient (通讯录): a unit (承办单位), a grid worker (网格员), a force (执法力量) or the
    supervisor (督查督办, the command centre). Loaded from notify/data/unit_contacts.csv and
    force_contacts.csv; a unit sets its own endpoint over RPC (``notify.set_unit_contact``)."""
    __tablename__ = "unit_contacts"
    unit_code: Mapped[str] = mapped_column(String(64), primary_key=True)
    unit_name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16), default="unit", server_default="unit", index=True)
    email: Mapped[str | None] = mapped_column(String(254))
    phone: Mapped[str | None] = mapped_column(String(20))     # the duty phone (值班电话) for SMS
    webhook_url: Mapped[str | None] = mapped_column(String(500))
    webhook_secret: Mapped[str | None] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Subscriber(Base):
    """A department system or integrator that receives events by signed webhook."""
    __tablename__ = "subscribers"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    url: Mapped[str] = mapped_column(String(500))
    secret: Mapped[str] = mapped_column(String(128))
    event_types: Mapped[list] = mapped_column(JSON)
    unit_code: Mapped[str | None] = mapped_column(String(64))  # only this unit's events, if set
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CaseCitizen(Base):
    """Which citizen (by intake's keyed hash, never a plain identifier) an appeal belongs to, so that
    the citizen's preferences apply to every appeal of theirs."""
    __tablename__ = "case_citizens"
    case_no: Mapped[str] = mapped_column(String(32), primary_key=True)
    citizen_ref: Mapped[str] = mapped_column(String(64), index=True)


class CitizenPreference(Base):
    """A citizen's choice: the channel to be told on first, and quiet hours (免打扰, China time) during
    which non-urgent news waits."""
    __tablename__ = "citizen_preferences"
    citizen_ref: Mapped[str] = mapped_column(String(64), primary_key=True)
    channel: Mapped[str | None] = mapped_column(String(16))
    quiet_start: Mapped[str | None] = mapped_column(String(5))   # "22:00"
    quiet_end: Mapped[str | None] = mapped_column(String(5))     # "07:00"
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


IN_FLIGHT = "status = 'pending' AND claimed_until IS NOT NULL"


class Delivery(Base):
    """One message to one recipient over one channel, for one event."""
    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "recipient", "channel", name="uq_deliveries_event_recipient_channel"),
        Index("ix_deliveries_due", "status", "next_attempt_at"),
        Index("ix_deliveries_queue", "provider", "status", "occurred_at"),
        # a lane's queue in order, and whether something of the lane is in flight
        Index("ix_deliveries_lane", "lane", "status", "occurred_at"),
        Index("ix_deliveries_lane_claimed", "lane", "claimed_until"),
        # the rows in flight only: the claim reads the lanes in flight from it in one pass,
        # whatever the planner believes of the table's size (migration 0006)
        Index("ix_deliveries_in_flight", "lane", postgresql_where=text(IN_FLIGHT), sqlite_where=text(IN_FLIGHT)),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # also the Message-ID / X-Wuji-Delivery
    event_id: Mapped[str] = mapped_column(String(36))
    event_type: Mapped[str] = mapped_column(String(64))
    case_no: Mapped[str | None] = mapped_column(String(32), index=True)
    occurred_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # order in its lane
    recipient: Mapped[str] = mapped_column(String(80))        # "citizen" | "<kind>:<code>" | "subscriber:<id>"
    recipient_kind: Mapped[str] = mapped_column(String(16))   # citizen | unit | grid_worker | force | supervisor | subscriber
    # whose order it keeps: "<recipient>|<channel>", a citizen by citizen_ref (domain.lane_of)
    lane: Mapped[str | None] = mapped_column(String(160))
    channel: Mapped[str] = mapped_column(String(16))          # inbox | wechat | sms | email | webhook
    provider: Mapped[str | None] = mapped_column(String(120))  # whose outage holds it back
    template: Mapped[str] = mapped_column(String(64))         # "<audience>/<event_type>"
    context: Mapped[dict] = mapped_column(JSON)               # the event fields the template renders
    fallback: Mapped[list | None] = mapped_column(JSON)       # channels still to try, in order
    fallback_of: Mapped[str | None] = mapped_column(String(36))
    urgent: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    address: Mapped[str | None] = mapped_column(String(254))  # masked for citizens
    status: Mapped[str] = mapped_column(String(16))           # pending | sent | failed | skipped
    reason: Mapped[str | None] = mapped_column(String(64))    # why skipped
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # tries made (claims)
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # the message's own failed tries
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DeliveryAttempt(Base):
    """One try of a delivery: written as ``sending`` when it is claimed, finished with its outcome
    (``interrupted`` if the sender died while it was out)."""
    __tablename__ = "delivery_attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(String(36), index=True)
    number: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))  # sending | sent | retry | provider_down | failed | skipped | interrupted
    error: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Provider(Base):
    """A provider's health: while it is down its deliveries wait in order; one probe at a time tries
    the oldest after ``retry_at``."""
    __tablename__ = "providers"
    name: Mapped[str] = mapped_column(String(120), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    down_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class InboxMessage(Base):
    """A notice in a unit's or grid worker's in-platform inbox (站内信). Its id is the delivery id, so
    a resend after a crash is a key clash, not a second message."""
    __tablename__ = "inbox_messages"
    __table_args__ = (Index("ix_inbox_owner_created", "owner_code", "created_at"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_code: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    case_no: Mapped[str | None] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


metadata = Base.metadata
outbox, processed_events, idempotency_keys = add_reliability_tables(metadata)
audit_log = add_audit_table(metadata)
revoked_tokens = add_auth_tables(metadata)

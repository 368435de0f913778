"""intake's database: appeals, citizens' contact data (kept apart so that it can be protected and
erased on its own), the citizen-facing timeline, and the divisions used to validate locations."""
from datetime import datetime

from sqlalchemy import DateTime, Float, ForeignKey, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from intake.encryption import Encrypted
from wuji_common.audit import add_audit_table
from wuji_common.auth import add_auth_tables
from wuji_common.db import add_reliability_tables


class Base(DeclarativeBase):
    metadata = MetaData()


class Appeal(Base):
    __tablename__ = "appeals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_no: Mapped[str] = mapped_column(String(32), unique=True)
    channel: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(String(200))
    content: Mapped[str] = mapped_column(Text)
    town_code: Mapped[str] = mapped_column(String(12), index=True)
    village_code: Mapped[str | None] = mapped_column(String(12))
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    attachments: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of URLs
    anonymous: Mapped[bool] = mapped_column(default=False)
    # "hide my identity from the unit": the handling unit sees the matter, not the person (not even
    # masked); supervisors still see the masked contact, and notify still reaches the citizen
    hide_identity: Mapped[bool] = mapped_column(default=False)
    # district | town | village reception; None: triage infers it from the channel
    reception_level: Mapped[str | None] = mapped_column(String(16))
    citizen_ref: Mapped[str | None] = mapped_column(String(64), index=True)
    tracking_token_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="received")
    unit_name: Mapped[str | None] = mapped_column(String(100))
    unit_code: Mapped[str | None] = mapped_column(String(40))  # the unit holding the open order
    satisfaction: Mapped[str | None] = mapped_column(String(24))
    # the open order's resolve deadline (限时办结), from order_dispatched / order_reopened: what the
    # citizen can expect (Open311 expected_datetime)
    resolve_due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # when the last order event applied to the status was raised (triage's clock): order events are
    # ordered among themselves by it, never against intake's own times (submission, rating), which
    # come from another clock and, in tests, to the microsecond where events carry milliseconds
    order_event_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    version: Mapped[int] = mapped_column(Integer, default=1)
    # when retention erased the personal data of this closed case (intake retention)
    personal_data_erased_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CitizenContact(Base):
    """Personal data (个人信息), encrypted at rest (intake.encryption, keys from the environment):
    read by intake's masked staff view, by notify at send time, and in plain only through
    ``reveal_contact`` with a reason that is audited. Erased by retention once the case is closed."""
    __tablename__ = "citizen_contacts"
    case_no: Mapped[str] = mapped_column(ForeignKey("appeals.case_no"), primary_key=True)
    name: Mapped[str | None] = mapped_column(Encrypted)
    phone: Mapped[str | None] = mapped_column(Encrypted)
    id_number: Mapped[str | None] = mapped_column(Encrypted)
    email: Mapped[str | None] = mapped_column(Encrypted)
    # the citizen's openid on the "榴乡诉递" official account (appeals sent through WeChat): notify
    # sends template messages to it
    wechat_openid: Mapped[str | None] = mapped_column(Encrypted)
    address: Mapped[str | None] = mapped_column(Encrypted)

    ENCRYPTED = ("name", "phone", "id_number", "email", "wechat_openid", "address")


class TimelineEntry(Base):
    """What the citizen sees: one line per step, in Chinese, without other people's data."""
    __tablename__ = "timeline"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_no: Mapped[str] = mapped_column(ForeignKey("appeals.case_no"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(String(500))


class Division(Base):
    """Reference data: district, towns and villages (loaded by ``intake load-reference``)."""
    __tablename__ = "divisions"
    code: Mapped[str] = mapped_column(String(12), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    level: Mapped[str] = mapped_column(String(16))
    parent_code: Mapped[str] = mapped_column(String(12))


class Open311Request(Base):
    """An appeal that came in through Open311 GeoReport v2: the service the client asked for and the
    token of the asynchronous id flow. Only these appeals are published on Open311 ``GET requests``
    (their submitters chose a public 311 interface; other channels' appeals stay private)."""
    __tablename__ = "open311_requests"
    case_no: Mapped[str] = mapped_column(ForeignKey("appeals.case_no"), primary_key=True)
    token: Mapped[str] = mapped_column(String(36), unique=True)
    service_code: Mapped[str] = mapped_column(String(64), index=True)
    service_name: Mapped[str] = mapped_column(String(100))
    service_notice: Mapped[str | None] = mapped_column(String(500))
    client: Mapped[str] = mapped_column(String(64))  # the API key's client (never the key itself)
    address_id: Mapped[str | None] = mapped_column(String(12))  # the division the location mapped to
    located_by: Mapped[str] = mapped_column(String(24))  # attribute | address_id | address_string | lat_long


metadata = Base.metadata
outbox, processed_events, idempotency_keys = add_reliability_tables(metadata)
audit_log = add_audit_table(metadata)
revoked_tokens = add_auth_tables(metadata)

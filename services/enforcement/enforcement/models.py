"""enforcement's database.

Reference data (loaded by ``enforcement load-reference``): towns, forces, their teams in each town,
violation types and the competence relation (which forces a violation type calls, lead or assist).

Operations (联合执法行动): one row per whistle, and one ``called_forces`` row per force called, which
carries that force's own deadline, report-in and lateness. The per-force row is where later work
attaches: the scheduler (OR-Tools) fills ``assigned_team_code`` and a start slot per force, the
legal-procedure steps (立案, 调查取证, 告知, 决定, 执行) hang off the operation in a table of their own,
and the assessment (考核) reads ``within_deadline`` / ``overdue_at`` per force.
"""
from datetime import datetime

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, MetaData, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from wuji_common.db import add_reliability_tables


class Base(DeclarativeBase):
    metadata = MetaData()


# --- reference data -----------------------------------------------------------------------------

class Town(Base):
    """Towns/sub-districts of the district (from wuji_common.reference): who may blow the whistle."""
    __tablename__ = "towns"
    code: Mapped[str] = mapped_column(String(12), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))


class Force(Base):
    """One of the enforcement forces (执法力量) that the towns call, e.g. public_security 公安."""
    __tablename__ = "forces"
    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(32))
    unit_code: Mapped[str | None] = mapped_column(String(64))  # district department in wuji units
    sort_order: Mapped[int] = mapped_column(Integer)


class Team(Base):
    """A team of a force serving a town (派出所, 中队, 所, 站 ...)."""
    __tablename__ = "teams"
    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    force_code: Mapped[str] = mapped_column(ForeignKey("forces.code"), index=True)
    town_code: Mapped[str] = mapped_column(ForeignKey("towns.code"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(String(32))  # demo | official


class ViolationType(Base):
    __tablename__ = "violation_types"
    code: Mapped[str] = mapped_column(String(48), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    legal_basis: Mapped[str | None] = mapped_column(Text)
    # {"emergency": 30, "urgent": 120, "normal": 1440}: minutes from whistle to report-in deadline
    report_in_minutes: Mapped[dict] = mapped_column(JSON)


class Competence(Base):
    """Legal competence (法定职责): the forces a violation type calls, one of them the lead."""
    __tablename__ = "competences"
    violation_type: Mapped[str] = mapped_column(ForeignKey("violation_types.code"), primary_key=True)
    force_code: Mapped[str] = mapped_column(ForeignKey("forces.code"), primary_key=True)
    role: Mapped[str] = mapped_column(String(8))  # lead | assist


# --- operations ---------------------------------------------------------------------------------

class Operation(Base):
    """A joint enforcement operation opened by a town's whistle (吹哨)."""
    __tablename__ = "operations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    operation_id: Mapped[str] = mapped_column(String(32), unique=True)
    order_no: Mapped[str | None] = mapped_column(String(32), index=True)
    town_code: Mapped[str] = mapped_column(ForeignKey("towns.code"), index=True)
    violation_type: Mapped[str] = mapped_column(ForeignKey("violation_types.code"))
    urgency: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)  # called | assembled | completed
    whistle_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    report_in_due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (
        # one open operation per work order: a second whistle for the same order is a mistake
        # (or a retry without its idempotency key); the handler says so, this index makes sure
        Index("uq_operations_open_order", "order_no", unique=True,
              sqlite_where=text("status != 'completed' AND order_no IS NOT NULL"),
              postgresql_where=text("status != 'completed' AND order_no IS NOT NULL")),
    )


class CalledForce(Base):
    """A force called to an operation (被吹哨部门), and its report-in (报到)."""
    __tablename__ = "called_forces"
    operation_id: Mapped[str] = mapped_column(ForeignKey("operations.operation_id"), primary_key=True)
    force_code: Mapped[str] = mapped_column(ForeignKey("forces.code"), primary_key=True)
    role: Mapped[str] = mapped_column(String(8))  # lead | assist
    status: Mapped[str] = mapped_column(String(16))  # called | overdue | reported_in
    # the team of the force serving the operation's town, called at the whistle
    assigned_team_code: Mapped[str | None] = mapped_column(ForeignKey("teams.code"))
    report_in_due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reported_team_code: Mapped[str | None] = mapped_column(ForeignKey("teams.code"))
    reported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    within_deadline: Mapped[bool | None] = mapped_column()
    overdue_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        # the deadline watcher's query: forces still "called" whose deadline has passed
        Index("ix_called_forces_status_due", "status", "report_in_due_at"),
    )


metadata = Base.metadata
outbox, processed_events, idempotency_keys = add_reliability_tables(metadata)

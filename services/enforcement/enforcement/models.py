"""enforcement's database.

Reference data (loaded by ``enforcement load-reference``): towns, forces, their teams in each town,
violation types and the competence relation (which forces a violation type calls, lead or assist).

Rosters (migration 0002): each team's duty days, hours, cap on concurrent operations and officers
per operation; the towns it may act in (jurisdiction); its officers with their own duty days; and
officers' absences (leave, sickness, training, other duty), which shrink a team's capacity.

Operations (联合执法行动): one row per whistle, and one ``called_forces`` row per force called, which
carries that force's own deadline, report-in, lateness, reminder and escalation (the assessment, 考核,
is read from these rows). A case with a legal procedure records its steps in ``procedure_steps``.

Plans (排班计划): each ``schedule`` of a town writes a new version with its assignments (operation ×
force → team and day); the latest version is the plan in force, and the one a re-plan revises.
``replan_requests`` holds towns whose plan must be revised (an officer dropped out, an urgent
operation arrived) until the re-plan commits.
"""
from datetime import date, datetime

from sqlalchemy import (
    JSON, Boolean, Date, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Text,
    UniqueConstraint, text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from wuji_common.audit import add_audit_table
from wuji_common.auth import add_auth_tables
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
    # roster: ISO weekdays on duty ("12345"), hours, operations it takes on one day, officers each
    duty_days: Mapped[str] = mapped_column(String(7), server_default="12345")
    work_start: Mapped[str] = mapped_column(String(5), server_default="08:30")
    work_end: Mapped[str] = mapped_column(String(5), server_default="17:30")
    max_concurrent_operations: Mapped[int] = mapped_column(Integer, server_default="2")
    officers_per_operation: Mapped[int] = mapped_column(Integer, server_default="2")


class TeamJurisdiction(Base):
    """A town a team may act in (管辖): its own, or every town for a district team."""
    __tablename__ = "team_jurisdictions"
    team_code: Mapped[str] = mapped_column(ForeignKey("teams.code"), primary_key=True)
    town_code: Mapped[str] = mapped_column(ForeignKey("towns.code"), primary_key=True, index=True)


class Officer(Base):
    """An officer of a team (code and post only, no name), with the weekdays of their duty roster."""
    __tablename__ = "officers"
    code: Mapped[str] = mapped_column(String(80), primary_key=True)
    team_code: Mapped[str] = mapped_column(ForeignKey("teams.code"), index=True)
    post: Mapped[str] = mapped_column(String(32))
    duty_days: Mapped[str] = mapped_column(String(7))
    source: Mapped[str] = mapped_column(String(32))


class OfficerAbsence(Base):
    """An officer away for whole days (请假, 病假, 培训, 另有勤务): the team has fewer hands."""
    __tablename__ = "officer_absences"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    officer_code: Mapped[str] = mapped_column(ForeignKey("officers.code"), index=True)
    first_day: Mapped[date] = mapped_column(Date)
    last_day: Mapped[date] = mapped_column(Date)
    kind: Mapped[str] = mapped_column(String(16))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ViolationType(Base):
    __tablename__ = "violation_types"
    code: Mapped[str] = mapped_column(String(48), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    legal_basis: Mapped[str | None] = mapped_column(Text)
    # {"emergency": 30, "urgent": 120, "normal": 1440}: minutes from whistle to report-in deadline
    report_in_minutes: Mapped[dict] = mapped_column(JSON)
    # reminder and escalation after the report-in deadline, and the operation's due hours, by urgency
    follow_up_minutes: Mapped[dict | None] = mapped_column(JSON)
    operation_due_hours: Mapped[dict | None] = mapped_column(JSON)
    # a legal procedure: the notice (限期拆除通知书 ...) and its statutory waiting period in days
    notice_name: Mapped[str | None] = mapped_column(String(32))
    waiting_days: Mapped[int | None] = mapped_column(Integer)


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
    # by when the joint operation should be carried out (the scheduler's due time)
    due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # the legal procedure's last step (notice_issued | inspected | enforced | concluded), if any
    procedure_step: Mapped[str | None] = mapped_column(String(24))

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
    # follow-up of a late force: reminded (催报), then escalated to the district (上报督办); rows
    # from before migration 0002 have no times and are not followed up
    remind_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reminded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    escalate_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    escalated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        # the deadline watcher's query: forces still "called" whose deadline has passed
        Index("ix_called_forces_status_due", "status", "report_in_due_at"),
        Index("ix_called_forces_status_remind", "status", "remind_at"),
        Index("ix_called_forces_status_escalate", "status", "escalate_at"),
    )


class ProcedureStep(Base):
    """A step of a legal procedure, once each: the notice with its waiting period, the follow-up
    inspection, the joint enforcement and the conclusion, with document number and evidence."""
    __tablename__ = "procedure_steps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    operation_id: Mapped[str] = mapped_column(ForeignKey("operations.operation_id"))
    step: Mapped[str] = mapped_column(String(24))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    document_no: Mapped[str | None] = mapped_column(String(64))
    period_ends_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rectified: Mapped[bool | None] = mapped_column(Boolean)
    findings: Mapped[str | None] = mapped_column(Text)  # masked like the outcome
    evidence: Mapped[list] = mapped_column(JSON)  # references to stored evidence (photos, records)

    __table_args__ = (UniqueConstraint("operation_id", "step", name="uq_procedure_steps_step"),)


# --- plans ----------------------------------------------------------------------------------------

class SchedulePlan(Base):
    """A version of a town's plan, with how good it is."""
    __tablename__ = "schedule_plans"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    town_code: Mapped[str] = mapped_column(ForeignKey("towns.code"))
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str] = mapped_column(String(32))  # requested | officer_unavailable | urgent_operation
    horizon_start: Mapped[date] = mapped_column(Date)
    horizon_days: Mapped[int] = mapped_column(Integer)
    solver: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    on_time: Mapped[int] = mapped_column(Integer)
    late: Mapped[int] = mapped_column(Integer)
    lateness_hours: Mapped[float] = mapped_column(Float)
    moved: Mapped[int] = mapped_column(Integer)
    bound_on_time: Mapped[int | None] = mapped_column(Integer)
    solve_seconds: Mapped[float] = mapped_column(Float)
    utilisation: Mapped[float] = mapped_column(Float)
    unscheduled: Mapped[list] = mapped_column(JSON)

    __table_args__ = (UniqueConstraint("town_code", "version", name="uq_schedule_plans_version"),)


class ScheduledAssignment(Base):
    """A force of an operation, planned onto a team and a day."""
    __tablename__ = "scheduled_assignments"
    plan_id: Mapped[int] = mapped_column(ForeignKey("schedule_plans.id"), primary_key=True)
    operation_id: Mapped[str] = mapped_column(ForeignKey("operations.operation_id"), primary_key=True)
    force_code: Mapped[str] = mapped_column(ForeignKey("forces.code"), primary_key=True)
    team_code: Mapped[str] = mapped_column(ForeignKey("teams.code"), index=True)
    day: Mapped[date] = mapped_column(Date)


class ReplanRequest(Base):
    """A town whose plan must be revised; removed by the re-plan that saw it."""
    __tablename__ = "replan_requests"
    town_code: Mapped[str] = mapped_column(ForeignKey("towns.code"), primary_key=True)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str] = mapped_column(String(32))


metadata = Base.metadata
outbox, processed_events, idempotency_keys = add_reliability_tables(metadata)
audit_log = add_audit_table(metadata)
revoked_tokens = add_auth_tables(metadata)

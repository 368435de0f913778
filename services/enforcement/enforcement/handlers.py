"""enforcement's use cases as plain functions of a unit of work: no nameko, no eventlet.

Every mutating one is idempotent (an idempotency key returns the first result, also to a concurrent
duplicate) and atomic (the operation, its called forces and the event commit together, or nothing
does). Events carry no case_no: enforcement knows work orders, not citizens' cases; consumers
correlate by ``data.order_no``.
"""
import uuid
from datetime import datetime, timedelta, timezone

from marshmallow import ValidationError as SchemaError
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from enforcement import domain
from enforcement.models import (
    CalledForce, Competence, Force, Officer, OfficerAbsence, Operation, ProcedureStep, ReplanRequest,
    ScheduledAssignment, SchedulePlan, Team, TeamJurisdiction, Town, ViolationType,
)
from enforcement.schemas import (
    AbsenceResultSchema, AbsenceSchema, AssessmentQuerySchema, AssessmentSchema, CompletionSchema,
    InspectionSchema, JointEnforcementSchema, NoticeSchema, OperationQuerySchema, OperationSchema,
    PlanSchema, ReportInResultSchema, ReportInSchema, ScheduleSchema, StepResultSchema,
    TownForceSchema, WhistleSchema,
)
from wuji_common.errors import InvalidTransition, NotFound, NotYourOrder, ValidationError

MAX_KEY_LENGTH = 64
FIND_LIMIT = 200


def _now():
    return datetime.now(timezone.utc)


def _aware(value):
    # SQLite hands back naive datetimes; everything here is UTC
    return value if value is None or value.tzinfo else value.replace(tzinfo=timezone.utc)


def load(schema, payload):
    try:
        return schema.load(payload)
    except SchemaError as err:
        raise ValidationError("请求参数有误", err.normalized_messages()) from None


def _check_key(idempotency_key):
    if idempotency_key is not None and not (
            isinstance(idempotency_key, str) and 0 < len(idempotency_key) <= MAX_KEY_LENGTH):
        raise ValidationError("请求参数有误", {"idempotency_key": [f"须为 1 至 {MAX_KEY_LENGTH} 个字符"]})


def _scoped(idempotency_key, *scope):
    """Keys of report-in and completion count per operation (and force): two forces may well pick
    the same key for their own calls."""
    return idempotency_key and ":".join((*scope, idempotency_key))


def _first_result_after_clash(uow, operation, key):
    """A concurrent call with the same key committed first: its result is ours too."""
    if not key:
        return None
    with uow:
        return uow.recall(operation, key)


# --- blow the whistle (吹哨) ---------------------------------------------------------------------

def blow_whistle(uow, payload, idempotency_key=None, now=None):
    """Open a joint operation and call every force competent for the violation in that town, with a
    report-in deadline set by the urgency. Emits ``whistle_blown``. Returns the operation."""
    data = load(WhistleSchema(), payload)
    _check_key(idempotency_key)
    try:
        return _blow_whistle(uow, data, idempotency_key, now or _now())
    except IntegrityError:
        earlier = _first_result_after_clash(uow, "blow_whistle", idempotency_key)
        if earlier:
            return earlier
        with uow:
            _refuse_second_open_operation(uow.session, data["order_no"])
        raise


def _blow_whistle(uow, data, idempotency_key, now):
    with uow:
        earlier = uow.recall("blow_whistle", idempotency_key)
        if earlier:
            return earlier
        result = _open_operation(uow, data, now)
        uow.remember("blow_whistle", idempotency_key, result)
        uow.commit()
        return result


def _open_operation(uow, data, now):
    """Inside an open unit of work: the operation, its called forces (each with its deadline,
    reminder and escalation times, and the team of the town called first), ``whistle_blown``, and a
    re-plan request if the town has a plan and the operation is urgent."""
    s = uow.session
    town = s.get(Town, data["town_code"])
    if town is None:
        raise ValidationError("请求参数有误", {"town_code": ["不是本区的镇街代码"]})
    violation = s.get(ViolationType, data["violation_type"])
    if violation is None:
        raise ValidationError("请求参数有误", {"violation_type": ["未知的违法类型"]})
    competent = _competent_forces(s, violation.code)
    if not competent:
        raise ValidationError("请求参数有误", {"violation_type": ["该违法类型未配置法定职责部门"]})
    _refuse_second_open_operation(s, data["order_no"])

    urgency = data["urgency"]
    due_at = domain.report_in_due_at(now, urgency, violation.report_in_minutes)
    remind_at, escalate_at = domain.follow_up_times(
        due_at, urgency, violation.follow_up_minutes or domain.DEFAULT_FOLLOW_UP)
    operation = Operation(
        operation_id=f"pending-{uuid.uuid4().hex[:24]}", order_no=data["order_no"],
        town_code=town.code, violation_type=violation.code, urgency=urgency,
        status=domain.CALLED, whistle_at=now, report_in_due_at=due_at, version=1,
        due_at=domain.operation_due_at(now, urgency, violation.operation_due_hours
                                       or domain.DEFAULT_OPERATION_DUE_HOURS))
    s.add(operation)
    s.flush()  # the row id numbers the operation
    operation.operation_id = domain.operation_id_for(now, operation.id)
    s.flush()
    teams = _town_teams(s, town.code)
    for force_code, role in competent:
        assigned = teams.get(force_code, [None])[0]
        s.add(CalledForce(
            operation_id=operation.operation_id, force_code=force_code, role=role,
            status=domain.FORCE_CALLED, assigned_team_code=assigned and assigned.code,
            report_in_due_at=due_at, remind_at=remind_at, escalate_at=escalate_at))
    s.flush()
    uow.emit("whistle_blown", None, {
        "operation_id": operation.operation_id, "order_no": operation.order_no,
        "town_code": town.code, "violation_type": violation.code,
        "forces": [code for code, _role in competent], "report_in_due_at": due_at.isoformat(),
    })
    if urgency in domain.REPLAN_URGENCIES:
        _request_replan(s, [town.code], "urgent_operation", now)
    return _operation_view(s, operation)


# --- the whistle from triage (enforcement_requested) -----------------------------------------------

def open_requested_operation(uow, consumer, envelope, now=None):
    """``enforcement_requested`` from triage: the same as a town's whistle, once per event and once
    per open order (an order whose operation the town already opened by RPC gets no second one).
    Returns the operation id opened, or None for a duplicate."""
    data = load(WhistleSchema(), {k: envelope["data"].get(k) for k in
                                  ("order_no", "violation_type", "town_code", "urgency")})
    with uow:
        if not uow.first_delivery(consumer, envelope["event_id"]):
            return None
        open_one = uow.session.execute(
            select(Operation.operation_id).where(
                Operation.order_no == data["order_no"], Operation.status.in_(domain.OPEN_STATUSES))
        ).scalar_one_or_none()
        if open_one:
            uow.commit()  # remember the event; the operation already exists
            return None
        operation = _open_operation(uow, data, now or _now())
        uow.commit()
        return operation["operation_id"]


def _competent_forces(s, violation_type):
    """(force_code, role) of the forces a violation type calls: the lead first, then by force order."""
    rows = s.execute(
        select(Competence.force_code, Competence.role)
        .join(Force, Force.code == Competence.force_code)
        .where(Competence.violation_type == violation_type)
        .order_by((Competence.role != domain.LEAD), Force.sort_order)
    ).all()
    return [(r.force_code, r.role) for r in rows]


def _town_teams(s, town_code):
    """{force: [teams with jurisdiction over the town]}, the town's own teams first."""
    teams = {}
    rows = s.execute(
        select(Team).join(TeamJurisdiction, TeamJurisdiction.team_code == Team.code)
        .where(TeamJurisdiction.town_code == town_code)
        .order_by((Team.town_code != town_code), Team.code)
    ).scalars()
    for team in rows:
        teams.setdefault(team.force_code, []).append(team)
    return teams


def _refuse_second_open_operation(s, order_no):
    if not order_no:
        return
    open_one = s.execute(
        select(Operation.operation_id).where(
            Operation.order_no == order_no, Operation.status.in_(domain.OPEN_STATUSES))
    ).scalar_one_or_none()
    if open_one:
        raise InvalidTransition(f"工单 {order_no} 已有进行中的联合执法行动 {open_one}")


# --- report in (报到) -----------------------------------------------------------------------------

def report_in(uow, payload, idempotency_key=None, now=None):
    """A called force reports in with one of its teams; late is recorded, not refused. Emits
    ``force_reported_in``. Raises NotYourOrder if the force was not called to the operation."""
    data = load(ReportInSchema(), payload)
    _check_key(idempotency_key)
    key = _scoped(idempotency_key, data["operation_id"], data["force_code"])
    try:
        return _report_in(uow, data, key, now or _now())
    except IntegrityError:
        earlier = _first_result_after_clash(uow, "report_in", key)
        if earlier:
            return earlier
        raise


def _report_in(uow, data, key, now):
    with uow:
        earlier = uow.recall("report_in", key)
        if earlier:
            return earlier
        s = uow.session
        operation = _locked_operation(s, data["operation_id"])
        if s.get(Force, data["force_code"]) is None:
            raise ValidationError("请求参数有误", {"force_code": ["未知的执法力量"]})
        called = s.get(CalledForce, (operation.operation_id, data["force_code"]))
        if called is None:
            raise NotYourOrder(f"{data['force_code']} 未被 {operation.operation_id} 吹哨调度")
        if called.status == domain.FORCE_REPORTED_IN:
            raise InvalidTransition(f"{data['force_code']} 已于 {_aware(called.reported_at).isoformat()} 报到")
        team = s.get(Team, data["team"])
        if team is None or team.force_code != called.force_code:
            raise ValidationError("请求参数有误", {"team": ["不是该执法力量的队伍"]})

        called.status = domain.FORCE_REPORTED_IN
        called.reported_team_code = team.code
        called.reported_at = now
        called.within_deadline = domain.within_deadline(now, _aware(called.report_in_due_at))
        s.flush()
        operation.status = domain.status_after_report_in(_force_statuses(s, operation.operation_id))
        operation.version += 1
        uow.emit("force_reported_in", None, {
            "operation_id": operation.operation_id, "force_code": called.force_code,
            "team": team.code, "within_deadline": called.within_deadline,
        })
        result = ReportInResultSchema().dump({
            "operation_id": operation.operation_id, "force_code": called.force_code, "team": team.code,
            "reported_at": now, "within_deadline": called.within_deadline,
            "operation_status": operation.status,
        })
        uow.remember("report_in", key, result)
        uow.commit()
        return result


def _locked_operation(s, operation_id):
    """The operation, locked until commit (PostgreSQL): its report-ins and completion are decided
    one at a time, so "every force has reported in" is never judged on a stale view."""
    operation = s.execute(
        select(Operation).where(Operation.operation_id == operation_id).with_for_update()
    ).scalar_one_or_none()
    if operation is None:
        raise NotFound(f"联合执法行动 {operation_id} 不存在")
    return operation


def _force_statuses(s, operation_id):
    return dict(s.execute(select(CalledForce.force_code, CalledForce.status)
                          .where(CalledForce.operation_id == operation_id)).all())


# --- complete (完成) ------------------------------------------------------------------------------

def complete_operation(uow, payload, idempotency_key=None, now=None):
    """Close the operation with its outcome once every called force has reported in. Emits
    ``operation_completed``; triage resolves the work order on it."""
    data = load(CompletionSchema(), payload)
    _check_key(idempotency_key)
    key = _scoped(idempotency_key, data["operation_id"])
    try:
        return _complete_operation(uow, data, key, now or _now())
    except IntegrityError:
        earlier = _first_result_after_clash(uow, "complete_operation", key)
        if earlier:
            return earlier
        raise


def _complete_operation(uow, data, key, now):
    with uow:
        earlier = uow.recall("complete_operation", key)
        if earlier:
            return earlier
        s = uow.session
        operation = _locked_operation(s, data["operation_id"])
        if operation.status == domain.COMPLETED:
            raise InvalidTransition(f"联合执法行动 {operation.operation_id} 已完成")
        procedure = _procedure_of(s.get(ViolationType, operation.violation_type))
        refusal = domain.completion_refusal(procedure, operation.procedure_step,
                                            _rectified(s, operation.operation_id), data["evidence"])
        if refusal:
            raise InvalidTransition(refusal)
        missing = domain.not_reported_in(_force_statuses(s, operation.operation_id))
        if missing:
            raise InvalidTransition(f"尚有执法力量未报到：{'、'.join(missing)}", {"not_reported_in": missing})
        operation.status = domain.COMPLETED
        operation.completed_at = now
        operation.outcome = domain.redact_outcome(data["outcome"])
        operation.version += 1
        if procedure is not None or data["evidence"]:
            s.add(ProcedureStep(operation_id=operation.operation_id, step=domain.CONCLUDED,
                                recorded_at=now, findings=operation.outcome, evidence=data["evidence"]))
            if procedure is not None:
                operation.procedure_step = domain.CONCLUDED
        s.flush()
        uow.emit("operation_completed", None, {
            "operation_id": operation.operation_id, "order_no": operation.order_no,
            "town_code": operation.town_code, "outcome": operation.outcome,
        })
        result = _operation_view(s, operation)
        uow.remember("complete_operation", key, result)
        uow.commit()
        return result


# --- legal procedure: notice → waiting period → inspection → joint enforcement → outcome -----------

def _procedure_of(violation):
    if violation is None or not violation.waiting_days:
        return None
    return {"notice": violation.notice_name, "waiting_days": violation.waiting_days}


def _rectified(s, operation_id):
    step = s.execute(select(ProcedureStep).where(
        ProcedureStep.operation_id == operation_id, ProcedureStep.step == domain.INSPECTED)
    ).scalar_one_or_none()
    return step.rectified if step else None


def _step(s, operation_id, step):
    return s.execute(select(ProcedureStep).where(
        ProcedureStep.operation_id == operation_id, ProcedureStep.step == step)).scalar_one_or_none()


def _procedure_step(uow, name, schema, payload, idempotency_key, now, take):
    """Shared frame of the procedure's steps: validate, recall a retried call, lock the operation,
    let ``take(s, operation, procedure, data, now)`` check and record the step, and remember."""
    data = load(schema, payload)
    _check_key(idempotency_key)
    key = _scoped(idempotency_key, data["operation_id"])
    now = now or _now()
    try:
        with uow:
            earlier = uow.recall(name, key)
            if earlier:
                return earlier
            s = uow.session
            operation = _locked_operation(s, data["operation_id"])
            procedure = _procedure_of(s.get(ViolationType, operation.violation_type))
            if procedure is None:
                raise InvalidTransition("该违法类型无限期整改程序")
            step = take(uow, operation, procedure, data, now)
            operation.procedure_step = step.step
            operation.version += 1
            s.add(step)
            s.flush()
            result = StepResultSchema().dump({
                "operation_id": operation.operation_id, "step": step.step,
                "recorded_at": step.recorded_at, "document_no": step.document_no,
                "period_ends_at": step.period_ends_at, "rectified": step.rectified,
                "evidence": step.evidence})
            uow.remember(name, key, result)
            uow.commit()
            return result
    except IntegrityError:
        earlier = _first_result_after_clash(uow, name, key)
        if earlier:
            return earlier
        raise InvalidTransition("该步骤已由另一请求完成") from None


def issue_rectification_notice(uow, payload, idempotency_key=None, now=None):
    """限期整改/拆除通知书: the lead force, once it has reported in, issues the notice; its period is
    the statutory waiting period or longer. Emits ``rectification_notice_issued``."""
    def take(uow, operation, procedure, data, now):
        s = uow.session
        lead = s.execute(select(CalledForce).where(
            CalledForce.operation_id == operation.operation_id,
            CalledForce.role == domain.LEAD)).scalar_one()
        refusal = domain.notice_refusal(procedure, operation.procedure_step, operation.status,
                                        lead.status == domain.FORCE_REPORTED_IN)
        if refusal:
            raise InvalidTransition(refusal)
        days = data["period_days"] or procedure["waiting_days"]
        if days < procedure["waiting_days"]:
            raise ValidationError("请求参数有误", {"period_days": [
                f"不得短于法定期限 {procedure['waiting_days']} 日"]})
        ends_at = domain.period_ends_at(now, days)
        uow.emit("rectification_notice_issued", None, {
            "operation_id": operation.operation_id, "order_no": operation.order_no,
            "town_code": operation.town_code, "violation_type": operation.violation_type,
            "notice_no": data["notice_no"], "issued_at": now.isoformat(), "period_days": days,
            "period_ends_at": ends_at.isoformat()})
        return ProcedureStep(operation_id=operation.operation_id, step=domain.NOTICE_ISSUED,
                             recorded_at=now, document_no=data["notice_no"],
                             period_ends_at=ends_at, evidence=[])
    return _procedure_step(uow, "issue_rectification_notice", NoticeSchema(), payload,
                           idempotency_key, now, take)


def record_inspection(uow, payload, idempotency_key=None, now=None):
    """复查: only once the notice's period is over. Emits ``follow_up_inspection_recorded``."""
    def take(uow, operation, procedure, data, now):
        notice = _step(uow.session, operation.operation_id, domain.NOTICE_ISSUED)
        refusal = domain.inspection_refusal(operation.procedure_step, now,
                                            notice and _aware(notice.period_ends_at))
        if refusal:
            raise InvalidTransition(refusal)
        uow.emit("follow_up_inspection_recorded", None, {
            "operation_id": operation.operation_id, "order_no": operation.order_no,
            "town_code": operation.town_code, "inspected_at": now.isoformat(),
            "rectified": data["rectified"], "evidence_count": len(data["evidence"])})
        return ProcedureStep(operation_id=operation.operation_id, step=domain.INSPECTED,
                             recorded_at=now, rectified=data["rectified"],
                             findings=domain.redact_outcome(data["findings"]),
                             evidence=data["evidence"])
    return _procedure_step(uow, "record_inspection", InspectionSchema(), payload, idempotency_key,
                           now, take)


def carry_out_joint_enforcement(uow, payload, idempotency_key=None, now=None):
    """联合执法: after an inspection that found the violation not rectified, with every called force
    reported in. Emits ``joint_enforcement_carried_out``."""
    def take(uow, operation, procedure, data, now):
        s = uow.session
        statuses = _force_statuses(s, operation.operation_id)
        refusal = domain.enforcement_refusal(operation.procedure_step,
                                             _rectified(s, operation.operation_id),
                                             domain.not_reported_in(statuses))
        if refusal:
            raise InvalidTransition(refusal)
        uow.emit("joint_enforcement_carried_out", None, {
            "operation_id": operation.operation_id, "order_no": operation.order_no,
            "town_code": operation.town_code, "forces": sorted(statuses),
            "carried_out_at": now.isoformat(), "evidence_count": len(data["evidence"])})
        return ProcedureStep(operation_id=operation.operation_id, step=domain.ENFORCED,
                             recorded_at=now, findings=domain.redact_outcome(data["action"]),
                             evidence=data["evidence"])
    return _procedure_step(uow, "carry_out_joint_enforcement", JointEnforcementSchema(), payload,
                           idempotency_key, now, take)


# --- the report-in deadline watcher ---------------------------------------------------------------

def mark_overdue(uow, now=None, batch_size=100):
    """Mark called forces past their report-in deadline as late, each exactly once, and emit
    ``force_report_in_overdue`` for each. Safe with several instances: rows are claimed with
    ``FOR UPDATE SKIP LOCKED`` (PostgreSQL), and the update only takes a row still ``called``, so a
    row another instance (or a report-in) got first is left alone. Returns (operation_id, force_code)
    of the forces marked by this call."""
    now = now or _now()
    with uow:
        s = uow.session
        due = s.execute(
            select(CalledForce.operation_id, CalledForce.force_code, CalledForce.report_in_due_at,
                   Operation.order_no, Operation.town_code)
            .join(Operation, Operation.operation_id == CalledForce.operation_id)
            .where(CalledForce.status == domain.FORCE_CALLED, CalledForce.report_in_due_at < now)
            .order_by(CalledForce.report_in_due_at, CalledForce.operation_id, CalledForce.force_code)
            .limit(batch_size)
            .with_for_update(skip_locked=True, of=CalledForce)
        ).all()
        marked = []
        for row in due:
            claimed = s.execute(
                update(CalledForce)
                .where(CalledForce.operation_id == row.operation_id,
                       CalledForce.force_code == row.force_code,
                       CalledForce.status == domain.FORCE_CALLED)
                .values(status=domain.FORCE_OVERDUE, overdue_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount
            if claimed != 1:
                continue
            uow.emit("force_report_in_overdue", None, {
                "operation_id": row.operation_id, "order_no": row.order_no,
                "town_code": row.town_code, "force_code": row.force_code,
                "report_in_due_at": _aware(row.report_in_due_at).isoformat(),
                "marked_at": now.isoformat(),
            })
            marked.append((row.operation_id, row.force_code))
        uow.commit()
    return marked


def remind_late_forces(uow, now=None, batch_size=100):
    """Remind (催报) each force that is past its deadline and its reminder time, once; emits
    ``force_report_in_reminded`` to its team. Claims rows like :func:`mark_overdue`. Returns
    (operation_id, force_code) of the forces reminded by this call."""
    now = now or _now()

    def emit(uow, row):
        uow.emit("force_report_in_reminded", None, {
            "operation_id": row.operation_id, "order_no": row.order_no, "town_code": row.town_code,
            "force_code": row.force_code, "team": row.assigned_team_code,
            "report_in_due_at": _aware(row.report_in_due_at).isoformat(),
            "reminded_at": now.isoformat()})
    return _follow_up(uow, now, batch_size, CalledForce.remind_at, CalledForce.reminded_at,
                      CalledForce.remind_at.isnot(None), emit)


def escalate_late_forces(uow, now=None, batch_size=100):
    """Escalate to the district (上报区级督办) each force reminded and still not reported in by its
    escalation time, once; emits ``force_report_in_escalated``."""
    now = now or _now()

    def emit(uow, row):
        uow.emit("force_report_in_escalated", None, {
            "operation_id": row.operation_id, "order_no": row.order_no, "town_code": row.town_code,
            "force_code": row.force_code,
            "report_in_due_at": _aware(row.report_in_due_at).isoformat(),
            "escalated_at": now.isoformat(), "escalated_to": "district"})
    return _follow_up(uow, now, batch_size, CalledForce.escalate_at, CalledForce.escalated_at,
                      CalledForce.reminded_at.isnot(None), emit)


def _follow_up(uow, now, batch_size, due_column, done_column, ready, emit):
    """Claim late forces (still ``overdue``, not yet followed up this way, due for it) with ``FOR
    UPDATE SKIP LOCKED``; the update takes a row only if still untouched, so each is done once."""
    with uow:
        s = uow.session
        rows = s.execute(
            select(CalledForce.operation_id, CalledForce.force_code, CalledForce.report_in_due_at,
                   CalledForce.assigned_team_code, Operation.order_no, Operation.town_code)
            .join(Operation, Operation.operation_id == CalledForce.operation_id)
            .where(CalledForce.status == domain.FORCE_OVERDUE, done_column.is_(None), ready,
                   due_column <= now)
            .order_by(due_column, CalledForce.operation_id, CalledForce.force_code)
            .limit(batch_size)
            .with_for_update(skip_locked=True, of=CalledForce)
        ).all()
        done = []
        for row in rows:
            claimed = s.execute(
                update(CalledForce)
                .where(CalledForce.operation_id == row.operation_id,
                       CalledForce.force_code == row.force_code,
                       CalledForce.status == domain.FORCE_OVERDUE, done_column.is_(None))
                .values({done_column.key: now})
                .execution_options(synchronize_session=False)
            ).rowcount
            if claimed == 1:
                emit(uow, row)
                done.append((row.operation_id, row.force_code))
        uow.commit()
    return done


# --- assessment (考核) -----------------------------------------------------------------------------

def assessment(uow, town_code=None, since=None, until=None, now=None):
    """Per force, over the operations whistled in [since, until) (optionally of one town): how often
    it was called, reported in on time or late, is still missing, was reminded and escalated, and
    the minutes it was late in all (a force still missing is late until ``now``)."""
    query = load(AssessmentQuerySchema(), {"town_code": town_code, "since": since, "until": until})
    now = now or _now()
    with uow:
        s = uow.session
        stmt = (select(CalledForce, Operation.town_code)
                .join(Operation, Operation.operation_id == CalledForce.operation_id))
        if query["town_code"]:
            stmt = stmt.where(Operation.town_code == query["town_code"])
        if query["since"]:
            stmt = stmt.where(Operation.whistle_at >= query["since"])
        if query["until"]:
            stmt = stmt.where(Operation.whistle_at < query["until"])
        tally = {}
        for called, _town in s.execute(stmt).all():
            t = tally.setdefault(called.force_code, dict.fromkeys(
                ("called", "reported_in", "on_time", "late", "not_reported", "reminded", "escalated",
                 "minutes_late"), 0))
            t["called"] += 1
            due = _aware(called.report_in_due_at)
            if called.status == domain.FORCE_REPORTED_IN:
                t["reported_in"] += 1
                t["on_time" if called.within_deadline else "late"] += 1
                t["minutes_late"] += domain.minutes_late(due, _aware(called.reported_at), now)
            else:
                t["not_reported"] += 1
                t["minutes_late"] += domain.minutes_late(due, None, now)
            t["reminded"] += called.reminded_at is not None
            t["escalated"] += called.escalated_at is not None
        forces = s.execute(select(Force).order_by(Force.sort_order)).scalars().all()
        return AssessmentSchema(many=True).dump([
            {"force_code": f.code, "force_name": f.name, **tally[f.code],
             "on_time_rate": round(tally[f.code]["on_time"] / tally[f.code]["called"], 4)}
            for f in forces if f.code in tally])


# --- rosters: an officer drops out -----------------------------------------------------------------

def record_absence(uow, payload, idempotency_key=None, now=None):
    """An officer is away for whole days (leave, sickness, training, other duty): the team's capacity
    shrinks on those days, and every town it serves that has a plan gets a re-plan request."""
    data = load(AbsenceSchema(), payload)
    _check_key(idempotency_key)
    if data["last_day"] < data["first_day"]:
        raise ValidationError("请求参数有误", {"last_day": ["不得早于开始日期"]})
    now = now or _now()
    with uow:
        earlier = uow.recall("record_absence", idempotency_key)
        if earlier:
            return earlier
        s = uow.session
        officer = s.get(Officer, data["officer_code"])
        if officer is None:
            raise NotFound(f"执法人员 {data['officer_code']} 不存在")
        s.add(OfficerAbsence(officer_code=officer.code, first_day=data["first_day"],
                             last_day=data["last_day"], kind=data["kind"], recorded_at=now))
        towns = s.execute(select(TeamJurisdiction.town_code)
                          .where(TeamJurisdiction.team_code == officer.team_code)).scalars().all()
        replan = _request_replan(s, towns, "officer_unavailable", now)
        result = AbsenceResultSchema().dump({
            "officer_code": officer.code, "team": officer.team_code, "first_day": data["first_day"],
            "last_day": data["last_day"], "kind": data["kind"], "replan_towns": replan})
        uow.remember("record_absence", idempotency_key, result)
        uow.commit()
        return result


def _request_replan(s, town_codes, reason, now):
    """Ask for a re-plan of those towns that have a plan; returns them."""
    planned = s.execute(select(SchedulePlan.town_code).distinct()
                        .where(SchedulePlan.town_code.in_(list(town_codes)))).scalars().all()
    for town in sorted(planned):
        request = s.get(ReplanRequest, town)
        if request is None:
            s.add(ReplanRequest(town_code=town, requested_at=now, reason=reason))
        else:
            request.requested_at, request.reason = now, reason
    return sorted(planned)


# --- scheduling (排班) ----------------------------------------------------------------------------

def schedule(uow, solve, payload, reason="requested", idempotency_key=None, now=None):
    """Plan the town's open operations onto days and teams over ``horizon_days`` from today, revising
    its latest plan with as few moves as possible, and publish the plan (``operations_scheduled``).

    ``solve(problem) -> Plan`` is CPU work: the service passes one that runs in a worker process.
    It runs between two transactions: the snapshot, then the write, which refuses (InvalidTransition)
    if another plan of the town was written meanwhile."""
    data = load(ScheduleSchema(), payload)
    _check_key(idempotency_key)
    now = now or _now()
    with uow:
        earlier = uow.recall("schedule", idempotency_key)
        if earlier:
            return earlier
        snapshot = _snapshot(uow.session, data["town_code"], data["horizon_days"], now)
    plan = solve(snapshot.problem)
    try:
        return _store_plan(uow, snapshot, plan, reason, idempotency_key, now)
    except IntegrityError:
        earlier = _first_result_after_clash(uow, "schedule", idempotency_key)
        if earlier:
            return earlier
        raise InvalidTransition("排班计划已被另一请求更新，请重新排班") from None


class _Snapshot:
    def __init__(self, town_code, start, problem, previous_version):
        self.town_code, self.start = town_code, start
        self.problem, self.previous_version = problem, previous_version


def _snapshot(s, town_code, horizon_days, now):
    from enforcement import scheduling

    if s.get(Town, town_code) is None:
        raise ValidationError("请求参数有误", {"town_code": ["不是本区的镇街代码"]})
    start = domain.local_day(now)
    dates = [start + timedelta(days=d) for d in range(horizon_days)]
    teams_by_force = _town_teams(s, town_code)
    teams = [t for ts in teams_by_force.values() for t in ts]
    codes = [t.code for t in teams]
    officers = {}
    for officer in s.execute(select(Officer).where(Officer.team_code.in_(codes))).scalars():
        officers.setdefault(officer.team_code, {})[officer.code] = (officer.duty_days, [])
    absences = s.execute(
        select(OfficerAbsence, Officer.team_code).join(Officer, Officer.code == OfficerAbsence.officer_code)
        .where(Officer.team_code.in_(codes), OfficerAbsence.last_day >= dates[0],
               OfficerAbsence.first_day <= dates[-1])).all()
    for absence, team_code in absences:
        officers[team_code][absence.officer_code][1].append((absence.first_day, absence.last_day))
    held = _held_by_other_towns(s, town_code, codes, dates)
    capacities = []
    for team in teams:
        per_day = scheduling.daily_capacity(dates, team.duty_days, team.max_concurrent_operations,
                                            team.officers_per_operation,
                                            list(officers.get(team.code, {}).values()))
        capacities.append(scheduling.TeamCapacity(
            code=team.code, force_code=team.force_code, local=team.town_code == town_code,
            capacity=[max(0, c - held.get((team.code, dates[d]), 0)) for d, c in enumerate(per_day)]))

    operations = s.execute(select(Operation).where(
        Operation.town_code == town_code, Operation.status.in_(domain.OPEN_STATUSES))
        .order_by(Operation.id)).scalars().all()
    called = _called_forces(s, [o.operation_id for o in operations])
    violations = {v.code: v for v in s.execute(select(ViolationType)).scalars()}
    jobs = []
    for op in operations:
        violation = violations[op.violation_type]
        due_hours = violation.operation_due_hours or domain.DEFAULT_OPERATION_DUE_HOURS
        release_at = now
        due_at = _aware(op.due_at) or domain.operation_due_at(_aware(op.whistle_at), op.urgency, due_hours)
        if _procedure_of(violation) is not None:
            # joint enforcement waits for the notice's period; before the notice, or once done
            # (or rectified), there is nothing to plan
            if op.procedure_step not in (domain.NOTICE_ISSUED, domain.INSPECTED) or \
                    _rectified(s, op.operation_id):
                continue
            ends = _aware(_step(s, op.operation_id, domain.NOTICE_ISSUED).period_ends_at)
            release_at = max(now, ends)
            due_at = max(due_at, domain.operation_due_at(ends, op.urgency, due_hours))
        release_day = (domain.local_day(release_at) - start).days
        if release_day >= horizon_days:
            continue
        forces = [c.force_code for c in called.get(op.operation_id, [])]
        closing = [max((domain.clock_hours(t.work_end) for t in teams_by_force.get(f, [])), default=17.5)
                   for f in forces]
        jobs.append(scheduling.Job(
            operation_id=op.operation_id, forces=forces, release_day=release_day,
            due_hour=round(domain.hours_since(start, due_at), 2),
            finish_hour=min(closing, default=17.5), urgency=op.urgency))

    latest = _latest_plan(s, town_code)
    previous = []
    if latest is not None:
        planned = {j.operation_id for j in jobs}
        for a in s.execute(select(ScheduledAssignment).where(ScheduledAssignment.plan_id == latest.id)
                           ).scalars():
            day = (a.day - start).days
            if a.operation_id in planned and 0 <= day < horizon_days:
                previous.append(scheduling.Assignment(a.operation_id, a.force_code, a.team_code, day))
    problem = scheduling.Problem(horizon_days=horizon_days, jobs=jobs, teams=capacities,
                                 previous=previous)
    return _Snapshot(town_code, start, problem, latest.version if latest else 0)


def _held_by_other_towns(s, town_code, team_codes, dates):
    """{(team, day): operations} that other towns' latest plans hold on these (shared) teams."""
    latest = (select(SchedulePlan.town_code, func.max(SchedulePlan.version).label("version"))
              .where(SchedulePlan.town_code != town_code).group_by(SchedulePlan.town_code).subquery())
    rows = s.execute(
        select(ScheduledAssignment.team_code, ScheduledAssignment.day, func.count())
        .join(SchedulePlan, SchedulePlan.id == ScheduledAssignment.plan_id)
        .join(latest, (latest.c.town_code == SchedulePlan.town_code)
              & (latest.c.version == SchedulePlan.version))
        .join(Operation, Operation.operation_id == ScheduledAssignment.operation_id)
        .where(ScheduledAssignment.team_code.in_(team_codes), Operation.status.in_(domain.OPEN_STATUSES),
               ScheduledAssignment.day >= dates[0], ScheduledAssignment.day <= dates[-1])
        .group_by(ScheduledAssignment.team_code, ScheduledAssignment.day)).all()
    return {(team, day): n for team, day, n in rows}


def _latest_plan(s, town_code):
    return s.execute(select(SchedulePlan).where(SchedulePlan.town_code == town_code)
                     .order_by(SchedulePlan.version.desc()).limit(1)).scalar_one_or_none()


def _store_plan(uow, snapshot, plan, reason, idempotency_key, now):
    with uow:
        s = uow.session
        latest = _latest_plan(s, snapshot.town_code)
        if (latest.version if latest else 0) != snapshot.previous_version:
            raise InvalidTransition("排班计划已被另一请求更新，请重新排班")
        record = SchedulePlan(
            town_code=snapshot.town_code, version=snapshot.previous_version + 1, created_at=now,
            reason=reason, horizon_start=snapshot.start, horizon_days=snapshot.problem.horizon_days,
            solver=plan.solver, status=plan.status, on_time=plan.on_time, late=plan.late,
            lateness_hours=plan.lateness_hours, moved=plan.moved, bound_on_time=plan.bound_on_time,
            solve_seconds=plan.solve_seconds, utilisation=plan.utilisation,
            unscheduled=list(plan.unscheduled))
        s.add(record)
        s.flush()
        assignments = [ScheduledAssignment(plan_id=record.id, operation_id=a.operation_id,
                                           force_code=a.force_code, team_code=a.team,
                                           day=snapshot.start + timedelta(days=a.day))
                       for a in plan.assignments]
        s.add_all(assignments)
        request = s.get(ReplanRequest, snapshot.town_code)
        if request is not None:  # this plan saw what the request was about
            s.delete(request)
        view = _plan_view(record, assignments)
        uow.emit("operations_scheduled", None, {
            "town_code": record.town_code, "plan_version": record.version,
            "horizon_start": view["horizon_start"], "horizon_days": record.horizon_days,
            "solver": record.solver, "reason": reason, "assignments": view["assignments"],
            "unscheduled": view["unscheduled"], "moved": record.moved})
        uow.remember("schedule", idempotency_key, view)
        uow.commit()
        return view


def _plan_view(record, assignments):
    return PlanSchema().dump({
        "town_code": record.town_code, "plan_version": record.version, "created_at": record.created_at,
        "reason": record.reason, "horizon_start": record.horizon_start,
        "horizon_days": record.horizon_days, "solver": record.solver, "status": record.status,
        "on_time": record.on_time, "late": record.late, "lateness_hours": record.lateness_hours,
        "moved": record.moved, "bound_on_time": record.bound_on_time,
        "solve_seconds": record.solve_seconds, "utilisation": record.utilisation,
        "unscheduled": record.unscheduled,
        "assignments": [{"operation_id": a.operation_id, "day": a.day, "force_code": a.force_code,
                         "team": a.team_code}
                        for a in sorted(assignments, key=lambda a: (a.day, a.operation_id, a.force_code))],
    })


def latest_plan(uow, town_code):
    """The plan in force for the town (its latest version)."""
    with uow:
        s = uow.session
        if s.get(Town, town_code) is None:
            raise ValidationError("请求参数有误", {"town_code": ["不是本区的镇街代码"]})
        record = _latest_plan(s, town_code)
        if record is None:
            raise NotFound(f"{town_code} 尚无排班计划")
        assignments = s.execute(select(ScheduledAssignment)
                                .where(ScheduledAssignment.plan_id == record.id)).scalars().all()
        return _plan_view(record, assignments)


def replan_requests(uow):
    """(town_code, reason, horizon_days of its latest plan) of the towns waiting for a re-plan,
    oldest request first."""
    with uow:
        s = uow.session
        requests = s.execute(select(ReplanRequest).order_by(ReplanRequest.requested_at)).scalars().all()
        return [(r.town_code, r.reason, _latest_plan(s, r.town_code).horizon_days) for r in requests]


# --- queries --------------------------------------------------------------------------------------

def get_operation(uow, operation_id):
    with uow:
        s = uow.session
        operation = s.execute(select(Operation).where(Operation.operation_id == operation_id)) \
            .scalar_one_or_none()
        if operation is None:
            raise NotFound(f"联合执法行动 {operation_id} 不存在")
        return _operation_view(s, operation)


def find_operations(uow, town_code=None, status=None, limit=FIND_LIMIT):
    """Operations, newest first, optionally of one town and/or in one status (at most ``limit``)."""
    query = load(OperationQuerySchema(), {"town_code": town_code, "status": status})
    with uow:
        s = uow.session
        stmt = select(Operation).order_by(Operation.id.desc()).limit(limit)
        if query["town_code"]:
            stmt = stmt.where(Operation.town_code == query["town_code"])
        if query["status"]:
            stmt = stmt.where(Operation.status == query["status"])
        operations = s.execute(stmt).scalars().all()
        names = _Names(s)
        ids = [o.operation_id for o in operations]
        called, steps = _called_forces(s, ids), _procedure_steps(s, ids)
        return [_operation_view(s, o, names, called.get(o.operation_id, []), steps.get(o.operation_id, []))
                for o in operations]


def town_forces(uow, town_code):
    """Every force and its teams serving the town (a force without one there is listed too: the
    district department is called instead)."""
    with uow:
        s = uow.session
        if s.get(Town, town_code) is None:
            raise ValidationError("请求参数有误", {"town_code": ["不是本区的镇街代码"]})
        teams = _town_teams(s, town_code)
        forces = s.execute(select(Force).order_by(Force.sort_order)).scalars().all()
        return TownForceSchema(many=True).dump([
            {"force_code": f.code, "force_name": f.name, "unit_code": f.unit_code,
             "teams": teams.get(f.code, [])}
            for f in forces
        ])


class _Names:
    """Names of towns, forces, teams and violation types for a view (small tables, read once)."""

    def __init__(self, s):
        self.towns = dict(s.execute(select(Town.code, Town.name)).all())
        self.forces = dict(s.execute(select(Force.code, Force.name)).all())
        self.teams = dict(s.execute(select(Team.code, Team.name)).all())
        self.violations = {v.code: v for v in s.execute(select(ViolationType)).scalars()}


def _called_forces(s, operation_ids):
    by_operation = {}
    if not operation_ids:
        return by_operation
    rows = s.execute(
        select(CalledForce).join(Force, Force.code == CalledForce.force_code)
        .where(CalledForce.operation_id.in_(operation_ids))
        .order_by(CalledForce.operation_id, (CalledForce.role != domain.LEAD), Force.sort_order)
    ).scalars()
    for row in rows:
        by_operation.setdefault(row.operation_id, []).append(row)
    return by_operation


def _operation_view(s, operation, names=None, called=None, steps=None):
    names = names or _Names(s)
    if called is None:
        called = _called_forces(s, [operation.operation_id]).get(operation.operation_id, [])
    violation = names.violations[operation.violation_type]
    procedure = _procedure_of(violation)
    if procedure is not None and steps is None:
        steps = _procedure_steps(s, [operation.operation_id]).get(operation.operation_id, [])
    return OperationSchema().dump({
        "operation_id": operation.operation_id, "order_no": operation.order_no,
        "town_code": operation.town_code, "town_name": names.towns.get(operation.town_code),
        "violation_type": violation.code, "violation_name": violation.name,
        "legal_basis": violation.legal_basis, "urgency": operation.urgency,
        "status": operation.status, "status_text": domain.STATUS_TEXT[operation.status],
        "whistle_at": operation.whistle_at, "report_in_due_at": operation.report_in_due_at,
        "completed_at": operation.completed_at, "outcome": operation.outcome,
        "version": operation.version, "due_at": operation.due_at,
        "forces": [{
            "force_code": c.force_code, "force_name": names.forces.get(c.force_code), "role": c.role,
            "status": c.status, "status_text": domain.FORCE_STATUS_TEXT[c.status],
            "assigned_team": c.assigned_team_code,
            "assigned_team_name": names.teams.get(c.assigned_team_code),
            "report_in_due_at": c.report_in_due_at, "team": c.reported_team_code,
            "team_name": names.teams.get(c.reported_team_code), "reported_at": c.reported_at,
            "within_deadline": c.within_deadline, "overdue_at": c.overdue_at,
            "reminded_at": c.reminded_at, "escalated_at": c.escalated_at,
        } for c in called],
        "procedure": None if procedure is None else {
            "notice_name": procedure["notice"], "waiting_days": procedure["waiting_days"],
            "step": operation.procedure_step,
            "step_text": domain.PROCEDURE_STEP_TEXT[operation.procedure_step],
            "steps": [{"step": p.step, "recorded_at": p.recorded_at, "document_no": p.document_no,
                       "period_ends_at": p.period_ends_at, "rectified": p.rectified,
                       "findings": p.findings, "evidence": p.evidence} for p in steps],
        },
    })


def _procedure_steps(s, operation_ids):
    by_operation = {}
    if operation_ids:
        for step in s.execute(select(ProcedureStep).where(ProcedureStep.operation_id.in_(operation_ids))
                              .order_by(ProcedureStep.recorded_at, ProcedureStep.id)).scalars():
            by_operation.setdefault(step.operation_id, []).append(step)
    return by_operation


# --- reference data -------------------------------------------------------------------------------

def load_reference(uow, towns, forces, teams, violation_types, rosters=(), officers=()):
    """Load (or refresh) towns, forces, teams with their rosters and jurisdictions, officers and
    competence; returns how many rows were written. The competence and jurisdiction relations are
    replaced as a whole, so a force removed from a violation type in the file is no longer called
    for it. Officers are added or updated, never removed (their absences stay on record)."""
    roster_of = {r.team_code: r for r in rosters}
    with uow:
        s = uow.session
        for code, name in towns.items():
            s.merge(Town(code=code, name=name))
        for f in forces:
            s.merge(Force(code=f.code, name=f.name, unit_code=f.unit_code, sort_order=f.sort_order))
        s.flush()
        for t in teams:
            r = roster_of.get(t.code)
            team = Team(code=t.code, force_code=t.force_code, town_code=t.town_code, name=t.name,
                        source=t.source)
            if r is not None:
                team.duty_days, team.work_start, team.work_end = r.duty_days, r.work_start, r.work_end
                team.max_concurrent_operations = r.max_concurrent_operations
                team.officers_per_operation = r.officers_per_operation
            s.merge(team)
        for v in violation_types:
            s.merge(ViolationType(
                code=v.code, name=v.name, legal_basis=v.legal_basis,
                report_in_minutes=v.report_in_minutes, follow_up_minutes=v.follow_up,
                operation_due_hours=v.operation_due_hours,
                notice_name=v.procedure and v.procedure["notice"],
                waiting_days=v.procedure and v.procedure["waiting_days"]))
        s.flush()
        s.execute(delete(Competence))
        competences = [Competence(violation_type=v.code, force_code=f, role=v.role_of(f))
                       for v in violation_types for f in v.forces]
        s.add_all(competences)
        s.execute(delete(TeamJurisdiction))
        jurisdictions = [TeamJurisdiction(team_code=t.code, town_code=town)
                         for t in teams for town in (roster_of[t.code].jurisdiction if t.code in roster_of
                                                     else (t.town_code,))]
        s.add_all(jurisdictions)
        s.flush()
        for o in officers:
            s.merge(Officer(code=o.code, team_code=o.team_code, post=o.post, duty_days=o.duty_days,
                            source=o.source))
        uow.commit()
    return (len(towns) + len(forces) + len(teams) + len(violation_types) + len(competences)
            + len(jurisdictions) + len(officers))

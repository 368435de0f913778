"""enforcement's use cases as plain functions of a unit of work: no nameko, no eventlet.

Every mutating one is idempotent (an idempotency key returns the first result, also to a concurrent
duplicate) and atomic (the operation, its called forces and the event commit together, or nothing
does). Events carry no case_no: enforcement knows work orders, not citizens' cases; consumers
correlate by ``data.order_no``.
"""
import uuid
from datetime import datetime, timezone

from marshmallow import ValidationError as SchemaError
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from enforcement import domain
from enforcement.models import (
    CalledForce, Competence, Force, Operation, Team, Town, ViolationType,
)
from enforcement.schemas import (
    CompletionSchema, OperationQuerySchema, OperationSchema, ReportInResultSchema, ReportInSchema,
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

        due_at = domain.report_in_due_at(now, data["urgency"], violation.report_in_minutes)
        operation = Operation(
            operation_id=f"pending-{uuid.uuid4().hex[:24]}", order_no=data["order_no"],
            town_code=town.code, violation_type=violation.code, urgency=data["urgency"],
            status=domain.CALLED, whistle_at=now, report_in_due_at=due_at, version=1)
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
                report_in_due_at=due_at))
        s.flush()
        uow.emit("whistle_blown", None, {
            "operation_id": operation.operation_id, "order_no": operation.order_no,
            "town_code": town.code, "violation_type": violation.code,
            "forces": [code for code, _role in competent], "report_in_due_at": due_at.isoformat(),
        })
        result = _operation_view(s, operation)
        uow.remember("blow_whistle", idempotency_key, result)
        uow.commit()
        return result


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
    teams = {}
    for team in s.execute(select(Team).where(Team.town_code == town_code).order_by(Team.code)).scalars():
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
        missing = domain.not_reported_in(_force_statuses(s, operation.operation_id))
        if missing:
            raise InvalidTransition(f"尚有执法力量未报到：{'、'.join(missing)}", {"not_reported_in": missing})
        operation.status = domain.COMPLETED
        operation.completed_at = now
        operation.outcome = domain.redact_outcome(data["outcome"])
        operation.version += 1
        s.flush()
        uow.emit("operation_completed", None, {
            "operation_id": operation.operation_id, "order_no": operation.order_no,
            "town_code": operation.town_code, "outcome": operation.outcome,
        })
        result = _operation_view(s, operation)
        uow.remember("complete_operation", key, result)
        uow.commit()
        return result


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
        called = _called_forces(s, [o.operation_id for o in operations])
        return [_operation_view(s, o, names, called.get(o.operation_id, [])) for o in operations]


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


def _operation_view(s, operation, names=None, called=None):
    names = names or _Names(s)
    if called is None:
        called = _called_forces(s, [operation.operation_id]).get(operation.operation_id, [])
    violation = names.violations[operation.violation_type]
    return OperationSchema().dump({
        "operation_id": operation.operation_id, "order_no": operation.order_no,
        "town_code": operation.town_code, "town_name": names.towns.get(operation.town_code),
        "violation_type": violation.code, "violation_name": violation.name,
        "legal_basis": violation.legal_basis, "urgency": operation.urgency,
        "status": operation.status, "status_text": domain.STATUS_TEXT[operation.status],
        "whistle_at": operation.whistle_at, "report_in_due_at": operation.report_in_due_at,
        "completed_at": operation.completed_at, "outcome": operation.outcome,
        "version": operation.version,
        "forces": [{
            "force_code": c.force_code, "force_name": names.forces.get(c.force_code), "role": c.role,
            "status": c.status, "status_text": domain.FORCE_STATUS_TEXT[c.status],
            "assigned_team": c.assigned_team_code,
            "assigned_team_name": names.teams.get(c.assigned_team_code),
            "report_in_due_at": c.report_in_due_at, "team": c.reported_team_code,
            "team_name": names.teams.get(c.reported_team_code), "reported_at": c.reported_at,
            "within_deadline": c.within_deadline, "overdue_at": c.overdue_at,
        } for c in called],
    })


# --- reference data -------------------------------------------------------------------------------

def load_reference(uow, towns, forces, teams, violation_types):
    """Load (or refresh) towns, forces, teams and competence; returns how many rows were written.
    The competence relation is replaced as a whole, so a force removed from a violation type in the
    file is no longer called for it."""
    with uow:
        s = uow.session
        for code, name in towns.items():
            s.merge(Town(code=code, name=name))
        for f in forces:
            s.merge(Force(code=f.code, name=f.name, unit_code=f.unit_code, sort_order=f.sort_order))
        s.flush()
        for t in teams:
            s.merge(Team(code=t.code, force_code=t.force_code, town_code=t.town_code, name=t.name,
                         source=t.source))
        for v in violation_types:
            s.merge(ViolationType(code=v.code, name=v.name, legal_basis=v.legal_basis,
                                  report_in_minutes=v.report_in_minutes))
        s.flush()
        s.execute(delete(Competence))
        competences = [Competence(violation_type=v.code, force_code=f, role=v.role_of(f))
                       for v in violation_types for f in v.forces]
        s.add_all(competences)
        uow.commit()
    return len(towns) + len(forces) + len(teams) + len(violation_types) + len(competences)

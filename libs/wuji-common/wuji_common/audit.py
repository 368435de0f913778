"""The audit log (审计日志) every service keeps: who did what, to which object, when, from where and why.

- One ``audit_log`` table per service database, added to the service's MetaData by
  :func:`add_audit_table` and created by the service's own migration through
  :func:`create_audit_table`, which also installs triggers refusing UPDATE and DELETE (PostgreSQL
  and SQLite alike): the log is append-only for the application's database user.
- A row is written in the same transaction as the state change it records: an entrypoint hands
  its handler ``audited(uow, caller, action, ...)`` instead of the bare unit of work, and the row is
  inserted (one Core insert) right before that unit of work commits. A call that commits nothing
  (a rejected request, an idempotent retry) leaves no row, because nothing happened.
- A read that reveals personal data commits only its audit row: :func:`record` then ``uow.commit()``.
- :func:`read` is the body of every service's ``audit_log`` RPC: staff see their own unit's
  entries, supervisors and the district leader everything.

No personal data goes into the log itself beyond the free-text reason a person typed.
"""
from datetime import datetime, timezone

from sqlalchemy import Column, DateTime, Integer, String, Table, insert, select

from wuji_common.errors import Forbidden, ValidationError

# roles that read every service's whole log (督查); other staff roles read their own unit's entries
READ_ALL_ROLES = frozenset({"supervisor", "district_leader", "ops", "admin"})
READ_OWN_UNIT_ROLES = frozenset({"unit_clerk", "unit_head", "grid_worker", "dispatcher", "force"})
MAX_READ = 500


def add_audit_table(metadata):
    return Table(
        "audit_log", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("at", DateTime(timezone=True), nullable=False, index=True),
        Column("subject", String(96), nullable=False),    # staff:<id>, service:<name>, citizen:<case>, system
        Column("role", String(32), nullable=False),
        Column("unit_code", String(40), nullable=True, index=True),
        Column("action", String(64), nullable=False),     # the entrypoint or event, e.g. accept_order
        Column("object_type", String(32), nullable=True),  # appeal, order, operation, delivery, ...
        Column("object_id", String(64), nullable=True, index=True),
        Column("source", String(64), nullable=True),      # rpc, http:<ip>, event, timer
        Column("reason", String(500), nullable=True),
    )


# --- migrations ---------------------------------------------------------------------------------

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP;
END
$$ LANGUAGE plpgsql"""


def create_audit_table(op):
    """Create ``audit_log`` and its append-only triggers (called from each service's migration)."""
    import sqlalchemy as sa
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("subject", sa.String(96), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("unit_code", sa.String(40), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("object_type", sa.String(32), nullable=True),
        sa.Column("object_id", sa.String(64), nullable=True),
        sa.Column("source", sa.String(64), nullable=True),
        sa.Column("reason", sa.String(500), nullable=True),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_unit_code", "audit_log", ["unit_code"])
    op.create_index("ix_audit_log_object_id", "audit_log", ["object_id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute("CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
                   "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()")
        op.execute("CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
                   "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()")
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
                       f"BEGIN SELECT RAISE(ABORT, 'audit_log is append-only ({verb} refused)'); END")


def drop_audit_table(op):
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log")
        op.execute("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    op.drop_table("audit_log")


# --- writing ------------------------------------------------------------------------------------

def _table(uow):
    tables = getattr(uow, "tables", None)
    if tables is None:  # a unit of work without ``tables`` knows its MetaData through the outbox
        tables = uow._outbox.metadata.tables
    return tables["audit_log"]


def _who(caller):
    """The actor's columns; no caller is the platform itself (a timer, a command)."""
    if caller is None:
        return {"subject": "system", "role": "system", "unit_code": None, "source": None}
    return {"subject": caller.subject[:96], "role": caller.role,
            "unit_code": caller.unit_code or caller.force_code,
            "source": (caller.source or "")[:64] or None}


def entry(caller, action, object_type=None, object_id=None, reason=None, at=None):
    """One audit row's values (for :func:`record_many`)."""
    return {"at": at or datetime.now(timezone.utc), "action": action, "object_type": object_type,
            "object_id": None if object_id is None else str(object_id)[:64],
            "reason": reason[:500] if reason else None, **_who(caller)}


def record(uow, caller, action, object_type=None, object_id=None, reason=None, at=None):
    """Add one audit row to the open unit of work (it commits with the rest)."""
    record_many(uow, [entry(caller, action, object_type, object_id, reason, at)])


def record_many(uow, entries):
    """Add the rows of :func:`entry` to the open unit of work in one statement (a batch's work)."""
    if entries:
        uow.session.execute(insert(_table(uow)), entries)


def audited(uow, caller, action, object_type=None, object_id=None, reason=None, only_with_events=False):
    """``uow`` whose every commit also writes an audit row for ``action`` by ``caller``.

    ``object_id`` may be left out when the handler creates the object: the case number of the
    first event the commit raises names it then (e.g. the case a submitted appeal was given).
    ``only_with_events``: for timers that commit on every round, a row only for a commit that
    raised events (one that changed something worth telling)."""
    commit = uow.commit

    def commit_with_audit():
        if only_with_events and not uow.events:
            return commit()
        object_ref = object_id
        if object_ref is None and uow.events:
            object_ref = uow.events[0].get("case_no")
        record(uow, caller, action, object_type, object_ref, reason)
        return commit()

    uow.commit = commit_with_audit
    return uow


def note(uow, caller, action, object_type=None, object_id=None, reason=None):
    """An audit row on its own, for a change that is not in this database (e.g. a configuration
    reloaded into memory)."""
    with uow:
        record(uow, caller, action, object_type, object_id, reason)
        uow.commit()


def event_caller(envelope):
    """The actor of an event handler's change: the service that published the event."""
    from wuji_common.auth import Caller
    return Caller(f"service:{envelope.get('source') or 'unknown'}", "service", source="event")


def record_event(uow, envelope):
    """The audit row of one event's effect on an appeal, by the service that published the event."""
    record_events(uow, [envelope])


def record_events(uow, envelopes):
    """:func:`record_event` for a batch handler's events, in one statement."""
    record_many(uow, [entry(event_caller(e), e["type"], "appeal", e.get("case_no")) for e in envelopes])


# --- reading ------------------------------------------------------------------------------------

def read(uow, caller, object_id=None, since=None, limit=100):
    """The log for ``caller``: supervisors, the district leader and ops read everything; a unit's
    staff (or a force) read the entries of their own unit; anyone else is refused."""
    role = getattr(caller, "role", None)
    own_unit = getattr(caller, "unit_code", None) or getattr(caller, "force_code", None)
    if role not in READ_ALL_ROLES and not (role in READ_OWN_UNIT_ROLES and own_unit):
        raise Forbidden("无权查看审计日志")
    try:
        limit = max(1, min(int(limit or 100), MAX_READ))
        since_at = datetime.fromisoformat(since) if since else None
    except (TypeError, ValueError):
        raise ValidationError("参数有误", {"limit/since": ["limit 为整数，since 为 ISO 8601 时间"]}) \
            from None
    with uow:
        table = _table(uow)
        query = select(table).order_by(table.c.id.desc()).limit(limit)
        if role not in READ_ALL_ROLES:
            query = query.where(table.c.unit_code == own_unit)
        if object_id:
            query = query.where(table.c.object_id == str(object_id))
        if since_at:
            if since_at.tzinfo is None:
                since_at = since_at.replace(tzinfo=timezone.utc)
            query = query.where(table.c.at >= since_at)
        return [_entry(row) for row in uow.session.execute(query).mappings()]


def _entry(row):
    at = row["at"]
    if at.tzinfo is None:  # SQLite hands back naive UTC
        at = at.replace(tzinfo=timezone.utc)
    return {"id": row["id"], "at": at.isoformat(), "subject": row["subject"], "role": row["role"],
            "unit_code": row["unit_code"], "action": row["action"], "object_type": row["object_type"],
            "object_id": row["object_id"], "source": row["source"], "reason": row["reason"]}

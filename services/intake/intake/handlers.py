"""intake's use cases as plain functions of a unit of work: no nameko, no HTTP. Every mutating one is
idempotent (an idempotency key returns the first result) and atomic (data, timeline and event commit
together, or nothing does)."""
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from types import SimpleNamespace

from marshmallow import ValidationError as SchemaError
from sqlalchemy import Column, MetaData, String, Table, Text, bindparam, insert, select, update

from intake import domain, encryption
from intake.models import Appeal, CitizenContact, Division, TimelineEntry
from wuji_common import audit, privacy
from intake.schemas import (
    AppealSubmissionSchema, PublicAppealSchema, RatingSchema, StaffAppealSchema,
)
from wuji_common.errors import Forbidden, InvalidTransition, NotFound, ValidationError

submission_schema = AppealSubmissionSchema()
rating_schema = RatingSchema()


def _now():
    return datetime.now(timezone.utc)


def _aware(value):
    # SQLite hands back naive datetimes; everything here is UTC
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def load(schema, payload):
    try:
        return schema.load(payload)
    except SchemaError as err:
        raise ValidationError("请求参数有误", err.normalized_messages()) from None


@dataclass
class Submission:
    """One appeal to register: its checked payload (:func:`check_submission`), its idempotency key,
    and who submits it for the audit log (``audit``: (caller, action), or None when the caller's
    unit of work writes the audit row itself, e.g. :func:`wuji_common.audit.audited`)."""
    data: dict
    idempotency_key: str | None = None
    audit: tuple | None = None


def check_submission(payload):
    """The submitted appeal as data, or a ValidationError naming every field that is wrong."""
    return load(submission_schema, payload)


def submit_appeal(uow, payload, idempotency_key=None, citizen_key="", now=None, on_registered=None):
    """Register an appeal (一次登记). Returns case_no, tracking_token, status.

    ``on_registered(session, appeal)``, if given, adds a channel's own record (e.g. Open311's) in the
    same transaction, so that the appeal and that record exist together or not at all."""
    submission = Submission(check_submission(payload), idempotency_key)
    result = submit_appeals(uow, [submission], citizen_key, now, on_registered)[0]
    if isinstance(result, Exception):
        raise result
    return result


def submit_appeals(uow, submissions, citizen_key="", now=None, on_registered=None):
    """Register several appeals in one transaction (group commit: the submissions that arrived
    together). Returns, per submission in order, its result (case_no, tracking_token, status) or
    the ValidationError that refused it; a refused one writes nothing, the others commit. An
    idempotency key seen before, or twice in the batch, returns the first result."""
    results = [None] * len(submissions)
    with uow:
        s = uow.session
        earlier = uow.recall_many("submit_appeal", [sub.idempotency_key for sub in submissions])
        new, first_with_key = [], {}
        for n, sub in enumerate(submissions):
            key = sub.idempotency_key
            if key and key in earlier:
                results[n] = earlier[key]
            elif key and key in first_with_key:
                continue  # the same call twice in the batch: answered with the first, below
            else:
                try:
                    _check_location(s, sub.data["location"])
                except ValidationError as exc:
                    results[n] = exc
                    continue
                new.append(n)
                if key:
                    first_with_key[key] = n
        now = now or _now()
        registered = _register(uow, [submissions[n].data for n in new], citizen_key, now)
        audit_rows = []
        for n, (appeal, answer) in zip(new, registered):
            results[n] = answer
            if on_registered is not None:
                on_registered(s, appeal)
            if submissions[n].audit is not None:
                caller, action = submissions[n].audit
                audit_rows.append(audit.entry(caller, action, "appeal", appeal.case_no, at=now))
        for n, sub in enumerate(submissions):
            if results[n] is None:
                results[n] = results[first_with_key[sub.idempotency_key]]
        if new:  # a retry or a refusal changes nothing, and leaves no audit row
            uow.remember_many("submit_appeal", {key: results[n] for key, n in first_with_key.items()})
            audit.record_many(uow, audit_rows)
            uow.commit()
    return results


def _check_location(s, location):
    town = _division(s, location["town_code"])
    if town is None or town.level != "town":
        raise ValidationError("请求参数有误", {"location": {"town_code": ["不是本区的镇街代码"]}})
    village_code = location.get("village")
    if village_code:
        village = _division(s, village_code)
        if village is None or village.parent_code != location["town_code"]:
            raise ValidationError("请求参数有误", {"location": {"village": ["不是该镇街的村居代码"]}})


def _register(uow, batch, citizen_key, now):
    """The appeals of ``batch`` (checked submissions), their contacts, first timeline lines and
    ``appeal_received`` events, in the open unit of work; returns per appeal (its row, the
    submitter's answer). Rows go in with one INSERT per table: the ORM's unit of work spent more
    time building and flushing objects than the database spent storing them."""
    if not batch:
        return []
    s = uow.session
    tokens = [domain.new_tracking_token() for _ in batch]
    appeals = [_appeal_row(data, citizen_key, now, token) for data, token in zip(batch, tokens)]
    row_ids = uow.reserve_ids("appeals", len(appeals))  # the ids number the cases
    if row_ids is not None:
        for row, row_id in zip(appeals, row_ids):
            row["id"], row["case_no"] = row_id, domain.case_no_for(now, row_id)
        s.execute(insert(Appeal.__table__), appeals)
    else:  # no sequence (SQLite): the row's id once it is inserted
        for row, token in zip(appeals, tokens):
            unnumbered = {**row, "case_no": f"pending-{token[:20]}"}
            del unnumbered["id"]
            row["id"] = s.execute(insert(Appeal.__table__).values(unnumbered)).inserted_primary_key[0]
            row["case_no"] = domain.case_no_for(now, row["id"])
            s.execute(update(Appeal.__table__).where(Appeal.id == row["id"]).values(case_no=row["case_no"]))
    contacts = [_contact_row(row["case_no"], data) for row, data in zip(appeals, batch)]
    if any(contacts):
        s.execute(insert(CitizenContact.__table__), [c for c in contacts if c])
    received = domain.timeline_text("appeal_received", {})
    s.execute(insert(TimelineEntry.__table__), [
        {"case_no": row["case_no"], "at": now, "status": "received", "text": received} for row in appeals])
    registered = []
    for row, data, token in zip(appeals, batch, tokens):
        citizen = None if data["anonymous"] else data["citizen"]
        hide, address = row["hide_identity"], data["location"].get("address")
        uow.emit("appeal_received", row["case_no"], {
            "channel": row["channel"], "title": domain.redact_text(row["title"], citizen, hide, address),
            "content": domain.redact_text(row["content"], citizen, hide, address),
            "town_code": row["town_code"], "village_code": row["village_code"],
            "anonymous": row["anonymous"], "citizen_ref": row["citizen_ref"],
            "reception_level": row["reception_level"],
            "received_at": now.isoformat(), "attachments": data["attachments"],
        })
        registered.append((SimpleNamespace(**row), {"case_no": row["case_no"], "tracking_token": token,
                                                     "status": row["status"]}))
    return registered


def _appeal_row(data, citizen_key, now, token):
    location = data["location"]
    citizen = None if data["anonymous"] else data["citizen"]
    return {
        "id": None, "case_no": None, "channel": data["channel"], "title": data["title"],
        "content": data["content"], "town_code": location["town_code"], "village_code": location.get("village"),
        "lat": location.get("lat"), "lon": location.get("lon"),
        "attachments": json.dumps(data["attachments"]), "anonymous": data["anonymous"],
        "hide_identity": data["hide_identity"], "reception_level": data["reception_level"],
        "citizen_ref": domain.citizen_ref(citizen_key, citizen["phone"], citizen.get("id_number"))
        if citizen else None,
        "tracking_token_hash": domain.token_hash(token), "status": "received",
        "received_at": now, "updated_at": now, "version": 1}


def _contact_row(case_no, data):
    """The citizen's contact (encrypted by the column type), or None if there is nothing to keep."""
    citizen = None if data["anonymous"] else data["citizen"]
    address = data["location"].get("address")
    if not (citizen or address):
        return None
    citizen = citizen or {}
    return {"case_no": case_no, "name": citizen.get("name"), "phone": citizen.get("phone"),
            "id_number": citizen.get("id_number"), "email": citizen.get("email"),
            "wechat_openid": citizen.get("wechat_openid"), "address": address}


# reference divisions read by this process: (database, code) → (division, read at). Two statements
# less per submitted appeal; a division loaded or changed later is seen within DIVISION_TTL seconds
# (an unknown code is always looked up)
DIVISION_TTL = 60.0
_divisions = {}


def _division(s, code):
    key = (str(s.get_bind().url), code)
    cached = _divisions.get(key)
    if cached is not None and time.monotonic() - cached[1] < DIVISION_TTL:
        return cached[0]
    division = s.get(Division, code)
    if division is None:
        return None
    snapshot = SimpleNamespace(code=division.code, level=division.level, parent_code=division.parent_code)
    _divisions[key] = (snapshot, time.monotonic())
    return snapshot


def _appeal_for_citizen(s, case_no, token):
    appeal = s.execute(select(Appeal).where(Appeal.case_no == case_no)).scalar_one_or_none()
    # the same answer for an unknown case and a wrong token: a token must not reveal that a case exists
    if appeal is None or not token or appeal.tracking_token_hash != domain.token_hash(token):
        raise NotFound("未找到该诉求，或查询码不正确")
    return appeal


def _timeline(s, case_no):
    return s.execute(select(TimelineEntry).where(TimelineEntry.case_no == case_no)
                     .order_by(TimelineEntry.at, TimelineEntry.id)).scalars().all()


def public_view(uow, case_no, token):
    with uow:
        appeal = _appeal_for_citizen(uow.session, case_no, token)
        return PublicAppealSchema().dump({
            "case_no": appeal.case_no, "title": appeal.title, "status": appeal.status,
            "status_text": domain.STATUS_TEXT[appeal.status], "received_at": appeal.received_at,
            "timeline": _timeline(uow.session, case_no), "can_rate": appeal.status == "resolved",
        })


def _appeal(s, case_no):
    appeal = s.execute(select(Appeal).where(Appeal.case_no == case_no)).scalar_one_or_none()
    if appeal is None:
        raise NotFound(f"case {case_no} not found")
    return appeal


def staff_view(uow, case_no, caller=None):
    """The case for staff: personal data masked (138****5678). A unit's staff see no person at all
    when the citizen asked to hide their identity from the unit. The view is audited."""
    role = getattr(caller, "role", None)
    with uow:
        s = uow.session
        appeal = _appeal(s, case_no)
        if getattr(caller, "is_unit", False) and appeal.unit_code != caller.unit_code:
            # a unit sees the cases it holds the order of, no other (wuji_common.auth)
            raise Forbidden(f"诉求 {case_no} 不由本单位办理")
        if getattr(caller, "town_codes", ()) and appeal.town_code not in caller.town_codes:
            raise Forbidden(f"诉求 {case_no} 不属于本镇街")
        hidden = domain.identity_hidden_from(role, appeal.hide_identity)
        stored = s.get(CitizenContact, case_no)
        contact = None if appeal.anonymous or hidden else stored
        # the text as triage got it: phones and ID numbers masked, the name masked or, when the
        # citizen hid their identity from the unit, removed
        person = {"name": stored.name} if stored is not None else None
        address = stored.address if stored is not None else None
        view = StaffAppealSchema().dump({
            "case_no": appeal.case_no, "channel": appeal.channel,
            "title": domain.redact_text(appeal.title, person, appeal.hide_identity, address),
            "content": domain.redact_text(appeal.content, person, appeal.hide_identity, address),
            "town_code": appeal.town_code,
            "village_code": appeal.village_code, "anonymous": appeal.anonymous,
            "identity_hidden": hidden, "status": appeal.status, "satisfaction": appeal.satisfaction,
            "received_at": appeal.received_at, "citizen": domain.masked_citizen(contact),
            "timeline": _timeline(s, case_no),
        })
        if contact is not None:  # a view of (masked) personal data leaves a trace
            audit.record(uow, caller, "view_appeal", "appeal", case_no)
            uow.commit()
        return view


def reveal_contact(uow, caller, case_no, reason):
    """The citizen's contact unmasked, for a caller whose role needs it (domain.may_reveal), with
    the reason recorded in the audit log in the same transaction. Refused otherwise."""
    reason = (reason or "").strip()
    if len(reason) < 4 or len(reason) > 500:
        raise ValidationError("请说明查看诉求人信息的理由", {"reason": ["须填写 4 至 500 个字符的理由"]})
    with uow:
        s = uow.session
        appeal = _appeal(s, case_no)
        if not domain.may_reveal(getattr(caller, "role", None), getattr(caller, "unit_code", None),
                                 appeal.unit_code, appeal.hide_identity):
            raise Forbidden("无权查看该诉求人的完整信息")
        contact = s.get(CitizenContact, case_no)
        audit.record(uow, caller, "reveal_contact", "appeal", case_no, reason)
        uow.commit()
        if contact is None:
            return None
        return {"case_no": case_no, "name": contact.name, "phone": contact.phone,
                "id_number": contact.id_number, "email": contact.email, "address": contact.address}


def contact_for_notification(uow, case_no, caller=None):
    """Unmasked contact channels, for notify alone, at send time (never carried in events).
    Each read is audited (notify reading the contact of this case)."""
    return contacts_for_notification(uow, [case_no], caller).get(case_no)


MAX_CONTACTS_READ = 500


def contacts_for_notification(uow, case_nos, caller=None):
    """:func:`contact_for_notification` of several cases (notify's batch of sends) in one read:
    {case_no: contact} of the cases that have one, each read audited."""
    if not isinstance(case_nos, (list, tuple)) or len(case_nos) > MAX_CONTACTS_READ \
            or not all(isinstance(c, str) and 0 < len(c) <= 32 for c in case_nos):
        raise ValidationError("参数有误", {"case_nos": [f"at most {MAX_CONTACTS_READ} case numbers"]})
    case_nos = sorted(set(case_nos))
    with uow:
        found = {c.case_no: {"name": c.name, "phone": c.phone, "email": c.email,
                             "wechat_openid": c.wechat_openid}
                 for c in uow.session.execute(select(CitizenContact).where(
                     CitizenContact.case_no.in_(case_nos))).scalars()} if case_nos else {}
        if found:
            audit.record_many(uow, [audit.entry(caller, "contact_for_notification", "appeal", case_no,
                                                "notification") for case_no in sorted(found)])
            uow.commit()
        return found


def rate_appeal(uow, case_no, token, payload, idempotency_key=None, now=None):
    """The citizen's rating (评价反馈) of a resolved appeal; triage then closes or reopens the order."""
    data = load(rating_schema, payload)
    with uow:
        s = uow.session
        appeal = _appeal_for_citizen(s, case_no, token)
        earlier = uow.recall("rate_appeal", idempotency_key and f"{case_no}:{idempotency_key}")
        if earlier:
            return earlier
        if appeal.status != "resolved":
            raise InvalidTransition("诉求尚未办结，暂不能评价" if appeal.status != "closed"
                                    else "该诉求已评价并归档")
        now = now or _now()
        appeal.satisfaction = data["satisfaction"]
        appeal.status = "rated"
        appeal.updated_at = now
        appeal.version += 1
        s.add(TimelineEntry(case_no=case_no, at=now, status="rated",
                            text=domain.timeline_text("appeal_rated", {})))
        # people write their phone or name into the comment too: masked before it leaves intake
        contact = s.get(CitizenContact, case_no)
        comment = domain.redact_text(data["comment"], {"name": contact.name} if contact else None,
                                     appeal.hide_identity, contact.address if contact else None)
        uow.emit("appeal_rated", case_no, {"satisfaction": data["satisfaction"],
                                           "comment": comment, "rated_at": now.isoformat()})
        result = {"case_no": case_no, "status": "rated", "satisfaction": data["satisfaction"]}
        uow.remember("rate_appeal", idempotency_key and f"{case_no}:{idempotency_key}", result)
        uow.commit()
        return result


def apply_order_event(uow, consumer, envelope):
    """Project triage's order events onto the appeal the citizen follows. At-least-once delivery:
    a redelivered event is dropped by its id."""
    return apply_order_events(uow, consumer, [envelope]) == 1


def apply_order_events(uow, consumer, envelopes, on_handled=None):
    """:func:`apply_order_event` for a batch, in one transaction (the appeals read in one query).
    ``on_handled(uow, envelopes)``, if given, adds records of its own for the new events (e.g. their
    audit rows, :func:`wuji_common.audit.record_events`). An event for an unknown case fails the
    whole batch. Returns how many were new."""
    with uow:
        new = uow.first_deliveries(consumer, envelopes)
        if not new:
            return 0
        s = uow.session
        # locked, in case order: the order events of one case arrive on queues consumed in parallel
        # (accepted and resolved moments apart), and each projection must see the other's commit,
        # or the one that commits last writes back the status it read (a lost update)
        # (only the columns a projection changes: the ORM loaded the whole appeal, content and all)
        appeals = {r.case_no: dict(r._mapping) for r in s.execute(select(*PROJECTED).where(
            Appeal.case_no.in_(sorted({e["case_no"] for e in new}))).order_by(Appeal.case_no)
            .with_for_update())}
        timeline = []
        for envelope in new:
            appeal = appeals.get(envelope["case_no"])
            if appeal is None:
                raise NotFound(f"order event for unknown case {envelope['case_no']}")
            timeline.append(_project(appeal, envelope))
        s.execute(update(Appeal.__table__).where(Appeal.case_no == bindparam("projected_case_no")).values(
            {c.key: bindparam(f"projected_{c.key}") for c in PROJECTED[1:]}),
            [{f"projected_{k}": v for k, v in a.items()} for a in appeals.values()])
        s.execute(insert(TimelineEntry.__table__), timeline)
        if on_handled is not None:
            on_handled(uow, new)
        uow.commit()
        return len(new)


# what the projection of order events reads and writes back (the key first)
PROJECTED = (Appeal.case_no, Appeal.status, Appeal.updated_at, Appeal.order_event_at, Appeal.unit_name,
             Appeal.unit_code, Appeal.resolve_due_at, Appeal.version)


def _project(appeal, envelope):
    """Apply one order event to ``appeal`` (a dict of :data:`PROJECTED`); returns its timeline row."""
    event_type, data = envelope["type"], envelope["data"]
    status = domain.STATUS_AFTER[event_type]
    at = datetime.fromisoformat(envelope["occurred_at"])
    if event_type == "order_dispatched":
        appeal["unit_name"] = data["unit_name"]
        appeal["unit_code"] = data["unit_code"]  # whose head may see the contact (reveal_contact)
    # queues of different event types are consumed concurrently: a late event must not turn
    # the status back (accepted arriving after resolved stays in the timeline only). Order events
    # are compared with the last one applied, not with intake's own changes: the order closed after
    # a rating may carry an earlier time than the rating if triage's clock is behind intake's
    last = appeal["order_event_at"]
    if status and (last is None or at > _aware(last)
                   or (at == _aware(last) and _later(status, appeal["status"]))):
        appeal["status"] = status
        appeal["updated_at"] = max(at, _aware(appeal["updated_at"]))
        appeal["order_event_at"] = at
        if data.get("resolve_due_at"):  # dispatched / reopened: the deadline now running
            appeal["resolve_due_at"] = datetime.fromisoformat(data["resolve_due_at"]).astimezone(timezone.utc)
    appeal["version"] += 1
    return {"case_no": appeal["case_no"], "at": at, "status": appeal["status"],
            "text": domain.timeline_text(event_type, data)}


_LIFECYCLE_RANK = {status: n for n, status in enumerate(domain.LIFECYCLE)}


def _later(status, current):
    """Whether ``status`` comes after ``current`` in a case's lifecycle (domain.LIFECYCLE)."""
    return _LIFECYCLE_RANK.get(status, -1) > _LIFECYCLE_RANK.get(current, -1)


def load_divisions(uow, rows):
    """Load (or refresh) the reference divisions; returns how many rows were written."""
    _divisions.clear()
    with uow:
        for row in rows:
            uow.session.merge(Division(code=row["code"], name=row["name"], level=row["level"],
                                       parent_code=row["parent_code"]))
        uow.commit()
    return len(rows)


# --- personal data: keys and retention ---------------------------------------------------------

# citizen_contacts as stored (ciphertext), for re-encryption without decrypting through the model
_stored_contacts = Table("citizen_contacts", MetaData(), Column("case_no", String(32), primary_key=True),
                         *(Column(name, Text) for name in CitizenContact.ENCRYPTED))
FERNET_PREFIX = "gAAAAA"  # every Fernet token starts so (version byte 0x80 and a timestamp)


def encrypt_contacts(connection, ring=None):
    """Bring every stored contact value under the newest key: values under an older key are
    re-encrypted, plain values (written before encryption at rest) encrypted. Counts what it did;
    values under a key no longer configured are counted as unreadable and left alone."""
    counts = {"rows": 0, "values_current": 0, "values_reencrypted": 0, "values_encrypted_from_plain": 0,
              "values_unreadable": 0}
    rows = connection.execute(select(_stored_contacts)).mappings().all()
    if rows:
        ring = ring or encryption.keys()
    for row in rows:
        counts["rows"] += 1
        changes = {}
        for name in CitizenContact.ENCRYPTED:
            value = row[name]
            if value is None:
                continue
            if value.startswith(FERNET_PREFIX) and ring.is_current(value):
                counts["values_current"] += 1
            elif value.startswith(FERNET_PREFIX) and ring.can_decrypt(value):
                changes[name] = ring.rotate(value)
                counts["values_reencrypted"] += 1
            elif value.startswith(FERNET_PREFIX):
                counts["values_unreadable"] += 1
            else:
                changes[name] = ring.encrypt(value)
                counts["values_encrypted_from_plain"] += 1
        if changes:
            connection.execute(update(_stored_contacts)
                               .where(_stored_contacts.c.case_no == row["case_no"]).values(**changes))
    return counts


def rotate_keys(uow, ring=None):
    """``intake rotate-keys``: every contact under the newest key, in one transaction, audited."""
    with uow:
        counts = encrypt_contacts(uow.session.connection(), ring)
        audit.record(uow, None, "rotate_keys", "citizen_contacts", None,
                     f"{counts['values_reencrypted'] + counts['values_encrypted_from_plain']} values")
        uow.commit()
    return counts


def apply_retention(uow, days, now=None, dry_run=False, batch=500):
    """``intake retention``: closed cases last changed more than ``days`` ago lose their personal
    data: the contact row is deleted, the keyed citizen reference cleared, and phones, ID numbers and
    the name written into title and content are redacted. The appeal itself, its timeline, triage's
    orders and metrics' figures stay, so statistics survive. Idempotent: an erased case is marked
    and not counted again. Returns a report (JSON-ready)."""
    now = now or _now()
    cutoff = domain.retention_cutoff(now, days)
    report = {"cutoff": cutoff.isoformat(), "retention_days": days, "dry_run": dry_run,
              "cases_erased": 0, "contacts_deleted": 0, "citizen_refs_cleared": 0,
              "texts_redacted": 0, "case_nos": []}
    with uow:
        s = uow.session
        due = s.execute(select(Appeal).where(
            Appeal.status == "closed", Appeal.updated_at < cutoff,
            Appeal.personal_data_erased_at.is_(None)).order_by(Appeal.id).limit(batch * 100)).scalars().all()
        for appeal in due:
            contact = s.get(CitizenContact, appeal.case_no)
            name = contact.name if contact is not None else None
            title = privacy.redact_text(appeal.title, names=[name] if name else ())
            content = privacy.redact_text(appeal.content, names=[name] if name else ())
            report["cases_erased"] += 1
            report["case_nos"].append(appeal.case_no)
            report["contacts_deleted"] += contact is not None
            report["citizen_refs_cleared"] += appeal.citizen_ref is not None
            report["texts_redacted"] += (title, content) != (appeal.title, appeal.content)
            if dry_run:
                continue
            if contact is not None:
                s.delete(contact)
            appeal.title, appeal.content, appeal.citizen_ref = title, content, None
            appeal.personal_data_erased_at = now
            audit.record(uow, None, "erase_personal_data", "appeal", appeal.case_no,
                         f"retention {days} days")
        if not dry_run:
            uow.commit()
    return report

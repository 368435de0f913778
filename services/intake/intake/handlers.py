"""intake's use cases as plain functions of a unit of work: no nameko, no HTTP. Every mutating one is
idempotent (an idempotency key returns the first result) and atomic (data, timeline and event commit
together, or nothing does)."""
import json
from datetime import datetime, timezone

from marshmallow import ValidationError as SchemaError
from sqlalchemy import select, update

from intake import domain
from intake.models import Appeal, CitizenContact, Division, TimelineEntry
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


def submit_appeal(uow, payload, idempotency_key=None, citizen_key="", now=None, on_registered=None):
    """Register an appeal (一次登记). Returns case_no, tracking_token, status.

    ``on_registered(session, appeal)``, if given, adds a channel's own record (e.g. Open311's) in the
    same transaction, so that the appeal and that record exist together or not at all."""
    data = load(submission_schema, payload)
    with uow:
        earlier = uow.recall("submit_appeal", idempotency_key)
        if earlier:
            return earlier
        s = uow.session
        location = data["location"]
        if s.get(Division, location["town_code"]) is None or \
                s.get(Division, location["town_code"]).level != "town":
            raise ValidationError("请求参数有误", {"location": {"town_code": ["不是本区的镇街代码"]}})
        village_code = location.get("village")
        if village_code:
            village = s.get(Division, village_code)
            if village is None or village.parent_code != location["town_code"]:
                raise ValidationError("请求参数有误", {"location": {"village": ["不是该镇街的村居代码"]}})
        now = now or _now()
        citizen = None if data["anonymous"] else data["citizen"]
        token = domain.new_tracking_token()
        appeal = Appeal(
            case_no=f"pending-{token[:20]}", channel=data["channel"], title=data["title"],
            content=data["content"], town_code=location["town_code"], village_code=village_code,
            lat=location.get("lat"), lon=location.get("lon"),
            attachments=json.dumps(data["attachments"]), anonymous=data["anonymous"],
            reception_level=data["reception_level"],
            citizen_ref=domain.citizen_ref(citizen_key, citizen["phone"], citizen.get("id_number"))
            if citizen else None,
            tracking_token_hash=domain.token_hash(token), status="received",
            received_at=now, updated_at=now)
        s.add(appeal)
        s.flush()  # the row id numbers the case
        appeal.case_no = domain.case_no_for(now, appeal.id)
        if citizen or location.get("address"):
            s.add(CitizenContact(
                case_no=appeal.case_no, name=citizen and citizen["name"], phone=citizen and citizen["phone"],
                id_number=citizen and citizen.get("id_number"), email=citizen and citizen.get("email"),
                wechat_openid=citizen and citizen.get("wechat_openid"),
                address=location.get("address")))
        s.add(TimelineEntry(case_no=appeal.case_no, at=now, status="received",
                            text=domain.timeline_text("appeal_received", {})))
        uow.emit("appeal_received", appeal.case_no, {
            "channel": appeal.channel, "title": domain.redact_text(appeal.title, citizen),
            "content": domain.redact_text(appeal.content, citizen),
            "town_code": appeal.town_code, "village_code": appeal.village_code,
            "anonymous": appeal.anonymous, "citizen_ref": appeal.citizen_ref,
            "reception_level": appeal.reception_level,
            "received_at": now.isoformat(), "attachments": data["attachments"],
        })
        result = {"case_no": appeal.case_no, "tracking_token": token, "status": appeal.status}
        if on_registered is not None:
            on_registered(s, appeal)
        uow.remember("submit_appeal", idempotency_key, result)
        uow.commit()
        return result


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


def staff_view(uow, case_no):
    """The case for staff: personal data masked (138****5678)."""
    with uow:
        s = uow.session
        appeal = s.execute(select(Appeal).where(Appeal.case_no == case_no)).scalar_one_or_none()
        if appeal is None:
            raise NotFound(f"case {case_no} not found")
        contact = None if appeal.anonymous else s.get(CitizenContact, case_no)
        return StaffAppealSchema().dump({
            "case_no": appeal.case_no, "channel": appeal.channel, "title": appeal.title,
            "content": appeal.content, "town_code": appeal.town_code,
            "village_code": appeal.village_code, "anonymous": appeal.anonymous,
            "status": appeal.status, "satisfaction": appeal.satisfaction,
            "received_at": appeal.received_at, "citizen": domain.masked_citizen(contact),
            "timeline": _timeline(s, case_no),
        })


def contact_for_notification(uow, case_no):
    """Unmasked contact channels, for notify alone, at send time (never carried in events)."""
    with uow:
        contact = uow.session.get(CitizenContact, case_no)
        if contact is None:
            return None
        return {"name": contact.name, "phone": contact.phone, "email": contact.email,
                "wechat_openid": contact.wechat_openid}


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
        uow.emit("appeal_rated", case_no, {"satisfaction": data["satisfaction"],
                                           "comment": data["comment"], "rated_at": now.isoformat()})
        result = {"case_no": case_no, "status": "rated", "satisfaction": data["satisfaction"]}
        uow.remember("rate_appeal", idempotency_key and f"{case_no}:{idempotency_key}", result)
        uow.commit()
        return result


def apply_order_event(uow, consumer, envelope):
    """Project triage's order events onto the appeal the citizen follows. At-least-once delivery:
    a redelivered event is dropped by its id."""
    event_type, data, case_no = envelope["type"], envelope["data"], envelope["case_no"]
    with uow:
        if not uow.first_delivery(consumer, envelope["event_id"]):
            return False
        s = uow.session
        appeal = s.execute(select(Appeal).where(Appeal.case_no == case_no)).scalar_one_or_none()
        if appeal is None:
            raise NotFound(f"order event for unknown case {case_no}")
        status = domain.STATUS_AFTER[event_type]
        at = datetime.fromisoformat(envelope["occurred_at"])
        if event_type == "order_dispatched":
            appeal.unit_name = data["unit_name"]
        # queues of different event types are consumed concurrently: a late event must not turn
        # the status back (accepted arriving after resolved stays in the timeline only)
        if status and at > _aware(appeal.updated_at):
            appeal.status = status
            appeal.updated_at = at
            if data.get("resolve_due_at"):  # dispatched / reopened: the deadline now running
                appeal.resolve_due_at = datetime.fromisoformat(data["resolve_due_at"]).astimezone(timezone.utc)
        appeal.version += 1
        s.add(TimelineEntry(case_no=case_no, at=at, status=appeal.status,
                            text=domain.timeline_text(event_type, data)))
        uow.commit()
        return True


def load_divisions(uow, rows):
    """Load (or refresh) the reference divisions; returns how many rows were written."""
    with uow:
        for row in rows:
            uow.session.merge(Division(code=row["code"], name=row["name"], level=row["level"],
                                       parent_code=row["parent_code"]))
        uow.commit()
    return len(rows)

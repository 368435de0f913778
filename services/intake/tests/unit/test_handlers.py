"""intake's use cases against a real database (SQLite and PostgreSQL), no broker."""
import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from intake import domain, handlers
from intake.models import Appeal, CitizenContact, outbox
from wuji_common.errors import InvalidTransition, NotFound, ValidationError


def outbox_events(uow_factory):
    with uow_factory() as uow:
        return [json.loads(p) for p in uow.session.execute(select(outbox.c.payload)).scalars()]


def test_submit_registers_the_appeal_and_raises_appeal_received(intake_db, appeal_payload):
    _, uow = intake_db
    result = handlers.submit_appeal(uow(), appeal_payload, citizen_key="k")
    assert result["case_no"].startswith("YC") and len(result["case_no"]) == 16
    assert result["status"] == "received" and len(result["tracking_token"]) >= 20
    [event] = outbox_events(uow)
    assert event["type"] == "appeal_received" and event["case_no"] == result["case_no"]
    assert event["data"]["town_code"] == "370404101"
    assert event["data"]["citizen_ref"] == domain.citizen_ref("k", "13812345678", "11010519491231002X")


def test_notify_gets_the_wechat_openid_of_an_appeal_sent_through_wechat(intake_db, appeal_payload):
    _, uow = intake_db
    payload = {**appeal_payload, "channel": "wechat",
               "citizen": {**appeal_payload["citizen"], "wechat_openid": "oWx_1234567890"}}
    case_no = handlers.submit_appeal(uow(), payload, citizen_key="k")["case_no"]
    assert handlers.contact_for_notification(uow(), case_no)["wechat_openid"] == "oWx_1234567890"
    assert "oWx_1234567890" not in json.dumps(outbox_events(uow))
    other = handlers.submit_appeal(uow(), appeal_payload, citizen_key="k")["case_no"]
    assert handlers.contact_for_notification(uow(), other)["wechat_openid"] is None


def test_notify_reads_the_contacts_of_a_batch_of_sends_at_once_each_read_audited(intake_db, appeal_payload):
    from wuji_common import audit
    from wuji_common.auth import Caller
    _, uow = intake_db
    notify = Caller("service:notify", "service")
    first = handlers.submit_appeal(uow(), appeal_payload, citizen_key="k")["case_no"]
    anonymous = handlers.submit_appeal(uow(), {**appeal_payload, "anonymous": True, "citizen": None,
                                               "location": {"town_code": "370404101"}},
                                       citizen_key="k")["case_no"]
    found = handlers.contacts_for_notification(uow(), [first, anonymous, first, "YC20990101000001"], notify)
    assert found == {first: {"name": "张三", "phone": "13812345678", "email": None, "wechat_openid": None}}
    reads = [e for e in audit.read(uow(), Caller("s", "supervisor")) if e["action"] == "contact_for_notification"]
    assert [(e["object_id"], e["subject"]) for e in reads] == [(first, "service:notify")]
    assert handlers.contacts_for_notification(uow(), [], notify) == {}
    with pytest.raises(ValidationError) as err:
        handlers.contacts_for_notification(uow(), ["x"] * 501, notify)
    assert "case_nos" in err.value.fields


def test_events_carry_no_personal_data(intake_db, appeal_payload):
    _, uow = intake_db
    handlers.submit_appeal(uow(), appeal_payload, citizen_key="k")
    text = json.dumps(outbox_events(uow), ensure_ascii=False)
    for secret in ("张三", "13812345678", "11010519491231002X", "金寺村东头12号"):
        assert secret not in text


def test_idempotency_key_returns_the_first_result_and_writes_once(intake_db, appeal_payload):
    _, uow = intake_db
    first = handlers.submit_appeal(uow(), appeal_payload, "key-1", "k")
    again = handlers.submit_appeal(uow(), appeal_payload, "key-1", "k")
    assert again == first
    with uow() as u:
        assert len(u.session.execute(select(Appeal)).all()) == 1
    assert len(outbox_events(uow)) == 1


def test_a_group_commit_stores_each_good_appeal_and_refuses_a_bad_one_alone(intake_db, appeal_payload):
    """Submissions that arrive together share one transaction; an unknown town refuses its own
    appeal only, a key seen before or twice in the batch gets the first answer, and each stored
    appeal has its own audit row by its own submitter."""
    from wuji_common import audit
    from wuji_common.auth import Caller
    _, uow = intake_db
    earlier = handlers.submit_appeal(uow(), appeal_payload, "key-before", "k")
    check = handlers.check_submission
    unknown_town = {**appeal_payload, "location": {"town_code": "370404999"}}
    clerk, citizen = Caller("staff:1", "unit_clerk", unit_code="U1"), Caller("anonymous", "anonymous")
    results = handlers.submit_appeals(uow(), [
        handlers.Submission(check(appeal_payload), "key-a", audit=(clerk, "submit_appeal")),
        handlers.Submission(check(unknown_town), "key-b", audit=(citizen, "submit_appeal")),
        handlers.Submission(check(appeal_payload), "key-before", audit=(citizen, "submit_appeal")),
        handlers.Submission(check(appeal_payload), "key-a", audit=(citizen, "submit_appeal")),
        handlers.Submission(check(appeal_payload), None, audit=(citizen, "submit_appeal")),
    ], citizen_key="k")
    assert isinstance(results[1], ValidationError) and "location" in results[1].fields
    assert results[2] == earlier and results[3] == results[0]
    stored = {results[0]["case_no"], results[4]["case_no"]}
    assert len(stored) == 2 and earlier["case_no"] not in stored
    with uow() as u:
        assert len(u.session.execute(select(Appeal)).all()) == 3
    assert sorted(e["case_no"] for e in outbox_events(uow)) == sorted(stored | {earlier["case_no"]})
    log = {e["object_id"]: e["subject"] for e in audit.read(uow(), Caller("s", "supervisor"))}
    assert log == {results[0]["case_no"]: "staff:1", results[4]["case_no"]: "anonymous"}
    # the same key again later: the first answer, nothing written
    assert handlers.submit_appeals(uow(), [handlers.Submission(check(appeal_payload), "key-a")],
                                   citizen_key="k") == [results[0]]
    assert len(outbox_events(uow)) == 3


@pytest.mark.parametrize("mutate, field_path", [
    (lambda p: p.pop("title"), ("title",)),
    (lambda p: p.update(title="长" * 101), ("title",)),
    (lambda p: p.update(channel="fax"), ("channel",)),
    (lambda p: p["citizen"].update(phone="12345"), ("citizen", "phone")),
    (lambda p: p["citizen"].update(id_number="110105194912310021"), ("citizen", "id_number")),
    (lambda p: p["location"].update(town_code="370404999"), ("location", "town_code")),
    (lambda p: p["location"].update(village="370404102201"), ("location", "village")),
    (lambda p: p.update(content=123), ("content",)),
    (lambda p: p.pop("citizen"), ("citizen",)),
    (lambda p: p.update(extra="x"), ("extra",)),
])
def test_bad_input_names_the_field_and_writes_nothing(intake_db, appeal_payload, mutate, field_path):
    _, uow = intake_db
    mutate(appeal_payload)
    with pytest.raises(ValidationError) as err:
        handlers.submit_appeal(uow(), appeal_payload, citizen_key="k")
    node = err.value.fields
    for key in field_path:
        assert key in node, err.value.fields
        node = node[key]
    with uow() as u:
        assert u.session.execute(select(Appeal)).first() is None
    assert outbox_events(uow) == []


def test_anonymous_appeal_keeps_no_contact(intake_db, appeal_payload):
    _, uow = intake_db
    appeal_payload.pop("citizen")
    appeal_payload["anonymous"] = True
    appeal_payload["location"].pop("address")
    result = handlers.submit_appeal(uow(), appeal_payload, citizen_key="k")
    with uow() as u:
        assert u.session.get(CitizenContact, result["case_no"]) is None
    assert handlers.staff_view(uow(), result["case_no"])["citizen"] is None
    [event] = outbox_events(uow)
    assert event["data"]["anonymous"] is True and event["data"]["citizen_ref"] is None


def test_staff_view_masks_personal_data(intake_db, appeal_payload):
    _, uow = intake_db
    case_no = handlers.submit_appeal(uow(), appeal_payload, citizen_key="k")["case_no"]
    citizen = handlers.staff_view(uow(), case_no)["citizen"]
    assert citizen == {"name": "张*", "phone": "138****5678", "id_number": "1101**********002X"}


def test_public_view_needs_the_right_token(intake_db, appeal_payload):
    _, uow = intake_db
    r = handlers.submit_appeal(uow(), appeal_payload, citizen_key="k")
    view = handlers.public_view(uow(), r["case_no"], r["tracking_token"])
    assert view["status_text"] == "已受理" and view["timeline"][0]["text"] == "您的诉求已登记受理"
    assert "citizen" not in view
    with pytest.raises(NotFound):
        handlers.public_view(uow(), r["case_no"], "wrong")
    with pytest.raises(NotFound):
        handlers.public_view(uow(), "YC20000101000001", r["tracking_token"])


def order_event(case_no, event_type, **data):
    from wuji_common.events import make_event
    base = {"order_no": "GD1", "unit_code": "grid-370404101201", "town_code": "370404101",
            "category": "道路", "status": "dispatched"}
    extra = {
        "order_dispatched": {"unit_name": "金寺村网格员", "level": "grid", "accept_due_at": "2026-11-26T08:00:00+00:00",
                             "resolve_due_at": "2026-11-30T08:00:00+00:00", "policy": "p", "router_version": "r", "title": "t"},
        "order_accepted": {"status": "accepted", "accepted_at": "2026-11-25T09:00:00+00:00", "within_deadline": True},
        "order_resolved": {"status": "resolved", "resolution": "已修复", "resolved_at": "2026-11-25T10:00:00+00:00",
                           "within_deadline": True},
        "order_closed": {"status": "closed", "satisfaction": "satisfied", "closed_at": "2026-11-25T11:00:00+00:00"},
        "order_returned": {"status": "returned", "reason": "不属于本单位职责"},
    }[event_type]
    return make_event(event_type, case_no, {**base, **extra, **data})


def test_rating_follows_the_order_to_resolution(intake_db, appeal_payload):
    _, uow = intake_db
    r = handlers.submit_appeal(uow(), appeal_payload, citizen_key="k")
    case_no, token = r["case_no"], r["tracking_token"]
    with pytest.raises(InvalidTransition):
        handlers.rate_appeal(uow(), case_no, token, {"satisfaction": "satisfied"})
    for event_type in ("order_dispatched", "order_accepted", "order_resolved"):
        assert handlers.apply_order_event(uow(), "intake.test", order_event(case_no, event_type))
    view = handlers.public_view(uow(), case_no, token)
    assert view["status"] == "resolved" and view["can_rate"]
    assert "已派至金寺村网格员办理" in [t["text"] for t in view["timeline"]]
    with pytest.raises(ValidationError) as err:
        handlers.rate_appeal(uow(), case_no, token, {"satisfaction": "meh"})
    assert "satisfaction" in err.value.fields
    rated = handlers.rate_appeal(uow(), case_no, token, {"satisfaction": "unsatisfied"}, "r1")
    assert handlers.rate_appeal(uow(), case_no, token, {"satisfaction": "unsatisfied"}, "r1") == rated
    assert [e["type"] for e in outbox_events(uow)] == ["appeal_received", "appeal_rated"]


def test_order_events_of_one_case_projected_at_once_do_not_undo_each_other(intake_db, appeal_payload):
    """accepted and resolved come off different queues moments apart and are projected in two
    transactions at once: the one that commits last must not write back the status it read."""
    import threading
    url, uow = intake_db
    if not url.startswith("postgresql"):
        pytest.skip("SQLite runs one writer at a time")
    case_no = handlers.submit_appeal(uow(), appeal_payload, citizen_key="k")["case_no"]
    handlers.apply_order_event(uow(), "intake.test", order_event(case_no, "order_dispatched"))
    resolved_done = threading.Event()

    def accepted_waits(_uow, _envelopes):
        # holds its transaction open; if it held no lock, resolved would commit meanwhile
        resolved_done.wait(timeout=1.0)
    accepted = threading.Thread(target=handlers.apply_order_events, args=(
        uow(), "intake.test", [order_event(case_no, "order_accepted")], accepted_waits))
    accepted.start()
    time.sleep(0.2)
    handlers.apply_order_events(uow(), "intake.test", [order_event(case_no, "order_resolved")])
    resolved_done.set()
    accepted.join()
    assert handlers.staff_view(uow(), case_no)["status"] == "resolved"


def test_duplicate_order_event_is_applied_once(intake_db, appeal_payload):
    _, uow = intake_db
    case_no = handlers.submit_appeal(uow(), appeal_payload, citizen_key="k")["case_no"]
    event = order_event(case_no, "order_dispatched")
    assert handlers.apply_order_event(uow(), "intake.test", event) is True
    assert handlers.apply_order_event(uow(), "intake.test", event) is False
    assert len(handlers.staff_view(uow(), case_no)["timeline"]) == 2


def test_a_batch_of_order_events_is_applied_once_each_or_not_at_all(intake_db, appeal_payload):
    """The batch handler's path: several cases in one transaction, an event twice in its batch and
    again later applied once; an event for an unknown case fails the batch and leaves nothing."""
    _, uow = intake_db
    cases = [handlers.submit_appeal(uow(), appeal_payload, citizen_key="k")["case_no"] for _ in range(3)]
    batch = [order_event(case_no, "order_dispatched") for case_no in cases]
    assert handlers.apply_order_events(uow(), "intake.test", batch + batch[:1]) == 3
    assert handlers.apply_order_events(uow(), "intake.test", batch) == 0
    for case_no in cases:
        view = handlers.staff_view(uow(), case_no)
        assert view["status"] == "dispatched" and len(view["timeline"]) == 2
    accepted = [order_event(case_no, "order_accepted") for case_no in cases]
    with pytest.raises(NotFound):
        handlers.apply_order_events(uow(), "intake.test", accepted + [order_event("YC19990101000001",
                                                                                  "order_accepted")])
    assert {handlers.staff_view(uow(), c)["status"] for c in cases} == {"dispatched"}
    assert handlers.apply_order_events(uow(), "intake.test", accepted) == 3


def test_order_events_are_ordered_among_themselves_not_against_intakes_own_times(intake_db, appeal_payload):
    """Order events carry triage's clock, to the millisecond; the submission and the rating carry
    intake's, to the microsecond. With triage's clock a second behind, the case still goes round the
    loop in intake's view, and a late event still does not turn the status back."""
    _, uow = intake_db
    r = handlers.submit_appeal(uow(), appeal_payload, citizen_key="k")
    case_no, token = r["case_no"], r["tracking_token"]
    now = datetime.now(timezone.utc)

    def raised(event_type, seconds_ago):
        event = order_event(case_no, event_type)
        event["occurred_at"] = (now - timedelta(seconds=seconds_ago)).isoformat(timespec="milliseconds")
        return event
    handlers.apply_order_event(uow(), "intake.test", raised("order_dispatched", 1.0))
    assert handlers.staff_view(uow(), case_no)["status"] == "dispatched"
    handlers.apply_order_event(uow(), "intake.test", raised("order_resolved", 0.6))
    handlers.rate_appeal(uow(), case_no, token, {"satisfaction": "satisfied"})
    assert handlers.staff_view(uow(), case_no)["status"] == "rated"
    handlers.apply_order_event(uow(), "intake.test", raised("order_closed", 0.4))
    assert handlers.staff_view(uow(), case_no)["status"] == "closed"
    handlers.apply_order_event(uow(), "intake.test", raised("order_accepted", 0.8))  # late
    view = handlers.staff_view(uow(), case_no)
    assert view["status"] == "closed" and len(view["timeline"]) == 6


def test_order_events_of_the_same_millisecond_apply_in_the_order_of_the_lifecycle(intake_db, appeal_payload):
    """Events carry milliseconds: a return and the new dispatch of one transaction, or events built
    back to back, share one. Whatever order they arrive in, the later step of the case wins."""
    _, uow = intake_db
    same = (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat(timespec="milliseconds")
    arrivals = [(("order_dispatched", "order_accepted", "order_resolved"), "resolved"),
                (("order_resolved", "order_accepted", "order_dispatched"), "resolved"),
                (("order_returned", "order_dispatched"), "dispatched"),
                (("order_dispatched", "order_returned"), "dispatched")]
    for event_types, status in arrivals:
        case_no = handlers.submit_appeal(uow(), appeal_payload, citizen_key="k")["case_no"]
        for event_type in event_types:
            event = order_event(case_no, event_type)
            event["occurred_at"] = same
            handlers.apply_order_event(uow(), "intake.test", event)
        assert handlers.staff_view(uow(), case_no)["status"] == status, event_types


def test_a_late_event_does_not_turn_the_status_back(intake_db, appeal_payload):
    _, uow = intake_db
    case_no = handlers.submit_appeal(uow(), appeal_payload, citizen_key="k")["case_no"]
    accepted = order_event(case_no, "order_accepted")
    resolved = order_event(case_no, "order_resolved")
    soon = datetime.now(timezone.utc)
    accepted["occurred_at"] = (soon + timedelta(hours=1)).isoformat()
    resolved["occurred_at"] = (soon + timedelta(hours=2)).isoformat()
    handlers.apply_order_event(uow(), "intake.test", resolved)
    handlers.apply_order_event(uow(), "intake.test", accepted)  # older, delivered later
    assert handlers.staff_view(uow(), case_no)["status"] == "resolved"


def test_reception_level_travels_with_the_appeal(intake_db, appeal_payload):
    _, uow = intake_db
    handlers.submit_appeal(uow(), {**appeal_payload, "reception_level": "district"}, citizen_key="k")
    [event] = outbox_events(uow)
    assert event["data"]["reception_level"] == "district"
    with pytest.raises(ValidationError) as err:
        handlers.submit_appeal(uow(), {**appeal_payload, "reception_level": "province"}, citizen_key="k")
    assert "reception_level" in err.value.fields


def test_the_migrations_build_exactly_the_models(intake_db):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from intake.models import metadata
    engine = create_engine(intake_db[0])
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    engine.dispose()


def test_the_order_event_time_of_appeals_stored_before_it_was_kept(db_url):
    """Migration 0007: appeals whose status came from an order event take their last change as the
    time of that event, so that a late event arriving after the upgrade still cannot turn them back."""
    from sqlalchemy import create_engine, text

    from pathlib import Path

    from wuji_common.migrations import upgrade
    migrations = Path(handlers.__file__).parent / "migrations"
    upgrade(migrations, db_url, "0006")
    engine = create_engine(db_url)
    columns = "case_no, channel, title, content, town_code, attachments, anonymous, hide_identity, " \
              "tracking_token_hash, status, received_at, updated_at, version"
    with engine.begin() as conn:
        for n, status in enumerate(("received", "accepted")):
            conn.execute(text(f"INSERT INTO appeals ({columns}) VALUES (:c, 'web', 't', 'c', '370404101', "
                              "'[]', false, false, 'h', :s, :at, :at, 1)"),
                         {"c": f"YC2026112500000{n}", "s": status, "at": datetime(2026, 11, 25, 8, n, tzinfo=timezone.utc)})
    upgrade(migrations, db_url)
    with engine.connect() as conn:
        stored = dict(conn.execute(text("SELECT status, order_event_at FROM appeals")).all())
    engine.dispose()
    accepted = stored["accepted"]  # SQLite hands back the text it keeps
    accepted = datetime.fromisoformat(accepted) if isinstance(accepted, str) else accepted
    assert stored["received"] is None
    assert handlers._aware(accepted) == datetime(2026, 11, 25, 8, 1, tzinfo=timezone.utc)

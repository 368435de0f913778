"""notify's use cases on a real database (SQLite and PostgreSQL), with fake channels that record
what they were asked to send and fail on cue."""
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select, text

from notify import content, handlers
from notify.domain import PermanentError, TransientError
from notify.handlers import Outside, Policy
from notify.models import Delivery, UnitContact, metadata
from wuji_common.cli import unit_of_work_for
from wuji_common.db import UnitOfWork, make_engine, session_factory
from wuji_common.errors import InvalidTransition, NotFound, RpcTimeout, ValidationError
from wuji_common.events import make_event
from wuji_common.migrations import upgrade
from wuji_common.testing import backends, drop_postgres_database, new_postgres_database

MIGRATIONS = Path(handlers.__file__).parent / "migrations"
CITIZEN = {"name": "张三", "phone": "13812345678", "email": "zhangsan@example.com"}
FAST = Policy(retry_delays=(0, 0), claim_seconds=60, portal_url="http://portal.test")


@pytest.fixture(scope="module", params=backends())
def db_url(request, tmp_path_factory):
    """One migrated database per backend for this module (creating one per test would cost a second
    each on PostgreSQL); every test starts from emptied tables."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('notify') / 'notify.db'}"
        upgrade(MIGRATIONS, url)
        yield url
        return
    url, name = new_postgres_database()
    upgrade(MIGRATIONS, url)
    yield url
    drop_postgres_database(name)


@pytest.fixture
def uow(db_url):
    engine = make_engine(db_url)
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
    uow = UnitOfWork(session_factory(engine), metadata, "notify")
    handlers.load_unit_contacts(uow, content.unit_contacts())
    yield uow
    engine.dispose()


class FakeChannel:
    """Records every send; raises the queued errors first, one per send."""

    def __init__(self, *errors):
        self.sent = []
        self.errors = list(errors)

    def send(self, outgoing):
        if self.errors:
            raise self.errors.pop(0)
        self.sent.append(outgoing)


class Contacts:
    """intake's contact_for_notification, as a dict (None: anonymous); can fail like a time-out."""

    def __init__(self, contacts, failures=0):
        self.contacts = contacts
        self.failures = failures
        self.calls = 0

    def __call__(self, case_no):
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise RpcTimeout("intake.contact_for_notification did not answer within 5s")
        return self.contacts.get(case_no)


def new_case():
    return f"YC20261125{uuid.uuid4().int % 10**6:06d}"


def received(case_no, anonymous=False):
    return make_event("appeal_received", case_no, {
        "channel": "web", "title": "小区路灯不亮", "content": "门口路灯坏了，电话13812345678",
        "town_code": "370404001", "anonymous": anonymous, "received_at": "2026-11-25T02:00:00+00:00"})


def dispatched(case_no, unit_code="dept-housing"):
    return make_event("order_dispatched", case_no, {
        "order_no": f"GD{case_no[2:]}", "unit_code": unit_code, "town_code": "370404001",
        "category": "housing", "status": "dispatched", "unit_name": "区住房和城乡建设局",
        "level": "district", "accept_due_at": "2026-11-25T04:00:00+00:00",
        "resolve_due_at": "2026-11-30T04:00:00+00:00", "policy": "rules", "router_version": "1",
        "title": "小区路灯不亮"})


def resolved(case_no):
    return make_event("order_resolved", case_no, {
        "order_no": f"GD{case_no[2:]}", "unit_code": "dept-housing", "town_code": "370404001",
        "category": "housing", "status": "resolved", "resolution": "已更换灯泡 <LED>",
        "resolved_at": "2026-11-26T08:00:00+00:00", "within_deadline": True})


def record(uow, envelope):
    return handlers.record_event(uow, "notify.test", envelope, content.rules())


def outside(contacts=None, email=None, webhook=None):
    return Outside(citizen_contact=contacts or Contacts({}),
                   channels={"email": email or FakeChannel(), "webhook": webhook or FakeChannel()})


def rows(uow, case_no):
    with uow:
        found = uow.session.execute(select(Delivery).where(Delivery.case_no == case_no)
                                    .order_by(Delivery.channel)).scalars().all()
        uow.session.expunge_all()  # readable after the unit of work ends
        return found


# --- reservation --------------------------------------------------------------------------------------

def test_an_event_reserves_one_pending_delivery_per_recipient_and_channel(uow):
    case_no = new_case()
    [delivery_id] = record(uow, received(case_no))
    [row] = rows(uow, case_no)
    assert (row.id, row.recipient, row.channel, row.status, row.attempts) == \
        (delivery_id, "citizen", "email", "pending", 0)
    assert row.context == {"case_no": case_no, "title": "小区路灯不亮",
                           "received_at": "2026-11-25T02:00:00+00:00"}


def test_a_duplicate_event_reserves_nothing(uow):
    case_no = new_case()
    envelope = received(case_no)
    assert len(record(uow, envelope)) == 1
    assert record(uow, envelope) == []
    assert len(rows(uow, case_no)) == 1


def test_the_unique_key_holds_even_without_the_inbox(uow):
    """Two consumers (or a lost inbox row) cannot reserve the same recipient and channel twice."""
    envelope = received(new_case())
    handlers.record_event(uow, "notify.one", envelope, content.rules())
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        handlers.record_event(uow, "notify.two", envelope, content.rules())


def test_anonymous_appeal_is_recorded_as_skipped_and_nothing_is_sent(uow):
    case_no = new_case()
    assert record(uow, received(case_no, anonymous=True)) == []
    [row] = rows(uow, case_no)
    assert (row.status, row.reason) == ("skipped", "anonymous")


def test_a_unit_without_webhook_gets_only_email(uow):
    case_no = new_case()
    ids = record(uow, dispatched(case_no))
    assert [(r.recipient, r.channel) for r in rows(uow, case_no)] == [("unit:dept-housing", "email")]
    assert len(ids) == 1


def test_a_unit_notify_does_not_know_is_skipped_at_send_time(uow):
    case_no = new_case()
    [delivery_id] = record(uow, dispatched(case_no, unit_code="dept-nowhere"))
    assert handlers.deliver(uow, delivery_id, outside(), FAST) == ("email", "skipped")
    assert rows(uow, case_no)[0].reason == "unknown_unit"


def test_a_unit_with_webhook_gets_both(uow):
    handlers.set_unit_contact(uow, {"unit_code": "dept-housing", "webhook_url": "https://hooks.test/x"})
    case_no = new_case()
    assert len(record(uow, dispatched(case_no))) == 2
    assert [r.channel for r in rows(uow, case_no)] == ["email", "webhook"]


# --- sending ------------------------------------------------------------------------------------------

def test_citizen_receipt_is_sent_once_and_the_log_keeps_only_a_masked_address(uow, db_url):
    case_no = new_case()
    [delivery_id] = record(uow, received(case_no))
    email = FakeChannel()
    out = outside(Contacts({case_no: CITIZEN}), email=email)
    assert handlers.deliver(uow, delivery_id, out, FAST) == ("email", "sent")
    assert handlers.deliver(uow, delivery_id, out, FAST) is None  # sent already
    assert handlers.send_due(uow, out, FAST) == []
    [sent] = email.sent
    assert sent.address.to == "zhangsan@example.com"
    assert sent.delivery_id == delivery_id
    assert sent.message.text.startswith("尊敬的张三，您好：")
    assert case_no in sent.message.subject
    [log] = handlers.deliveries_for_case(uow, case_no)
    assert (log["status"], log["address"], log["attempts"]) == ("sent", "z***@example.com", 1)
    assert "context" not in log
    # no trace of the citizen's contact anywhere in notify's database
    with uow:
        dump = " ".join(str(r) for table in ("deliveries", "idempotency_keys", "processed_events")
                        for r in uow.session.execute(text(f"SELECT * FROM {table}")).all())
    assert "zhangsan@" not in dump and "13812345678" not in dump and "张三" not in dump


def test_citizen_without_email_or_contact_is_skipped_with_a_reason(uow):
    no_email, anonymous_later = new_case(), new_case()
    out = outside(Contacts({no_email: {"name": "李四", "phone": "13900000000", "email": None}}))
    for case_no in (no_email, anonymous_later):
        [delivery_id] = record(uow, resolved(case_no))
        assert handlers.deliver(uow, delivery_id, out, FAST) == ("email", "skipped")
    assert rows(uow, no_email)[0].reason == "no_email"
    assert rows(uow, anonymous_later)[0].reason == "no_contact"
    assert out.channels["email"].sent == []


def test_result_notice_escapes_the_resolution_in_html(uow):
    case_no = new_case()
    [delivery_id] = record(uow, resolved(case_no))
    email = FakeChannel()
    handlers.deliver(uow, delivery_id, outside(Contacts({case_no: CITIZEN}), email=email), FAST)
    message = email.sent[0].message
    assert "已更换灯泡 <LED>" in message.text
    assert "已更换灯泡 &lt;LED&gt;" in message.html
    assert "评价" in message.subject and "http://portal.test" in message.text


def test_unit_notice_goes_to_the_units_address_with_its_secret(uow):
    unit = handlers.set_unit_contact(uow, {"unit_code": "dept-housing",
                                           "webhook_url": "https://hooks.test/x"})
    case_no = new_case()
    email, webhook = FakeChannel(), FakeChannel()
    for delivery_id in record(uow, dispatched(case_no)):
        handlers.deliver(uow, delivery_id, outside(email=email, webhook=webhook), FAST)
    assert email.sent[0].address.to == "dept-housing@demo.wuji.local"
    assert email.sent[0].message.text.startswith("区住房和城乡建设局：")
    assert (webhook.sent[0].address.to, webhook.sent[0].address.secret) == \
        ("https://hooks.test/x", unit["webhook_secret"])
    assert {r.status for r in rows(uow, case_no)} == {"sent"}


def test_transient_failures_are_retried_then_the_delivery_is_dead(uow):
    case_no = new_case()
    [delivery_id] = record(uow, received(case_no))
    email = FakeChannel(TransientError("HTTP 503"), TransientError("ConnectionRefusedError"),
                        TransientError("SMTPServerDisconnected"))
    out = outside(Contacts({case_no: CITIZEN}), email=email)
    assert handlers.deliver(uow, delivery_id, out, FAST) == ("email", "pending")
    assert handlers.send_due(uow, out, FAST) == [("email", "pending"), ("email", "failed")]
    [row] = rows(uow, case_no)
    assert (row.status, row.attempts, row.last_error) == ("failed", 3, "SMTPServerDisconnected")
    assert email.sent == []
    assert [d["delivery_id"] for d in handlers.failed_deliveries(uow)] == [delivery_id]


def test_a_retry_waits_for_its_backoff(uow):
    case_no = new_case()
    [delivery_id] = record(uow, received(case_no))
    out = outside(Contacts({case_no: CITIZEN}), email=FakeChannel(TransientError("HTTP 503")))
    slow = Policy(retry_delays=(3600,), portal_url="")
    assert handlers.deliver(uow, delivery_id, out, slow) == ("email", "pending")
    assert handlers.send_due(uow, out, slow) == []  # not due for an hour
    assert rows(uow, case_no)[0].next_attempt_at is not None


def test_one_sweep_claims_nothing_after_its_time_budget(uow):
    for _ in range(3):
        record(uow, received(new_case()))
    ticks = iter([0, 1, 2, 99, 99])
    sent = handlers.send_due(uow, outside(), FAST, budget_seconds=5, clock=lambda: next(ticks))
    assert len(sent) == 2


def test_intake_not_answering_is_a_transient_failure(uow):
    case_no = new_case()
    [delivery_id] = record(uow, received(case_no))
    contacts = Contacts({case_no: CITIZEN}, failures=1)
    out = outside(contacts)
    assert handlers.deliver(uow, delivery_id, out, FAST) == ("email", "pending")
    assert rows(uow, case_no)[0].last_error == "RpcTimeout"
    assert handlers.send_due(uow, out, FAST) == [("email", "sent")]
    assert contacts.calls == 2


def test_a_permanent_failure_is_dead_at_once_and_replay_sends_it(uow):
    case_no = new_case()
    [delivery_id] = record(uow, received(case_no))
    email = FakeChannel(PermanentError("SMTP recipient refused [550]"))
    out = outside(Contacts({case_no: CITIZEN}), email=email)
    assert handlers.deliver(uow, delivery_id, out, FAST) == ("email", "failed")
    assert handlers.send_due(uow, out, FAST) == []
    replayed = handlers.replay(uow, delivery_id, idempotency_key="r-1")
    assert (replayed["status"], replayed["attempts"]) == ("pending", 0)
    assert handlers.replay(uow, delivery_id, idempotency_key="r-1") == replayed  # a retried call
    assert handlers.deliver(uow, delivery_id, out, FAST) == ("email", "sent")
    assert [o.delivery_id for o in email.sent] == [delivery_id]  # same id: receivers can dedupe
    with pytest.raises(InvalidTransition):
        handlers.replay(uow, delivery_id)
    with pytest.raises(NotFound):
        handlers.replay(uow, str(uuid.uuid4()))


def test_a_delivery_left_claimed_by_a_crash_is_sent_after_its_claim_expires(uow):
    case_no = new_case()
    [delivery_id] = record(uow, received(case_no))
    crashed = handlers.claim_delivery(uow, delivery_id, Policy(claim_seconds=0))  # then the process died
    assert crashed.attempts == 1
    email = FakeChannel()
    out = outside(Contacts({case_no: CITIZEN}), email=email)
    assert handlers.send_due(uow, out, FAST) == [("email", "sent")]
    assert rows(uow, case_no)[0].attempts == 2
    # the crashed sender's late outcome does not overwrite the one that superseded it
    assert handlers.record_outcome(uow, crashed, handlers.Outcome("failed", error="x"), FAST) is None
    assert rows(uow, case_no)[0].status == "sent"
    assert len(email.sent) == 1


def test_only_one_sender_wins_a_claim(uow):
    [delivery_id] = record(uow, received(new_case()))
    assert handlers.claim_delivery(uow, delivery_id, FAST) is not None
    assert handlers.claim_delivery(uow, delivery_id, FAST) is None
    assert handlers.claim_next_due(uow, FAST) is None


def test_skip_locked_lets_two_sweepers_take_different_deliveries(uow, db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("row locks are PostgreSQL's")
    first = record(uow, received(new_case()))[0]
    second = record(uow, received(new_case()))[0]
    holder = unit_of_work_for("notify", metadata, db_url)
    with holder:  # another instance is in the middle of claiming the oldest delivery
        holder.session.execute(select(Delivery).where(Delivery.id == first).with_for_update())
        claim = handlers.claim_next_due(uow, FAST)
    holder.session.bind.dispose()
    assert claim.id == second


# --- unit contacts ------------------------------------------------------------------------------------

def test_set_unit_contact_makes_a_secret_once_and_keeps_it(uow):
    first = handlers.set_unit_contact(uow, {"unit_code": "dept-housing",
                                            "webhook_url": "http://127.0.0.1:9/hook"}, "k-1")
    assert len(first["webhook_secret"]) == 64 and first["webhook_secret_set"]
    assert handlers.set_unit_contact(uow, {"unit_code": "dept-housing",
                                           "webhook_url": "http://127.0.0.1:9/hook"}, "k-1") == first
    changed = handlers.set_unit_contact(uow, {"unit_code": "dept-housing", "email": "zj@yc.test"})
    assert "webhook_secret" not in changed  # shown once only
    with uow:
        unit = uow.session.get(UnitContact, "dept-housing")
        assert (unit.email, unit.webhook_secret) == ("zj@yc.test", first["webhook_secret"])


def test_set_unit_contact_with_own_secret_and_removal(uow):
    result = handlers.set_unit_contact(uow, {"unit_code": "town-370404001", "webhook_url":
                                             "https://town.test/h", "webhook_secret": "s" * 40})
    assert "webhook_secret" not in result and result["webhook_secret_set"]
    removed = handlers.set_unit_contact(uow, {"unit_code": "town-370404001", "webhook_url": ""})
    assert (removed["webhook_url"], removed["webhook_secret_set"]) == (None, False)


@pytest.mark.parametrize("payload, field", [
    ({"unit_code": "dept-housing", "webhook_url": "ftp://x.test/h"}, "webhook_url"),
    ({"unit_code": "dept-housing", "email": "not-an-address"}, "email"),
    ({"unit_code": "dept-housing", "webhook_secret": "short"}, "webhook_secret"),
])
def test_set_unit_contact_rejects_bad_input(uow, payload, field):
    with pytest.raises(ValidationError) as err:
        handlers.set_unit_contact(uow, payload)
    assert field in err.value.fields


def test_set_unit_contact_of_an_unknown_unit(uow):
    with pytest.raises(NotFound):
        handlers.set_unit_contact(uow, {"unit_code": "dept-nowhere", "email": "a@b.test"})


def test_reloading_reference_keeps_what_a_unit_configured(uow):
    handlers.set_unit_contact(uow, {"unit_code": "dept-housing", "webhook_url": "https://h.test/x"})
    assert handlers.load_unit_contacts(uow, content.unit_contacts()) == 47
    view = handlers.get_unit_contact(uow, "dept-housing")
    assert (view["webhook_url"], view["webhook_secret_set"]) == ("https://h.test/x", True)

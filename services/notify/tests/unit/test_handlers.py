"""notify's use cases on a real database (SQLite and PostgreSQL), with fake channels that record
what they were asked to send and fail on cue."""
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from notify import content, handlers
from notify.domain import PermanentError, ProviderDown, TransientError
from notify.handlers import Outside, Policy
from notify.models import Delivery, DeliveryAttempt, Provider, metadata
from wuji_common.cli import unit_of_work_for
from wuji_common.db import UnitOfWork, make_engine, session_factory
from wuji_common.errors import InvalidTransition, NotFound, RpcTimeout, ValidationError
from wuji_common.events import make_event
from wuji_common.migrations import upgrade
from wuji_common.testing import backends, drop_postgres_database, new_postgres_database

MIGRATIONS = Path(handlers.__file__).parent / "migrations"
CITIZEN = {"name": "张三", "phone": "13812345678", "email": "zhangsan@example.com", "wechat_openid": None}
FAST = Policy(max_attempts=3, retry_base=0, retry_cap=0, provider_base=0, provider_cap=0, claim_seconds=60,
              portal_url="http://portal.test")
HELD = Policy(max_attempts=3, retry_base=0, retry_cap=0, provider_base=3600, provider_cap=3600,
              claim_seconds=60)
EMAIL_ONLY = ("inbox", "email", "webhook")


@pytest.fixture(scope="module", params=backends())
def db_url(request, tmp_path_factory):
    """One migrated database per backend for this module; every test starts from emptied tables."""
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

    def __init__(self, *errors, available=True):
        self.sent = []
        self.errors = list(errors)
        self.available = available

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


def received(case_no, anonymous=False, at=None, citizen_ref="ref-zhangsan"):
    return make_event("appeal_received", case_no, {
        "channel": "web", "title": "小区路灯不亮", "content": "门口路灯坏了，电话13812345678",
        "town_code": "370404001", "anonymous": anonymous, "citizen_ref": None if anonymous else citizen_ref,
        "received_at": "2026-11-25T02:00:00+00:00"}, occurred_at=at)


def dispatched(case_no, unit_code="dept-housing", at=None):
    return make_event("order_dispatched", case_no, {
        "order_no": f"GD{case_no[2:]}", "unit_code": unit_code, "town_code": "370404001",
        "category": "housing", "status": "dispatched", "unit_name": "区住房和城乡建设局",
        "level": "district", "accept_due_at": "2026-11-25T04:00:00+00:00",
        "resolve_due_at": "2026-11-30T04:00:00+00:00", "policy": "rules", "router_version": "1",
        "title": "小区路灯不亮"}, occurred_at=at)


def resolved(case_no):
    return make_event("order_resolved", case_no, {
        "order_no": f"GD{case_no[2:]}", "unit_code": "dept-housing", "town_code": "370404001",
        "category": "housing", "status": "resolved", "resolution": "已更换灯泡 <LED>",
        "resolved_at": "2026-11-26T08:00:00+00:00", "within_deadline": True})


def record(uow, envelope, available=EMAIL_ONLY, policy=FAST):
    return handlers.record_event(uow, "notify.test", envelope, content.rules(), available, policy)


def outside(contacts=None, **channels):
    made = {name: channels.get(name) or FakeChannel() for name in ("inbox", "wechat", "sms", "email", "webhook")}
    return Outside(citizen_contact=contacts or Contacts({}), channels=made)


def rows(uow, case_no=None, **where):
    with uow:
        query = select(Delivery).order_by(Delivery.created_at, Delivery.channel)
        if case_no:
            query = query.where(Delivery.case_no == case_no)
        for k, v in where.items():
            query = query.where(getattr(Delivery, k) == v)
        found = uow.session.execute(query).scalars().all()
        uow.session.expunge_all()
        return found


def citizen_rows(uow, case_no):
    return [r for r in rows(uow, case_no) if r.recipient == "citizen"]


# --- reservation --------------------------------------------------------------------------------------

def test_an_event_reserves_the_first_channel_of_each_notice_once(uow):
    case_no = new_case()
    envelope = received(case_no)
    ids = record(uow, envelope, available=("inbox", "sms", "email"))
    [row] = citizen_rows(uow, case_no)
    assert (row.channel, row.fallback, row.status, row.provider) == ("sms", ["email"], "pending", "sms")
    assert row.id in ids
    assert row.context == {"case_no": case_no, "title": "小区路灯不亮", "received_at": "2026-11-25T02:00:00+00:00"}
    assert record(uow, envelope) == []  # the same event again
    assert len(citizen_rows(uow, case_no)) == 1


def test_the_unique_key_holds_even_without_the_inbox(uow):
    envelope = received(new_case())
    handlers.record_event(uow, "notify.one", envelope, content.rules(), EMAIL_ONLY)
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        handlers.record_event(uow, "notify.two", envelope, content.rules(), EMAIL_ONLY)


def test_anonymous_appeal_is_recorded_as_skipped(uow):
    case_no = new_case()
    record(uow, received(case_no, anonymous=True))
    [row] = citizen_rows(uow, case_no)
    assert (row.status, row.reason) == ("skipped", "anonymous")


# --- sending and falling back -------------------------------------------------------------------------

def test_citizen_receipt_is_sent_once_and_nothing_personal_is_kept(uow):
    case_no = new_case()
    [delivery_id] = record(uow, received(case_no))
    email = FakeChannel()
    out = outside(Contacts({case_no: CITIZEN}), email=email)
    assert handlers.deliver(uow, delivery_id, out, FAST) == [("email", "sent")]
    assert handlers.deliver(uow, delivery_id, out, FAST) == []  # sent already
    assert handlers.send_due(uow, out, FAST) == []
    [sent] = email.sent
    assert sent.address.to == "zhangsan@example.com" and sent.message.text.startswith("尊敬的张三，您好：")
    [log] = handlers.deliveries_for_case(uow, case_no)
    assert (log["status"], log["address"], log["attempts"]) == ("sent", "z***@example.com", 1)
    assert [a["outcome"] for a in log["attempt_log"]] == ["sent"]
    with uow:
        dump = " ".join(str(r) for table in ("deliveries", "delivery_attempts", "idempotency_keys",
                                             "processed_events", "case_citizens")
                        for r in uow.session.execute(text(f"SELECT * FROM {table}")).all())
    assert "zhangsan@" not in dump and "13812345678" not in dump and "张三" not in dump


def test_no_phone_falls_through_to_the_next_channel_at_once(uow):
    case_no = new_case()
    [delivery_id] = [i for i in record(uow, received(case_no), available=("sms", "email"))]
    sms, email = FakeChannel(), FakeChannel()
    out = outside(Contacts({case_no: {**CITIZEN, "phone": None}}), sms=sms, email=email)
    assert handlers.deliver(uow, delivery_id, out, FAST) == [("sms", "skipped"), ("email", "sent")]
    skipped, sent = citizen_rows(uow, case_no)
    assert (skipped.reason, sent.fallback_of, sms.sent) == ("no_sms", skipped.id, [])


def test_a_permanent_failure_is_dead_listed_and_falls_back(uow):
    case_no = new_case()
    [delivery_id] = record(uow, received(case_no), available=("sms", "email"))
    sms, email = FakeChannel(PermanentError("SMS isv.MOBILE_NUMBER_ILLEGAL")), FakeChannel()
    out = outside(Contacts({case_no: CITIZEN}), sms=sms, email=email)
    assert handlers.deliver(uow, delivery_id, out, FAST) == [("sms", "failed"), ("email", "sent")]
    assert [d["delivery_id"] for d in handlers.failed_deliveries(uow)] == [delivery_id]
    assert handlers.failed_deliveries(uow)[0]["last_error"] == "SMS isv.MOBILE_NUMBER_ILLEGAL"
    assert len(email.sent) == 1


def test_transient_failures_back_off_then_die_and_fall_back(uow):
    case_no = new_case()
    [delivery_id] = record(uow, received(case_no), available=("sms", "email"))
    sms = FakeChannel(*[TransientError("SMS isv.BUSINESS_LIMIT_CONTROL")] * 3)
    email = FakeChannel()
    out = outside(Contacts({case_no: CITIZEN}), sms=sms, email=email)
    assert handlers.deliver(uow, delivery_id, out, FAST) == [("sms", "pending")]
    assert handlers.send_due(uow, out, FAST) == [("sms", "pending"), ("sms", "failed"), ("email", "sent")]
    dead = handlers.get_delivery(uow, delivery_id)
    assert (dead["status"], dead["failures"], dead["attempts"]) == ("failed", 3, 3)
    assert [a["outcome"] for a in dead["attempt_log"]] == ["retry", "retry", "retry"]


def test_a_retry_waits_for_its_backoff(uow):
    case_no = new_case()
    [delivery_id] = record(uow, received(case_no))
    out = outside(Contacts({case_no: CITIZEN}), email=FakeChannel(TransientError("SMTP 451")))
    slow = Policy(retry_base=3600, retry_cap=3600)
    assert handlers.deliver(uow, delivery_id, out, slow) == [("email", "pending")]
    assert handlers.send_due(uow, out, slow) == []
    wait = (handlers._aware(citizen_rows(uow, case_no)[0].next_attempt_at) - datetime.now(timezone.utc))
    assert timedelta(minutes=29) < wait <= timedelta(hours=1)  # 1800–3600 s with jitter


def test_intake_not_answering_is_retried(uow):
    case_no = new_case()
    [delivery_id] = record(uow, received(case_no))
    contacts = Contacts({case_no: CITIZEN}, failures=1)
    out = outside(contacts)
    assert handlers.deliver(uow, delivery_id, out, FAST) == [("email", "pending")]
    assert citizen_rows(uow, case_no)[0].last_error == "RpcTimeout"
    assert handlers.send_due(uow, out, FAST) == [("email", "sent")]


def test_a_channel_without_a_template_id_is_skipped_for_the_next(uow):
    from notify.domain import NotConfigured
    case_no = new_case()
    [delivery_id] = record(uow, received(case_no), available=("wechat", "email"))
    wechat = FakeChannel(NotConfigured("no WeChat template id"))
    out = outside(Contacts({case_no: {**CITIZEN, "wechat_openid": "oAbCdEfGhIjKlMn"}}), wechat=wechat)
    assert handlers.deliver(uow, delivery_id, out, FAST) == [("wechat", "skipped"), ("email", "sent")]


# --- provider outages: hold, probe, drain in order ----------------------------------------------------

def test_an_outage_holds_the_providers_queue_in_order_and_it_drains_when_it_returns(uow):
    hook = handlers.set_unit_contact(uow, {"unit_code": "dept-water", "webhook_url": "https://w.test/h"})
    assert hook["webhook_secret"]
    start = datetime.now(timezone.utc) - timedelta(minutes=5)
    cases = [new_case() for _ in range(4)]
    webhook = FakeChannel(ProviderDown("ConnectionError"))
    out = outside(webhook=webhook)
    for i, case_no in enumerate(cases):
        for delivery_id in record(uow, dispatched(case_no, "dept-water", at=start + timedelta(seconds=i)),
                                  policy=HELD):
            handlers.deliver(uow, delivery_id, out, HELD)
    hooks = [r for c in cases for r in rows(uow, c, channel="webhook")]
    assert [(h.status, h.attempts, h.failures) for h in hooks] == [("pending", 1, 0)] + [("pending", 0, 0)] * 3
    [down] = handlers.providers(uow)
    assert (down["name"], down["failures"], down["queued"]) == ("webhook:unit:dept-water", 1, 4)
    handlers.send_due(uow, out, HELD)
    assert webhook.sent == []  # held: nothing more tried before the probe time
    # the provider's probe time comes; it is back
    with uow:
        uow.session.execute(update(Provider).values(retry_at=start))
        uow.commit()
    handlers.send_due(uow, out, HELD)
    assert [o.case_no for o in webhook.sent] == cases  # each once, in the order the events happened
    assert handlers.providers(uow) == []
    assert all(r.status == "sent" for c in cases for r in rows(uow, c, channel="webhook"))


def test_a_new_delivery_does_not_jump_a_queue_waiting_for_its_provider(uow):
    handlers.set_unit_contact(uow, {"unit_code": "dept-water", "webhook_url": "https://w.test/h"})
    older, newer = new_case(), new_case()
    webhook = FakeChannel(ProviderDown("HTTP 503"))
    out = outside(webhook=webhook)
    for delivery_id in record(uow, dispatched(older, "dept-water")):
        handlers.deliver(uow, delivery_id, out, FAST)  # fails: provider down, its probe due at once
    record(uow, dispatched(newer, "dept-water"))
    [hook] = rows(uow, newer, channel="webhook")
    # the provider's next probe is due: the worker sends the older one first, then its own
    assert handlers.deliver(uow, hook.id, out, FAST) == [("webhook", "sent"), ("webhook", "sent")]
    assert [o.case_no for o in webhook.sent] == [older, newer]


def test_an_outage_of_one_endpoint_does_not_hold_another(uow):
    for unit in ("dept-water", "dept-housing"):
        handlers.set_unit_contact(uow, {"unit_code": unit, "webhook_url": f"https://{unit}.test/h"})

    class OneDown(FakeChannel):
        def send(self, outgoing):
            if "dept-water" in outgoing.address.to:
                raise ProviderDown("ConnectionError")
            super().send(outgoing)
    webhook = OneDown()
    out = outside(webhook=webhook)
    for case_no, unit in ((new_case(), "dept-water"), (new_case(), "dept-housing")):
        for delivery_id in record(uow, dispatched(case_no, unit), policy=HELD):
            handlers.deliver(uow, delivery_id, out, HELD)
    assert [o.address.to for o in webhook.sent] == ["https://dept-housing.test/h"]


# --- crashes ------------------------------------------------------------------------------------------

def test_an_interrupted_send_on_a_channel_that_drops_repeats_is_sent_again(uow):
    case_no = new_case()
    [delivery_id] = record(uow, received(case_no))
    crashed = handlers.claim_delivery(uow, delivery_id, Policy(claim_seconds=0))  # then the process died
    assert crashed.attempts == 1
    email = FakeChannel()
    out = outside(Contacts({case_no: CITIZEN}), email=email)
    assert handlers.send_due(uow, out, FAST) == [("email", "sent")]
    log = handlers.get_delivery(uow, delivery_id)
    assert [a["outcome"] for a in log["attempt_log"]] == ["interrupted", "sent"]
    # the crashed sender's late outcome does not overwrite the one that superseded it
    assert handlers.record_outcome(uow, crashed, handlers.Outcome("failed", error="x"), FAST).status is None
    assert [o.delivery_id for o in email.sent] == [delivery_id]  # same id: receivers drop a repeat


def test_an_interrupted_sms_is_not_sent_twice_but_dead_listed_and_fallen_back(uow):
    case_no = new_case()
    [delivery_id] = record(uow, received(case_no), available=("sms", "email"))
    crashed = handlers.claim_delivery(uow, delivery_id, Policy(claim_seconds=0.2))
    assert handlers.mark_sending(uow, crashed)  # the sender's last step before the gateway ...
    time.sleep(0.25)                            # ... then it died: did the gateway take it?
    sms, email = FakeChannel(), FakeChannel()
    out = outside(Contacts({case_no: CITIZEN}), sms=sms, email=email)
    assert handlers.send_due(uow, out, FAST) == [("email", "sent")]
    assert sms.sent == []
    dead = handlers.get_delivery(uow, delivery_id)
    assert (dead["status"], dead["last_error"]) == ("failed", "interrupted: outcome unknown")
    assert [d["delivery_id"] for d in handlers.failed_deliveries(uow)] == [delivery_id]


def test_an_sms_claimed_but_not_yet_sent_at_a_crash_is_sent_once_after_it(uow):
    case_no = new_case()
    [delivery_id] = record(uow, received(case_no), available=("sms", "email"))
    handlers.claim_delivery(uow, delivery_id, Policy(claim_seconds=0))  # claimed in a batch, then died
    sms = FakeChannel()
    out = outside(Contacts({case_no: CITIZEN}), sms=sms)
    assert handlers.send_due(uow, out, FAST) == [("sms", "sent")]
    assert [o.delivery_id for o in sms.sent] == [delivery_id]
    assert [a["outcome"] for a in handlers.get_delivery(uow, delivery_id)["attempt_log"]] == ["sent"]


def test_a_superseded_sms_claim_does_not_send(uow):
    case_no = new_case()
    [delivery_id] = record(uow, received(case_no), available=("sms",))
    late = handlers.claim_delivery(uow, delivery_id, Policy(claim_seconds=0))  # its lease ran out ...
    sms = FakeChannel()
    out = outside(Contacts({case_no: CITIZEN}), sms=sms)
    assert handlers.send_due(uow, out, FAST) == [("sms", "sent")]  # ... another sender sent it
    assert not handlers.mark_sending(uow, late)  # the late sender may not send it again
    assert len(sms.sent) == 1


def test_only_one_sender_wins_a_claim(uow):
    [delivery_id] = record(uow, received(new_case()))
    assert handlers.claim_delivery(uow, delivery_id, FAST) is not None
    assert handlers.claim_delivery(uow, delivery_id, FAST) is None
    assert handlers.claim_due(uow, FAST) == []


def test_skip_locked_lets_two_sweepers_take_different_deliveries(uow, db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("row locks are PostgreSQL's")
    first = record(uow, received(new_case()))[0]
    later = new_case()
    record(uow, dispatched(later))  # other providers (the inbox, the unit's e-mail)
    holder = unit_of_work_for("notify", metadata, db_url)
    with holder:  # another instance is in the middle of claiming the oldest delivery
        holder.session.execute(select(Delivery).where(Delivery.id == first).with_for_update())
        claims = handlers.claim_due(uow, FAST)
    holder.session.bind.dispose()
    assert {c.case_no for c in claims} == {later}  # not waited for


def test_the_lanes_in_flight_are_read_once_per_claim_not_once_per_due_row(uow, db_url):
    """Statistics taken while the queue was empty say "pending" matches no row; a subquery per due
    row then scanned every pending row for every due row (300 ms of the database's CPU per claim
    after a burst). The lanes in flight are one subquery, read once (hashed), whatever the plan."""
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's plan")
    record(uow, received(new_case()))
    with uow:
        connection = uow.session.connection()
        connection.exec_driver_sql("ANALYZE deliveries")  # while the queue is all but empty
        compiled = handlers._due_query(False, False).compile(dialect=connection.dialect)
        cursor = connection.connection.cursor()
        cursor.execute(f"EXPLAIN {compiled.string}",
                       compiled.construct_params({"now": datetime.now(timezone.utc), "limit": 100}))
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert [line for line in plan.splitlines() if "hashed SubPlan" in line], plan
    assert "lane_ahead" not in compiled.string


# --- order per recipient and channel (lanes) ----------------------------------------------------------

def accepted(case_no, unit_code, at):
    return make_event("order_accepted", case_no, {
        "order_no": f"GD{case_no[2:]}", "unit_code": unit_code, "town_code": "370404001",
        "category": "housing", "status": "accepted", "accepted_at": "2026-11-25T03:00:00+00:00",
        "within_deadline": True}, occurred_at=at)


def two_departments(uow):
    """Two department systems, each subscribed to its own unit's accepted orders, and three events
    for each, interleaved in time: A1 B1 A2 B2 A3 B3."""
    subs = {unit: handlers.subscribe(uow, {"url": f"https://{unit}.test/in", "event_types": ["order_accepted"],
                                           "unit_code": unit})["subscriber_id"]
            for unit in ("dept-water", "dept-housing")}
    start = datetime.now(timezone.utc) - timedelta(minutes=1)
    cases = {"dept-water": [], "dept-housing": []}
    for i in range(6):
        unit = ("dept-water", "dept-housing")[i % 2]
        case_no = new_case()
        cases[unit].append(case_no)
        record(uow, accepted(case_no, unit, start + timedelta(seconds=i)))
    return subs, cases


def test_a_recipients_lane_is_not_claimed_again_while_its_older_deliveries_are_out(uow):
    subs, cases = two_departments(uow)
    first = handlers.claim_due(uow, FAST, limit=2)  # A1 and B1: two lanes, two senders
    assert [c.case_no for c in first] == [cases["dept-water"][0], cases["dept-housing"][0]]
    # another sender (or instance) looks while both are out: A2 and B2 must wait for them
    assert handlers.claim_due(uow, FAST) == []
    water, housing = handlers.by_lane(first)
    handlers.record_settled(uow, [(water[0], handlers.Outcome("sent", address="x"))])
    # A's lane is free again: the rest of A in order; B's lane is still out
    assert [c.case_no for c in handlers.claim_due(uow, FAST)] == cases["dept-water"][1:]


def test_a_lane_whose_head_another_instance_is_claiming_is_left_to_it(uow, db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("row locks are PostgreSQL's (SQLite claimers take turns on the write lock)")
    subs, cases = two_departments(uow)
    [head] = rows(uow, cases["dept-water"][0])
    holder = unit_of_work_for("notify", metadata, db_url)
    with holder:  # another instance has locked A1 in its claim and not committed yet
        holder.session.execute(select(Delivery).where(Delivery.id == head.id).with_for_update())
        claims = handlers.claim_due(uow, FAST)
    holder.session.bind.dispose()
    # A2 and A3 are not taken past A1 (they would overtake it); B's lane goes
    assert [c.case_no for c in claims] == cases["dept-housing"]


def test_the_rows_ahead_in_a_lane_are_counted_as_one_by_one_comparison_would(uow):
    """_lane_ahead counts by bisection (a unit's lane can hold hundreds of due rows); the counts
    are those of comparing each found row with every due row of its lane, ties and all."""
    subs, cases = two_departments(uow)
    same_time = rows(uow, cases["dept-water"][1])[0].occurred_at
    for _ in range(2):  # two more in A's lane, raised in the same instant as A2
        record(uow, accepted(new_case(), "dept-water", same_time.replace(tzinfo=timezone.utc)))
    now = datetime.now(timezone.utc)
    with uow:
        s = uow.session
        due = s.execute(select(Delivery).where(Delivery.status == "pending")).scalars().all()
        assert len(due) == 8

        def one_by_one(r):
            return sum(1 for d in due if d.lane == r.lane and d.occurred_at <= r.occurred_at and d.id != r.id)
        ordered = sorted(due, key=lambda d: (d.occurred_at, d.id))
        for found in (ordered, ordered[::2], ordered[3:5], [ordered[-1]]):
            assert handlers._lane_ahead(s, found, now) == {r.id: one_by_one(r) for r in found}


def test_a_lane_is_taken_up_to_a_row_another_instance_holds(uow, db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("row locks are PostgreSQL's (SQLite claimers take turns on the write lock)")
    subs, cases = two_departments(uow)
    [middle] = rows(uow, cases["dept-water"][1])
    holder = unit_of_work_for("notify", metadata, db_url)
    with holder:  # another instance holds A2 (say, it is giving it back)
        holder.session.execute(select(Delivery).where(Delivery.id == middle.id).with_for_update())
        claims = handlers.claim_due(uow, FAST)
    holder.session.bind.dispose()
    # A1 goes (nothing ahead of it); A3 would overtake A2: left; B's lane goes whole
    assert [c.case_no for c in claims] == [cases["dept-water"][0]] + cases["dept-housing"]


def test_two_events_for_one_recipient_go_out_in_order_while_others_go_in_parallel(uow):
    import threading
    subs, cases = two_departments(uow)
    lock, at_once, most = threading.Lock(), {}, {}

    class Endpoint(FakeChannel):
        """Each department's system: records order and how many of its requests were out at once."""

        def send(self, outgoing):
            unit = outgoing.address.to.split("//")[1].split(".")[0]
            with lock:
                at_once[unit] = at_once.get(unit, 0) + 1
                most[unit] = max(most.get(unit, 0), at_once[unit])
                most["both"] = max(most.get("both", 0), sum(at_once.values()))
            time.sleep(0.05)
            with lock:
                at_once[unit] -= 1
                self.sent.append(outgoing)
    webhook = Endpoint()
    out = outside(webhook=webhook)
    senders = [threading.Thread(target=lambda lane: handlers.send_claims(uow_copy(uow), lane, out, FAST), args=(lane,))
               for lane in handlers.by_lane(handlers.claim_due(uow, FAST))]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    for unit, unit_cases in cases.items():
        assert [o.case_no for o in webhook.sent if unit in o.address.to] == unit_cases
    # one lane, one send at a time; the two departments were sent to at the same time
    assert most == {"dept-water": 1, "dept-housing": 1, "both": 2}


def uow_copy(uow):
    """Another unit of work on the same database (one per sender thread)."""
    return UnitOfWork(uow._session_factory, metadata, "notify")


def test_a_sender_records_its_sends_through_a_moment_of_database_trouble(uow, monkeypatch):
    from sqlalchemy.exc import OperationalError
    case_no = new_case()
    [delivery_id] = record(uow, received(case_no))
    claims = handlers.claim_due(uow, FAST)
    real, failures = handlers.record_settled, []

    def out_of_connections_once(*args):
        if not failures:
            failures.append(1)
            raise OperationalError("connect", {}, Exception("FATAL: sorry, too many clients already"))
        return real(*args)
    monkeypatch.setattr(handlers, "record_settled", out_of_connections_once)
    out = outside(Contacts({case_no: CITIZEN}))
    assert handlers.send_claims(uow, claims, out, FAST) == [("email", "sent")]
    assert handlers.get_delivery(uow, delivery_id)["status"] == "sent"  # not left to run out and resend


# --- recording what settles a delivery, many at once -----------------------------------------------

def claims_of_citizens(uow, n, available=EMAIL_ONLY):
    """``n`` appeals of ``n`` citizens (a lane each), their receipts claimed; [(case_no, claim)]."""
    cases = [new_case() for _ in range(n)]
    for case_no in cases:
        record(uow, received(case_no, citizen_ref=f"ref-{case_no}"), available=available)
    claims = {c.case_no: c for c in handlers.claim_due(uow, FAST) if c.recipient == "citizen"}
    return [(case_no, claims[case_no]) for case_no in cases]


def counting(engine):
    """Commits and statements on ``engine`` (a listener: remove with the returned function)."""
    from sqlalchemy import event
    seen = {"commits": 0, "statements": 0}

    def commit(conn):
        seen["commits"] += 1

    def statement(conn, cursor, text_, *args):
        seen["statements"] += 1
    event.listen(engine, "commit", commit)
    event.listen(engine, "before_cursor_execute", statement)

    def stop():
        event.remove(engine, "commit", commit)
        event.remove(engine, "before_cursor_execute", statement)
    return seen, stop


def test_sent_skipped_and_failed_outcomes_are_recorded_together_in_one_transaction(uow, caplog):
    (sent, a), (skipped, b), (failed, c), (later, d) = claims_of_citizens(uow, 4)
    [(sms_case, e)] = claims_of_citizens(uow, 1, available=("sms",))  # no attempt written before its send
    assert (a.fallback, e.fallback, e.channel) == ((), (), "sms")
    seen, stop = counting(uow._session_factory.kw["bind"])
    try:
        recorded = handlers.record_settled(uow, [
            (a, handlers.Outcome("sent", address="z***@example.com")),
            (b, handlers.Outcome("skipped", reason="no_email")),
            (c, handlers.Outcome("failed", address="z***@example.com", error="SMTPDataError 550")),
            (e, handlers.Outcome("skipped", reason="no_sms")),
            (d, handlers.Outcome("sent", address="l***@example.com"))])
    finally:
        stop()
    assert [r.status for r in recorded] == ["sent", "skipped", "failed", "skipped", "sent"]
    # one transaction: lock the rows, update them, finish the attempts, write the one never started
    assert (seen["commits"], seen["statements"]) == (1, 4)
    logs = {case_no: handlers.deliveries_for_case(uow, case_no)[0] for case_no in (sent, skipped, failed, later,
                                                                                    sms_case)}
    assert [(logs[k]["status"], logs[k]["address"], logs[k]["reason"], logs[k]["last_error"]) for k in logs] == [
        ("sent", "z***@example.com", None, None), ("skipped", None, "no_email", None),
        ("failed", "z***@example.com", None, "SMTPDataError 550"), ("sent", "l***@example.com", None, None),
        ("skipped", None, "no_sms", None)]
    assert [[(a["outcome"], a["error"]) for a in logs[k]["attempt_log"]] for k in logs] == [
        [("sent", None)], [("skipped", "no_email")], [("failed", "SMTPDataError 550")], [("sent", None)],
        [("skipped", "no_sms")]]
    assert logs[sent]["sent_at"] and not logs[failed]["sent_at"]
    assert [d["delivery_id"] for d in handlers.failed_deliveries(uow)] == [c.id]
    # the skips and the failure are logged, by delivery id and kind only
    warned = [r.getMessage() for r in caplog.records if r.name == "notify.handlers"]
    assert len(warned) == 3 and all("example.com" not in w and "@" not in w for w in warned)
    assert handlers.claim_due(uow, FAST) == []  # none of them is pending any more


def test_a_claim_that_no_longer_holds_its_delivery_is_left_alone_and_reported_none(uow):
    [(first, ran_out), (second, given_back)] = claims_of_citizens(uow, 2)
    # the first claim's lease ran out and another sender took the delivery over ...
    with uow:
        uow.session.execute(update(Delivery).where(Delivery.id == ran_out.id)
                            .values(claimed_until=datetime.now(timezone.utc) - timedelta(seconds=1)))
        uow.commit()
    # ... the second was given back and claimed again: same number of attempts, another lease
    handlers.release(uow, [given_back])
    time.sleep(0.002)
    taken = {c.id: c for c in handlers.claim_due(uow, FAST)}
    assert set(taken) == {ran_out.id, given_back.id}
    assert taken[given_back.id].attempts == given_back.attempts and taken[given_back.id].lease != given_back.lease
    late = handlers.record_settled(uow, [(ran_out, handlers.Outcome("sent", address="x")),
                                         (given_back, handlers.Outcome("skipped", reason="no_email"))])
    assert late == [handlers.Recorded(None), handlers.Recorded(None)]
    for case_no, claim in ((first, ran_out), (second, given_back)):
        [row] = citizen_rows(uow, case_no)
        assert (row.status, row.address, row.reason) == ("pending", None, None)
        assert handlers._aware(row.claimed_until) == taken[claim.id].lease
    # the claims that hold them now record as usual
    assert [r.status for r in handlers.record_settled(
        uow, [(taken[ran_out.id], handlers.Outcome("sent", address="x")),
              (taken[given_back.id], handlers.Outcome("sent", address="y"))])] == ["sent", "sent"]
    attempts = handlers.get_delivery(uow, given_back.id)["attempt_log"]
    assert [a["outcome"] for a in attempts] == ["sent"]  # the given-back attempt was removed


def test_a_skip_with_a_channel_to_fall_back_to_reserves_it_and_is_not_recorded_together(uow):
    case_no = new_case()
    record(uow, received(case_no), available=("sms", "email"))
    [claim] = [c for c in handlers.claim_due(uow, FAST) if c.recipient == "citizen"]
    assert (claim.channel, claim.fallback) == ("sms", ("email",))
    together = []

    def record_together(settled):
        together.append([(c.channel, o.status) for c, o in settled])
        return handlers.record_settled(uow, settled)
    sms, email = FakeChannel(), FakeChannel()
    out = outside(Contacts({case_no: {**CITIZEN, "phone": None}}), sms=sms, email=email)
    assert handlers.send_claims(uow, [claim], out, FAST, record=record_together) == [("sms", "skipped"),
                                                                                     ("email", "sent")]
    skipped, fallback = citizen_rows(uow, case_no)
    assert (skipped.status, skipped.reason, fallback.fallback_of, fallback.status) == (
        "skipped", "no_sms", skipped.id, "sent")
    # the skip went through record_outcome, which reserved the e-mail (sent right after by deliver(),
    # recorded in its own transaction): nothing went through ``record``
    assert together == []
    assert len(email.sent) == 1


def test_a_sender_records_what_settles_every_record_every_or_after_record_seconds(uow):
    subs = handlers.subscribe(uow, {"url": "https://dept-water.test/in", "event_types": ["order_accepted"],
                                    "unit_code": "dept-water"})["subscriber_id"]
    start = datetime.now(timezone.utc) - timedelta(minutes=1)
    for i in range(3):
        record(uow, accepted(new_case(), "dept-water", start + timedelta(seconds=i)))
    lane = [c for c in handlers.claim_due(uow, FAST) if c.recipient == f"subscriber:{subs}"]
    assert len(lane) == 3
    sizes = []

    def record_together(settled):
        sizes.append(len(settled))
        return handlers.record_settled(uow, settled)
    ticks = iter(range(0, 100, 2))  # two seconds pass with each send
    slow = replace(FAST, record_every=8, record_seconds=3)
    done = handlers.send_claims(uow, lane, outside(), slow, record=record_together, clock=lambda: next(ticks))
    assert done == [("webhook", "sent")] * 3
    assert sizes == [2, 1]  # the first two had waited 3 s when the third was due to go out
    assert {r.status for r in rows(uow, recipient=f"subscriber:{subs}")} == {"sent"}


def recorder_for(uow, config=None):
    """notify's OutcomeRecorder as the container would set it up, on this test's database."""
    from types import SimpleNamespace

    import eventlet
    from notify.dependencies import OutcomeRecorder
    from wuji_common.dependencies import Database
    database = Database(metadata)
    database.get_dependency = lambda worker_ctx: (lambda: uow_copy(uow))
    recorder = OutcomeRecorder()
    recorder.container = SimpleNamespace(config=config or {}, service_name="notify", dependencies=[database],
                                         spawn_managed_thread=eventlet.spawn)
    recorder.setup()
    return recorder


def test_concurrent_senders_outcomes_go_into_one_transaction(uow, monkeypatch):
    import eventlet
    claimed = claims_of_citizens(uow, 6)
    recorder, batches = recorder_for(uow), []
    real = handlers.record_settled

    def counted(uow_, settled, now=None):
        batches.append(len(settled))
        return real(uow_, settled, now)
    monkeypatch.setattr(handlers, "record_settled", counted)
    out = outside(Contacts({case_no: CITIZEN for case_no, _ in claimed}))
    senders = [eventlet.spawn(handlers.send_claims, uow_copy(uow), [claim], out, FAST, record=recorder.record)
               for _, claim in claimed]
    assert [s.wait() for s in senders] == [[("email", "sent")]] * 6
    assert batches == [6]  # six senders, one lane each: one transaction
    assert {r.status for _, c in claimed for r in rows(uow, id=c.id)} == {"sent"}


def test_a_failing_batch_of_the_recorder_is_written_again_sender_by_sender(uow, monkeypatch):
    import eventlet
    from sqlalchemy.exc import OperationalError
    claimed = [claim for _, claim in claims_of_citizens(uow, 3)]
    bad = claimed[1]
    recorder, batches = recorder_for(uow), []
    real = handlers.record_settled

    def refusing(uow_, settled, now=None):
        batches.append(len(settled))
        if any(c.id == bad.id for c, _ in settled):
            raise OperationalError("UPDATE", {}, Exception("canceling statement due to lock timeout"))
        return real(uow_, settled, now)
    monkeypatch.setattr(handlers, "record_settled", refusing)

    def call(claim):
        try:
            return recorder.record([(claim, handlers.Outcome("sent", address="x"))])
        except Exception as exc:
            return exc
    results = [t.wait() for t in [eventlet.spawn(call, claim) for claim in claimed]]
    assert batches == [3, 1, 1, 1]
    assert results[0] == results[2] == [handlers.Recorded("sent")]
    assert isinstance(results[1], OperationalError)  # its sender's _persist tries again
    assert [rows(uow, id=c.id)[0].status for c in claimed] == ["sent", "pending", "sent"]


# --- preferences and quiet hours ----------------------------------------------------------------------

def test_preferences_put_a_channel_first_and_hold_news_in_quiet_hours(uow):
    first, second = new_case(), new_case()
    record(uow, received(first))
    all_day = "00:00-23:59"  # quiet now, whatever the time of the test
    pref = handlers.set_preferences(uow, {"case_no": first, "channel": "sms", "quiet_hours": all_day}, "p-1")
    assert pref == {"case_no": first, "channel": "sms", "quiet_hours": all_day}
    assert handlers.set_preferences(uow, {"case_no": first, "channel": "email"}, "p-1") == pref  # retried call
    assert handlers.get_preferences(uow, first) == pref
    # another appeal of the same citizen: SMS first, held to the end of the quiet hours
    assert record(uow, received(second), available=("email", "sms")) == []
    [held] = citizen_rows(uow, second)
    assert (held.channel, held.fallback) == ("sms", ["email"])
    assert handlers._aware(held.next_attempt_at) > datetime.now(timezone.utc)
    # urgent news is not held
    urgent = domain_rules_with_urgent_result()
    ids = handlers.record_event(uow, "notify.test", resolved(second), urgent, ("sms", "email"), FAST)
    assert len(ids) == 1


def domain_rules_with_urgent_result():
    from notify.domain import parse_rules
    return parse_rules({"order_resolved": [{"recipient": "citizen", "channels": ["sms", "email"],
                                            "urgent": True, "fields": ["order_no", "resolution", "resolved_at"]}]})


def test_preferences_of_an_unknown_case_or_with_bad_hours(uow):
    with pytest.raises(NotFound):
        handlers.set_preferences(uow, {"case_no": new_case(), "channel": "sms"})
    case_no = new_case()
    record(uow, received(case_no))
    with pytest.raises(ValidationError) as err:
        handlers.set_preferences(uow, {"case_no": case_no, "quiet_hours": "22-7"})
    assert "quiet_hours" in err.value.fields


# --- subscribers --------------------------------------------------------------------------------------

def test_a_subscriber_gets_the_events_it_chose_and_only_its_units(uow):
    everything = handlers.subscribe(uow, {"url": "https://bigdata.test/in", "name": "大数据局",
                                          "event_types": ["order_dispatched"]}, "s-1")
    assert len(everything["secret"]) == 64
    assert handlers.subscribe(uow, {"url": "https://bigdata.test/in", "event_types": ["order_dispatched"]},
                              "s-1") == everything
    water = handlers.subscribe(uow, {"url": "https://water.test/in", "event_types": ["order_dispatched"],
                                     "unit_code": "dept-water", "secret": "w" * 40})
    assert "secret" not in water
    case_no = new_case()
    webhook = FakeChannel()
    for delivery_id in record(uow, dispatched(case_no, "dept-housing")):
        handlers.deliver(uow, delivery_id, outside(webhook=webhook), FAST)
    [sent] = webhook.sent
    assert (sent.recipient, sent.address.to) == (f"subscriber:{everything['subscriber_id']}", "https://bigdata.test/in")
    assert sent.data["order_no"] == f"GD{case_no[2:]}" and sent.message.subject == ""
    more = handlers.subscribe(uow, {"subscriber_id": water["subscriber_id"], "event_types": ["order_closed"]})
    assert more["event_types"] == ["order_closed", "order_dispatched"]
    assert [s["name"] for s in handlers.list_subscribers(uow)] == ["大数据局", "https://water.test/in"]


def hotspot(case_no):
    return make_event("hotspot_detected", case_no, {
        "hotspot_id": "HS7", "town_code": "370404001", "category": "housing", "item": "路灯",
        "title": "小区路灯不亮", "appeals": 3, "people": 3, "case_nos": [case_no],
        "first_received_at": "2026-11-25T02:00:00+00:00", "window_hours": 72.0})


def processed_count(uow):
    with uow:
        return uow.session.execute(text("SELECT count(*) FROM processed_events")).scalar()


def test_an_event_no_rule_and_no_subscriber_asks_for_costs_no_transaction(uow):
    """A hot spot has no notice in the shipped rules: with no subscriber for it, notify reserves
    nothing and writes nothing, not even the dedup record; once a subscriber wants it, it does."""
    before = processed_count(uow)
    assert record(uow, hotspot(new_case())) == [] and processed_count(uow) == before
    sub = handlers.subscribe(uow, {"url": "https://bigdata.test/in", "event_types": ["hotspot_detected"]})
    case_no = new_case()
    [delivery_id] = record(uow, hotspot(case_no))
    assert processed_count(uow) == before + 1
    [row] = rows(uow, case_no)
    assert (row.id, row.recipient, row.channel) == (delivery_id, f"subscriber:{sub['subscriber_id']}", "webhook")


def test_unsubscribing_skips_what_was_waiting(uow):
    sub = handlers.subscribe(uow, {"url": "https://x.test/in", "event_types": ["order_dispatched", "order_closed"]})
    assert handlers.unsubscribe(uow, sub["subscriber_id"], ["order_closed"])["event_types"] == ["order_dispatched"]
    case_no = new_case()
    record(uow, dispatched(case_no))
    assert handlers.unsubscribe(uow, sub["subscriber_id"]) is None
    [waiting] = [r for r in rows(uow, case_no) if r.recipient_kind == "subscriber"]
    assert (waiting.status, waiting.reason) == ("skipped", "unsubscribed")
    with pytest.raises(NotFound):
        handlers.unsubscribe(uow, sub["subscriber_id"])
    with pytest.raises(ValidationError):
        handlers.subscribe(uow, {"url": "https://x.test/in", "event_types": ["no_such_event"]})


# --- inbox --------------------------------------------------------------------------------------------

def test_the_unit_reads_its_inbox_and_marks_it_read(uow, db_url):
    from notify.channels import InboxChannel
    engine = make_engine(db_url)
    case_no = new_case()
    for delivery_id in record(uow, dispatched(case_no)):
        handlers.deliver(uow, delivery_id, outside(inbox=InboxChannel(engine)), FAST)
    engine.dispose()
    [message] = handlers.inbox(uow, "dept-housing", unread_only=True)
    assert message["subject"] == f"【派单通知】工单 GD{case_no[2:]}：小区路灯不亮"
    assert message["text"].startswith("区住房和城乡建设局：")
    assert handlers.mark_read(uow, "dept-housing", [message["message_id"]]) == 1
    assert handlers.mark_read(uow, "dept-housing") == 0
    assert handlers.inbox(uow, "dept-housing", unread_only=True) == []
    assert handlers.inbox(uow, "dept-housing")[0]["read_at"] is not None
    with pytest.raises(NotFound):
        handlers.inbox(uow, "dept-nowhere")


def test_an_inbox_notice_is_put_in_the_inbox_with_its_reservation_once(uow):
    case_no = new_case()
    envelope = dispatched(case_no)
    due = record(uow, envelope)
    [notice] = rows(uow, case_no, channel="inbox")
    assert notice.id not in due and (notice.status, notice.attempts, notice.address) == ("sent", 1, "dept-housing")
    [message] = handlers.inbox(uow, "dept-housing")
    assert (message["message_id"], message["subject"]) == (notice.id, f"【派单通知】工单 GD{case_no[2:]}：小区路灯不亮")
    assert record(uow, envelope) == []  # the event again: nothing more
    assert len(handlers.inbox(uow, "dept-housing")) == 1
    assert [a["outcome"] for a in handlers.get_delivery(uow, notice.id)["attempt_log"]] == ["sent"]


# --- replay and the staff directory -------------------------------------------------------------------

def test_replay_sends_a_dead_delivery_again_with_the_same_id(uow):
    case_no = new_case()
    [delivery_id] = record(uow, received(case_no))
    email = FakeChannel(PermanentError("SMTP recipient refused [550]"))
    out = outside(Contacts({case_no: CITIZEN}), email=email)
    assert handlers.deliver(uow, delivery_id, out, FAST) == [("email", "failed")]
    replayed = handlers.replay(uow, delivery_id, idempotency_key="r-1")
    assert (replayed["status"], replayed["failures"]) == ("pending", 0)
    assert handlers.replay(uow, delivery_id, idempotency_key="r-1") == replayed
    assert handlers.deliver(uow, delivery_id, out, FAST) == [("email", "sent")]
    assert [o.delivery_id for o in email.sent] == [delivery_id]
    with pytest.raises(InvalidTransition):
        handlers.replay(uow, delivery_id)


def test_set_unit_contact_makes_a_secret_once_and_keeps_it(uow):
    first = handlers.set_unit_contact(uow, {"unit_code": "dept-housing", "webhook_url": "http://127.0.0.1:9/h",
                                            "phone": "13900000000"}, "k-1")
    assert len(first["webhook_secret"]) == 64 and first["webhook_secret_set"] and first["phone_set"]
    changed = handlers.set_unit_contact(uow, {"unit_code": "dept-housing", "email": "zj@yc.test"})
    assert "webhook_secret" not in changed
    removed = handlers.set_unit_contact(uow, {"unit_code": "dept-housing", "webhook_url": ""})
    assert (removed["webhook_url"], removed["webhook_secret_set"]) == (None, False)
    with pytest.raises(ValidationError):
        handlers.set_unit_contact(uow, {"unit_code": "dept-housing", "phone": "12345"})


def test_reloading_the_directory_keeps_what_a_unit_configured(uow):
    handlers.set_unit_contact(uow, {"unit_code": "dept-housing", "webhook_url": "https://h.test/x"})
    assert handlers.load_unit_contacts(uow, content.unit_contacts()) == 60
    view = handlers.get_unit_contact(uow, "dept-housing")
    assert (view["webhook_url"], view["kind"]) == ("https://h.test/x", "unit")


# --- the staff directory and the subscribers, read once every few seconds ------------------------------

def another_instance(db_url):
    """A unit of work of another notify instance on the same database (an engine of its own)."""
    return UnitOfWork(session_factory(make_engine(db_url)), metadata, "notify")


def test_a_unit_contact_changed_here_is_used_at_once(uow):
    slow = Policy(retry_base=0, retry_cap=0, reference_seconds=3600)
    email = FakeChannel()
    first, second = new_case(), new_case()
    for delivery_id in record(uow, dispatched(first, "dept-water"), policy=slow):
        handlers.deliver(uow, delivery_id, outside(email=email), slow)
    handlers.set_unit_contact(uow, {"unit_code": "dept-water", "email": "water-new@yc.test"})
    for delivery_id in record(uow, dispatched(second, "dept-water"), policy=slow):
        handlers.deliver(uow, delivery_id, outside(email=email), slow)
    assert [(o.case_no, o.address.to) for o in email.sent] == [
        (first, "dept-water@demo.wuji.local"), (second, "water-new@yc.test")]


def test_a_unit_contact_changed_by_another_instance_is_used_within_reference_seconds(uow, db_url):
    quick = Policy(retry_base=0, retry_cap=0, reference_seconds=0.3)
    email = FakeChannel()
    first, second = new_case(), new_case()
    for delivery_id in record(uow, dispatched(first, "dept-water"), policy=quick):
        handlers.deliver(uow, delivery_id, outside(email=email), quick)
    other = another_instance(db_url)
    handlers.set_unit_contact(other, {"unit_code": "dept-water", "email": "water-new@yc.test"})
    other.session.bind.dispose()
    time.sleep(0.3)
    for delivery_id in record(uow, dispatched(second, "dept-water"), policy=quick):
        handlers.deliver(uow, delivery_id, outside(email=email), quick)
    assert [o.address.to for o in email.sent] == ["dept-water@demo.wuji.local", "water-new@yc.test"]


def test_a_subscriber_removed_by_another_instance_gets_nothing_more(uow, db_url):
    sub = handlers.subscribe(uow, {"url": "https://x.test/in", "event_types": ["order_dispatched"]})
    slow = Policy(retry_base=0, retry_cap=0, reference_seconds=3600)
    record(uow, dispatched(new_case()), policy=slow)  # the directory read here: with the subscriber
    other = another_instance(db_url)
    handlers.unsubscribe(other, sub["subscriber_id"])
    other.session.bind.dispose()
    case_no = new_case()
    webhook = FakeChannel()
    # reserved from what this instance read (for up to reference_seconds), but not sent
    for delivery_id in record(uow, dispatched(case_no), policy=slow):
        handlers.deliver(uow, delivery_id, outside(webhook=webhook), slow)
    [hook] = [r for r in rows(uow, case_no) if r.recipient_kind == "subscriber"]
    assert (hook.status, hook.reason, webhook.sent) == ("skipped", "unsubscribed", [])


def test_events_and_claims_read_no_directory_while_it_is_fresh(uow):
    from sqlalchemy import event
    slow = Policy(retry_base=0, retry_cap=0, reference_seconds=3600)
    record(uow, dispatched(new_case(), "dept-education"), policy=slow)
    handlers.claim_due(uow, slow)  # (that lane stays in flight)
    engine = uow._session_factory.kw["bind"]
    statements = []

    def seen(conn, cursor, statement, *args):
        statements.append(" ".join(statement.split()))
    event.listen(engine, "before_cursor_execute", seen)
    try:
        for unit in ("dept-water", "dept-housing", "dept-urban"):
            record(uow, dispatched(new_case(), unit), policy=slow)
        claims = handlers.claim_due(uow, slow)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert sorted(c.staff.unit_code for c in claims) == ["dept-housing", "dept-urban", "dept-water"]
    assert {c.staff.email for c in claims} == {f"{u}@demo.wuji.local" for u in ("dept-housing", "dept-urban",
                                                                                  "dept-water")}
    assert not [q for q in statements if "FROM unit_contacts" in q or "FROM subscribers" in q]
    # the claim: the due rows with their providers' health in one statement (no read of providers
    # alone), the lanes' heads on PostgreSQL, the lease, the attempts
    assert not [q for q in statements if q.startswith("SELECT providers.")]


def test_a_batch_of_claims_reads_its_citizens_contacts_in_one_call():
    """with_contacts: one call for the citizens of the claims (staff claims need none); a case it
    did not answer for has no contact, a case outside the batch is asked on its own, and when the
    batch call fails every send asks for itself."""
    from types import SimpleNamespace
    contacts = {"YC1": {"email": "a@example.com"}, "YC2": {"email": "b@example.com"}}
    single, batches = Contacts(contacts), []

    def together(case_nos):
        batches.append(list(case_nos))
        return {c: contacts[c] for c in case_nos if c in contacts}
    claims = [SimpleNamespace(case_no=c, recipient_kind=kind) for c, kind in
              (("YC1", "citizen"), ("YC2", "citizen"), ("YC3", "citizen"), ("YC1", "citizen"), ("YC9", "unit"))]
    base = Outside(citizen_contact=single, channels={}, citizen_contacts=together)
    sending = handlers.with_contacts(base, claims)
    assert batches == [["YC1", "YC2", "YC3"]]
    assert sending.citizen_contact("YC1") == {"email": "a@example.com"}
    assert sending.citizen_contact("YC3") is None and single.calls == 0
    assert sending.citizen_contact("YC2") == {"email": "b@example.com"} and single.calls == 0
    sending.citizen_contact("YC9")
    assert single.calls == 1

    def failing(case_nos):
        raise RpcTimeout("intake.contacts_for_notification did not answer within 5s")
    fallback = handlers.with_contacts(Outside(citizen_contact=single, channels={}, citizen_contacts=failing), claims)
    assert fallback.citizen_contact("YC2") == {"email": "b@example.com"} and single.calls == 2
    assert handlers.with_contacts(Outside(citizen_contact=single, channels={}), claims).citizen_contact is single

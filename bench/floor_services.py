"""The platform's machinery without its domain, for ``bench/floor.py``: four Nameko services named as
the stages they stand for, carrying an appeal from an HTTP submission to ``order_dispatched`` and
its fan-out exactly as the real services move it, and doing nothing else.

What each keeps of the real service: the same entrypoints (nameko's HTTP handler;
``wuji_common.entrypoints.batch_event_handler`` with its retries, dead letters and lingers), the
same providers (``Database``: unit of work, transactional outbox handed to the relay at commit;
``GroupCommit``; ``MetricsExporter``), one database each on the same server, dedup records written
with each batch's effect, and the same events on the same exchanges with the same fan-out
(appeal_received → triage, notify, metrics; order_dispatched → intake, notify, metrics).

What each leaves out: validation, encryption of the contact, case numbers, classification,
routing, repeats and hot spots, deadlines and clocks, audit rows, timelines, notices and their
sending, contact look-ups, KPI facts. Each writes one row per event instead.
"""
import json
import uuid
from datetime import timedelta

from nameko.web.handlers import http
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, insert
from werkzeug.wrappers import Response

from wuji_common.db import add_reliability_tables, utcnow
from wuji_common.dependencies import Database, GroupCommit, MetricsExporter
from wuji_common.entrypoints import Rpc, batch_event_handler


def _metadata(rows_table):
    metadata = MetaData()
    add_reliability_tables(metadata)
    Table(rows_table, metadata,
          Column("id", Integer, primary_key=True, autoincrement=True),
          Column("case_no", String(32), nullable=False, index=True),
          Column("data", Text, nullable=False),
          Column("created_at", DateTime(timezone=True), nullable=False))
    return metadata


METADATA = {"intake": _metadata("appeals"), "triage": _metadata("work_orders"),
            "notify": _metadata("deliveries"), "metrics": _metadata("facts")}
ROWS = {"intake": "appeals", "triage": "work_orders", "notify": "deliveries", "metrics": "facts"}


def write_rows(uow, service, consumer, envelopes, then=None):
    """One transaction: the dedup records of ``envelopes``, a row for each new one, and ``then``'s
    events."""
    with uow:
        fresh = uow.first_deliveries(consumer, envelopes)
        if fresh:
            table = METADATA[service].tables[ROWS[service]]
            now = utcnow()
            uow.session.execute(insert(table), [
                {"case_no": e["case_no"], "data": json.dumps(e["data"], ensure_ascii=False), "created_at": now}
                for e in fresh])
            for envelope in fresh if then else ():
                then(uow, envelope)
        uow.commit()


def register(uow, bodies):
    """Intake's part: one row and one ``appeal_received`` per submitted body, in one transaction;
    what each caller is answered."""
    table = METADATA["intake"].tables["appeals"]
    now = utcnow()
    with uow:
        rows = []
        for body in bodies:
            case_no = uuid.uuid4().hex[:16].upper()
            location = body.get("location") or {}
            # the real event's fields (the wire schemas are checked at emit), none of them
            # personal data
            data = {"channel": body["channel"], "title": body["title"], "content": body["content"],
                    "town_code": location["town_code"], "village_code": location.get("village"),
                    "anonymous": False, "citizen_ref": uuid.uuid4().hex, "received_at": now.isoformat()}
            rows.append({"case_no": case_no, "data": json.dumps(data, ensure_ascii=False), "created_at": now})
            uow.emit("appeal_received", case_no, data)
        uow.session.execute(insert(table), rows)
        uow.commit()
    return [{"case_no": row["case_no"], "status": "received"} for row in rows]


class AppealWriter(GroupCommit):
    def setup(self):
        super().setup()
        self.database = next(d for d in self.container.dependencies if isinstance(d, Database))

    def write_batch(self, bodies):
        return register(self.database.get_dependency(None)(), bodies)


class _FloorService:
    # bench/floor.py starts each service as the platform's and waits, as for those, for its RPC queue
    @Rpc.decorator
    def ping(self):
        return "pong"


class FloorIntake(_FloorService):
    name = "intake"
    uow = Database(METADATA["intake"])
    appeal_writer = AppealWriter()
    metrics = MetricsExporter()

    @http("POST", "/api/v1/appeals")
    def post_appeal(self, request):
        result = self.appeal_writer.submit(json.loads(request.get_data(cache=False).decode("utf-8")))
        return Response(json.dumps(result, ensure_ascii=False), status=201, mimetype="application/json")

    @batch_event_handler("triage", "order_dispatched")
    def on_order_dispatched(self, envelopes):
        write_rows(self.uow(), "intake", "intake.on_order_dispatched", envelopes)


def dispatch(uow, envelope):
    now = utcnow()
    uow.emit("order_dispatched", envelope["case_no"], {
        "order_no": "W" + envelope["case_no"], "unit_code": "370404101000", "unit_name": "阴平镇人民政府",
        "town_code": envelope["data"]["town_code"], "category": "城乡建设", "status": "dispatched",
        "level": "town", "accept_due_at": (now + timedelta(hours=2)).isoformat(),
        "resolve_due_at": (now + timedelta(days=5)).isoformat(), "policy": "standard",
        "router_version": "floor", "confidence": None, "title": envelope["data"]["title"]})


class FloorTriage(_FloorService):
    name = "triage"
    uow = Database(METADATA["triage"])
    metrics = MetricsExporter()

    @batch_event_handler("intake", "appeal_received")
    def on_appeal_received(self, envelopes):
        write_rows(self.uow(), "triage", "triage.on_appeal_received", envelopes, then=dispatch)


class _BothEvents(_FloorService):
    """notify's and metrics' part: both events, a row for each."""

    @batch_event_handler("intake", "appeal_received")
    def on_appeal_received(self, envelopes):
        write_rows(self.uow(), self.name, f"{self.name}.on_appeal_received", envelopes)

    @batch_event_handler("triage", "order_dispatched")
    def on_order_dispatched(self, envelopes):
        write_rows(self.uow(), self.name, f"{self.name}.on_order_dispatched", envelopes)


class FloorNotify(_BothEvents):
    name = "notify"
    uow = Database(METADATA["notify"])
    metrics = MetricsExporter()


class FloorMetrics(_BothEvents):
    name = "metrics"
    uow = Database(METADATA["metrics"])
    metrics = MetricsExporter()

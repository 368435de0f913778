"""Joint enforcement (吹哨报到) across all five services, as processes on the real broker (SQLite only,
to bound the time): a citizen's appeal → work order accepted → the town blows the whistle for it →
every called force reports in → the operation is planned and completed → triage resolves the order →
the citizen sees it resolved and is told (a result mail inviting a rating)."""
import uuid

import pytest
from nameko.standalone.rpc import ClusterRpcProxy

from wuji_common.testing_helpers import eventually, http_json as http

APPEAL = {
    "channel": "web",
    "title": "路边占道经营堵塞交通",
    "content": "古邵镇镇区主街每天早上有流动摊贩占道经营，车辆无法通行，请相关部门处理。",
    "citizen": {"name": "王五", "phone": "13700001111", "email": "wangwu@example.com"},
    "location": {"town_code": "370404100", "address": "古邵镇主街12号"},
}
PERSONAL = ("王五", "13700001111", "wangwu@example.com", "古邵镇主街12号")


@pytest.mark.slow
@pytest.mark.parametrize("platform", ["sqlite"], indirect=True)
def test_whistle_report_in_and_operation_resolve_the_citizens_order(platform):
    status, receipt = http("POST", f"{platform.api}/api/v1/appeals", APPEAL)
    assert status == 201, receipt
    case_no, token = receipt["case_no"], receipt["tracking_token"]
    track = f"{platform.api}/api/v1/appeals/{case_no}?token={token}"

    with ClusterRpcProxy({"AMQP_URI": platform.amqp_uri}, timeout=30) as rpc:
        order = eventually(lambda: (rpc.triage.find_orders(case_no=case_no) or [None])[0], what="dispatch")
        rpc.triage.accept_order(order["order_no"], order["unit_code"], idempotency_key=uuid.uuid4().hex)
        town = order["town_code"]

        # the town blows the whistle (吹哨) for the order; a retry opens nothing more
        key = f"whistle-{order['order_no']}"
        operation = rpc.enforcement.blow_whistle(order["order_no"], "road_occupation", town, "urgent",
                                                 idempotency_key=key)
        assert rpc.enforcement.blow_whistle(order["order_no"], "road_occupation", town, "urgent",
                                            idempotency_key=key) == operation
        oid = operation["operation_id"]
        forces = [f["force_code"] for f in operation["forces"]]
        assert forces == ["comprehensive_enforcement", "public_security", "market_supervision"]

        # the forces report in (报到), each with its team in the town; a retried report-in is one
        for force in forces:
            result = rpc.enforcement.report_in(oid, force, f"{force}-{town}", idempotency_key=f"{force}-1")
            assert result["within_deadline"] is True
        rpc.enforcement.report_in(oid, forces[0], f"{forces[0]}-{town}", idempotency_key=f"{forces[0]}-1")
        assert rpc.enforcement.get_operation(oid)["status"] == "assembled"

        # the town plans the day; every force of the operation is on it, on one day
        plan = rpc.enforcement.schedule(town, 7)
        planned = [a for a in plan["assignments"] if a["operation_id"] == oid]
        assert sorted(a["force_code"] for a in planned) == sorted(forces)
        assert len({a["day"] for a in planned}) == 1

        done = rpc.enforcement.complete_operation(oid, "占道摊点已清理，已约谈摊主依法处理",
                                                  idempotency_key="done", evidence=["photo:e2e-1"])
        assert done["status"] == "completed"

        resolved = eventually(lambda: [o for o in rpc.triage.find_orders(case_no=case_no)
                                       if o["status"] == "resolved"], what="order resolved")
        assert resolved[0]["order_no"] == order["order_no"]

    view = eventually(lambda: (lambda v: v if v["status"] == "resolved" else None)(http("GET", track)[1]),
                      what="citizen sees resolved")
    assert view["can_rate"] and view["timeline"][-1]["text"] == "承办单位已办结，欢迎您对办理结果进行评价"
    # the citizen got the receipt and the result with an invitation to rate
    mails = eventually(lambda: (lambda m: m if len(m) >= 2 else None)(
        [m for m in platform.mailbox.messages if "wangwu@example.com" in m["To"]]), what="citizen mails")
    assert len(mails) == 2
    for service in ("intake", "triage", "enforcement", "notify", "metrics"):
        log = platform.log(service)
        for secret in PERSONAL:
            assert secret not in log, f"{service} logged personal data"

"""Walk appeals around the closed loop on a running platform (`make run`), as a citizen and a unit would.

    .venv/bin/python scripts/walkthrough.py [--api http://127.0.0.1:8000] [--amqp-uri ...] [--keys var/auth]

Each actor calls with a token of its own role, signed with the local issuer's key that `make run`
keeps in var/auth: a dispatcher follows the case, the unit's clerk works the order.
1. a citizen submits an appeal over HTTP;            triage routes it      → dispatched
2. the unit reports in (triage.accept_order, RPC);                          → accepted
3. the unit resolves it (triage.resolve_order);                             → resolved
4. the citizen rates it "satisfied" over HTTP;                              → closed
and a second appeal that the citizen rates "unsatisfied":                   → reopened (返工)
Exits non-zero if any step does not happen within its time.
"""
import argparse
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

from nameko.exceptions import UnknownService
from nameko.standalone.rpc import ClusterRpcProxy

from wuji_common import auth

APPEAL = {
    "channel": "wechat",
    "title": "村口路灯不亮",
    "content": "阴平镇金寺村村口的路灯坏了一个多月，晚上出行很不安全，请尽快维修。",
    "citizen": {"name": "李四", "phone": "13912345678", "email": "lisi@example.com"},
    "location": {"town_code": "370404101", "village": "370404101201"},
}


def http(method, url, body=None, headers=None):
    data = json.dumps(body, ensure_ascii=False).encode("utf-8") if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_for(what, probe, timeout=20):
    """``probe()``'s value once it is true. A service that has not attached to the broker yet (run
    right after `make run` was started: the API answers before triage does) counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = probe()
        except UnknownService:
            value = None
        if value:
            return value
        time.sleep(0.2)
    print(f"  ✗ {what}: not within {timeout}s")
    sys.exit(1)


class Actors:
    """RPC proxies calling as one role each, with short-lived tokens from the local issuer."""

    def __init__(self, amqp_uri, keys_dir):
        self.amqp_uri = amqp_uri
        keys = auth.KeyDirectory(keys_dir)
        if not keys.exists():
            print(f"no issuer keys in {keys_dir}: start the platform with `make run` first")
            sys.exit(1)
        self.signing = keys.signing_key()

    @contextmanager
    def as_role(self, role, subject, **scope):
        token, _ = auth.issue_token(self.signing, subject, role, ttl_seconds=600, **scope)
        with ClusterRpcProxy({"AMQP_URI": self.amqp_uri}, context_data={"authorization": auth.bearer(token)},
                             timeout=10) as rpc:
            yield rpc


def walk(api, actors, satisfaction):
    with actors.as_role("dispatcher", "staff:walkthrough-dispatcher") as dispatcher:
        _walk(api, actors, dispatcher, satisfaction)


def _walk(api, actors, rpc, satisfaction):
    status, receipt = http("POST", f"{api}/api/v1/appeals", APPEAL, {"Idempotency-Key": uuid.uuid4().hex})
    assert status == 201, receipt
    case_no, token = receipt["case_no"], receipt["tracking_token"]
    print(f"  submitted            {case_no}  (status {receipt['status']})")
    track = f"{api}/api/v1/appeals/{case_no}?token={token}"

    order = wait_for("order dispatched", lambda: (rpc.triage.find_orders(case_no=case_no) or [None])[0])
    print(f"  dispatched           {order['order_no']} → {order['unit_code']}  "
          f"(accept by {order['accept_due_at']}, resolve by {order['resolve_due_at']})")
    with actors.as_role("unit_clerk", "staff:walkthrough-clerk", unit_code=order["unit_code"]) as unit:
        accepted = unit.triage.accept_order(order["order_no"], order["unit_code"],
                                            idempotency_key=uuid.uuid4().hex)
        print(f"  accepted (报到)      status {accepted['status']}  (as a clerk of {order['unit_code']})")
        resolved = unit.triage.resolve_order(order["order_no"], order["unit_code"], "已更换灯泡并恢复照明",
                                             idempotency_key=uuid.uuid4().hex)
        print(f"  resolved (办结)      status {resolved['status']}")

    wait_for("citizen sees resolved", lambda: http("GET", track)[1].get("can_rate"))
    status, rated = http("POST", f"{api}/api/v1/appeals/{case_no}/rating?token={token}",
                         {"satisfaction": satisfaction, "comment": "谢谢" if satisfaction != "unsatisfied" else "还是不亮"})
    assert status == 200, rated
    print(f"  rated                {satisfaction}")
    expected = "reopened" if satisfaction == "unsatisfied" else "closed"
    final = wait_for(f"order {expected}", lambda: next(
        (o for o in rpc.triage.find_orders(case_no=case_no) if o["status"] == expected), None))
    view = wait_for("citizen sees it", lambda: (lambda v: v if v["status"] == expected else None)(
        http("GET", track)[1]))
    print(f"  {expected:<20} {final['order_no']}  citizen sees: {view['status_text']}")
    for line in view["timeline"]:
        print(f"      {line['at'][:19]}  {line['text']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", default="http://127.0.0.1:8000")
    parser.add_argument("--amqp-uri", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--keys", default=str(Path(__file__).resolve().parents[1] / "var" / "auth"),
                        help="the local issuer's keys (make run keeps them in var/auth)")
    args = parser.parse_args()
    actors = Actors(args.amqp_uri, args.keys)
    print("appeal 1: satisfied → closed")
    walk(args.api, actors, "satisfied")
    print("appeal 2: unsatisfied → reopened (返工)")
    walk(args.api, actors, "unsatisfied")
    print("both appeals went around the loop.")


if __name__ == "__main__":
    main()

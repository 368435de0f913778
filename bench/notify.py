"""Notify benchmark: webhook deliveries per second and the latency notify adds (event published →
webhook received), next to a baseline measured in the same run: the same receiver hit directly by a
plain HTTP client loop with the same signed bodies.

    .venv/bin/python bench/notify.py [--events 1000] [--paced 200] [--rate 10] [--runs 3] [--db postgresql] [--profile PATH]

notify runs as its own process (`nameko run`, config.yml as shipped except the per-endpoint rate limit,
which is lifted so that the machinery is measured, not the limit), on its own RabbitMQ vhost and
database; the receiver (a department system checking every HMAC signature) is another process. One
subscriber takes `order_accepted`, an event with no notices of its own, so every event is exactly one
webhook delivery. Phases, each run `--runs` times (medians printed):
1. baseline: the receiver hit by one plain HTTP client loop (requests.Session), `--events` requests;
2. throughput: `--events` events published at once; deliveries/s = events ÷ (last received − first
   published);
3. latency: `--paced` events published at `--rate`/s; received − occurred_at per event, p50/p99.
The last line is one JSON object with deliveries_per_s and p99_ms (and the rest).
Everything runs on this machine's loopback and is removed at the end.
"""
import argparse
import hashlib
import hmac
import http.server
import json
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# this file is named like the service's package: keep bench/ off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
BIN = Path(sys.executable).parent
AMQP_HOST = "amqp://guest:guest@127.0.0.1:5672"
PG = "postgresql://postgres@127.0.0.1:5432"


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port):
    import socket
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def rabbitmqctl(*args):
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


# --- the receiver (its own process) -------------------------------------------------------------------

def receiver(port, secret, log_path):
    """Check each request's signature and timestamp, answer 204, and log (received, occurred_at)."""
    log = open(log_path, "a", buffering=1)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received = time.time()
            stamp = self.headers.get("X-Wuji-Timestamp", "")
            expected = "sha256=" + hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
            ok = hmac.compare_digest(expected, self.headers.get("X-Wuji-Signature", "")) and \
                abs(received - int(stamp)) < 300
            self.send_response(204 if ok else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            if ok:
                event = json.loads(body)
                occurred = datetime.fromisoformat(event["occurred_at"]).timestamp()
                log.write(f"{received:.6f} {occurred:.6f} {event['delivery_id']}\n")

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def read_log(path):
    if not Path(path).exists():
        return []
    rows = []
    for line in Path(path).read_text().splitlines():
        received, occurred, delivery = line.split()
        rows.append((float(received), float(occurred), delivery))
    return rows


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# --- phases -------------------------------------------------------------------------------------------

def baseline(url, secret, count):
    """One plain client loop posting signed bodies straight to the receiver."""
    import requests
    session = requests.Session()
    latencies = []
    started = time.perf_counter()
    for i in range(count):
        body = json.dumps({"delivery_id": str(uuid.uuid4()), "event_id": str(uuid.uuid4()),
                           "type": "order_accepted", "occurred_at": datetime.now(timezone.utc).isoformat(),
                           "data": {"order_no": f"GD{i}"}}).encode()
        stamp = str(int(time.time()))
        signature = "sha256=" + hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        t0 = time.perf_counter()
        response = session.post(url, data=body, headers={"Content-Type": "application/json",
                                                         "X-Wuji-Timestamp": stamp, "X-Wuji-Signature": signature})
        latencies.append(time.perf_counter() - t0)
        assert response.status_code == 204
    elapsed = time.perf_counter() - started
    return count / elapsed, percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000


def events(count, start):
    from wuji_common.events import make_event
    return [make_event("order_accepted", f"YC20261125{(start + i) % 10**6:06d}", {
        "order_no": f"GD{start + i}", "unit_code": "dept-housing", "town_code": "370404001",
        "category": "housing", "status": "accepted", "accepted_at": "2026-11-25T03:00:00+00:00",
        "within_deadline": True}) for i in range(count)]


def throughput(publisher, log_path, count, start):
    batch = events(count, start)
    before = len(read_log(log_path))
    first = time.time()
    for i in range(0, count, 200):
        publisher.publish(batch[i:i + 200])
    wait_for(lambda: len(read_log(log_path)) >= before + count, 600, "the burst to be delivered")
    last = max(r for r, _, _ in read_log(log_path)[before:])
    return count / (last - first)


def latency(publisher, log_path, count, rate, start):
    from wuji_common.events import make_event  # noqa: F401
    before = len(read_log(log_path))
    for i, envelope in enumerate(events(count, start)):
        target = time.perf_counter() + 1.0 / rate
        envelope["occurred_at"] = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        publisher.publish([envelope])
        time.sleep(max(0.0, target - time.perf_counter()))
    wait_for(lambda: len(read_log(log_path)) >= before + count, 300, "the paced events to be delivered")
    added = [(received - occurred) * 1000 for received, occurred, _ in read_log(log_path)[before:]]
    return percentile(added, 0.5), percentile(added, 0.99)


# --- set-up -------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--paced", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--profile", metavar="PATH", help="run notify under cProfile, stats to PATH")
    args = parser.parse_args()

    from notify import content, handlers
    from notify.service import NotifyService
    from wuji_common.cli import unit_of_work_for
    from wuji_common.migrations import upgrade
    from wuji_common.relay import BatchPublisher
    from wuji_common.testing import drop_postgres_database, new_postgres_database
    from wuji_common.topology import declare
    from notify.models import metadata

    work = Path(tempfile.mkdtemp(prefix="wuji-bench-notify-"))
    vhost = f"wuji-bench-notify-{os.getpid()}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    amqp_uri = f"{AMQP_HOST}/{vhost}"
    database = None
    if args.db == "postgresql":
        db_url, database = new_postgres_database("wuji_bench_notify")
    else:
        db_url = f"sqlite:///{work / 'notify.db'}"
    procs, finished = [], False
    try:
        upgrade(ROOT / "services/notify/notify/migrations", db_url)
        uow = unit_of_work_for("notify", metadata, db_url)
        handlers.load_unit_contacts(uow, content.unit_contacts())
        port = free_port()
        url = f"http://127.0.0.1:{port}/wuji/events"
        secret = handlers.subscribe(uow, {"url": url, "event_types": ["order_accepted"],
                                          "name": "bench receiver"})["secret"]
        uow.session.bind.dispose()
        log_path = work / "received.log"
        recv = mp.get_context("spawn").Process(target=receiver, args=(port, secret, str(log_path)), daemon=True)
        recv.start()
        procs.append(recv)
        wait_for(lambda: port_open(port), 20, "the receiver")
        declare(amqp_uri, [NotifyService])
        metrics_port = free_port()
        env = dict(os.environ, AMQP_URI=amqp_uri, NOTIFY_DB_URL=db_url, NOTIFY_METRICS_PORT=str(metrics_port),
                   NOTIFY_RATE_LIMIT_WEBHOOK="0", SMTP_PORT=str(free_port()), PYTHONUNBUFFERED="1")
        with open(work / "notify.log", "ab") as out:
            # --profile: notify runs under cProfile, its stats written when it stops
            profiler = [sys.executable, "-m", "cProfile", "-o", args.profile] if args.profile else []
            notify = subprocess.Popen([*profiler, str(BIN / "nameko"), "run", "--config",
                                       str(ROOT / "services/notify/config.yml"), "notify.service"],
                                      env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        wait_for(lambda: port_open(metrics_port) or notify.poll() is not None, 60, "notify")
        if notify.poll() is not None:
            raise RuntimeError((work / "notify.log").read_text()[-3000:])
        time.sleep(1.0)
        publisher = BatchPublisher(amqp_uri)
        # warm up: connections, pools, the first token of everything
        throughput(publisher, log_path, 100, 10**6 - 100)

        base, rates, p50s, p99s = [], [], [], []
        start = 0
        for run in range(1, args.runs + 1):
            base.append(baseline(url, secret, args.events))
            rates.append(throughput(publisher, log_path, args.events, start))
            start += args.events
            p50, p99 = latency(publisher, log_path, args.paced, args.rate, start)
            start += args.paced
            p50s.append(p50)
            p99s.append(p99)
            print(f"run {run}: baseline {base[-1][0]:7.0f} req/s (p50 {base[-1][1]:.2f} ms, p99 {base[-1][2]:.2f} ms) | "
                  f"notify {rates[-1]:6.0f} deliveries/s | added latency at {args.rate:.0f}/s: "
                  f"p50 {p50:.1f} ms, p99 {p99:.1f} ms", flush=True)
        publisher.close()
        from sqlalchemy import func, select
        from notify.models import DeliveryAttempt
        counts = unit_of_work_for("notify", metadata, db_url)
        with counts:
            outcomes = dict(counts.session.execute(select(DeliveryAttempt.outcome, func.count())
                                                   .group_by(DeliveryAttempt.outcome)).all())
        counts.session.bind.dispose()
        print(f"attempts by outcome: {outcomes}")
        delivered = read_log(log_path)
        doubled = len(delivered) - len({d for _, _, d in delivered})
        result = {
            "deliveries_per_s": round(statistics.median(rates), 1),
            "p50_ms": round(statistics.median(p50s), 1),
            "p99_ms": round(statistics.median(p99s), 1),
            "baseline_per_s": round(statistics.median(b[0] for b in base), 1),
            "baseline_p99_ms": round(statistics.median(b[2] for b in base), 2),
            "ratio": round(statistics.median(rates) / statistics.median(b[0] for b in base), 3),
            "events": args.events, "paced": args.paced, "rate": args.rate, "runs": args.runs,
            "db": args.db, "doubled": doubled,
        }
        print(f"median of {args.runs} runs on {args.db}: notify {result['deliveries_per_s']} deliveries/s "
              f"(baseline {result['baseline_per_s']} req/s, ratio {result['ratio']}); added latency p50 "
              f"{result['p50_ms']} ms, p99 {result['p99_ms']} ms; repeats received: {doubled}")
        print(json.dumps(result))
        finished = True
    finally:
        for proc in procs:
            proc.terminate()
        if "notify" in locals() and notify.poll() is None:
            os.killpg(notify.pid, signal.SIGTERM)
            try:
                notify.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(notify.pid, signal.SIGKILL)
        rabbitmqctl("delete_vhost", vhost)
        if database:
            drop_postgres_database(database)
        # notify's log and what the receiver got: kept only when the run did not finish
        if finished:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"notify's log is kept in {work / 'notify.log'}", file=sys.stderr)


if __name__ == "__main__":
    main()

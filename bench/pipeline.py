"""End-to-end pipeline benchmark: appeals/s from HTTP submit to `order_dispatched`, through all five
services on PostgreSQL, next to the raw RabbitMQ publish→consume rate measured in the same run.

    .venv/bin/python bench/pipeline.py [--appeals 3000] [--concurrency 32] [--raw-messages 20000]
                                       [--workload varied|same]

The appeals are real citizen messages from ../shared/data/appeals-train.csv, in every town and
village and on every channel, one in ten from someone who wrote before (``varied``, the default);
``--workload same`` sends one message about one street lamp from everyone in one village, the worst
case: a single mass hot spot that every appeal joins.

Prints, in order:
0. PostgreSQL's durable commit on the idle machine (one-row INSERT + COMMIT, 100 a second for
   ``--commit-seconds``): p50/p99/p99.9/max and the share of the time a commit would have waited
   more than 50 ms (the disk of this machine stalls its syncs now and then, whoever writes; every
   appeal's path commits twice, so that share bounds the latency percentiles any design here can
   reach);
1. raw broker: 1 KB persistent messages to a durable queue, publisher confirms collected per window,
   one consumer with manual acks (separate processes);
2. maximum end-to-end rate: `--appeals` submitted by `--concurrency` clients as fast as they are
   answered; the rate is appeals ÷ (last order_dispatched seen − first submit);
3. latency submit → order_dispatched (p50/p99) with appeals paced at half that maximum rate, once
   every queue is empty (the projections nobody waits for have caught up with the bursts);
   before each run, notify sends what the last one left due (e-mail to the local mailbox is not
   rate-limited here: each run pays for its own receipts and notices, not for the last one's);
   with where the latency goes, the CPU per appeal at that steady rate (its batches are small:
   each appeal pays more of their fixed costs than in a burst) and how long each service was
   runnable but waiting for a core (its run-queue time, per appeal: latency no profile shows);
4. CPU milliseconds per appeal for each process during phase 2 (each service, RabbitMQ, PostgreSQL,
   the load driver, the event collector), counted until notify has sent the run's receipts and
   notices too (it may still be sending after the last dispatch: that is work the appeals caused).
The last line is one JSON object: e2e_per_s, raw_broker_per_s, ratio, p50_ms, p99_ms, cpu_ms_per_appeal,
paced_cpu_ms_per_appeal, paced_run_queue_ms_per_appeal, commit_p99_ms, commit_p999_ms, commit_max_ms,
commit_stall_share. ``bench/floor.py`` runs the same phases on the machinery without the domain.
The services run as `make run` runs them: notify and metrics at nice 10 (``--background-nice``).
Everything runs on this machine's loopback, in a RabbitMQ vhost and PostgreSQL databases of its own,
removed at the end, as is its work folder (the services' logs, the mail) unless the run failed.
"""
import argparse
import base64
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
from contextlib import contextmanager
from pathlib import Path

from wuji_common.local_platform import SERVICES, Mailbox, Platform
from wuji_common.testing import own_vhost

PG = "postgresql://postgres@127.0.0.1:5432"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """user + system CPU of a process so far (from /proc), or 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def run_queue_seconds(pid):
    """Time the process's threads have spent runnable but waiting for a CPU so far (from
    /proc/<pid>/task/*/schedstat), or 0 if it is gone: on a machine whose cores are all busy, this
    is latency that no CPU profile of the process shows."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            pass
    return total / 1e9


def pids_of(pattern):
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out if int(p) != os.getpid()]


# --- 0. the database's commits on the idle machine -------------------------------------------------

STALL_MS = 50   # the latency target: a commit that waits longer than this alone misses it


def commit_latency(seconds, rate=100):
    """One-row INSERT + COMMIT into a scratch database of its own, ``rate`` times a second for
    ``seconds``, nothing else of the bench running: the durable commit every appeal's path needs
    twice (intake registers it, triage writes its order) as this machine's disk allows it.

    Returns p50/p99/p99.9/max (ms) and ``stall_share``: the share of the time during which a commit
    begun then would have waited more than :data:`STALL_MS` (a probe that took d ms stood in a stall
    for its first d − STALL_MS ms; the probes follow each other, so their spans tile the time)."""
    import psycopg2
    from wuji_common.testing import drop_postgres_database, new_postgres_database
    url, name = new_postgres_database(f"wuji_bench_{os.getpid()}_commits")
    try:
        with psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://")) as conn:
            cur = conn.cursor()
            cur.execute("CREATE TABLE probe (id serial PRIMARY KEY, v text)")
            conn.commit()
            took, stalled, started = [], 0.0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                t = time.perf_counter()
                cur.execute("INSERT INTO probe (v) VALUES ('x')")
                conn.commit()
                ms = (time.perf_counter() - t) * 1000
                took.append(ms)
                stalled += max(0.0, ms - STALL_MS)
                time.sleep(max(0.0, 1 / rate - ms / 1000))
            elapsed_ms = (time.perf_counter() - started) * 1000
        conn.close()
    finally:
        drop_postgres_database(name)
    took.sort()
    return {"count": len(took), "p50": pct(took, 50), "p99": pct(took, 99), "p999": pct(took, 99.9),
            "max": took[-1], "over": sum(1 for ms in took if ms > STALL_MS), "stall_share": stalled / elapsed_ms}


def report_commit_latency(args):
    """Phase 0, printed; what :func:`commit_latency` found (None with ``--commit-seconds 0``)."""
    if not args.commit_seconds:
        return None
    c = commit_latency(args.commit_seconds)
    print(f"PostgreSQL on the idle machine, one-row INSERT + COMMIT ×{c['count']} ({args.commit_seconds:.0f} s): "
          f"p50 {c['p50']:.2f} ms, p99 {c['p99']:.2f} ms, p99.9 {c['p999']:.1f} ms, max {c['max']:.1f} ms; "
          f"{c['over']} over {STALL_MS} ms; a commit begun at a random moment waits more than {STALL_MS} ms "
          f"{c['stall_share']:.1%} of the time (two such commits on every appeal's path)", flush=True)
    return c


# --- 1. raw broker ------------------------------------------------------------------------------------

def raw_consumer(amqp_uri, queue, count, ready, result):
    from kombu import Connection
    with Connection(amqp_uri) as conn:
        channel = conn.channel()
        channel.basic_qos(0, 256, False)
        seen = 0
        last = [0.0]

        def on_message(message):
            nonlocal seen
            seen += 1
            channel.basic_ack(message.delivery_tag)
            last[0] = time.time()

        channel.basic_consume(queue, callback=on_message)
        ready.set()
        while seen < count:
            conn.drain_events(timeout=30)
        result.put(last[0])


def raw_broker_rate(amqp_uri, count, window=256):
    import amqp
    from kombu import Connection
    queue = f"bench-raw-{uuid.uuid4().hex[:6]}"
    with Connection(amqp_uri) as conn:
        conn.default_channel.queue_declare(queue, durable=True, auto_delete=False)
    ready, result = mp.Event(), mp.Queue()
    consumer = mp.Process(target=raw_consumer, args=(amqp_uri, queue, count, ready, result))
    consumer.start()
    ready.wait(30)
    body = os.urandom(512).hex().encode()  # 1 KB
    with Connection(amqp_uri) as conn:
        channel = conn.channel()
        channel.confirm_select()
        acked = [0]
        channel.events["basic_ack"].add(lambda tag, multiple: acked.__setitem__(0, max(acked[0], tag)))
        started = time.time()
        for sent in range(1, count + 1):
            channel.basic_publish(amqp.Message(body, delivery_mode=2), exchange="", routing_key=queue)
            if sent % window == 0 or sent == count:
                while acked[0] < sent:
                    conn.drain_events(timeout=10)
        last_consumed = result.get(timeout=120)
        consumer.join()
        conn.default_channel.queue_delete(queue)
    return count / (last_consumed - started)


# --- the load driver and the event collector, each in its own process ---------------------------------

APPEAL = {
    "channel": "hotline", "title": "路灯不亮",
    "content": "阴平镇金寺村村口路灯不亮，晚上出行不便，请尽快维修。",
    "citizen": {"name": "王五", "phone": "13900000000"},
    "location": {"town_code": "370404101", "village": "370404101201"},
}
CHANNELS = ("wechat", "web", "hotline", "walk_in", "grid_patrol", "video")
TRAIN_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "appeals-train.csv"


def workload(kind, count, people_from=0):
    """The appeals to submit, in order.

    ``varied`` (default): real citizen messages (the shared training file, cut to intake's limits) in
    turn, each from another person (one in ten writes again, a repeat; people are numbered from
    ``people_from``, so that each run has people of its own), in every town and village of
    the reference data and on every channel; what a district's day looks like.
    ``same``: one message about one street lamp from ``count`` people in one village: a mass hot spot
    (the worst case for the near-duplicate search and the hot-spot row all appeals join)."""
    if kind == "same":
        return [dict(APPEAL, citizen={"name": "王五", "phone": f"139{(people_from + n) % 10**8:08d}"})
                for n in range(count)]
    import csv
    import random
    from wuji_common import reference
    towns = sorted(reference.towns())
    villages = {t: sorted(v for v, d in reference.villages().items() if d["parent_code"] == t) for t in towns}
    with open(TRAIN_CSV, encoding="utf-8") as f:
        messages = [(r["subject"][:100] or "诉求", r["body"][:5000] or r["subject"]) for r in csv.DictReader(f)]
    rnd = random.Random(7)
    rnd.shuffle(messages)
    appeals = []
    for n in range(count):
        title, content = messages[n % len(messages)]
        town = towns[n % len(towns)]
        location = {"town_code": town}
        if villages[town] and n % 3:
            location["village"] = rnd.choice(villages[town])
        person = rnd.randrange(n) if n and n % 10 == 0 else n
        appeals.append({"channel": CHANNELS[n % len(CHANNELS)], "title": title, "content": content,
                        "citizen": {"name": "王五", "phone": f"139{(people_from + person) % 10**8:08d}"},
                        "location": location})
    return appeals


def driver(api_port, count, concurrency, rate, out, kind="varied"):
    """Submit ``count`` appeals of the ``kind`` of :func:`workload` from ``concurrency`` threads with
    keep-alive connections; closed loop when ``rate`` is None, else paced at ``rate``/s. Results go
    to the file ``out`` (JSON)."""
    import http.client
    import threading
    from concurrent.futures import ThreadPoolExecutor

    sent = {}
    # each run's people are new: a run must not find the last run's appeals as repeats
    appeals = workload(kind, count, people_from=int(time.time() * 1000) % 10**7 * 10)
    local = threading.local()
    began = time.time()

    def submit(n):
        if rate:
            delay = began + n / rate - time.time()
            if delay > 0:
                time.sleep(delay)
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=60)
        payload = json.dumps(appeals[n], ensure_ascii=False).encode("utf-8")
        started = time.time()
        local.conn.request("POST", "/api/v1/appeals", payload, {"Content-Type": "application/json"})
        response = local.conn.getresponse()
        raw = response.read()
        if response.status != 201:
            raise RuntimeError(f"{response.status}: {raw[:3000].decode('utf-8', 'replace')}")
        data = json.loads(raw)
        sent[data["case_no"]] = started

    cpu0 = time.process_time()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(submit, n) for n in range(count)]:
            future.result()
    Path(out).write_text(json.dumps({"sent": sent, "cpu": time.process_time() - cpu0}))


def collector(amqp_uri, queue, expected, ready, out):
    from kombu import Connection
    arrivals, received = {}, {}
    cpu0 = time.process_time()
    with Connection(amqp_uri) as conn:
        channel = conn.channel()
        channel.basic_qos(0, 500, False)

        def on_message(message):
            envelope = json.loads(message.body)
            if envelope["type"] == "appeal_received":   # for the stages: when intake raised it
                received[envelope["case_no"]] = envelope["occurred_at"]
            else:
                arrivals[envelope["case_no"]] = (time.time(), envelope["occurred_at"])
            channel.basic_ack(message.delivery_tag)

        channel.basic_consume(queue, callback=on_message)
        ready.set()
        # give up after 60 s without progress: a broken run reports what is missing, not hangs
        last_progress, seen = time.time(), 0
        while len(arrivals) < expected and time.time() - last_progress < 60:
            try:
                conn.drain_events(timeout=5)
            except TimeoutError:
                pass
            if len(arrivals) > seen:
                last_progress, seen = time.time(), len(arrivals)
    out.put({"arrivals": arrivals, "received": received, "cpu": time.process_time() - cpu0})


def start_profilers(platform, directory):
    """py-spy sampling each service process (CPU samples only), raw collapsed stacks per service."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():   # a profiling aid only, so not among the project's requirements
        sys.exit("--profile needs py-spy: .venv/bin/pip install py-spy")
    directory.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
                              "--nonblocking", "--output", str(directory / f"{name}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, pid in platform.pids().items()]


def stop_profilers(profilers):
    for proc in profilers:
        proc.send_signal(signal.SIGINT)
    for proc in profilers:
        proc.wait(timeout=60)


def run_phase(platform, count, concurrency, rate=None, profile=None, kind="varied", settle_with=None):
    from kombu import Connection, Exchange, Queue
    queue = f"bench-dispatched-{uuid.uuid4().hex[:6]}"
    with Connection(platform.amqp_uri) as conn:
        channel = conn.channel()
        exchange = Exchange("triage.events", type="topic", durable=True, channel=channel)
        exchange.declare()
        q = Queue(queue, exchange=exchange, routing_key="order_dispatched", durable=False,
                  auto_delete=False, channel=channel)
        q.declare()
        intake_events = Exchange("intake.events", type="topic", durable=True, channel=channel)
        intake_events.declare()
        q.bind_to(intake_events, routing_key="appeal_received")
    ready, collected = mp.Event(), mp.Queue()
    driven = Path(tempfile.mkstemp(suffix=".json")[1])
    coll = mp.Process(target=collector, args=(platform.amqp_uri, queue, count, ready, collected))
    coll.start()
    ready.wait(30)
    def snapshot():
        # PostgreSQL starts a backend per connection: count every backend alive at either end
        groups = {**{s: [p] for s, p in platform.pids().items()},
                  "rabbitmq": pids_of("beam.smp"), "postgresql": pids_of("postgres")}
        return {name: {p: (cpu_seconds(p), run_queue_seconds(p)) for p in pids}
                for name, pids in groups.items()}

    profilers = start_profilers(platform, profile) if profile else []
    cpu_before = snapshot()
    drv = mp.Process(target=driver, args=(platform.api_port, count, concurrency, rate, driven, kind))
    drv.start()
    drv.join()
    if drv.exitcode != 0:
        raise RuntimeError(f"load driver failed (exit {drv.exitcode})")
    d = json.loads(driven.read_text())
    driven.unlink()
    c = collected.get(timeout=900)
    # the run's CPU includes the receipts and notices it caused: notify may still be sending them
    # after the last dispatch, so the snapshot is taken once it has sent everything due
    sending_after = (settle_with or settle)(platform)
    cpu_after = snapshot()
    stop_profilers(profilers)
    coll.join()
    with Connection(platform.amqp_uri) as conn:
        conn.default_channel.queue_delete(queue)
    sent, arrivals = d["sent"], c["arrivals"]
    latencies = sorted((arrivals[k][0] - sent[k]) * 1000 for k in sent if k in arrivals)
    # where it went: submit → triage raised order_dispatched (intake, its relay, triage) and from
    # there → here (triage's commit and relay, the broker)
    from datetime import datetime
    raised = {k: datetime.fromisoformat(occurred).timestamp() for k, (_, occurred) in arrivals.items()}
    intake_raised = {k: datetime.fromisoformat(occurred).timestamp() for k, occurred in c["received"].items()}
    both = [k for k in sent if k in raised and k in intake_raised]
    stages = {"submit → appeal_received raised (intake)": sorted((intake_raised[k] - sent[k]) * 1000 for k in both),
              "→ order_dispatched raised (relay, broker, triage)": sorted((raised[k] - intake_raised[k]) * 1000
                                                                           for k in both),
              "→ received here (triage's commit, relay, broker)": sorted((arrivals[k][0] - raised[k]) * 1000
                                                                          for k in both)}
    missing = len(sent) - len(latencies)
    span = max(at for at, _ in arrivals.values()) - min(sent.values())
    # per group: (CPU, run-queue) seconds of its processes over the run
    used = {name: [sum(after[i] - cpu_before[name].get(pid, (0.0, 0.0))[i] for pid, after in pids.items())
                   for i in (0, 1)]
            for name, pids in cpu_after.items()}
    cpu = {name: seconds for name, (seconds, _) in used.items()}
    waited = {name: seconds for name, (_, seconds) in used.items()}
    cpu["load driver"] = d["cpu"]
    cpu["event collector"] = c["cpu"]
    return {"rate": len(latencies) / span, "latencies": latencies, "missing": missing, "cpu": cpu,
            "waited": waited, "count": count, "sending_after": sending_after, "stages": stages}


def settle(platform, timeout=300, queues=False, deliveries=True):
    """Wait until notify has sent what is due (the citizens' receipts, the units' notices of the
    last run): otherwise the next run would pay for the last one's e-mails (``deliveries=False``: a
    platform without notify's tables, bench/floor.py's). With ``queues``, also
    until every queue of the run's vhost is empty (metrics' and intake's projections, which nobody
    waits for, may still be working through a burst: a paced run must not share the machine with
    that backlog). Returns the seconds waited, or None if it did not settle in ``timeout``."""
    vhost = platform.amqp_uri.rsplit("/", 1)[1]
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if (not deliveries or due_deliveries(platform) == 0) and (not queues or queued_messages(vhost) == 0):
            return time.monotonic() - started
        time.sleep(0.5)
    return None


def due_deliveries(platform):
    """Notices notify has due and not sent yet."""
    import psycopg2
    url = platform.db_url("notify").replace("postgresql+psycopg2://", "postgresql://")
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM deliveries WHERE status = 'pending' AND next_attempt_at <= now()")
        return cur.fetchone()[0]


def queued_messages(vhost):
    """Messages ready or unacknowledged in the vhost's queues (retry and dead-letter queues left out:
    a message waiting there is not work in progress)."""
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "messages"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    total = 0
    for line in out.splitlines():
        name, _, count = line.rpartition("\t")
        if name and count.isdigit() and ".retry." not in name and not name.endswith(".dead"):
            total += int(count)
    return total


def pct(values, q):
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def measure(platform, args, settle_with=settle):
    """Phases 2 and 3 on a started platform: a warm-up, ``args.repeats`` maximum-rate runs (the
    median kept) and the paced run at half that rate. ``settle_with(platform, queues=...)`` waits
    until the last run's work is done (:func:`settle`)."""
    run_phase(platform, min(500, args.appeals), args.concurrency, kind=args.workload,
              settle_with=settle_with)  # warm-up
    runs = []
    for n in range(args.repeats):
        settle_with(platform)
        runs.append(run_phase(platform, args.appeals, args.concurrency, kind=args.workload,
                              profile=args.profile if n == 0 else None, settle_with=settle_with))
    runs.sort(key=lambda r: r["rate"])
    best = runs[len(runs) // 2]
    e2e = best["rate"]
    half = e2e / 2
    waited = settle_with(platform, queues=True)
    paced = run_phase(platform, max(100, int(half * args.latency_seconds)), args.concurrency, rate=half,
                      kind=args.workload, settle_with=settle_with)
    lat = paced["latencies"]
    # at a steady rate the batches are small and each appeal pays more of their fixed costs than
    # in the burst: this is what decides whether the machine keeps up at that rate
    paced_cpu = {name: round(seconds * 1000 / paced["count"], 2)
                 for name, seconds in sorted(paced["cpu"].items(), key=lambda kv: -kv[1])}
    # runnable but not running: the cores were busy with the other processes
    paced_wait = {name: round(seconds * 1000 / paced["count"], 2)
                  for name, seconds in sorted(paced["waited"].items(), key=lambda kv: -kv[1])}
    cpu_ms = {name: round(seconds * 1000 / best["count"], 2)
              for name, seconds in sorted(best["cpu"].items(), key=lambda kv: -kv[1])}
    return {"e2e": e2e, "runs": runs, "best": best, "half": half, "settled": waited, "paced": paced,
            "p50": pct(lat, 50), "p99": pct(lat, 99), "paced_cpu_ms": paced_cpu, "paced_wait_ms": paced_wait,
            "cpu_ms": cpu_ms}


def report(m, args, settled="notify had sent what the runs left due"):
    """Prints what :func:`measure` found; ``settled`` says what its ``settle_with`` waited for
    besides the queues."""
    runs, paced, best = m["runs"], m["paced"], m["best"]
    print(f"end to end, submit → order_dispatched, {args.appeals} {args.workload} appeals × {args.repeats} runs, "
          f"{args.concurrency} clients: median {m['e2e']:,.1f} appeals/s  "
          f"(runs: {', '.join(format(r['rate'], ',.1f') for r in runs)}; missing {best['missing']})", flush=True)
    waited = m["settled"]
    print(f"the queues had emptied and {settled} after {waited:.0f} s" if waited is not None
          else f"after 300 s, the queues had not emptied or not yet: {settled}", flush=True)
    print(f"latency at half the maximum rate ({m['half']:,.0f}/s, {paced['count']} appeals): "
          f"p50 {m['p50']:.1f} ms, p99 {m['p99']:.1f} ms, achieved {paced['rate']:,.1f}/s", flush=True)
    for stage, values in paced["stages"].items():
        print(f"  {stage}: p50 {pct(values, 50):.1f} ms, p99 {pct(values, 99):.1f} ms", flush=True)
    print(f"  CPU per appeal at this rate: {sum(m['paced_cpu_ms'].values()):.1f} ms ("
          + ", ".join(f"{name} {ms:.1f}" for name, ms in m["paced_cpu_ms"].items()) + ")", flush=True)
    print("  waiting for a CPU per appeal at this rate (ms, run queue): "
          + ", ".join(f"{name} {ms:.1f}" for name, ms in m["paced_wait_ms"].items()), flush=True)
    after = best["sending_after"]
    print(f"CPU per appeal during the maximum-rate run (ms), until {settled} "
          + (f"({after:.1f} s after the last dispatch):" if after is not None else "(not within 300 s):"))
    for name, ms in m["cpu_ms"].items():
        print(f"  {name:<16} {ms:7.2f}")
    print(f"  {'total':<16} {sum(m['cpu_ms'].values()):7.2f}", flush=True)


@contextmanager
def postgres_platform(amqp_uri, workdir, background_nice, platform_class=Platform):
    """A (not yet prepared) platform on PostgreSQL databases of its own and a local mailbox, in
    ``workdir``; its services stopped and its databases dropped at the end."""
    prefix = f"wuji_bench_{os.getpid()}_{uuid.uuid4().hex[:4]}"
    db_urls = Platform.server_urls(PG, prefix)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    mailbox = Mailbox(workdir).start()
    # intake encrypts contact data: a throwaway key (a Fernet key) unless one is given
    contact_keys = os.environ.get("WUJI_CONTACT_KEYS") or base64.urlsafe_b64encode(os.urandom(32)).decode()
    # the local mailbox is no provider with a quota: e-mail at the rate notify can send, so that each
    # run's CPU includes the sending of its receipts and notices (the default, 10/s, is a quota)
    platform = platform_class(amqp_uri, db_urls, workdir / "log",
                              env={**mailbox.env(), "WUJI_CONTACT_KEYS": contact_keys,
                                   "NOTIFY_RATE_LIMIT_EMAIL": "1000"},
                              background_nice=background_nice)
    try:
        yield platform
    finally:
        platform.stop()
        mailbox.stop()
        from wuji_common.testing import drop_postgres_database
        for service in SERVICES:
            drop_postgres_database(f"{prefix}_{service}")


def commit_figures(commits):
    """:func:`commit_latency`'s figures for a bench's JSON line (none if it did not run)."""
    if not commits:
        return {}
    return {"commit_p99_ms": round(commits["p99"], 2), "commit_p999_ms": round(commits["p999"], 1),
            "commit_max_ms": round(commits["max"], 1), "commit_stall_share": round(commits["stall_share"], 4)}


def report_raw_broker(amqp_uri, args):
    """Phase 1, printed; the median rate."""
    raw = [raw_broker_rate(amqp_uri, args.raw_messages) for _ in range(args.repeats)]
    raw_rate = statistics.median(raw)
    print(f"raw RabbitMQ publish→consume (1 KB, persistent, confirms per window, manual acks): "
          f"{raw_rate:,.0f} msg/s  (runs: {', '.join(f'{r:,.0f}' for r in raw)})", flush=True)
    return raw_rate


def argument_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appeals", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--raw-messages", type=int, default=20000)
    parser.add_argument("--latency-seconds", type=float, default=15)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each rate measurement (median)")
    parser.add_argument("--workload", choices=("varied", "same"), default="varied",
                        help="varied: real messages everywhere (default); same: one mass hot spot")
    parser.add_argument("--background-nice", type=int, default=10,
                        help="niceness of notify and metrics, as make run starts them (default 10; 0: none)")
    parser.add_argument("--commit-seconds", type=float, default=30,
                        help="how long to time PostgreSQL's commits before anything else runs (0: skip)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="directory: py-spy samples each service during the first maximum-rate "
                             "run (raw collapsed stacks, <service>.txt); needs py-spy")
    return parser


def main():
    # SIGTERM (timeout, kill) must still run the clean-up below, or the services keep running
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = argument_parser().parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="wuji-bench-"))
    finished = False
    commits = report_commit_latency(args)
    with own_vhost(f"wuji-bench-{os.getpid()}") as amqp_uri:
        raw_rate = report_raw_broker(amqp_uri, args)
        with postgres_platform(amqp_uri, workdir, args.background_nice) as platform:
            platform.prepare()
            platform.start()
            measured = measure(platform, args)
            report(measured, args)
            print(f"ratio end-to-end / raw broker: {measured['e2e'] / raw_rate:.3f}")
            print(json.dumps({"e2e_per_s": round(measured["e2e"], 1), "raw_broker_per_s": round(raw_rate, 1),
                              "ratio": round(measured["e2e"] / raw_rate, 4), "p50_ms": round(measured["p50"], 1),
                              "p99_ms": round(measured["p99"], 1), "cpu_ms_per_appeal": measured["cpu_ms"],
                              "paced_cpu_ms_per_appeal": measured["paced_cpu_ms"],
                              "paced_run_queue_ms_per_appeal": measured["paced_wait_ms"],
                              "workload": args.workload, **commit_figures(commits)}, ensure_ascii=False))
            finished = True
    # the services' logs and the mail they sent: kept only when the run did not finish
    if finished:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"the services' logs are kept in {workdir / 'log'}", file=sys.stderr)


if __name__ == "__main__":
    main()

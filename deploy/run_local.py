"""`make run`: migrate, load reference data, declare the queues and run all five services in the
foreground, each in its own process. Ctrl-C stops them all cleanly.

Databases: SQLite files under var/ by default; with --database-url (a PostgreSQL server) each service
gets its own database on it: wuji_intake, wuji_triage, ...
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
VAR = ROOT / "var"
BIN = Path(sys.executable).parent

SERVICES = {
    # service: (service class, metrics port)
    "intake": ("intake.service:IntakeService", 9101),
    "triage": ("triage.service:TriageService", 9102),
    "enforcement": ("enforcement.service:EnforcementService", 9103),
    "notify": ("notify.service:NotifyService", 9104),
    "metrics": ("metrics.service:MetricsService", 9105),
}
SMTP_PORT = 1025


def say(text=""):
    print(text, flush=True)


def broker_reachable(amqp_uri):
    from kombu import Connection
    try:
        with Connection(amqp_uri, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:
        return False


def port_free(port, host="127.0.0.1"):
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def db_url_for(service, database_url):
    if not database_url:
        return f"sqlite:///{VAR / f'{service}.db'}"
    return f"{database_url.rstrip('/')}/wuji_{service}"


def run_step(args, env):
    result = subprocess.run([str(a) for a in args], env=env, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        say(f"failed: {' '.join(map(str, args))}\n{result.stdout}{result.stderr}")
        sys.exit(1)
    return result.stdout.strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--api-port", type=int, default=8000)
    parser.add_argument("--amqp-uri", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL") or None)
    args = parser.parse_args()

    broker = urlparse(args.amqp_uri)
    if not broker_reachable(args.amqp_uri):
        say(f"RabbitMQ is not reachable at {broker.hostname}:{broker.port or 5672}: start one with "
            f"`sudo rabbitmq-server -detached` (or `docker run -d -p 5672:5672 rabbitmq:3.13`), "
            f"or set AMQP_URI to yours.")
        sys.exit(1)
    for port in [args.api_port] + [p for _, p in SERVICES.values()]:
        if not port_free(port):
            say(f"port {port} is already in use (another `make run`?): stop it, or set API_PORT.")
            sys.exit(1)

    (VAR / "log").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, AMQP_URI=args.amqp_uri, API_ADDRESS=f"127.0.0.1:{args.api_port}",
               SMTP_HOST="127.0.0.1", SMTP_PORT=str(SMTP_PORT), PYTHONUNBUFFERED="1")
    for service, (_, metrics_port) in SERVICES.items():
        env[f"{service.upper()}_DB_URL"] = db_url_for(service, args.database_url)
        env[f"{service.upper()}_METRICS_PORT"] = str(metrics_port)

    say("Wuji 五集: preparing databases and queues")
    for service in SERVICES:
        url = env[f"{service.upper()}_DB_URL"]
        run_step([BIN / service, "db", "upgrade", "--db-url", url], env)
        say("  " + run_step([BIN / service, "load-reference", "--db-url", url], env))
    say("  " + run_step([BIN / "wuji-broker", "declare", "--amqp-uri", args.amqp_uri,
                          *[cls for cls, _ in SERVICES.values()]], env))

    processes = {}
    if port_free(SMTP_PORT):
        # a local mailbox, so that the e-mails notify sends can be read in var/log/mail.log
        processes["mailbox"] = subprocess.Popen(
            [str(BIN / "python"), "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{SMTP_PORT}"],
            stdout=open(VAR / "log" / "mail.log", "ab"), stderr=subprocess.STDOUT, cwd=ROOT, env=env,
            start_new_session=True)
    for service, (cls, _) in SERVICES.items():
        log = open(VAR / "log" / f"{service}.log", "ab")
        processes[service] = subprocess.Popen(
            [str(BIN / "nameko"), "run", "--config", str(ROOT / "services" / service / "config.yml"),
             cls.split(":")[0]],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)

    stopping = False

    def stop(*_):
        nonlocal stopping
        if stopping:
            return
        stopping = True
        say("\nstopping all services…")
        for proc in processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for name, proc in processes.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"  {name} did not stop in time; killing it")
                proc.kill()
        say("all stopped.")

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    # ready when every service's metrics port and the API answer
    deadline = time.monotonic() + 60
    waiting = {s: p for s, (_, p) in SERVICES.items()} | {"api": args.api_port}
    while waiting and time.monotonic() < deadline and not stopping:
        for name, port in list(waiting.items()):
            if not port_free(port):
                waiting.pop(name)
        for name, proc in processes.items():
            if proc.poll() is not None:
                say(f"{name} exited with {proc.returncode} while starting; see var/log/{name}.log")
                stop()
                sys.exit(1)
        time.sleep(0.2)
    if waiting:
        say(f"not answering after 60 s: {', '.join(waiting)}; see var/log/")

    say(f"""
Wuji is running; Ctrl-C stops every service.
  HTTP API        http://127.0.0.1:{args.api_port}/api/v1/appeals
  RabbitMQ        {broker.hostname}:{broker.port or 5672}
  databases       {args.database_url or f'SQLite files under {VAR}/'}""")
    for service, (_, port) in SERVICES.items():
        say(f"  {service:<12}    metrics http://127.0.0.1:{port}/metrics    log var/log/{service}.log")
    if "mailbox" in processes:
        say(f"  mailbox         smtp://127.0.0.1:{SMTP_PORT}    mail var/log/mail.log")
    say("  walk an appeal around the loop:  .venv/bin/python scripts/walkthrough.py")

    while not stopping:
        for name, proc in processes.items():
            if proc.poll() is not None and not stopping:
                say(f"{name} stopped unexpectedly (exit {proc.returncode}); see var/log/{name}.log")
                stop()
                sys.exit(1)
        time.sleep(0.5)


if __name__ == "__main__":
    main()

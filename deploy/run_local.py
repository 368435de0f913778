"""`make run`: migrate, load reference data, declare the queues and run all five services in the
foreground, each in its own process, with a local mailbox for the e-mails. Ctrl-C stops them all.

Databases: SQLite files under var/ by default; with --database-url (a PostgreSQL server) each service
gets its own database on it: wuji_intake, wuji_triage, ...
"""
import argparse
import os
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from kombu import Connection

from wuji_common.local_platform import DEFAULT_METRICS_PORTS, SERVICES, Mailbox, Platform, port_open

ROOT = Path(__file__).resolve().parents[1]
VAR = ROOT / "var"
SMTP_PORT = 1025
# notify and metrics yield the CPU to intake and triage (wuji_common.local_platform.BACKGROUND)
BACKGROUND_NICE = int(os.environ.get("WUJI_BACKGROUND_NICE", "10"))


def say(text=""):
    print(text, flush=True)


def dev_contact_key():
    """The development key that encrypts contact data (intake.encryption), kept in var/ so that a
    second `make run` reads what the first one wrote; WUJI_CONTACT_KEYS in the environment wins."""
    if os.environ.get("WUJI_CONTACT_KEYS"):
        return os.environ["WUJI_CONTACT_KEYS"]
    path = VAR / "contact-keys"
    if not path.exists():
        from cryptography.fernet import Fernet
        VAR.mkdir(parents=True, exist_ok=True)
        path.write_text(Fernet.generate_key().decode("ascii") + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def broker_reachable(amqp_uri):
    try:
        with Connection(amqp_uri, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:
        return False


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
    busy = [p for p in [args.api_port, *DEFAULT_METRICS_PORTS.values()] if port_open(p)]
    if busy:
        say(f"port(s) {', '.join(map(str, busy))} already in use (another `make run`?): stop it, "
            f"or set API_PORT.")
        sys.exit(1)

    os.environ["WUJI_CONTACT_KEYS"] = dev_contact_key()
    db_urls = Platform.server_urls(args.database_url) if args.database_url else Platform.sqlite_urls(VAR)
    mailbox = Mailbox(VAR, port=SMTP_PORT) if not port_open(SMTP_PORT) else None
    platform = Platform(args.amqp_uri, db_urls, VAR / "log", api_port=args.api_port,
                        metrics_ports=dict(DEFAULT_METRICS_PORTS), background_nice=BACKGROUND_NICE,
                        env=mailbox.env() if mailbox else {"SMTP_HOST": "127.0.0.1",
                                                           "SMTP_PORT": str(SMTP_PORT)})

    say("Wuji 五集: preparing databases and queues")
    try:
        for line in platform.prepare():
            say(f"  {line}")
    except RuntimeError as err:
        say(str(err))
        sys.exit(1)

    stopping = False

    def stop(*_):
        nonlocal stopping
        if stopping:
            return
        stopping = True
        say("\nstopping all services…")
        platform.stop()
        if mailbox:
            mailbox.stop()
        say("all stopped.")

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    if mailbox:
        mailbox.start()
    platform.start(wait=False)
    try:
        platform.wait_ready(*SERVICES)
    except RuntimeError as err:
        say(f"{err}\nsee {VAR / 'log'}/")
        stop()
        sys.exit(1)

    say(f"""
Wuji is running; Ctrl-C stops every service.
  HTTP API        http://127.0.0.1:{args.api_port}/api/v1/appeals
  RabbitMQ        {broker.hostname}:{broker.port or 5672}
  databases       {args.database_url or f'SQLite files under {VAR}/'}""")
    for service in SERVICES:
        say(f"  {service:<12}    metrics http://127.0.0.1:{platform.metrics_ports[service]}/metrics"
            f"    log var/log/{service}.log"
            + (f"    nice {platform.niceness(service)}" if platform.niceness(service) else ""))
    if mailbox:
        say(f"  mailbox         smtp://127.0.0.1:{SMTP_PORT}    mail var/maildir/new/")
    say(f"  access tokens   issuer keys {VAR / 'auth'}/; an administrator's token for the wuji command:"
        f"\n                  .venv/bin/wuji --token var/auth/admin.token ...   (or wuji token issue --keys var/auth)")
    say("  walk an appeal around the loop:  .venv/bin/python scripts/walkthrough.py")

    while not stopping:
        ended = platform.exited()
        if ended and not stopping:
            for name, code in ended.items():
                say(f"{name} stopped unexpectedly (exit {code}); see var/log/{name}.log")
            stop()
            sys.exit(1)
        time.sleep(0.5)


if __name__ == "__main__":
    main()

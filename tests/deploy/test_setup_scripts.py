"""The deployment's set-up scripts and the services' entrypoint, run for real on this machine's
RabbitMQ and PostgreSQL (no Docker): what the containers would do, minus the containers.

- deploy/postgres/init-databases.sh makes a role and a database per service, each closed to the others;
- deploy/rabbitmq/init-users.sh makes a user per service whose permissions are enough for nameko and
  for the outbox, and no more (a service cannot publish another's events or read its queues);
- the compose file's queue declaration job, then deploy/entrypoint.sh for all five services, each
  as its own broker and database user: they migrate, start, pass the compose health check, consume
  every queue they own, carry an appeal from intake to triage and back, and stop on SIGTERM.

Names carry a random suffix (own vhost, users, roles, databases) and are removed afterwards.
"""
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from kombu import Connection, Exchange, Queue
from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import make_url

from wuji_common.db import normalize_url
from wuji_common.testing_helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
SERVICES = ("intake", "triage", "enforcement", "notify", "metrics")
# the broker of wuji_common.testing (rabbitmqctl manages its users and vhosts)
AMQP_HOST = urlsplit(os.environ.get("WUJI_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")).netloc.rsplit("@", 1)[-1]
PG_BASE = os.environ.get("WUJI_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")
_pg = make_url(PG_BASE)
# how the init script's psql reaches the server as superuser (in the container: the image's socket)
PG_CLIENT_ENV = {"PGHOST": _pg.host or "127.0.0.1", "PGPORT": str(_pg.port or 5432),
                 "POSTGRES_USER": _pg.username or "postgres", "POSTGRES_DB": "postgres",
                 **({"PGPASSWORD": _pg.password} if _pg.password else {})}
STOP_GRACE_SECONDS = 30          # docker-compose.yml: stop_grace_period of the services

APPEAL = {
    "channel": "wechat",
    "title": "村口路灯不亮",
    "content": "阴平镇金寺村村口的路灯坏了一个多月，晚上出行很不安全，请尽快维修。",
    "citizen": {"name": "李四", "phone": "13912345678", "id_number": "11010519491231002X"},
    "location": {"town_code": "370404101", "village": "370404101201", "address": "金寺村西街8号"},
}


def rabbitmqctl(*args):
    return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True,
                          timeout=60).stdout


def password():
    return secrets.token_hex(16)


def run_script(script, env, check=True):
    result = subprocess.run(["bash", str(script)], env={**os.environ, **env}, capture_output=True,
                            text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


# --- PostgreSQL ------------------------------------------------------------------------------------

def pg_admin():
    return create_engine(f"{PG_BASE}/postgres", isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)


@pytest.fixture(scope="module")
def databases():
    """init-databases.sh on the local server; {service: URL as that service's own role}."""
    prefix = f"wujideploytest_{secrets.token_hex(4)}_"
    env = {"WUJI_DB_PREFIX": prefix, **PG_CLIENT_ENV}
    env.update({f"{svc.upper()}_DB_PASSWORD": password() for svc in SERVICES})
    host = f"{PG_CLIENT_ENV['PGHOST']}:{PG_CLIENT_ENV['PGPORT']}"
    try:
        run_script(DEPLOY / "postgres/init-databases.sh", env)
        run_script(DEPLOY / "postgres/init-databases.sh", env)          # again: changes nothing
        yield {svc: f"postgresql://{prefix}{svc}:{env[f'{svc.upper()}_DB_PASSWORD']}@{host}/{prefix}{svc}"
               for svc in SERVICES}
    finally:
        admin = pg_admin()
        with admin.connect() as conn:
            for svc in SERVICES:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{prefix}{svc}" WITH (FORCE)'))
                conn.execute(text(f'DROP ROLE IF EXISTS "{prefix}{svc}"'))
        admin.dispose()


def test_each_service_owns_its_database_and_cannot_open_the_others(databases):
    for svc, url in databases.items():
        engine = create_engine(normalize_url(url), poolclass=pool.NullPool)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar() == url.split("//")[1].split(":")[0]
            assert conn.execute(text("SELECT pg_get_userbyid(datdba) FROM pg_database "
                                     "WHERE datname = current_database()")).scalar() == conn.execute(
                text("SELECT current_user")).scalar()
        engine.dispose()
    other = databases["triage"].rsplit("/", 1)[0] + "/" + databases["intake"].rsplit("/", 1)[1]
    engine = create_engine(normalize_url(other), poolclass=pool.NullPool)
    with pytest.raises(Exception, match="permission denied for database"):
        engine.connect()
    engine.dispose()


def test_init_databases_refuses_placeholders_before_changing_anything():
    prefix = f"wujideploytest_{secrets.token_hex(4)}_"
    env = {"WUJI_DB_PREFIX": prefix, **PG_CLIENT_ENV}
    env.update({f"{svc.upper()}_DB_PASSWORD": password() for svc in SERVICES})
    env["METRICS_DB_PASSWORD"] = "replace-me-metrics-db"
    result = run_script(DEPLOY / "postgres/init-databases.sh", env, check=False)
    assert result.returncode != 0 and "METRICS_DB_PASSWORD" in result.stderr
    admin = pg_admin()
    with admin.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM pg_roles WHERE rolname LIKE :p"),
                            {"p": prefix + "%"}).scalar() == 0
    admin.dispose()


# --- RabbitMQ --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def broker():
    """init-users.sh on the local broker, in a vhost of its own; {"admin": URI, service: URI}."""
    suffix = secrets.token_hex(4)
    vhost, prefix, admin = f"wuji-deploytest-{suffix}", f"deploytest-{suffix}-", f"deploytest-{suffix}-admin"
    env = {"WUJI_AMQP_VHOST": vhost, "WUJI_AMQP_USER_PREFIX": prefix,
           "WUJI_AMQP_ADMIN_USER": admin, "WUJI_AMQP_ADMIN_PASSWORD": password()}
    env.update({f"{svc.upper()}_AMQP_PASSWORD": password() for svc in SERVICES})
    try:
        run_script(DEPLOY / "rabbitmq/init-users.sh", env)
        # run again, as at every broker start, after a password change: the new one is in force
        env["INTAKE_AMQP_PASSWORD"] = password()
        run_script(DEPLOY / "rabbitmq/init-users.sh", env)
        uris = {svc: f"amqp://{prefix}{svc}:{env[f'{svc.upper()}_AMQP_PASSWORD']}@{AMQP_HOST}/{vhost}"
                for svc in SERVICES}
        uris["admin"] = f"amqp://{admin}:{env['WUJI_AMQP_ADMIN_PASSWORD']}@{AMQP_HOST}/{vhost}"
        uris["vhost"] = vhost
        yield uris
    finally:
        for user in [admin, *(prefix + svc for svc in SERVICES)]:
            subprocess.run(["rabbitmqctl", "-q", "delete_user", user], capture_output=True, timeout=60)
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60)


def test_init_users_refuses_placeholders_before_changing_anything():
    suffix = secrets.token_hex(4)
    env = {"WUJI_AMQP_VHOST": f"wuji-deploytest-{suffix}", "WUJI_AMQP_USER_PREFIX": f"deploytest-{suffix}-",
           "WUJI_AMQP_ADMIN_USER": f"deploytest-{suffix}-admin", "WUJI_AMQP_ADMIN_PASSWORD": password()}
    env.update({f"{svc.upper()}_AMQP_PASSWORD": password() for svc in SERVICES})
    env["NOTIFY_AMQP_PASSWORD"] = "replace-me-notify-amqp"
    result = run_script(DEPLOY / "rabbitmq/init-users.sh", env, check=False)
    assert result.returncode != 0 and "NOTIFY_AMQP_PASSWORD" in result.stderr
    assert f"deploytest-{suffix}" not in rabbitmqctl("list_users") + rabbitmqctl("list_vhosts")


def test_a_service_user_cannot_publish_another_services_events_or_read_its_queues(broker):
    from amqp.exceptions import AccessRefused
    with Connection(broker["admin"]) as conn:      # the exchange and queue exist, as in production
        channel = conn.channel()
        Exchange("triage.events", type="topic", durable=True)(channel).declare()
        Queue("rpc-triage", durable=True)(channel).declare()
    with Connection(broker["intake"], transport_options={"confirm_publish": True}) as conn:
        producer = conn.Producer()
        with pytest.raises(AccessRefused):
            producer.publish({"forged": True}, exchange="triage.events", routing_key="order_closed",
                             declare=[])
    with Connection(broker["intake"]) as conn:
        with pytest.raises(AccessRefused):
            conn.channel().basic_consume("rpc-triage", callback=lambda message: None)
    with Connection(broker["intake"], transport_options={"confirm_publish": True}) as conn:
        channel = conn.channel()
        exchange = Exchange("intake.events", type="topic", durable=True)
        exchange(channel).declare()
        conn.Producer(channel).publish({"probe": True}, exchange=exchange, routing_key="probe", declare=[])


def rpc_publish(uri, routing_key):
    """Publish an (unroutable, dropped) RPC request the way nameko does: nameko-rpc, <service>.<method>."""
    with Connection(uri, transport_options={"confirm_publish": True}) as conn:
        channel = conn.channel()
        exchange = Exchange("nameko-rpc", type="topic", durable=True)
        exchange(channel).declare()
        conn.Producer(channel).publish({"args": [], "kwargs": {}}, exchange=exchange, routing_key=routing_key,
                                       declare=[])


def test_only_notify_may_ask_intake_for_a_citizens_contact_data(broker):
    from amqp.exceptions import AccessRefused
    for method in ("contact_for_notification", "contacts_for_notification"):
        rpc_publish(broker["notify"], f"intake.{method}")
    for svc in ("triage", "enforcement", "metrics", "intake"):
        rpc_publish(broker[svc], "intake.get_appeal")
        for method in ("contact_for_notification", "contacts_for_notification"):
            with pytest.raises(AccessRefused):
                rpc_publish(broker[svc], f"intake.{method}")


def test_only_the_broker_administrator_may_publish_a_token_revocation(broker):
    """auth.token_revoked makes every service refuse a token: a service's broker user must not be
    able to send one (wuji token revoke runs with the administrator's credentials)."""
    from amqp.exceptions import AccessRefused
    exchange = Exchange("auth.events", type="topic", durable=True)
    for svc in SERVICES:
        with Connection(broker[svc], transport_options={"confirm_publish": True}) as conn:
            with pytest.raises(AccessRefused):
                conn.Producer().publish({"jti": "x"}, exchange=exchange, routing_key="token_revoked",
                                        declare=[exchange])
    with Connection(broker["admin"], transport_options={"confirm_publish": True}) as conn:
        conn.Producer().publish({"jti": "x"}, exchange=exchange, routing_key="token_revoked",
                                declare=[exchange])


# --- the platform as the containers would run it ---------------------------------------------------

def test_the_entrypoint_refuses_placeholders_and_unknown_services(tmp_path):
    base = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "INTAKE_DB_URL": f"sqlite:///{tmp_path / 'never.db'}"}
    placeholder = subprocess.run(["sh", str(DEPLOY / "entrypoint.sh")], capture_output=True, text=True,
                                 env={**base, "SERVICE": "intake", "WUJI_CITIZEN_KEY": "replace-me-citizen-key"},
                                 timeout=30)
    assert placeholder.returncode == 78 and "WUJI_CITIZEN_KEY" in placeholder.stderr
    unknown = subprocess.run(["sh", str(DEPLOY / "entrypoint.sh")], capture_output=True, text=True,
                             env={**base, "SERVICE": "gateway"}, timeout=30)
    assert unknown.returncode == 64 and "no such service" in unknown.stderr
    assert not (tmp_path / "never.db").exists()


def compose_healthcheck(compose, svc, port):
    test = compose["services"][svc]["healthcheck"]["test"]
    assert test[0] == "CMD"
    return [re.sub(r"127\.0\.0\.1:\d+/", f"127.0.0.1:{port}/", arg) for arg in test[1:]]


def declare_queues(compose, admin_uri):
    """The compose file's declare-queues job: its entrypoint and command, $$ unescaped as compose does."""
    job = compose["services"]["declare-queues"]
    argv = [arg.replace("$$", "$") for arg in job["entrypoint"] + job["command"]]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "AMQP_URI": admin_uri}
    result = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def queue_consumers(vhost):
    out = rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name", "consumers")
    return {name: int(n) for name, n in (line.split("\t") for line in out.splitlines() if line.strip())}


def owned_queues_without_consumer(vhost):
    return sorted(name for name, consumers in queue_consumers(vhost).items()
                  if re.match(r"(evt|rpc)-", name) and not re.search(r"\.(retry\.\d+|dead)$", name)
                  and consumers == 0)


def http(method, url, body=None, headers=None):
    data = json.dumps(body, ensure_ascii=False).encode("utf-8") if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_until(probe, processes, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for svc, (process, log) in processes.items():
            assert process.poll() is None, f"{svc} exited ({process.returncode}):\n{log.read_text()[-4000:]}"
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_the_five_services_run_as_their_own_users_from_the_entrypoint(compose, broker, databases, tmp_path):
    declared = declare_queues(compose, broker["admin"])
    assert re.search(r"declared [1-9]\d* subscriber queues", declared)

    ports = {svc: free_port() for svc in SERVICES}
    api_port = free_port()
    processes = {}
    try:
        for svc in SERVICES:
            env = {**os.environ,
                   "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                   "TMPDIR": str(tmp_path),
                   "SERVICE": compose["services"][svc]["environment"]["SERVICE"],
                   "AMQP_URI": broker[svc],
                   f"{svc.upper()}_DB_URL": databases[svc],
                   f"{svc.upper()}_METRICS_PORT": str(ports[svc]),
                   "METRICS_ADDRESS": "127.0.0.1",
                   "API_ADDRESS": f"127.0.0.1:{api_port}",
                   "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(free_port())}   # nothing listens: mail waits
            log = tmp_path / f"{svc}.log"
            with open(log, "wb") as out:
                processes[svc] = (subprocess.Popen(["sh", str(DEPLOY / "entrypoint.sh")], env=env, cwd=tmp_path,
                                                   stdout=out, stderr=subprocess.STDOUT), log)

        def healthy():
            return all(subprocess.run(compose_healthcheck(compose, svc, ports[svc]), capture_output=True,
                                      timeout=15).returncode == 0 for svc in SERVICES)

        wait_until(healthy, processes, 120, "the compose health checks")
        wait_until(lambda: not owned_queues_without_consumer(broker["vhost"]), processes, 60,
                   "a consumer on every event handler and RPC queue")
        consumers = queue_consumers(broker["vhost"])
        assert {"rpc-intake", "rpc-triage"} <= set(consumers)

        # an appeal goes out of intake (its outbox, its exchange), through triage and back
        status, receipt = http("POST", f"http://127.0.0.1:{api_port}/api/v1/appeals", APPEAL)
        assert status == 201, receipt
        track = f"http://127.0.0.1:{api_port}/api/v1/appeals/{receipt['case_no']}?token={receipt['tracking_token']}"
        wait_until(lambda: http("GET", track)[1]["status"] == "dispatched", processes, 60,
                   "intake to show the appeal dispatched by triage")
        assert not any(name.endswith(".dead") and n for name, n in
                       _messages(broker["vhost"]).items()), "an event was dead-lettered"

        # docker stop: SIGTERM to the entrypoint's process, which is nameko itself after exec
        for process, _ in processes.values():
            process.send_signal(signal.SIGTERM)
        for svc, (process, log) in processes.items():
            assert process.wait(timeout=STOP_GRACE_SECONDS) == 0, log.read_text()[-4000:]
    finally:
        for process, _ in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def _messages(vhost):
    out = rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name", "messages")
    return {name: int(n) for name, n in (line.split("\t") for line in out.splitlines() if line.strip())}

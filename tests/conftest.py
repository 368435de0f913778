"""The whole platform as real processes (`nameko run`, as `make run` starts them) on a vhost and
databases of the test's own, so that tests can submit, kill -9, restart and count."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from wuji_common.testing import drop_postgres_database, new_postgres_database
from wuji_common.testing_helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SERVICES = ("intake", "triage", "enforcement", "notify", "metrics")


class Platform:
    def __init__(self, amqp_uri, backend, workdir, smtp_port=None, env=None):
        self.amqp_uri = amqp_uri
        self.backend = backend
        self.workdir = Path(workdir)
        self.api_port = free_port()
        self.metrics_ports = {s: free_port() for s in SERVICES}
        self.processes = {}
        self.pg_databases = []
        self.env = dict(os.environ, AMQP_URI=amqp_uri, API_ADDRESS=f"127.0.0.1:{self.api_port}",
                        PYTHONUNBUFFERED="1", **(env or {}))
        if smtp_port:
            self.env.update(SMTP_HOST="127.0.0.1", SMTP_PORT=str(smtp_port))
        for service in SERVICES:
            if backend == "sqlite":
                url = f"sqlite:///{self.workdir / f'{service}.db'}"
            else:
                url, name = new_postgres_database(f"wuji_e2e_{service}")
                self.pg_databases.append(name)
            self.env[f"{service.upper()}_DB_URL"] = url
            self.env[f"{service.upper()}_METRICS_PORT"] = str(self.metrics_ports[service])

    @property
    def api(self):
        return f"http://127.0.0.1:{self.api_port}"

    def db_url(self, service):
        return self.env[f"{service.upper()}_DB_URL"]

    def prepare(self):
        for service in SERVICES:
            for step in (["db", "upgrade"], ["load-reference"]):
                subprocess.run([str(BIN / service), *step, "--db-url", self.db_url(service)],
                               env=self.env, check=True, capture_output=True, timeout=120)
        subprocess.run([str(BIN / "wuji-broker"), "declare", "--amqp-uri", self.amqp_uri,
                        *[f"{s}.service:{s.capitalize()}Service" for s in SERVICES]],
                       env=self.env, check=True, capture_output=True, timeout=60)

    def start(self, *services):
        for service in services or SERVICES:
            log = open(self.workdir / f"{service}.log", "ab")
            self.processes[service] = subprocess.Popen(
                [str(BIN / "nameko"), "run", "--config", str(ROOT / "services" / service / "config.yml"),
                 f"{service}.service"],
                env=self.env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.wait_ready(*(services or SERVICES))

    def wait_ready(self, *services, timeout=60):
        import socket
        deadline = time.monotonic() + timeout
        pending = {s: self.metrics_ports[s] for s in services}
        if "intake" in services:
            pending["api"] = self.api_port
        while pending and time.monotonic() < deadline:
            for name, port in list(pending.items()):
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        pending.pop(name)
            for name in services:
                proc = self.processes[name]
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited: {self.log(name)[-3000:]}")
            time.sleep(0.1)
        if pending:
            raise RuntimeError(f"not ready: {pending}")
        time.sleep(1.0)  # consumers attach just after the ports open

    def kill(self, service, sig=signal.SIGKILL):
        proc = self.processes.pop(service)
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def log(self, service):
        return (self.workdir / f"{service}.log").read_text(errors="replace")

    def stop(self):
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.processes = {}
        for name in self.pg_databases:
            drop_postgres_database(name)


# --- fixtures ----------------------------------------------------------------------------------------
import pytest


class Mailbox:
    """A real SMTP server (aiosmtpd, in a process of its own so that it does not share the eventlet
    hub of the tests) storing what it receives in a Maildir."""

    def __init__(self, directory):
        self.port = free_port()
        self.directory = Path(directory) / "maildir"
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{self.port}",
             "-c", "aiosmtpd.handlers.Mailbox", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import socket
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError("SMTP server did not start")

    @property
    def messages(self):
        import mailbox as mbox
        if not self.directory.exists():
            return []
        return list(mbox.Maildir(str(self.directory), create=False))

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def mailbox(tmp_path):
    box = Mailbox(tmp_path).start()
    yield box
    box.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def platform(request, amqp_vhost, tmp_path, mailbox):
    """All five services as processes, on a vhost of this test's own."""
    import uuid
    from wuji_common.testing import AMQP_HOST, _rabbitmqctl
    vhost = f"{amqp_vhost}-{uuid.uuid4().hex[:6]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    p = Platform(f"{AMQP_HOST}/{vhost}", request.param, tmp_path, smtp_port=mailbox.port)
    p.mailbox = mailbox
    try:
        p.prepare()
        p.start()
        yield p
    finally:
        p.stop()
        _rabbitmqctl("delete_vhost", vhost)

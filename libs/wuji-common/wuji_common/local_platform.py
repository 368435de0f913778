"""The whole platform as local processes (`nameko run`, one per service), for `make run`, the
cross-service tests and the benchmarks: prepare the databases and queues, start, kill -9, restart."""
import os
import random
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
SERVICES = ("intake", "triage", "enforcement", "notify", "metrics")
DEFAULT_METRICS_PORTS = {"intake": 9101, "triage": 9102, "enforcement": 9103, "notify": 9104, "metrics": 9105}


_handed_out = set()


def _ephemeral_range():
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port():
    """A loopback port that is free now and stays free until a service binds it.

    Asking the kernel for port 0 hands out an *ephemeral* port, which any outgoing connection (a
    service's AMQP or PostgreSQL client) may take before our service binds it — CI saw exactly that
    with ten processes starting at once. So pick below the ephemeral range, never twice per process.
    """
    low, _ = _ephemeral_range()
    start, stop = (20000, low) if low > 21000 else (low - 1000 if low > 2024 else 1024, low)
    for _ in range(200):
        port = random.randrange(start, stop)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def port_open(port, host="127.0.0.1"):
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def dev_auth_env(keys_dir):
    """Access tokens for local processes: the issuer's keys in ``keys_dir`` (made on first use, kept
    so that tokens survive a restart), the public keys for every service, each service's own token,
    and an administrator's token in ``<keys_dir>/admin.token`` for the wuji command and scripts."""
    from wuji_common import auth
    keys = auth.KeyDirectory(keys_dir).ensure()
    signing = keys.signing_key()
    # a local platform is its operator's own: the administrator's token is accepted there
    env = {"WUJI_AUTH_PUBLIC_KEYS": keys.public_jwks_text(), "WUJI_AUTH_ALLOW_ADMIN": "1"}
    for service in SERVICES:
        token, _ = auth.issue_token(signing, f"service:{service}", "service", ttl_seconds=30 * 86400)
        env[f"WUJI_SERVICE_TOKEN_{service.upper()}"] = token
    admin, _ = auth.issue_token(signing, "staff:local-admin", "admin", ttl_seconds=30 * 86400)
    path = Path(keys_dir) / "admin.token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(admin + "\n")
    return env


def service_class(service):
    return f"{service}.service:{service.capitalize()}Service"


class Mailbox:
    """A real SMTP server (aiosmtpd, in a process of its own so that it does not share the eventlet
    hub of the tests) storing what it receives in a Maildir."""

    def __init__(self, directory, port=None):
        self.port = port or free_port()
        self.directory = Path(directory) / "maildir"
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            [str(BIN / "python"), "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{self.port}",
             "-c", "aiosmtpd.handlers.Mailbox", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if port_open(self.port):
                return self
            time.sleep(0.05)
        raise RuntimeError("SMTP server did not start")

    @property
    def messages(self):
        import mailbox as mbox
        if not self.directory.exists():
            return []
        return list(mbox.Maildir(str(self.directory), create=False))

    def env(self):
        """What notify needs to send here: the address, and no sending limit (the limit in notify's
        config protects a real mail relay; this local mailbox has none)."""
        return {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(self.port), "NOTIFY_RATE_LIMIT_EMAIL": "0"}

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


# The services that work behind the citizen's path: receipts and notices (a quarter second later
# is not noticed), KPIs (read in minutes). On one box shared with the broker and the database they
# yield the CPU to intake and triage when both want it, so a burst of their batched work does not
# hold up the next appeal's dispatch (make run: nice 10; docker-compose: a quarter of the CPU shares).
BACKGROUND = ("notify", "metrics")


class Platform:
    """Five service processes sharing one broker (``amqp_uri``, vhost included).

    ``db_urls``: service → database URL (see :meth:`sqlite_urls`); ``api_port`` and ``metrics_ports``
    default to free ports; ``env`` adds to the services' environment (e.g. SMTP_HOST/SMTP_PORT).
    Logs go to ``<logdir>/<service>.log``. Without WUJI_AUTH_PUBLIC_KEYS in the environment (the
    test fixtures set it), a local issuer is made in ``<logdir>/../auth`` (:func:`dev_auth_env`).
    ``background_nice``: the CPU niceness of the :data:`BACKGROUND` services (0: as the others).
    """

    def __init__(self, amqp_uri, db_urls, logdir, api_port=None, metrics_ports=None, env=None,
                 background_nice=0):
        self.amqp_uri = amqp_uri
        self.background_nice = background_nice
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.api_port = api_port or free_port()
        self.metrics_ports = metrics_ports or {s: free_port() for s in SERVICES}
        self.processes = {}
        self.env = dict(os.environ, AMQP_URI=amqp_uri, API_ADDRESS=f"127.0.0.1:{self.api_port}",
                        PYTHONUNBUFFERED="1", **(env or {}))
        # every appeal of a local run (tests, benchmarks, make run) comes from this machine, often
        # with one phone: intake's public rate limits are lifted unless the environment sets them
        for limit in ("INTAKE_RATE_LIMIT_PER_IP", "INTAKE_RATE_LIMIT_PER_PHONE"):
            self.env.setdefault(limit, "0")
        if not self.env.get("WUJI_AUTH_PUBLIC_KEYS"):
            self.env.update(dev_auth_env(self.logdir.parent / "auth"))
        for service in SERVICES:
            self.env[f"{service.upper()}_DB_URL"] = db_urls[service]
            self.env[f"{service.upper()}_METRICS_PORT"] = str(self.metrics_ports[service])

    @staticmethod
    def sqlite_urls(directory):
        return {s: f"sqlite:///{Path(directory) / f'{s}.db'}" for s in SERVICES}

    @staticmethod
    def server_urls(server_url, prefix="wuji"):
        """One database per service on a PostgreSQL server: wuji_intake, wuji_triage, ..."""
        return {s: f"{server_url.rstrip('/')}/{prefix}_{s}" for s in SERVICES}

    @property
    def api(self):
        return f"http://127.0.0.1:{self.api_port}"

    def db_url(self, service):
        return self.env[f"{service.upper()}_DB_URL"]

    def _step(self, *args):
        result = subprocess.run([str(a) for a in args], env=self.env, cwd=ROOT, capture_output=True,
                                text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, args))} failed:\n{result.stdout}{result.stderr}")
        return result.stdout.strip()

    def prepare(self, databases=True, queues=True):
        """Migrate every database, load reference data and declare every queue; returns the last
        line each step printed (a service's reference load, then the declaration). Most of each
        step is a Python process importing its service (about two seconds), so each service
        migrates and loads in one process, and the services' steps run side by side (each has its
        own database). ``databases=False``: the queues only (for databases copied from prepared
        ones: ``wuji_common.testing.DatabaseTemplates``); ``queues=False``: the databases only."""
        def migrate_and_load(service):
            said = self._step(BIN / service, "db", "upgrade", "--load-reference",
                              "--db-url", self.db_url(service))
            return said.splitlines()[-1]

        def declare():
            return self._step(BIN / "wuji-broker", "declare", "--amqp-uri", self.amqp_uri,
                              *[service_class(s) for s in SERVICES])

        with ThreadPoolExecutor(max_workers=len(SERVICES) + 1) as pool:
            steps = [pool.submit(migrate_and_load, service) for service in SERVICES] if databases else []
            if queues:
                steps.append(pool.submit(declare))
            return [step.result() for step in steps]   # in order; the first failure raises

    def start(self, *services, wait=True):
        for service in services or SERVICES:
            log = open(self.logdir / f"{service}.log", "ab")
            self.processes[service] = subprocess.Popen(
                self.command(service), env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
            log.close()
        if wait:
            self.wait_ready(*(services or SERVICES))

    def niceness(self, service):
        """The CPU niceness ``service`` runs at (0: the default)."""
        return self.background_nice if service in BACKGROUND else 0

    def command(self, service):
        """The command line that runs ``service``."""
        run = [str(BIN / "nameko"), "run", "--config", str(ROOT / "services" / service / "config.yml"),
               f"{service}.service"]
        if self.niceness(service):
            return ["nice", "-n", str(self.niceness(service)), *run]  # nice execs it: same process
        return run

    def wait_ready(self, *services, timeout=60, rpc_consumers=1):
        """Until every service's metrics port (and intake's API) answers and its RPC queue has
        ``rpc_consumers`` consumers; raises if one exits."""
        deadline = time.monotonic() + timeout
        pending = {s: self.metrics_ports[s] for s in services}
        if "intake" in services:
            pending["api"] = self.api_port
        while pending and time.monotonic() < deadline:
            for name, port in list(pending.items()):
                if port_open(port):
                    pending.pop(name)
            for name in services:
                if self.processes[name].poll() is not None:
                    raise RuntimeError(f"{name} exited: {self.log(name)[-3000:]}")
            time.sleep(0.1)
        if pending:
            raise RuntimeError(f"not answering after {timeout}s: {', '.join(pending)}")
        # the ports open before nameko attaches the consumers, and on a busy machine seconds
        # can pass in between (callers then saw UnknownService): wait for the RPC consumers
        waiting = list(services)
        while waiting and time.monotonic() < deadline:
            waiting = [s for s in waiting if self.rpc_consumers(s) < rpc_consumers]
            if waiting:
                time.sleep(0.2)
        if waiting:
            raise RuntimeError(f"no RPC consumer after {timeout}s: {', '.join(waiting)}")
        time.sleep(0.2)  # event consumers attach with the RPC one, in the same container start

    def rpc_consumers(self, service):
        """How many consumers nameko's RPC queue of ``service`` has (0 while it does not exist)."""
        from kombu import Connection
        with Connection(self.amqp_uri) as conn:
            try:
                return conn.default_channel.queue_declare(f"rpc-{service}", passive=True).consumer_count
            except conn.channel_errors:
                return 0

    def exited(self):
        """Services whose process has ended, with their exit codes."""
        return {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}

    def kill(self, service, sig=signal.SIGKILL):
        proc = self.processes.pop(service)
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def pids(self):
        return {name: p.pid for name, p in self.processes.items()}

    def log(self, service):
        return (self.logdir / f"{service}.log").read_text(errors="replace")

    def stop(self, grace=30):
        """SIGTERM to all (nameko finishes running workers), then SIGKILL after ``grace`` seconds."""
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes = {}

"""Real local receivers for notify's tests: an SMTP server (aiosmtpd, in a child process so that its
asyncio loop stays out of eventlet's way) that keeps what it receives in a Maildir, and an HTTP
endpoint that checks webhook signatures on its own (not with notify's code)."""
import hashlib
import hmac
import http.server
import mailbox
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser

import pytest


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=20.0, interval=0.05, what="condition"):
    """Poll until ``predicate()`` is truthy and return it; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def accepting(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class SmtpSink:
    """aiosmtpd's Mailbox handler on a free local port."""

    def __init__(self, directory):
        self.port = free_port()
        self.directory = directory
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{self.port}",
             "-c", "aiosmtpd.handlers.Mailbox", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.proc.poll() is not None or accepting(self.port), 20, 0.1, "SMTP server")
        assert self.proc.poll() is None, "aiosmtpd did not start (pip install -e 'services/notify[test]')"
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def messages(self):
        box = mailbox.Maildir(str(self.directory), create=False)
        parser = BytesParser(policy=policy.default)
        return [parser.parsebytes(box.get_bytes(key)) for key in box.keys()]

    def received(self, **headers):
        """Messages whose headers contain the given values (e.g. X_Wuji_Delivery=..., Subject=...)."""
        wanted = {k.replace("_", "-"): v for k, v in headers.items()}
        return [m for m in self.messages()
                if all(v in str(m.get(k, "")) for k, v in wanted.items())]


@pytest.fixture
def unused_port():
    """A local port nothing listens on (an endpoint or mail server that is down)."""
    return free_port()


@pytest.fixture(scope="session")
def smtp_sink(tmp_path_factory):
    sink = SmtpSink(tmp_path_factory.mktemp("maildir") / "inbox").start()
    yield sink
    sink.stop()


@dataclass
class Received:
    path: str
    headers: dict
    body: bytes
    signature_ok: bool


class WebhookReceiver:
    """A department's endpoint: checks the signature with the secret it was given, records every
    request and answers with ``status`` (changeable while it runs)."""

    def __init__(self, port=None, secret=None, status=200):
        self.port = port or free_port()
        self.secret = secret
        self.status = status
        self.requests = []
        self.server = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/wuji/notices"

    def signature_ok(self, headers, body):
        if not self.secret:
            return False
        signed = headers.get("X-Wuji-Timestamp", "").encode("ascii") + b"." + body
        expected = "sha256=" + hmac.new(self.secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, headers.get("X-Wuji-Signature", ""))

    def start(self):
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = dict(self.headers.items())
                receiver.requests.append(
                    Received(self.path, headers, body, receiver.signature_ok(headers, body)))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def webhook_receiver():
    receivers = []

    def make(**kwargs):
        receiver = WebhookReceiver(**kwargs)
        receivers.append(receiver)
        return receiver

    yield make
    for receiver in receivers:
        receiver.stop()

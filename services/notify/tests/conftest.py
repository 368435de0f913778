"""Real local servers for notify's tests: SMTP servers (aiosmtpd, in child processes so that their
asyncio loops stay out of eventlet's way) keeping what they receive in a Maildir — one plain, one
that requires STARTTLS and AUTH with a throwaway certificate made here — and HTTP servers standing
in for the SMS gateway, the WeChat API and webhook subscribers (tests/servers/providers.py), each
checking what it receives with code of its own."""
import datetime
import ipaddress
import mailbox
import socket
import subprocess
import sys
import time
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest

from .servers.providers import SmsGateway, WebhookSubscriber, WechatApi
from wuji_common.testing_helpers import free_port

SERVERS = Path(__file__).parent / "servers"
SMTP_USER, SMTP_PASSWORD = "notify", "mail-password-for-tests"


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
    """An SMTP server on a free local port keeping mail in a Maildir: plain (``python -m aiosmtpd``)
    or, given ``tls``, one that requires STARTTLS and AUTH (servers/smtp_server.py)."""

    def __init__(self, directory, tls=None):
        self.port = free_port()
        self.directory = directory
        self.tls = tls
        self.proc = None

    def start(self):
        if self.tls:
            args = [str(SERVERS / "smtp_server.py"), str(self.port), str(self.directory),
                    str(self.tls["cert"]), str(self.tls["key"]), SMTP_USER, SMTP_PASSWORD]
        else:
            args = ["-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{self.port}", "-c", "aiosmtpd.handlers.Mailbox",
                    str(self.directory)]
        self.proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_until(lambda: self.proc.poll() is not None or accepting(self.port), 20, 0.1, "SMTP server")
        assert self.proc.poll() is None, "SMTP server did not start (pip install -e 'services/notify[test]')"
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def messages(self):
        if not Path(self.directory).exists():
            return []
        box = mailbox.Maildir(str(self.directory), create=False)
        parser = BytesParser(policy=policy.default)
        return [parser.parsebytes(box.get_bytes(key)) for key in box.keys()]

    def received(self, **headers):
        """Messages whose headers contain the given values (e.g. X_Wuji_Delivery=..., Subject=...)."""
        wanted = {k.replace("_", "-"): v for k, v in headers.items()}
        return [m for m in self.messages()
                if all(v in str(m.get(k, "")) for k, v in wanted.items())]


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """A throwaway self-signed certificate for 127.0.0.1 (the test CA is the certificate itself)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return {"cert": folder / "cert.pem", "key": folder / "key.pem"}


@pytest.fixture
def unused_port():
    """A local port nothing listens on (an endpoint or mail server that is down)."""
    return free_port()


@pytest.fixture(scope="session")
def smtp_sink(tmp_path_factory):
    sink = SmtpSink(tmp_path_factory.mktemp("maildir") / "inbox").start()
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
def secure_smtp(tmp_path_factory, tls_files):
    """An SMTP server that refuses mail before STARTTLS and AUTH (user SMTP_USER)."""
    sink = SmtpSink(tmp_path_factory.mktemp("maildir-tls") / "inbox", tls=tls_files).start()
    yield sink
    sink.stop()


@pytest.fixture
def servers():
    """Make local provider servers (started by the test); all stopped at the end."""
    made = []

    def make(kind, **kwargs):
        server = {"sms": SmsGateway, "wechat": WechatApi, "webhook": WebhookSubscriber}[kind](**kwargs)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()

"""Helpers for tests that watch the broker: bind a queue to events before they are published, read
what arrived, pick free ports, and call over RPC with a given token."""
import json
import time
import uuid
from contextlib import contextmanager

from kombu import Connection, Queue
from nameko.standalone.events import get_event_exchange

from wuji_common.local_platform import free_port  # noqa: F401  (tests import it from here)


class EventTap:
    """A durable-enough test queue bound to some (source, event_type) pairs; ``wait_for`` collects
    envelopes until a predicate holds or a timeout passes."""

    def __init__(self, amqp_uri, *bindings):
        self.amqp_uri = amqp_uri
        self.name = f"test-tap-{uuid.uuid4().hex[:8]}"
        self.conn = Connection(amqp_uri)
        channel = self.conn.channel()
        self.queue = Queue(self.name, auto_delete=False, durable=False, channel=channel)
        self.queue.declare()
        for source, event_type in bindings:
            exchange = get_event_exchange(source, {})
            exchange(channel).declare()
            self.queue.bind_to(exchange=exchange.name, routing_key=event_type)
        self.received = []

    def drain(self):
        while True:
            message = self.queue.get(no_ack=True)
            if message is None:
                return self.received
            self.received.append(json.loads(message.body))

    def wait_for(self, predicate, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.drain()
            if predicate(self.received):
                return self.received
            time.sleep(0.05)
        raise AssertionError(f"timed out; received {[e['type'] for e in self.received]}")

    def of_type(self, event_type):
        return [e for e in self.received if e["type"] == event_type]

    def close(self):
        try:
            self.queue.delete()
        finally:
            self.conn.release()


def publish_event(amqp_uri, envelope):
    """Publish an envelope as the relay does (JSON, persistent, to ``<source>.events``)."""
    with Connection(amqp_uri) as conn:
        producer = conn.Producer()
        exchange = get_event_exchange(envelope["source"], {})
        producer.publish(json.dumps(envelope, ensure_ascii=False).encode("utf-8"), exchange=exchange,
                         routing_key=envelope["type"], content_type="application/json",
                         content_encoding="utf-8", delivery_mode=2, declare=[exchange],
                         message_id=envelope["event_id"])


def http_json(method, url, body=None, headers=None, timeout=10):
    """(status, decoded JSON body) of a JSON request, for 4xx/5xx answers too."""
    import urllib.error
    import urllib.request
    data = json.dumps(body, ensure_ascii=False).encode("utf-8") if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def eventually(probe, timeout=30, what="condition", interval=0.2):
    """Poll ``probe()`` until it returns something truthy and return that; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s")


@contextmanager
def rpc_as(amqp_uri, token, timeout=15):
    """A cluster proxy whose every call carries ``token`` (None: no token at all)."""
    from nameko.standalone.rpc import ClusterRpcProxy
    from wuji_common.testing import as_caller
    context = as_caller(token) if token else {}
    with ClusterRpcProxy({"AMQP_URI": amqp_uri}, context_data=context, timeout=timeout) as rpc:
        yield rpc


@contextmanager
def rpc_as_role(amqp_uri, role, **scope):
    """A cluster proxy calling as a fresh token of ``role`` (scope: unit_code, town_codes, …)."""
    from wuji_common.testing import issue_test_token
    with rpc_as(amqp_uri, issue_test_token(role, **scope)) as rpc:
        yield rpc

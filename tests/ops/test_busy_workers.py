"""A service's /metrics answers while every one of its workers is busy, and labels each call with its
entrypoint's kind (rpc, http, event, timer) and outcome.

The service here is a test service with wuji_common's MetricsExporter and one entrypoint of each
kind; its RPC `wait` holds a worker for as long as it is asked to. With max_workers=2 and more calls
than that in flight, a scrape must still come back (within a short client timeout) and show both
workers busy. nameko-prometheus' /metrics, served by a worker, would wait for a free one instead.
"""
import threading
import time
import urllib.request
import uuid

import eventlet
import pytest
from nameko.rpc import rpc
from nameko.standalone.rpc import ServiceRpcProxy
from nameko.web.handlers import http

from wuji_common.dependencies import MetricsExporter
from wuji_common.entrypoints import config_timer, event_handler
from wuji_common.errors import ValidationError
from wuji_common.testing_helpers import free_port, publish_event

MAX_WORKERS = 2
SCRAPE_TIMEOUT = 3  # seconds: far less than the calls hold their workers


class SlowService:
    name = "ops_slow"
    exporter = MetricsExporter()

    @rpc(expected_exceptions=(ValidationError,))
    def wait(self, seconds):
        if seconds < 0:
            raise ValidationError("seconds must not be negative", {"seconds": ["negative"]})
        eventlet.sleep(seconds)     # holds the worker, as a slow database or a slow peer would
        return seconds

    @http("GET", "/ping")
    def ping(self, request):
        return "pong"

    @event_handler("ops_slow", "pinged")
    def on_pinged(self, envelope):
        pass

    @config_timer("TICK_SECONDS", 3600)
    def tick(self):
        pass


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=SCRAPE_TIMEOUT) as resp:
        return resp.read().decode()


def value(text, series):
    """The value of one series line (name and labels exactly as the exporter writes them)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def calls(service, entrypoint, kind, outcome):
    return (f'wuji_entrypoint_calls_total{{entrypoint="{entrypoint}",kind="{kind}",'
            f'outcome="{outcome}",service="{service}"}}')


@pytest.fixture
def slow_service(container_factory, amqp_uri):
    """Starts SlowService under a name of this test's own (the process-wide registry keeps every
    test's counts); yields (name, config, metrics port, web port)."""
    name = f"ops_slow_{uuid.uuid4().hex[:6]}"
    service_class = type("SlowService", (SlowService,), {"name": name})
    metrics_port, web_port = free_port(), free_port()
    config = {"AMQP_URI": amqp_uri, "METRICS_PORT": metrics_port, "max_workers": MAX_WORKERS,
              "WEB_SERVER_ADDRESS": f"127.0.0.1:{web_port}", "TICK_SECONDS": 0.2,
              "EVENT_RETRY_DELAYS": [0.2]}
    container = container_factory(service_class, config)
    container.start()
    return name, config, metrics_port, web_port


def test_metrics_answer_while_every_worker_is_busy(slow_service):
    name, config, port, _ = slow_service
    before = scrape(port)
    assert value(before, f'wuji_workers_max{{service="{name}"}}') == MAX_WORKERS
    assert value(before, f'wuji_workers_busy{{service="{name}"}}') == 0

    # twice as many calls as workers, each holding its worker for a few seconds
    hold = 4
    results = []

    def call():
        with ServiceRpcProxy(name, config, timeout=30) as proxy:
            results.append(proxy.wait(hold))

    callers = [threading.Thread(target=call) for _ in range(2 * MAX_WORKERS)]
    for caller in callers:
        caller.start()
    try:
        # every worker taken: the scrape still answers, within its short timeout, and says so
        deadline = time.monotonic() + hold
        busy = None
        while time.monotonic() < deadline:
            busy = value(scrape(port), f'wuji_workers_busy{{service="{name}"}}')
            if busy == MAX_WORKERS:
                break
            time.sleep(0.05)
        assert busy == MAX_WORKERS, f"workers never all busy ({busy})"
        for _ in range(5):
            text = scrape(port)      # a timeout here raises: the exporter waited for a worker
            assert value(text, f'wuji_workers_busy{{service="{name}"}}') == MAX_WORKERS
            assert value(text, calls(name, "wait", "rpc", "ok")) < 2 * MAX_WORKERS
            time.sleep(0.1)
    finally:
        for caller in callers:
            caller.join(timeout=60)
    assert results == [hold] * (2 * MAX_WORKERS)
    after = scrape(port)
    assert value(after, calls(name, "wait", "rpc", "ok")) == 2 * MAX_WORKERS
    assert value(after, f'wuji_workers_busy{{service="{name}"}}') == 0
    assert value(after, f'wuji_entrypoint_latency_seconds_count{{entrypoint="wait",kind="rpc",'
                        f'service="{name}"}}') == 2 * MAX_WORKERS


def test_calls_are_labelled_by_kind_and_outcome(slow_service, amqp_uri):
    name, config, port, web_port = slow_service
    # every series exists at zero from the start, so that increase() sees the first error
    first = scrape(port)
    assert value(first, calls(name, "wait", "rpc", "error")) == 0
    assert value(first, f'wuji_events_dead_lettered_total{{consumer="{name}.on_pinged",'
                        f'service="{name}"}}') == 0

    with ServiceRpcProxy(name, config, timeout=10) as proxy:
        assert proxy.wait(0) == 0
        with pytest.raises(Exception):
            proxy.wait(-1)                      # a caller's mistake: expected_error
        with pytest.raises(Exception):
            proxy.wait("soon")                  # a bug (TypeError in the service): error
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/ping", timeout=5) as resp:
        assert resp.read() == b"pong"
    publish_event(amqp_uri, {"event_id": str(uuid.uuid4()), "type": "pinged", "version": 1,
                             "occurred_at": "2026-01-01T00:00:00+00:00", "case_no": None,
                             "source": "ops_slow", "data": {}})

    expected = {calls(name, "wait", "rpc", "ok"): 1,
                calls(name, "wait", "rpc", "expected_error"): 1,
                calls(name, "wait", "rpc", "error"): 1,
                calls(name, "ping", "http", "ok"): 1,
                calls(name, "on_pinged", "event", "ok"): 1}
    deadline = time.monotonic() + 10
    while True:
        text = scrape(port)
        seen = {series: value(text, series) for series in expected}
        ticks = value(text, calls(name, "tick", "timer", "ok"))
        if (seen == expected and ticks) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert seen == expected
    assert ticks >= 1
    # labels stay low-cardinality: the only label values are the service's own names
    labels = {line.split("{", 1)[1].split("}", 1)[0] for line in text.splitlines()
              if line.startswith("wuji_entrypoint_calls_total{") and f'service="{name}"' in line}
    assert {label.split('entrypoint="')[1].split('"')[0] for label in labels} == \
        {"wait", "ping", "on_pinged", "tick"}

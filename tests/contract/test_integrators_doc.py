"""The consumer snippets of docs/integrators.md run as written against the local broker: each
declares its own durable queue bound to the event exchanges, prints every event once (a redelivered
duplicate is dropped by event_id) and acks it. The Python one always; the Node.js one when node and
npm are there (npm installs amqplib into a temporary folder)."""
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kombu import Connection

from wuji_common.events import make_event
from wuji_common.testing_helpers import publish_event

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrators.md"
QUEUE = "acme-crm.wuji-events"


def snippet(language):
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(rf"```{language}\n(.*?)```", text, re.S)
    assert blocks, f"no {language} block in {DOC.name}"
    return blocks[-1]


def events():
    order = {"order_no": "GD20261125000001", "unit_code": "town-370404101", "town_code": "370404101",
             "category": "urban-rural"}
    resolved = make_event("order_resolved", "YC20261125000001", {
        **order, "status": "resolved", "resolution": "已修复", "resolved_at": "2026-11-25T10:00:00+00:00",
        "within_deadline": True})
    rated = make_event("appeal_rated", "YC20261125000001", {
        "satisfaction": "satisfied", "rated_at": "2026-11-25T11:00:00+00:00"})
    whistle = make_event("whistle_blown", None, {
        "operation_id": "OP1", "town_code": "370404101", "violation_type": "road_occupation",
        "forces": ["public_security"], "report_in_due_at": "2026-11-25T12:00:00+00:00"})
    return [resolved, rated, whistle, resolved]  # the last one: a duplicate delivery


def queue_exists(amqp_uri):
    with Connection(amqp_uri) as conn:
        try:
            conn.default_channel.queue_declare(QUEUE, passive=True)
            return True
        except Exception:
            return False


def run_consumer(command, amqp_uri, folder, cwd=None):
    """Start the snippet, wait for its queue, publish, read what it printed, stop it. Output goes to
    files (pipes and the tests' green threads do not mix well)."""
    out, err = folder / "stdout.txt", folder / "stderr.txt"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=cwd,
                                   env={**os.environ, "WUJI_AMQP_URL": amqp_uri, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 30
        while not queue_exists(amqp_uri):
            assert process.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "the snippet never declared its queue"
            time.sleep(0.2)
        time.sleep(0.5)  # bound and consuming
        published = events()
        for envelope in published:
            publish_event(amqp_uri, envelope)
        deadline = time.monotonic() + 20
        while len(out.read_text().splitlines()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # the duplicate, had it been printed
        return published, [line.strip() for line in out.read_text().splitlines() if line.strip()]
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def clean_queue(amqp_uri):
    yield
    with Connection(amqp_uri) as conn:
        conn.default_channel.queue_delete(QUEUE)


def check(published, lines, amqp_uri, null):
    resolved, rated, _, _ = published
    assert lines == [f"order_resolved {resolved['case_no']} resolved", f"appeal_rated {rated['case_no']}",
                     f"whistle_blown {null}"]  # each once: the duplicate was dropped by event_id
    # the queue is durable and outlives its consumer, with nothing left unacked in it
    with Connection(amqp_uri) as conn:
        _, messages, _ = conn.default_channel.queue_declare(QUEUE, passive=True)
        assert messages == 0


def test_the_python_snippet_consumes_each_event_once(amqp_uri, tmp_path, clean_queue):
    script = tmp_path / "consumer.py"
    script.write_text(snippet("python"), encoding="utf-8")
    published, lines = run_consumer([sys.executable, str(script)], amqp_uri, tmp_path)
    check(published, lines, amqp_uri, null="None")


@pytest.mark.skipif(not (shutil.which("node") and shutil.which("npm")), reason="node and npm are not installed")
def test_the_nodejs_snippet_consumes_each_event_once(amqp_uri, tmp_path, clean_queue):
    installed = subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix",
                                str(tmp_path), "amqplib@0"], capture_output=True, text=True, timeout=180)
    if installed.returncode != 0:
        pytest.skip(f"npm could not install amqplib: {installed.stderr[-300:]}")
    script = tmp_path / "consumer.js"
    script.write_text(snippet("javascript"), encoding="utf-8")
    published, lines = run_consumer(["node", str(script)], amqp_uri, tmp_path, cwd=tmp_path)
    check(published, lines, amqp_uri, null="null")

"""The platform for the wuji command's tests: all five services as processes (SQLite) on a vhost of
the module's own, started once per module."""
import time
import uuid

import pytest
from nameko.exceptions import UnknownService
from nameko.standalone.rpc import ClusterRpcProxy

from wuji_common.local_platform import Platform
from wuji_common.testing import AMQP_HOST, _rabbitmqctl


@pytest.fixture(scope="module")
def platform(amqp_vhost, tmp_path_factory):
    vhost = f"{amqp_vhost}-cli-{uuid.uuid4().hex[:6]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    folder = tmp_path_factory.mktemp("wuji-cli")
    running = Platform(f"{AMQP_HOST}/{vhost}", Platform.sqlite_urls(folder), folder / "log")
    try:
        running.prepare()
        running.start()
        wait_until_answering(running.amqp_uri)
        yield running
    finally:
        running.stop()
        _rabbitmqctl("delete_vhost", vhost)


def wait_until_answering(amqp_uri, timeout=60):
    """Until every service takes RPC calls (its consumer attaches a moment after its ports open); a
    typed error is an answer too."""
    calls = {"intake": ("get_appeal", "YC0"), "triage": ("get_order", "GD0"),
             "enforcement": ("get_operation", "OP0"), "notify": ("deliveries", "YC0"),
             "metrics": ("event_count",)}
    deadline = time.monotonic() + timeout
    with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=10) as rpc:
        for service, (method, *args) in calls.items():
            while True:
                try:
                    getattr(getattr(rpc, service), method)(*args)
                    break
                except UnknownService:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
                except Exception:  # noqa: BLE001  (NotFound and the like: it answered)
                    break

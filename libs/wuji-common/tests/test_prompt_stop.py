"""A container stops within a few short drains, not kombu's one-second ones: every queue consumer of a
container built from the platform's entrypoints and proxies is a PromptQueueConsumer, and a started
container answers, then stops with its consumers cancelled and their loops ended (real broker)."""

import pytest
from kombu import Connection
from nameko.containers import ServiceContainer
from nameko.messaging import QueueConsumer
from nameko.standalone.rpc import ServiceRpcProxy

from wuji_common.dependencies import BoundedRpcProxy
from wuji_common.entrypoints import (
    STOP_POLL_SECONDS, PromptQueueConsumer, Rpc, batch_event_handler, event_handler,
)
from wuji_common.testing import own_vhost


class Echo:
    name = "echo"
    itself = BoundedRpcProxy("echo", timeout=5)

    @Rpc.decorator
    def shout(self, word):
        return self.itself.say(word).upper()

    @Rpc.decorator
    def say(self, word):
        return word

    @event_handler("intake", "appeal_rated")
    def on_rated(self, envelope):
        pass

    @batch_event_handler("intake", "appeal_received")
    def on_received(self, envelopes):
        pass


@pytest.fixture
def vhost_uri():
    with own_vhost("wuji-test-stop") as uri:
        yield uri


def queue_consumers(container):
    return [e for e in container.extensions if isinstance(e, QueueConsumer)]


def test_every_queue_consumer_of_the_platforms_extensions_drains_briefly():
    consumers = queue_consumers(ServiceContainer(Echo, {"AMQP_URI": "amqp://unused"}))
    # one shared by the RPC entrypoints, the proxy's replies and the plain event handler; one batching
    assert len(consumers) == 2
    assert all(isinstance(c, PromptQueueConsumer) for c in consumers)
    assert STOP_POLL_SECONDS < 1   # kombu's own drain waits a second


def test_a_started_container_answers_then_stops_with_its_consumers_cancelled(vhost_uri):
    container = ServiceContainer(Echo, {"AMQP_URI": vhost_uri, "SERVICE_TOKEN": "echo-token"})
    container.start()
    try:
        with ServiceRpcProxy("echo", {"AMQP_URI": vhost_uri}, timeout=10) as echo:
            assert echo.shout("ni hao") == "NI HAO"   # entrypoint, proxy and reply listener work
    finally:
        container.stop()
    for consumer in queue_consumers(container):
        assert consumer._gt.dead   # the consumer loop ended, not killed with the container
    with Connection(vhost_uri) as conn:
        assert conn.default_channel.queue_declare("rpc-echo", passive=True).consumer_count == 0

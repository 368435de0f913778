"""Every service stops within a few short drains (wuji_common.entrypoints.STOP_POLL_SECONDS): each
queue consumer of each of the five services is a PromptQueueConsumer, so none was built on nameko's
own rpc, event_handler or RpcProxy, whose consumer lets a stop wait out one-second drains."""
import importlib

import pytest
from nameko.containers import ServiceContainer
from nameko.messaging import QueueConsumer

from wuji_common.entrypoints import PromptQueueConsumer
from wuji_common.local_platform import SERVICES, service_class


@pytest.mark.parametrize("service", SERVICES)
def test_every_queue_consumer_of_the_service_notices_a_stop_promptly(service):
    module, class_name = service_class(service).split(":")
    container = ServiceContainer(getattr(importlib.import_module(module), class_name),
                                 {"AMQP_URI": "amqp://unused"})
    consumers = [e for e in container.extensions if isinstance(e, QueueConsumer)]
    assert consumers
    assert [type(c).__name__ for c in consumers if not isinstance(c, PromptQueueConsumer)] == []

"""Declare every durable queue and binding before any service publishes.

RabbitMQ drops an event published to an exchange with no queue bound. Services are started in any
order (and restarted one at a time), so the subscriber queues of all services are declared up front
by ``wuji-broker declare`` (run by ``make run`` and the deployment's init step). The relay also
publishes with ``mandatory`` and keeps any unrouted event in its outbox, so a missed declaration
delays an event, never loses it.
"""
import argparse
import importlib
import inspect
import os

from kombu import Connection, Queue
from nameko.events import EventHandler
from nameko.standalone.events import get_event_exchange

from wuji_common.entrypoints import DEFAULT_RETRY_DELAYS, retry_queues


def event_subscriptions(service_cls):
    """(source service, event type, queue name) for each event handler of a nameko service class."""
    subs = []
    for method_name, method in inspect.getmembers(service_cls, inspect.isfunction):
        for entrypoint in getattr(method, "nameko_entrypoints", ()):
            if isinstance(entrypoint, EventHandler):
                source, event_type = entrypoint.source_service, entrypoint.event_type
                queue = f"evt-{source}-{event_type}--{service_cls.name}.{method_name}"
                subs.append((source, event_type, queue))
    return subs


def declare(amqp_uri, service_classes, retry_delays=DEFAULT_RETRY_DELAYS):
    declared = []
    with Connection(amqp_uri) as conn:
        channel = conn.default_channel
        for service_cls in service_classes:
            for source, event_type, queue_name in event_subscriptions(service_cls):
                exchange = get_event_exchange(source, {})
                exchange(channel).declare()
                Queue(queue_name, exchange=exchange, routing_key=event_type, durable=True)(channel).declare()
                for queue in retry_queues(queue_name, retry_delays, service_cls.name):
                    queue(channel).declare()
                declared.append(queue_name)
    return declared


def load_service(path):
    """'intake.service:IntakeService' → the class."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="wuji-broker", description="Declare Wuji's queues on RabbitMQ")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("declare", help="declare exchanges, subscriber queues, delay and dead-letter queues")
    d.add_argument("--amqp-uri", default=os.environ.get("AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/"),
                   help="default: $AMQP_URI, else the local broker")
    d.add_argument("services", nargs="+", help="service classes, e.g. triage.service:TriageService")
    a = sub.add_parser("asyncapi", help="write docs/asyncapi.json and docs/events.md from the catalogue")
    a.add_argument("--out", default="docs")
    args = parser.parse_args(argv)
    if args.command == "asyncapi":
        from wuji_common.asyncapi import write_docs
        write_docs(args.out)
        print(f"wrote {args.out}/asyncapi.json and {args.out}/events.md")
        return
    declared = declare(args.amqp_uri, [load_service(s) for s in args.services])
    print(f"declared {len(declared)} subscriber queues")

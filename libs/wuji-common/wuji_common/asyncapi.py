"""The event catalogue as an AsyncAPI 2.6 document and as docs/events.md, both generated from the same
marshmallow schemas the services validate with (``wuji-broker asyncapi``). A test keeps the committed
files in step with the code."""
import json

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from wuji_common.events import CATALOGUE, EnvelopeSchema


def _json_schemas():
    spec = APISpec(title="wuji events", version="1", openapi_version="3.0.3", plugins=[MarshmallowPlugin()])
    spec.components.schema("Envelope", schema=EnvelopeSchema)
    for _, _, schema in CATALOGUE.values():
        spec.components.schema(schema.__name__, schema=schema)
    return spec.to_dict()["components"]["schemas"]


def _nullable_as_json_schema(node):
    """apispec writes OpenAPI 3.0's ``nullable: true``, which JSON Schema (and so AsyncAPI's schema
    object) does not know: a validator would refuse the nulls the services send. Say it the JSON
    Schema way, ``type: [<type>, "null"]``."""
    if isinstance(node, list):
        return [_nullable_as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable_as_json_schema(value) for key, value in node.items()}
    if node.pop("nullable", False):
        if isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        elif "anyOf" in node:
            node["anyOf"] = node["anyOf"] + [{"type": "null"}]
        if "enum" in node and None not in node["enum"]:
            node["enum"] = node["enum"] + [None]
    return node


def asyncapi_document(version="1.0.0"):
    schemas = _nullable_as_json_schema(_json_schemas())
    channels, messages = {}, {}
    for event_type, (source, event_version, schema) in CATALOGUE.items():
        name = f"{event_type}"
        payload = json.loads(json.dumps(schemas["Envelope"]))
        payload["properties"]["type"] = {"type": "string", "const": event_type}
        payload["properties"]["source"] = {"type": "string", "const": source}
        payload["properties"]["version"] = {"type": "integer", "const": event_version}
        payload["properties"]["data"] = {"$ref": f"#/components/schemas/{schema.__name__}"}
        messages[name] = {
            "name": event_type, "title": event_type, "summary": (schema.__doc__ or "").strip(),
            "contentType": "application/json", "payload": payload,
        }
        channels[f"{source}.events/{event_type}"] = {
            "description": f"Topic exchange `{source}.events`, routing key `{event_type}`.",
            "subscribe": {"operationId": f"on_{event_type}", "message": {"$ref": f"#/components/messages/{name}"}},
            "bindings": {"amqp": {"is": "routingKey",
                                  "exchange": {"name": f"{source}.events", "type": "topic", "durable": True,
                                               "autoDelete": False, "vhost": "/"}}},
        }
    return {
        "asyncapi": "2.6.0",
        "info": {"title": "Wuji events", "version": version,
                 "description": "Events of the Wuji platform. Every message is a JSON envelope "
                                "{event_id, type, version, occurred_at, case_no, source, data}; none carries "
                                "personal data. Delivery is at-least-once: drop duplicates by event_id."},
        "defaultContentType": "application/json",
        "servers": {"local": {"url": "127.0.0.1:5672", "protocol": "amqp", "protocolVersion": "0.9.1"}},
        "channels": channels,
        "components": {"messages": messages,
                       "schemas": {k: v for k, v in schemas.items() if k != "Envelope"}},
    }


def events_markdown():
    schemas = _json_schemas()
    lines = [
        "# Events",
        "",
        "Generated from `libs/wuji-common/wuji_common/events.py` by `wuji-broker asyncapi`; do not edit by hand.",
        "The same catalogue as an AsyncAPI 2.6 document: [asyncapi.json](asyncapi.json).",
        "",
        "Each service publishes to the durable topic exchange `<source>.events` with the event type as",
        "routing key. The body is a JSON envelope:",
        "",
        "| field | meaning |", "|---|---|",
        "| `event_id` | UUID; delivery is at-least-once, so drop a repeated `event_id` |",
        "| `type` | the event type (routing key) |",
        "| `version` | payload version; a breaking change gets a new version |",
        "| `occurred_at` | ISO 8601, UTC |",
        "| `case_no` | the appeal it belongs to (e.g. `YC20261125000123`), or null |",
        "| `source` | the publishing service |",
        "| `data` | the payload below; never personal data (name, phone, ID number, precise address) |",
        "",
        "To consume: declare your own durable queue, bind it to `<source>.events` with the routing keys",
        "you need (or `#`), ack after you have stored the effect, and drop duplicates by `event_id`.",
        "",
    ]
    for event_type, (source, version, schema) in CATALOGUE.items():
        props = schemas[schema.__name__]["properties"]
        required = set(schemas[schema.__name__].get("required", []))
        lines += [f"## `{event_type}` (from {source}, v{version})", "", (schema.__doc__ or "").strip(), "",
                  "| field | type | required |", "|---|---|---|"]
        for field, spec in props.items():
            kind = spec.get("type", "object")
            if "enum" in spec:
                kind += " (" + ", ".join(str(e) for e in spec["enum"] if e is not None) + ")"
            lines.append(f"| `{field}` | {kind} | {'yes' if field in required else ''} |")
        lines.append("")
    return "\n".join(lines)


def write_docs(directory):
    from pathlib import Path
    d = Path(directory)
    (d / "asyncapi.json").write_text(json.dumps(asyncapi_document(), ensure_ascii=False, indent=2) + "\n",
                                     encoding="utf-8")
    (d / "events.md").write_text(events_markdown(), encoding="utf-8")

"""Open311's HTTP side, for intake's entrypoints: parameters from the query string and the form, the
API key and jurisdiction checks, and answers in JSON or XML with the spec's element names, errors
included (``[{"code", "description"}]`` / ``<errors><error>…``). The use cases are in intake.open311.
"""
import hmac
import json
import re
from xml.etree import ElementTree

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Response

from intake import open311
from intake.open311 import ErrorSchema, Open311Error

MAX_BODY_BYTES = 64 * 1024
ATTRIBUTE = re.compile(r"^attribute\[([^\]]{1,32})\](\[\])?$")
# element names of list members in the XML documents, as the spec writes them
LIST_ITEMS = {"attributes": "attribute", "values": "value", "endpoints": "endpoint", "formats": "format"}
CONTENT_TYPES = {"json": "application/json; charset=utf-8", "xml": "text/xml; charset=utf-8"}


# --- configuration --------------------------------------------------------------------------

def parse_api_keys(value):
    """``OPEN311_API_KEYS``: comma separated ``client:key`` pairs (a bare key is ``client-<n>``).
    Returns {key: client}."""
    keys = {}
    for n, entry in enumerate(str(value or "").split(","), start=1):
        entry = entry.strip()
        if not entry:
            continue
        client, sep, key = entry.partition(":")
        keys[key if sep else client] = client if sep else f"client-{n}"
    return keys


def client_for(api_keys, supplied):
    """The client an API key was issued to; 403 for a missing or unknown key (compared in constant
    time, so that response times do not leak keys)."""
    supplied = (supplied or "").encode()
    for key, client in api_keys.items():
        if supplied and hmac.compare_digest(key.encode(), supplied):
            return client
    raise Open311Error(403, "api_key: 未提供或无效 (invalid api_key received -- can't proceed with create_request)")


def check_jurisdiction(settings, params):
    """``jurisdiction_id`` is optional (this endpoint serves one district); another one is 404."""
    supplied = params.get("jurisdiction_id")
    if supplied is not None and supplied != settings.jurisdiction_id:
        raise Open311Error(404, f"jurisdiction_id {supplied} not found")


# --- input ------------------------------------------------------------------------------------

def _sources(request):
    request.max_content_length = MAX_BODY_BYTES
    try:
        return (request.args, request.form) if request.method == "POST" else (request.args,)
    except RequestEntityTooLarge:
        raise Open311Error(413, f"request body: larger than {MAX_BODY_BYTES} bytes") from None


def params(request):
    """Single-valued parameters, the form's over the query string's; attribute[…] left out."""
    merged = {}
    for source in _sources(request):
        for key in source.keys():
            if not ATTRIBUTE.match(key):
                merged[key] = source.get(key)
    return merged


def attributes(request):
    """``attribute[code]=value`` → {code: value}. Every attribute here takes one value."""
    found = {}
    for source in _sources(request):
        for key in source.keys():
            match = ATTRIBUTE.match(key)
            if match:
                values = source.getlist(key)
                if len(values) != 1 or match.group(2):
                    raise Open311Error(400, f"attribute[{match.group(1)}]: takes exactly one value")
                found[match.group(1)] = values[0]
    return found


# --- output -----------------------------------------------------------------------------------

def _element(tag, value):
    element = ElementTree.Element(tag)
    if isinstance(value, dict):
        for key, item in value.items():
            element.append(_element(key, item))
    elif isinstance(value, list):
        for item in value:
            element.append(_element(LIST_ITEMS.get(tag, "item"), item))
    elif isinstance(value, bool):
        element.text = "true" if value else "false"
    elif value is not None:  # None: an empty element, as in the spec's examples
        element.text = str(value)
    return element


def xml_document(root, payload, item=None):
    """``<root><item>…</item>…</root>`` for a list, ``<root>…</root>`` for an object."""
    if item is None:
        element = _element(root, payload)
    else:
        element = ElementTree.Element(root)
        for member in payload:
            element.append(_element(item, member))
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(element, encoding="unicode")


def render(fmt, payload, root, item=None, status=200):
    body = json.dumps(payload, ensure_ascii=False) if fmt == "json" else xml_document(root, payload, item)
    return Response(body.encode("utf-8"), status=status, content_type=CONTENT_TYPES[fmt])


def _answer(fmt, root, item, produce):
    if fmt not in CONTENT_TYPES:
        return render("json", [{"code": 404, "description": f"format {fmt[:20]} not supported: json or xml"}],
                      "errors", "error", 404)
    try:
        payload = produce()
    except Open311Error as exc:
        return render(fmt, ErrorSchema(many=True).dump(exc.errors), "errors", "error", exc.status)
    return render(fmt, payload, root, item)


# --- the endpoints ----------------------------------------------------------------------------

def discovery(request, fmt, settings):
    def produce():
        check_jurisdiction(settings, params(request))
        url = settings.base_url or f"{request.host_url}open311/v2/"
        return open311.discovery(url, settings.contact, settings.key_service)
    return _answer(fmt, "discovery", None, produce)


def services(request, fmt, settings, catalogue):
    def produce():
        check_jurisdiction(settings, params(request))
        return open311.services(catalogue())
    return _answer(fmt, "services", "service", produce)


def service_definition(request, fmt, settings, uow, catalogue, service_code):
    def produce():
        check_jurisdiction(settings, params(request))
        return open311.service_definition(uow, catalogue(), service_code)
    return _answer(fmt, "service_definition", None, produce)


def create_request(request, fmt, settings, uow, catalogue, citizen_key):
    def produce():
        given = params(request)
        client = client_for(settings.api_keys, given.get("api_key"))
        check_jurisdiction(settings, given)
        return open311.create_request(uow, catalogue(), given, attributes(request), client, citizen_key,
                                      request.headers.get("Idempotency-Key"))
    return _answer(fmt, "service_requests", "request", produce)


def find_requests(request, fmt, settings, uow):
    def produce():
        given = params(request)
        check_jurisdiction(settings, given)
        return open311.find_requests(uow, given)
    return _answer(fmt, "service_requests", "request", produce)


def get_request(request, fmt, settings, uow, service_request_id):
    def produce():
        check_jurisdiction(settings, params(request))
        return open311.get_request(uow, service_request_id)
    return _answer(fmt, "service_requests", "request", produce)


def token(request, fmt, settings, uow, token_id):
    def produce():
        check_jurisdiction(settings, params(request))
        return open311.token_lookup(uow, token_id)
    return _answer(fmt, "service_requests", "request", produce)

"""intake service: entrypoints only. Each turns a request or message into a call of a plain handler.

HTTP (citizens, JSON, UTF-8):
    POST /api/v1/appeals                      submit; optional Idempotency-Key header
    GET  /api/v1/appeals/<case_no>            status + timeline; X-Tracking-Token header or ?token=
    POST /api/v1/appeals/<case_no>/rating     rate a resolved appeal
    GET  /api/v1/openapi.json                 OpenAPI 3 description of this HTTP API
Open311 GeoReport v2 (intake.open311; .json or .xml): /open311/v2/discovery, services,
services/<code>, requests (GET, POST with api_key), requests/<id>, tokens/<token>.
RPC (department systems): submit_appeal, get_appeal (masked), contact_for_notification and
contacts_for_notification (notify only).
Events in: triage's order events, projected onto the citizen's timeline (at-least-once; duplicates
dropped by event id). Events out (via the outbox): appeal_received, appeal_rated.
"""
import json

from nameko.web.handlers import http
from werkzeug.wrappers import Response

from intake import domain, handlers, open311_http, openapi
from intake.dependencies import (
    AppealWriter, BoundedRpcProxy, CitizenKey, IntakeDatabase, MetricsExporter, Open311Settings, RateLimits,
)
from intake.ratelimit import RateLimited
from wuji_common import audit, auth
from wuji_common.audit import audited
from wuji_common.auth import CurrentCaller, rpc
from wuji_common.entrypoints import batch_event_handler, event_handler
from wuji_common.errors import EXPECTED, Forbidden, InvalidTransition, NotFound, ValidationError

MAX_BODY_BYTES = 64 * 1024
# who may call what over RPC (wuji_common.auth.ROLES); HTTP stays public (tracking token, API keys)
RECEPTION = auth.UNIT_STAFF + ("dispatcher", "supervisor")          # register appeals
READERS = auth.UNIT_STAFF + ("dispatcher", "supervisor", "district_leader")


# reveal a contact unmasked (with a reason; intake.domain.may_reveal decides per case)
REVEALERS = ("unit_head", "supervisor", "district_leader")
AUDIT_READERS = auth.UNIT_STAFF + ("dispatcher", "supervisor", "district_leader", "ops")


def json_response(status, body):
    return Response(json.dumps(body, ensure_ascii=False), status=status,
                    mimetype="application/json", content_type="application/json; charset=utf-8")


def error_response(exc):
    if isinstance(exc, ValidationError):
        return json_response(400, {"error": "validation_error", "message": exc.message,
                                   "fields": exc.fields})
    if isinstance(exc, NotFound):
        return json_response(404, {"error": "not_found", "message": str(exc.args[0])})
    if isinstance(exc, InvalidTransition):
        return json_response(409, {"error": "invalid_state", "message": str(exc.args[0])})
    if isinstance(exc, Forbidden):
        return json_response(403, {"error": "forbidden", "message": str(exc.args[0])})
    raise exc


def read_json(request):
    """The request body as JSON, or a ValidationError naming what is wrong with it."""
    if request.content_length and request.content_length > MAX_BODY_BYTES:
        raise ValidationError("请求体过大", {"_body": [f"不得超过 {MAX_BODY_BYTES} 字节"]})
    raw = request.get_data(cache=False)
    if len(raw) > MAX_BODY_BYTES:
        raise ValidationError("请求体过大", {"_body": [f"不得超过 {MAX_BODY_BYTES} 字节"]})
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError("请求体必须是 UTF-8 编码", {"_body": ["not UTF-8"]}) from None
    try:
        body = json.loads(text)
    except ValueError:
        raise ValidationError("请求体不是合法的 JSON", {"_body": ["invalid JSON"]}) from None
    if not isinstance(body, dict):
        raise ValidationError("请求体必须是 JSON 对象", {"_body": ["must be an object"]})
    return body


def tracking_token(request):
    return request.headers.get("X-Tracking-Token") or request.args.get("token")


def too_many_requests(exc):
    response = json_response(429, {"error": "rate_limited", "message": exc.message,
                                   "retry_after": exc.retry_after})
    response.headers["Retry-After"] = str(exc.retry_after)
    return response


def phone_ref(citizen_key, phone):
    """The keyed hash a phone is rate-limited by (the number itself is never kept in memory)."""
    return domain.citizen_ref(citizen_key, str(phone)[:40]) if phone else None


def submitted_phone(body):
    citizen = body.get("citizen")
    return citizen.get("phone") if isinstance(citizen, dict) else None


def public_caller(caller, subject="anonymous", role="anonymous"):
    """The actor of a public HTTP call, for the audit log: the citizen (tracking token) or an
    anonymous caller, with the client address as its source."""
    return auth.Caller(subject, role, source=getattr(caller, "source", None))


class IntakeService:
    name = "intake"

    uow = IntakeDatabase()
    appeal_writer = AppealWriter()  # submissions that arrive together are stored in one transaction
    citizen_key = CitizenKey()
    metrics = MetricsExporter()
    caller = CurrentCaller()
    rate_limits = RateLimits()
    open311_settings = Open311Settings()
    triage = BoundedRpcProxy("triage")  # the service catalogue (read-only) for Open311

    # --- HTTP: citizens -------------------------------------------------------------------------
    @http("POST", "/api/v1/appeals", expected_exceptions=EXPECTED)
    def post_appeal(self, request):
        try:
            body = read_json(request)
            self.rate_limits.check("appeals", request.remote_addr,
                                   phone_ref(self.citizen_key, submitted_phone(body)))
            result = self.appeal_writer.submit(handlers.Submission(
                handlers.check_submission(body), request.headers.get("Idempotency-Key"),
                audit=(public_caller(self.caller), "submit_appeal")))
        except RateLimited as exc:
            return too_many_requests(exc)
        except EXPECTED as exc:
            return error_response(exc)
        return json_response(201, result)

    @http("GET", "/api/v1/appeals/<string:case_no>", expected_exceptions=EXPECTED)
    def get_appeal_public(self, request, case_no):
        try:
            return json_response(200, handlers.public_view(self.uow(), case_no, tracking_token(request)))
        except EXPECTED as exc:
            return error_response(exc)

    @http("POST", "/api/v1/appeals/<string:case_no>/rating", expected_exceptions=EXPECTED)
    def post_rating(self, request, case_no):
        try:
            self.rate_limits.check("rating", request.remote_addr)
            uow = audited(self.uow(), public_caller(self.caller, f"citizen:{case_no}"[:96], "citizen"),
                          "rate_appeal", "appeal", case_no)
            result = handlers.rate_appeal(uow, case_no, tracking_token(request), read_json(request),
                                          request.headers.get("Idempotency-Key"))
        except RateLimited as exc:
            return too_many_requests(exc)
        except EXPECTED as exc:
            return error_response(exc)
        return json_response(200, result)

    @http("GET", "/api/v1/openapi.json")
    def get_openapi(self, request):
        """The OpenAPI 3 description of this HTTP API (intake.openapi)."""
        return json_response(200, openapi.document_for(request.host_url))

    # --- HTTP: Open311 GeoReport v2 (intake.open311; formats json and xml) ------------------------
    def _catalogue(self):
        return self.open311_settings.catalogue(self.triage.services_catalogue)

    @http("GET", "/open311/v2/discovery.<string:fmt>")
    def open311_discovery(self, request, fmt):
        return open311_http.discovery(request, fmt, self.open311_settings)

    @http("GET", "/open311/v2/services.<string:fmt>")
    def open311_services(self, request, fmt):
        return open311_http.services(request, fmt, self.open311_settings, self._catalogue)

    @http("GET", "/open311/v2/services/<string:service_code>.<string:fmt>")
    def open311_service_definition(self, request, service_code, fmt):
        return open311_http.service_definition(request, fmt, self.open311_settings, self.uow(),
                                               self._catalogue, service_code)

    @http("POST", "/open311/v2/requests.<string:fmt>")
    def open311_create_request(self, request, fmt):
        """The same appeal as any other (handlers.submit_appeal); needs an API key."""
        try:
            if (request.content_length or 0) > MAX_BODY_BYTES:
                raise ValidationError("请求体过大", {"_body": [f"不得超过 {MAX_BODY_BYTES} 字节"]})
            self.rate_limits.check("open311", request.remote_addr,
                                   phone_ref(self.citizen_key, open311_http.params(request).get("phone")))
        except RateLimited as exc:
            return too_many_requests(exc)
        except ValidationError as exc:
            return error_response(exc)
        uow = audited(self.uow(), public_caller(self.caller), "open311_create_request", "appeal")
        return open311_http.create_request(request, fmt, self.open311_settings, uow,
                                           self._catalogue, self.citizen_key)

    @http("GET", "/open311/v2/requests.<string:fmt>")
    def open311_requests(self, request, fmt):
        return open311_http.find_requests(request, fmt, self.open311_settings, self.uow())

    @http("GET", "/open311/v2/requests/<string:service_request_id>.<string:fmt>")
    def open311_request(self, request, service_request_id, fmt):
        return open311_http.get_request(request, fmt, self.open311_settings, self.uow(),
                                        service_request_id)

    @http("GET", "/open311/v2/tokens/<string:token_id>.<string:fmt>")
    def open311_token(self, request, token_id, fmt):
        return open311_http.token(request, fmt, self.open311_settings, self.uow(), token_id)

    # --- RPC: department systems ---------------------------------------------------------------
    @rpc(roles=RECEPTION, sensitive_arguments=("appeal.citizen",))
    def submit_appeal(self, appeal, idempotency_key=None):
        """Register an appeal. A retry with the same idempotency_key returns the first result."""
        return self.appeal_writer.submit(handlers.Submission(
            handlers.check_submission(appeal), idempotency_key, audit=(self.caller, "submit_appeal")))

    @rpc(roles=READERS)
    def get_appeal(self, case_no):
        """The case with its timeline; personal data masked (a unit sees no person at all when the
        citizen hid their identity from it). Audited."""
        return handlers.staff_view(self.uow(), case_no, self.caller)

    @rpc(roles=("service:notify",))
    def contact_for_notification(self, case_no):
        """Plain contact data, for notify at send time only. Audited."""
        return handlers.contact_for_notification(self.uow(), case_no, self.caller)

    @rpc(roles=("service:notify",))
    def contacts_for_notification(self, case_nos):
        """contact_for_notification of several cases in one call: {case_no: contact}. Audited."""
        return handlers.contacts_for_notification(self.uow(), case_nos, self.caller)

    @rpc(roles=REVEALERS)
    def reveal_contact(self, case_no, reason):
        """The citizen's contact unmasked, with a reason, audited: supervisors and the district
        leader; the head of the unit holding the order unless the citizen hid their identity."""
        return handlers.reveal_contact(self.uow(), self.caller, case_no, reason)

    @rpc(roles=AUDIT_READERS)
    def audit_log(self, object_id=None, since=None, limit=100):
        """intake's audit log: a unit's staff their own unit's entries, supervisors everything."""
        return audit.read(self.uow(), self.caller, object_id, since, limit)

    # --- events --------------------------------------------------------------------------------
    @event_handler("auth", "token_revoked")
    def record_revoked_token(self, envelope):
        """Every instance refuses the token from now on (auth.CurrentCaller reads the record)."""
        auth.record_revocation(self.uow(), "intake.record_revoked_token", envelope)

    # --- events: the order's progress, projected for the citizen -------------------------------
    def _project(self, envelopes, consumer):
        # each event's effect is audited as done by the service that published it
        handlers.apply_order_events(self.uow(), f"intake.{consumer}", envelopes,
                                    on_handled=audit.record_events)

    @batch_event_handler("triage", "order_dispatched")
    def on_order_dispatched(self, envelopes):
        self._project(envelopes, "on_order_dispatched")

    @batch_event_handler("triage", "order_accepted")
    def on_order_accepted(self, envelopes):
        self._project(envelopes, "on_order_accepted")

    @batch_event_handler("triage", "order_returned")
    def on_order_returned(self, envelopes):
        self._project(envelopes, "on_order_returned")

    @batch_event_handler("triage", "order_progressed")
    def on_order_progressed(self, envelopes):
        self._project(envelopes, "on_order_progressed")

    @batch_event_handler("triage", "order_resolved")
    def on_order_resolved(self, envelopes):
        self._project(envelopes, "on_order_resolved")

    @batch_event_handler("triage", "order_reopened")
    def on_order_reopened(self, envelopes):
        self._project(envelopes, "on_order_reopened")

    @batch_event_handler("triage", "order_closed")
    def on_order_closed(self, envelopes):
        self._project(envelopes, "on_order_closed")

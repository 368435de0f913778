"""The OpenAPI 3 description of intake's whole HTTP API (the citizen API and Open311 GeoReport v2),
generated with apispec from the same marshmallow schemas that load the requests and dump the answers
(served at ``GET /api/v1/openapi.json``). A test fuzzes the running service from it."""
from functools import lru_cache

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import fields, validate

from intake import open311
from intake.schemas import (
    ApiErrorSchema, AppealReceiptSchema, AppealSubmissionSchema, PublicAppealSchema, RatingResultSchema,
    RatingSchema,
)

VERSION = "1.1.0"  # of this HTTP API; bump the minor for additions, the major for breaking changes


class Open311CreateRequestForm(open311.CreateRequestSchema):
    """``POST requests`` as a form: the parameters, and the attributes of GET services/{service_code}."""
    attribute_town = fields.String(data_key="attribute[town]", validate=validate.Length(1, 64),
                                   metadata={"description": "镇街代码或名称"})
    attribute_village = fields.String(data_key="attribute[village]", validate=validate.Length(1, 64),
                                      metadata={"description": "村居代码或名称"})
    attribute_title = fields.String(data_key="attribute[title]", validate=validate.Length(1, 100),
                                    metadata={"description": "诉求标题"})


SCHEMAS = {
    "AppealSubmission": AppealSubmissionSchema, "AppealReceipt": AppealReceiptSchema,
    "PublicAppeal": PublicAppealSchema, "Rating": RatingSchema, "RatingResult": RatingResultSchema,
    "ApiError": ApiErrorSchema,
    "Open311Error": open311.ErrorSchema, "Open311Service": open311.ServiceSchema,
    "Open311ServiceDefinition": open311.ServiceDefinitionSchema,
    "Open311ServiceRequest": open311.ServiceRequestSchema,
    "Open311RequestCreated": open311.RequestCreatedSchema, "Open311Token": open311.TokenSchema,
    "Open311Discovery": open311.DiscoverySchema, "Open311CreateRequest": Open311CreateRequestForm,
}


# the public POSTs are rate-limited per client address and per phone (intake.ratelimit)
TOO_MANY = {"description": "too many requests from this address or for this phone; try again after "
                           "Retry-After seconds (an ApiError, error rate_limited)",
            "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
            "content": {"application/json": {"schema": "ApiError"}}}


def _json(schema, description):
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _api_error(description):
    return _json("ApiError", description)


def _open311(schema, description):
    """Open311 answers in the format the path's suffix asks for, JSON or XML, one schema."""
    return {"description": description,
            "content": {"application/json": {"schema": schema}, "text/xml": {"schema": schema}}}


def _open311_errors(*statuses):
    what = {400: "a parameter is missing or wrong (each named in an error)",
            403: "api_key missing or invalid", 404: "jurisdiction_id, service code, request or token not found",
            413: "request body too large", 503: "the service catalogue is unavailable for now"}
    return {str(s): _open311({"type": "array", "items": "Open311Error"}, what[s]) for s in statuses}


FORMAT = {"name": "format", "in": "path", "required": True, "description": "response format",
          "schema": {"type": "string", "enum": ["json", "xml"]}}
JURISDICTION = {"name": "jurisdiction_id", "in": "query", "required": False,
                "description": f"optional; this endpoint serves one district (default "
                               f"yicheng.zaozhuang.gov.cn); another one is 404",
                "schema": {"type": "string", "minLength": 1, "maxLength": 100}}
IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "description": "a retry with the same key returns the first answer and writes nothing",
                   "schema": {"type": "string", "minLength": 1, "maxLength": 128}}


def _citizen_paths(spec):
    token_params = [
        {"name": "case_no", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 32}},
        {"name": "token", "in": "query", "required": False, "description": "the tracking token",
         "schema": {"type": "string"}},
        {"name": "X-Tracking-Token", "in": "header", "required": False,
         "description": "the tracking token (instead of ?token=)", "schema": {"type": "string"}},
    ]
    spec.path("/api/v1/appeals", operations={"post": {
        "operationId": "submitAppeal", "tags": ["citizens"], "summary": "Submit an appeal (一次登记)",
        "parameters": [IDEMPOTENCY_KEY],
        "requestBody": {"required": True, "content": {"application/json": {"schema": "AppealSubmission"}}},
        "responses": {"201": _json("AppealReceipt", "registered"),
                      "400": _api_error("invalid input; nothing was written"),
                      "429": TOO_MANY}}})
    spec.path("/api/v1/appeals/{case_no}", operations={"get": {
        "operationId": "getAppeal", "tags": ["citizens"], "summary": "Status and timeline of one's appeal",
        "parameters": token_params,
        "responses": {"200": _json("PublicAppeal", "the appeal as the citizen sees it"),
                      "404": _api_error("no such case, or a wrong token (the same answer)")}}})
    spec.path("/api/v1/appeals/{case_no}/rating", operations={"post": {
        "operationId": "rateAppeal", "tags": ["citizens"], "summary": "Rate a resolved appeal (评价)",
        "parameters": token_params + [IDEMPOTENCY_KEY],
        "requestBody": {"required": True, "content": {"application/json": {"schema": "Rating"}}},
        "responses": {"200": _json("RatingResult", "rated"), "400": _api_error("invalid input"),
                      "404": _api_error("no such case, or a wrong token"),
                      "409": _api_error("not resolved yet, or already rated"), "429": TOO_MANY}}})
    spec.path("/api/v1/openapi.json", operations={"get": {
        "operationId": "getOpenApi", "tags": ["meta"], "summary": "This description",
        "responses": {"200": {"description": "OpenAPI 3",
                              "content": {"application/json": {"schema": {"type": "object"}}}}}}})


def _open311_paths(spec):
    base = "/open311/v2"
    spec.path(f"{base}/discovery.{{format}}", operations={"get": {
        "operationId": "open311Discovery", "tags": ["open311"], "summary": "Service discovery",
        "parameters": [FORMAT, JURISDICTION],
        "responses": {"200": _open311("Open311Discovery", "where this endpoint is and what it speaks"),
                      **_open311_errors(404)}}})
    spec.path(f"{base}/services.{{format}}", operations={"get": {
        "operationId": "open311Services", "tags": ["open311"],
        "summary": "GET services: the taxonomy's items, grouped by category",
        "parameters": [FORMAT, JURISDICTION],
        "responses": {"200": _open311({"type": "array", "items": "Open311Service"}, "the services"),
                      **_open311_errors(404, 503)}}})
    spec.path(f"{base}/services/{{service_code}}.{{format}}", operations={"get": {
        "operationId": "open311ServiceDefinition", "tags": ["open311"],
        "summary": "GET service definition: the attributes of a service",
        "parameters": [{"name": "service_code", "in": "path", "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 64}}, FORMAT, JURISDICTION],
        "responses": {"200": _open311("Open311ServiceDefinition", "its attributes"),
                      **_open311_errors(404, 503)}}})
    spec.path(f"{base}/requests.{{format}}", operations={
        "get": {
            "operationId": "open311Requests", "tags": ["open311"],
            "summary": "GET service requests: newest first, at most 1000, within 90 days",
            "parameters": [FORMAT, {"in": "query", "schema": open311.RequestsQuerySchema}],
            "responses": {"200": _open311({"type": "array", "items": "Open311ServiceRequest"}, "matches"),
                          **_open311_errors(400, 404)}},
        "post": {
            "operationId": "open311CreateRequest", "tags": ["open311"],
            "summary": "POST service request: registers an appeal like any other (needs an api_key)",
            "parameters": [FORMAT, IDEMPOTENCY_KEY],
            "requestBody": {"required": True, "content": {
                "application/x-www-form-urlencoded": {"schema": "Open311CreateRequest"}}},
            "responses": {"200": _open311({"type": "array", "items": "Open311RequestCreated"},
                                          "the new request's id, token and notice"),
                          **_open311_errors(400, 403, 404, 413, 503), "429": TOO_MANY}}})
    spec.path(f"{base}/requests/{{service_request_id}}.{{format}}", operations={"get": {
        "operationId": "open311Request", "tags": ["open311"], "summary": "GET service request (a list of one)",
        "parameters": [{"name": "service_request_id", "in": "path", "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 32}}, FORMAT, JURISDICTION],
        "responses": {"200": _open311({"type": "array", "items": "Open311ServiceRequest"}, "the request"),
                      **_open311_errors(404)}}})
    spec.path(f"{base}/tokens/{{token_id}}.{{format}}", operations={"get": {
        "operationId": "open311Token", "tags": ["open311"], "summary": "GET service_request_id from a token",
        "parameters": [{"name": "token_id", "in": "path", "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 64}}, FORMAT, JURISDICTION],
        "responses": {"200": _open311({"type": "array", "items": "Open311Token"}, "the id"),
                      **_open311_errors(404)}}})


@lru_cache(maxsize=1)
def openapi_document():
    spec = APISpec(
        title="Wuji intake HTTP API", version=VERSION, openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Citizens' appeals (诉求) of Yicheng district: the citizen API (JSON, UTF-8) "
                             "and Open311 GeoReport v2 (http://wiki.open311.org/GeoReport_v2; JSON or XML "
                             "by the path's suffix). Personal data is never returned. Generated from the "
                             "service's marshmallow schemas."},
        tags=[{"name": "citizens", "description": "submit, follow and rate an appeal"},
              {"name": "open311", "description": "Open311 GeoReport v2 (docs/integrators.md)"},
              {"name": "meta"}])
    for name, schema in SCHEMAS.items():
        spec.components.schema(name, schema=schema)
    _citizen_paths(spec)
    _open311_paths(spec)
    return spec.to_dict()


def document_for(host_url):
    """The description with this server's URL, as served."""
    return {**openapi_document(), "servers": [{"url": host_url.rstrip("/")}]}

"""The OpenAPI description of intake's HTTP API, served by the running service (with triage, on the
real broker), and a bounded fuzz of every operation from it (schemathesis): valid and invalid input
alike get no 5xx and answers as documented, and invalid input writes nothing."""
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode, checks
from sqlalchemy import func, select

from intake.models import Appeal, outbox
from intake.service import IntakeService

MAX_EXAMPLES = 12  # per operation and mode: about 250 requests in all, a few seconds


def test_the_description_covers_every_http_entrypoint(intake_and_triage):
    document = requests.get(f"{intake_and_triage['api']}/api/v1/openapi.json", timeout=10).json()
    assert document["openapi"].startswith("3.") and document["servers"] == [{"url": intake_and_triage["api"]}]
    served = set()
    for name in dir(IntakeService):
        for entrypoint in getattr(getattr(IntakeService, name), "nameko_entrypoints", ()):
            if type(entrypoint).__name__ == "HttpRequestHandler":
                url = entrypoint.url.replace("<string:fmt>", "{format}")
                for converter in ("string:", ""):
                    url = url.replace(f"<{converter}", "{").replace(">", "}")
                served.add((entrypoint.method.lower(), url))
    documented = {(method, path) for path, operations in document["paths"].items() for method in operations}
    assert documented == served
    # generated from the marshmallow schemas: the submission's rules are the loader's rules
    submission = document["components"]["schemas"]["AppealSubmission"]
    assert submission["additionalProperties"] is False
    assert submission["properties"]["title"] == {"type": "string", "minLength": 1, "maxLength": 100}


@pytest.fixture(scope="module")
def operations(intake_and_triage):
    """Every operation of the served description (schemathesis loads and checks it)."""
    schema = schemathesis.openapi.from_url(f"{intake_and_triage['api']}/api/v1/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def writes(intake_and_triage):
    """Appeals registered and events raised so far: what invalid input must not change."""
    with intake_and_triage["uow"]() as u:
        return (u.session.execute(select(func.count()).select_from(Appeal)).scalar_one(),
                u.session.execute(select(func.count()).select_from(outbox)).scalar_one())


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_fuzz_no_5xx_and_no_write_from_invalid_input(operations, intake_and_triage, mode):
    """Each operation gets MAX_EXAMPLES generated requests (hypothesis, derandomized: the same
    examples every run); the answer must be documented (status, content type, body schema)."""
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        def fuzz(case):
            before = writes(intake_and_triage)
            response = case.call(base_url=intake_and_triage["api"], timeout=10)
            assert response.status_code < 500, \
                f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
            if response.status_code != 414:  # the web server's own URL limit, before any handler
                case.validate_response(response, excluded_checks=[checks.positive_data_acceptance])
            if mode == GenerationMode.NEGATIVE and response.status_code >= 400:
                assert writes(intake_and_triage) == before, f"{case.method} {case.formatted_path} wrote"
        fuzz()

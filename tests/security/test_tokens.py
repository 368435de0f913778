"""Who may call at all: every RPC call needs a token the platform signed, not expired, not revoked;
services call each other as themselves. Each test is named after the attack it tries."""
import base64
import json
import time

import urllib.error
import urllib.request

import jwt
import pytest
from nameko.standalone.rpc import ClusterRpcProxy
from nameko.web.handlers import http

from wuji_common import auth
from wuji_common.auth import CurrentCaller, rpc
from wuji_common.dependencies import BoundedRpcProxy
from wuji_common.errors import Forbidden, Unauthenticated
from wuji_common.testing import _TEST_PRIVATE, issue_test_token
from wuji_common.testing_helpers import (
    eventually, free_port, http_json, rpc_as as _rpc_as, rpc_as_role as _rpc_as_role,
)

# one read-only RPC per service, callable by a supervisor
READS = {"intake": ("get_appeal", ("YC-NONE",)), "triage": ("find_orders", ()),
         "enforcement": ("find_operations", ()), "notify": ("deliveries", ("YC-NONE",)),
         "metrics": ("kpis", ("2026-11-01", "2026-11-30"))}


def rpc_as(platform, token):
    return _rpc_as(platform.amqp_uri, token)


def rpc_as_role(platform, role, **scope):
    return _rpc_as_role(platform.amqp_uri, role, **scope)


def call(rpc, service, method, *args):
    return getattr(getattr(rpc, service), method)(*args)


def refused(platform, token, service="triage", method="find_orders", args=()):
    with rpc_as(platform, token) as rpc:
        with pytest.raises(Unauthenticated) as err:
            call(rpc, service, method, *args)
    return str(err.value)


def _b64(data):
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("service", sorted(READS))
def test_call_without_token_is_refused_by_every_service(secured, service):
    method, args = READS[service]
    assert "no token" in refused(secured, None, service, method, args)


def test_forged_token_is_refused(secured):
    """Signed with a key of the attacker's own, under the platform key's kid."""
    private, _ = auth.generate_key(kid=_TEST_PRIVATE["kid"])
    token, _ = auth.issue_token(auth.load_signing_key(json.dumps(private)), "staff:mallory", "supervisor")
    assert "signature" in refused(secured, token)


def test_tampered_claims_are_refused(secured):
    """A real unit clerk's token with its role edited to district_leader."""
    header, payload, signature = issue_test_token("unit_clerk", unit_code="dept-urban").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["role"] = "district_leader"
    assert "signature" in refused(secured, ".".join((header, _b64(claims), signature)))


def test_unsigned_token_is_refused(secured):
    """alg "none": the classic JWT downgrade."""
    token = jwt.encode({"iss": "wuji", "sub": "staff:mallory", "role": "supervisor", "jti": "x",
                        "iat": int(time.time()), "exp": int(time.time()) + 600}, None, algorithm="none")
    refused(secured, token)


def test_symmetric_token_made_with_the_public_key_is_refused(secured):
    """HS256 keyed with the published public key (algorithm confusion)."""
    claims = {"iss": "wuji", "sub": "staff:mallory", "role": "supervisor", "jti": "x",
              "iat": int(time.time()), "exp": int(time.time()) + 600}
    token = jwt.encode(claims, _TEST_PRIVATE["x"], algorithm="HS256", headers={"kid": _TEST_PRIVATE["kid"]})
    refused(secured, token)


def test_expired_token_is_refused(secured):
    token = issue_test_token("supervisor", ttl_seconds=-60)
    assert "expired" in refused(secured, token)


def test_garbage_and_wrong_scheme_are_refused(secured):
    refused(secured, "not-a-token")
    basic = {"authorization": f"Basic {issue_test_token('supervisor')}"}
    with ClusterRpcProxy({"AMQP_URI": secured.amqp_uri}, context_data=basic, timeout=15) as rpc:
        with pytest.raises(Unauthenticated, match="Bearer"):
            rpc.triage.find_orders()


def test_unit_token_without_its_unit_is_refused(secured):
    """A clerk's token that names no unit would be a clerk of every unit."""
    key = auth.load_signing_key(json.dumps(_TEST_PRIVATE))
    token = jwt.encode({"iss": "wuji", "sub": "staff:x", "role": "unit_clerk", "jti": "x",
                        "iat": int(time.time()), "exp": int(time.time()) + 600}, key[1], algorithm="EdDSA",
                       headers={"kid": key[0]})
    assert "unit" in refused(secured, token)


def test_integrator_has_no_rpc(secured):
    with rpc_as_role(secured, "integrator") as rpc:
        for service, (method, args) in READS.items():
            with pytest.raises(Forbidden):
                call(rpc, service, method, *args)


def test_revoked_token_stops_working_at_once_on_every_service_and_after_a_restart(secured):
    token = issue_test_token("supervisor")
    claims = jwt.decode(token, options={"verify_signature": False})
    with rpc_as(secured, token) as rpc:
        for service, (method, args) in READS.items():
            try:
                call(rpc, service, method, *args)
            except Exception as exc:   # NotFound is fine: the token got through
                assert not isinstance(exc, (Unauthenticated, Forbidden)), (service, exc)
    auth.publish_revocation(secured.amqp_uri, claims["jti"], claims["exp"])
    for service, (method, args) in READS.items():
        eventually(lambda: _is_refused(secured, token, service, method, args), timeout=10,
                   what=f"{service} refuses the revoked token")
    secured.kill("triage")
    secured.start("triage")
    assert "revoked" in refused(secured, token)
    # other tokens of the same person still work
    with rpc_as_role(secured, "supervisor") as rpc:
        rpc.triage.find_orders()


def _is_refused(platform, token, service, method, args):
    try:
        with rpc_as(platform, token) as rpc:
            call(rpc, service, method, *args)
    except Unauthenticated:
        return True
    except Exception:
        return False
    return False


def test_service_token_cannot_be_used_for_another_services_privileges(secured):
    """intake's own token may read the catalogue, not the citizens' contact data notify may."""
    with rpc_as_role(secured, "service", subject="service:intake") as rpc:
        assert rpc.triage.services_catalogue()
        with pytest.raises(Forbidden):
            rpc.intake.contact_for_notification("YC-NONE")
        with pytest.raises(Forbidden):
            rpc.intake.contacts_for_notification(["YC-NONE"])
        with pytest.raises(Forbidden):
            rpc.triage.accept_order("WO-NONE", "dept-urban", idempotency_key="k")


def test_staff_cannot_read_contact_data_meant_for_notify(secured):
    for role in ("district_leader", "supervisor", "dispatcher"):
        with rpc_as_role(secured, role) as rpc:
            with pytest.raises(Forbidden):
                rpc.intake.contact_for_notification("YC-NONE")
            with pytest.raises(Forbidden):
                rpc.intake.contacts_for_notification(["YC-NONE"])


def test_services_reach_each_other_with_their_own_tokens(secured, submit):
    """Open311's service list comes from triage through intake's own token (the HTTP caller has
    none), and notify fetches the citizen's address from intake through its own: the receipt arrives."""
    status, services = http_json("GET", f"{secured.api}/open311/v2/services.json")
    assert status == 200 and services
    order = submit(email="zhaoliu@example.com")
    eventually(lambda: [m for m in secured.mailbox.messages if "zhaoliu@example.com" in m["To"]],
               what="the receipt mail")
    assert order["case_no"]


class Probe:
    """Says who called it."""
    name = "probe"
    caller = CurrentCaller()

    @rpc(roles=("supervisor", "service:relay"))
    def whoami(self):
        return {"subject": self.caller.subject, "role": self.caller.role}


class Relay:
    """Serves a supervisor by asking the probe."""
    name = "relay"
    caller = CurrentCaller()
    probe = BoundedRpcProxy("probe", timeout=10)

    @rpc(roles=("supervisor",))
    def ask_probe(self):
        return self.probe.whoami()


def test_user_token_is_not_passed_on_to_the_next_service(container_factory, amqp_uri):
    """nameko propagates the call context; BoundedRpcProxy replaces the user's token with the
    calling service's, so the next service authorises the service, not the user."""
    relay_token = issue_test_token("service", subject="service:relay")
    for cls, extra in ((Probe, {}), (Relay, {"SERVICE_TOKEN": relay_token})):
        container_factory(cls, {"AMQP_URI": amqp_uri, **extra}).start()
    with _rpc_as_role(amqp_uri, "supervisor") as rpc:
        assert rpc.probe.whoami()["role"] == "supervisor"
        assert rpc.relay.ask_probe() == {"subject": "service:relay", "role": "service"}


class Desk:
    """A staff HTTP endpoint: the caller comes from ``Authorization: Bearer``."""
    name = "desk"
    caller = CurrentCaller()

    @http("GET", "/whoami")
    def whoami(self, request):
        try:
            return 200, auth.authenticated(self.caller).subject
        except Unauthenticated as exc:
            return 401, str(exc)


def test_http_bearer_token_is_checked_like_an_rpc_token(container_factory, amqp_uri):
    port = free_port()
    container_factory(Desk, {"AMQP_URI": amqp_uri, "WEB_SERVER_ADDRESS": f"127.0.0.1:{port}"}).start()

    def whoami(authorization=None):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/whoami",
                                         headers={"Authorization": authorization} if authorization else {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    assert whoami(auth.bearer(issue_test_token("supervisor", subject="staff:wang"))) == (200, "staff:wang")
    assert whoami() == (200, "anonymous")     # public endpoints still answer; staff ones check
    assert whoami(auth.bearer(issue_test_token("supervisor", ttl_seconds=-60)))[0] == 401
    private, _ = auth.generate_key(kid=_TEST_PRIVATE["kid"])
    forged, _ = auth.issue_token(auth.load_signing_key(json.dumps(private)), "staff:mallory", "supervisor")
    assert whoami(auth.bearer(forged))[0] == 401


def test_rotated_signing_key_keeps_old_tokens_until_the_old_key_is_retired(tmp_path):
    keys = auth.KeyDirectory(tmp_path)
    old_kid = keys.rotate()
    old_token, _ = auth.issue_token(keys.signing_key(), "staff:a", "supervisor")
    new_kid = keys.rotate()
    new_token, _ = auth.issue_token(keys.signing_key(), "staff:a", "supervisor")
    verifier = auth.Verifier(auth.load_public_keys(keys.public_jwks_text()))
    assert {verifier.verify(old_token).subject, verifier.verify(new_token).subject} == {"staff:a"}
    with pytest.raises(ValueError):
        keys.retire(new_kid)   # never the key in use
    keys.retire(old_kid)
    verifier = auth.Verifier(auth.load_public_keys(str(keys.public_path)))
    verifier.verify(new_token)
    with pytest.raises(Unauthenticated, match="unknown key"):
        verifier.verify(old_token)


def test_admin_token_is_refused_where_the_deployment_does_not_allow_it(tmp_path):
    keys = auth.KeyDirectory(tmp_path)
    keys.rotate()
    admin, _ = auth.issue_token(keys.signing_key(), "staff:root", "admin")
    public = auth.load_public_keys(keys.public_jwks_text())
    with pytest.raises(Unauthenticated, match="administrator"):
        auth.Verifier(public).verify(admin)          # the shipped deployments: off by default
    assert auth.Verifier(public, allow_admin=True).verify(admin).role == "admin"

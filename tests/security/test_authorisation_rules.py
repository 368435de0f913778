"""The scope rules of wuji_common.auth.Caller on their own (no broker): what each entrypoint asks
before it acts. Each test tries one way around a rule."""
import json

import pytest

from wuji_common import auth
from wuji_common.auth import Caller
from wuji_common.errors import Forbidden

CLERK = Caller("staff:a", "unit_clerk", unit_code="dept-urban")
FORCE = Caller("staff:f", "force", force_code="public_security")
TOWN = Caller("staff:t", "supervisor", town_codes=("370404100",))
LEADER = Caller("staff:l", "district_leader")
NOTIFY = Caller("service:notify", "service")
ADMIN = Caller("staff:root", "admin")


def test_unit_cannot_name_another_unit():
    with pytest.raises(Forbidden):
        CLERK.require_unit("dept-housing")
    assert CLERK.require_unit("dept-urban") == "dept-urban"


def test_unit_listing_cannot_widen_to_every_unit():
    """No filter given: a unit still gets its own unit, not everyone's."""
    assert CLERK.own_unit(None) == "dept-urban"
    assert LEADER.own_unit(None) is None
    with pytest.raises(Forbidden):
        CLERK.own_unit("dept-housing")


def test_force_cannot_report_in_as_another_force():
    with pytest.raises(Forbidden):
        FORCE.require_force("market_supervision")
    assert FORCE.require_force("public_security") == "public_security"


def test_town_cannot_name_another_town_nor_see_its_rows():
    with pytest.raises(Forbidden):
        TOWN.require_town("370404101")
    assert TOWN.own_town(None) == "370404100"
    rows = [{"town_code": "370404100"}, {"town_code": "370404101"}, {"town_code": None}]
    assert TOWN.visible(rows) == [{"town_code": "370404100"}]
    assert LEADER.visible(rows) == rows


def test_one_service_token_does_not_stand_for_another_service():
    assert NOTIFY.has_role("service:notify")
    assert not NOTIFY.has_role("service:intake")
    with pytest.raises(Forbidden):
        NOTIFY.require("supervisor", "service:intake")


def test_no_role_gets_another_roles_rights_except_the_administrator():
    for caller in (CLERK, FORCE, TOWN, LEADER, NOTIFY):
        with pytest.raises(Forbidden):
            caller.require("ops")
    assert ADMIN.require("ops") is ADMIN


def test_a_scoped_role_cannot_be_issued_without_its_scope():
    key = auth.load_signing_key(json.dumps(auth.generate_key()[0]))
    with pytest.raises(ValueError):
        auth.issue_token(key, "staff:a", "unit_clerk")
    with pytest.raises(ValueError):
        auth.issue_token(key, "staff:f", "force")
    with pytest.raises(ValueError):
        auth.issue_token(key, "staff:x", "root")


def test_every_rpc_entrypoint_of_every_service_checks_a_role():
    """An entrypoint declared with nameko's bare @rpc would skip authentication altogether."""
    from nameko.rpc import Rpc

    from enforcement.service import EnforcementService
    from intake.service import IntakeService
    from metrics.service import MetricsService
    from notify.service import NotifyService
    from triage.service import TriageService
    for service in (IntakeService, TriageService, EnforcementService, NotifyService, MetricsService):
        assert isinstance(vars(service)["caller"], auth.CurrentCaller), service.name
        for name, method in vars(service).items():
            if any(isinstance(e, Rpc) for e in getattr(method, "nameko_entrypoints", ())):
                roles = getattr(method, "allowed_roles", None)
                assert roles, f"{service.name}.{name} is an RPC without rpc(roles=...)"
                assert "integrator" not in roles, f"{service.name}.{name}: integrators have no RPC"

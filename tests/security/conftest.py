"""Fixtures of the security suite: the five services as processes (SQLite, one platform per test
module, to bound the time); tests call them with tokens of each kind of caller
(``wuji_common.testing_helpers.rpc_as`` / ``rpc_as_role``)."""

import pytest

from wuji_common.testing import running_platform
from wuji_common.testing_helpers import eventually, http_json, rpc_as_role


@pytest.fixture(scope="module")
def secured(amqp_vhost, tmp_path_factory, database_templates):
    """The platform as processes on a vhost and SQLite databases of this module's own."""
    with running_platform(amqp_vhost, tmp_path_factory.mktemp("security"), "sec",
                          templates=database_templates) as platform:
        yield platform


@pytest.fixture(scope="module")
def submit(secured):
    """``submit(town_code, title)``: a citizen's appeal over the public API, and its work order once
    triage has routed it."""
    def submit(town_code="370404101", title="村口路灯不亮", email=None):
        citizen = {"name": "赵六", "phone": "13600002222", **({"email": email} if email else {})}
        appeal = {"channel": "web", "title": title,
                  "content": f"{title}，已经一个多月了，晚上出行很不安全，请尽快处理。",
                  "citizen": citizen, "location": {"town_code": town_code, "address": "金寺村西街8号"}}
        status, receipt = http_json("POST", f"{secured.api}/api/v1/appeals", appeal)
        assert status == 201, receipt
        with rpc_as_role(secured.amqp_uri, "admin") as rpc:
            return eventually(lambda: (rpc.triage.find_orders(case_no=receipt["case_no"]) or [None])[0],
                              what="dispatch")
    return submit

"""The platform for the wuji command's tests: all five services as processes (SQLite) on a vhost of
the module's own, started once per module."""
import pytest

from wuji_common.testing import running_platform


@pytest.fixture(scope="module")
def platform(amqp_vhost, tmp_path_factory, database_templates):
    with running_platform(amqp_vhost, tmp_path_factory.mktemp("wuji-cli"), "cli", mailbox=False,
                          templates=database_templates) as running:
        yield running

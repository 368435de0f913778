"""Fixtures of the cross-service tests: the platform as real processes, a real SMTP server."""
import pytest

from wuji_common.local_platform import Mailbox, Platform


@pytest.fixture
def mailbox(tmp_path):
    box = Mailbox(tmp_path).start()
    yield box
    box.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def platform(request, amqp_vhost, tmp_path, mailbox, database_templates):
    """All five services as processes, on a vhost and databases of this test's own (copies of the
    session's prepared ones)."""
    import uuid
    from wuji_common.testing import AMQP_HOST, _rabbitmqctl, drop_postgres_database
    vhost = f"{amqp_vhost}-{uuid.uuid4().hex[:6]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    db_urls, databases = database_templates.copy(request.param, tmp_path)
    p = Platform(f"{AMQP_HOST}/{vhost}", db_urls, tmp_path / "log",
                 env=mailbox.env())
    p.mailbox = mailbox
    try:
        p.prepare(databases=False)
        p.start()
        yield p
    finally:
        p.stop()
        for name in databases:
            drop_postgres_database(name)
        _rabbitmqctl("delete_vhost", vhost)

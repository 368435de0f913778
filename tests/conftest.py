"""Fixtures of the cross-service tests: the platform as real processes, a real SMTP server."""
import pytest

from wuji_common.local_platform import Mailbox, Platform


@pytest.fixture
def mailbox(tmp_path):
    box = Mailbox(tmp_path).start()
    yield box
    box.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def platform(request, amqp_vhost, tmp_path, mailbox):
    """All five services as processes, on a vhost and databases of this test's own."""
    import uuid
    from wuji_common.testing import AMQP_HOST, _rabbitmqctl, drop_postgres_database, new_postgres_database
    vhost = f"{amqp_vhost}-{uuid.uuid4().hex[:6]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    databases = []
    if request.param == "sqlite":
        db_urls = Platform.sqlite_urls(tmp_path)
    else:
        db_urls = {}
        for service in ("intake", "triage", "enforcement", "notify", "metrics"):
            db_urls[service], name = new_postgres_database(f"wuji_e2e_{service}")
            databases.append(name)
    p = Platform(f"{AMQP_HOST}/{vhost}", db_urls, tmp_path / "log",
                 env=mailbox.env())
    p.mailbox = mailbox
    try:
        p.prepare()
        p.start()
        yield p
    finally:
        p.stop()
        for name in databases:
            drop_postgres_database(name)
        _rabbitmqctl("delete_vhost", vhost)

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
    from wuji_common.testing import drop_postgres_database, own_vhost
    with own_vhost(amqp_vhost) as amqp_uri:
        db_urls, databases = database_templates.copy(request.param, tmp_path)
        p = Platform(amqp_uri, db_urls, tmp_path / "log", env=mailbox.env())
        p.mailbox = mailbox
        try:
            p.prepare(databases=False)
            p.start()
            yield p
        finally:
            p.stop()
            for name in databases:
                drop_postgres_database(name)

"""The near-duplicate index provider picks up appeals other instances stored, hashing each once."""
from datetime import timedelta
from types import SimpleNamespace

from triage import handlers
from triage.dependencies import NearDuplicates
from triage.domain import utcnow

CONSUMER = "triage.on_appeal_received"


def test_a_catch_up_adds_what_others_stored_and_hashes_only_what_is_new(triage_db, router, appeal_received,
                                                                        monkeypatch):
    url, uow = triage_db
    provider = NearDuplicates()
    provider.container = SimpleNamespace(config={"DB_URL": url, "NEAR_DUPLICATE_CATCH_UP_SECONDS": 0})
    provider.setup()
    try:
        provider.start()
        assert len(provider.index) == 0
        now = utcnow()

        def dispatch(n):   # another instance: its own index, the same database
            envelope = appeal_received(case_no=f"YC20261125{n:06d}", content=f"第{n}户门前的化粪池满溢，臭气熏天",
                                       received_at=now.isoformat())
            handlers.dispatch_appeals(uow(), router, CONSUMER, [envelope], now=now)

        dispatch(1)
        dispatch(2)
        provider.catch_up()
        assert {"YC20261125000001", "YC20261125000002"} <= set(provider.index.index._ids)

        hashed = []
        original = provider.index.signature
        monkeypatch.setattr(provider.index, "signature", lambda *a: hashed.append(a) or original(*a))
        dispatch(3)
        provider.catch_up()   # looks back over 1 and 2 again (the slack), hashes only 3
        assert len(hashed) == 1 and "YC20261125000003" in provider.index
        provider.catch_up()
        assert len(hashed) == 1
        assert provider.watermark >= now - timedelta(seconds=1)
    finally:
        provider.stop()

"""The token verifier on its own (no broker): a token's signature is checked once, its expiry and
revocation on every call."""
import json
import time

import jwt
import pytest

from wuji_common import auth
from wuji_common.errors import Unauthenticated

PRIVATE, PUBLIC = auth.generate_key("verifier-test")
SIGNING = auth.load_signing_key(json.dumps(PRIVATE))


def verifier(revoked=()):
    asked = []

    def is_revoked(jti):
        asked.append(jti)
        return jti in revoked
    return auth.Verifier(auth.load_public_keys(json.dumps(PUBLIC)), is_revoked), asked


def test_a_token_is_checked_once_and_its_revocation_every_time(monkeypatch):
    checks = []
    decode = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: checks.append(1) or decode(*a, **k))
    check, asked = verifier()
    token, claims = auth.issue_token(SIGNING, "service:notify", "service")
    for _ in range(3):
        assert check.verify(token).subject == "service:notify"
    assert len(checks) == 1 and asked == [claims["jti"]] * 3
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(Unauthenticated):
        check.verify(forged)


def test_a_checked_token_that_expires_is_refused_from_then_on(monkeypatch):
    check, _ = verifier()
    token, claims = auth.issue_token(SIGNING, "staff:1", "supervisor", ttl_seconds=60)
    assert check.verify(token).role == "supervisor"
    later = claims["exp"] + check.leeway + 1
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(Unauthenticated, match="expired"):
        check.verify(token)
    with pytest.raises(Unauthenticated, match="expired"):
        check.verify(token)


def test_a_checked_token_revoked_later_is_refused():
    revoked = set()
    check, _ = verifier(revoked)
    token, claims = auth.issue_token(SIGNING, "staff:1", "supervisor")
    check.verify(token)
    revoked.add(claims["jti"])
    with pytest.raises(Unauthenticated, match="revoked"):
        check.verify(token)

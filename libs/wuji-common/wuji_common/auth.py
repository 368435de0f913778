"""Who is calling: signed, expiring tokens, roles, and the worker's :class:`Caller`.

Tokens are JWTs signed with Ed25519 (``EdDSA``) by the platform's issuer (the ``wuji token`` command,
which alone holds the private key). Every service verifies them with the public keys from its
environment (``WUJI_AUTH_PUBLIC_KEYS``: a JWK set, inline JSON or a file path). Asymmetric on purpose:
a department that runs a service can check a token but cannot mint one, which a shared secret
would allow. Several keys are accepted at once, chosen by the token's ``kid``, so the signing key
is rotated by adding the new public key, issuing with the new key, and dropping the old one once
its tokens have expired.

Claims: ``sub`` ("staff:<id>", "service:<name>", …), ``role`` (one of :data:`ROLES`), ``unit``,
``towns``, ``force`` (the caller's scope), ``jti`` (revocation), ``iat``, ``exp``, ``iss`` ("wuji").

RPC carries the token in nameko's call context (``context_data["authorization"] = "Bearer <jwt>"``),
HTTP in the ``Authorization: Bearer`` header. A service calling another one sends its *own*
token (``WUJI_SERVICE_TOKEN_<SERVICE>``), never the user's that nameko would propagate: the called
service authorises the calling service, which has already checked its own caller (see
``BoundedRpcProxy`` in :mod:`wuji_common.dependencies`).

Revocation: ``wuji token revoke`` publishes ``auth.token_revoked`` to the exchange ``auth.events``
(in the deployment only the broker administrator may publish there); every service records the
``jti`` in its own ``revoked_tokens`` table (durable: a restart keeps it; the queue is durable: a
service that was down catches up) and every instance looks the ``jti`` up there on each call, so a
revoked token stops working on every instance as soon as its service has consumed the event.
Tokens are short-lived, so the table stays small (rows past the token's expiry are pruned).
"""
import functools
import inspect
import json
import logging
import os
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from nameko.extensions import DependencyProvider
from nameko.rpc import Rpc
from nameko.web.handlers import HttpRequestHandler

from wuji_common import entrypoints
from wuji_common.errors import EXPECTED, Forbidden, Unauthenticated

log = logging.getLogger(__name__)

ISSUER = "wuji"
ALGORITHM = "EdDSA"

ROLES = (
    "citizen",          # tracking token of their own case only (intake issues it, not a JWT)
    "grid_worker",      # 网格员: a grid's unit, like a clerk
    "unit_clerk",       # 承办单位经办人: acts on the unit's own orders
    "unit_head",        # 承办单位负责人: as a clerk, plus requests (extensions) for the unit
    "force",            # 执法力量: its own force's operations (report in)
    "dispatcher",       # 研判分流席: the review queue, manual routing
    "supervisor",       # 督办: extensions, suspensions, supervision, every unit's log
    "district_leader",  # 区领导: reads everything, changes nothing
    "integrator",       # events only: no RPC at all
    "ops",              # 运维: failed deliveries, replay, rebuilds, taxonomy reload
    "service",          # a platform service calling another one ("service:<name>")
    "admin",            # platform administrator: every RPC (imports, the walkthrough, test suites);
                        # accepted only where WUJI_AUTH_ALLOW_ADMIN=1 (local runs and tests, never
                        # the shipped deployments: MLPS 2.0 wants no all-powerful account in production)
)
# roles whose tokens must name their scope
SCOPE_CLAIMS = {"grid_worker": "unit", "unit_clerk": "unit", "unit_head": "unit", "force": "force"}
STAFF = ("grid_worker", "unit_clerk", "unit_head", "dispatcher", "supervisor", "district_leader")
UNIT_STAFF = ("grid_worker", "unit_clerk", "unit_head")


@dataclass(frozen=True)
class Caller:
    """The authenticated caller of one worker. Event handlers and timers run as :data:`SYSTEM`."""
    subject: str            # "staff:<id>", "service:<name>", "citizen:<case_no>", "system"
    role: str               # one of ROLES (or "system", "anonymous")
    unit_code: str | None = None
    town_codes: tuple[str, ...] = ()
    force_code: str | None = None
    token_id: str | None = None
    source: str | None = None   # "rpc", "http:<ip>", "event", "timer" (for the audit log)
    expires_at: int | None = None

    @property
    def service(self):
        """The calling service's name when a service calls (``service:intake`` → "intake")."""
        return self.subject.split(":", 1)[1] if self.role == "service" else None

    @property
    def is_unit(self):
        """Staff of one unit (grid, town office, department): they act for that unit only."""
        return self.role in UNIT_STAFF

    def has_role(self, *roles):
        """True if the caller holds one of ``roles``; "service:<name>" names one service; the
        platform administrator holds every role."""
        return self.role in roles or self.role == "admin" or \
            (self.role == "service" and self.subject in roles)

    def require(self, *roles):
        if not self.has_role(*roles):
            raise Forbidden(f"角色 {self.role} 无权执行此操作")
        return self

    # --- scope: a unit acts for itself, a force for itself, a town-scoped caller for its towns ----
    def require_unit(self, unit_code):
        """Unit staff may name their own unit only (others pass: their role already limits them)."""
        if self.is_unit and unit_code != self.unit_code:
            raise Forbidden(f"只能办理本单位（{self.unit_code}）的工单")
        return unit_code

    def own_unit(self, unit_code=None):
        """The unit filter a listing must use: unit staff always their own unit."""
        return self.require_unit(unit_code) if unit_code is not None else \
            (self.unit_code if self.is_unit else None)

    def require_force(self, force_code):
        if self.role == "force" and force_code != self.force_code:
            raise Forbidden(f"只能以本力量（{self.force_code}）报到")
        return force_code

    def sees_town(self, town_code):
        """Town-scoped callers (``towns`` in their token) see their own towns; callers without a
        town scope are limited by their role alone."""
        return not self.town_codes or town_code in self.town_codes

    def require_town(self, town_code):
        if not self.sees_town(town_code):
            raise Forbidden(f"只能查看本镇街（{'、'.join(self.town_codes)}）的数据")
        return town_code

    def own_town(self, town_code=None):
        """The town filter a listing must use: a caller scoped to one town always that town."""
        if town_code is not None:
            return self.require_town(town_code)
        return self.town_codes[0] if len(self.town_codes) == 1 else None

    def visible(self, rows, town_key="town_code", unit_key=None):
        """Rows of a listing this caller may see (by town, and by unit for unit staff)."""
        return [r for r in rows if self.sees_town(r.get(town_key)) and
                (unit_key is None or not self.is_unit or r.get(unit_key) == self.unit_code)]


SYSTEM = Caller("system", "system", source="event")
ANONYMOUS = Caller("anonymous", "anonymous")


def caller_from_claims(claims, source="rpc"):
    return Caller(
        subject=claims["sub"], role=claims["role"], unit_code=claims.get("unit"),
        town_codes=tuple(claims.get("towns") or ()), force_code=claims.get("force"),
        token_id=claims.get("jti"), source=source, expires_at=claims.get("exp"))


# --- keys ---------------------------------------------------------------------------------------

def generate_key(kid=None):
    """A new Ed25519 signing key as (private JWK, public JWK), both dicts with the same ``kid``."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    private = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(Ed25519PrivateKey.generate()))
    private["kid"] = kid or datetime.now(timezone.utc).strftime("wuji-%Y%m%d-") + uuid.uuid4().hex[:6]
    private.update(alg=ALGORITHM, use="sig")
    public = {k: v for k, v in private.items() if k != "d"}
    return private, public


def _read_json(value):
    """Inline JSON, or the path of a file holding it (nameko's config already parsed inline JSON)."""
    if isinstance(value, dict):
        return value
    value = (value or "").strip()
    if not value:
        return None
    if not value.startswith("{"):
        with open(value, encoding="utf-8") as f:
            value = f.read()
    return json.loads(value)


def load_public_keys(value):
    """{kid: key} from a JWK set ({"keys": [...]}) or a single JWK, inline or in a file."""
    import jwt
    data = _read_json(value)
    if data is None:
        return {}
    jwks = data["keys"] if "keys" in data else [data]
    keys = {}
    for jwk in jwks:
        public = {k: v for k, v in jwk.items() if k != "d"}   # never keep a private part here
        keys[jwk["kid"]] = jwt.PyJWK(public, algorithm=ALGORITHM).key
    return keys


def load_signing_key(value):
    """(kid, private key) from a private JWK, inline or in a file."""
    import jwt
    data = _read_json(value)
    if data is None or "d" not in data:
        raise ValueError("the signing key must be a private Ed25519 JWK (with 'd')")
    return data["kid"], jwt.PyJWK(data, algorithm=ALGORITHM).key


class KeyDirectory:
    """The issuer's key files in one directory (``wuji token keygen``, ``make run``'s ``var/auth``):

    - ``signing.jwk``: the private key tokens are signed with now (mode 0600; the issuer's only);
    - ``public.jwks``: every public key still accepted — what services get as WUJI_AUTH_PUBLIC_KEYS.

    Rotation: :meth:`rotate` makes a new signing key and *adds* its public key, so tokens signed
    with the old key keep working until :meth:`retire` drops it (once they have expired).
    """

    def __init__(self, directory):
        from pathlib import Path
        self.directory = Path(directory)
        self.signing_path = self.directory / "signing.jwk"
        self.public_path = self.directory / "public.jwks"

    def exists(self):
        return self.signing_path.exists() and self.public_path.exists()

    def ensure(self):
        if not self.exists():
            self.rotate()
        return self

    def rotate(self, kid=None):
        private, public = generate_key(kid)
        jwks = self.public_jwks() if self.public_path.exists() else {"keys": []}
        jwks["keys"] = [k for k in jwks["keys"] if k["kid"] != public["kid"]] + [public]
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write(self.signing_path, private, private=True)
        self._write(self.public_path, jwks)
        return private["kid"]

    def retire(self, kid):
        """Stop accepting tokens signed with ``kid`` (never the key in use)."""
        if kid == self.signing_kid():
            raise ValueError(f"{kid} is the signing key in use: rotate first")
        jwks = self.public_jwks()
        kept = [k for k in jwks["keys"] if k["kid"] != kid]
        if len(kept) == len(jwks["keys"]):
            raise ValueError(f"no public key {kid}")
        self._write(self.public_path, {"keys": kept})

    def signing_kid(self):
        return json.loads(self.signing_path.read_text(encoding="utf-8"))["kid"]

    def signing_key(self):
        return load_signing_key(str(self.signing_path))

    def public_jwks(self):
        return json.loads(self.public_path.read_text(encoding="utf-8"))

    def public_jwks_text(self):
        return json.dumps(self.public_jwks(), separators=(",", ":"))

    @staticmethod
    def _write(path, data, private=False):
        tmp = path.with_suffix(path.suffix + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))   # one line: pasted into .env as it is
        os.replace(tmp, path)


# --- tokens -------------------------------------------------------------------------------------

def parse_duration(text):
    """'15m', '8h', '30d', '90s' or a number of seconds → seconds."""
    text = str(text).strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(float(text))


def issue_token(signing_key, subject, role, *, unit_code=None, town_codes=(), force_code=None,
                ttl_seconds=8 * 3600, now=None, jti=None):
    """Sign a token; returns (token, claims). ``signing_key`` is (kid, private key)."""
    import jwt
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    scope = SCOPE_CLAIMS.get(role)
    if (scope == "unit" and not unit_code) or (scope == "force" and not force_code):
        raise ValueError(f"a {role} token needs its {scope} (--{scope})")
    kid, key = signing_key
    now = int(now if now is not None else time.time())
    claims = {"iss": ISSUER, "sub": subject, "role": role, "jti": jti or uuid.uuid4().hex,
              "iat": now, "exp": now + int(ttl_seconds)}
    if unit_code:
        claims["unit"] = unit_code
    if town_codes:
        claims["towns"] = list(town_codes)
    if force_code:
        claims["force"] = force_code
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid}), claims


def bearer(token):
    return f"Bearer {token}"


class Verifier:
    """Checks a token's signature (by ``kid``), issuer, expiry and revocation; returns the Caller.
    Plain code: no nameko. ``is_revoked(jti)`` is asked on every call (a revocation applies at once)."""

    # tokens whose signature was checked: a service calls with the same token all day, and an
    # Ed25519 check per call is most of what authenticating it costs. Expiry is checked every time.
    VERIFIED_KEPT = 1024

    def __init__(self, public_keys, is_revoked=None, leeway=5, allow_admin=False):
        self.public_keys = dict(public_keys)
        self.is_revoked = is_revoked or (lambda jti: False)
        self.leeway = leeway
        self.allow_admin = allow_admin
        self._verified = OrderedDict()

    def claims(self, token):
        """The token's claims once its signature, issuer and expiry are checked."""
        kept = self._verified.get(token)
        if kept is not None:
            if kept["exp"] + self.leeway >= time.time():
                return kept
            raise Unauthenticated("token expired")
        claims = self._check(token)
        self._verified[token] = claims
        if len(self._verified) > self.VERIFIED_KEPT:
            self._verified.popitem(last=False)
        return claims

    def _check(self, token):
        import jwt
        if not self.public_keys:
            raise Unauthenticated("no verification keys configured (WUJI_AUTH_PUBLIC_KEYS)")
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise Unauthenticated("malformed token")
        key = self.public_keys.get(kid)
        if key is None:
            raise Unauthenticated("token signed with an unknown key")
        try:
            claims = jwt.decode(token, key, algorithms=[ALGORITHM], issuer=ISSUER, leeway=self.leeway,
                                options={"require": ["exp", "iat", "iss"]})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired")
        except jwt.PyJWTError:
            raise Unauthenticated("invalid token signature or claims")
        return claims

    def verify(self, token, source="rpc"):
        claims = self.claims(token)
        for required in ("sub", "role", "jti"):
            if not claims.get(required):
                raise Unauthenticated(f"token lacks {required}")
        if claims["role"] not in ROLES:
            raise Unauthenticated(f"token has an unknown role {claims['role']!r}")
        scope = SCOPE_CLAIMS.get(claims["role"])
        if scope and not claims.get(scope):
            raise Unauthenticated(f"a {claims['role']} token must name its {scope}")
        if claims["role"] == "admin" and not self.allow_admin:
            raise Unauthenticated("administrator tokens are not accepted here (WUJI_AUTH_ALLOW_ADMIN)")
        if self.is_revoked(claims["jti"]):
            raise Unauthenticated("token revoked")
        return caller_from_claims(claims, source)

    def verify_header(self, value, source="rpc"):
        if not value:
            raise Unauthenticated("no token: send 'authorization: Bearer <token>'")
        scheme, _, token = str(value).partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization must be 'Bearer <token>'")
        return self.verify(token.strip(), source)


# --- revocation record (one table per service database) -----------------------------------------

def add_auth_tables(metadata):
    """``revoked_tokens``: jti → when the token would have expired anyway (rows after that are pruned)."""
    from sqlalchemy import BigInteger, Column, String, Table
    return Table("revoked_tokens", metadata,
                 Column("jti", String(64), primary_key=True),
                 Column("expires_at", BigInteger, nullable=False))


def create_revocation_table(op):
    """For each service's Alembic migration."""
    import sqlalchemy as sa
    op.create_table("revoked_tokens",
                    sa.Column("jti", sa.String(64), primary_key=True),
                    sa.Column("expires_at", sa.BigInteger(), nullable=False))


def record_revocation(uow, consumer, envelope):
    """Body of every service's ``auth.token_revoked`` handler: record the jti, prune expired rows.
    At-least-once; duplicates are dropped by event id. Returns the jti, or None for a duplicate."""
    from sqlalchemy import delete, insert, select
    data = envelope["data"]
    jti = data["jti"]
    expires_at = int(datetime.fromisoformat(data["expires_at"]).timestamp())
    with uow:
        if not uow.first_delivery(consumer, envelope["event_id"]):
            return None
        table = _revoked_table(uow)
        if uow.session.execute(select(table.c.jti).where(table.c.jti == jti)).first() is None:
            uow.session.execute(insert(table).values(jti=jti, expires_at=expires_at))
        uow.session.execute(delete(table).where(table.c.expires_at < int(time.time()) - 60))
        uow.commit()
    return jti


def _revoked_table(uow):
    # the unit of work is built on the service's MetaData, which add_auth_tables extended
    return uow._outbox.metadata.tables["revoked_tokens"]


def publish_revocation(amqp_uri, jti, expires_at):
    """Publish ``auth.token_revoked`` (persistent, with publisher confirms, ``mandatory``: if no
    service queue is bound — queues not declared yet — this raises instead of losing it).
    Returns the envelope."""
    from nameko.amqp.publish import Publisher
    from nameko.standalone.events import get_event_exchange
    from wuji_common.events import make_event
    data = {"jti": jti,
            "expires_at": datetime.fromtimestamp(int(expires_at), timezone.utc).isoformat(),
            "revoked_at": datetime.now(timezone.utc).isoformat()}
    envelope = make_event("token_revoked", None, data)
    exchange = get_event_exchange("auth", {})
    Publisher(amqp_uri, use_confirms=True).publish(
        json.dumps(envelope).encode("utf-8"), exchange=exchange, routing_key="token_revoked",
        declare=[exchange], mandatory=True, delivery_mode=2, serializer=None,
        content_type="application/json", content_encoding="utf-8", message_id=envelope["event_id"])
    return envelope


# --- nameko glue --------------------------------------------------------------------------------

def _config(config, key, env):
    """Config ``key``, else the environment variable ``env`` (tests give containers bare configs)."""
    value = config.get(key)
    return value if value not in (None, "") else os.environ.get(env, "")


def service_token(config, service_name):
    """The service's own token for its calls to other services: config ``SERVICE_TOKEN``, else
    ``$WUJI_SERVICE_TOKEN_<SERVICE>`` (one variable per service, so that several services in one
    process, as in tests, each call as themselves)."""
    return _config(config, "SERVICE_TOKEN", f"WUJI_SERVICE_TOKEN_{service_name.upper()}")


class _Refusal:
    """What the worker gets as its caller when the token was refused: the entrypoint raises it."""

    def __init__(self, error):
        self.error = error


class CurrentCaller(DependencyProvider):
    """Gives each worker its :class:`Caller`: from the RPC call context or the HTTP Authorization
    header, :data:`SYSTEM` for event handlers and timers. Verifies signature, expiry and revocation
    (the service's ``revoked_tokens`` table, if its database has one).

    Config: ``AUTH_PUBLIC_KEYS`` (else ``$WUJI_AUTH_PUBLIC_KEYS``): the JWK set of the issuer's
    public keys. Without keys every token is refused (fail closed). ``AUTH_ALLOW_ADMIN`` (else
    ``$WUJI_AUTH_ALLOW_ADMIN``): accept the ``admin`` role; off unless set.
    """

    def setup(self):
        self.public_keys = load_public_keys(
            _config(self.container.config, "AUTH_PUBLIC_KEYS", "WUJI_AUTH_PUBLIC_KEYS"))
        allow_admin = _config(self.container.config, "AUTH_ALLOW_ADMIN", "WUJI_AUTH_ALLOW_ADMIN")
        self.verifier = Verifier(self.public_keys, self._is_revoked,
                                 allow_admin=str(allow_admin).lower() in ("1", "true", "yes"))
        self._database = None

    def _revocation_table(self):
        if self._database is None:
            from wuji_common.dependencies import Database
            found = [d for d in self.container.dependencies if isinstance(d, Database)]
            self._database = found[0] if found else False
        if not self._database or "revoked_tokens" not in self._database.metadata.tables:
            return None, None
        return self._database.engine, self._database.metadata.tables["revoked_tokens"]

    def _is_revoked(self, jti):
        from sqlalchemy import select
        engine, table = self._revocation_table()
        if table is None:
            return False
        with engine.connect() as conn:
            return conn.execute(select(table.c.jti).where(table.c.jti == jti)).first() is not None

    def caller_for(self, worker_ctx):
        entrypoint = worker_ctx.entrypoint
        if isinstance(entrypoint, Rpc):
            return self.verifier.verify_header(worker_ctx.context_data.get("authorization"), "rpc")
        if isinstance(entrypoint, HttpRequestHandler):
            request = worker_ctx.args[0] if worker_ctx.args else None
            source = f"http:{getattr(request, 'remote_addr', None) or '-'}"
            header = request.headers.get("Authorization") if request is not None else None
            if not header:
                return replace(ANONYMOUS, source=source)
            return self.verifier.verify_header(header, source)
        kind = type(entrypoint).__name__.lower()
        return replace(SYSTEM, source="timer" if "timer" in kind else "event")

    def get_dependency(self, worker_ctx):
        # never raise here: nameko would drop the worker without a reply. The refusal is raised
        # by the entrypoint (see rpc below), so it is replied, logged and counted like any error.
        try:
            return self.caller_for(worker_ctx)
        except Unauthenticated as exc:
            return _Refusal(exc)
        except Exception:
            log.exception("could not authenticate a call to %s", worker_ctx.entrypoint.method_name)
            return _Refusal(Unauthenticated("could not check the token"))


def authenticated(caller):
    """The Caller, or the refusal raised (for HTTP entrypoints that accept anonymous calls)."""
    if isinstance(caller, _Refusal):
        raise caller.error
    return caller


def rpc(roles, expected_exceptions=EXPECTED, **kwargs):
    """nameko's ``@rpc`` that first authenticates the caller and checks its role.

    ``roles``: the roles allowed (``"service:<name>"`` allows one service). The service needs a
    ``caller = CurrentCaller()`` dependency; the method reads ``self.caller`` for scope checks.
    Refusals raise :class:`Unauthenticated` / :class:`Forbidden`, typed errors the caller gets back.
    """
    if isinstance(roles, str) or not roles:
        raise TypeError("rpc(roles=...) takes a non-empty tuple of roles")
    unknown = [r for r in roles if r not in ROLES and not r.startswith("service:")]
    if unknown:
        raise ValueError(f"unknown roles {unknown}")
    roles = tuple(roles)

    def decorate(method):
        @functools.wraps(method)
        def authorised(self, *args, **kw):
            caller = getattr(self, "caller", None)
            if caller is None:
                raise RuntimeError(f"{type(self).__name__} needs caller = CurrentCaller()")
            authenticated(caller).require(*roles)
            return method(self, *args, **kw)
        # nameko checks arguments (and redacts sensitive ones) against the signature
        authorised.__signature__ = inspect.signature(method)
        authorised.allowed_roles = roles
        return entrypoints.Rpc.decorator(expected_exceptions=expected_exceptions, **kwargs)(authorised)
    return decorate

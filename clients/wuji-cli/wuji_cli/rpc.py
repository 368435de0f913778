"""The platform over RPC, for the wuji command: one cluster proxy per invocation, every call bounded,
and the platform's typed errors turned into plain messages and exit codes."""
import warnings

# nameko imports eventlet, which warns on every import; a command's user has nothing to do about it
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

from kombu.exceptions import OperationalError  # noqa: E402
from nameko.exceptions import MethodNotFound, RemoteError, RpcTimeout, UnknownService  # noqa: E402
from nameko.standalone.rpc import ClusterRpcProxy  # noqa: E402

from wuji_common import errors  # noqa: E402  (importing it registers the typed errors with nameko)

# exit codes (documented in `wuji --help` and docs/integrators.md)
OK, FAILED, USAGE, NOT_FOUND, INVALID, REFUSED, UNREACHABLE, UNSUPPORTED, UNAUTHENTICATED = range(9)


class CliError(Exception):
    """What went wrong, in words for the user, with the exit code and any details (field errors)."""

    def __init__(self, message, code=FAILED, details=None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details


def _redacted(uri):
    scheme, sep, rest = uri.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if "@" in rest else uri


class Platform:
    """``with Platform(amqp_uri, timeout, token) as platform: platform.call("triage", "get_order", no)``.
    Every call carries ``token`` (the caller's access token) in the call context."""

    def __init__(self, amqp_uri, timeout, token=None):
        self.amqp_uri = amqp_uri
        self.timeout = timeout
        self.token = token
        self._proxy = None
        self._cluster = None

    def __enter__(self):
        context = {"authorization": f"Bearer {self.token}"} if self.token else {}
        self._proxy = ClusterRpcProxy({"AMQP_URI": self.amqp_uri}, context_data=context, timeout=self.timeout)
        try:
            self._cluster = self._proxy.start()
        except (OSError, OperationalError) as exc:
            raise CliError(f"无法连接消息服务器 {_redacted(self.amqp_uri)}：{exc}", UNREACHABLE) from None
        return self

    def __exit__(self, *exc):
        try:
            self._proxy.stop()
        except Exception:  # noqa: BLE001  (the connection may be gone already; nothing to keep)
            pass

    def call(self, service, method, *args, **kwargs):
        name = f"{service}.{method}"
        try:
            return getattr(getattr(self._cluster, service), method)(*args, **kwargs)
        except errors.ValidationError as exc:
            raise CliError(f"{name}：{exc.message}", INVALID, exc.fields) from None
        except errors.Unauthenticated as exc:
            hint = "" if self.token else "（未提供令牌：--token 或环境变量 WUJI_TOKEN）"
            raise CliError(f"{name}：令牌无效 {_text(exc)}{hint}", UNAUTHENTICATED) from None
        except errors.NotFound as exc:
            raise CliError(f"{name}：{_text(exc)}", NOT_FOUND) from None
        except (errors.NotYourOrder, errors.InvalidTransition, errors.Forbidden) as exc:
            raise CliError(f"{name}：{_text(exc)}", REFUSED) from None
        except MethodNotFound:
            raise CliError(f"{name} 在当前平台版本中不可用（该服务尚未提供此功能）", UNSUPPORTED) from None
        except UnknownService:
            raise CliError(f"服务 {service} 未运行", UNREACHABLE) from None
        except (RpcTimeout, errors.RpcTimeout):
            raise CliError(f"{name} 在 {self.timeout:g} 秒内未响应（服务未运行或过忙）", UNREACHABLE) from None
        except (OSError, OperationalError) as exc:
            raise CliError(f"与消息服务器的连接中断：{exc}", UNREACHABLE) from None
        except RemoteError as exc:
            raise CliError(f"{name} 执行失败（{exc.exc_type}）", FAILED) from None


def _text(exc):
    return str(exc.args[0]) if exc.args else type(exc).__name__

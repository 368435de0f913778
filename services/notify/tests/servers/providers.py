"""HTTP servers standing in for the SMS gateway, the WeChat API and a webhook subscriber. Each checks
what it receives with code of its own (not notify's), records every request and answers as told.
``stop()`` then ``start()`` on the same port is a provider outage."""
import hashlib
import hmac
import http.server
import json
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

from wuji_common.testing_helpers import free_port


@dataclass
class Request:
    path: str
    query: dict
    headers: dict
    body: bytes
    ok: bool          # the server's own check (signature, token, template fields) passed
    at: float
    status: int
    complete: bool = True   # the whole body arrived (a sender killed mid-request cuts it short)

    def json(self):
        return json.loads(self.body.decode("utf-8"))


class HttpProvider:
    """A local HTTP server; subclasses answer in ``answer(method, path, query, headers, body)`` →
    (status, dict | None, ok)."""

    def __init__(self, port=None, delay=0.0):
        self.port = port or free_port()
        self.requests = []
        self.server = None
        self.delay = delay
        self.lock = threading.Lock()

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self, method):
                length = int(self.headers.get("Content-Length", 0) or 0)
                body = self.rfile.read(length)
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                headers = dict(self.headers.items())
                if provider.delay:
                    time.sleep(provider.delay)
                with provider.lock:
                    status, answer, ok = provider.answer(method, url.path, query, headers, body)
                    provider.requests.append(Request(url.path, query, headers, body, ok, time.time(), status,
                                                     complete=len(body) == length))
                payload = json.dumps(answer).encode() if answer is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):
                self._serve("POST")

            def do_GET(self):
                self._serve("GET")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def answer(self, method, path, query, headers, body):
        raise NotImplementedError


class SmsGateway(HttpProvider):
    """The district's SMS gateway: checks the account, the HMAC signature and the SendSms fields;
    answers ``{"Code": code}`` (``code`` settable; a list is used up one per request)."""

    def __init__(self, account="wuji", secret="s" * 40, sign_name="峄城区社会治理", code="OK", **kwargs):
        super().__init__(**kwargs)
        self.account, self.secret, self.sign_name = account, secret, sign_name
        self.code = code
        self.status = 200

    def signature_ok(self, headers, body):
        signed = "\n".join([headers.get("X-Sms-Account", ""), headers.get("X-Sms-Timestamp", ""),
                            headers.get("X-Sms-Nonce", "")]).encode() + b"\n" + body
        expected = hmac.new(self.secret.encode(), signed, hashlib.sha256).hexdigest()
        fresh = abs(time.time() - int(headers.get("X-Sms-Timestamp", "0"))) < 300
        return fresh and hmac.compare_digest(expected, headers.get("X-Sms-Signature", ""))

    def answer(self, method, path, query, headers, body):
        try:
            sent = json.loads(body)
            fields_ok = (path == "/sms/send" and sent["SignName"] == self.sign_name
                         and sent["PhoneNumbers"].isdigit() and sent["TemplateCode"].startswith("SMS_")
                         and isinstance(json.loads(sent["TemplateParam"]), dict) and sent["OutId"])
        except (ValueError, KeyError, AttributeError):
            fields_ok = False
        ok = fields_ok and headers.get("X-Sms-Account") == self.account and self.signature_ok(headers, body)
        if not ok:
            return 401, {"Code": "SignatureDoesNotMatch"}, False
        code = self.code.pop(0) if isinstance(self.code, list) else self.code
        return self.status, {"Code": code, "Message": code, "BizId": "biz"}, True

    def accepted(self):
        return [r.json() for r in self.requests if r.ok and r.path == "/sms/send"]


class WechatApi(HttpProvider):
    """The official-account API: ``/cgi-bin/token`` hands out numbered tokens for the right app id and
    secret; ``/cgi-bin/message/template/send`` checks the token is the current one, the template id is
    known and each keyword the template has is there, non-empty and within its length."""

    def __init__(self, appid="wx-test", appsecret="a" * 32, templates=None, **kwargs):
        super().__init__(**kwargs)
        self.appid, self.appsecret = appid, appsecret
        self.templates = templates or {}   # template id -> keywords
        self.tokens_issued = 0
        self.token = None
        self.errcode = 0                   # or a list used up one per send

    def expire_token(self):
        self.token = None  # the next send with the old token gets 40001

    def answer(self, method, path, query, headers, body):
        if path == "/cgi-bin/token":
            if query.get("appid") != self.appid or query.get("secret") != self.appsecret:
                return 200, {"errcode": 40125, "errmsg": "invalid appsecret"}, False
            self.tokens_issued += 1
            self.token = f"token-{self.tokens_issued}"
            return 200, {"access_token": self.token, "expires_in": 7200}, True
        if path != "/cgi-bin/message/template/send":
            return 404, None, False
        if not self.token or query.get("access_token") != self.token:
            return 200, {"errcode": 40001, "errmsg": "invalid credential"}, False
        message = json.loads(body)
        keywords = self.templates.get(message.get("template_id"))
        if keywords is None:
            return 200, {"errcode": 40037, "errmsg": "invalid template_id"}, False
        data = message.get("data", {})
        if not message.get("touser") or set(data) != set(keywords) or not all(
                v.get("value") and len(v["value"]) <= (20 if k.startswith("thing") else 32)
                for k, v in data.items()):
            return 200, {"errcode": 47003, "errmsg": "argument invalid"}, False
        errcode = self.errcode.pop(0) if isinstance(self.errcode, list) else self.errcode
        return 200, {"errcode": errcode, "errmsg": "ok" if not errcode else "error", "msgid": 1}, not errcode

    def sent(self):
        return [r.json() for r in self.requests if r.ok and r.path == "/cgi-bin/message/template/send"]


class WebhookSubscriber(HttpProvider):
    """A department system or integrator: checks the HMAC signature and the timestamp window with the
    secret it was given, and (as the contract asks) counts a repeated X-Wuji-Delivery once."""

    def __init__(self, secret=None, status=200, window=300, **kwargs):
        super().__init__(**kwargs)
        self.secret, self.status, self.window = secret, status, window

    @property
    def url(self):
        return f"{self.base_url}/wuji/notices"

    def signature_ok(self, headers, body):
        if not self.secret:
            return False
        timestamp = headers.get("X-Wuji-Timestamp", "")
        expected = "sha256=" + hmac.new(self.secret.encode(), timestamp.encode() + b"." + body,
                                        hashlib.sha256).hexdigest()
        try:
            fresh = abs(time.time() - int(timestamp)) <= self.window
        except ValueError:
            return False
        return fresh and hmac.compare_digest(expected, headers.get("X-Wuji-Signature", ""))

    def answer(self, method, path, query, headers, body):
        ok = self.signature_ok(headers, body)
        return (self.status if ok else 401), None, ok

    def accepted(self):
        """Bodies of signed requests answered 2xx, a repeated delivery id counted once."""
        seen, out = set(), []
        for r in self.requests:
            if r.ok and 200 <= r.status < 300 and r.headers.get("X-Wuji-Delivery") not in seen:
                seen.add(r.headers.get("X-Wuji-Delivery"))
                out.append(r.json())
        return out

"""The reference check of a notify webhook on the receiving side: what a department system or an
integrator runs on every POST before acting on it. Standard library only, so that it can be copied as
it is (or imported from ``notify.receiver``).

    verifier = WebhookVerifier(secret)              # the endpoint's secret, shown once by notify
    try:
        verified = verifier.verify(headers, raw_body)
    except WebhookRejected as refused:              # answer 401; refused.reason says why
        ...
    if verified.repeat:                             # answer 2xx and do nothing: seen already
        ...
    else:                                           # act on verified.notice, then answer 2xx
        ...

The checks, in this order:

1. the signature: ``X-Wuji-Signature`` is ``sha256=`` + hex HMAC-SHA256 of ``"<X-Wuji-Timestamp>.<raw
   body>"`` keyed with the secret, compared in constant time over the raw bytes (never over JSON
   parsed and dumped again);
2. the timestamp is within ``window`` seconds (default 300) of the receiver's clock: a captured
   request replayed later is refused;
3. the delivery id — read from the signed body, not from the unsigned ``X-Wuji-Delivery`` header —
   has not been seen within the window: a capture replayed inside the window is a repeat, and so is
   notify's own resend of a delivery after a crash (same id, fresh timestamp). Ids are kept for
   twice the window, longer than any request with them can pass check 2. Several receiver
   processes share what they have seen through ``seen`` (e.g. Redis ``SET key 1 NX EX <seconds>``).
"""
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass


class WebhookRejected(Exception):
    """Forged, tampered, stale or malformed: answer 401 and do not act."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Verified:
    notice: dict          # the JSON body: delivery_id, event_id, type, case_no, occurred_at, data, ...
    repeat: bool          # seen already: answer 2xx, do not act again


class MemorySeen:
    """Delivery ids seen by this process, each forgotten after its time is up."""

    def __init__(self):
        self._until = {}
        self._lock = threading.Lock()

    def first_time(self, delivery_id, keep_seconds, now):
        """True the first time ``delivery_id`` comes (and remember it for ``keep_seconds``)."""
        with self._lock:
            if len(self._until) > 10_000:
                self._until = {k: t for k, t in self._until.items() if t > now}
            if self._until.get(delivery_id, 0) > now:
                return False
            self._until[delivery_id] = now + keep_seconds
            return True


class WebhookVerifier:
    def __init__(self, secret, window=300, seen=None, clock=time.time):
        if not secret:
            raise ValueError("a webhook secret is needed")
        self.secret = secret.encode("utf-8")
        self.window = window
        self.seen = seen or MemorySeen()
        self.clock = clock

    def signature(self, timestamp, body):
        return "sha256=" + hmac.new(self.secret, timestamp.encode("ascii") + b"." + body,
                                    hashlib.sha256).hexdigest()

    def verify(self, headers, body):
        """``headers``: a mapping (any case of the names); ``body``: the raw bytes as received."""
        header = {k.lower(): v for k, v in dict(headers).items()}
        timestamp = header.get("x-wuji-timestamp", "")
        if not timestamp.isdigit():
            raise WebhookRejected("no timestamp")
        if not hmac.compare_digest(self.signature(timestamp, body), header.get("x-wuji-signature", "")):
            raise WebhookRejected("bad signature")
        now = self.clock()
        if abs(now - int(timestamp)) > self.window:
            raise WebhookRejected("timestamp outside the window")
        try:
            notice = json.loads(body.decode("utf-8"))
            delivery_id = notice["delivery_id"]
        except (ValueError, KeyError, TypeError):
            raise WebhookRejected("body is not a notice") from None
        if header.get("x-wuji-delivery", delivery_id) != delivery_id:
            raise WebhookRejected("delivery header does not match the signed body")
        return Verified(notice, not self.seen.first_time(delivery_id, 2 * self.window, now))

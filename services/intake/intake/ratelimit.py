"""Rate limits on intake's public endpoints (POST appeals, rating, Open311 POST): per client address
and per citizen phone (its keyed hash, never the number itself).

Built on ``limits`` (the library behind Flask-Limiter): a moving window, so that a burst at the turn
of a minute does not get twice the allowance, and a storage named by URI: ``memory://`` (default,
per process) or, when intake runs as several replicas, a shared ``redis://`` / ``memcached://``
(config ``RATE_LIMIT_STORAGE``) so that the replicas count together. A hand-written token bucket
would be as short but per process only.
"""
import math
import time

from limits import RateLimitItemPerMinute, storage, strategies


class RateLimited(Exception):
    """Too many requests from one address or for one phone: answer 429 with Retry-After."""

    def __init__(self, retry_after):
        super().__init__(f"请求过于频繁，请在 {retry_after} 秒后重试")
        self.retry_after = retry_after
        self.message = self.args[0]


def _per_minute(value):
    value = int(value or 0)
    return RateLimitItemPerMinute(value) if value > 0 else None  # 0 or unset: no limit


class PublicRateLimits:
    def __init__(self, per_ip_per_minute=30, per_phone_per_minute=5, storage_uri="memory://"):
        self.per_ip = _per_minute(per_ip_per_minute)
        self.per_phone = _per_minute(per_phone_per_minute)
        self.limiter = strategies.MovingWindowRateLimiter(storage.storage_from_string(storage_uri))

    def check(self, endpoint, ip=None, phone_ref=None):
        """Count one request to ``endpoint``; raise RateLimited if the address or the phone is over
        its limit. Both are counted even when one is refused, so that a flood stays refused."""
        refused = []
        for item, kind, key in ((self.per_ip, "ip", ip), (self.per_phone, "phone", phone_ref)):
            if item and key and not self.limiter.hit(item, endpoint, kind, key):
                refused.append((item, kind, key))
        if refused:
            reset = max(self.limiter.get_window_stats(item, endpoint, kind, key).reset_time
                        for item, kind, key in refused)
            raise RateLimited(max(1, math.ceil(reset - time.time())))

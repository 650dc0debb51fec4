"""Per-device token buckets: the bridge's flood rule.

Why a bucket per device rather than a global limit: a global limit lets one misbehaving (or
compromised) wearable use up everyone's share; a per-device bucket caps exactly the device that
floods while the others keep their full rate. Why readings rather than messages: a batch of 100
readings costs the stream and storage a hundred times what one reading does.

The bucket refills at ``rate`` tokens per second up to ``burst``; each forwarded reading takes one
token. A reading that finds the bucket empty is not forwarded; the bridge dead-letters it with
reason ``rate_limited`` (original bytes kept), so nothing is lost silently. Time is the bridge's
clock in microseconds, passed in, so the rule is deterministic under test.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_us: int


class DeviceRateLimiter:
    """Token buckets keyed by device id (bounded by the provisioned devices: the ACL lets a user
    publish only to its own ``vitals/<id>``, so unknown ids cannot mint buckets)."""

    def __init__(self, rate_per_second: float, burst: int) -> None:
        if not rate_per_second > 0:
            raise ValueError("rate_per_second must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate_per_us = rate_per_second / 1_000_000
        self.burst = float(burst)
        self._buckets: dict[str, _Bucket] = {}

    def take(self, device_id: str, wanted: int, now_us: int) -> int:
        """Take up to ``wanted`` tokens; returns how many were granted (the first readings)."""
        bucket = self._buckets.get(device_id)
        if bucket is None:
            bucket = self._buckets[device_id] = _Bucket(self.burst, now_us)
        else:
            # max(): a wall clock stepping back must not drain the bucket.
            elapsed = max(0, now_us - bucket.updated_us)
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate_per_us)
            bucket.updated_us = max(bucket.updated_us, now_us)
        granted = min(wanted, int(bucket.tokens))
        bucket.tokens -= granted
        return granted

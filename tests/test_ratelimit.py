"""Token buckets: a burst goes through, then requests at the refill rate."""

from __future__ import annotations

from streaming.ratelimit import Bucket, retry_after


def test_a_bucket_takes_its_burst_then_its_rate() -> None:
    now = [100.0]
    b = Bucket(rate=2.0, burst=3.0, clock=lambda: now[0])
    assert [b.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = b.take()
    assert wait > 0 and abs(wait - 0.5) < 1e-9   # one more in half a second
    now[0] += 0.5
    assert b.take() == 0.0 and b.take() > 0
    now[0] += 100                               # never more than the burst saved up
    assert [b.take() for _ in range(4)].count(0.0) == 3
    assert retry_after(0.2) == "1" and retry_after(2.1) == "3"

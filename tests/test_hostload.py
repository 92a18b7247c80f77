"""Admission by the whole host's CPU use (``streaming.hostload``): the measure over a
sliding window and the refusal it leads to."""

from __future__ import annotations

from pathlib import Path

import pytest

from streaming.hostload import HostLoad, Load, read_proc_stat
from streaming.registry import Full, Registry


def test_proc_stat_is_read_as_busy_and_total_ticks(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 45 800 50 0 0 0 0 0\ncpu0 50 2 20 400 25 0 0 0 0 0\n"
                    "cpu1 50 3 25 400 25 0 0 0 0 0\nintr 1 2 3\n")
    assert read_proc_stat(stat) == (150.0, 1000.0, 2)
    assert read_proc_stat(tmp_path / "none") is None
    real = read_proc_stat()
    if real is not None:  # Linux
        busy, total, cpus = real
        assert 0 < busy < total and cpus >= 1


def test_the_window_measures_the_host_and_this_process_over_its_last_seconds() -> None:
    now = [0.0]
    ticks = {"busy": 0.0, "total": 0.0}
    own = [0.0]

    def stat() -> tuple[float, float, int]:
        return ticks["busy"], ticks["total"], 2

    load = HostLoad(window_s=20.0, min_span_s=4.0, stat=stat, own=lambda: own[0],
                    clock=lambda: now[0])
    assert load.load() is None
    load.sample()
    now[0] = 2.0
    ticks.update(busy=160.0, total=400.0)  # 2 s of 2 cores at 100 ticks/s: 40 % busy
    own[0] = 1.0                            # a core for half the time: 25 % of the host
    load.sample()
    assert load.load() is None  # too short a span to say
    for t in range(4, 60, 2):   # then the host is saturated, this process on one core
        now[0] = float(t)
        ticks["busy"] += 400.0
        ticks["total"] += 400.0
        own[0] += 2.0
        load.sample()
    got = load.load()
    assert got is not None and got.seconds == pytest.approx(20.0)
    # Only the last 20 s count: the early 40 % is gone from the window.
    assert got.host == pytest.approx(1.0) and got.own == pytest.approx(0.5)
    assert len(load._samples) <= 12


def test_a_busy_host_refuses_a_second_session_but_never_the_first() -> None:
    from test_requests import FakeOutput, FakeSession

    busy = Load(host=0.97, own=0.6, seconds=20.0)
    reg = Registry(max_sessions=4, capacity_share=0.9, host_share=0.9)
    with reg.reserve(25, 1000.0, busy):  # an idle server admits one, however busy the host
        reg.add(FakeSession("a"), FakeOutput("webrtc"))
    with pytest.raises(Full) as e, reg.reserve(25, 1000.0, busy):
        pass
    assert e.value.status == 503
    assert "97% busy over the last 20 s (60% this server's, 1 session(s))" in str(e.value)
    with reg.reserve(25, 1000.0, Load(host=0.7, own=0.5, seconds=20.0)):
        reg.add(FakeSession("b"), FakeOutput("webrtc"))
    with reg.reserve(25, 1000.0, None):  # no measure yet (or not Linux): not checked
        pass
    unchecked = Registry(max_sessions=4, capacity_share=0.9, host_share=None)
    unchecked.add(FakeSession("c"), FakeOutput("webrtc"))
    with unchecked.reserve(25, 1000.0, busy):
        pass


def test_the_server_admits_by_its_own_host_measure(bundle: Path) -> None:
    from test_requests import FakeOutput, FakeSession

    from streaming.app import Server, ServerConfig

    srv = Server({"presenter": bundle}, ServerConfig(allow_unconsented=True,
                                                     capacity_share=1e9))
    srv.load()
    assert srv.registry.host_share == 0.9
    srv.registry.add(FakeSession("a"), FakeOutput("webrtc"))
    clock = [100.0]
    srv.host_load = HostLoad(stat=lambda: (0.95 * clock[0], clock[0], 2), own=lambda: 0.0,
                             clock=lambda: clock[0])
    with srv._reserve():  # a single sample: no measure yet, admitted
        pass
    clock[0] = 110.0
    with pytest.raises(Full, match="host's CPUs were 95% busy over the last 10 s"), \
            srv._reserve():
        pass
    # What admission read is in /metrics for the operator.
    from prometheus_client import generate_latest

    from streaming.metrics import registry_for

    srv.registry.entries.clear()  # the fake session has no figures for /metrics
    text = generate_latest(registry_for(srv)).decode()
    assert "twincast_host_cpu_busy 0.95" in text and "twincast_server_cpu_share 0.0" in text

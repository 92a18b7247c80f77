"""``/metrics`` in the Prometheus text format, read from the scheduler and the sessions at
scrape time (nothing global is mutated on the hot path)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from streaming.app import Server


class ServerCollector:
    def __init__(self, server: Server):
        self.server = server

    def collect(self):  # noqa: ANN201 - prometheus_client's collector protocol
        srv = self.server
        sessions = GaugeMetricFamily("twincast_sessions", "Open sessions")
        sessions.add_metric([], len(srv.registry))
        yield sessions
        allowed = GaugeMetricFamily("twincast_unconsented_allowed", "1 when the operator "
                                    "passed --allow-unconsented")
        allowed.add_metric([], float(srv.cfg.allow_unconsented))
        unconsented = GaugeMetricFamily("twincast_avatars_unconsented", "Avatars served "
                                        "without a verified consent recording")
        unconsented.add_metric([], sum(st != "verified" for st in srv.consent.values()))
        yield from (allowed, unconsented)
        chat = CounterMetricFamily("twincast_chat_messages", "Live chat messages by verdict "
                                   "(question, vote, overflow, or why one was dropped); "
                                   "taken: handed to the LLM", labels=["verdict"])
        for verdict, n in sorted(srv.chat_totals.items()):
            chat.add_metric([verdict], n)
        answers = CounterMetricFamily("twincast_answers", "Questions to the LLM by outcome "
                                      "(asked, answered, failed, dropped)", labels=["outcome"])
        for outcome, n in sorted(srv.answer_totals.items()):
            answers.add_metric([outcome], n)
        yield from (chat, answers)
        load = srv.host_load.load()
        if load is not None:  # what admission reads (``streaming.hostload``)
            host = GaugeMetricFamily("twincast_host_cpu_busy", "Share of the host's CPU "
                                     "time busy over the last seconds, every process")
            host.add_metric([], load.host)
            own = GaugeMetricFamily("twincast_server_cpu_share", "Share of the host's CPU "
                                    "time this server used over the same seconds")
            own.add_metric([], load.own)
            yield from (host, own)
        by_thread = srv.thread_cpu.totals()
        if by_thread is not None:
            cpu = CounterMetricFamily("twincast_thread_cpu_seconds", "CPU time of this "
                                      "process by kind of thread (the render lanes, "
                                      "synthesis, the encoders' frame pool, the event loop "
                                      "on MainThread; native: threads Python did not "
                                      "start, such as torch's; exited: threads gone since "
                                      "the last read)", labels=["thread"])
            for group, seconds in by_thread.items():
                cpu.add_metric([group], seconds)
            yield cpu
        sch = srv.scheduler
        if sch is None:
            return
        pending = GaugeMetricFamily("twincast_queue_depth", "Frames waiting to be rendered")
        pending.add_metric([], sch.pending)
        yield pending
        frames = CounterMetricFamily("twincast_frames_rendered", "Frames rendered",
                                     labels=["lane"])
        batches = CounterMetricFamily("twincast_batches", "Model calls", labels=["lane"])
        late = CounterMetricFamily("twincast_frames_late", "Frames dropped as too late to "
                                   "render", labels=["lane"])
        errors = CounterMetricFamily("twincast_frames_failed", "Frames whose render failed",
                                     labels=["lane"])
        mean_batch = GaugeMetricFamily("twincast_batch_size_mean", "Mean frames per model "
                                       "call over the last 1000 calls", labels=["lane"])
        capacity = GaugeMetricFamily("twincast_capacity_fps", "Measured frames per second "
                                     "at full batches", labels=["lane"])
        by_cause = CounterMetricFamily(
            "twincast_frames_late_by_cause", "Frames dropped as too late to render, by "
            "why: handed over too late, the lane's last batch overran, queued behind others",
            labels=["lane", "cause"])
        bursts = CounterMetricFamily("twincast_late_bursts", "Runs of frames dropped as "
                                     "too late (under half a second apart)", labels=["lane"])
        for lane in sch.lanes:
            st = lane.stats
            frames.add_metric([lane.name], st.frames)
            batches.add_metric([lane.name], st.batches)
            late.add_metric([lane.name], st.late)
            for cause, n in st.late_by_cause.items():
                by_cause.add_metric([lane.name, cause], n)
            bursts.add_metric([lane.name], st.late_bursts)
            errors.add_metric([lane.name], st.errors)
            sizes = st.batch_sizes
            mean_batch.add_metric([lane.name], sum(sizes) / len(sizes) if sizes else 0.0)
            capacity.add_metric([lane.name], lane.cost.capacity_fps(sch.cfg.max_batch))
        yield from (frames, batches, late, by_cause, bursts, errors, mean_batch, capacity)
        shown = CounterMetricFamily("twincast_session_frames_late", "Speech frames shown "
                                    "without their mouth (rendered late or not in time to "
                                    "be rendered), open sessions")
        shown.add_metric([], sum(s.stats["frames_late"] for s in srv.sessions.values()))
        yield shown
        skipped = CounterMetricFamily("twincast_session_frames_skipped", "Video frames "
                                      "skipped to keep time with the sound (the host could "
                                      "not send them all), open sessions")
        skipped.add_metric([], sum(s.stats.get("frames_skipped", 0)
                                   for s in srv.sessions.values()))
        yield skipped
        # Livestreams: what reached the ingests, what was dropped, how often they
        # reconnected, summed: /metrics is public and a session id is a capability (with
        # the token it lets anyone say into or end that broadcast), so none is listed.
        streams = [o for _, o in srv.registry.of_kind("rtmp")]
        sent = CounterMetricFamily("twincast_stream_frames_sent", "Video frames pushed to "
                                   "RTMP ingests, open streams")
        dropped = CounterMetricFamily("twincast_stream_frames_dropped", "Video frames "
                                      "dropped before the encoder (ingest slow or gone), "
                                      "open streams")
        connects = CounterMetricFamily("twincast_stream_connects", "Connections to the "
                                       "ingests, open streams")
        live = GaugeMetricFamily("twincast_streams_live", "Streams whose push is live")
        sent.add_metric([], sum(o.stats["frames_sent"] for o in streams))  # type: ignore[attr-defined]
        dropped.add_metric([], sum(o.stats["frames_dropped"] for o in streams))  # type: ignore[attr-defined]
        connects.add_metric([], sum(o.stats["connects"] for o in streams))  # type: ignore[attr-defined]
        live.add_metric([], sum(o.state == "live" for o in streams))  # type: ignore[attr-defined]
        yield from (sent, dropped, connects, live)


def registry_for(server: Server) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=True)
    reg.register(ServerCollector(server))
    return reg

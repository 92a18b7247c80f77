"""``twincast bench cluster-features``: the enrolment features stage run locally (two worker
processes) and as Ray tasks on a cluster on this machine (a head and two worker nodes of
one CPU each, ``ray.cluster_utils``): wall time of each, and whether the two caches are the
same bytes."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def bench_cluster_features(footage: Sequence[Path], transcript: Path | None,
                           preset: str = "cpu") -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from training.config import features_preset
    from training.enrol import enrol_features

    with tempfile.TemporaryDirectory(prefix="twincast-bench-") as tmp:
        t0 = time.perf_counter()
        local = enrol_features(footage, Path(tmp) / "local", features_preset(preset, 2),
                               transcript=transcript)
        local_s = time.perf_counter() - t0
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": False})
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        try:
            t0 = time.perf_counter()
            remote = enrol_features(footage, Path(tmp) / "ray", features_preset(preset, 2),
                                    transcript=transcript, ray_address=cluster.address)
            ray_s = time.perf_counter() - t0  # joining the cluster included
        finally:
            ray.shutdown()
            cluster.shutdown()
        a, b = _files(local.dir), _files(remote.dir)
        differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        return {"clips": len(local.clips), "units": local.computed_units,
                "local_two_processes_s": round(local_s, 1),
                "ray_two_nodes_s": round(ray_s, 1),
                "ray_over_local": round(ray_s / local_s, 3),
                "cache_files": len(a), "cache_bytes": sum(len(v) for v in a.values()),
                "identical": not differ, "differing_files": differ[:20]}

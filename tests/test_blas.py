"""numpy's BLAS runs on the calling thread once serving starts (``avatar.blas``)."""

from __future__ import annotations

import subprocess
import sys


def test_single_threaded_blas_limits_numpy_s_blas() -> None:
    # In a child: the limit holds for the whole process, which the test runner is not.
    code = ("import numpy; from threadpoolctl import threadpool_info\n"
            "from avatar.blas import single_threaded_blas\n"
            "assert single_threaded_blas()\n"
            "pools = [p for p in threadpool_info() if p['user_api'] == 'blas']\n"
            "assert pools and all(p['num_threads'] == 1 for p in pools), pools\n"
            "print(len(pools))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 1

"""A server process's C allocator settings (``streaming.memory``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

COUNT_ARENAS = """
import ctypes, sys, threading
import numpy as np
from streaming.memory import limit_malloc_arenas

if sys.argv[1] == "limit":
    assert limit_malloc_arenas(2)
held, together = [], threading.Barrier(6)

def work():
    together.wait()  # all alive at once: glibc hands a live thread an arena of its own
    held.append([np.ones(8000) for _ in range(20)])  # 64 kB each: from the arena, not mmap
    together.wait()

threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p  # a FILE*: the default int would cut it
libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
libc.fclose.argtypes = (ctypes.c_void_p,)
f = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, f)
libc.fclose(f)
print(open(sys.argv[2]).read().count("<heap nr="))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_server_process_allocates_from_two_arenas(tmp_path: Path) -> None:
    """Six threads allocating at once get an arena each from glibc by default (its RSS
    crept in soaks); limited, the process has two whatever its threads do."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    env["PYTHONPATH"] = str(ROOT)

    def arenas(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", COUNT_ARENAS, mode,
                              str(tmp_path / f"{mode}.xml")], env=env, check=True,
                             capture_output=True, text=True, timeout=120)
        return int(out.stdout.split()[-1])

    assert arenas("default") >= 5
    assert arenas("limit") <= 2


def test_an_operator_s_own_arena_setting_is_left_alone(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    from streaming.memory import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False

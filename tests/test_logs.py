"""Structured logs: every line is one JSON object with the fields collectors expect."""

import json
import logging

from twincast.logs import JsonFormatter


def test_json_log_lines() -> None:
    fmt = JsonFormatter()
    rec = logging.LogRecord("streaming.app", logging.WARNING, __file__, 1,
                            "session %s closed: %s", ("ab12", "gone"), None)
    rec.session = "ab12"
    out = json.loads(fmt.format(rec))
    assert out["level"] == "warning" and out["logger"] == "streaming.app"
    assert out["message"] == "session ab12 closed: gone" and out["session"] == "ab12"
    assert out["time"].endswith("+00:00")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = fmt.format(rec)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exception"]


def test_stderr_comes_back_after_overlapping_silencing_from_threads() -> None:
    """Keyed streams silence native chatter from worker threads at once: fd 2 must be the
    real stderr again afterwards (it was left on /dev/null: the second thread in saved
    the first one's /dev/null and restored it last)."""
    import os
    import threading

    from avatar.quiet import native_stderr_silenced

    before = os.fstat(2)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with native_stderr_silenced():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def second() -> None:
        a_in.wait(5)
        with native_stderr_silenced():
            b_in.set()
            a_out.wait(5)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)

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

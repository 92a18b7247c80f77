"""The API fuzzed from its own contract (schemathesis, a bounded run): whatever a caller
sends, the server answers with a status the contract names and never a 5xx, and keeps
serving."""

from __future__ import annotations

from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

TOKEN = "fuzz-t0ken"
EXAMPLES = 30
"""Per operation (a bounded run: about a minute for all of them here)."""


@pytest.fixture(scope="module")
def api(bundle: Path):  # noqa: ANN201
    from streaming.app import Server, ServerConfig
    from streaming.routes import RunningServer

    srv = Server({"presenter": bundle}, ServerConfig(token=TOKEN, max_sessions=2,
                                                   allow_unconsented=True, host_share=None,
                                                   lost_share=None))
    srv.load()
    running = RunningServer(srv)
    yield running.url, srv
    running.stop()


def test_the_contract_holds_under_fuzzing(api) -> None:  # noqa: ANN001
    import requests
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import status_code_conformance

    url, _ = api
    schema = schemathesis.openapi.from_url(f"{url}/v1/openapi.json")
    calls: dict[str, int] = {}
    def fuzz(op, mode: GenerationMode) -> None:  # noqa: ANN001 - an APIOperation
        @given(case=op.as_strategy(mode))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case) -> None:  # noqa: ANN001
            key = f"{op.label} ({mode.value})"
            calls[key] = calls.get(key, 0) + 1
            case.call_and_validate(base_url=url,
                                   headers={"Authorization": f"Bearer {TOKEN}"},
                                   checks=[not_a_server_error, status_code_conformance])

        run()

    # Inputs the contract allows, then inputs it does not (wrong types, out of range,
    # missing fields): both must get a documented status, never a 5xx.
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        for result in schema.get_all_operations():
            fuzz(result.ok(), mode)
    print(f"fuzz: {sum(calls.values())} requests over {len(calls)} operation-modes")
    assert len(calls) >= 12 and sum(calls.values()) >= 12 * 5
    assert requests.get(f"{url}/healthz", timeout=10).json()["ok"] is True

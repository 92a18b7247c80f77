"""The operator's LLM, over the OpenAI-compatible chat API (what llama.cpp's server, vLLM,
Ollama and hosted providers speak): a streamed reply, cut into sentences as they complete.

Nothing here knows about sessions: ``streaming.conversation`` speaks what comes out.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from avatar.errors import TwincastError

log = logging.getLogger(__name__)


class LLMError(TwincastError):
    """The LLM did not answer usefully (down, slow, an error status, a broken stream)."""


@dataclass(frozen=True)
class LLMConfig:
    url: str
    """The API's base URL, e.g. ``http://127.0.0.1:8081/v1`` (``/chat/completions`` is
    added)."""
    model: str
    key_env: str | None = None
    """The environment variable holding the API key (never the key on a command line)."""
    system: str = ("You are {name}, presenting a live stream. Answer the viewer's question "
                   "in one to three short spoken sentences, plainly, without lists or "
                   "markup. If the facts below do not answer it, say you will find out.")
    """The system prompt; ``{name}`` is the avatar's name."""
    knowledge: str = ""
    """A product sheet or FAQ (Markdown or TOML text) given to the model with each
    question."""
    max_reply_chars: int = 600
    """A reply is cut (at a sentence where it can be) after this many characters."""
    max_tokens: int = 200
    temperature: float = 0.7
    first_token_s: float = 20.0
    """How long the model may take to start answering."""
    total_s: float = 60.0
    """How long a whole reply may take."""
    extra_headers: dict[str, str] = field(default_factory=dict)

    def endpoint(self) -> str:
        return self.url.rstrip("/") + "/chat/completions"

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", **self.extra_headers}
        if self.key_env:
            key = os.environ.get(self.key_env)
            if not key:
                raise LLMError(f"the LLM's key variable {self.key_env} is not set")
            h["Authorization"] = f"Bearer {key}"
        return h

    def messages(self, question: str, name: str) -> list[dict]:
        system = self.system.replace("{name}", name)
        if self.knowledge:
            system += "\n\nFacts you may use:\n" + self.knowledge
        return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def read_knowledge(path: Path, limit: int = 32_000) -> str:
    """A knowledge file's text (Markdown or TOML, as written), or one clear error."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TwincastError(f"{path}: no such knowledge file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TwincastError(f"{path}: cannot be read as UTF-8 text ({e})") from None
    if len(text) > limit:
        raise TwincastError(f"{path}: {len(text)} characters; a knowledge file is given to "
                            f"the model with every question, so keep it under {limit}")
    return text.strip()


async def stream_reply(http, cfg: LLMConfig, question: str,  # noqa: ANN001 - aiohttp session
                       name: str) -> AsyncIterator[str]:
    """The reply's text as the model streams it (pieces of any length). Raises
    ``LLMError`` for a model that does not answer, answers an error, or breaks off."""
    import aiohttp

    body = {"model": cfg.model, "messages": cfg.messages(question, name), "stream": True,
            "max_tokens": cfg.max_tokens, "temperature": cfg.temperature}
    start = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=cfg.total_s, sock_connect=cfg.first_token_s,
                                    sock_read=cfg.first_token_s)
    try:
        async with http.post(cfg.endpoint(), json=body, headers=cfg.headers(),
                             timeout=timeout) as r:
            if r.status != 200:
                text = (await r.text())[:200].replace("\n", " ")
                raise LLMError(f"the LLM answered {r.status}: {text}")
            done = False
            async for raw in r.content:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue  # blank keep-alives, comments, event names
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                try:
                    choice = json.loads(data)["choices"][0]
                except (ValueError, KeyError, IndexError, TypeError):
                    raise LLMError(f"the LLM sent a line that is not a chat chunk: "
                                   f"{data[:80]!r}") from None
                piece = (choice.get("delta") or {}).get("content") if isinstance(
                    choice, dict) else None
                if isinstance(piece, str) and piece:
                    yield piece
                if isinstance(choice, dict) and choice.get("finish_reason"):
                    done = True
            if not done:
                raise LLMError("the LLM's reply broke off before its end")
    except TimeoutError:
        raise LLMError(f"the LLM did not answer within {time.monotonic() - start:.0f} s"
                       ) from None
    except aiohttp.ClientError as e:
        raise LLMError(f"cannot reach the LLM at {cfg.endpoint()} ({e.__class__.__name__}: "
                       f"{e})") from None


_END = re.compile(r"""[.!?…]+["')\]]*(?=\s)|\n+""")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "vs", "etc", "e.g", "i.e", "no", "approx"}
_MARKUP = re.compile(r"[*_`#>~]+|\[(.*?)\]\([^)]*\)")


def speakable(text: str) -> str:
    """A sentence as the voice should get it: markdown emphasis, headings, code ticks and
    link targets dropped, list bullets and runs of spaces folded."""
    text = _MARKUP.sub(lambda m: m.group(1) or "", text.replace("|", " "))
    text = re.sub(r"^\s*(?:[-+•]|\d+[.)])\s+", "", text)
    return " ".join(text.split())


class Sentences:
    """Cuts streamed text into sentences as they complete (so the first one goes to the
    voice before the model has finished), up to ``limit`` characters in all."""

    def __init__(self, limit: int = 600):
        self.limit = limit
        self._buf = ""
        self._given = 0
        self.cut = False
        """Whether the reply went past ``limit`` and the rest was dropped."""

    def feed(self, piece: str) -> list[str]:
        if self.cut:
            return []
        self._buf += piece
        out: list[str] = []
        start = 0
        for m in _END.finditer(self._buf):
            candidate = self._buf[start:m.end()]
            words = candidate.strip().split()
            last = words[-1].rstrip(".!?…\"')]").lower() if words else ""
            if m.group().startswith(".") and last in _ABBREVIATIONS:
                continue  # "Dr. Smith": not the end
            out.append(candidate)
            start = m.end()
        self._buf = self._buf[start:]
        return self._take(out)

    def flush(self) -> list[str]:
        rest, self._buf = self._buf, ""
        return self._take([rest]) if not self.cut else []

    def _take(self, pieces: list[str]) -> list[str]:
        out = []
        for p in pieces:
            s = speakable(p)
            if not s:
                continue
            if self._given + len(s) > self.limit:
                self.cut = True
                self._buf = ""
                break
            self._given += len(s) + 1
            out.append(s)
        return out

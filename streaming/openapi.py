"""The OpenAPI document of the HTTP API (``GET /v1/openapi.json``); the request bodies'
schemas come from the request types themselves (``streaming.requests``)."""

from __future__ import annotations

from streaming.events import EVENTS
from streaming.requests import schemas


def _error(desc: str) -> dict:
    return {"description": desc, "content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/Error"}}}}


def document() -> dict:
    """The contract, with the statuses every operation can answer added to each: a wrong
    token (401), an unknown session id (404), a bad or oversized body (400, 413), a PATCH
    or other unsupported method (405). The fuzz test holds the server to it."""
    doc = _paths()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            r = op.setdefault("responses", {})
            r.setdefault("401", _error("missing, wrong or expired token"))
            r.setdefault("403", _error("a viewer token's grant does not cover this"))
            if "{id}" in path:
                r.setdefault("404", _error("no such session"))
            if method == "post":
                r.setdefault("400", _error("a body or parameter the server cannot use"))
                r.setdefault("413", _error("a body over the size limit"))
            r.setdefault("405", _error("method not allowed"))
            r.setdefault("429", _error("too many requests with this token; see "
                                       "Retry-After"))
    return doc


def _chat_post(sid: list) -> dict:
    return {
        "summary": "Chat messages from a platform's webhook (operator token): one {from, "
                   "text} or {messages: [...]} of up to 1,000, each moderated and queued "
                   "for the LLM like IRC chat",
        "parameters": sid,
        "requestBody": {"content": {"application/json": {"schema": {
            "$ref": "#/components/schemas/ChatPost"}}}},
        "responses": {"202": {"description": "{verdicts: {question|vote|overflow|why "
                                             "dropped: count}}"},
                      "403": _error("a viewer token"),
                      "409": _error("this server has no LLM (--llm)"),
                      "413": _error("over 1,000 messages, or the body over its limit")}}


def _paths() -> dict:
    sid = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "twincast realtime API", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
                **schemas(),
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/avatars": {"get": {"summary": "The avatars this server offers",
                                    "responses": {"200": {"description": "names, each "
                                                          "one's mark_id (what `twincast "
                                                          "verify` finds in its output) "
                                                          "and consent (verified or "
                                                          "unconsented), whether output "
                                                          "is watermarked, the disclosure "
                                                          "every frame carries (null: "
                                                          "none), and whether the operator "
                                                          "allowed unconsented avatars"}}}},
            "/v1/sessions": {"post": {
                "summary": "Open a session: an SDP offer in, the SDP answer out (WHEP-style)",
                "parameters": [{"name": "avatar", "in": "query", "schema": {
                    "type": "string"}}],
                "requestBody": {"content": {
                    "application/sdp": {"schema": {"type": "string"}},
                    "application/json": {"schema": {"type": "object", "properties": {
                        "sdp": {"type": "string"}, "avatar": {"type": "string"}}}}}},
                "responses": {"201": {"description": "the answer; Location names the "
                                      "session; X-Twincast-Disclosure is the label its "
                                      "frames carry (absent: none)"},
                              "400": _error("not a usable SDP offer"),
                              "401": _error("missing or wrong token"),
                              "404": _error("no such avatar"),
                              "503": _error("full; see Retry-After")}}},
            "/v1/sessions/{id}": {
                "get": {"summary": "A session's state", "parameters": sid,
                        "responses": {"200": {"description": "state and counters; with "
                                              "live chat, its queue, messages by verdict "
                                              "and each source's state (live once "
                                              "joined)"},
                                      "404": _error("no such session")}},
                "delete": {"summary": "Close a session", "parameters": sid,
                           "responses": {"204": {"description": "closed"},
                                         "404": _error("no such session")}}},
            "/v1/sessions/{id}/say": {"post": {
                "summary": "Say text (queued after what is being said, unless interrupt)",
                "parameters": sid,
                "requestBody": {"content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/Say"}}}},
                "responses": {"202": {"description": "accepted, with the utterance id"},
                              "400": _error("bad body or unspeakable text"),
                              "413": _error("text over the limit"),
                              "429": _error("this session has as much speech queued as it "
                                            "takes; retry after Retry-After seconds, or say "
                                            "with interrupt")}}},
            "/v1/sessions/{id}/ask": {"post": {
                "summary": "Ask a question: the operator's LLM answers it in the avatar's "
                           "voice, sentence by sentence (events answer_started, "
                           "answer_sentence, answer_done or answer_failed)",
                "parameters": sid,
                "requestBody": {"content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/Ask"}}}},
                "responses": {"202": {"description": "queued, with the question id"},
                              "400": _error("bad body or empty question"),
                              "409": _error("this server has no LLM (--llm), or its avatar "
                                            "no voice"),
                              "413": _error("question over the limit"),
                              "429": _error("questions already waiting for this session")}}},
            "/v1/streams": {"post": {
                "summary": "Start a livestream: a session whose output is pushed to an RTMP "
                           "ingest (inject text with its /say)",
                "requestBody": {"content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/Stream"}}}},
                "responses": {"201": {"description": "started; Location names the session"},
                              "400": _error("bad URL, show or option"),
                              "403": _error("the ingest is not a public address and the "
                                            "server does not allow it (--rtmp-allow)"),
                              "404": _error("no such avatar"),
                              "503": _error("full; see Retry-After")}}},
            "/v1/sessions/{id}/chat": {
                "post": _chat_post(sid),
                "put": {
                    "summary": "Give a session live chat (operator token): the keys of a "
                               "show's [chat] table, e.g. {\"irc\": \"ircs://irc.chat."
                               "twitch.tv:6697/#channel\", \"every\": 20}; questions are "
                               "moderated, queued and answered as they come",
                    "parameters": sid,
                    "requestBody": {"content": {"application/json": {"schema": {
                        "$ref": "#/components/schemas/ChatSettings"}}}},
                    "responses": {"201": {"description": "{chat, answer}"},
                                  "400": _error("a key or value the chat cannot use"),
                                  "403": _error("a viewer token; or the IRC host is not "
                                                "public and not allowed (--rtmp-allow)"),
                                  "409": _error("no LLM (--llm), or chat already set")}}},
            "/v1/streams/{id}/chat": {"post": _chat_post(sid)},
            "/v1/tokens": {"post": {
                "summary": "Mint a viewer token (operator token only): good for opening one "
                           "session (of one avatar, or any) and then for that session alone: "
                           "watch and close it, and say/interrupt only with say: true",
                "requestBody": {"content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/Token"}}}},
                "responses": {"201": {"description": "{token, ttl_s, avatar, say}"},
                              "403": _error("a viewer token cannot mint tokens"),
                              "404": _error("no such avatar"),
                              "429": _error("too many viewer tokens alive")}}},
            "/v1/sessions/{id}/interrupt": {"post": {
                "summary": "Stop speaking at once (barge-in)", "parameters": sid,
                "responses": {"200": {"description": "how many utterances were dropped"}}}},
        },
        "x-data-channel": "Commands {type: say, text, interrupt, rate}, {type: ask, "
                          "text, from} and {type: interrupt}; events {type: "
                          + " | ".join(e.type for e in EVENTS) + ", session, utterance, "
                          "stream_time} (answers add question, and text or sentences, "
                          "cut or message) and replies {type: accepted, utterance or "
                          "question} or "
                          "{type: error, message}.",
    }

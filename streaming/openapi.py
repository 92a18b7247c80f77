"""The OpenAPI document of the HTTP API (``GET /v1/openapi.json``)."""

from __future__ import annotations


def _error(desc: str) -> dict:
    return {"description": desc, "content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/Error"}}}}


def document() -> dict:
    sid = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "twincast realtime API", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
                "Say": {"type": "object", "required": ["text"], "properties": {
                    "text": {"type": "string"},
                    "policy": {"enum": ["append", "interrupt"], "default": "append",
                               "description": "after what is queued, or cut it off"},
                    "interrupt": {"type": "boolean", "default": False,
                                  "description": "the same as policy: interrupt"},
                    "rate": {"type": "number", "minimum": 0.5, "maximum": 2.0,
                             "default": 1.0, "description": "speaking rate"}}},
                "Stream": {"type": "object", "required": ["rtmp"], "properties": {
                    "rtmp": {"type": "string", "description": "rtmp:// or rtmps:// "
                             "ingest URL with its stream key"},
                    "avatar": {"type": "string"},
                    "show": {"type": "string", "description": "a show file's TOML text"},
                    "width": {"type": "integer", "default": 1280},
                    "height": {"type": "integer", "default": 720},
                    "video_kbps": {"type": "integer", "default": 2500},
                    "keyframe_s": {"type": "number", "default": 2.0},
                    "key_colour": {"type": "array", "items": {"type": "integer"},
                                   "description": "[r, g, b]: background replaced by "
                                   "this colour for chroma keying"}}},
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/avatars": {"get": {"summary": "The avatars this server offers",
                                    "responses": {"200": {"description": "names"}}}},
            "/v1/sessions": {"post": {
                "summary": "Open a session: an SDP offer in, the SDP answer out (WHEP-style)",
                "parameters": [{"name": "avatar", "in": "query", "schema": {
                    "type": "string"}}],
                "requestBody": {"content": {
                    "application/sdp": {"schema": {"type": "string"}},
                    "application/json": {"schema": {"type": "object", "properties": {
                        "sdp": {"type": "string"}, "avatar": {"type": "string"}}}}}},
                "responses": {"201": {"description": "the answer; Location names the "
                                      "session"},
                              "400": _error("not a usable SDP offer"),
                              "401": _error("missing or wrong token"),
                              "404": _error("no such avatar"),
                              "503": _error("full; see Retry-After")}}},
            "/v1/sessions/{id}": {
                "get": {"summary": "A session's state", "parameters": sid,
                        "responses": {"200": {"description": "state"},
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
                              "413": _error("text over the limit")}}},
            "/v1/streams": {"post": {
                "summary": "Start a livestream: a session whose output is pushed to an RTMP "
                           "ingest (inject text with its /say)",
                "requestBody": {"content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/Stream"}}}},
                "responses": {"201": {"description": "started; Location names the session"},
                              "400": _error("bad URL, show or option"),
                              "503": _error("full; see Retry-After")}}},
            "/v1/sessions/{id}/interrupt": {"post": {
                "summary": "Stop speaking at once (barge-in)", "parameters": sid,
                "responses": {"200": {"description": "how many utterances were dropped"}}}},
        },
        "x-data-channel": "Commands {type: say, text, interrupt, rate} and "
                          "{type: interrupt}; "
                          "events {type: speech_started | speech_ended | interrupted | "
                          "error | accepted, utterance, stream_time}.",
    }

// twincast embed client: show a twincast avatar in any page, with no build step and no
// dependencies. Load it with <script src="https://YOUR-SERVER/embed/twincast.js"></script>
// and see /embed/example.html. Pages on another origin need the server started with
// --cors-origin https://your.site.
//
//   const avatar = new Twincast({ server: "https://avatar.example.com", token: "...",
//                                 avatar: "presenter", video: document.querySelector("video") });
//   avatar.on("speech_started", (ev) => console.log(ev));
//   await avatar.connect();
//   avatar.say("Hello!");                 // queued after what is being said
//   avatar.say("Stop that.", { interrupt: true });
//   avatar.ask("Does it come in blue?");  // answered by the server's LLM (serve --llm)
//   avatar.interrupt();
//   await avatar.useMicrophone(true);     // the avatar speaks what the microphone hears,
//                                         // or with { mode: "conversation" } it answers it
//   await avatar.close();
//
// A session lost for the server's sake (its server or cluster worker stopped or died) is
// replaced by a new one on its own (events reconnecting, then reconnected or closed; turn
// it off with reconnect: false). A viewer token opens one session only, so for that pass
// `token` as a function that fetches a fresh one from your backend:
//   new Twincast({ token: async () => (await fetch("/my/twincast-token")).text(), ... })
"use strict";

(function (root) {
  class Twincast {
    // mode: "driven" (the microphone, when on, is the avatar's voice) or "conversation"
    // (the microphone is a person talking to the avatar: their turns are transcribed and
    // answered by the server's LLM; events listening and heard).
    constructor({ server = "", token = "", avatar = "", video = null, mode = "driven",
                  reconnect = true } = {}) {
      this.server = server.replace(/\/$/, "");
      this.mode = mode;
      this.token = token;      // a string, or a function giving one (sync or async)
      this.bearer = "";        // the token the current session was opened with
      this.reconnect = reconnect;
      this.stopped = false;    // close() was called: nothing reconnects
      this.avatar = avatar;
      this.video = video;
      this.pc = null;
      this.channel = null;
      this.session = null;   // the session's URL path, /v1/sessions/{id}
      this.audioSender = null;
      this.mic = null;
      this.handlers = {};
    }

    // Events: speech_started, speech_ended, interrupted, error, closing (with a reason:
    // the server is shutting down, the viewer vanished; retry: a new session will do),
    // words (subtitles), answer_started, answer_sentence, answer_done, answer_failed,
    // listening, heard, accepted, connected, reconnecting (with the reason), reconnected
    // (session, previous), closed; "*" receives them all.
    // Each is the server's JSON event object.
    on(type, fn) {
      (this.handlers[type] = this.handlers[type] || []).push(fn);
      return this;
    }

    emit(ev) {
      for (const fn of [...(this.handlers[ev.type] || []), ...(this.handlers["*"] || [])]) {
        try { fn(ev); } catch (e) { console.error(e); }
      }
    }

    headers(extra = {}) {
      return { Authorization: "Bearer " + this.bearer, ...extra };
    }

    async connect() {
      if (this.pc) throw new Error("already connected");
      this.stopped = false;
      return this.open();
    }

    async open() {
      this.bearer = typeof this.token === "function" ? await this.token() : this.token;
      const pc = new RTCPeerConnection();
      this.pc = pc;
      pc.addTransceiver("video", { direction: "recvonly" });
      // Audio both ways: the avatar's voice down, a microphone up when switched on.
      this.audioSender = pc.addTransceiver("audio", { direction: "sendrecv" }).sender;
      const stream = new MediaStream();
      if (this.video) this.video.srcObject = stream;
      pc.ontrack = (e) => stream.addTrack(e.track);
      const channel = pc.createDataChannel("control");
      this.channel = channel;
      channel.onmessage = (e) => {
        let ev;
        try { ev = JSON.parse(e.data); } catch (err) { console.error(err); return; }
        this.emit(ev);
        if (ev.type === "closing") {
          // For the server's sake: open another. Otherwise it was ended on purpose (by
          // the operator, or the server's watchdog): closed, not reopened.
          if (ev.retry) this.lost(pc, ev.reason);
          else this.ended(pc, ev.reason);
        }
      };
      this.watch(pc, channel);
      const opened = new Promise((done) => { channel.onopen = done; });
      await pc.setLocalDescription(await pc.createOffer());
      // One round trip, no trickle: wait for the local candidates before offering.
      if (pc.iceGatheringState !== "complete") {
        await new Promise((done) => pc.addEventListener("icegatheringstatechange", () => {
          if (pc.iceGatheringState === "complete") done();
        }));
      }
      const params = new URLSearchParams();
      if (this.avatar) params.set("avatar", this.avatar);
      if (this.mode !== "driven") params.set("mode", this.mode);
      const query = params.toString() ? "?" + params.toString() : "";
      const r = await fetch(this.server + "/v1/sessions" + query, {
        method: "POST", headers: this.headers({ "Content-Type": "application/sdp" }),
        body: pc.localDescription.sdp });
      if (r.status !== 201) {
        this.pc = null;
        pc.close();
        let message = r.statusText;
        try { message = (await r.json()).error; } catch (e) { /* not JSON */ }
        throw new Error("twincast: " + r.status + " " + message);
      }
      this.session = r.headers.get("Location");
      this.caption(r.headers.get("X-Twincast-Disclosure"));
      await pc.setRemoteDescription({ type: "answer", sdp: await r.text() });
      await opened;
      this.emit({ type: "connected", session: this.session });
      return this.session;
    }

    // The session is lost when its connection fails, or stays disconnected for 3 s, or
    // its channel closes without close(), or its video stops for 2.5 s (a node gone
    // without a word sends nothing more, and browsers take 10 s or more to call that a
    // disconnection; the server sends frames all the time, silent or not).
    watch(pc, channel) {
      let timer = null;
      channel.addEventListener("close", () => this.lost(pc, "the connection closed"));
      pc.addEventListener("connectionstatechange", () => {
        clearTimeout(timer);
        if (pc.connectionState === "failed") this.lost(pc, "the connection failed");
        if (pc.connectionState === "disconnected") {
          timer = setTimeout(() => this.lost(pc, "the connection was lost"), 3000);
        }
      });
      let bytes = 0, since = Date.now();
      const poll = setInterval(async () => {
        if (this.pc !== pc) { clearInterval(poll); clearTimeout(timer); return; }
        let now = 0;
        (await pc.getStats()).forEach((r) => {
          if (r.type === "inbound-rtp" && r.kind === "video") now += r.bytesReceived || 0;
        });
        if (now !== bytes || now === 0) {
          bytes = now;
          since = Date.now();
        } else if (Date.now() - since > 2500) {
          this.lost(pc, "no video for 2.5 s");
        }
      }, 500);
    }

    ended(pc, reason) {
      if (this.pc !== pc) return;
      const session = this.session;
      this.pc = this.channel = this.session = this.audioSender = null;
      pc.close();
      this.emit({ type: "closed", session, reason });
    }

    async lost(pc, reason) {
      if (this.pc !== pc || this.stopped) return;  // an old connection, or closed by us
      const previous = this.session;
      this.pc = this.channel = this.session = this.audioSender = null;
      pc.close();
      if (!this.reconnect) {
        this.emit({ type: "closed", session: previous, reason });
        return;
      }
      this.emit({ type: "reconnecting", session: previous, reason });
      for (let attempt = 0; !this.stopped; attempt++) {
        try {
          await this.open();
          break;
        } catch (e) {
          if (this.pc) { this.pc.close(); this.pc = null; }
          if (attempt >= 5) {
            this.emit({ type: "closed", session: previous,
                        reason: "could not reconnect: " + e.message });
            return;
          }
          // 0.5, 1, 2, 4, 8 s: a cluster that has just lost a node needs a moment.
          await new Promise((done) => setTimeout(done, 500 * 2 ** attempt));
        }
      }
      if (this.stopped) return;
      if (this.mic) await this.audioSender.replaceTrack(this.mic.getAudioTracks()[0]);
      this.emit({ type: "reconnected", session: this.session, previous, reason });
    }

    // The server's disclosure ("AI-generated"), drawn in a corner of every frame, also as
    // text under the video: for screen readers, and for pages that crop the picture.
    caption(text) {
      if (!this.video || !text) return;
      let el = this.video.nextElementSibling;
      if (!el || !el.classList.contains("twincast-disclosure")) {
        el = document.createElement("p");
        el.className = "twincast-disclosure";
        el.setAttribute("role", "note");
        el.style.cssText = "margin:.25rem 0;font:600 .8rem system-ui,sans-serif;color:#555";
        this.video.insertAdjacentElement("afterend", el);
      }
      el.textContent = text;
      this.video.setAttribute("aria-label", text + " video");
    }

    // Say text. Over the data channel when it is open (no HTTP round trip), else the API.
    async say(text, { interrupt = false, rate = 1.0 } = {}) {
      if (this.channel && this.channel.readyState === "open") {
        this.channel.send(JSON.stringify({ type: "say", text, interrupt, rate }));
        return;
      }
      await this.post("/say", { text, policy: interrupt ? "interrupt" : "append", rate });
    }

    // Ask a question: the server's LLM (serve --llm) answers it in the avatar's voice,
    // with answer_started, answer_sentence (text: a subtitle), answer_done or answer_failed.
    async ask(text, { from = "" } = {}) {
      if (this.channel && this.channel.readyState === "open") {
        this.channel.send(JSON.stringify({ type: "ask", text, from }));
        return;
      }
      await this.post("/ask", { text, from });
    }

    async interrupt() {
      if (this.channel && this.channel.readyState === "open") {
        this.channel.send(JSON.stringify({ type: "interrupt" }));
        return;
      }
      await this.post("/interrupt", {});
    }

    async post(path, body) {
      if (!this.session) throw new Error("not connected");
      const r = await fetch(this.server + this.session + path, {
        method: "POST", headers: this.headers({ "Content-Type": "application/json" }),
        body: JSON.stringify(body) });
      if (!r.ok) throw new Error("twincast: " + r.status + " " + (await r.json()).error);
      return r.json();
    }

    async useMicrophone(on) {
      if (!this.audioSender) throw new Error("not connected");
      if (!on) {
        if (this.mic) this.mic.getTracks().forEach((t) => t.stop());
        this.mic = null;
        await this.audioSender.replaceTrack(null);
        return;
      }
      this.mic = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true } });
      await this.audioSender.replaceTrack(this.mic.getAudioTracks()[0]);
    }

    async close() {
      this.stopped = true;
      const session = this.session;
      if (this.mic) this.mic.getTracks().forEach((t) => t.stop());
      if (this.pc) this.pc.close();
      this.pc = this.channel = this.session = this.audioSender = this.mic = null;
      if (session) {
        await fetch(this.server + session, { method: "DELETE", headers: this.headers() })
          .catch(() => {});
      }
      this.emit({ type: "closed", session });
    }
  }

  root.Twincast = Twincast;
})(typeof window !== "undefined" ? window : globalThis);

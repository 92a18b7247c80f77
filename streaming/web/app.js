// twincast page: connect over WebRTC, send text, interrupt, show live figures.
// The API token comes from the link's fragment (#token=...), which never reaches a server.
"use strict";

const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
const $ = (id) => document.getElementById(id);
const auth = { Authorization: "Bearer " + token };
let pc = null, channel = null, session = null, sentAt = null, lastFrames = 0;
let audioSender = null, mic = null;

function log(line) {
  const el = $("log");
  el.textContent = new Date().toISOString().slice(11, 23) + " " + line + "\n" + el.textContent;
}

async function loadAvatars() {
  const r = await fetch("/v1/avatars", { headers: auth });
  if (!r.ok) { log("cannot list avatars: " + (await r.json()).error); return; }
  for (const a of (await r.json()).avatars) {
    const o = document.createElement("option");
    o.value = a.name; o.textContent = a.name + (a.voice ? "" : " (no voice)");
    $("avatar").appendChild(o);
  }
}

function waitForIce(peer) {
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((done) => peer.addEventListener("icegatheringstatechange", () => {
    if (peer.iceGatheringState === "complete") done();
  }));
}

async function connect() {
  pc = new RTCPeerConnection();
  pc.addTransceiver("video", { direction: "recvonly" });
  // Audio both ways: the avatar's voice down, and the microphone up once it is switched
  // on (replaceTrack needs no new offer).
  audioSender = pc.addTransceiver("audio", { direction: "sendrecv" }).sender;
  const stream = new MediaStream();
  $("video").srcObject = stream;
  pc.ontrack = (e) => stream.addTrack(e.track);
  channel = pc.createDataChannel("control");
  channel.onmessage = (e) => {
    const ev = JSON.parse(e.data);
    if (ev.type === "speech_started" && sentAt !== null) {
      log("speech started " + Math.round(performance.now() - sentAt) + " ms after send");
      sentAt = null;
    } else {
      log(ev.type + (ev.message ? ": " + ev.message : ""));
    }
  };
  await pc.setLocalDescription(await pc.createOffer());
  await waitForIce(pc);
  const r = await fetch("/v1/sessions?avatar=" + encodeURIComponent($("avatar").value), {
    method: "POST", headers: { ...auth, "Content-Type": "application/sdp" },
    body: pc.localDescription.sdp });
  if (r.status !== 201) { log("connect failed: " + (await r.json()).error); return; }
  session = r.headers.get("Location");
  await pc.setRemoteDescription({ type: "answer", sdp: await r.text() });
  for (const id of ["say", "interrupt", "disconnect", "mic"]) $(id).disabled = false;
  $("connect").disabled = true;
  log("connected: " + session);
}

async function toggleMic() {
  if (mic) {
    mic.getTracks().forEach((t) => t.stop());
    mic = null;
    await audioSender.replaceTrack(null);
    $("mic").textContent = "Microphone on";
    log("microphone off");
    return;
  }
  mic = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true } });
  await audioSender.replaceTrack(mic.getAudioTracks()[0]);
  $("mic").textContent = "Microphone off";
  log("microphone on: the avatar speaks what you say");
}

async function disconnect() {
  if (session) await fetch(session, { method: "DELETE", headers: auth });
  if (mic) mic.getTracks().forEach((t) => t.stop());
  if (pc) pc.close();
  pc = channel = session = mic = audioSender = null;
  $("mic").textContent = "Microphone on";
  for (const id of ["say", "interrupt", "disconnect", "mic"]) $(id).disabled = true;
  $("connect").disabled = false;
  $("figures").textContent = "not connected";
}

function say() {
  const text = $("text").value.trim();
  if (!text || !channel || channel.readyState !== "open") return;
  sentAt = performance.now();
  channel.send(JSON.stringify({ type: "say", text }));
}

function interrupt() {
  if (channel && channel.readyState === "open") channel.send(JSON.stringify({ type: "interrupt" }));
}

async function figures() {
  if (!pc) return;
  const stats = await pc.getStats();
  stats.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") {
      const fps = s.framesPerSecond ?? (s.framesDecoded - lastFrames);
      lastFrames = s.framesDecoded;
      const jb = s.jitterBufferEmittedCount ? (1000 * s.jitterBufferDelay / s.jitterBufferEmittedCount) : 0;
      $("figures").textContent = "video " + (fps || 0).toFixed(1) + " fps, " + s.framesDecoded +
        " frames, jitter buffer " + jb.toFixed(0) + " ms";
    }
  });
}

$("connect").onclick = () => connect().catch((e) => log("error: " + e));
$("disconnect").onclick = () => disconnect();
$("say").onclick = say;
$("interrupt").onclick = interrupt;
$("mic").onclick = () => toggleMic().catch((e) => log("microphone: " + e));
setInterval(figures, 1000);
loadAvatars();

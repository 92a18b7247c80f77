// twincast page: connect over WebRTC, send text, interrupt, use the microphone, and show
// live figures. It drives the avatar through the embed client (/embed/twincast.js), like
// any other page would. The API token comes from the link's fragment (#token=...), which
// never reaches a server.
"use strict";

const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
const $ = (id) => document.getElementById(id);
let client = null, sentAt = null, lastFrames = 0;
// The session's peer connection and its path, for the browser test and the figures.
let pc = null, session = null;

function log(line) {
  const el = $("log");
  el.textContent = new Date().toISOString().slice(11, 23) + " " + line + "\n" + el.textContent;
}

async function loadAvatars() {
  const r = await fetch("/v1/avatars", { headers: { Authorization: "Bearer " + token } });
  if (!r.ok) { log("cannot list avatars: " + (await r.json()).error); return; }
  for (const a of (await r.json()).avatars) {
    const o = document.createElement("option");
    o.value = a.name; o.textContent = a.name + (a.voice ? "" : " (no voice)");
    $("avatar").appendChild(o);
  }
}

function buttons(connected) {
  for (const id of ["say", "interrupt", "disconnect", "mic"]) $(id).disabled = !connected;
  $("connect").disabled = connected;
}

async function connect() {
  client = new Twincast({ token, avatar: $("avatar").value, video: $("video") });
  client.on("*", (ev) => {
    if (ev.type === "speech_started" && sentAt !== null) {
      log("speech started " + Math.round(performance.now() - sentAt) + " ms after send");
      sentAt = null;
    } else if (ev.type !== "accepted") {
      log(ev.type + (ev.message ? ": " + ev.message : ""));
    }
  });
  try {
    session = await client.connect();
  } catch (e) {
    log("connect failed: " + e.message);
    client = null;
    return;
  }
  pc = client.pc;
  buttons(true);
}

async function disconnect() {
  if (client) await client.close();
  client = pc = session = null;
  $("mic").textContent = "Microphone on";
  buttons(false);
  $("figures").textContent = "not connected";
}

function say() {
  const text = $("text").value.trim();
  if (!text || !client) return;
  sentAt = performance.now();
  client.say(text).catch((e) => log(e.message));
}

function interrupt() {
  if (client) client.interrupt().catch((e) => log(e.message));
}

async function toggleMic() {
  const on = !client.mic;
  await client.useMicrophone(on);
  $("mic").textContent = on ? "Microphone off" : "Microphone on";
  log(on ? "microphone on: the avatar speaks what you say" : "microphone off");
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

// The embed example's script (a file of its own: the server's pages allow no inline script).
"use strict";
const avatar = new Twincast({
  server: "",  // this page's own server; from another site: "https://avatar.example.com"
  token: new URLSearchParams(location.hash.slice(1)).get("token") || "",
  video: document.getElementById("avatar"),
});
avatar.on("speech_started", (ev) => console.log("speaking", ev.stream_time));
avatar.connect().then(() => {
  document.getElementById("say").onclick = () =>
    avatar.say(document.getElementById("line").value);
  document.getElementById("stop").onclick = () => avatar.interrupt();
}).catch((e) => console.error(e));

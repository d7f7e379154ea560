// The page: the microphone to a streaming route, results as they come, and the actors panel.
// No build step and nothing from another host: every file is served by the front.

const $ = (id) => document.getElementById(id);
const RECONNECT_S = [1, 2, 4, 8];
// Closes that refuse the request itself (PROTOCOL.md: 1008 policy, a wrong token first of all;
// 1003, 1007, 1009 bad input): the same request would be refused again, so the page stops
// instead of reconnecting with it forever. Other closes (a dropped connection, a failed or
// draining server) are worth retrying.
const REFUSED = new Set([1003, 1007, 1008, 1009]);

let ws = null;
let audio = null; // { ctx, source, node, stream }
let wanted = false; // the user pressed Start and not Stop: reconnect when the socket drops
let attempt = 0;

function setStatus(text, bad = false) {
  $("status").textContent = text;
  $("status").classList.toggle("bad", bad);
}

function fmt(t) {
  return t.toFixed(2);
}

function label(msg) {
  if (typeof msg.text === "string") return msg.text || "(nothing recognised)";
  const skip = new Set(["type", "channel", "start_time", "end_time", "is_final"]);
  return Object.entries(msg).filter(([k]) => !skip.has(k)).map(([k, v]) => `${k} ${JSON.stringify(v)}`).join(", ");
}

function onMessage(event) {
  const msg = JSON.parse(event.data);
  if (msg.type === "active" || msg.type === "inactive") {
    $("activity").classList.toggle("on", msg.type === "active");
  } else if (msg.type === "segment" && msg.is_final === false) {
    $("interim-line").textContent = `${fmt(msg.start_time)}-${fmt(msg.end_time)} ${label(msg)}`;
  } else if (msg.type === "segment") {
    const li = document.createElement("li");
    li.innerHTML = `<span class="t"></span><span class="x"></span>`;
    li.querySelector(".t").textContent = `${fmt(msg.start_time)}-${fmt(msg.end_time)}`;
    li.querySelector(".x").textContent = label(msg);
    li.dataset.final = "true";
    $("finals").appendChild(li);
    $("interim-line").textContent = "";
  } else if (msg.type === "error" || msg.type === "warning") {
    const div = document.createElement("div");
    div.textContent = `${msg.type}: ${msg.message}`;
    $("errors").appendChild(div);
  }
}

async function openMicrophone() {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: false } });
  const ctx = new AudioContext();
  await ctx.audioWorklet.addModule("/web/worklet.js");
  const source = ctx.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(ctx, "pcm-capture");
  source.connect(node);
  return { ctx, source, node, stream };
}

function closeMicrophone() {
  if (!audio) return;
  audio.source.disconnect();
  audio.node.port.onmessage = null;
  audio.stream.getTracks().forEach((t) => t.stop());
  audio.ctx.close();
  audio = null;
}

function connect() {
  const route = $("route").value;
  const token = $("token").value;
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/v1/${route}`;
  // Browsers cannot set headers on a WebSocket handshake: the token travels as a subprotocol.
  try {
    ws = token ? new WebSocket(url, ["token", token]) : new WebSocket(url);
  } catch {
    // A subprotocol is an HTTP token. The browser's own message quotes the value: not shown.
    giveUp("this token cannot be sent by a browser: a WebSocket subprotocol allows letters, digits and " +
      "!#$%&'*+-.^_`|~ only");
    return;
  }
  ws.binaryType = "arraybuffer";
  setStatus("connecting");
  ws.onopen = () => {
    attempt = 0;
    setStatus(`streaming to ${route} at ${audio.ctx.sampleRate} Hz`);
    ws.send(JSON.stringify({
      request: "start", interim_results: $("interim").checked,
      format: { channels: 1, sample_rate: audio.ctx.sampleRate, bit_depth: 16, is_float: false },
    }));
    audio.node.port.onmessage = (e) => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(e.data); };
  };
  ws.onmessage = onMessage;
  ws.onclose = (e) => {
    if (audio) audio.node.port.onmessage = null;
    $("activity").classList.remove("on");
    if (wanted && REFUSED.has(e.code)) {
      giveUp(`closed (${e.code}${e.reason ? ": " + e.reason : ""}), not reconnecting`);
      return;
    }
    if (!wanted) {
      setStatus(e.code === 1000 ? "done" : `closed (${e.code})`);
      return;
    }
    const wait = RECONNECT_S[Math.min(attempt, RECONNECT_S.length - 1)];
    attempt += 1;
    setStatus(`disconnected (code ${e.code}${e.reason ? ": " + e.reason : ""}): reconnecting in ${wait} s`, true);
    setTimeout(() => { if (wanted) connect(); }, wait * 1000);
  };
}

async function start() {
  $("start").disabled = true;
  try {
    audio = await openMicrophone();
  } catch (err) {
    setStatus(`no microphone: ${err.message}`, true);
    $("start").disabled = false;
    return;
  }
  wanted = true;
  $("stop").disabled = false;
  connect();
}

function stop() {
  wanted = false;
  $("stop").disabled = true;
  $("start").disabled = false;
  if (ws && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ request: "stop", disconnect: true })); // the server sends the finals, then closes
  }
  closeMicrophone();
}

function giveUp(why) {
  stop(); // the socket is closed or was never made: this only turns the microphone off and resets the buttons
  setStatus(why, true);
}

// -- the actors panel: CPU and RSS per process over the last minute ---------------------------

const history = new Map(); // "name@pid" -> { cpu: [], rss: [] }
const POINTS = 60;

function spark(values, min, max, color) {
  // The last minute, newest on the right: a point a second.
  const c = document.createElement("canvas");
  c.width = 120;
  c.height = 24;
  const g = c.getContext("2d");
  g.strokeStyle = color;
  g.beginPath();
  const offset = POINTS - values.length;
  values.forEach((v, i) => {
    const x = ((offset + i) / (POINTS - 1)) * c.width;
    const y = c.height - 1 - ((v - min) / Math.max(max - min, 1e-9)) * (c.height - 2);
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
  return c;
}

function cell(tr, content) {
  const td = document.createElement("td");
  if (content instanceof Node) td.append(content); else td.textContent = String(content);
  tr.appendChild(td);
  return td;
}

async function refreshActors() {
  let response;
  try {
    response = await fetch("/api/v1/actors");
  } catch {
    $("actors-note").textContent = "(the server is not answering)";
    return;
  }
  if (response.status === 403) {
    $("actors-note").textContent = "(this panel answers loopback clients only: the server's admin endpoints are " +
      "private unless [server] admin_public = true)";
    return;
  }
  $("actors-note").textContent = "";
  const table = await response.json();
  const body = $("actors").querySelector("tbody");
  body.replaceChildren();
  for (const a of table.actors) {
    // Per row and process: a restarted process starts a new line, and the rows of actors that
    // share a process (a shard's front, decoder and segmenter) each add one point a second.
    const key = `${a.name}@${a.pid}`;
    const h = history.get(key) || { cpu: [], rss: [] };
    if (a.cpu_percent !== null && a.cpu_percent !== undefined) h.cpu.push(a.cpu_percent);
    if (a.rss_bytes) h.rss.push(a.rss_bytes / 2 ** 20);
    h.cpu = h.cpu.slice(-POINTS);
    h.rss = h.rss.slice(-POINTS);
    history.set(key, h);
    const tr = document.createElement("tr");
    tr.dataset.name = a.name;
    cell(tr, a.name);
    cell(tr, a.pid ?? "-");
    cell(tr, a.state);
    const cpu = cell(tr, spark(h.cpu, 0, Math.max(100, ...h.cpu), "#36c"));
    cpu.append(` ${(a.cpu_percent ?? 0).toFixed(0)}`);
    const rss = cell(tr, spark(h.rss, Math.min(...h.rss) * 0.9, Math.max(...h.rss), "#c63"));
    rss.append(` ${((a.rss_bytes ?? 0) / 2 ** 20).toFixed(0)} MiB`);
    cell(tr, a.restarts);
    cell(tr, a.last_exit ?? "-");
    body.appendChild(tr);
  }
}

$("start").onclick = start;
$("stop").onclick = stop;
refreshActors();
setInterval(refreshActors, 1000);

// The nsbox playground and status page: a client of the public API, same-origin, with the
// API key (when the server has keys) kept in sessionStorage only. Everything a run returns
// is put in the page as text (textContent), as images from data: URLs, or, when it is HTML
// or a chart, in a sandboxed frame (/ui/frame.html) that cannot reach the page.
"use strict";

const KEY_ITEM = "nsbox.apiKey";
const $ = (id) => document.getElementById(id);
const state = {
  session: null, // {id, ttl_seconds, expires_at}
  running: false,
  cellCount: 0,
  keysNeeded: false,
  samples: [], // {t, runs, durSum, durCount}
  metricsAllowed: true,
  statusTimer: null,
  view: "play",
  // The end of the queue of the page's own calls and file requests to its session.
  sessionTurn: Promise.resolve(),
};

// ---------- the API ----------

function apiKey() {
  return sessionStorage.getItem(KEY_ITEM) || "";
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = apiKey();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function errorOf(response) {
  let message = response.status + " " + response.statusText;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) {
    /* not JSON: keep the status line */
  }
  if (response.status === 401) askForKey(message);
  return new ApiError(response.status, message);
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const response = await fetch(path, opts);
  if (!response.ok) throw await errorOf(response);
  return response;
}

async function apiJson(path, options) {
  const response = await api(path, options);
  return response.status === 204 ? null : response.json();
}

// The server runs one call or file request at a time in a session and refuses another
// meanwhile (409, "session busy"). The page's own requests to its session (runs, uploads,
// file lists, downloads) wait their turn here instead, and so also end in the order they
// were made. Ending a session does not wait: it stops whatever runs.
function inSession(task) {
  const turn = state.sessionTurn.then(task);
  state.sessionTurn = turn.catch(() => {});
  return turn;
}

// ---------- the key ----------

function askForKey(message) {
  state.keysNeeded = true;
  $("key-panel").hidden = false;
  $("key-error").textContent = message || "";
  $("key-input").focus();
}

async function useKey(event) {
  event.preventDefault();
  sessionStorage.setItem(KEY_ITEM, $("key-input").value.trim());
  $("key-input").value = "";
  $("key-error").textContent = "";
  await start();
}

function forgetKey() {
  sessionStorage.removeItem(KEY_ITEM);
  $("forget-key").hidden = true;
  askForKey("");
}

// ---------- views ----------

function show(view) {
  state.view = view;
  $("play").hidden = view !== "play";
  $("status").hidden = view !== "status";
  $("tab-play").setAttribute("aria-pressed", String(view === "play"));
  $("tab-status").setAttribute("aria-pressed", String(view === "status"));
  if (view === "status") refreshStatus();
}

async function start() {
  try {
    const status = await apiJson("/v1/status");
    $("key-panel").hidden = true;
    $("forget-key").hidden = !apiKey();
    renderStatus(status);
    show(state.view);
    if (!state.statusTimer) {
      state.statusTimer = setInterval(refreshStatus, 5000);
      sampleMetrics();
    }
  } catch (e) {
    if (e.status !== 401) {
      $("play").hidden = false;
      $("session-info").textContent = "The server did not answer: " + e.message;
    }
  }
}

// ---------- the editor ----------

function updateGutter() {
  const lines = $("code").value.split("\n").length;
  let text = "";
  for (let i = 1; i <= lines; i++) text += i + "\n";
  $("gutter").textContent = text;
}

let escaped = false;
function editorKeys(event) {
  const area = event.target;
  if (event.key === "Escape") {
    // The next Tab leaves the editor, so keyboard users are never trapped in it.
    escaped = true;
    return;
  }
  if (event.key === "Tab" && !escaped && !event.altKey && !event.ctrlKey && !event.metaKey) {
    event.preventDefault();
    const { selectionStart: s, selectionEnd: e, value } = area;
    if (event.shiftKey) {
      const lineStart = value.lastIndexOf("\n", s - 1) + 1;
      const head = value.slice(lineStart, lineStart + 4);
      const n = head.length - head.replace(/^ {1,4}/, "").length;
      if (n > 0) {
        area.setRangeText("", lineStart, lineStart + n, "preserve");
        area.selectionStart = area.selectionEnd = Math.max(lineStart, s - n);
      }
    } else {
      area.setRangeText("    ", s, e, "end");
    }
    updateGutter();
    return;
  }
  if (!["Shift", "Control", "Alt", "Meta"].includes(event.key)) escaped = false;
}

// ---------- running ----------

function newCell(code) {
  const node = $("cell-template").content.firstElementChild.cloneNode(true);
  state.cellCount += 1;
  node.querySelector(".cell-title").textContent = state.session
    ? "Cell " + state.cellCount + " (session)"
    : "Run " + state.cellCount;
  const listing = node.querySelector(".cell-code");
  code.split("\n").forEach((line, i) => {
    const row = document.createElement("span");
    row.className = "line";
    row.dataset.line = String(i + 1);
    const number = document.createElement("span");
    number.className = "ln";
    number.textContent = String(i + 1);
    row.append(number, document.createTextNode(line), document.createTextNode("\n"));
    listing.appendChild(row);
  });
  const cells = $("cells");
  if (state.session) cells.appendChild(node);
  else {
    cells.replaceChildren(node);
  }
  return {
    node,
    stream: node.querySelector(".stream"),
    outputs: node.querySelector(".outputs"),
    shownImages: new Map(),
    displays: 0,
  };
}

function appendText(cell, kind, text) {
  cell.stream.hidden = false;
  const last = cell.stream.lastElementChild;
  if (last && last.className === kind) last.textContent += text;
  else {
    const span = document.createElement("span");
    span.className = kind;
    span.textContent = text;
    cell.stream.appendChild(span);
  }
}

function showImage(cell, mime, base64, alt) {
  const shown = cell.shownImages.get(base64);
  if (shown) {
    // A figure comes as a plot and as a result: shown once, named by the better of both.
    if (alt && alt.startsWith("figure")) shown.alt = alt;
    return;
  }
  const img = document.createElement("img");
  cell.shownImages.set(base64, img);
  img.className = "plot";
  img.alt = alt || "figure";
  img.src = "data:" + mime + ";base64," + base64;
  cell.outputs.appendChild(img);
}

function imageMime(format) {
  return { png: "image/png", jpeg: "image/jpeg", jpg: "image/jpeg", svg: "image/svg+xml" }[format] || "image/png";
}

/// A frame of /ui/frame.html drawing untrusted content; it sizes itself by message.
function sandboxedFrame(cell, message, title) {
  const frame = document.createElement("iframe");
  frame.className = "result-frame";
  frame.title = title;
  frame.setAttribute("sandbox", "allow-scripts");
  frame.setAttribute("referrerpolicy", "no-referrer");
  frame.src = "/ui/frame.html";
  frames.set(frame, message);
  cell.outputs.appendChild(frame);
  return frame;
}

const frames = new Map(); // iframe -> the message it draws
window.addEventListener("message", (event) => {
  for (const [frame, message] of frames) {
    if (event.source !== frame.contentWindow) continue;
    const data = event.data || {};
    if (data.nsboxFrameReady) frame.contentWindow.postMessage(message, "*");
    if (typeof data.nsboxFrameHeight === "number" && isFinite(data.nsboxFrameHeight)) {
      frame.style.height = Math.min(Math.max(data.nsboxFrameHeight + 4, 40), 1600) + "px";
    }
  }
});

function preText(cell, text, className) {
  const pre = document.createElement("pre");
  pre.className = className || "text-result";
  pre.textContent = text;
  cell.outputs.appendChild(pre);
}

function textOf(value) {
  return Array.isArray(value) ? value.join("") : String(value);
}

/// A Vega-Lite spec as text and its inline data as a table: nsbox ships no Vega runtime.
function vegaSummary(cell, spec) {
  const box = document.createElement("div");
  box.className = "vega";
  const enc = spec.encoding || {};
  const parts = Object.keys(enc).map((channel) => {
    const e = enc[channel] || {};
    return channel + ": " + (e.field || e.aggregate || e.value || "?") + (e.type ? " (" + e.type + ")" : "");
  });
  const mark = typeof spec.mark === "string" ? spec.mark : (spec.mark && spec.mark.type) || "layered";
  const title = typeof spec.title === "string" ? spec.title + " — " : "";
  const head = document.createElement("p");
  head.textContent = "Vega-Lite chart: " + title + mark + " mark; " + (parts.join(", ") || "no encoding");
  box.appendChild(head);
  let values = spec.data && spec.data.values;
  if (!values && spec.datasets) values = spec.datasets[Object.keys(spec.datasets)[0]];
  if (Array.isArray(values) && values.length) {
    box.appendChild(table(values.slice(0, 20)));
    if (values.length > 20) {
      const more = document.createElement("p");
      more.textContent = values.length - 20 + " more rows";
      box.appendChild(more);
    }
  }
  cell.outputs.appendChild(box);
}

function table(rows) {
  const t = document.createElement("table");
  const columns = Object.keys(rows[0] || {});
  const head = t.createTHead().insertRow();
  for (const c of columns) {
    const th = document.createElement("th");
    th.textContent = c;
    head.appendChild(th);
  }
  const body = t.createTBody();
  for (const r of rows) {
    const tr = body.insertRow();
    for (const c of columns) tr.insertCell().textContent = String(r[c]);
  }
  return t;
}

/// One nbformat output, by the richest MIME type the page can show safely.
function renderOutput(cell, output) {
  const data = output.data || {};
  cell.displays += 1;
  const vega = Object.keys(data).find((m) => /^application\/vnd\.vegalite\.v\d+\+json$/.test(m));
  if (data["application/vnd.plotly.v1+json"]) {
    sandboxedFrame(cell, { kind: "plotly", figure: data["application/vnd.plotly.v1+json"] }, "Plotly chart");
  } else if (vega) {
    vegaSummary(cell, data[vega]);
  } else if (data["image/png"] || data["image/jpeg"]) {
    const mime = data["image/png"] ? "image/png" : "image/jpeg";
    showImage(cell, mime, textOf(data[mime]).replace(/\s/g, ""), chartAlt(data));
  } else if (data["text/html"]) {
    sandboxedFrame(cell, { kind: "html", html: textOf(data["text/html"]) }, "HTML result");
  } else if (data["image/svg+xml"]) {
    const img = document.createElement("img");
    img.className = "plot";
    img.alt = "SVG result";
    img.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(textOf(data["image/svg+xml"]));
    cell.outputs.appendChild(img);
  } else if (data["text/markdown"]) {
    preText(cell, textOf(data["text/markdown"]));
  } else if (data["application/json"]) {
    preText(cell, JSON.stringify(data["application/json"], null, 2));
  } else if (data["text/plain"] !== undefined) {
    preText(cell, textOf(data["text/plain"]));
  }
}

/// A figure's alt text from nsbox's chart summary, so the figure is not an unnamed image.
function chartAlt(data) {
  const chart = data["application/vnd.nsbox.chart+json"];
  if (!chart || !Array.isArray(chart.axes)) return "figure";
  const axes = chart.axes.map((a) => [a.type, a.title, a.x_label && "x: " + a.x_label, a.y_label && "y: " + a.y_label].filter(Boolean).join(", "));
  return "figure" + (chart.title ? " " + chart.title : "") + ": " + axes.join("; ");
}

function markLine(cell, line, className, note) {
  const row = cell.node.querySelector('.cell-code .line[data-line="' + line + '"]');
  if (!row) return;
  row.classList.add(className);
  if (note) row.title = note;
}

function finish(cell, response) {
  const node = cell.node;
  if (cell.displays === 0 && Array.isArray(response.results)) {
    response.results.forEach((o) => renderOutput(cell, o));
  }
  (response.plots || []).forEach((p) => showImage(cell, imageMime(p.format), p.content_base64, p.filename));
  if (response.violations && response.violations.length) {
    const box = node.querySelector(".violations");
    box.hidden = false;
    const title = document.createElement("p");
    title.textContent = "The scanner refused this code:";
    const list = document.createElement("ul");
    for (const v of response.violations) {
      const li = document.createElement("li");
      li.textContent = v;
      list.appendChild(li);
    }
    box.append(title, list);
    // Each rule against the line it fired at (nsbox's `violation_lines`).
    for (const detail of response.violation_lines || []) {
      markLine(cell, detail.line, "violation-line", detail.name);
      const row = node.querySelector('.cell-code .line[data-line="' + detail.line + '"]');
      if (!row) continue;
      let tag = row.querySelector(".line-note");
      if (!tag) {
        tag = document.createElement("span");
        tag.className = "line-note";
        tag.textContent = "  ← " + detail.name;
        row.insertBefore(tag, row.lastChild);
      } else {
        tag.textContent += "; " + detail.name;
      }
    }
  }
  const stderr = response.stderr || "";
  const ended = stderr.split("\n").filter((l) => l.startsWith("Execution failed: ")).pop();
  if (ended) {
    const box = node.querySelector(".limit");
    box.hidden = false;
    box.textContent = "Stopped by a limit: " + ended.slice("Execution failed: ".length);
  }
  if (response.error) {
    // The traceback is shown once, in the error box, not again in the streamed stderr.
    for (const span of cell.stream.querySelectorAll(".stderr")) {
      const at = span.textContent.lastIndexOf("Traceback (most recent call last):");
      if (at >= 0) span.textContent = span.textContent.slice(0, at);
    }
    cell.stream.hidden = !cell.stream.textContent.trim();
    const box = node.querySelector(".error");
    box.hidden = false;
    const head = document.createElement("p");
    head.className = "error-head";
    head.textContent =
      response.error.ename + ": " + response.error.evalue + (response.error.lineno ? " (line " + response.error.lineno + ")" : "");
    const tb = document.createElement("pre");
    tb.textContent = (response.error.traceback || []).join("\n");
    box.append(head, tb);
    if (response.error.lineno) markLine(cell, response.error.lineno, "error-line", response.error.ename);
  }
  const ok = response.success && response.exit_code === 0;
  setCellState(cell, (ok ? "done" : "failed") + " · exit " + response.exit_code + " · " + response.execution_time + " s");
  node.classList.add(ok ? "ok" : "failed");
  if (response.session && response.session.state === "ended") {
    sessionEnded("the session ended: " + (response.session.reason || ""));
  }
}

function setCellState(cell, text) {
  cell.node.querySelector(".cell-state").textContent = text;
}

function failCell(cell, message) {
  const box = cell.node.querySelector(".limit");
  box.hidden = false;
  box.textContent = message;
  cell.node.classList.add("failed");
  setCellState(cell, "not run");
}

/// Reads a text/event-stream body, calling `onEvent(name, data)` per event.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

async function run() {
  if (state.running) return;
  const code = $("code").value;
  const cell = newCell(code);
  state.running = true;
  $("run").disabled = true;
  setCellState(cell, "running…");
  const body = { lang: "python", code, results: true };
  if (state.session) body.session_id = state.session.id;
  let finished = false;
  const onEvent = (name, data) => {
    if (name === "stdout" || name === "stderr") appendText(cell, name, data.text);
    else if (name === "plot") showImage(cell, imageMime(data.format), data.content_base64, data.filename);
    else if (name === "display") renderOutput(cell, data);
    else if (name === "result") {
      finished = true;
      finish(cell, data);
    } else if (name === "error") {
      finished = true;
      failCell(cell, (data.error && data.error.message) || "the run failed");
    }
  };
  // The run holds its session until the stream ends.
  const stream = async () => {
    const response = await api("/v1/tools/code", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify(body),
    });
    await readEvents(response, onEvent);
  };
  try {
    await (body.session_id ? inSession(stream) : stream());
    if (!finished) failCell(cell, "the stream ended before the run's result");
  } catch (e) {
    failCell(cell, e.message);
    if (e.status === 404 && state.session) sessionEnded("the session is gone");
  } finally {
    state.running = false;
    $("run").disabled = false;
    if (state.session) {
      refreshSession();
      refreshFiles();
    }
  }
}

// ---------- sessions ----------

async function newSession() {
  try {
    const info = await apiJson("/v1/sessions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: "{}",
    });
    state.session = info;
    state.cellCount = 0;
    $("cells").replaceChildren();
    $("new-session").hidden = true;
    $("end-session").hidden = false;
    $("files-panel").hidden = false;
    showSession();
    refreshFiles();
  } catch (e) {
    $("session-info").textContent = "Could not create a session: " + e.message;
  }
}

function showSession() {
  const s = state.session;
  if (!s) return;
  const left = Math.max(0, Math.round((Date.parse(s.expires_at) - Date.now()) / 1000));
  const mm = Math.floor(left / 60);
  const ss = String(left % 60).padStart(2, "0");
  $("session-info").textContent =
    "Session " + s.id + " · idle TTL " + s.ttl_seconds + " s · ends in " + mm + ":" + ss + " unless used";
}

// Whether the page still shows session `id`. An answer about a session ended or replaced
// while it was on its way is dropped: drawn, it would bring that session back.
function showsSession(id) {
  return state.session !== null && state.session.id === id;
}

async function refreshSession() {
  if (!state.session) return;
  const id = state.session.id;
  try {
    const info = await apiJson("/v1/sessions/" + encodeURIComponent(id));
    if (!showsSession(id)) return;
    state.session = info;
    if (info.state !== "active") sessionEnded("the session ended");
    else showSession();
  } catch (e) {
    if (e.status === 404 && showsSession(id)) sessionEnded("the session is gone (expired or ended)");
  }
}

function sessionEnded(message) {
  state.session = null;
  $("new-session").hidden = false;
  $("end-session").hidden = true;
  $("files-panel").hidden = true;
  $("session-info").textContent = message;
}

async function endSession() {
  if (!state.session) return;
  const id = state.session.id;
  try {
    await api("/v1/sessions/" + encodeURIComponent(id), { method: "DELETE" });
    sessionEnded("Session " + id + " ended.");
  } catch (e) {
    $("session-info").textContent = "Could not end the session: " + e.message;
  }
}

function filePath(path) {
  return path.split("/").map(encodeURIComponent).join("/");
}

async function upload(files) {
  if (!state.session) return;
  const id = state.session.id;
  for (const file of files) {
    try {
      await inSession(() =>
        api("/v1/sessions/" + encodeURIComponent(id) + "/files/" + filePath(file.name), {
          method: "PUT",
          headers: { "Content-Type": "application/octet-stream" },
          body: file,
        }),
      );
    } catch (e) {
      $("session-info").textContent = "Upload of " + file.name + " failed: " + e.message;
    }
  }
  refreshFiles();
}

async function refreshFiles() {
  if (!state.session) return;
  const id = state.session.id;
  try {
    const { files } = await inSession(() => apiJson("/v1/sessions/" + encodeURIComponent(id) + "/files"));
    if (!showsSession(id)) return;
    const list = $("files");
    list.replaceChildren();
    for (const f of files) {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "Download " + f.path;
      button.addEventListener("click", () => download(f.path));
      const size = document.createElement("span");
      size.className = "hint";
      size.textContent = " " + f.size + " bytes";
      li.append(button, size);
      list.appendChild(li);
    }
    if (!files.length) list.textContent = "No files yet.";
  } catch (_) {
    /* the session may be gone; refreshSession says so */
  }
}

async function download(path) {
  const id = state.session.id;
  try {
    const response = await inSession(() =>
      api("/v1/sessions/" + encodeURIComponent(id) + "/files/" + filePath(path)),
    );
    const blob = await response.blob();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = path.split("/").pop();
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (e) {
    $("session-info").textContent = "Download of " + path + " failed: " + e.message;
  }
}

// ---------- status ----------

function dl(target, pairs) {
  target.replaceChildren();
  for (const [k, v] of pairs) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    target.append(dt, dd);
  }
}

function renderStatus(s) {
  dl($("status-load"), [
    ["Ready", s.ready ? "yes" : "warming up"],
    ["Seen as", s.scope === "server" ? "the whole server" : "this key's own runs"],
    ["Running", s.running + " of " + s.max_running],
    ["Queued", String(s.queued)],
    ["Active sessions", String(s.sessions.active)],
  ].concat(s.sessions.created !== undefined ? [["Sessions created / ended", s.sessions.created + " / " + s.sessions.ended]] : []));
  const templates = $("status-templates");
  templates.replaceChildren();
  for (const t of s.warm_templates) {
    const li = document.createElement("li");
    li.textContent = t;
    templates.appendChild(li);
  }
  if (!s.warm_templates.length) templates.textContent = "None (cold runs).";
  const iso = s.isolation;
  dl($("status-isolation"), [
    ["Namespaces", iso.namespaces.join(", ")],
    ["cgroup", iso.cgroup || "none"],
    ["seccomp", iso.seccomp ? "on" : "off"],
    ["rlimits", iso.rlimits ? "on" : "off"],
    ["Warm starts", iso.warm ? "yes" : "no"],
    ["Id mapping", iso.id_mapping.mode],
  ].concat(iso.warnings.map((w) => ["Warning", w])));
  $("status-updated").textContent = "Updated " + new Date().toLocaleTimeString() + " (every 5 s)";
}

async function refreshStatus() {
  if (state.keysNeeded && !apiKey()) return;
  try {
    renderStatus(await apiJson("/v1/status"));
  } catch (_) {
    /* the next tick tries again */
  }
  sampleMetrics();
}

function metricSum(text, name) {
  let sum = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith(name + "{") || line.startsWith(name + " ")) {
      const v = parseFloat(line.slice(line.lastIndexOf(" ") + 1));
      if (isFinite(v)) sum += v;
    }
  }
  return sum;
}

async function sampleMetrics() {
  if (!state.metricsAllowed) return;
  try {
    const response = await fetch("/metrics", { headers: headers() });
    if (response.status === 403 || response.status === 401) {
      state.metricsAllowed = response.status !== 403;
      $("chart-note").textContent =
        "The chart needs /metrics, which shows every key's runs and so needs an operator key; this key is not one.";
      return;
    }
    const text = await response.text();
    state.samples.push({
      t: Date.now(),
      runs: metricSum(text, "nsbox_runs_total"),
      durSum: metricSum(text, "nsbox_run_duration_seconds_sum"),
      durCount: metricSum(text, "nsbox_run_duration_seconds_count"),
    });
    while (state.samples.length && state.samples[0].t < Date.now() - 600000) state.samples.shift();
    drawChart();
  } catch (_) {
    /* the next tick tries again */
  }
}

function drawChart() {
  const points = [];
  for (let i = 1; i < state.samples.length; i++) {
    const a = state.samples[i - 1];
    const b = state.samples[i];
    const dt = (b.t - a.t) / 1000;
    if (dt <= 0) continue;
    const runs = Math.max(0, b.runs - a.runs);
    const n = b.durCount - a.durCount;
    points.push({ t: b.t, rate: runs / dt, latency: n > 0 ? ((b.durSum - a.durSum) / n) * 1000 : null });
  }
  const svgNS = "http://www.w3.org/2000/svg";
  const W = 600, H = 160, P = 30;
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  svg.setAttribute("role", "img");
  const last = points[points.length - 1];
  svg.setAttribute(
    "aria-label",
    last ? "runs per second now " + last.rate.toFixed(2) + ", mean latency " + (last.latency === null ? "none" : last.latency.toFixed(0) + " ms") : "no samples yet",
  );
  const now = Date.now();
  const x = (t) => P + ((t - (now - 600000)) / 600000) * (W - 2 * P);
  const maxRate = Math.max(1, ...points.map((p) => p.rate));
  const maxLat = Math.max(10, ...points.map((p) => p.latency || 0));
  const line = (key, max, cls) => {
    const d = points
      .filter((p) => p[key] !== null)
      .map((p, i) => (i ? "L" : "M") + x(p.t).toFixed(1) + " " + (H - P - (p[key] / max) * (H - 2 * P)).toFixed(1))
      .join(" ");
    const path = document.createElementNS(svgNS, "path");
    path.setAttribute("d", d || "M0 0");
    path.setAttribute("class", cls);
    svg.appendChild(path);
  };
  const axis = document.createElementNS(svgNS, "path");
  axis.setAttribute("d", "M" + P + " " + (H - P) + " H" + (W - P));
  axis.setAttribute("class", "axis");
  svg.appendChild(axis);
  line("rate", maxRate, "rate");
  line("latency", maxLat, "latency");
  const label = (text, xx, yy, cls) => {
    const t = document.createElementNS(svgNS, "text");
    t.setAttribute("x", xx);
    t.setAttribute("y", yy);
    t.setAttribute("class", cls);
    t.textContent = text;
    svg.appendChild(t);
  };
  label("runs/s (max " + maxRate.toFixed(1) + ")", P, 14, "rate-label");
  label("mean latency ms (max " + maxLat.toFixed(0) + ")", W / 2, 14, "latency-label");
  label("−10 min", P, H - 8, "axis-label");
  label("now", W - P - 20, H - 8, "axis-label");
  $("chart").replaceChildren(svg);
  if (state.metricsAllowed) {
    $("chart-note").textContent = last
      ? "Now: " + last.rate.toFixed(2) + " runs/s, mean run " + (last.latency === null ? "—" : last.latency.toFixed(0) + " ms") + " (from /metrics every 5 s)"
      : "Sampling /metrics every 5 s…";
  }
}

// ---------- wiring ----------

function wire() {
  $("key-form").addEventListener("submit", useKey);
  $("forget-key").addEventListener("click", forgetKey);
  $("tab-play").addEventListener("click", () => show("play"));
  $("tab-status").addEventListener("click", () => show("status"));
  $("run").addEventListener("click", run);
  $("new-session").addEventListener("click", newSession);
  $("end-session").addEventListener("click", endSession);
  $("refresh-files").addEventListener("click", refreshFiles);
  const code = $("code");
  code.addEventListener("keydown", editorKeys);
  code.addEventListener("input", updateGutter);
  code.addEventListener("scroll", () => {
    $("gutter").scrollTop = code.scrollTop;
  });
  $("upload").addEventListener("change", (e) => upload(e.target.files));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    upload(e.dataTransfer.files);
  });
  // Ctrl/Cmd+Enter runs the editor's code from anywhere on the playground.
  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter" && state.view === "play" && !$("play").hidden) {
      event.preventDefault();
      run();
    }
  });
  setInterval(showSession, 1000);
  updateGutter();
  start();
}

wire();

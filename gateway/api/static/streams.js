// Live streams: start one (POST /v1/streams), follow its Server-Sent Events (GET /v1/streams/{id}/events, read with
// fetch() and a stream reader: EventSource can't send the x-api-key header) and draw each analysed frame's results on
// a canvas of the frame's size (the stream's `width` and `height`: events carry results, not pixels) with app.js's
// draw(), beside the latest frame's rows; the stream's state and rates from GET /v1/streams/{id} every second; the
// key's streams listed, Stop deletes one (DELETE /v1/streams/{id}). API errors are shown as the page shows them
// (describeFailure, app.js). Every value from the server is put in the page as text.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const key = () => $("api-key").value.trim();
  const POLL_MS = 1000;
  const ROWS_SHOWN = 50;  // of the latest frame; the canvas shows them all
  const BACKGROUND = "#3a3f4b";  // the canvas stands for the frame, whose pixels never reach the page
  let watching = null;  // the stream followed now: {id, controller, timer, size: [w, h] | null, latest, events}

  const { cell, button, errorBox, followModels } = window.adminPage;  // keys.js
  const { show: showError, clear: clearError } = errorBox("stream-error");

  function say(text) { $("streams-status").textContent = text; }

  function failure(title, detail, status) {
    const err = new Error(`${title}: ${detail}`);
    Object.assign(err, { title, detail, status });
    return err;
  }

  const report = (err) => showError(err.title || "Error", err.detail || err.message);

  /** The API's JSON answer; else an Error carrying the page's usual title ("404 Not Found") and the API's message. */
  async function call(method, path, body) {
    const headers = { "x-api-key": key(), accept: "application/json" };
    if (body !== undefined) headers["content-type"] = "application/json";
    let response;
    try {
      response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (err) {
      throw failure("Could not reach the server", `${method} ${path} failed: ${err.message}`, 0);
    }
    const text = await response.text();
    let json = null;
    try { json = JSON.parse(text); } catch (_) { /* described below */ }
    if (!response.ok || !json || json.success !== true) {
      const [title, message] = describeFailure(response, json, text);
      throw failure(`${method} ${path}: ${title}`, message, response.status);
    }
    return json;
  }

  const path = (id, tail) => `/v1/streams/${encodeURIComponent(id)}${tail || ""}`;

  // ---------------------------------------------------------------- the key's streams

  /** A stream's cells in the list, but for the buttons. */
  const figures = (s) => [s.id, s.state + (s.last_error ? `: ${s.last_error}` : ""), s.source, s.model,
    String(s.processed_fps), String(s.lag_ms), String(s.frames_dropped)];

  async function list() {
    try {
      const body = await call("GET", "/v1/streams");
      const tbody = $("streams-table").querySelector("tbody");
      tbody.replaceChildren();
      for (const s of body.data) {
        const row = document.createElement("tr");
        row.dataset.streamId = s.id;
        for (const text of figures(s)) cell(row, text);
        const actions = cell(row, "");
        actions.append(button("Watch", () => { clearError(); watch(s); }), button("Stop", () => stop(s.id), "danger"));
        tbody.append(row);
      }
      $("streams-table").hidden = false;
      say(body.data.length ? body.message : "No stream runs on this key: start one above.");
    } catch (err) {
      report(err);
    }
  }

  async function start(event) {
    event.preventDefault();
    clearError();
    if (!key()) { showError("An API key is needed", "Enter your API key above (`make key` prints one)."); return; }
    const source = $("stream-source").value.trim();
    if (!source) {
      showError("No source", "Enter the stream's URL: rtsp://, rtmp://, or http(s):// (an HLS playlist or MJPEG).");
      return;
    }
    const body = { source, model: $("stream-model").value, track: $("stream-track").checked };
    for (const name of ["fps", "confidence", "size"]) {
      const value = $(`stream-${name}`).value.trim();
      if (value) body[name] = Number(value);
    }
    const submit = $("stream-start");
    submit.disabled = true;
    try {
      const made = await call("POST", "/v1/streams", body);
      await list();
      say(made.message);
      watch(made.data);
    } catch (err) {
      report(err);
    } finally {
      submit.disabled = false;
    }
  }

  async function stop(id) {
    clearError();
    try {
      const body = await call("DELETE", path(id));
      if (watching && watching.id === id) {
        unwatch();
        $("stream-stats").textContent = `Stream ${id} stopped.`;
        $("stream-stats").dataset.state = "deleted";
      }
      await list();
      say(body.message);
    } catch (err) {
      report(err);
    }
  }

  // ---------------------------------------------------------------- one stream, followed

  function watch(resource) {
    unwatch();
    const w = { id: resource.id, controller: new AbortController(), timer: null, size: null, latest: null, events: 0 };
    watching = w;
    const canvas = $("stream-canvas");
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    for (const name of ["detections", "frame", "events"]) delete canvas.dataset[name];
    canvas.dataset.stream = w.id;
    $("stream-rows").querySelector("tbody").replaceChildren();
    $("stream-title").textContent = `Stream ${w.id}: ${resource.model} on ${resource.source}`;
    $("stream-watch").hidden = false;
    showStats(w, resource);
    follow(w);
    w.timer = setTimeout(() => poll(w), POLL_MS);
  }

  function unwatch() {
    if (!watching) return;
    watching.controller.abort();
    clearTimeout(watching.timer);
    watching = null;
  }

  async function poll(w) {
    try {
      const body = await call("GET", path(w.id));
      if (watching !== w) return;
      showStats(w, body.data);
    } catch (err) {
      if (watching !== w) return;
      if (err.status === 404) { ended(w); return; }  // deleted elsewhere, before its events said so
      report(err);
    }
    if (watching === w) w.timer = setTimeout(() => poll(w), POLL_MS);
  }

  function showStats(w, s) {
    const out = $("stream-stats");
    out.textContent = `${s.state} · source ${s.input_fps} fps · analysed ${s.processed_fps} fps · lag ${s.lag_ms} ms · ` +
      `${s.frames_processed} analysed, ${s.frames_dropped} dropped, ${s.reconnects} reconnect(s)` +
      (s.width && s.height ? ` · ${s.width}×${s.height}` : "") + (s.last_error ? ` · ${s.last_error}` : "");
    out.dataset.state = s.state;
    const row = $("streams-table").querySelector(`tr[data-stream-id="${CSS.escape(s.id)}"]`);
    if (row) figures(s).forEach((text, i) => { row.cells[i].textContent = text; });  // the list keeps up too
    if (s.width && s.height && !(w.size && w.size[0] === s.width && w.size[1] === s.height)) {
      w.size = [s.width, s.height];
      if (w.latest) paint(w);  // frames that came before the size was known are drawn now
    }
  }

  function ended(w) {
    unwatch();
    $("stream-stats").textContent = `Stream ${w.id} ended: it was deleted.`;
    $("stream-stats").dataset.state = "deleted";
  }

  /** Read the Server-Sent Events (one `data:` per analysed frame; `event: state` and `event: end` around them). */
  async function follow(w) {
    let response;
    try {
      response = await fetch(path(w.id, "/events"), {
        headers: { "x-api-key": key(), accept: "text/event-stream" }, signal: w.controller.signal,
      });
    } catch (err) {
      if (watching === w) report(failure("Could not reach the server", `The events failed: ${err.message}`, 0));
      return;
    }
    if (!response.ok) {
      const text = await response.text();
      let json = null;
      try { json = JSON.parse(text); } catch (_) { /* described below */ }
      const [title, message] = describeFailure(response, json, text);
      if (watching === w) showError(`GET ${path(w.id, "/events")}: ${title}`, message);
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "", kind = "", data = [];
    const onLine = (line) => {
      if (line === "") {  // the blank line ends an event
        if (data.length) onEvent(w, kind || "message", data.join("\n"));
        kind = "";
        data = [];
        return;
      }
      if (line.startsWith(":")) return;  // a keep-alive comment
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") kind = value; else if (field === "data") data.push(value);
    };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || watching !== w) break;
        buffered += decoder.decode(value, { stream: true });
        for (let at = buffered.indexOf("\n"); at >= 0; at = buffered.indexOf("\n")) {
          onLine(buffered.slice(0, at).replace(/\r$/, ""));
          buffered = buffered.slice(at + 1);
        }
      }
    } catch (err) {
      if (watching === w && err.name !== "AbortError") report(failure("The events broke off", err.message, 0));
      return;
    }
    if (watching === w) say(`Stream ${w.id}'s events ended.`);
  }

  function onEvent(w, kind, text) {
    if (watching !== w) return;
    let value;
    try { value = JSON.parse(text); } catch (_) { return; }
    if (kind === "state") { showStats(w, value); return; }
    if (kind === "end") { ended(w); return; }  // deleted: nothing more will come
    if (kind !== "message" || !Array.isArray(value.data)) return;
    w.latest = value;
    w.events += 1;
    paint(w);
  }

  /** Draw the latest frame's results on the canvas (the frame's size) and list its rows. */
  function paint(w) {
    const f = w.latest, canvas = $("stream-canvas");
    canvas.dataset.events = String(w.events);
    if (!w.size) { say(`Frame ${f.frame} came; waiting for the stream's frame size to draw it…`); return; }
    draw(f.data, w.size[0], w.size[1], f.frame, BACKGROUND, canvas);
    const tbody = $("stream-rows").querySelector("tbody");
    tbody.replaceChildren();
    for (const d of f.data.slice(0, ROWS_SHOWN)) {
      const row = document.createElement("tr");
      cell(row, String(f.frame));
      cell(row, d.track_id === undefined ? "–" : String(d.track_id));
      cell(row, d.name);
      cell(row, Number(d.confidence).toFixed(2));
      const b = d.box || {};
      cell(row, b.x2 === undefined ? "–" : [b.x1, b.y1, b.x2, b.y2].map((v) => Math.round(v)).join(", "));
      tbody.append(row);
    }
    say(`Stream ${w.id}: frame ${f.frame}, ${f.data.length} result(s); ${w.events} frame(s) since you started watching.`);
  }

  followModels("stream-model");
  document.addEventListener("DOMContentLoaded", () => {
    $("streams-load").addEventListener("click", () => { clearError(); list(); });
    $("stream-form").addEventListener("submit", start);
  });
})();

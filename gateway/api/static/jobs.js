// Video jobs: submit a video (POST /v1/jobs, multipart: the file or its URL, the model and the video route's
// arguments; a URL's download shows as "downloading … MiB"), the
// key's jobs listed (GET /v1/jobs) with a progress bar each, polled every second (GET /v1/jobs/{id}) while queued or
// running; Cancel (unfinished) or Delete (finished) is DELETE /v1/jobs/{id}; a done job's result (NDJSON, one line a
// frame, then the end line) is fetched with the key in its header and saved from a Blob (the key never goes into a
// URL), with a summary: frames analysed, detections counted from its lines. API errors are shown as the page shows
// them (describeFailure, app.js). Every value from the server is put in the page as text.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const key = () => $("api-key").value.trim();
  const POLL_MS = 1000;
  const UNFINISHED = new Set(["queued", "running"]);
  const polls = new Map();  // job id -> its timer, while it is unfinished

  const { cell, button, errorBox, followModels } = window.adminPage;  // keys.js
  const { show: showError, clear: clearError } = errorBox("job-error");

  function say(text) { $("jobs-status").textContent = text; }

  /** The API's answer (its JSON, or the Response itself with `raw`); else an Error with the page's usual title. */
  async function call(method, path, form, raw) {
    let response;
    try {
      response = await fetch(path, { method, headers: { "x-api-key": key() }, body: form });
    } catch (err) {
      throw Object.assign(new Error(err.message), { title: "Could not reach the server", detail: err.message });
    }
    if (raw && response.ok) return response;
    const text = await response.text();
    let json = null;
    try { json = JSON.parse(text); } catch (_) { /* described below */ }
    if (response.ok && json && json.success === true) return json;
    const [title, message] = describeFailure(response, json, text);
    throw Object.assign(new Error(message), { title: `${method} ${path}: ${title}`, detail: message, status: response.status });
  }

  const report = (err) => showError(err.title || "Error", err.detail || err.message);
  const path = (id, tail) => `/v1/jobs/${encodeURIComponent(id)}${tail || ""}`;

  // ---------------------------------------------------------------- the key's jobs

  /** "310 / 750 frames · 38.2 fps" (the total is unknown for some containers until the end); "downloading 1.5 / 40.0
   * MiB" while a URL's video is downloaded. */
  function progressText(j) {
    const p = j.progress || {};
    if (j.stage === "downloading") {
      const mib = (bytes) => (bytes / 1048576).toFixed(1);
      return `downloading ${mib(p.downloaded_bytes || 0)}${p.download_bytes_total ? ` / ${mib(p.download_bytes_total)}` : ""} MiB`;
    }
    const total = p.frames_total ? ` / ${p.frames_total}` : "";
    const fps = UNFINISHED.has(j.state) && p.fps ? ` · ${Number(p.fps).toFixed(1)} fps` : "";
    return `${p.frames_done || 0}${total} frames${p.percent === null || p.percent === undefined ? "" : ` (${p.percent}%)`}${fps}`;
  }

  function row(j) {
    const tr = document.createElement("tr");
    tr.dataset.jobId = j.id;
    cell(tr, j.id);
    cell(tr, j.model);
    cell(tr, "").className = "job-state";
    const bar = document.createElement("progress");
    bar.max = 100;
    const text = document.createElement("span");
    cell(tr, "").append(bar, " ", text);
    cell(tr, "").className = "job-actions";
    fill(tr, j);
    return tr;
  }

  /** Put the job's state, progress and buttons in its row. */
  function fill(tr, j) {
    tr.dataset.state = j.state;
    tr.cells[2].textContent = j.state + (j.error ? `: ${j.error}` : "");
    const bar = tr.cells[3].querySelector("progress"), p = j.progress || {};
    if (p.percent === null || p.percent === undefined) bar.removeAttribute("value"); else bar.value = p.percent;
    tr.cells[3].querySelector("span").textContent = progressText(j);
    const actions = tr.cells[4];
    if (actions.dataset.for === j.state) return;  // the buttons change with the state only
    actions.dataset.for = j.state;
    actions.replaceChildren();
    if (j.state === "done") actions.append(button("Download result", () => download(j.id)));
    const unfinished = UNFINISHED.has(j.state);
    actions.append(button(unfinished ? "Cancel" : "Delete", () => remove(j.id), "danger"));
  }

  function show(j) {
    const tbody = $("jobs-table").querySelector("tbody");
    const found = tbody.querySelector(`tr[data-job-id="${CSS.escape(j.id)}"]`);
    if (found) fill(found, j); else tbody.prepend(row(j));
    $("jobs-table").hidden = false;
    if (UNFINISHED.has(j.state)) follow(j.id); else unfollow(j.id);
  }

  /** A followed job's new state: in its row, and said when it finished. */
  function update(j) {
    show(j);
    if (!UNFINISHED.has(j.state)) say(`Job ${j.id} ${j.state}` + (j.state === "done" ? ": download its result." : "."));
  }

  function follow(id) {
    if (!polls.has(id)) polls.set(id, setTimeout(() => poll(id), POLL_MS));
  }

  function unfollow(id) {
    clearTimeout(polls.get(id));
    polls.delete(id);
  }

  async function poll(id) {
    polls.delete(id);
    try {
      const body = await call("GET", path(id));
      update(body.data);
    } catch (err) {
      if (err.status === 404) { drop(id); return; }  // deleted elsewhere, or expired
      report(err);
    }
  }

  function drop(id) {
    unfollow(id);
    const tr = $("jobs-table").querySelector(`tr[data-job-id="${CSS.escape(id)}"]`);
    if (tr) tr.remove();
  }

  async function list() {
    try {
      const body = await call("GET", "/v1/jobs");
      for (const id of [...polls.keys()]) unfollow(id);
      $("jobs-table").querySelector("tbody").replaceChildren();
      for (const j of [...body.data].sort((a, b) => (a.created || 0) - (b.created || 0))) show(j);
      $("jobs-table").hidden = false;
      say(body.data.length ? body.message : "No job on this key: submit a video above.");
    } catch (err) {
      report(err);
    }
  }

  async function submit(event) {
    event.preventDefault();
    clearError();
    if (!key()) { showError("An API key is needed", "Enter your API key above (`make key` prints one)."); return; }
    const file = $("job-file").files[0], url = $("job-url").value.trim();
    if (!file && !url) { showError("No video", "Choose a video file to analyse, or give its http(s) URL."); return; }
    const form = new FormData();  // both given: the server says to send one
    if (file) form.append("file", file, file.name);
    if (url) form.append("url", url);
    form.append("model", $("job-model").value);
    for (const name of ["size", "confidence", "vid_stride"]) {
      const value = $(`job-${name.replace("_", "-")}`).value.trim();
      if (value) form.append(name, value);
    }
    form.append("track", $("job-track").checked ? "true" : "false");
    const send = $("job-submit");
    send.disabled = true;
    say(file ? `Uploading ${file.name}…` : `Submitting ${url}…`);
    try {
      const made = await call("POST", "/v1/jobs", form);
      show(made.data);
      say(made.message);
    } catch (err) {
      report(err);
      say("");
    } finally {
      send.disabled = false;
    }
  }

  async function remove(id) {
    clearError();
    try {
      const body = await call("DELETE", path(id));
      if (body.data.state === "cancelled") show(body.data); else drop(id);
      say(body.message);
    } catch (err) {
      report(err);
    }
  }

  // ---------------------------------------------------------------- a done job's result

  /** Frames and detections in the result's lines: `{"frame", "time", "data"}` per frame, then the end line. */
  function summarise(text) {
    let frames = 0, detections = 0, end = null;
    for (const line of text.split("\n")) {
      if (!line.trim()) continue;
      const value = JSON.parse(line);
      if (value.done === true) {
        end = value;
      } else if (Array.isArray(value.data)) {
        frames += 1;
        detections += value.data.length;
      }
    }
    return { frames, detections, end };
  }

  async function download(id) {
    clearError();
    try {
      const response = await call("GET", path(id, "/result"), undefined, true);
      const text = await response.text();
      const { frames, detections, end } = summarise(text);
      const out = $("job-summary");
      out.textContent = `Job ${id}: ${frames} frame(s) analysed, ${detections} detection(s)` +
        (end && end.message ? ` · ${end.message.replace(/\.$/, "")}` : "") + ".";
      Object.assign(out.dataset, { job: id, frames: String(frames), detections: String(detections) });
      out.hidden = false;
      const url = URL.createObjectURL(new Blob([text], { type: "application/x-ndjson" }));
      const a = document.createElement("a");
      a.href = url;
      a.download = `${id}.ndjson`;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);  // long enough for the browser to save it
    } catch (err) {
      report(err);
    }
  }

  followModels("job-model");
  document.addEventListener("DOMContentLoaded", () => {
    $("jobs-load").addEventListener("click", () => { clearError(); list(); });
    $("job-form").addEventListener("submit", submit);
  });
})();

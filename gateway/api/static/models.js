// Your models (admin keys only): upload a checkpoint under an id (a new model, or a new version of an uploaded one),
// with a progress bar for the bytes, then for the export worker's stages; the versions of a model, rollback, delete;
// "Try" picks the model in the form above. Uses the key typed in the "API key" field, and the models API
// (/v1/models: README, "Your own models: the API"). Every value from the server is put in the page as text.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const key = () => $("api-key").value.trim();
  const POLL_MS = 1000;
  const STAGES = ["queued", "checking", "exporting", "verifying", "loading"];
  let uploads = new Map();  // id -> the model's entry in GET /v1/models (uploads only)

  const { cell, call, button } = window.adminPage;  // keys.js: a table cell; an admin call (JSON or an Error); a button

  function say(text, isError) {
    const out = $("models-status");
    out.textContent = text;
    out.classList.toggle("error-text", Boolean(isError));
  }

  const path = (id, tail) => `/v1/models/${encodeURIComponent(id)}${tail || ""}`;

  async function load() {
    try {
      const body = await call("GET", "/v1/models");
      uploads = new Map(body.data.filter((m) => m.source === "upload").map((m) => [m.id, m]));
      render();
      $("models-admin").hidden = false;
      say(uploads.size ? `${uploads.size} uploaded model(s).` : "No uploaded model yet: upload a .pt below.", false);
    } catch (err) {
      say(err.message, true);
    }
  }

  function render() {
    const tbody = $("models-table").querySelector("tbody");
    tbody.replaceChildren();
    for (const m of uploads.values()) {
      const row = document.createElement("tr");
      row.dataset.modelId = m.id;
      cell(row, m.id);
      const status = m.status === "ready" ? "ready" : `${m.status}${m.reason ? `: ${m.reason}` : ""}`;
      cell(row, status).className = "model-status";
      cell(row, m.serving === null ? "–" : `v${m.serving}`);
      cell(row, m.task || "–");
      cell(row, m.names ? String(Object.keys(m.names).length) : "–");
      const actions = cell(row, "");
      actions.append(button("Versions", () => showVersions(m.id)));
      if (m.status === "ready") actions.append(button("Try", () => tryModel(m.id)));
      actions.append(button("Delete", () => remove(m.id), "danger"));
      tbody.append(row);
    }
  }

  async function showVersions(id) {
    try {
      const body = await call("GET", path(id));
      const m = body.data;
      const tbody = $("versions-table").querySelector("tbody");
      tbody.replaceChildren();
      for (const v of m.versions) {
        const row = document.createElement("tr");
        row.dataset.version = String(v.number);
        cell(row, `v${v.number}`);
        cell(row, v.status + (v.reason ? `: ${v.reason}` : ""));
        cell(row, v.serving ? "serving" : "–");
        cell(row, v.created || "–");
        cell(row, v.task || "–");
        cell(row, String(Object.keys(v.names || {}).length));
        cell(row, v.sha256.slice(0, 12));
        const actions = cell(row, "");
        if (!v.serving && ["ready", "retired", "unloaded"].includes(v.status)) {
          actions.append(button("Roll back to this", () => rollback(id, v.number)));
        }
        tbody.append(row);
      }
      $("versions-title").textContent = `Versions of ${id}`;
      $("versions").hidden = false;
      $("versions").dataset.modelId = id;
      say(body.message, false);
    } catch (err) {
      say(err.message, true);
    }
  }

  async function rollback(id, number) {
    try {
      const body = await call("POST", path(id, "/rollback"), { version: number });
      say(body.message, false);
      await follow(id, body.data.requested_version);
      await showVersions(id);
    } catch (err) {
      say(err.message, true);
    }
  }

  async function remove(id) {
    if (!window.confirm(`Delete model ${id} and all its versions? Predictions answer 404 at once.`)) return;
    try {
      say((await call("DELETE", path(id))).message, false);
      if ($("versions").dataset.modelId === id) $("versions").hidden = true;
      await load();
      if (typeof loadModels === "function") await loadModels();
    } catch (err) {
      say(err.message, true);
    }
  }

  function tryModel(id) {
    const select = $("model");
    if (![...select.options].some((o) => o.value === id)) { say(`${id} is not ready to try yet.`, true); return; }
    select.value = id;
    select.dispatchEvent(new Event("change"));
    $("controls").scrollIntoView({ behavior: "smooth" });
    say(`${id} is selected above: choose an image to try it.`, false);
  }

  // ---------------------------------------------------------------- upload, with its progress

  function progress(phase, fraction, text) {
    $("upload-progress").hidden = false;
    $("upload-progress").dataset.phase = phase;
    $("upload-bar").value = Math.max(0, Math.min(1, fraction));
    $("upload-phase").textContent = text;
  }

  /** POST (a new id) or PUT (an uploaded id: a new version) the file; the bytes on the bar as they are sent. */
  function send(id, file) {
    const form = new FormData();
    const known = uploads.has(id);
    if (!known) form.append("id", id);
    form.append("file", file);
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open(known ? "PUT" : "POST", known ? path(id) : "/v1/models");
      xhr.setRequestHeader("x-api-key", key());
      xhr.upload.onprogress = (e) => {
        if (e.lengthComputable) {
          progress("upload", e.loaded / e.total, `uploading: ${Math.round(e.loaded / 1024)} of ${Math.round(e.total / 1024)} KiB`);
        }
      };
      xhr.upload.onload = () => progress("checking", 0, "uploaded; the export worker checks the file…");
      xhr.onerror = () => reject(new Error("the upload failed (connection lost)"));
      xhr.onload = () => {
        let json = null;
        try { json = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
        if (xhr.status === 202 && json) resolve(json);
        else reject(new Error(`${xhr.status}: ${(json && json.message) || xhr.statusText}`));
      };
      xhr.send(form);
    });
  }

  /** Poll the model until `number` serves or fails, showing its stage and the stage's progress on the bar. */
  async function follow(id, number) {
    for (;;) {
      const m = (await call("GET", path(id))).data;
      const v = m.versions.find((x) => x.number === number);
      if (!v) throw new Error(`version ${number} of ${id} is gone`);
      if (v.status === "ready" && m.serving === number) {
        progress("ready", 1, `version ${number} of ${id} is ready and serving`);
        return;
      }
      if (["failed", "retired"].includes(v.status)) {
        progress("failed", 1, `version ${number} failed during ${v.stage}: ${v.reason}`);
        throw new Error(`version ${number} of ${id} failed during ${v.stage}: ${v.reason}`);
      }
      const step = Math.max(0, STAGES.indexOf(v.status));
      progress(v.status, (step + v.progress) / STAGES.length, `version ${number}: ${v.status} ${Math.round(v.progress * 100)} %`);
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }

  async function upload(event) {
    event.preventDefault();
    const id = $("upload-id").value.trim();
    const file = $("upload-file").files[0];
    if (!id || !file) { say("Give the model an id and choose its .pt file.", true); return; }
    const submit = $("model-upload").querySelector("button[type=submit]");
    submit.disabled = true;
    try {
      progress("upload", 0, "uploading…");
      const body = await send(id, file);
      say(body.message, false);
      await load();
      await follow(id, body.data.requested_version);
      say(`Model ${id} version ${body.data.requested_version} is ready: "Try" it above.`, false);
      await load();
      if (typeof loadModels === "function") await loadModels();
      await showVersions(id);
    } catch (err) {
      if ($("upload-progress").dataset.phase !== "failed") progress("failed", 0, err.message);
      say(err.message, true);
      await load();
    } finally {
      submit.disabled = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("models-load").addEventListener("click", load);
    $("model-upload").addEventListener("submit", upload);
  });
})();

// Keys and usage (admin keys only): list keys, create one (its secret shown once), revoke, and a key's usage per
// day and model, through the admin API (/v1/keys). Uses the key typed in the "API key" field. Every value from the
// server is put in the page as text, never as HTML (key names are whatever an admin typed).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const key = () => $("api-key").value.trim();

  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text;
    row.append(td);
    return td;
  }

  function say(text, isError) {
    const out = $("keys-status");
    out.textContent = text;
    out.classList.toggle("error-text", Boolean(isError));
  }

  function button(text, onClick, className) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    if (className) b.className = className;
    b.addEventListener("click", onClick);
    return b;
  }

  async function call(method, path, body) {
    const headers = { "x-api-key": key() };
    if (body !== undefined) headers["content-type"] = "application/json";
    const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    let json = null;
    try { json = await response.json(); } catch (_) { /* not JSON */ }
    if (!response.ok) throw new Error(`${response.status}: ${(json && json.message) || response.statusText}`);
    return json;
  }
  /** The error box `id` (hidden until shown): show(title, detail) puts a bold title and the detail in it, as text. */
  function errorBox(id) {
    return {
      show(title, detail) {
        const strong = document.createElement("strong");
        strong.textContent = title;
        $(id).replaceChildren(strong, document.createTextNode(detail || ""));
        $(id).hidden = false;
      },
      clear() { $(id).hidden = true; $(id).replaceChildren(); },
    };
  }

  /** Keep the <select> `id` listing the page's models (app.js's #model, once /v1/models answers), the one picked
   * above first chosen. */
  function followModels(id) {
    const fill = () => {
      const select = $(id), current = select.value || $("model").value;
      select.replaceChildren(...[...$("model").options].filter((o) => o.value).map((o) => new Option(o.text, o.value)));
      if ([...select.options].some((o) => o.value === current)) select.value = current;
    };
    document.addEventListener("models-loaded", fill);
    document.addEventListener("DOMContentLoaded", fill);  // in case they were listed before the view's file ran
  }

  // shared with models.js, streams.js and jobs.js (loaded after this file)
  window.adminPage = { cell, call, button, errorBox, followModels };

  async function load() {
    $("keys-new").hidden = true;
    try {
      const body = await call("GET", "/v1/keys");
      render(body.data);
      say(body.message, false);
      $("keys-admin").hidden = false;
    } catch (err) {
      $("keys-admin").hidden = true;
      say(err.message, true);
    }
  }

  function render(keys) {
    const tbody = $("keys-table").querySelector("tbody");
    tbody.replaceChildren();
    for (const k of keys) {
      const row = document.createElement("tr");
      row.dataset.keyId = k.id;
      cell(row, k.id);
      cell(row, k.name);
      cell(row, k.models ? k.models.join(", ") : "all");
      cell(row, k.rate ? `${k.rate}/s` : "–");
      cell(row, k.admin ? "admin" : "–");
      cell(row, k.last_used || "–");
      cell(row, k.revoked ? "revoked" : "active");
      const actions = cell(row, "");
      const usage = document.createElement("button");
      usage.type = "button";
      usage.textContent = "Usage";
      usage.addEventListener("click", () => showUsage(k.id));
      actions.append(usage);
      if (!k.revoked) {
        const revoke = document.createElement("button");
        revoke.type = "button";
        revoke.textContent = "Revoke";
        revoke.className = "danger";
        revoke.addEventListener("click", () => revokeKey(k.id));
        actions.append(revoke);
      }
      tbody.append(row);
    }
  }

  async function showUsage(id) {
    try {
      const body = await call("GET", `/v1/keys/${encodeURIComponent(id)}/usage?days=30`);
      const tbody = $("usage-table").querySelector("tbody");
      tbody.replaceChildren();
      for (const u of body.data.usage) {
        const row = document.createElement("tr");
        cell(row, u.day);
        cell(row, u.model);
        cell(row, String(u.requests));
        cell(row, String(u.images));
        cell(row, Object.entries(u.errors).map(([s, n]) => `${s}: ${n}`).join(", ") || "–");
        cell(row, u.latency_ms.p50 === null ? "–" : `≤ ${u.latency_ms.p50}`);
        cell(row, u.latency_ms.p95 === null ? "–" : `≤ ${u.latency_ms.p95}`);
        tbody.append(row);
      }
      $("usage-title").textContent = `Usage of key ${id} (last 30 days)`;
      $("usage").hidden = false;
      say(body.data.usage.length ? body.message : `No use of key ${id} in the last 30 days.`, false);
    } catch (err) {
      say(err.message, true);
    }
  }

  async function revokeKey(id) {
    if (!window.confirm(`Revoke key ${id}? Every gateway refuses it within a second.`)) return;
    try {
      say((await call("DELETE", `/v1/keys/${encodeURIComponent(id)}`)).message, false);
      await load();
    } catch (err) {
      say(err.message, true);
    }
  }

  async function create(event) {
    event.preventDefault();
    const models = $("new-models").value.split(",").map((m) => m.trim()).filter(Boolean);
    const rate = $("new-rate").value.trim();
    const body = { name: $("new-name").value.trim(), models: models.length ? models : null,
                   rate: rate ? Number(rate) : null, admin: $("new-admin").checked };
    try {
      const made = await call("POST", "/v1/keys", body);
      await load();
      $("keys-new-key").textContent = made.data.key;
      $("keys-new").hidden = false;
      say(made.message, false);
    } catch (err) {
      say(err.message, true);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("keys-load").addEventListener("click", load);
    $("keys-create").addEventListener("submit", create);
  });
})();

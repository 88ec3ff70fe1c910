// The try-it page: send one image (or a video, answered frame by frame as NDJSON with stream=true) to
// POST /v1/predict/{model}, draw the answer on a canvas over it, show the JSON and the same request as curl and Python. Plain browser JavaScript, no dependencies. The drawing mirrors
// gateway/vision/render.py (Ultralytics' palette, line width, mask alpha, skeleton and keypoint threshold, oriented
// boxes as polygons, a classifier's top five as text).
"use strict";

const STORE_KEY = "yolo-triton.api-key";
const STORE_MODEL = "yolo-triton.model";

const PALETTE = [
  "#042AFF", "#0BDBEB", "#F3F3F3", "#00DFB7", "#111F68", "#FF6FDD", "#FF444F", "#CCED00", "#00F344", "#BD00FF",
  "#00B4FF", "#DD00BA", "#00FFFF", "#26C000", "#01FFB3", "#7D24FF", "#7B0068", "#FF1B6C", "#FC6D2F", "#A2FF0B",
];
// COCO 17-keypoint skeleton (0-based) and the colours Ultralytics ends up drawing (legs, torso, arms, face).
const SKELETON = [
  [15, 13], [13, 11], [16, 14], [14, 12], [11, 12], [5, 11], [6, 12], [5, 6], [5, 7], [6, 8],
  [7, 9], [8, 10], [1, 2], [0, 1], [0, 2], [1, 3], [2, 4], [3, 5], [4, 6],
];
const LEGS = "rgb(255,153,51)", TORSO = "rgb(255,51,255)", ARMS = "rgb(0,128,255)", FACE = "rgb(0,255,0)";
const LIMB_COLORS = [...Array(4).fill(LEGS), ...Array(3).fill(TORSO), ...Array(5).fill(ARMS), ...Array(7).fill(FACE)];
const KPT_COLORS = [...Array(5).fill(FACE), ...Array(6).fill(ARMS), ...Array(6).fill(LEGS)];
const KPT_THRESHOLD = 0.25;
const MASK_ALPHA = 0.5;
const TOP5_BACKGROUND = "rgba(64,64,64,0.5)";

const STATUS_TEXT = {
  400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
  413: "Payload Too Large", 415: "Unsupported Media Type", 422: "Unprocessable Content", 429: "Too Many Requests",
  500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
};

const $ = (id) => document.getElementById(id);
const els = {
  form: $("controls"), key: $("api-key"), showKey: $("show-key"), model: $("model"), modelInfo: $("model-info"),
  drop: $("drop"), dropText: $("drop-text"), file: $("file"), url: $("url"), size: $("size"),
  confidence: $("confidence"), iou: $("iou"), run: $("run"), status: $("status"), error: $("error"),
  summary: $("summary"), stage: $("stage"), img: $("preview"), canvas: $("overlay"), json: $("json"),
  curl: $("curl"), python: $("python"), video: $("video"), videoArgs: $("video-args"), vidStride: $("vid_stride"),
  frames: $("frames"), frame: $("frame"), frameLabel: $("frame-label"),
  dialect: $("dialect"), client: $("client"), clientBox: $("client-box"), clientTitle: $("client-title"),
};

const state = {
  models: new Map(),   // id -> /v1/models entry
  file: null,          // the chosen File, or null when a URL is used
  isVideo: false,      // the chosen file is a video (told from its first bytes, as the server does)
  frames: [],          // a video's per-frame answers, in order: {frame, time, data}
  videoMeta: null,     // the video's metadata from the stream's last line
  videoPlayable: false,
  objectUrl: null,
  seq: 0,              // the latest request; older answers are dropped
  controller: null,
  snippets: { curl: "", python: "", client: "" },
  keyDialect: null,    // the entered key's own dialect (POST /v1/auth tells it; null: the route's)
  dialectChosen: false, // the user picked a dialect: a key typed later no longer changes it
  authSeq: 0,
};

// ---------------------------------------------------------------- messages

function setStatus(text) { els.status.textContent = text; }

function showError(title, detail) {
  els.error.replaceChildren();
  const strong = document.createElement("strong");
  strong.textContent = title;
  els.error.append(strong);
  if (detail) els.error.append(document.createTextNode(detail));
  els.error.hidden = false;
}

function clearError() { els.error.hidden = true; els.error.replaceChildren(); }

/** "401 Unauthorized" and the API's message (or whatever came back instead of JSON). */
function describeFailure(response, body, text) {
  const title = `${response.status} ${response.statusText || STATUS_TEXT[response.status] || "Error"}`;
  let message = body && typeof body.message === "string" ? body.message : "";
  if (!message) message = text.trim() ? `Unexpected response: ${text.trim().slice(0, 300)}` : "The server sent no message.";
  const retry = response.headers.get("retry-after");
  return [title, retry ? `${message} (retry after ${retry} s)` : message];
}

// ---------------------------------------------------------------- API key and models

function initKey() {
  try { els.key.value = localStorage.getItem(STORE_KEY) || ""; } catch (_) { /* storage disabled */ }
  els.key.addEventListener("input", () => {
    try {
      const key = els.key.value.trim();
      if (key) localStorage.setItem(STORE_KEY, key); else localStorage.removeItem(STORE_KEY);
    } catch (_) { /* storage disabled: the key lives for this page only */ }
    renderSnippets();
    scheduleKeyDialect();
  });
  els.showKey.addEventListener("change", () => {
    els.key.type = els.showKey.checked ? "text" : "password";
    renderSnippets();
  });
}

async function loadModels() {
  let response, body = null, text = "";
  try {
    response = await fetch("/v1/models", { headers: { accept: "application/json" } });
    text = await response.text();
    body = JSON.parse(text);
  } catch (err) {
    if (!response) { showError("Could not reach the server", `GET /v1/models failed: ${err.message}`); return; }
  }
  if (!response.ok || !body || !Array.isArray(body.data)) {
    const [title, message] = describeFailure(response, body, text);
    showError(`GET /v1/models: ${title}`, message);
    els.model.replaceChildren(new Option("no models", ""));
    return;
  }
  const current = els.model.value;
  els.model.replaceChildren();
  state.models.clear();
  // uploaded models (models.js) are listed once they serve; the built-in ones whenever Triton has them ready
  for (const m of body.data.filter((x) => x.source !== "upload" || x.status === "ready")) {
    state.models.set(m.id, m);
    els.model.append(new Option(`${m.id} (${m.task}${m.source === "upload" ? ", uploaded" : ""})`, m.id));
  }
  if (current && state.models.has(current)) els.model.value = current;
  if (!state.models.size) {
    els.model.append(new Option("no models ready", ""));
    showError("No models are ready", "The inference server has no model loaded yet; reload the page in a moment.");
    return;
  }
  let saved = null;
  try { saved = localStorage.getItem(STORE_MODEL); } catch (_) { /* storage disabled */ }
  if (saved && state.models.has(saved)) els.model.value = saved;
  els.model.disabled = false;
  onModelChange();
  document.dispatchEvent(new Event("models-loaded"));  // streams.js, jobs.js list them in their forms
}

function onModelChange() {
  const m = state.models.get(els.model.value);
  if (!m) { els.modelInfo.textContent = ""; return; }
  try { localStorage.setItem(STORE_MODEL, m.id); } catch (_) { /* storage disabled */ }
  els.size.value = String(m.default_size || 640);
  const classes = Object.keys(m.names || {}).length;
  els.modelInfo.textContent = `task: ${m.task} · ${classes} classes · default size ${m.default_size} · ${m.backend}`;
  els.modelInfo.classList.toggle("warn", Boolean(m.untrained));
  if (m.untrained) els.modelInfo.textContent += ` — ${m.warning || "untrained weights"}`;
  renderSnippets();
}

// ---------------------------------------------------------------- choosing the image

/** The video container named by a file's first bytes (MP4/MOV, WebM/MKV, AVI), as gateway/vision/videofile.py tells
 * it. */
async function sniffVideo(file) {
  const b = new Uint8Array(await file.slice(0, 16).arrayBuffer());
  const ascii = (from, to) => String.fromCharCode(...b.slice(from, to));
  const box = ascii(4, 8);
  if (box === "ftyp") return /^(avif|avis|heic|heix|heim|heis|hevc|hevx|mif1|msf1)$/.test(ascii(8, 12)) ? null : "MP4/MOV";
  if (["moov", "mdat", "wide", "free", "skip", "pnot"].includes(box)) return "MP4/MOV";
  if (b[0] === 0x1a && b[1] === 0x45 && b[2] === 0xdf && b[3] === 0xa3) return "WebM/MKV";
  if (ascii(0, 4) === "RIFF" && ascii(8, 12) === "AVI ") return "AVI";
  return null;
}

async function useFile(file) {
  if (!file) return;
  state.file = file;
  state.isVideo = Boolean(await sniffVideo(file));
  els.url.value = "";
  const kind = state.isVideo ? "video" : "image";
  els.dropText.textContent = `${file.name || "pasted image"} (${Math.max(1, Math.round(file.size / 1024))} KiB ${kind}) — drop or choose another`;
  if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
  state.objectUrl = URL.createObjectURL(file);
  if (state.isVideo) showVideo(state.objectUrl); else showPreview(state.objectUrl);
  renderSnippets();
  if (els.key.value.trim() && els.model.value) run();
}

function useUrl(url) {
  els.url.value = url;
  state.file = null;
  state.isVideo = false;
  els.file.value = "";
  els.dropText.textContent = "Drop an image here, paste one, or choose a file";
  renderSnippets();
}

/** Point the preview at `src`; resolves with whether the browser could display it. */
function showPreview(src) {
  clearCanvas();
  resetFrames();
  els.stage.classList.remove("empty");
  els.video.hidden = true;
  els.video.removeAttribute("src");
  els.stage.classList.remove("canvas-only");
  els.img.hidden = false;
  if (els.img.getAttribute("src") === src && els.img.complete) return Promise.resolve(els.img.naturalWidth > 0);
  return new Promise((resolve) => {
    els.img.onload = () => resolve(true);
    els.img.onerror = () => resolve(false);
    els.img.src = src;
  });
}

function initImageInputs() {
  els.file.addEventListener("change", () => useFile(els.file.files[0]));
  for (const type of ["dragenter", "dragover"]) {
    els.drop.addEventListener(type, (e) => { e.preventDefault(); els.drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    els.drop.addEventListener(type, () => els.drop.classList.remove("over"));
  }
  els.drop.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = e.dataTransfer.files && e.dataTransfer.files[0];
    if (file) { useFile(file); return; }
    const link = (e.dataTransfer.getData("text/uri-list") || e.dataTransfer.getData("text/plain") || "").split("\n")[0].trim();
    if (/^https?:\/\//i.test(link)) { useUrl(link); run(); }
  });
  els.drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); els.file.click(); }
  });
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData ? e.clipboardData.items : [])].find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (item) { e.preventDefault(); useFile(item.getAsFile()); }
  });
  els.url.addEventListener("input", () => {
    if (els.url.value.trim()) { state.file = null; state.isVideo = false; els.file.value = ""; }
    renderSnippets();
  });
}

// ---------------------------------------------------------------- the request and its snippets

function args() {
  const a = { size: els.size.value.trim(), confidence: els.confidence.value.trim(), iou: els.iou.value.trim() };
  if (state.isVideo) Object.assign(a, { vid_stride: els.vidStride.value.trim(), stream: "true" });
  return a;
}

// The dialects (README, Dialects): which request each one's users write, against this server.
const HUB_DIALECTS = ["hub", "hub-xywhn"];
const V1_DIALECTS = ["hub", "hub-xywhn", "hub-images"];  // the dialects the /v1 URL speaks
// The page reads the first docs' rows whatever dialect the key carries: its own requests pin `hub` by base path.
const PAGE_V1 = "/dialects/hub/v1";
const PLATFORM_OWNER = "owner", PLATFORM_PROJECT = "project";  // the Platform's path names them; the gateway reads only the model

function modelId() { return els.model.value || "MODEL_ID"; }

function dialect() { return els.dialect.value || "hub"; }

/** The base URL the chosen dialect's clients point at. The v1 URL answers in the key's own dialect (hub without
 *  one), so hub and hub-xywhn get their base path `/dialects/<name>` when the key's is another. */
function baseUrl() {
  const d = dialect();
  const answered = V1_DIALECTS.includes(state.keyDialect) ? state.keyDialect : "hub";
  return HUB_DIALECTS.includes(d) && d !== answered ? `${location.origin}/dialects/${d}` : location.origin;
}

/** The chosen dialect's request: URL, key header, the file part's name, the URL field's name, the text fields. */
function request(key) {
  const d = dialect(), id = encodeURIComponent(modelId()), a = args();
  const hub = HUB_DIALECTS.includes(d);
  const fields = hub ? {} : d === "predict" ? { model: `https://hub.ultralytics.com/models/${modelId()}` } : {};
  const names = hub ? { size: "size", confidence: "confidence" } : { size: "imgsz", confidence: "conf" };
  for (const [k, v] of Object.entries(a)) fields[names[k] || k] = v;
  const url = d === "predict" ? `${baseUrl()}/`
    : d === "platform" ? `${baseUrl()}/api/models/${PLATFORM_OWNER}/${PLATFORM_PROJECT}/${id}/predict`
    : `${baseUrl()}/v1/predict/${id}`;
  const header = d === "platform" ? ["Authorization", `Bearer ${key}`] : ["x-api-key", key];
  return { url, header, part: hub ? "image" : "file", urlField: hub ? "url" : "source", fields };
}

/** The key as shown on screen: the secret is hidden unless "show key" is ticked. The Copy buttons copy it whole. */
function displayKey(key) {
  if (!key) return "API_KEY";
  if (els.showKey.checked) return key;
  const m = /^(yk_[A-Za-z0-9]+_|ul_)/.exec(key);
  return `${m ? m[1] : ""}••••••••`;
}

const dq = (s) => `"${String(s).replace(/[\\"$`]/g, "\\$&")}"`;  // a POSIX shell double-quoted word
const py = (s) => JSON.stringify(String(s));  // a JSON string is a valid Python str literal
const pyValue = (v) => (/^\d+(\.\d+)?$/.test(v) ? v : py(v));

function curlSnippet(key) {
  const r = request(key);
  const lines = [`curl${state.isVideo ? " --no-buffer" : ""} -X POST ${dq(r.url)}`, `-H ${dq(`${r.header[0]}: ${r.header[1]}`)}`];
  lines.push(state.file ? `-F ${dq(`${r.part}=@${state.file.name || "image.jpg"}`)}` : `-F ${dq(`${r.urlField}=${els.url.value.trim() || "https://example.com/photo.jpg"}`)}`);
  for (const [k, v] of Object.entries(r.fields)) if (v) lines.push(`-F ${dq(`${k}=${v}`)}`);
  return lines.join(" \\\n  ") + "\n";
}

function pythonSnippet(key) {
  const r = request(key);
  const fields = Object.entries(r.fields).filter(([, v]) => v).map(([k, v]) => `${py(k)}: ${pyValue(v)}`);
  const head = [
    "import requests",
    "",
    `url = ${py(r.url)}`,
    `headers = {${py(r.header[0])}: ${py(r.header[1])}}`,
  ];
  if (state.file && state.isVideo) {  // NDJSON: one line per frame as the server finishes it
    return [
      "import json",
      "",
      ...head,
      `data = {${fields.join(", ")}}`,
      "",
      `with open(${py(state.file.name || "video.mp4")}, "rb") as video_file:`,
      `    files = {${py(r.part)}: video_file}`,
      "    response = requests.post(url, headers=headers, files=files, data=data, stream=True)",
      "    for line in response.iter_lines():",
      "        print(json.loads(line))",
      "",
    ].join("\n");
  }
  if (state.file) {
    return [
      ...head,
      `data = {${fields.join(", ")}}`,
      "",
      `with open(${py(state.file.name || "image.jpg")}, "rb") as image_file:`,
      `    files = {${py(r.part)}: image_file}`,
      "    response = requests.post(url, headers=headers, files=files, data=data)",
      "",
      "print(response.json())",
      "",
    ].join("\n");
  }
  const url = els.url.value.trim() || "https://example.com/photo.jpg";
  return [
    ...head,
    `data = {${py(r.urlField)}: ${py(url)}${fields.length ? ", " + fields.join(", ") : ""}}`,
    "",
    "response = requests.post(url, headers=headers, data=data)",
    "print(response.json())",
    "",
  ].join("\n");
}

/** The dialect's official Python client, where it has one and can send this request (a local image file):
 *  hub-sdk for hub and hub-xywhn, ultralytics-platform for the Platform. "" for none. */
function clientSnippet(key) {
  const d = dialect(), r = request(key);
  if (!state.file || state.isVideo || !(HUB_DIALECTS.includes(d) || d === "platform")) return "";
  const image = py(state.file.name || "image.jpg");
  const config = Object.entries(r.fields).filter(([, v]) => v).map(([k, v]) => `${py(k)}: ${pyValue(v)}`).join(", ");
  if (d === "platform") {
    return [
      "import json",
      "",
      "from ultralytics_platform import Platform",
      "",
      `with Platform(api_key=${py(key)}, base_url=${py(baseUrl())}) as client, open(${image}, "rb") as f:`,
      `    answer = client.models.predict(${py(PLATFORM_OWNER)}, ${py(PLATFORM_PROJECT)}, ${py(modelId())}, body={"file": f${config ? ", " + config : ""}})`,
      "",
      "print(json.dumps(answer, indent=2))",
      "",
    ].join("\n");
  }
  return [
    "import json",
    "import os",
    "",
    `os.environ["ULTRALYTICS_HUB_API"] = ${py(baseUrl())}  # before hub_sdk is imported: it reads the host then`,
    "from hub_sdk import HUBClient",
    "",
    `client = HUBClient({"api_key": ${py(key)}})`,
    `response = client.model(${py(modelId())}).predict(${image}, {${config}})`,
    "print(json.dumps(response.json(), indent=2))",
    "",
  ].join("\n");
}

function renderSnippets() {
  const key = els.key.value.trim();
  state.snippets = { curl: curlSnippet(key || "API_KEY"), python: pythonSnippet(key || "API_KEY"), client: clientSnippet(key || "API_KEY") };
  els.curl.textContent = curlSnippet(displayKey(key));
  els.python.textContent = pythonSnippet(displayKey(key));
  els.client.textContent = clientSnippet(displayKey(key));
  els.clientTitle.textContent = dialect() === "platform" ? "Python (ultralytics-platform)" : "Python (hub-sdk)";
  els.clientBox.hidden = !state.snippets.client;
}

/** Ask the server which dialect the entered key carries (POST /v1/auth, hub-sdk's login) and, unless the user
 *  picked one, write the snippets in it. A wrong key or a server error leaves the choice as it is. */
async function learnKeyDialect() {
  const key = els.key.value.trim(), seq = ++state.authSeq;
  let dialectOfKey = null, known = false;
  if (key) {
    try {
      const response = await fetch("/v1/auth", { method: "POST", headers: { "x-api-key": key, accept: "application/json" } });
      const body = await response.json();
      if (response.ok && body && body.success) { dialectOfKey = (body.data && body.data.dialect) || null; known = true; }
    } catch (_) { /* offline or not JSON: the snippets keep the dialect chosen */ }
  }
  if (seq !== state.authSeq) return;  // a newer key was typed meanwhile
  state.keyDialect = dialectOfKey;
  if (known && !state.dialectChosen) els.dialect.value = dialectOfKey || "hub";
  els.dialect.dataset.keyDialect = known ? dialectOfKey || "none" : "";
  renderSnippets();
}

let authTimer = null;
function scheduleKeyDialect() {
  clearTimeout(authTimer);
  authTimer = setTimeout(learnKeyDialect, 300);  // once typing pauses, not per keystroke
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (_) {  // not a secure context (http on another host): the old way
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  const label = button.textContent;
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = label; }, 1200);
}

function setBusy(busy) {
  els.run.disabled = busy;
  els.run.textContent = busy ? "Running…" : "Run inference";
}

async function run() {
  clearError();
  const key = els.key.value.trim();
  const model = els.model.value;
  const url = els.url.value.trim();
  if (!key) { showError("An API key is needed", "Enter your API key above (`make key` prints one)."); return; }
  if (!model) { showError("No model selected", "Pick a model; if the list is empty, no model is ready yet."); return; }
  if (!state.file && !url) { showError("No image", "Drop or choose an image, or paste an image URL."); return; }

  const form = new FormData();
  if (state.file) form.append("image", state.file, state.file.name || "image.png");
  else form.append("url", url);
  for (const [k, v] of Object.entries(args())) if (v) form.append(k, v);
  renderSnippets();

  if (state.controller) state.controller.abort();
  const controller = new AbortController();
  state.controller = controller;
  const seq = ++state.seq;
  const video = state.isVideo;
  const preview = video ? Promise.resolve(true) : state.file ? showPreview(state.objectUrl) : showPreview(url);
  if (video) resetFrames();
  clearCanvas();
  setBusy(true);
  setStatus(`POST /v1/predict/${model} …`);
  const started = performance.now();
  let response, text;
  try {
    response = await fetch(`${PAGE_V1}/predict/${encodeURIComponent(model)}`, {
      method: "POST", headers: { "x-api-key": key }, body: form, signal: controller.signal,
    });
    if (video && response.ok) { await readVideoStream(response, seq, started, model); return; }
    text = await response.text();
  } catch (err) {
    if (seq !== state.seq) return;
    setBusy(false);
    setStatus("");
    showError("Could not reach the server", `The request failed before an answer came back: ${err.message}`);
    return;
  }
  if (seq !== state.seq) return;
  const elapsed = performance.now() - started;
  let body = null;
  try { body = JSON.parse(text); } catch (_) { /* shown as text below */ }
  els.json.textContent = body ? formatJson(body) : text;
  setBusy(false);
  if (!response.ok || !body || body.success !== true || !Array.isArray(body.data)) {
    const [title, message] = describeFailure(response, body, text);
    showError(title, message);
    setStatus("");
    els.summary.textContent = `The API answered ${title}.`;
    return;
  }

  const task = (state.models.get(model) || {}).task || "";
  const timing = serverTiming(response.headers.get("server-timing"));
  const displayed = await preview;
  if (seq !== state.seq) return;
  if (displayed) {
    draw(body.data);
  } else {
    // The browser can't show this image (TIFF, or a URL it may not load): show the server's own drawing instead.
    await showServerRendering(form, key, model, body.data.length, seq);
  }
  const n = body.data.length;
  const counted = task === "classify" ? `top ${n} class${n === 1 ? "" : "es"}` : `${n} detection${n === 1 ? "" : "s"}`;
  els.summary.textContent = `${model} (${task}): ${counted} · ${Math.round(elapsed)} ms round trip` +
    (timing ? ` · server ${timing}` : "");
  setStatus(displayed ? "" : "Drawn by the server (format=png): the browser could not display this image itself.");
}

/** JSON indented by two spaces, but an array of numbers (a mask outline, keypoints) or a flat object (a box) on one
 * line: a segmentation answer stays readable instead of running to thousands of lines. Still valid JSON. */
function formatJson(value, indent = "") {
  const flat = (v) => v === null || typeof v !== "object";
  if (flat(value)) return JSON.stringify(value);
  const inner = indent + "  ";
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    if (value.every(flat)) return "[" + value.map((v) => JSON.stringify(v)).join(", ") + "]";
    return "[\n" + value.map((v) => inner + formatJson(v, inner)).join(",\n") + "\n" + indent + "]";
  }
  const entries = Object.entries(value);
  if (!entries.length) return "{}";
  if (entries.length <= 8 && entries.every(([, v]) => flat(v))) {
    return "{" + entries.map(([k, v]) => `${JSON.stringify(k)}: ${JSON.stringify(v)}`).join(", ") + "}";
  }
  return "{\n" + entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${formatJson(v, inner)}`).join(",\n") + "\n" + indent + "}";
}

// ---------------------------------------------------------------- video: NDJSON frames, a slider, the frame drawn

function showVideo(src) {
  clearCanvas();
  resetFrames();
  els.stage.classList.remove("empty");
  els.img.hidden = true;
  els.img.removeAttribute("src");
  els.video.hidden = false;
  state.videoPlayable = false;
  els.video.onloadeddata = () => {
    state.videoPlayable = true;
    els.stage.classList.remove("canvas-only");
    showFrame(Number(els.frame.value));
  };
  els.video.onerror = () => {  // a codec the browser lacks (MPEG-4 Part 2, MJPEG/AVI): boxes on a plain canvas
    state.videoPlayable = false;
    showFrame(Number(els.frame.value));
  };
  els.video.src = src;
}

function resetFrames() {
  state.frames = [];
  state.videoMeta = null;
  els.frames.hidden = true;
  els.frame.max = "0";
  els.frame.value = "0";
  els.frameLabel.textContent = "";
}

/** Read the NDJSON answer line by line: each frame is listed (and the first drawn) as soon as it arrives. */
async function readVideoStream(response, seq, started, model) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const lines = [];
  let buffered = "", end = null, failure = null;
  els.frames.hidden = false;
  const onLine = (text) => {
    if (!text.trim()) return;
    lines.push(text);
    const line = JSON.parse(text);
    if (line.done) { end = line; state.videoMeta = line.video || null; return; }
    state.frames.push(line);
    els.frame.max = String(state.frames.length - 1);
    if (state.frames.length === 1) showFrame(0);
    setStatus(`${state.frames.length} frame(s) received…`);
    if (lines.length % 25 === 0) els.json.textContent = lines.join("\n");
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (seq !== state.seq) { reader.cancel(); return; }
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      for (let at = buffered.indexOf("\n"); at >= 0; at = buffered.indexOf("\n")) {
        onLine(buffered.slice(0, at));
        buffered = buffered.slice(at + 1);
      }
    }
    onLine(buffered + decoder.decode());
  } catch (err) {
    if (seq !== state.seq) return;
    failure = err.message;
  }
  setBusy(false);
  setStatus("");
  els.json.textContent = lines.join("\n");
  if (!end || !end.success) {
    const title = end ? `${end.status} ${STATUS_TEXT[end.status] || "Error"}` : "The answer broke off";
    showError(title, end ? end.message : `The video's answer ended before its last line${failure ? `: ${failure}` : "."}`);
  }
  const results = state.frames.reduce((n, f) => n + f.data.length, 0);
  els.summary.textContent = `${model}: ${state.frames.length} frame${state.frames.length === 1 ? "" : "s"} · ` +
    `${results} result${results === 1 ? "" : "s"} in all · ${Math.round(performance.now() - started)} ms · ` +
    "move the slider to see each frame";
  showFrame(Number(els.frame.value));
}

/** Show frame `i` of the answer: seek the video there and draw its results over it (or on a plain canvas). */
function showFrame(i) {
  const f = state.frames[i];
  if (!f) return;
  const time = typeof f.time === "number" ? f.time : null;
  els.frameLabel.textContent = `frame ${f.frame}${time !== null ? ` · ${time.toFixed(2)} s` : ""} · ` +
    `${f.data.length} result${f.data.length === 1 ? "" : "s"}`;
  const v = els.video;
  if (state.videoPlayable) {
    const fps = f.frame > 0 && time ? f.frame / time : (state.videoMeta && state.videoMeta.fps) || 0;
    const target = (time || 0) + (fps ? 0.5 / fps : 0.001);  // mid-frame: the browser shows the frame we mean
    const paint = () => { if (Number(els.frame.value) === i) draw(f.data, v.videoWidth, v.videoHeight, i); };
    if (Math.abs(v.currentTime - target) < 1e-4) paint();
    else { v.addEventListener("seeked", paint, { once: true }); v.currentTime = target; }
    return;
  }
  const meta = state.videoMeta;
  if (v.error && meta && meta.width && meta.height) {
    els.stage.classList.add("canvas-only");
    draw(f.data, meta.width, meta.height, i, "#3a3f4b");
  }
}

function serverTiming(header) {
  if (!header) return "";
  const parts = header.split(",").map((p) => /^\s*([\w-]+);dur=([\d.]+)/.exec(p)).filter(Boolean);
  const total = parts.find((m) => m[1] === "total");
  const triton = parts.find((m) => m[1] === "triton");
  return [total && `${Math.round(total[2])} ms`, triton && `(Triton ${Math.round(triton[2])} ms)`].filter(Boolean).join(" ");
}

async function showServerRendering(form, key, model, count, seq) {
  form.set("format", "png");
  try {
    const response = await fetch(`${PAGE_V1}/predict/${encodeURIComponent(model)}`, { method: "POST", headers: { "x-api-key": key }, body: form });
    if (!response.ok) {
      const text = await response.text();
      let body = null;
      try { body = JSON.parse(text); } catch (_) { /* not JSON */ }
      const [title, message] = describeFailure(response, body, text);
      showError(`Annotated image: ${title}`, message);
      return;
    }
    const blob = await response.blob();
    if (seq !== state.seq) return;
    const shown = await showPreview(URL.createObjectURL(blob));
    if (shown) {
      sizeCanvas();
      els.canvas.dataset.detections = String(count);
    }
  } catch (err) {
    showError("Could not reach the server", err.message);
  }
}

// ---------------------------------------------------------------- drawing (mirrors gateway/vision/render.py)

function clearCanvas() {
  const ctx = els.canvas.getContext("2d");
  ctx.clearRect(0, 0, els.canvas.width, els.canvas.height);
  delete els.canvas.dataset.detections;
  delete els.canvas.dataset.frame;
}

function sizeCanvas(w = els.img.naturalWidth, h = els.img.naturalHeight, canvas = els.canvas) {
  canvas.width = w;
  canvas.height = h;
  return canvas.getContext("2d");
}

const classColor = (c) => PALETTE[((c % PALETTE.length) + PALETTE.length) % PALETTE.length];

function textColor(hex) {
  const r = parseInt(hex.slice(1, 3), 16), g = parseInt(hex.slice(3, 5), 16), b = parseInt(hex.slice(5, 7), 16);
  return 0.299 * r + 0.587 * g + 0.114 * b > 150 ? "rgb(104,31,17)" : "#fff";
}

/** Draw `data` (summary() items in image pixels) over the preview (or a video frame `frame` of w×h pixels, over
 * `background` when the browser can't show the video); lowest confidence first so the best is on top. `canvas`:
 * another canvas to draw on (the Streams view's, streams.js). */
function draw(data, width, height, frame, background, canvas = els.canvas) {
  const ctx = sizeCanvas(width, height, canvas);
  const w = canvas.width, h = canvas.height;
  if (background) { ctx.fillStyle = background; ctx.fillRect(0, 0, w, h); }
  const lw = Math.max(Math.round(((w + h + 3) / 2) * 0.003), 2);  // Ultralytics sums (h, w, 3)
  const items = [...data].reverse();

  ctx.globalAlpha = MASK_ALPHA;
  for (const d of items) {
    const s = d.segments;
    if (!s || !Array.isArray(s.x) || s.x.length < 3) continue;
    ctx.beginPath();
    ctx.moveTo(s.x[0], s.y[0]);
    for (let i = 1; i < s.x.length; i++) ctx.lineTo(s.x[i], s.y[i]);
    ctx.closePath();
    ctx.fillStyle = classColor(d.class);
    ctx.fill();
  }
  ctx.globalAlpha = 1;

  const fontPx = Math.max(10, Math.round(lw * 6.5));
  ctx.font = `${fontPx}px system-ui, "DejaVu Sans", sans-serif`;
  ctx.textBaseline = "bottom";
  for (const d of items) {
    if (!d.box) continue;
    const color = classColor(d.class);
    const b = d.box;
    const { x1, y1 } = b;
    ctx.lineWidth = lw;
    ctx.strokeStyle = color;
    if (b.x4 !== undefined) {  // an oriented box: its four corners
      ctx.beginPath();
      ctx.moveTo(b.x1, b.y1);
      ctx.lineTo(b.x2, b.y2);
      ctx.lineTo(b.x3, b.y3);
      ctx.lineTo(b.x4, b.y4);
      ctx.closePath();
      ctx.stroke();
    } else {
      ctx.strokeRect(x1, y1, b.x2 - x1, b.y2 - y1);
    }
    const label = `${d.track_id !== undefined ? `id:${d.track_id} ` : ""}${d.name} ${Number(d.confidence).toFixed(2)}`;
    const tw = Math.ceil(ctx.measureText(label).width) + 4;
    const th = fontPx + 4;
    const outside = y1 >= th;  // the tab goes above the box unless the box touches the top edge
    const x = Math.max(0, Math.min(x1, w - tw));
    const top = outside ? y1 - th : y1;
    ctx.fillStyle = color;
    ctx.fillRect(x, top, tw, th);
    ctx.fillStyle = textColor(color);
    ctx.fillText(label, x + 2, top + th - 2);
  }

  for (const d of items) if (d.keypoints) drawKeypoints(ctx, d.keypoints, lw);
  drawTop5(ctx, data.filter((d) => !d.box), fontPx, h);
  canvas.dataset.detections = String(data.length);
  if (frame !== undefined) canvas.dataset.frame = String(frame); else delete canvas.dataset.frame;
}

/** A classifier's classes, best first, as white lines on a half-transparent band near the top-left corner. */
function drawTop5(ctx, classes, fontPx, h) {
  let y = Math.round(h * 0.03);
  const x = y;
  const th = fontPx + 6;
  for (const d of classes) {
    const label = `${d.name} ${Number(d.confidence).toFixed(2)}`;
    const tw = Math.ceil(ctx.measureText(label).width) + 8;
    ctx.fillStyle = TOP5_BACKGROUND;
    ctx.fillRect(x, y, tw, th);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, x + 4, y + th - 3);
    y += th;
  }
}

function drawKeypoints(ctx, k, lw) {
  const n = k.x.length;
  const visible = Array.isArray(k.visible) ? k.visible : Array(n).fill(1);
  const shown = k.x.map((x, i) => visible[i] >= KPT_THRESHOLD && !(x === 0 && k.y[i] === 0));
  const coco = n === 17;
  if (coco) {
    ctx.lineWidth = Math.ceil(lw / 2);
    ctx.lineCap = "round";
    SKELETON.forEach(([i, j], li) => {
      if (!shown[i] || !shown[j] || Math.min(k.x[i], k.y[i], k.x[j], k.y[j]) < 0) return;
      ctx.strokeStyle = LIMB_COLORS[li];
      ctx.beginPath();
      ctx.moveTo(k.x[i], k.y[i]);
      ctx.lineTo(k.x[j], k.y[j]);
      ctx.stroke();
    });
  }
  for (let i = 0; i < n; i++) {
    if (!shown[i]) continue;
    ctx.fillStyle = coco ? KPT_COLORS[i] : classColor(i);
    ctx.beginPath();
    ctx.arc(k.x[i], k.y[i], lw, 0, 2 * Math.PI);
    ctx.fill();
  }
}

// ---------------------------------------------------------------- start

function init() {
  initKey();
  initImageInputs();
  els.model.addEventListener("change", onModelChange);
  for (const el of [els.size, els.confidence, els.iou, els.vidStride]) el.addEventListener("input", renderSnippets);
  els.frame.addEventListener("input", () => showFrame(Number(els.frame.value)));
  els.dialect.addEventListener("change", () => { state.dialectChosen = true; renderSnippets(); });
  els.form.addEventListener("submit", (e) => { e.preventDefault(); run(); });
  for (const button of document.querySelectorAll("button.copy")) {
    button.addEventListener("click", () => copy(state.snippets[button.dataset.copy], button));
  }
  renderSnippets();
  if (els.key.value.trim()) learnKeyDialect();
  loadModels();
}

init();

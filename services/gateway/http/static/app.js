// The LongCat web UI: plain JavaScript over the gateway's public HTTP API (/v1/...). Job events are read as
// Server-Sent Events through fetch (EventSource cannot send the Authorization header an API key needs).
"use strict";

const $ = (sel) => document.querySelector(sel);
const KEY_STORE = "longcat.apiKey";
const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);
const ui = {key: localStorage.getItem(KEY_STORE) || "", image: null, editJob: null, trainJob: null,
            editAbort: null, trainAbort: null, losses: [], pendingAdapter: null};

// ---- plumbing -----------------------------------------------------------------------------------------

function authHeaders(extra = {}) {
  return ui.key ? {...extra, Authorization: `Bearer ${ui.key}`} : extra;
}

class ApiError extends Error {
  constructor(status, message, param) { super(message); this.status = status; this.param = param; }
}

async function api(path, opts = {}) {
  const res = await fetch(path, {...opts, headers: authHeaders(opts.headers || {})});
  if (!res.ok) {
    let message = `${res.status} ${res.statusText}`, param = null;
    try { const body = await res.json(); if (body.error) { message = body.error.message; param = body.error.param; } } catch (e) { /* not JSON */ }
    if (res.status === 401) showKeyBox(true);
    throw new ApiError(res.status, message, param);
  }
  return res;
}
const apiJson = async (path, opts) => (await api(path, opts)).json();
const listOf = (body, key) => Array.isArray(body) ? body : (body.data || body[key] || []);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function notice(text) {
  const n = $("#notice");
  n.textContent = text || "";
  n.hidden = !text;
}

function setStatus(el, text, isError = false) {
  el.textContent = text;
  el.classList.toggle("error", isError);
}

// Follow a job's events until its terminal one; resumes with Last-Event-ID when the stream drops.
async function followEvents(jobId, onEvent, signal) {
  let last = "";
  for (let attempt = 0; attempt < 30; attempt++) {
    try {
      const res = await api(`/v1/jobs/${encodeURIComponent(jobId)}/events`,
                            {headers: last ? {"Last-Event-ID": last} : {}, signal});
      const reader = res.body.getReader(), decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += decoder.decode(value, {stream: true}).replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let id = "", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("id:")) id = line.slice(3).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
          }
          if (id) last = id;
          if (!data) continue;
          const ev = JSON.parse(data);
          onEvent(ev);
          if (isTerminal(ev)) return ev;
        }
      }
    } catch (e) {
      if (signal && signal.aborted) return null;
      if (e instanceof ApiError && e.status < 500) throw e;
    }
    await sleep(1000);
  }
  return null;
}

function isTerminal(ev) {
  return ev.kind === "result" || (ev.kind === "state" && TERMINAL.has(ev.state));
}

// ---- tabs and the API key ------------------------------------------------------------------------------

function showTab() {
  const [name, query] = (location.hash.slice(1) || "edit").split("?");
  const tab = ["edit", "train", "adapters", "jobs"].includes(name) ? name : "edit";
  for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== `tab-${tab}`;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.tab === tab);
  const params = new URLSearchParams(query || "");
  if (tab === "edit") {
    if (params.get("adapter")) ui.pendingAdapter = params.get("adapter");
    loadAdapterPicker();
    if (params.get("job")) openEditJob(params.get("job"));
  } else if (tab === "train" && params.get("job")) {
    openTrainJob(params.get("job"));
  } else if (tab === "adapters") {
    loadAdapterTable();
  } else if (tab === "jobs") {
    loadJobs();
  }
}

function showKeyBox(show) {
  $("#key-box").hidden = !show;
}

async function probeAuth() {
  // Keys on: an anonymous request is refused with 401, so the key field is shown.
  try {
    const res = await fetch("/v1/adapters", {headers: authHeaders()});
    showKeyBox(res.status === 401 || Boolean(ui.key));
  } catch (e) { showKeyBox(Boolean(ui.key)); }
}

// ---- Edit ----------------------------------------------------------------------------------------------

function setImage(file) {
  if (!file || !file.type.startsWith("image/")) { notice("image: choose an image file (PNG, JPEG or WebP)"); return; }
  notice("");
  ui.image = file;
  const url = URL.createObjectURL(file);
  const thumb = $("#before-thumb");
  thumb.src = url; thumb.hidden = false;
  $("#before").src = url;
  $("#drop-hint").hidden = true;
}

async function loadAdapterPicker() {
  const box = $("#adapter-picker");
  let adapters;
  try { adapters = listOf(await apiJson("/v1/adapters"), "adapters"); } catch (e) { box.textContent = e.message; return; }
  const chosen = new Map([...box.querySelectorAll(".adapter")].filter((r) => r.querySelector("input[type=checkbox]").checked)
    .map((r) => [r.dataset.ref, r.querySelector("input[type=number]").value]));
  let pending = ui.pendingAdapter; ui.pendingAdapter = null;
  box.replaceChildren();
  if (!adapters.length) { box.innerHTML = "<em>none yet: train one, or upload one under Adapters</em>"; return; }
  for (const a of adapters) {
    // owner/name: the newest version of that owner's adapter (a plain name would mean the caller's own only).
    const ref = a.owner ? `${a.owner}/${a.name}` : a.name;
    if (pending && (pending === ref || pending === a.name)) { chosen.set(ref, "1"); pending = null; }
    const row = document.createElement("label");
    row.className = "adapter"; row.dataset.name = a.name; row.dataset.ref = ref;
    const check = Object.assign(document.createElement("input"), {type: "checkbox", checked: chosen.has(ref)});
    const weight = Object.assign(document.createElement("input"), {type: "number", step: "0.05", min: "-4", max: "4",
                                                                   value: chosen.get(ref) || "1"});
    weight.setAttribute("aria-label", `${ref} weight`);
    const version = a.version ? ` v${a.version}` : "";
    row.append(check, document.createTextNode(` ${ref}${version} `), weight, document.createTextNode(` rank ${a.rank}`));
    box.append(row);
  }
}

function chosenAdapters() {
  return [...document.querySelectorAll("#adapter-picker .adapter")]
    .filter((r) => r.querySelector("input[type=checkbox]").checked)
    .map((r) => `${r.dataset.ref}:${r.querySelector("input[type=number]").value || 1}`).join(",");
}

async function runEdit(ev) {
  ev.preventDefault();
  if (!ui.image) { notice("image: drop or choose an image first"); return; }
  notice("");
  const form = new FormData();
  form.append("image", ui.image, ui.image.name || "image.png");
  form.append("prompt", $("#prompt").value);
  if ($("#negative").value) form.append("negative_prompt", $("#negative").value);
  form.append("size", $("#size").value || "auto");
  form.append("num_inference_steps", $("#steps").value);
  form.append("preview_every", String(Math.max(1, Math.round(Number($("#steps").value) / 8))));  // ~8 previews
  form.append("guidance_scale", $("#guidance").value);
  if ($("#seed").value !== "") form.append("seed", $("#seed").value);
  const adapters = chosenAdapters();
  if (adapters) form.append("adapters", adapters);
  $("#run-edit").disabled = true;
  resetEditView();
  try {
    const job = await apiJson("/v1/jobs/edits", {method: "POST", body: form});
    await watchEdit(job.id);
  } catch (e) {
    setStatus($("#edit-status"), e.message, true);
  } finally {
    $("#run-edit").disabled = false;
  }
}

function resetEditView() {
  $("#preview").hidden = true; $("#compare").hidden = true; $("#download").hidden = true;
  $("#edit-progress").hidden = false; $("#edit-progress").value = 0; $("#edit-progress").dataset.steps = "0";
  $("#preview").removeAttribute("src");
  setStatus($("#edit-status"), "submitting…");
}

async function watchEdit(jobId) {
  ui.editJob = jobId;
  if (ui.editAbort) ui.editAbort.abort();
  ui.editAbort = new AbortController();
  $("#cancel-edit").hidden = false;
  const status = $("#edit-status");
  try {
    await followEvents(jobId, (ev) => {
      if (ev.kind === "queued") setStatus(status, `queued: position ${ev.queue_position}`);
      else if (ev.kind === "progress") {
        setStatus(status, `step ${ev.step}/${ev.total}` + (ev.eta_s ? ` · ${ev.eta_s.toFixed(1)} s left` : ""));
        $("#edit-progress").max = ev.total || 1; $("#edit-progress").value = ev.step;
        $("#edit-progress").dataset.steps = `${(Number($("#edit-progress").dataset.steps) || 0) + 1}`;
        if (ev.preview) { $("#preview").src = ev.preview; $("#preview").hidden = false; $("#preview").dataset.shown = "1"; }
      } else if (ev.kind === "result") showEditResult(ev);
      else if (ev.kind === "state") {
        const failed = ev.state === "FAILED" || ev.state === "CANCELLED";
        const reason = (ev.job && ev.job.reason) || ev.message || "";
        setStatus(status, ev.state.toLowerCase() + (reason ? `: ${reason}` : ""), failed);
      }
    }, ui.editAbort.signal);
  } finally {
    $("#cancel-edit").hidden = true;
    $("#edit-progress").hidden = true;
  }
}

function showEditResult(ev) {
  const r = ev.result || {};
  const src = r.image || (r.url || "");
  $("#after").src = src;
  $("#compare").hidden = false;
  $("#preview").hidden = true;
  const dl = $("#download");
  dl.href = src; dl.hidden = false;
  dl.download = `longcat-edit-${ev.job_id || "result"}.png`;
  setStatus($("#edit-status"), `done: ${r.width}×${r.height}, seed ${r.seed}` +
            (r.timings ? `, ${r.timings.total_s.toFixed(1)} s` : ""));
}

async function openEditJob(jobId) {
  resetEditView();
  try {
    const job = await apiJson(`/v1/jobs/${encodeURIComponent(jobId)}`);
    if (job.state === "SUCCEEDED") {
      const blob = await (await api(`/v1/jobs/${encodeURIComponent(jobId)}/result`)).blob();
      showEditResult({job_id: jobId, result: {...job.result, image: URL.createObjectURL(blob)}});
      $("#edit-progress").hidden = true;
    } else {
      await watchEdit(jobId);
    }
  } catch (e) { setStatus($("#edit-status"), e.message, true); }
}

async function cancelJob(jobId, statusEl) {
  try { await api(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, {method: "POST"}); setStatus(statusEl, "cancelling…"); }
  catch (e) { setStatus(statusEl, e.message, true); }
}

// ---- Train ---------------------------------------------------------------------------------------------

async function prefillTraining() {
  // The quickstart's files, as shipped beside config/config.json.example; the user edits them here.
  const [config, loader] = await Promise.all(["/ui/quickstart-config.json", "/ui/quickstart-dataloader.json"]
    .map(async (u) => (await fetch(u)).text()));
  if (!$("#train-config").value) $("#train-config").value = config;
  if (!$("#train-dataloader").value) $("#train-dataloader").value = loader;
}

async function datasetArchive(loader) {
  const zipped = $("#train-zip").files[0];
  if (zipped) return zipped;
  const edits = [...$("#edits-dir").files], refs = [...$("#refs-dir").files];
  if (!edits.length && !refs.length) return null;
  // The edit dataset is the one with conditioning_data; its conditioning dataset holds the references. Files
  // land under each dataset's instance_data_dir, so the dataloader's paths name them inside the archive.
  const editDs = loader.find((d) => d.conditioning_data && d.conditioning_data.length) || loader[0];
  const refDs = loader.find((d) => editDs.conditioning_data && d.id === editDs.conditioning_data[0]) || loader[1];
  const entries = [];
  for (const [files, ds] of [[edits, editDs], [refs, refDs]]) {
    if (!ds) continue;
    const dir = String(ds.instance_data_dir || ds.id).replace(/^\.?\/+/, "").replace(/\/+$/, "");
    for (const f of files) {
      if (f.name.startsWith(".")) continue;
      entries.push({path: `${dir}/${f.name}`, bytes: new Uint8Array(await f.arrayBuffer())});
    }
  }
  return new File([Zip.build(entries)], "datasets.zip", {type: "application/zip"});
}

async function runTraining(ev) {
  ev.preventDefault();
  notice("");
  const status = $("#train-status");
  let loader;
  try { loader = JSON.parse($("#train-dataloader").value); } catch (e) { setStatus(status, `dataloader: not JSON: ${e.message}`, true); return; }
  try { JSON.parse($("#train-config").value); } catch (e) { setStatus(status, `config: not JSON: ${e.message}`, true); return; }
  $("#run-train").disabled = true;
  try {
    const form = new FormData();
    form.append("name", $("#train-name").value);
    form.append("config", $("#train-config").value);
    form.append("dataloader", $("#train-dataloader").value);
    const archive = await datasetArchive(Array.isArray(loader) ? loader : loader.datasets || []);
    if (archive) form.append("archive", archive, archive.name);
    setStatus(status, "submitting…");
    const job = await apiJson("/v1/trainings", {method: "POST", body: form});
    await watchTraining(job.id, $("#train-name").value);
  } catch (e) {
    setStatus(status, e.message, true);
  } finally {
    $("#run-train").disabled = false;
  }
}

function resetTrainView() {
  ui.losses = [];
  drawLoss();
  $("#validation-grid").replaceChildren();
  $("#use-adapter").hidden = true;
  $("#train-progress").hidden = false; $("#train-progress").value = 0;
}

async function watchTraining(jobId, adapterName) {
  resetTrainView();
  ui.trainJob = jobId;
  if (ui.trainAbort) ui.trainAbort.abort();
  ui.trainAbort = new AbortController();
  const status = $("#train-status");
  $("#cancel-train").hidden = false;
  try {
    await followEvents(jobId, (ev) => {
      if (ev.kind === "queued") setStatus(status, `queued: position ${ev.queue_position}`);
      else if (ev.kind === "loss") {
        ui.losses.push([ev.step, ev.loss]);
        drawLoss();
        $("#train-progress").max = ev.total || 1; $("#train-progress").value = ev.step;
        setStatus(status, `step ${ev.step}/${ev.total} · loss ${ev.loss.toFixed(4)}`);
      } else if (ev.kind === "validation") addValidation(ev);
      else if (ev.kind === "checkpoint") setStatus(status, `checkpoint at step ${ev.step}`);
      else if (ev.kind === "state" || ev.kind === "result") {
        const job = ev.job || {};
        // owner/name of what it published (adapter_ref is owner/name@vN): the picker's key for it
        const name = job.adapter_ref ? job.adapter_ref.replace(/@v\d+$/, "") : (job.adapter_name || adapterName);
        const failed = ev.state === "FAILED" || ev.state === "CANCELLED";
        setStatus(status, ev.state.toLowerCase() + (job.reason ? `: ${job.reason}` : ""), failed);
        if (ev.state === "SUCCEEDED" && name) {
          const link = $("#use-adapter");
          link.href = `#edit?adapter=${encodeURIComponent(name)}`;
          link.textContent = `Open Edit with ${name}`;
          link.hidden = false;
        }
      }
    }, ui.trainAbort.signal);
  } finally {
    $("#cancel-train").hidden = true;
    $("#train-progress").hidden = true;
  }
}

async function openTrainJob(jobId) {
  try {
    const job = await apiJson(`/v1/jobs/${encodeURIComponent(jobId)}`);
    await watchTraining(jobId, job.adapter_name);
  } catch (e) { setStatus($("#train-status"), e.message, true); }
}

function addValidation(ev) {
  const fig = document.createElement("figure");
  const img = Object.assign(document.createElement("img"), {src: ev.image, alt: `validation ${ev.index} at step ${ev.step}`});
  img.className = "validation";
  const cap = document.createElement("figcaption");
  cap.textContent = `step ${ev.step} · #${ev.index}`;
  fig.append(img, cap);
  $("#validation-grid").append(fig);
}

function drawLoss() {
  const canvas = $("#loss-chart"), ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 34;
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = "#6b7280"; ctx.font = "11px system-ui";
  ctx.strokeStyle = "#d9dde5";
  ctx.strokeRect(pad, 8, w - pad - 8, h - pad - 8);
  const pts = ui.losses.filter(([, l]) => Number.isFinite(l));
  if (!pts.length) { ctx.fillText("the loss appears here as the job trains", pad + 10, h / 2); return; }
  const maxStep = Math.max(...pts.map((p) => p[0]), 1), minStep = Math.min(...pts.map((p) => p[0]));
  let lo = Math.min(...pts.map((p) => p[1])), hi = Math.max(...pts.map((p) => p[1]));
  if (hi - lo < 1e-9) { hi += 0.5; lo -= 0.5; }
  const x = (s) => pad + (maxStep === minStep ? 0.5 : (s - minStep) / (maxStep - minStep)) * (w - pad - 8);
  const y = (l) => 8 + (1 - (l - lo) / (hi - lo)) * (h - pad - 8);
  ctx.fillText(hi.toPrecision(3), 2, 18); ctx.fillText(lo.toPrecision(3), 2, h - pad);
  ctx.fillText(`step ${minStep}`, pad, h - 12); ctx.fillText(`step ${maxStep}`, w - 60, h - 12);
  ctx.fillText("loss", w / 2 - 10, h - 12);
  ctx.strokeStyle = "#c2410c"; ctx.lineWidth = 2; ctx.beginPath();
  pts.forEach(([s, l], i) => (i ? ctx.lineTo(x(s), y(l)) : ctx.moveTo(x(s), y(l))));
  ctx.stroke();
  ctx.fillStyle = "#c2410c";
  for (const [s, l] of pts) { ctx.beginPath(); ctx.arc(x(s), y(l), 2.5, 0, 7); ctx.fill(); }
  canvas.dataset.points = String(pts.length);
}

// ---- Adapters ------------------------------------------------------------------------------------------

async function loadAdapterTable() {
  const body = $("#adapter-table tbody");
  let adapters;
  try { adapters = listOf(await apiJson("/v1/adapters"), "adapters"); } catch (e) { notice(e.message); return; }
  body.replaceChildren();
  for (const a of adapters) {
    const tr = document.createElement("tr");
    tr.dataset.name = a.name;
    for (const v of [a.name, a.rank, a.alpha, a.format, `${(a.size_bytes / 1e6).toFixed(2)} MB`, a.owner || "-"]) {
      const td = document.createElement("td"); td.textContent = v; tr.append(td);
    }
    const td = document.createElement("td");
    const use = Object.assign(document.createElement("button"), {type: "button", textContent: "Edit with", className: "use"});
    use.onclick = () => { location.hash = `#edit?adapter=${encodeURIComponent(a.name)}`; };
    const dl = Object.assign(document.createElement("button"), {type: "button", textContent: "Download", className: "download"});
    dl.onclick = () => downloadAdapter(a.name, a.download_url);
    const del = Object.assign(document.createElement("button"), {type: "button", textContent: "Delete", className: "delete"});
    del.onclick = async () => {
      if (!confirm(`Delete adapter ${a.name}?`)) return;
      // ?owner=: this row's adapter, not the caller's own adapter of the same name (names are per owner)
      const owner = a.owner ? `?owner=${encodeURIComponent(a.owner)}` : "";
      try { await api(`/v1/adapters/${encodeURIComponent(a.name)}${owner}`, {method: "DELETE"}); loadAdapterTable(); }
      catch (e) { notice(e.message); }
    };
    td.append(use, dl, del); tr.append(td); body.append(tr);
  }
}

async function downloadAdapter(name, url) {
  try {
    const blob = await (await api(url || `/v1/adapters/${encodeURIComponent(name)}/download`)).blob();
    const a = Object.assign(document.createElement("a"), {href: URL.createObjectURL(blob),
                                                          download: `${name}.safetensors`});
    document.body.append(a); a.click(); a.remove();
  } catch (e) { notice(e.message); }
}

async function uploadAdapter(ev) {
  ev.preventDefault();
  const status = $("#upload-status"), name = $("#upload-name").value;
  const form = new FormData();
  form.append("file", $("#upload-file").files[0]);
  if ($("#upload-config").files[0]) form.append("config", $("#upload-config").files[0]);
  form.append("overwrite", $("#upload-overwrite").checked ? "true" : "false");
  setStatus(status, "uploading…");
  try {
    const a = await apiJson(`/v1/adapters/${encodeURIComponent(name)}`, {method: "POST", body: form});
    setStatus(status, `uploaded ${a.name}: ${a.format}, rank ${a.rank}`);
    loadAdapterTable();
  } catch (e) { setStatus(status, e.message, true); }
}

// ---- Jobs ----------------------------------------------------------------------------------------------

async function loadJobs() {
  const body = $("#job-table tbody");
  let jobs;
  try { jobs = listOf(await apiJson("/v1/jobs?limit=50"), "jobs"); } catch (e) { notice(e.message); return; }
  body.replaceChildren();
  for (const j of jobs) {
    const tr = document.createElement("tr");
    tr.dataset.id = j.id;
    const when = j.created_at ? new Date(j.created_at * 1000).toLocaleString() : "-";
    for (const v of [j.id, j.kind, j.state, j.total_steps ? `${j.step}/${j.total_steps}` : "", when]) {
      const td = document.createElement("td"); td.textContent = v; tr.append(td);
    }
    const td = document.createElement("td");
    const open = Object.assign(document.createElement("button"), {type: "button", textContent: "Open", className: "open"});
    open.onclick = () => { location.hash = `#${j.kind === "training" ? "train" : "edit"}?job=${encodeURIComponent(j.id)}`; };
    td.append(open);
    if (!TERMINAL.has(j.state)) {
      const c = Object.assign(document.createElement("button"), {type: "button", textContent: "Cancel"});
      c.onclick = async () => { await cancelJob(j.id, $("#notice")); loadJobs(); };
      td.append(c);
    }
    tr.append(td); body.append(tr);
  }
}

// ---- wiring --------------------------------------------------------------------------------------------

function wire() {
  const drop = $("#drop");
  $("#image-input").addEventListener("change", (e) => setImage(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); setImage(e.dataTransfer.files[0]); });
  $("#edit-form").addEventListener("submit", runEdit);
  $("#cancel-edit").addEventListener("click", () => ui.editJob && cancelJob(ui.editJob, $("#edit-status")));
  $("#compare-slider").addEventListener("input", (e) => {
    $("#before-wrap").style.clipPath = `inset(0 ${100 - e.target.value}% 0 0)`;
  });
  $("#train-form").addEventListener("submit", runTraining);
  $("#cancel-train").addEventListener("click", () => ui.trainJob && cancelJob(ui.trainJob, $("#train-status")));
  $("#upload-form").addEventListener("submit", uploadAdapter);
  $("#refresh-jobs").addEventListener("click", loadJobs);
  const key = $("#api-key");
  key.value = ui.key;
  key.addEventListener("change", () => {
    ui.key = key.value.trim();
    if (ui.key) localStorage.setItem(KEY_STORE, ui.key); else localStorage.removeItem(KEY_STORE);
    notice("");
    showTab();
  });
  window.addEventListener("hashchange", showTab);
}

wire();
drawLoss();
prefillTraining();
probeAuth();
showTab();

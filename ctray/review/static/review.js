// ctray label & review page: plain JavaScript, no external assets.
// Report text and labels are inserted with textContent only (never innerHTML).
"use strict";
const $ = (id) => document.getElementById(id);
const state = { labelers: [], tasks: [], job: null, jobInfo: null, queue: null, item: null, itemQueue: null, poll: null };

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function formatDetail(detail) {
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).filter((x) => x !== "body").join(".")}: ${d.msg}`).join("; ");
  }
  return typeof detail === "string" ? detail : JSON.stringify(detail);
}

// <body data-pending> counts requests in flight, so a script (or a test) can tell when the
// page has settled.
function pending(delta) {
  document.body.dataset.pending = String(Number(document.body.dataset.pending || 0) + delta);
}

async function api(path, opts = {}) {
  pending(1);
  try { return await request(path, opts); } finally { pending(-1); }
}

async function request(path, opts) {
  const headers = Object.assign({}, opts.headers || {});
  const token = $("token").value.trim();
  if (token) headers.Authorization = "Bearer " + token;
  let body = opts.body;
  if (opts.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(opts.json);
  }
  let r;
  try {
    r = await fetch(path, { method: opts.method || "GET", headers, body });
  } catch (e) {
    throw new ApiError(0, "the server did not answer (" + e.message + ")");
  }
  if (!r.ok) {
    let detail = r.statusText;
    try { detail = formatDetail((await r.json()).detail); } catch (e) { /* not JSON */ }
    throw new ApiError(r.status, `${detail} (HTTP ${r.status})`);
  }
  return opts.raw ? r : await r.json();
}

function showMessage(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = kind;
  box.hidden = false;
}
function clearMessage() { $("message").hidden = true; $("message").textContent = ""; }

async function guarded(fn) {
  clearMessage();
  try { await fn(); } catch (e) { showMessage(e.message || String(e)); }
}

function valueText(v, task) {
  if (v === null || v === undefined) return task === "ctrate" ? "0 absent" : "blank";
  if (task === "ctrate") return v === 1 ? "1 present" : "0 absent";
  return { "1": "1 positive", "0": "0 negative", "-1": "-1 uncertain" }[String(v)] || String(v);
}
function valueClass(v) { return v === 1 ? "v1" : v === -1 ? "vu" : ""; }

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

// Render `text` into `box` with <mark> around every span; sources: [{spans, cls}].
function renderMarked(box, text, sources) {
  box.textContent = "";
  const cuts = new Set([0, text.length]);
  for (const src of sources) for (const s of src.spans) { cuts.add(s.start); cuts.add(s.end); }
  const points = [...cuts].sort((a, b) => a - b);
  for (let i = 0; i + 1 < points.length; i++) {
    const [lo, hi] = [points[i], points[i + 1]];
    const piece = text.slice(lo, hi);
    const classes = [], keys = [];
    for (const src of sources) {
      for (const s of src.spans) {
        if (s.start <= lo && hi <= s.end) {
          if (!classes.includes(src.cls)) classes.push(src.cls);
          keys.push(...s.keys);
        }
      }
    }
    if (!classes.length) { box.appendChild(document.createTextNode(piece)); continue; }
    const mark = document.createElement("mark");
    mark.textContent = piece;
    mark.className = classes.sort().join("");
    mark.dataset.keys = [...new Set(keys)].join("|");
    mark.title = "evidence for: " + [...new Set(keys)].join(", ");
    box.appendChild(mark);
  }
}

function highlightKey(box, key, on) {
  for (const m of box.querySelectorAll("mark")) {
    if (m.dataset.keys.split("|").includes(key)) m.classList.toggle("active", on);
  }
}

function fillSelect(sel, options, keep) {
  const old = keep ? sel.value : null;
  sel.textContent = "";
  for (const [value, text] of options) {
    const o = document.createElement("option");
    o.value = value; o.textContent = text;
    sel.appendChild(o);
  }
  if (old && options.some(([v]) => v === old)) sel.value = old;
}

async function download(path, name) {
  const r = await api(path, { raw: true });
  const url = URL.createObjectURL(await r.blob());
  const a = document.createElement("a");
  a.href = url; a.download = name;
  document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ------------------------------------------------------------------ labelers and tasks

async function loadLabelers() {
  const info = await api("api/labelers");
  state.labelers = info.labelers; state.tasks = info.tasks;
  const tasks = info.tasks.map((t) => [t.name, t.title]);
  fillSelect($("task"), tasks, true);
  fillSelect($("file-task"), tasks.filter(([n]) => n !== "leavs"), true);
  onTaskChange(); onFileTaskChange();
}

function labelersFor(task) {
  return state.labelers.filter((l) => l.task === task);
}

function onTaskChange() {
  const opts = labelersFor($("task").value).map((l) =>
    [l.name, l.status === "RUNNING" ? l.name : `${l.name} (${l.status.toLowerCase()})`]);
  fillSelect($("labeler"), opts, true);
}

function onFileTaskChange() {
  const box = $("file-labelers");
  box.textContent = "";
  for (const l of labelersFor($("file-task").value)) {
    const label = document.createElement("label");
    const cb = document.createElement("input");
    cb.type = "checkbox"; cb.value = l.name; cb.id = "lab-" + l.name;
    label.appendChild(cb); label.appendChild(document.createTextNode(" " + l.name + " "));
    box.appendChild(label);
  }
}

// ------------------------------------------------------------------ paste

async function labelPasted() {
  const task = $("task").value, text = $("report").value;
  const out = await api("api/label", { method: "POST", json: { task, labeler: $("labeler").value, text } });
  const tbody = $("labels-table").querySelector("tbody");
  tbody.textContent = "";
  $("label-model").textContent = out.model ? `(${out.labeler}: ${out.model})` : "";
  renderMarked($("report-view"), text, [{ spans: out.spans, cls: "a" }]);
  if (out.error) { showMessage("the labeler could not label this report: " + out.error); return; }
  for (const row of out.rows) {
    const tr = document.createElement("tr");
    tr.dataset.key = row.key;
    cell(tr, row.name);
    const v = cell(tr, valueText(row.value, task), valueClass(row.value));
    v.dataset.value = row.value === null ? "" : String(row.value);
    cell(tr, row.evidence || "", "evidence");
    tr.addEventListener("mouseenter", () => highlightKey($("report-view"), row.key, true));
    tr.addEventListener("mouseleave", () => highlightKey($("report-view"), row.key, false));
    tbody.appendChild(tr);
  }
}

// ------------------------------------------------------------------ upload job

async function upload() {
  const file = $("file-input").files[0];
  if (!file) throw new Error("choose a CSV or Parquet file first");
  const labelers = [...$("file-labelers").querySelectorAll("input:checked")].map((c) => c.value);
  if (!labelers.length) throw new Error("tick at least one labeler");
  const q = new URLSearchParams({ task: $("file-task").value, labelers: labelers.join(","), filename: file.name });
  const out = await api("api/jobs?" + q, { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
  state.job = out.job;
  $("job").hidden = false;
  $("job-id").textContent = out.job;
  $("downloads").textContent = "";
  pollJob();
}

async function pollJob() {
  clearTimeout(state.poll);
  const info = await api(`api/jobs/${state.job}`);
  state.jobInfo = info;
  $("job-progress").max = Math.max(info.total || 1, 1);
  $("job-progress").value = info.done || 0;
  $("job-status").textContent = `${info.status}: ${info.done}/${info.total} labeled, ${info.failed} failed` +
    (info.message ? ` (${info.message})` : "");
  $("job-status").dataset.status = info.status;
  if (info.status === "running" || info.status === "queued") {
    state.poll = setTimeout(() => guarded(pollJob), 400);
    return;
  }
  const box = $("downloads");
  box.textContent = "";
  for (const name of info.downloads) {
    const b = document.createElement("button");
    b.className = "download"; b.id = "download-" + name;
    b.textContent = `Download labels_${name}.csv`;
    b.addEventListener("click", () => guarded(() => download(`api/jobs/${state.job}/labels/${name}`, `labels_${name}_${state.job}.csv`)));
    box.appendChild(b);
  }
  const sources = [...info.labelers, ...(info.gold ? ["gold"] : [])].map((n) => [n, n]);
  fillSelect($("review-a"), sources, true);
  fillSelect($("review-b"), sources, true);
  if (sources.length > 1 && $("review-a").value === $("review-b").value) $("review-b").selectedIndex = 1;
}

async function uploadGold() {
  const file = $("gold-input").files[0];
  if (!file) throw new Error("choose a gold CSV or Parquet file first");
  const out = await api(`api/jobs/${state.job}/gold?` + new URLSearchParams({ filename: file.name }),
    { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
  await pollJob();
  $("review-b").value = "gold";
  showMessage(`gold file: ${out.gold_reports} reports, ${out.matched} match this job`, "ok");
}

async function makeReview() {
  const out = await api("api/reviews", { method: "POST", json: { job: state.job, a: $("review-a").value, b: $("review-b").value } });
  showMessage(`review queue ${out.queue}: ${out.disagreements} of ${out.compared} reports disagree`, "ok");
  await loadQueues(out.queue);
  switchTab("review");
}

// ------------------------------------------------------------------ review

async function loadQueues(select) {
  const out = await api("api/reviews");
  fillSelect($("queue"), out.queues.map((q) => [q.id, `${q.id} (${q.items} reports)`]), true);
  if (select) $("queue").value = select;
  if ($("queue").value) await loadQueue();
}

async function loadQueue() {
  state.queue = $("queue").value;
  // An open report of another queue must not be saved into this one.
  if (state.itemQueue !== state.queue) { state.item = null; state.itemQueue = null; $("item").hidden = true; }
  const reviewer = $("reviewer").value.trim();
  const out = await api(`api/reviews/${encodeURIComponent(state.queue)}?` + new URLSearchParams({ reviewer }));
  $("head-a").textContent = out.name_a; $("head-b").textContent = out.name_b;
  const tbody = $("queue-items").querySelector("tbody");
  tbody.textContent = "";
  for (const it of out.items) {
    const tr = document.createElement("tr");
    tr.className = "clickable" + (state.item === it.report_id ? " current" : "");
    tr.dataset.id = it.report_id;
    cell(tr, it.report_id + (it.reviewed_by_me ? " ✓" : ""));
    cell(tr, String(it.n_diff));
    cell(tr, String(it.reviewers));
    tr.addEventListener("click", () => guarded(() => openItem(it.report_id)));
    tbody.appendChild(tr);
  }
  $("queue-items").dataset.queue = state.queue;
}

async function openItem(reportId) {
  // Clicking the report that is already open keeps the choices not saved yet.
  if (state.item === reportId && state.itemQueue === state.queue && !$("item").hidden) return;
  const reviewer = $("reviewer").value.trim();
  const it = await api(`api/reviews/${encodeURIComponent(state.queue)}/items/${encodeURIComponent(reportId)}?` +
    new URLSearchParams({ reviewer }));
  state.item = reportId; state.itemQueue = state.queue;
  for (const tr of $("queue-items").querySelectorAll("tbody tr")) tr.classList.toggle("current", tr.dataset.id === reportId);
  $("item").hidden = false;
  $("item-id").textContent = reportId;
  $("saved-msg").textContent = it.saved_at ? `you saved this at ${it.saved_at}` : "";
  renderMarked($("item-text"), it.text, [{ spans: it.spans_a, cls: "a" }, { spans: it.spans_b, cls: "b" }]);
  const tbody = $("item-table").querySelector("tbody");
  tbody.textContent = "";
  const options = it.allowed.map((v) => [v === null ? "" : String(v), valueText(v, it.task)]);
  it.observations.forEach((obs, i) => {
    const a = it.labels_a[obs.key], b = it.labels_b[obs.key];
    const tr = document.createElement("tr");
    tr.dataset.key = obs.key;
    if (a !== b) tr.className = "differs";
    cell(tr, obs.name);
    for (const [v, ev] of [[a, it.evidence_a[obs.key]], [b, it.evidence_b[obs.key]]]) {
      const td = cell(tr, valueText(v, it.task), valueClass(v));
      if (ev) { const s = document.createElement("div"); s.className = "evidence"; s.textContent = ev; td.appendChild(s); }
    }
    const td = document.createElement("td");
    const sel = document.createElement("select");
    sel.id = "v-" + i; sel.dataset.key = obs.key;
    fillSelect(sel, options);
    const mine = obs.key in it.mine ? it.mine[obs.key] : a;
    sel.value = mine === null || mine === undefined ? "" : String(mine);
    td.appendChild(sel); tr.appendChild(td);
    tr.addEventListener("mouseenter", () => highlightKey($("item-text"), obs.key, true));
    tr.addEventListener("mouseleave", () => highlightKey($("item-text"), obs.key, false));
    tbody.appendChild(tr);
  });
}

async function saveItem() {
  const reviewer = $("reviewer").value.trim();
  if (!reviewer) throw new Error("type your name in the Reviewer box first");
  const values = {};
  for (const sel of $("item-table").querySelectorAll("select")) {
    values[sel.dataset.key] = sel.value === "" ? null : (isNaN(Number(sel.value)) ? sel.value : Number(sel.value));
  }
  const out = await api(`api/reviews/${encodeURIComponent(state.queue)}/items/${encodeURIComponent(state.item)}`,
    { method: "PUT", json: { reviewer, values } });
  await loadQueue();
  $("saved-msg").textContent = `saved ${out.saved} values at ${out.saved_at}`;
  $("saved-msg").dataset.savedAt = out.saved_at;
}

async function showKappa() {
  const out = await api(`api/reviews/${encodeURIComponent(state.queue)}/kappa`);
  $("kappa").hidden = false;
  $("kappa-summary").textContent = `${out.reports_with_several_reviewers} report(s) seen by more than one reviewer; reviewers: ${out.reviewers.join(", ")}`;
  const tbody = $("kappa-table").querySelector("tbody");
  tbody.textContent = "";
  for (const o of out.observations) {
    if (!o.reports) continue;
    const tr = document.createElement("tr");
    tr.dataset.observation = o.observation;
    cell(tr, o.observation); cell(tr, String(o.reports));
    cell(tr, o.agreement === null ? "" : o.agreement.toFixed(2));
    cell(tr, o.kappa === null ? "undefined (one class)" : o.kappa.toFixed(3));
    tbody.appendChild(tr);
  }
}

// ------------------------------------------------------------------ wiring

function switchTab(name) {
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.tab === name);
  for (const p of document.querySelectorAll(".panel")) p.hidden = p.id !== name;
}

window.addEventListener("DOMContentLoaded", () => {
  $("token").value = sessionStorage.getItem("ctray-token") || "";
  $("reviewer").value = localStorage.getItem("ctray-reviewer") || "";
  $("token").addEventListener("change", () => {
    sessionStorage.setItem("ctray-token", $("token").value.trim());
    guarded(async () => { await loadLabelers(); await loadQueues(); });
  });
  $("reviewer").addEventListener("change", () => localStorage.setItem("ctray-reviewer", $("reviewer").value.trim()));
  for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => switchTab(b.dataset.tab));
  $("task").addEventListener("change", onTaskChange);
  $("file-task").addEventListener("change", onFileTaskChange);
  $("label-btn").addEventListener("click", () => guarded(labelPasted));
  $("upload-btn").addEventListener("click", () => guarded(upload));
  $("gold-btn").addEventListener("click", () => guarded(uploadGold));
  $("make-review-btn").addEventListener("click", () => guarded(makeReview));
  $("queue").addEventListener("change", () => guarded(loadQueue));
  $("refresh-btn").addEventListener("click", () => guarded(() => loadQueues()));
  $("save-btn").addEventListener("click", () => guarded(saveItem));
  $("export-btn").addEventListener("click", () => guarded(() => download(`api/reviews/${encodeURIComponent(state.queue)}/gold.csv`, `gold_${state.queue}.csv`)));
  $("kappa-btn").addEventListener("click", () => guarded(showKappa));
  guarded(async () => { await loadLabelers(); await loadQueues(); });
});

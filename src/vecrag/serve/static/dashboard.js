// vecrag dashboard: run picker, training / validation / decoding charts (Chart.js), generate playground.
// All text from the server is inserted with textContent (bank texts and log values are untrusted).
"use strict";

const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777",
                 "#4b5563", "#65a30d", "#7c3aed", "#0d9488"];
const DECISION_COLORS = { SNAP: "#16a34a", BLEND: "#f59e0b", NOVEL: "#7c3aed" };
window.vecragCharts = {};
window.vecragState = { run: null, loaded: 0, errors: [] };

function el(id) { return document.getElementById(id); }

async function getJSON(url, opts) {
  const r = await fetch(url, opts);
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) {
    const d = body && body.detail;
    throw new Error(`${r.status}: ${typeof d === "string" ? d : JSON.stringify(d)}`);
  }
  return body;
}

function runUrl(name, suffix) {
  return "/api/runs/" + name.split("/").map(encodeURIComponent).join("/") + "/" + suffix;
}

function setEmpty(canvasId, message) {
  const box = el(canvasId).parentElement;
  let note = box.querySelector(".empty");
  if (!message) { if (note) note.remove(); return; }
  if (!note) { note = document.createElement("div"); note.className = "empty"; box.appendChild(note); }
  note.textContent = message;
}

function draw(canvasId, config) {
  if (window.vecragCharts[canvasId]) window.vecragCharts[canvasId].destroy();
  config.options = Object.assign({ animation: false, responsive: true, maintainAspectRatio: false,
                                   interaction: { mode: "nearest", intersect: false } }, config.options || {});
  const chart = new Chart(el(canvasId), config);
  window.vecragCharts[canvasId] = chart;
  const n = config.data.datasets.reduce((s, d) => s + d.data.length, 0);
  setEmpty(canvasId, n ? null : "no data in this run");
  return chart;
}

function lineDatasets(series, opts) {
  opts = opts || {};
  return Object.keys(series).map((name, i) => ({
    label: name,
    data: series[name].map(([x, y]) => ({ x, y: opts.scale ? y * opts.scale : y })),
    borderColor: PALETTE[(i + (opts.offset || 0)) % PALETTE.length],
    backgroundColor: PALETTE[(i + (opts.offset || 0)) % PALETTE.length],
    borderWidth: 1.5, pointRadius: series[name].length > 60 ? 0 : 2, tension: 0, yAxisID: opts.axis || "y",
  }));
}

function baselineDatasets(series, xmin, xmax, scale) {
  // a baseline is drawn as a dashed horizontal reference line at its latest value
  return Object.keys(series).map((name, i) => {
    const pts = series[name];
    const y = pts[pts.length - 1][1] * (scale || 1);
    return { label: name, data: [{ x: xmin, y }, { x: xmax, y }], borderDash: [6, 4], pointRadius: 0,
             borderWidth: 1.5, borderColor: PALETTE[(i + 5) % PALETTE.length],
             backgroundColor: PALETTE[(i + 5) % PALETTE.length] };
  });
}

function xRange(...groups) {
  const xs = [];
  groups.forEach(g => Object.values(g).forEach(pts => pts.forEach(p => xs.push(p[0]))));
  return xs.length ? [Math.min(...xs), Math.max(...xs)] : [0, 1];
}

function isFraction(...groups) {
  return groups.every(g => Object.values(g).every(pts => pts.every(p => p[1] >= 0 && p[1] <= 1)));
}

function lineConfig(datasets, xTitle, extra) {
  const scales = { x: { type: "linear", title: { display: true, text: xTitle },
                        ticks: xTitle === "epoch" ? { stepSize: 1, precision: 0 } : {} },
                   y: { type: "linear" } };
  Object.assign(scales, (extra && extra.scales) || {});
  return { type: "line", data: { datasets }, options: { scales, plugins: { legend: { labels: { boxWidth: 12 } } } } };
}

function drawTraining(v) {
  draw("chart-loss", lineConfig(lineDatasets(v.loss), "step"));
  draw("chart-lr", lineConfig(lineDatasets(v.lr), "step"));
  draw("chart-throughput", lineConfig(lineDatasets(v.throughput), "step"));
  draw("chart-memory", lineConfig(lineDatasets(v.memory), "step"));
  draw("chart-miner", lineConfig(lineDatasets(v.miner), "step"));
  draw("chart-task", lineConfig(lineDatasets(v.task), "step"));
  const [r0, r1] = xRange(v.recall, v.recall_baselines);
  const scale = isFraction(v.recall, v.recall_baselines) ? 100 : 1;
  draw("chart-recall", lineConfig(
    [...lineDatasets(v.recall, { scale }), ...baselineDatasets(v.recall_baselines, r0, r1, scale)], v.val_x));
  const [o0, o1] = xRange(v.val_other, v.val_other_baselines);
  draw("chart-valother", lineConfig(
    [...lineDatasets(v.val_other), ...baselineDatasets(v.val_other_baselines, o0, o1)], v.val_x));
}

function drawDecode(d) {
  const lanes = Object.keys(d.by_lane);
  draw("chart-decisions", {
    type: "bar",
    data: { labels: lanes, datasets: ["SNAP", "BLEND", "NOVEL"].map(k => ({
      label: k, data: lanes.map(l => d.by_lane[l][k]), backgroundColor: DECISION_COLORS[k] })) },
    options: { scales: { x: { stacked: true }, y: { stacked: true, max: 100, title: { display: true, text: "%" } } } },
  });
  const h = d.c_hist;
  const labels = h ? h.counts.map((_, i) => ((h.edges[i] + h.edges[i + 1]) / 2).toFixed(3)) : [];
  draw("chart-c", {
    type: "bar",
    data: { labels, datasets: [{ label: "steps", data: h ? h.counts : [], backgroundColor: "#0891b2" }] },
    options: { scales: { x: { title: { display: true, text: "c" } } }, plugins: { legend: { display: false } } },
  });
  el("decode-source").textContent = d.sources.length ? "from " + d.sources.join(", ")
    : "no decode telemetry or decode eval JSON in this run";
}

async function loadRun(name) {
  if (!name) return;
  window.vecragState.run = name;
  el("run-status").textContent = "loading " + name + "…";
  try {
    const [log, dec] = await Promise.all([getJSON(runUrl(name, "log")), getJSON(runUrl(name, "decode"))]);
    drawTraining(log.views);
    drawDecode(dec);
    const c = log.views.counts;
    el("run-status").textContent = `${name}: ${c.train} train, ${c.val} val, ${c.mining} mining records`;
    window.vecragState.loaded += 1;
  } catch (e) {
    el("run-status").textContent = "error: " + e.message;
    window.vecragState.errors.push(String(e.message));
  }
}

async function loadRuns() {
  const sel = el("run-select");
  const data = await getJSON("/api/runs");
  const current = sel.value || new URLSearchParams(location.search).get("run");
  sel.replaceChildren();
  for (const r of data.runs) {
    const o = document.createElement("option");
    o.value = r.name; o.textContent = r.name + (r.has_log ? "" : " (no log)");
    sel.appendChild(o);
  }
  if (!data.runs.length) {
    const o = document.createElement("option"); o.value = ""; o.textContent = "(no runs: start with --runs DIR)";
    sel.appendChild(o);
    window.vecragState.loaded += 1;
    return;
  }
  if (current && data.runs.some(r => r.name === current)) sel.value = current;
  await loadRun(sel.value);
}

async function loadHealth() {
  try {
    const h = await getJSON("/healthz");
    window.vecragState.health = h;
    el("bank-info").textContent = `bank ${h.bank.path}: ${h.bank.n_chunks} chunks, ${h.bank.dim}-D, ` +
      `index ${h.index.type}; decoder ${h.decoder.available ? "on" : "off"}`;
    fillProfiles(h.decoder);
  } catch (e) { el("bank-info").textContent = "healthz: " + e.message; }
}

function fillProfiles(d) {
  // the server's profiles, its default preselected; calibrated ones are disabled until `vecrag calibrate` ran
  const sel = el("gen-profile");
  if (!d.available) {
    el("gen-run").disabled = true;
    el("gen-calibration").textContent = "decoding is off on this server: " + (d.error || "");
    return;
  }
  const usable = new Set(d.available_profiles || d.profiles);
  sel.replaceChildren();
  for (const name of d.profiles) {
    const o = document.createElement("option");
    o.value = name;
    o.textContent = name + (name === d.default_profile ? " (default)" : "") +
      (usable.has(name) ? "" : " (needs calibration)");
    o.disabled = !usable.has(name);
    sel.appendChild(o);
  }
  sel.value = d.default_profile;
  el("gen-calibration").textContent = d.calibrated
    ? `calibrated (${d.calibration}); lvm ${d.lvm}, retriever ${d.retriever}`
    : `no calibration for lvm ${d.lvm} and retriever ${d.retriever}: conservative / neutral / creative need ` +
      `\`${d.calibrate_command}\` (then restart the server)`;
}

function stepSpan(s) {
  // one step of the continuation, as `vecrag generate` prints it: SNAP text as is, BLEND/NOVEL text as [~ ...]
  const span = document.createElement("span");
  span.dataset.step = String(s.step);
  span.dataset.textId = String(s.text_id);
  span.title = `step ${s.step + 1}: ${s.decision}` + (s.c == null ? "" : ` c=${Number(s.c).toFixed(4)}`) +
    (s.title ? ` (${s.title})` : "");
  if (s.text == null) {
    span.className = "step failed";
    span.textContent = "[no text: retrieval failed]";
  } else {
    span.className = "step " + (s.approx ? "approx" : s.decision);
    span.textContent = s.approx ? `[~ ${s.text}]` : s.text;
  }
  return span;
}

function showPassage(out) {
  el("gen-prompt-text").textContent = out.prompt_chunks.join(" ");
  const cont = el("gen-continuation");
  cont.replaceChildren();
  out.steps.forEach((s, i) => {
    if (i) cont.appendChild(document.createTextNode(" "));
    cont.appendChild(stepSpan(s));
  });
  el("gen-passage").hidden = false;
}

function showSteps(steps) {
  const tbody = el("gen-table").querySelector("tbody");
  tbody.replaceChildren();
  steps.forEach((s, i) => {
    const tr = document.createElement("tr");
    const cells = [(s.step ?? i) + 1, s.decision, s.c == null ? "" : Number(s.c).toFixed(4), s.lane || "",
                   s.text_id ?? "", s.title || "", s.text == null ? "" : (s.approx ? `[~ ${s.text}]` : s.text)];
    cells.forEach((v, j) => {
      const td = document.createElement("td"); td.textContent = String(v);
      if (j === 1) td.className = String(v);
      tr.appendChild(td);
    });
    tbody.appendChild(tr);
  });
}

async function generate(ev) {
  ev.preventDefault();
  const body = { prompt: el("gen-prompt").value, steps: Number(el("gen-steps").value), k: Number(el("gen-k").value) };
  const profile = el("gen-profile").value;
  if (profile) body.profile = profile;
  el("gen-status").textContent = "running…";
  try {
    const out = await getJSON("/generate", { method: "POST", headers: { "content-type": "application/json" },
                                             body: JSON.stringify(body) });
    showPassage(out);
    showSteps(out.steps);
    el("gen-status").textContent = `${out.steps.length} steps in ${out.took_ms.toFixed(0)} ms ` +
      `(profile ${out.details.profile})`;
  } catch (e) { el("gen-status").textContent = "error: " + e.message; }
}

document.addEventListener("DOMContentLoaded", () => {
  Chart.defaults.font.size = 11;
  el("run-select").addEventListener("change", e => loadRun(e.target.value));
  el("gen-form").addEventListener("submit", generate);
  let timer = null;
  el("auto-refresh").addEventListener("change", e => {
    if (timer) { clearInterval(timer); timer = null; }
    if (e.target.checked) timer = setInterval(() => loadRun(el("run-select").value), 10000);
  });
  loadHealth();
  loadRuns().catch(e => { el("run-status").textContent = "error: " + e.message; window.vecragState.loaded += 1; });
});

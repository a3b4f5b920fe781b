// vecrag dashboard: run picker, training / validation / decoding charts (Chart.js), generate playground.
// All text from the server is inserted with textContent (bank texts and log values are untrusted).
//
// Read at a glance: every chart puts series of one unit and a compatible range on one y axis (at most two axes,
// left and right, never two of one unit; validation draws one small panel per metric), so that no drawn series
// lies flat on its axis.
// Counters (samples seen, queue length, n_val), constant series, series whose range does not fit either axis and
// everything beyond MAX_VISIBLE start hidden: struck through in the legend, one click shows them (on an axis of
// their own, so showing one never flattens the others).
"use strict";

const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777",
                 "#4b5563", "#65a30d", "#7c3aed", "#0d9488"];
const DECISION_COLORS = { SNAP: "#16a34a", BLEND: "#f59e0b", NOVEL: "#7c3aed" };
const MAX_VISIBLE = 6;   // series drawn by default per chart
const MIN_SHARE = 0.05;  // a varying series spans at least this share of its axis's data range
window.vecragCharts = {};
window.vecragState = { run: null, decodeRun: null, loaded: 0, errors: [] };

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

function draw(canvasId, config, emptyMessage) {
  if (window.vecragCharts[canvasId]) window.vecragCharts[canvasId].destroy();
  config.options = Object.assign({ animation: false, responsive: true, maintainAspectRatio: false,
                                   interaction: { mode: "nearest", intersect: false } }, config.options || {});
  const chart = new Chart(el(canvasId), config);
  window.vecragCharts[canvasId] = chart;
  const n = config.data.datasets.reduce((s, d) => s + d.data.length, 0);
  setEmpty(canvasId, n ? null : (emptyMessage || "no data in this run"));
  return chart;
}

function fmt(v) {
  if (v == null || !isFinite(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : String(Number(v.toPrecision(4)));
}

function yRange(data) {
  let lo = Infinity, hi = -Infinity;
  for (const p of data) {
    const y = p && typeof p === "object" ? p.y : p;
    if (y == null || !isFinite(y)) continue;
    if (y < lo) lo = y;
    if (y > hi) hi = y;
  }
  return lo <= hi ? [lo, hi] : null;
}

// ---- axes: one unit and a compatible range per axis -----------------------------------------------------

function axisFits(axis, lo, hi, varying) {
  const a = Math.min(axis.lo, lo), b = Math.max(axis.hi, hi), span = b - a;
  if (span <= 0) return true;
  const spans = axis.members.filter(m => m.varying).map(m => m.hi - m.lo);
  if (varying) spans.push(hi - lo);
  return spans.every(s => s >= MIN_SHARE * span);
}

function axisConfig(position, title, visible, flat) {
  // an axis holding a flat series (a baseline, a single point) gets 10 % of its range as room on each side (Chart.js:
  // grace is a share of half the range), so that none sits on its edge
  return Object.assign({ type: "linear", position, display: visible,
                         title: { display: !!title, text: title || "" },
                         grid: { drawOnChartArea: position === "left" && visible } }, flat ? { grace: "20%" } : {});
}

// Assign each dataset an axis and a default visibility. Datasets carry _unit, _counter and _reference
// (a baseline: a horizontal line, never hidden for being constant). Returns the y scales.
function arrange(datasets, maxAxes) {
  const axes = [];
  const scales = {};
  const anyVarying = datasets.some(d => {
    const r = yRange(d.data);
    return !d._counter && !d._reference && r && r[1] > r[0];
  });
  let shown = 0, spare = 0;
  for (const d of datasets) {
    const r = yRange(d.data) || [0, 0];
    const varying = r[1] > r[0];
    let why = null;
    if (d._counter) why = "counter";
    else if (!varying && !d._reference && anyVarying) why = "constant";
    else if (shown >= MAX_VISIBLE) why = "more";
    let axis = null;
    if (!why) {
      // one axis per unit: two axes of one unit would scale it twice (lines that never cross would cross)
      const same = axes.find(a => a.unit === d._unit);
      if (same && axisFits(same, r[0], r[1], varying)) axis = same;
      else if (!same && axes.length < maxAxes) {
        axis = { id: axes.length ? "y" + axes.length : "y", unit: d._unit, lo: r[0], hi: r[1], members: [],
                 position: axes.length ? "right" : "left" };
        axes.push(axis);
      }
      if (!axis) why = "scale";
    }
    if (why) {
      // hidden by default, on an axis of its own: a legend click shows it without flattening the others
      d.hidden = true;
      d._why = why;
      if (why === "constant") d.label += ` (= ${fmt(r[0])})`;
      d.yAxisID = "yh" + spare++;
      scales[d.yAxisID] = axisConfig("right", d._unit === d.label ? "" : d._unit, false, true);
      continue;
    }
    axis.lo = Math.min(axis.lo, r[0]);
    axis.hi = Math.max(axis.hi, r[1]);
    axis.members.push({ lo: r[0], hi: r[1], varying, label: d.label });
    d.yAxisID = axis.id;
    shown += 1;
  }
  if (axes.length > 1) {
    // which axis a series reads on: the right one is named in the legend
    datasets.forEach(d => { if (!d.hidden && d.yAxisID !== "y") d.label += " (right)"; });
  }
  for (const a of axes) {
    const names = a.members.map(m => m.label);
    const title = a.unit && !names.includes(a.unit) ? a.unit : (names.length === 1 ? "" : names.join(", "));
    scales[a.id] = axisConfig(a.position, title, true, a.members.some(m => !m.varying));
  }
  if (!axes.length) scales.y = axisConfig("left", "", true, true);
  return scales;
}

function lineDatasets(series, meta, opts) {
  opts = opts || {};
  return Object.keys(series).map((name, i) => {
    const color = PALETTE[(i + (opts.offset || 0)) % PALETTE.length];
    const m = (meta && meta[name]) || {};
    const n = series[name].length;
    return {
      label: name, _unit: opts.unit || m.unit || name, _counter: !!m.counter,
      data: series[name].map(([x, y]) => ({ x, y: opts.scale ? y * opts.scale : y })),
      borderColor: color, backgroundColor: color,
      borderWidth: 1.5, pointRadius: n === 1 ? 4 : n > 60 ? 0 : 2, tension: 0,
    };
  });
}

function baselineDatasets(series, xmin, xmax, opts) {
  // a baseline is drawn as a dashed horizontal reference line at its latest value
  opts = opts || {};
  return Object.keys(series).map((name, i) => {
    const pts = series[name];
    const y = pts[pts.length - 1][1] * (opts.scale || 1);
    const color = PALETTE[(i + 1) % PALETTE.length];
    return { label: name, data: [{ x: xmin, y }, { x: xmax, y }], borderDash: [6, 4], pointRadius: 0,
             borderWidth: 1.5, borderColor: color, backgroundColor: color, _unit: opts.unit, _reference: true };
  });
}

function xRange(...groups) {
  const xs = [];
  groups.forEach(g => Object.values(g).forEach(pts => pts.forEach(p => xs.push(p[0]))));
  return xs.length ? [Math.min(...xs), Math.max(...xs)] : [0, 1];
}

// Legend click: the default toggle, and a series hidden by default brings its own axis along (shown while it is)
function legendClick(e, item, legend) {
  const chart = legend.chart, i = item.datasetIndex;
  const show = !chart.isDatasetVisible(i);
  chart.setDatasetVisibility(i, show);
  const id = chart.data.datasets[i].yAxisID;
  if (id && id.startsWith("yh") && chart.options.scales[id]) chart.options.scales[id].display = show;
  chart.update();
}

function lineChart(datasets, xTitle, maxAxes, extra) {
  const scales = arrange(datasets, maxAxes);
  scales.x = { type: "linear", title: { display: true, text: xTitle },
               ticks: xTitle === "epoch" ? { stepSize: 1, precision: 0 } : {} };
  const legend = { labels: { boxWidth: 12 }, onClick: legendClick };
  const options = Object.assign({ scales, plugins: { legend } }, extra || {});
  if (extra && extra.plugins) options.plugins = { legend: Object.assign(legend, extra.plugins.legend || {}) };
  return { type: "line", data: { datasets }, options };
}

// ---- training and validation ------------------------------------------------------------------------------

function drawTraining(v) {
  const meta = v.meta || {};
  draw("chart-loss", lineChart(lineDatasets(v.loss, meta), "step", 2));
  draw("chart-lr", lineChart(lineDatasets(v.lr, meta), "step", 2));
  draw("chart-throughput", lineChart(lineDatasets(v.throughput, meta), "step", 2));
  draw("chart-memory", lineChart(lineDatasets(v.memory, meta), "step", 2));
  // the miner's charts only where a run has a miner (a retriever run): no empty boxes on an LVM run
  for (const [id, series] of [["chart-miner", v.miner], ["chart-rounds", v.mining_rounds || {}]]) {
    draw(id, lineChart(lineDatasets(series, meta), "step", 2));
    el(id).closest("figure").hidden = !Object.keys(series).length;
  }
  draw("chart-task", lineChart(lineDatasets(v.task, meta), "step", 2));
  drawValidation(v);
}

function drawValidation(v) {
  const box = el("val-panels");
  Object.keys(window.vecragCharts).filter(id => id.startsWith("chart-val-")).forEach(id => {
    window.vecragCharts[id].destroy();
    delete window.vecragCharts[id];
  });
  box.replaceChildren();
  const panels = v.val_panels || [];
  el("val-note").textContent = panels.length
    ? `one panel per metric, per ${v.val_x}` + (v.val_n ? ` on ${v.val_n} validation samples` : "") +
      "; dashed: baselines at their latest value"
    : "no validation records in this run";
  panels.forEach((p, i) => {
    const fig = document.createElement("figure");
    const cap = document.createElement("figcaption");
    cap.textContent = p.metric + (p.unit === "%" ? " (%)" : "") + (p.selects_checkpoint ? " · selects the checkpoint" : "");
    const div = document.createElement("div");
    div.className = "chart small";
    const canvas = document.createElement("canvas");
    canvas.id = "chart-val-" + i;
    canvas.dataset.metric = p.metric;
    div.appendChild(canvas);
    fig.append(cap, div);
    box.appendChild(fig);
    const model = lineDatasets({ [p.metric]: p.series }, null, { scale: p.scale, unit: p.unit });
    const [x0, x1] = xRange({ m: p.series }, p.baselines);
    const base = baselineDatasets(p.baselines, x0, x1, { scale: p.scale, unit: p.unit });
    draw(canvas.id, lineChart([...model, ...base], v.val_x, 1,
                              { plugins: { legend: { labels: { boxWidth: 10, font: { size: 10 } }, onClick: legendClick } } }));
  });
}

// ---- decoding ----------------------------------------------------------------------------------------------

// 95 % intervals as whiskers on horizontal bars (dataset._ci[i] = [lo, hi] in the bar's units)
const ciWhiskers = {
  id: "ciWhiskers",
  afterDatasetsDraw(chart) {
    const ctx = chart.ctx;
    chart.data.datasets.forEach((d, di) => {
      if (!d._ci || !chart.isDatasetVisible(di)) return;
      const meta = chart.getDatasetMeta(di);
      const xs = chart.scales[meta.xAxisID];
      ctx.save();
      ctx.strokeStyle = "#111827";
      ctx.lineWidth = 1.2;
      meta.data.forEach((bar, i) => {
        const ci = d._ci[i];
        if (!ci || ci[0] == null || ci[1] == null) return;
        const a = xs.getPixelForValue(Math.max(xs.min, ci[0])), b = xs.getPixelForValue(Math.min(xs.max, ci[1]));
        const h = Math.max(3, (bar.height || 8) / 4);
        ctx.beginPath();
        ctx.moveTo(a, bar.y); ctx.lineTo(b, bar.y);
        ctx.moveTo(a, bar.y - h); ctx.lineTo(a, bar.y + h);
        ctx.moveTo(b, bar.y - h); ctx.lineTo(b, bar.y + h);
        ctx.stroke();
      });
      ctx.restore();
    });
  },
};

function fitHeight(canvasId, rows, perRow, min) {
  el(canvasId).parentElement.style.height = Math.max(min, rows * perRow + 70) + "px";
}

function drawDecode(d) {
  const mix = d.mix || [];
  const labels = mix.map(r => `${r.group} · ${r.row} (${fmt(r.n)})`);
  fitHeight("chart-decisions", mix.length, 17, 200);
  const decisionSets = ["SNAP", "BLEND", "NOVEL"].map(k => {
    const data = mix.map(r => r[k]);
    const none = data.every(x => !x);
    // a decision no row ever takes has no bar to draw: hidden, and named so
    return { label: none ? `${k} (none)` : k, data, backgroundColor: DECISION_COLORS[k], hidden: none && mix.length > 0 };
  });
  draw("chart-decisions", {
    type: "bar", data: { labels, datasets: decisionSets },
    options: { indexAxis: "y", scales: { x: { stacked: true, min: 0, max: 100, title: { display: true, text: "% of steps" } },
                                         y: { stacked: true, ticks: { autoSkip: false, font: { size: 10 } } } },
               plugins: { legend: { labels: { boxWidth: 12 } },
                          tooltip: { callbacks: { label: c => `${c.dataset.label}: ${c.parsed.x.toFixed(1)} %` } } } },
  }, "no decode telemetry, decode / generate eval JSON or calibration in this run");

  const h = d.c_dist;
  const centers = h ? h.edges.slice(0, -1).map((e, i) => ((e + h.edges[i + 1]) / 2).toFixed(3)) : [];
  const cSets = h ? h.series.map((s, i) => ({
    label: s.label, _counts: s.counts, data: s.counts.map(c => 100 * c / Math.max(1, s.n)),
    backgroundColor: i ? "#0891b2" : "#f59e0b", borderColor: i ? "#0891b2" : "#f59e0b",
  })) : [];
  // the larger sample is drawn behind the smaller one
  draw("chart-c", {
    type: "bar", data: { labels: centers, datasets: cSets },
    options: { scales: { x: { stacked: false, title: { display: true, text: "c = max cos(v̂, shortlist)" } },
                         y: { title: { display: true, text: "% of steps" } } },
               datasets: { bar: { grouped: cSets.length > 1, categoryPercentage: 0.9, barPercentage: 1.0 } },
               plugins: { legend: { display: cSets.length > 0, labels: { boxWidth: 12 } } } },
  }, "no c values (decode telemetry or calibration.json) in this run");

  drawRollouts(d.rollouts);
  el("decode-source").textContent = d.files && d.files.length
    ? `run ${d.name}: ` + d.files.join(", ")
    : `run ${d.name}: no decode telemetry, decode / generate eval JSON or calibration.json`;
}

function drawRollouts(ro) {
  const rows = ro ? ro.rows.filter(r => !r.reference) : [];
  const ref = ro ? ro.rows.find(r => r.reference) : null;
  el("rollout-note").textContent = ro
    ? `${ro.source}: ${fmt(ro.n_articles)} ${ro.split || ""} articles, prompt = first ${fmt(ro.P)} chunks, ` +
      `${fmt(ro.S)} steps` + (ref ? `; the true continuation (coverage and cosine 1 by definition) is not drawn` : "")
    : "no generate eval JSON (vecrag eval generate --out RUN/metrics) in this run";
  fitHeight("chart-rollout-coverage", rows.length, 26, 200);
  draw("chart-rollout-coverage", {
    type: "bar",
    data: { labels: rows.map(r => r.name), datasets: [{
      label: "coverage (95 % interval)", data: rows.map(r => 100 * r.coverage),
      _ci: rows.map(r => r.coverage_ci ? r.coverage_ci.map(x => 100 * x) : null),
      backgroundColor: rows.map(r => r.name.startsWith("decoder:") ? "#7c3aed" : "#94a3b8") }] },
    options: { indexAxis: "y",
               scales: { x: { min: 0, suggestedMax: Math.max(1, ...rows.map(r => 100 * ((r.coverage_ci || [0, r.coverage])[1] || 0))) * 1.05,
                              title: { display: true, text: "% of the true next chunks shown" } },
                         y: { ticks: { autoSkip: false } } },
               plugins: { legend: { display: false } } },
    plugins: [ciWhiskers],
  }, "no rollouts in this run");
  const series = {};
  rows.forEach(r => { if (r.cos_by_step.length) series[r.name] = r.cos_by_step.map((c, i) => [i + 1, c]); });
  const sets = lineDatasets(series, null, { unit: "cos" });
  sets.forEach(s => { if (!s.label.startsWith("decoder:")) s.borderDash = [5, 3]; });
  draw("chart-rollout-cos", lineChart(sets, "step", 1), "no rollouts in this run");
}

// ---- runs -----------------------------------------------------------------------------------------------

async function loadDecode(name) {
  window.vecragState.decodeRun = name;
  const dec = await getJSON(runUrl(name, "decode"));
  drawDecode(dec);
}

async function loadRun(name) {
  if (!name) return;
  window.vecragState.run = name;
  el("run-status").textContent = "loading " + name + "…";
  try {
    const dsel = el("decode-run");
    const runs = window.vecragState.runs || [];
    // the decoding views follow the run picked above when it has decoding outputs, else the first run that does
    // (`make demo` writes them to the LVM run, beside its calibration)
    if (!window.vecragState.decodePinned) {
      const own = runs.find(r => r.name === name && r.has_decode);
      const first = runs.find(r => r.has_decode);
      dsel.value = own ? name : first ? first.name : name;
    }
    const [log] = await Promise.all([getJSON(runUrl(name, "log")), loadDecode(dsel.value || name)]);
    drawTraining(log.views);
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
  const dsel = el("decode-run");
  const data = await getJSON("/api/runs");
  window.vecragState.runs = data.runs;
  const current = sel.value || new URLSearchParams(location.search).get("run");
  sel.replaceChildren();
  dsel.replaceChildren();
  for (const r of data.runs) {
    const o = document.createElement("option");
    o.value = r.name; o.textContent = r.name + (r.has_log ? "" : " (no log)");
    sel.appendChild(o);
    const d = document.createElement("option");
    d.value = r.name; d.textContent = r.name + (r.has_decode ? "" : " (no decoding outputs)");
    dsel.appendChild(d);
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

// ---- playground ---------------------------------------------------------------------------------------------

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
  el("decode-run").addEventListener("change", e => {
    window.vecragState.decodePinned = true;
    loadDecode(e.target.value).catch(err => { el("decode-source").textContent = "error: " + err.message; });
  });
  el("gen-form").addEventListener("submit", generate);
  let timer = null;
  el("auto-refresh").addEventListener("change", e => {
    if (timer) { clearInterval(timer); timer = null; }
    if (e.target.checked) timer = setInterval(() => loadRun(el("run-select").value), 10000);
  });
  loadHealth();
  loadRuns().catch(e => { el("run-status").textContent = "error: " + e.message; window.vecragState.loaded += 1; });
});

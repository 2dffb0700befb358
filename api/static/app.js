// The aeknn page: plain JavaScript, no dependencies. Every number it shows comes from the REST API.
// The view (experiment, model, sample, distance, k, the tables' k columns) lives in the URL's query, so a
// view can be shared, and every selection is a history entry (Back and Forward walk the trail). A value
// that a typed link asks for and the experiment lacks is named once in a message; the page's own choices
// (a model the next experiment lacks, say) fall back quietly. The URL always says what is shown.
"use strict";

const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                 "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
// The models, their kinds and the default come from GET /models (common/compute/names.py); each model's
// colour is the palette's entry at its place in that list, so a model keeps its colour on every page.
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf", "#393b79", "#637939"];
const MODEL_COLOURS = {};
// fitted by well-kept libraries, not trained ("reference map" in GET /models): yardsticks, like the pixel
// space, so the best marks and the findings go to the trained models
const REFERENCE_MAPS = new Set();
const RECONSTRUCTS = new Set();  // the models with a decoder (GET /models): the ones with reconstructions
// an uploaded embedding (a user's codes, GET /experiments/{id}'s spaces) is a yardstick too, as a reference map
const UPLOADS = new Map();  // name -> its space (dim, state) in the experiment shown
const contestant = (name) => name !== "original" && !REFERENCE_MAPS.has(name) && !UPLOADS.has(name);

async function loadModels() {
  const { models, default: fallback } = await api("/models");
  models.forEach((m, i) => {
    MODEL_COLOURS[m.name] = PALETTE[i % PALETTE.length];
    if (m.kind === "reference map") REFERENCE_MAPS.add(m.name);
    if (m.reconstructs) RECONSTRUCTS.add(m.name);
  });
  app.modelOrder = models.map((m) => m.name);
  app.defaultModel = fallback;
  if (state.model === null) state.model = fallback;
}

// The experiment's model to show when the one in the state is not among its models: the default where
// it has it, else its first in the study's order.
function fallbackModel(cfg) {
  if (cfg.models.includes(app.defaultModel)) return app.defaultModel;
  const order = (m) => { const i = (app.modelOrder || []).indexOf(m); return i < 0 ? 1e9 : i; };
  return [...cfg.models].sort((a, b) => order(a) - order(b))[0];
}
// where a sample's pixel-space neighbours landed in the code space: a deep magenta that no label's colour is
// near (label 1's orange hid the old #e65c00), drawn over a white halo so it reads on every label
const PIXEL_MARK = "#b4007e";
const DRAWN_MARK = "#d4006a";  // your own image on the map
const $ = (id) => document.getElementById(id);

// compare: the model of the second map (null: none); hide: labels hidden in the legend; overlay: runs whose
// curves are drawn over the charts
const state = { experiment: null, model: null, sample: null, distance: "l2", k: 10, ks: null, compare: null,
                hide: new Set(), overlay: new Set() };
const app = {
  state, exp: null, frameTimes: [], poll: null, experiments: [], codeCache: new Map(), curveCache: new Map(),
  runHeads: new Map(), nbrs: { original: [], encoded: [], compare: [] }, hover: null, seq: 0, linkProblems: [],
};
window.aeknn = app;
app.main = newMap($("map"), $("tip"), $("map-title"));
app.side = newMap($("map2"), $("tip2"), $("map2-title"));
Object.defineProperty(app, "codes", { get: () => app.main.codes });  // the main map's (tests and bench read it)

// ------------------------------------------------------------------ helpers

// A label-based table of data that came without labels is 404: null here, and the page leaves it out
const ifLabelled = (promise) => promise.catch((e) => { if (e.status === 404) return null; throw e; });

async function api(path, kind = "json") {
  let r = await fetch(path);
  if (r.status === 401 && await haveKey()) r = await fetch(path);  // a server with AEKNN_READ_KEY set
  if (!r.ok) {
    let msg = `${r.status} ${r.statusText}`;
    try { msg = (await r.json()).message || msg; } catch (e) { /* not JSON */ }
    const err = new Error(msg);
    err.status = r.status;
    throw err;
  }
  if (kind === "json") return r.json();
  const buf = await r.arrayBuffer();
  buf.labelled = r.headers.get("X-Labelled") !== "false";  // codes.bin: data without labels send zeros
  return buf;
}

// One question for every request that met the 401 at once (the first view fetches in parallel); asked
// again only if it was refused or dismissed.
function haveKey() {
  if (!app.asking) app.asking = askForKey().then((ok) => { if (!ok) app.asking = null; return ok; });
  return app.asking;
}

// A key, asked for once when the server answers 401, traded at POST /session for an HttpOnly cookie that
// opens reads only (a cookie, so that the digits' <img> requests carry it too; no script can read it).
async function askForKey() {
  const key = window.prompt("This aeknn server needs a key (AEKNN_READ_KEY or AEKNN_API_KEY):");
  if (!key) return false;
  const r = await fetch("/session", { method: "POST", headers: { Authorization: `Bearer ${key.trim()}` } });
  return r.ok;
}

function say(text) { // the page-wide message (problems that belong to no one control)
  const m = $("message");
  m.textContent = text || "";
  m.hidden = !text;
}

// A control's own line: work under way ("busy"), or the error its value caused ("error").
function note(control, text = "", kind = "error") {
  const m = $(`msg-${control}`);
  if (!m) return;
  m.textContent = text;
  m.className = `ctl-msg ${text ? kind : ""}`;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

const fmt = (v) => (v === null || v === undefined ? "–" : v.toFixed(4));
const pct = (v) => `${(100 * v).toFixed(1)} %`;
// a neighbour's distance whole in a thumbnail's 34 px ("123", "12.5", "0.62", "0.018", "5e-3"); exact in its title
const thumbDistance = (v) => (v >= 100 ? String(Math.round(v)) : v >= 10 ? v.toFixed(1)
  : v >= 0.01 ? Number(v.toPrecision(2)).toString() : v === 0 ? "0" : v.toExponential(0));
const short = (v) => (v === 0 ? "0" : Math.abs(v) < 1e-3 ? v.toExponential(2) : Number(v.toPrecision(3)).toString());
const imageUrl = (id, scale = 2) => `/samples/${id}/image.png?experiment=${state.experiment}&scale=${scale}`;

function duration(exp) {
  if (!exp.started_at || !exp.finished_at) return "";
  const s = (new Date(exp.finished_at) - new Date(exp.started_at)) / 1000;
  return s >= 60 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s` : `${s.toFixed(1)} s`;
}

function dataName(c) {  // a named data set, or your data's file name
  return c.data ? c.data.split("/").filter(Boolean).pop() : c.dataset;
}

function dataSize(c) {  // N as the config says it: your data's N is known once read
  return c.limit ? c.limit.toLocaleString("en") : (c.data ? "all" : (60000).toLocaleString("en"));
}

function describeConfig(c) {
  const models = c.models.length <= 4 ? c.models.join(", ") : `${c.models.length} models`;
  return `${dataName(c)} ${dataSize(c)} · ${models} · ${c.epochs} epochs · ` +
    `lr ${c.lr} · wd ${c.weight_decay} · seed ${c.seed}`;
}

// ------------------------------------------------------------------ the URL

function parseKs(text) { // "5,10,20" -> [5, 10, 20]; null when it is not a list of whole numbers
  const parts = text.replace(/\s+/g, "").split(",").filter((p) => p);
  if (!parts.length || parts.some((p) => !/^\d+$/.test(p))) return null;
  return [...new Set(parts.map((p) => parseInt(p, 10)))].sort((a, b) => a - b);
}

function readUrl() { // raw values; checked against the experiment once it is known (checkLink)
  const q = new URLSearchParams(location.search);
  app.link = Object.fromEntries(q.entries());
  const int = (key) => (q.has(key) && /^\d+$/.test(q.get(key)) ? parseInt(q.get(key), 10) : undefined);
  const problems = [];
  for (const key of ["experiment", "sample", "k"]) {
    if (q.has(key) && int(key) === undefined) problems.push(`${key}=${q.get(key)} is not a whole number`);
  }
  if (int("experiment") !== undefined) state.experiment = int("experiment");
  if (q.has("model")) state.model = q.get("model");
  if (q.has("distance")) state.distance = q.get("distance");
  if (int("k") !== undefined) state.k = int("k");
  if (int("sample") !== undefined) state.sample = int("sample");
  if (q.has("ks")) {
    const ks = parseKs(q.get("ks"));
    if (ks) state.ks = ks; else problems.push(`ks=${q.get("ks")} is not a comma list of whole numbers`);
  }
  state.compare = q.get("compare") || null;
  for (const key of ["hide", "overlay"]) {
    const list = q.has(key) ? parseKs(q.get(key)) : [];
    if (list === null) problems.push(`${key}=${q.get(key)} is not a comma list of whole numbers`);
    state[key] = new Set((list || []).filter((v) => key !== "hide" || v <= 9));
  }
  app.linkProblems = problems;
}

// The URL of what is shown: a new history entry for a selection (``push``), else the current one rewritten.
// Any change of the view clears a message about the link it came from.
function writeUrl(push = false) {
  const q = new URLSearchParams();
  for (const key of ["experiment", "model", "sample", "distance", "k"]) {
    if (state[key] !== null && state[key] !== undefined) q.set(key, state[key]);
  }
  if (state.ks) q.set("ks", state.ks.join(","));
  if (state.compare) q.set("compare", state.compare);
  for (const key of ["hide", "overlay"]) if (state[key].size) q.set(key, [...state[key]].sort((a, b) => a - b).join(","));
  const url = `${location.pathname}?${q}`;
  if (push && url !== `${location.pathname}${location.search}`) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
  app.linkProblems = [];
  if (push && app.linkBanner) { say(""); app.linkBanner = false; }
}

// Values the experiment does not have are replaced for the view. Only those a typed link asked for
// (app.link, read once on load) are named in a message; the page's own state falls back quietly.
function checkLink(cfg, n) {
  const problems = [...app.linkProblems];
  const asked = (key) => Object.prototype.hasOwnProperty.call(app.link || {}, key);
  const complain = (key, text) => { if (asked(key)) problems.push(text); };
  if (!cfg.models.includes(state.model)) {
    const shown = fallbackModel(cfg);
    complain("model", `model=${state.model} is not a model of experiment ${state.experiment} ` +
                      `(${cfg.models.join(", ")}): showing ${shown}`);
    state.model = shown;
  }
  if (state.compare && !cfg.models.includes(state.compare)) {
    complain("compare", `compare=${state.compare} is not a model of experiment ${state.experiment}: one map shown`);
    state.compare = null;
  }
  if (!cfg.distances.includes(state.distance)) {
    const shown = cfg.distances[cfg.distances.length - 1];
    complain("distance", `distance=${state.distance} is not one of ${cfg.distances.join(", ")}: showing ${shown}`);
    state.distance = shown;
  }
  if (!(state.k >= 1 && state.k <= cfg.k)) {
    complain("k", `k=${state.k} is outside 1..${cfg.k} (the table's K): showing ${Math.min(10, cfg.k)}`);
    state.k = Math.min(10, cfg.k);
  }
  if (state.sample !== null && !(state.sample >= 0 && state.sample < n)) {
    complain("sample", `sample=${state.sample} is outside 0..${n - 1}: no sample shown`);
    state.sample = null;
  }
  if (state.ks && state.ks.some((k) => k < 1 || k > Math.min(cfg.k, n - 2))) {
    complain("ks", `ks=${state.ks.join(",")} must each be in 1..${Math.min(cfg.k, n - 2)}: showing ${cfg.ks.join(",")}`);
    state.ks = null;
  }
  app.link = {};  // the link is answered: from here on every change is the page's or the user's
  app.linkProblems = [];
  if (problems.length) {
    say(`This link asks for what experiment ${state.experiment} does not have: ${problems.join("; ")}.`);
    app.linkBanner = true;
  }
}

// ------------------------------------------------------------------ experiments and progress

async function loadExperiments() {
  const page = await api("/experiments?per_page=100");
  app.experiments = page.items;
  const sel = $("experiment");
  sel.replaceChildren(...page.items.map((e) => el("option", { value: e.id,
    text: `#${e.id} ${e.status}${duration(e) ? " in " + duration(e) : ""} · ${describeConfig(e.config)}` })));
  if (!page.items.length) {
    say("No experiment yet: submit one with POST /experiments or `aeknn submit`.");
    return null;
  }
  const known = page.items.some((e) => e.id === state.experiment);
  if (!known) {
    const done = page.items.find((e) => e.status === "succeeded");
    const fallback = (done || page.items[0]).id;
    if (state.experiment !== null) app.linkProblems.push(`experiment=${state.experiment} does not exist: showing #${fallback}`);
    state.experiment = fallback;
  }
  sel.value = state.experiment;
  return state.experiment;
}

function renderProgress(exp) { // (the "loading" line it replaces stays only until the first answer)
  const s = $("status");
  s.textContent = exp.status + (exp.stage && exp.status === "running" ? ` · ${exp.stage}` : "");
  s.className = `status ${exp.status}`;
  const rows = exp.models.map((m) => el("tr", {},
    el("td", { class: "name", text: m.name }),
    el("td", { text: `${m.epochs_done} / ${m.epochs}` }),
    el("td", {}, el("span", { class: "bar-wrap" },
      el("span", { class: "bar", style: `width:${(100 * m.epochs_done) / Math.max(1, m.epochs)}%` }))),
    el("td", { text: m.loss === null ? "–" : m.loss.toFixed(5) })));
  const models = el("table", { id: "progress-models" },
    el("caption", { text: `models (${exp.status}${exp.error ? ": " + exp.error : ""})` }),
    el("tr", {}, ...["model", "epoch", "", "loss"].map((h) => el("th", { text: h }))), ...rows);
  const phases = exp.models.filter((m) => m.phases).map((m) => el("p", { class: "hint phases",
    text: `${m.name}: ${m.phases}` + (m.trained ? "; trained" : m.epochs_done >= m.epochs ? "; refining its map now" : "") }));
  const paths = exp.tables.filter((t) => t.path).map((t) => `${t.space}/${t.distance}: ${t.path}` +
    (t.rows_per_s ? ` (${Math.round(t.rows_per_s).toLocaleString("en")} rows/s)` : ""));
  const tables = el("p", { text: `neighbour tables: ${exp.tables.filter((t) => t.complete).length} of ` +
    `${exp.tables.length} complete, chunks ${exp.chunks_done} / ${exp.chunks_total}` +
    (Object.keys(exp.timings).length ? ` · stage seconds: ${Object.entries(exp.timings)
      .map(([k, v]) => `${k} ${v.toFixed(1)}`).join(", ")}` : "") });
  $("progress").replaceChildren(models, ...phases, tables, ...(paths.length ? [el("p", { class: "hint", text: `computed by: ${paths.join(" · ")}` })] : []));
}

// ------------------------------------------------------------------ charts (canvas, axes labelled)

function niceTicks(lo, hi, count = 5) {
  const span = hi - lo || 1, step0 = span / count, mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= count) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-12; v += step) out.push(v);
  return out;
}

// series: [{name, colour, dash ("l1": dashed, "run": dotted), points: [[x, y], ...]}]. The chart keeps what
// it drew (canvas.chart) for its hover values and its CSV.
function lineChart(canvas, { title, xLabel, yLabel, series, bands }) {
  const g = canvas.getContext("2d"), W = canvas.width, H = canvas.height;
  const L = 76, R = 170, T = 26, B = 40;
  canvas.chart = { title, xLabel, yLabel, series, x: null };
  if (canvas.parentElement.classList.contains("chart")) canvas.parentElement.classList.add("drawn");
  canvas.setAttribute("aria-label", `chart: ${title}; ${yLabel} against ${xLabel}`);
  g.clearRect(0, 0, W, H);
  g.fillStyle = "#fff"; g.fillRect(0, 0, W, H);  // an opaque PNG
  g.font = "12px system-ui"; g.fillStyle = "#222"; g.fillText(title, L, 16);
  const pts = series.flatMap((s) => s.points).concat((bands || []).flatMap((b) => b.lo.concat(b.hi)));
  if (!pts.length) { g.fillStyle = "#777"; g.fillText("nothing to draw yet", L, H / 2); return; }
  let x0 = Math.min(...pts.map((p) => p[0])), x1 = Math.max(...pts.map((p) => p[0]));
  let y0 = Math.min(...pts.map((p) => p[1])), y1 = Math.max(...pts.map((p) => p[1]));
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y1 += 1e-6; y0 -= 1e-6; }
  const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
  const x = (v) => L + ((W - L - R) * (v - x0)) / (x1 - x0), y = (v) => T + ((H - T - B) * (y1 - v)) / (y1 - y0);
  Object.assign(canvas.chart, { x, y, L, R, T, B, x0, x1 });
  g.strokeStyle = "#999"; g.lineWidth = 1; g.strokeRect(L, T, W - L - R, H - T - B);
  g.fillStyle = "#444"; g.font = "11px system-ui";
  for (const t of niceTicks(y0, y1)) {
    g.fillText(short(t), 22, y(t) + 4);
    g.strokeStyle = "#eee"; g.beginPath(); g.moveTo(L + 1, y(t)); g.lineTo(W - R - 1, y(t)); g.stroke();
  }
  for (const t of niceTicks(x0, x1)) g.fillText(String(Math.round(t * 100) / 100), x(t) - 6, H - B + 14);
  g.fillText(xLabel, L + (W - L - R) / 2 - 20, H - 6);
  g.save(); g.translate(12, T + (H - T - B) / 2 + 30); g.rotate(-Math.PI / 2); g.fillText(yLabel, 0, 0); g.restore();
  for (const b of bands || []) { // mean ± sd, shaded under the lines
    g.fillStyle = b.colour + "33"; g.beginPath();
    b.hi.forEach(([a, v], i) => (i ? g.lineTo(x(a), y(v)) : g.moveTo(x(a), y(v))));
    [...b.lo].reverse().forEach(([a, v]) => g.lineTo(x(a), y(v)));
    g.closePath(); g.fill();
  }
  const dashOf = (s) => (s.dash === "run" ? [1.5, 2.5] : s.dash ? [5, 3] : []);
  let row = 0;
  series.forEach((s) => {
    g.strokeStyle = s.colour; g.lineWidth = s.dash === "run" ? 1.2 : 1.5; g.setLineDash(dashOf(s)); g.beginPath();
    s.points.forEach(([a, b], i) => (i ? g.lineTo(x(a), y(b)) : g.moveTo(x(a), y(b))));
    g.stroke();
    if (s.name) { // the legend: a sample of the line (solid, dashed or dotted) and the name
      const ly = T + 10 + 14 * row++;
      g.beginPath(); g.moveTo(W - R + 6, ly - 4); g.lineTo(W - R + 26, ly - 4); g.stroke();
      g.setLineDash([]); g.fillStyle = s.colour; g.fillText(s.name, W - R + 30, ly);
    }
    g.setLineDash([]);
  });
}

// Each chart: the values at the pointer's x in a box beside it, and its picture (PNG) and numbers (CSV).
function setupChart(canvas) {
  const wrap = el("div", { class: "chart" }), tip = el("div", { class: "tip chart-tip", hidden: "" });
  canvas.setAttribute("role", "img");
  if (!canvas.getAttribute("aria-label")) canvas.setAttribute("aria-label", "chart (nothing drawn yet)");
  canvas.replaceWith(wrap);
  const bar = el("div", { class: "chart-tools" },
    el("button", { type: "button", class: "png", text: "PNG", title: "download the chart as a picture" }),
    el("button", { type: "button", class: "csv", text: "CSV", title: "download the chart's numbers" }));
  wrap.append(canvas, tip, bar);
  bar.querySelector(".png").addEventListener("click", () => save(canvas.toDataURL("image/png"), `${canvas.id}.png`));
  bar.querySelector(".csv").addEventListener("click", () => saveCsv(chartCsv(canvas), `${canvas.id}.csv`));
  canvas.addEventListener("mousemove", (ev) => {
    const c = canvas.chart;
    if (!c || !c.x) return;
    const r = canvas.getBoundingClientRect(), px = ((ev.clientX - r.left) * canvas.width) / r.width;
    const at = c.x0 + ((px - c.L) * (c.x1 - c.x0)) / (canvas.width - c.L - c.R);
    const near = (s) => s.points.reduce((b, p) => (Math.abs(p[0] - at) < Math.abs(b[0] - at) ? p : b), s.points[0]);
    const rows = c.series.filter((s) => s.name && s.points.length).map((s) => [s, near(s)]);
    if (!rows.length || px < c.L || px > canvas.width - c.R) { tip.hidden = true; return; }
    const xs = rows[0][1][0];
    tip.replaceChildren(el("div", { class: "at", text: `${c.xLabel} = ${xs}` }),
      ...rows.sort((a, b) => b[1][1] - a[1][1]).slice(0, 16).map(([s, p]) =>
        el("div", { style: `color:${s.colour}`, text: `${s.name}: ${short(p[1])}` })));
    tip.style.left = `${ev.clientX - r.left + 12}px`; tip.style.top = `${ev.clientY - r.top + 12}px`;
    tip.hidden = false;
    canvas.dataset.hoverX = String(xs);
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
}

function chartCsv(canvas) { // one row per x, one column per named line
  const c = canvas.chart, named = c ? c.series.filter((s) => s.name) : [];
  const xs = [...new Set(named.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
  const at = named.map((s) => new Map(s.points));
  return [[c ? c.xLabel : "x", ...named.map((s) => s.name)],
    ...xs.map((v) => [v, ...at.map((m) => (m.has(v) ? m.get(v) : ""))])];
}

const csvCell = (v) => { const s = String(v); return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s; };
const csvText = (rows) => rows.map((r) => r.map(csvCell).join(",")).join("\n") + "\n";
function save(href, name) { const a = el("a", { href, download: name }); document.body.append(a); a.click(); a.remove(); }
function saveCsv(rows, name) { save(URL.createObjectURL(new Blob([csvText(rows)], { type: "text/csv" })), name); }
app.chartCsv = (id) => csvText(chartCsv($(id)));

function drawLoss(losses) { // one chart per loss: L1, MSE and relu_keep's contrastive loss are not on one scale
  const kinds = { l1: (n) => n.endsWith("_l1"), mse: (n) => n.endsWith("_mse"),
                  keep: (n) => !n.endsWith("_l1") && !n.endsWith("_mse") };
  const titles = { l1: ["training loss (L1)", "mean L1 loss"], mse: ["training loss (MSE)", "mean MSE loss"],
                   keep: ["relu_keep: the encoder's epochs, then its map refined", "mean contrastive loss"] };
  for (const [kind, mine] of Object.entries(kinds)) {
    const series = Object.entries(losses).filter(([name, v]) => mine(name) && v.length)
      .map(([name, v]) => ({ name, colour: MODEL_COLOURS[name] || "#000", points: v.map((val, i) => [i + 1, val]) }));
    $(`loss-${kind}`).closest("figure").hidden = !series.length;
    if (series.length) lineChart($(`loss-${kind}`), { title: titles[kind][0], xLabel: "epoch", yLabel: titles[kind][1],
      series });
  }
}

async function refresh() {
  const id = state.experiment;
  const early = app.prefetch && app.prefetch.id === id ? app.prefetch.both : null;
  app.prefetch = null;
  const [exp, loss] = await (early || Promise.all([api(`/experiments/${id}`), api(`/experiments/${id}/loss`)]));
  if (id !== state.experiment) return;
  const first = !app.exp || app.exp.id !== exp.id || app.exp.status !== exp.status;
  app.exp = exp;
  renderProgress(exp);
  drawLoss(loss.losses);
  const live = ["submitting", "queued", "running"].includes(exp.status);
  clearTimeout(app.poll);
  if (live) app.poll = setTimeout(() => refresh().catch((e) => say(e.message)), 2000);
  if (first && exp.status === "succeeded") await showFinished(exp);
  if (exp.status !== "succeeded") {
    for (const s of ["explore", "tables-section", "findings", "charts"]) $(s).hidden = true;
    $("recon-figure").hidden = true;
    document.body.dataset.ready = "1";
  }
}

async function selectExperiment(id) {
  state.experiment = id;
  app.exp = null; app.main.codes = null; app.side.codes = null; app.drawn = null;
  say("");
  await refresh();
}

// ------------------------------------------------------------------ a finished experiment

function fillSelect(sel, values, current) {
  sel.replaceChildren(...values.map((v) => el("option", { value: v, text: v })));
  sel.value = current;
  return sel.value;
}

// The experiment's config, its models followed by its scored uploads (as the API reads them).
function withUploads(exp) {
  UPLOADS.clear();
  for (const sp of exp.spaces || []) if (sp.kind === "uploaded" && sp.state === "ready") UPLOADS.set(sp.name, sp);
  return { ...exp.config, models: [...exp.config.models, ...UPLOADS.keys()] };
}
const modelLabel = (m) => (UPLOADS.has(m) ? `${m} (uploaded)` : m);

async function showFinished(exp) {
  const cfg = withUploads(exp), n = cfg.limit || 60000;
  checkLink(cfg, n);
  fillSelect($("model"), cfg.models, state.model);
  [...$("model").options].forEach((o) => { o.textContent = modelLabel(o.value); });
  $("compare").replaceChildren(el("option", { value: "", text: "(none)" }),
    ...cfg.models.map((m) => el("option", { value: m, text: modelLabel(m) })));
  $("compare").value = state.compare || "";
  fillSelect($("distance"), cfg.distances, state.distance);
  $("k").max = cfg.k; $("k").value = state.k;
  $("ks").value = (state.ks || cfg.ks || [5, 10, 20, 50]).join(",");
  $("sample-id").max = n - 1;
  if (state.sample !== null) $("sample-id").value = state.sample;
  const recon = $("recon");
  const withRecon = cfg.models.filter((m) => RECONSTRUCTS.has(m));
  $("recon-wait").textContent = withRecon.length ? "drawing the reconstructions…"
    : `no reconstructions: ${cfg.models.join(", ")} ${cfg.models.length > 1 ? "have" : "has"} no decoder ` +
      "(a reference map or an encoder alone keeps only its codes)";
  $("recon-wait").hidden = false;
  recon.hidden = !withRecon.length;
  recon.onload = () => { $("recon-wait").hidden = true; };
  recon.onerror = () => { $("recon-wait").textContent = "the reconstructions could not be drawn"; recon.hidden = true; };
  const at = Math.min(90, cfg.epochs);
  $("recon-caption").textContent = `originals (top) and each trained autoencoder's reconstructions at epoch ${at} ` +
    `of ${cfg.epochs}${at < cfg.epochs ? " (the study shows epoch 90)" : ""}`;
  if (withRecon.length) recon.src = `/experiments/${exp.id}/plots/reconstructions.png`;
  $("recon-figure").hidden = false;
  for (const s of ["explore", "tables-section", "findings", "charts"]) $(s).hidden = false;
  writeUrl();  // what is shown, in this history entry
  await Promise.all([loadCodes(), loadCompare(), loadTables(), loadCharts(), loadFindings(), loadRuns(),
    state.sample !== null ? showNeighbours() : Promise.resolve(landing())]);
  document.body.dataset.ready = "1";
}

function landing() { // before a sample is picked: say how, instead of two empty columns
  $("selected").replaceChildren(el("p", { class: "hint", id: "pick-hint",
    text: "Pick a sample: click a point on the map, or type an id. Its nearest neighbours in pixel space " +
          "and in the code space appear here, and the map marks where its pixel-space neighbours landed." }));
  $("stats").replaceChildren();
  $("nbrs-original").replaceChildren(); $("nbrs-encoded").replaceChildren(); $("nbrs-compare").replaceChildren();
  $("col-compare").hidden = true; $("export-nbrs").hidden = true;
}

// ------------------------------------------------------------------ findings: what the study found

// The splits an experiment scored: its training samples (every metric), the held-out test split, or both.
const splitsOf = (cfg) => (cfg.split === "all" ? ["train", "test"] : [cfg.split || "train"]);

// The verb for a change, from its sign (at the three decimals shown).
function trend(before, after) {
  const a = before.toFixed(3), b = after.toFixed(3);
  return a === b ? "stays at" : after > before ? "rises from" : "falls from";
}

// What the held-out test split adds: how much each model keeps of a test image's neighbourhood among the
// training images (beside what it keeps of its training samples'), and the vote of the training codes.
async function heldOutFindings(id, k, d, scoreTrain) {
  const q = `experiment=${id}&k=${k}&split=test`;
  const [score, acc] = await Promise.all([api(`/metrics/score_at_k?${q}`),
    ifLabelled(api(`/metrics/knn_accuracy?experiment=${id}&k=5&split=test`))]);
  const rows = score.rows.filter((r) => r.distance === d).map((r) => ({ model: r.model, v: r.values[String(k)] }))
    .sort((a, b) => b.v - a.v);
  const best = rows[0];
  const trainOf = (m) => scoreTrain && scoreTrain.rows.find((r) => r.model === m && r.distance === d);
  const was = trainOf(best.model);
  const out = [`On the held-out test split, each test image placed by every model: ${best.model} keeps the most, ` +
    `${pct(best.v)} of a test image's ${k} nearest training images (${d.toUpperCase()}) among its ${k} nearest ` +
    `training codes` + (was ? ` (${pct(was.values[String(k)])} on its training samples).` : ".") +
    (rows.length > 1 ? ` Then ${rows.slice(1).map((r) => `${r.model} ${pct(r.v)}`).join(", ")}.` : "")];
  const a = acc && acc.rows.find((r) => r.space === best.model && r.distance === d);
  const px = acc && acc.rows.find((r) => r.space === "original" && r.distance === d);
  if (a && px) out.push(`A 5-nearest-neighbour vote of the training samples labels ${pct(px.values["5"])} of the ` +
    `test images right in pixel space and ${pct(a.values["5"])} through ${best.model}'s codes.`);
  return out;
}

async function loadFindings() {
  const id = state.experiment, cfg = app.exp.config;
  const k = cfg.ks.includes(10) ? 10 : cfg.ks[0], d = cfg.distances.includes("l2") ? "l2" : cfg.distances[0];
  const q = `experiment=${id}&k=${k}`;
  const splits = splitsOf(cfg);
  if (!splits.includes("train")) { // the held-out test split alone
    const sentences = await heldOutFindings(id, k, d, null);
    if (id !== state.experiment) return;
    $("findings-text").replaceChildren(...sentences.map((s) => el("li", { text: s })));
    $("findings").dataset.ready = "1";
    return;
  }
  const [score, acc, agree, byLabel] = await Promise.all([api(`/metrics/score_at_k?${q}`),
    ifLabelled(api(`/metrics/knn_accuracy?experiment=${id}&k=5`)), ifLabelled(api(`/metrics/label_agreement?${q}`)),
    ifLabelled(api(`/metrics/score_at_k/by_label?experiment=${id}&k=${Math.min(20, cfg.k)}`))]);
  if (id !== state.experiment) return;
  const all = score.rows.filter((r) => r.distance === d).map((r) => ({ model: r.model, v: r.values[String(k)] }))
    .sort((a, b) => b.v - a.v);
  const trained = all.filter((r) => contestant(r.model)), refs = all.filter((r) => REFERENCE_MAPS.has(r.model));
  const ups = all.filter((r) => UPLOADS.has(r.model));
  const rows = trained.length ? trained : all;
  const best = rows[0], worst = rows[rows.length - 1];
  const labelled = acc !== null && agree !== null && byLabel !== null;
  const pixel = labelled && acc.rows.find((r) => r.space === "original" && r.distance === d);
  const bestAcc = labelled && acc.rows.find((r) => r.space === best.model && r.distance === d);
  const ag = labelled && agree.rows.find((r) => r.model === best.model && r.distance === d && r.k === k);
  const lab = labelled && byLabel.rows.find((r) => r.model === best.model && r.distance === d);
  const labels = labelled ? Object.entries(lab.by_label).sort((a, b) => b[1] - a[1]) : [];
  const top = all[0];  // the best of all, reference maps included
  const among = trained.length && refs.length + ups.length ? " of the trained models" : "";
  const sentences = [
    `${best.model} keeps the most of each neighbourhood${among}: on average ${pct(best.v)} of a sample's ${k} ` +
    `nearest neighbours in pixel space (${d.toUpperCase()}) are among its ${k} nearest in the 2-D code` +
    (rows.length > 1 ? `, ${(best.v / Math.max(worst.v, 1e-12)).toFixed(1)} times ${worst.model}'s ${pct(worst.v)}.` : "."),
    ...(top.model !== best.model ? [`Of every map here, ${top.model} keeps the most: ${pct(top.v)} (` +
      (UPLOADS.has(top.model) ? "an uploaded embedding)." : "a reference map, fitted by a library rather than trained).")]
      : []),
    `Even so, a 2-D code keeps little: ${pct(1 - best.v)} of each ${k}-neighbourhood is lost.`,
    ...(labelled ? [] : ["The data came without labels, so no label-based measure is shown."]),
  ];
  if (labelled) sentences.push(
    `Labels ${labels[0][0]} and ${labels[1][0]} keep the most under ${best.model} (score@${lab.k} ` +
    `${labels[0][1].toFixed(3)} and ${labels[1][1].toFixed(3)}); label ${labels[labels.length - 1][0]} the least ` +
    `(${labels[labels.length - 1][1].toFixed(3)}).`,
    `The share of same-label neighbours at k = ${k} ${trend(ag.original_rate, ag.encoded_rate)} ` +
    `${ag.original_rate.toFixed(3)} in pixel space ${ag.encoded_rate.toFixed(3) === ag.original_rate.toFixed(3) ? "in" : "to"} ` +
    `${ag.encoded_rate.toFixed(3)} in ${best.model}'s code (${ag.change >= 0 ? "+" : ""}${ag.change.toFixed(3)}).`,
    `A 5-nearest-neighbour vote finds the right label for ${pct(pixel.values["5"])} of the samples in pixel space ` +
    `and ${pct(bestAcc.values["5"])} in ${best.model}'s code.`);
  if (ups.length) {
    sentences.push(`The uploaded embeddings keep ${ups.map((r) => `${pct(r.v)} (${r.model})`).join(", ")} of each ` +
      `${k}-neighbourhood.`);
  }
  if (trained.length && refs.length) {
    sentences.push(`Fitted by well-kept libraries rather than trained, the reference maps keep ` +
      `${refs.map((r) => `${pct(r.v)} (${r.model})`).join(", ")} of each ${k}-neighbourhood.`);
  }
  if (splits.includes("test")) {
    const held = await heldOutFindings(id, k, d, score);
    if (id !== state.experiment) return;
    sentences.push(...held);
  }
  $("findings-text").replaceChildren(...sentences.map((s) => el("li", { text: s })));
  $("findings").dataset.ready = "1";
}

// ------------------------------------------------------------------ score@k and R_NX against k

// The charts against k: each a metric served for every k (the rank measures only where k < N/2: null beyond)
const CURVES = [
  { id: "chart-score", route: "score_at_k", title: "score@k: share of each pixel-space k-neighbourhood kept", y: "score@k" },
  { id: "chart-rnx", route: "r_nx", title: "R_NX(k): score@k corrected for chance", y: "R_NX(k)" },
  { id: "chart-trust", route: "trustworthiness", title: "trustworthiness T(k): code-space neighbours near in pixel space", y: "T(k)" },
  { id: "chart-cont", route: "continuity", title: "continuity C(k): pixel-space neighbours near in the code space", y: "C(k)" },
  { id: "chart-mrre-false", route: "mrre", direction: "false", title: "MRRE(k) of the code-space neighbours (higher is better)", y: "MRRE false" },
  { id: "chart-mrre-missing", route: "mrre", direction: "missing", title: "MRRE(k) of the pixel-space neighbours (higher is better)", y: "MRRE missing" },
];

async function curvesOf(id) { // an experiment's curves at every k, fetched once (one request per route)
  if (!app.curveCache.has(id)) {
    const routes = [...new Set(CURVES.map((c) => c.route))];
    app.curveCache.set(id, Promise.all(routes.map((r) => api(`/metrics/${r}?experiment=${id}&k=all`)))
      .then((tables) => CURVES.map((c) => {
        const t = tables[routes.indexOf(c.route)];
        return c.direction ? { ...t, rows: t.rows.filter((r) => r.direction === c.direction) } : t;
      }))
      .catch((e) => { app.curveCache.delete(id); throw e; }));
  }
  return app.curveCache.get(id);
}

// The chosen experiment's curves (L2 solid, L1 dashed), and each run ticked in the runs table over them,
// dotted and named by its id.
async function loadCharts() {
  const id = state.experiment, others = [...state.overlay].filter((o) => o !== id);
  const splits = splitsOf(app.exp.config);
  for (const c of CURVES) $(c.id).hidden = !splits.includes("train");
  $("chart-heldout").hidden = !splits.includes("test");
  if (splits.includes("test")) await heldOutChart(id, splits);
  if (!splits.includes("train")) {
    if (id !== state.experiment) return;
    $("charts").dataset.ready = "1";
    return;
  }
  // a ticked run that scored its held-out test split alone has no training curves to lay over these
  const [mine, ...more] = await Promise.all([curvesOf(id), ...others.map((o) => curvesOf(o).catch(() => null))]);
  if (id !== state.experiment) return;
  const series = (t, run) => t.rows.map((r) => ({ name: `${run ? `#${run} ` : ""}${r.model} ${r.distance}`,
    colour: MODEL_COLOURS[r.model] || "#000", dash: run ? "run" : r.distance === "l1",
    points: t.k.map((k) => [k, r.values[String(k)]]).filter(([, v]) => v !== null && v !== undefined) }));
  const over = (i) => more.flatMap((tables, j) => (tables ? series(tables[i], others[j]) : []));
  CURVES.forEach((c, i) => lineChart($(c.id), { title: c.title, xLabel: "k", yLabel: c.y,
    series: series(mine[i]).concat(over(i)) }));
  $("charts").dataset.ready = "1";
  $("charts").dataset.points = String(mine[0].k.length);
  $("charts").dataset.overlay = others.join(",");
}

// score@k of the held-out test split (dotted) beside the training split's (solid), at every k, in one
// distance (L2 where the study has it).
async function heldOutChart(id, splits) {
  const cfg = app.exp.config, d = cfg.distances.includes("l2") ? "l2" : cfg.distances[0];
  const [test, train] = await Promise.all([api(`/metrics/score_at_k?experiment=${id}&k=all&split=test`),
    splits.includes("train") ? api(`/metrics/score_at_k?experiment=${id}&k=all`) : Promise.resolve(null)]);
  if (id !== state.experiment) return;
  const series = (t, split) => t.rows.filter((r) => r.distance === d).map((r) => ({
    name: `${r.model} ${split}`, colour: MODEL_COLOURS[r.model] || "#000", dash: split === "test" ? "run" : false,
    points: t.k.map((k) => [k, r.values[String(k)]]).filter(([, v]) => v !== null && v !== undefined) }));
  lineChart($("chart-heldout"), { title: `score@k (${d.toUpperCase()}): held-out test split (dotted) beside the ` +
    "training split (solid)", xLabel: "k", yLabel: "score@k",
    series: (train ? series(train, "train") : []).concat(series(test, "test")) });
}

// ------------------------------------------------------------------ runs: every experiment, one row each

// Parameters and headline numbers as columns (sortable); a click on a run opens it; its box overlays its
// curves on the charts above.
async function headOf(e) { // a run's headline: its best trained model at k = 10 (L2) and its kNN accuracy@5
  const k = Math.min(10, e.config.k), d = e.config.distances.includes("l2") ? "l2" : e.config.distances[0];
  try {
    const [score, acc] = await Promise.all([api(`/metrics/score_at_k?experiment=${e.id}&k=${k}`),
      ifLabelled(api(`/metrics/knn_accuracy?experiment=${e.id}&k=${Math.min(5, e.config.k)}`))]);
    const rows = score.rows.filter((r) => r.distance === d).map((r) => ({ model: r.model, v: r.values[String(k)] }));
    // trained by that run (its own models, not a reference map; an upload is neither)
    const trained = rows.filter((r) => e.config.models.includes(r.model) && !REFERENCE_MAPS.has(r.model));
    const best = (trained.length ? trained : rows).sort((a, b) => b.v - a.v)[0];
    const accOf = acc && acc.rows.find((r) => r.space === best.model && r.distance === d);
    return { id: e.id, k, d, best, acc: accOf ? Object.values(accOf.values)[0] : null };
  } catch (err) { return { id: e.id, k, d, best: null, acc: null }; }
}

async function loadRuns() {
  const done = app.experiments.filter((e) => e.status === "succeeded");
  const heads = await Promise.all(done.map((e) => {
    if (!app.runHeads.has(e.id)) app.runHeads.set(e.id, headOf(e));
    return app.runHeads.get(e.id);
  }));
  const head = new Map(heads.map((h) => [h.id, h]));
  const cols = ["run", "status", "data", "models", "epochs", "lr", "weight decay", "seed", "K", "time",
                "best trained model", "its score@10", "its kNN acc@5", "overlay"];
  const cell = (text, value, cls = "") => {
    const td = el("td", { class: cls, text: String(text) });
    if (value !== undefined && value !== null) td.dataset.value = value;
    return td;
  };
  const t = el("table", { id: "t-runs" },
    el("caption", { text: "every experiment: click a run to open it; tick overlay to draw its curves (dotted) " +
                          "on the charts" }),
    el("tr", {}, ...cols.map((h, j) => el("th", { text: h, class: "sortable", "data-col": j, title: "sort" }))),
    ...app.experiments.map((e) => {
      const c = e.config, h = head.get(e.id), secs = e.started_at && e.finished_at
        ? (new Date(e.finished_at) - new Date(e.started_at)) / 1000 : null;
      const box = el("input", { type: "checkbox", "aria-label": `overlay run #${e.id} on the charts`, "data-run": e.id });
      box.checked = state.overlay.has(e.id);
      box.disabled = !h || e.id === state.experiment;
      box.addEventListener("change", () => {
        if (box.checked) state.overlay.add(e.id); else state.overlay.delete(e.id);
        writeUrl(true);
        loadCharts().catch((err) => say(err.message));
      });
      const open = el("a", { href: `?experiment=${e.id}`, text: `#${e.id}` });
      open.addEventListener("click", (ev) => { ev.preventDefault(); $("experiment").value = e.id; $("experiment").dispatchEvent(new Event("change")); });
      const tr = el("tr", { "data-run": e.id, class: e.id === state.experiment ? "current" : "" },
        (() => { const td = cell("", e.id, "name"); td.append(open); return td; })(),
        cell(e.status), cell(`${dataName(c)} ${dataSize(c)}`, c.limit || 60000, "name"),
        cell(c.models.join(", "), c.models.length, "name"), cell(c.epochs, c.epochs), cell(c.lr, c.lr),
        cell(c.weight_decay, c.weight_decay), cell(c.seed, c.seed), cell(c.k, c.k),
        cell(secs === null ? "–" : duration(e), secs),
        cell(h && h.best ? h.best.model : "–", undefined, "name"),
        cell(h && h.best ? fmt(h.best.v) : "–", h && h.best ? h.best.v : null),
        cell(h && h.acc !== null ? fmt(h.acc) : "–", h ? h.acc : null),
        (() => { const td = el("td"); td.append(box); return td; })());
      return tr;
    }));
  t.querySelectorAll("th.sortable").forEach((th) => th.addEventListener("click", () => sortTable(t, th)));
  $("runs").replaceChildren(el("div", { class: "table-wrap" }, t));
  $("runs-section").hidden = !app.experiments.length;
  $("runs-section").dataset.ready = "1";
}

// ------------------------------------------------------------------ the maps

// A map draws one model's 2-D codes on one canvas: the main map (the model chosen) and, beside it, a second
// model's (state.compare), each with its own zoom. Both mark the selected sample, its neighbours in their own
// code space (rings), where its pixel-space neighbours landed (squares) and the sample under the pointer.
// Labels hidden in the legend (state.hide) are drawn in neither and cannot be picked.
function newMap(canvas, tip, title) {
  return { canvas, tip, title, model: null, codes: null, view: null, encoded: [] };
}

const COLOUR_RGBA = COLOURS.map((h) => {
  const v = parseInt(h.slice(1), 16);
  return (255 << 24) | ((v & 0xff) << 16) | (((v >> 8) & 0xff) << 8) | (v >> 16); // little-endian ABGR
});
const AXIS = 34; // canvas pixels kept for the axes, left and bottom

async function fetchCodes(id, model) { // one request per experiment and model, kept for the page's life
  const key = `${id}/${model}`;
  if (!app.codeCache.has(key)) {
    app.codeCache.set(key, api(`/experiments/${id}/codes.bin?model=${model}`, "bin").catch((e) => {
      app.codeCache.delete(key); throw e;
    }));
  }
  const buf = await app.codeCache.get(key);
  const n = buf.byteLength / 9;
  return { n, codes: new Float32Array(buf, 0, 2 * n), labels: new Uint8Array(buf, 8 * n, n), labelled: buf.labelled,
           sx: new Float32Array(n), sy: new Float32Array(n) };
}

async function loadCodes() {
  const id = state.experiment, model = state.model, m = app.main;
  note("model", "loading the map…", "busy");
  const codes = await fetchCodes(id, model);
  if (id !== state.experiment || model !== state.model) return;
  note("model");
  Object.assign(m, { model, codes });
  m.title.textContent = `${mapName(model)}: ${codes.n.toLocaleString("en")} samples, coloured by label`;
  m.canvas.setAttribute("aria-label", `map of the 2-D codes of ${model}, one point per sample, coloured by ` +
    "label; click a point (or type an id) to show its neighbours");
  fitView(m);
  renderLegend();
  draw(m);
  m.canvas.dataset.ready = "1";
  performance.mark("aeknn:map-ready");
}

async function loadCompare() { // the second map, beside the first, or none
  const id = state.experiment, model = state.compare, m = app.side;
  $("compare-wrap").hidden = !model;
  $("compare-summary").hidden = !model;
  $("explore").classList.toggle("two-maps", !!model);
  m.canvas.dataset.ready = "";
  if (!model) { m.codes = null; m.model = null; return; }
  const codes = await fetchCodes(id, model);
  if (id !== state.experiment || model !== state.compare) return;
  Object.assign(m, { model, codes });
  m.title.textContent = `beside it, ${mapName(model)}`;
  loadAgreement().catch((e) => note("model", e.message));
  m.canvas.setAttribute("aria-label", `map of the 2-D codes of ${model}, beside the first, the same samples marked`);
  fitView(m);
  draw(m);
  m.canvas.dataset.ready = "1";
}

// What a map shows: a model's 2-D codes, or an upload's wider codes by their first two principal components.
function mapName(model) {
  const dim = UPLOADS.has(model) ? UPLOADS.get(model).dim : 2;
  return dim === 2 ? `the 2-D codes of ${model}` : dim === 1 ? `${model}'s 1-D codes (y = 0)`
    : `${model}'s ${dim}-D codes by their first two principal components`;
}

function renderLegend() { // one button per label: click hides or shows it, shift-click shows it alone
  const { labels, n } = app.main.codes, count = new Array(10).fill(0);
  for (let i = 0; i < n; i++) count[labels[i]]++;
  $("legend").replaceChildren(...COLOURS.map((c, i) => {
    const b = el("button", { type: "button", class: "legend-item", style: `--c:${c}`, "data-label": i,
      "aria-label": `label ${i}`,
      "aria-pressed": String(!state.hide.has(i)), title: `label ${i}: ${count[i]} samples · click: hide or show · ` +
        "shift-click: this label alone", text: `${i}` });
    b.addEventListener("click", (ev) => toggleLabel(i, ev.shiftKey));
    return b;
  }));
}

function toggleLabel(label, alone) {
  const all = [...Array(10).keys()];
  if (alone) {
    const isolated = state.hide.size === 9 && !state.hide.has(label);
    state.hide = new Set(isolated ? [] : all.filter((l) => l !== label));
  } else if (state.hide.has(label)) state.hide.delete(label);
  else state.hide.add(label);
  writeUrl(true);
  renderLegend();
  redraw();
}

function fitView(m) {
  const { n, codes } = m.codes;
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (let i = 0; i < n; i++) {
    const x = codes[2 * i], y = codes[2 * i + 1];
    if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
  }
  const c = m.canvas;
  const span = Math.max(x1 - x0, y1 - y0) || 1;
  m.view = { cx: (x0 + x1) / 2, cy: (y0 + y1) / 2, scale: (0.9 * (Math.min(c.width, c.height) - AXIS)) / span };
}

// Data coordinates -> canvas pixels (y grows upwards in the data, downwards on screen).
function toScreen(m, x, y) {
  const c = m.canvas, v = m.view;
  return [(x - v.cx) * v.scale + (c.width + AXIS) / 2, (c.height - AXIS) / 2 - (y - v.cy) * v.scale];
}
function fromScreen(m, px, py) {
  const c = m.canvas, v = m.view;
  return [(px - (c.width + AXIS) / 2) / v.scale + v.cx, ((c.height - AXIS) / 2 - py) / v.scale + v.cy];
}

function screenOf(id, m = app.main) { // where a sample is drawn, in CSS pixels relative to the canvas (tests use this)
  const c = m.canvas, r = c.getBoundingClientRect();
  const [x, y] = toScreen(m, m.codes.codes[2 * id], m.codes.codes[2 * id + 1]);
  return [(x * r.width) / c.width, (y * r.height) / c.height];
}
app.screenOf = screenOf;

function drawAxes(m, g, W, H) {
  g.fillStyle = "#fff"; g.fillRect(0, 0, AXIS, H); g.fillRect(0, H - AXIS, W, AXIS);
  g.strokeStyle = "#888"; g.lineWidth = 1;
  g.beginPath(); g.moveTo(AXIS, 0); g.lineTo(AXIS, H - AXIS); g.lineTo(W, H - AXIS); g.stroke();
  g.fillStyle = "#444"; g.font = "10px system-ui";
  const [xa] = fromScreen(m, AXIS, 0), [xb] = fromScreen(m, W, 0), [, ya] = fromScreen(m, 0, H - AXIS),
    [, yb] = fromScreen(m, 0, 0);
  for (const t of niceTicks(xa, xb, 6)) {
    const [px] = toScreen(m, t, 0);
    g.fillText(short(t), px - 8, H - AXIS + 12);
  }
  for (const t of niceTicks(ya, yb, 6)) {
    const [, py] = toScreen(m, 0, t);
    if (py < H - AXIS - 4) g.fillText(short(t), 1, py + 3);
  }
  g.fillText("code 1", W / 2, H - 6);
  g.save(); g.translate(10, (H - AXIS) / 2 + 14); g.rotate(-Math.PI / 2); g.fillText("code 2", 0, 0); g.restore();
}

function draw(m) {
  if (!m.codes) return;
  const t0 = performance.now();
  const c = m.canvas, g = c.getContext("2d"), W = c.width, H = c.height;
  const { n, codes, labels, sx, sy } = m.codes, v = m.view, hide = state.hide;
  const img = g.createImageData(W, H), px = new Uint32Array(img.data.buffer);
  px.fill(0xffffffff);
  const ox = (W + AXIS) / 2 - v.cx * v.scale, oy = (H - AXIS) / 2 + v.cy * v.scale, s = v.scale;
  for (let i = 0; i < n; i++) {
    const x = (codes[2 * i] * s + ox) | 0, y = (oy - codes[2 * i + 1] * s) | 0;
    sx[i] = x; sy[i] = y;
    if (x < AXIS || y < 0 || x >= W - 1 || y >= H - AXIS - 1 || (hide.size && hide.has(labels[i]))) continue;
    const col = COLOUR_RGBA[labels[i]], o = y * W + x;
    px[o] = col; px[o + 1] = col; px[o + W] = col; px[o + W + 1] = col;
  }
  g.putImageData(img, 0, 0);
  const many = m.encoded.length > 50; // at k = 200 full rings would merge into a blob: thin dots
  g.lineWidth = many ? 1 : 1.5;
  g.strokeStyle = "#000";
  for (const nb of m.encoded) {
    g.beginPath(); g.arc(sx[nb.id] + 1, sy[nb.id] + 1, many ? 2 : 3.5, 0, 2 * Math.PI); g.stroke();
  }
  // where the sample's pixel-space neighbours landed: squares with a white halo for the nearest 20 (the
  // nearest ten with their rank), and beyond them (k up to 200) small dots, so the map stays readable
  g.font = "bold 10px system-ui";
  for (const nb of app.nbrs.original) {
    const x = sx[nb.id] + 1, y = sy[nb.id] + 1;
    if (nb.rank > 20) { g.fillStyle = PIXEL_MARK; g.fillRect(x - 1, y - 1, 2, 2); continue; }
    const r = many ? 2.5 : 3;
    g.lineWidth = 3; g.strokeStyle = "#fff"; g.strokeRect(x - r, y - r, 2 * r, 2 * r);
    g.lineWidth = 1.5; g.strokeStyle = PIXEL_MARK; g.strokeRect(x - r, y - r, 2 * r, 2 * r);
    if (nb.rank <= 10) {
      g.lineWidth = 3; g.strokeStyle = "#fff"; g.strokeText(String(nb.rank), x + 4, y - 4);
      g.fillStyle = PIXEL_MARK; g.fillText(String(nb.rank), x + 4, y - 4);
    }
  }
  if (state.sample !== null && state.sample < n) {
    g.lineWidth = 2.5; g.strokeStyle = "#000"; g.beginPath();
    g.arc(sx[state.sample] + 1, sy[state.sample] + 1, 8, 0, 2 * Math.PI); g.stroke();
  }
  const code = app.drawn && (m === app.main ? app.drawn.code : app.drawn.sideCode);
  if (code) { // your image: a diamond where it landed
    const [x, y] = toScreen(m, code[0], code[1]);
    g.save(); g.translate(x, y); g.rotate(Math.PI / 4);
    g.lineWidth = 3; g.strokeStyle = "#fff"; g.strokeRect(-6, -6, 12, 12);
    g.fillStyle = DRAWN_MARK; g.fillRect(-6, -6, 12, 12);
    g.restore();
  }
  if (app.hover !== null && app.hover < n) { // the sample under the pointer, on both maps
    g.lineWidth = 1.5; g.strokeStyle = "#555"; g.beginPath();
    g.arc(sx[app.hover] + 1, sy[app.hover] + 1, 5, 0, 2 * Math.PI); g.stroke();
  }
  drawAxes(m, g, W, H);
  if (m === app.main) {
    app.frameTimes.push(performance.now() - t0);
    if (app.frameTimes.length > 1000) app.frameTimes.splice(0, 500);
  }
}

let drawQueued = false;
function redraw() {
  if (drawQueued) return;
  drawQueued = true;
  requestAnimationFrame(() => { drawQueued = false; draw(app.main); if (state.compare) draw(app.side); });
}

function nearest(m, cssX, cssY, radius = 6) { // the shown sample drawn closest to a point of the canvas
  const c = m.canvas, r = c.getBoundingClientRect();
  const x = (cssX * c.width) / r.width - 1, y = (cssY * c.height) / r.height - 1;
  const { n, sx, sy, labels } = m.codes, hide = state.hide;
  let best = -1, bestD = radius * radius;
  for (let i = 0; i < n; i++) {
    const dx = sx[i] - x, dy = sy[i] - y, d = dx * dx + dy * dy;
    if (d < bestD && !hide.has(labels[i])) { bestD = d; best = i; }
  }
  return best < 0 ? null : best;
}

function inView(m) { // the shown samples inside the canvas (zoom and legend): the "points in view" CSV
  const { n, sx, sy, labels, codes } = m.codes, c = m.canvas, rows = [["id", "label", "code_1", "code_2"]];
  for (let i = 0; i < n; i++) {
    if (sx[i] < AXIS || sy[i] < 0 || sx[i] >= c.width - 1 || sy[i] >= c.height - AXIS - 1) continue;
    if (!state.hide.has(labels[i])) rows.push([i, labels[i], codes[2 * i], codes[2 * i + 1]]);
  }
  return rows;
}

function setupMap(m) {
  const c = m.canvas, tip = m.tip;
  let drag = null;
  c.addEventListener("wheel", (ev) => {
    if (!m.codes) return;
    ev.preventDefault();
    const r = c.getBoundingClientRect();
    const mx = ((ev.clientX - r.left) * c.width) / r.width, my = ((ev.clientY - r.top) * c.height) / r.height;
    const [dx, dy] = fromScreen(m, mx, my); // keep the data point under the cursor where it is
    m.view.scale *= Math.exp(-ev.deltaY * 0.0015);
    const [nx, ny] = fromScreen(m, mx, my);
    m.view.cx += dx - nx; m.view.cy += dy - ny;
    redraw();
  }, { passive: false });
  c.addEventListener("mousedown", (ev) => { drag = { x: ev.clientX, y: ev.clientY, moved: 0 }; });
  window.addEventListener("mouseup", (ev) => {
    if (!drag) return;
    const click = drag.moved < 4;
    drag = null;
    if (click && m.codes && ev.target === c) {
      const r = c.getBoundingClientRect(), hit = nearest(m, ev.clientX - r.left, ev.clientY - r.top);
      if (hit !== null) selectSample(hit);
    }
  });
  c.addEventListener("mousemove", (ev) => {
    if (!m.codes) return;
    const r = c.getBoundingClientRect();
    if (drag) {
      const ddx = ev.clientX - drag.x, ddy = ev.clientY - drag.y;
      drag.moved += Math.abs(ddx) + Math.abs(ddy);
      drag.x = ev.clientX; drag.y = ev.clientY;
      m.view.cx -= (ddx * c.width) / r.width / m.view.scale;
      m.view.cy += (ddy * c.height) / r.height / m.view.scale;
      tip.hidden = true;
      redraw();
      return;
    }
    const hit = nearest(m, ev.clientX - r.left, ev.clientY - r.top);
    if (hit !== app.hover) { app.hover = hit; redraw(); }
    if (hit === null) { tip.hidden = true; return; }
    const rank = app.nbrs.original.find((nb) => nb.id === hit);
    const [x, y] = [m.codes.codes[2 * hit], m.codes.codes[2 * hit + 1]];
    tip.replaceChildren(el("img", { src: imageUrl(hit), alt: `sample ${hit}` }),
      el("div", { text: `#${hit}` + (m.codes.labelled ? ` · label ${m.codes.labels[hit]}` : "") + (rank ? ` · pixel-space rank ${rank.rank}` : "") }),
      el("div", { class: "code", text: `code (${x.toPrecision(4)}, ${y.toPrecision(4)})` }));
    tip.style.left = `${ev.clientX - r.left + 14}px`; tip.style.top = `${ev.clientY - r.top + 14}px`;
    tip.hidden = false;
  });
  c.addEventListener("mouseleave", () => { tip.hidden = true; app.hover = null; redraw(); });
}

// How often the two maps' k-neighbourhoods agree, and where they differ most (GET /experiments/{id}/compare).
async function loadAgreement() {
  const box = $("compare-summary");
  if (!state.compare || state.compare === state.model) { box.hidden = true; return; }
  const { experiment, model, compare, k, distance } = state;
  const c = await api(`/experiments/${experiment}/compare?models=${model},${compare}&k=${k}&distance=${distance}`);
  if (experiment !== state.experiment || compare !== state.compare || model !== state.model || k !== state.k) return;
  const labels = Object.entries(c.by_label).sort((a, b) => a[1] - b[1]);
  const byLabel = !labels.length ? "" : `; least on label ${labels[0][0]} (${pct(labels[0][1])}), most on ` +
    `label ${labels[labels.length - 1][0]} (${pct(labels[labels.length - 1][1])})`;
  box.replaceChildren(`${model} and ${compare} share ${pct(c.agreement)} of each sample's ${k} nearest ` +
    `(${distance.toUpperCase()})${byLabel}. They differ most on `,
    ...c.differ_most.slice(0, 8).flatMap((d, i) => {
      const a = el("a", { href: "#", "data-id": d.id, text: `#${d.id}`,
                          title: (d.label === null ? "" : `label ${d.label}: `) + `shared ${pct(d.agreement)}; pixel neighbourhood kept: ` +
                                 Object.entries(d.kept).map(([m, v]) => `${m} ${pct(v)}`).join(", ") });
      a.addEventListener("click", (e) => { e.preventDefault(); selectSample(d.id); });
      return i ? [", ", a] : [a];
    }), ".");
  box.hidden = false;
  box.dataset.agreement = String(c.agreement);
}

// ------------------------------------------------------------------ neighbours

function selectSample(id) {
  state.sample = id;
  $("sample-id").value = id;
  note("sample");
  writeUrl(true);
  showNeighbours().catch((e) => note("sample", e.message));
}

// Every digit a view shows comes from one sprite: GET /samples/sprite.png with their ids, 20 to a row.
const SPRITE_COLUMNS = 20;  // as the server lays them out
function spriteOf(ids) {
  const unique = [...new Set(ids)];
  return { url: `/samples/sprite.png?experiment=${state.experiment}&scale=2&ids=${unique.join(",")}`,
           at: new Map(unique.map((id, i) => [id, i])), rows: Math.ceil(unique.length / SPRITE_COLUMNS),
           cols: Math.min(unique.length, SPRITE_COLUMNS) };
}
function digit(sprite, id) { // its size is the CSS's --s (a thumbnail, the selected sample, a narrow window)
  const i = sprite.at.get(id);
  return el("span", { class: "digit", role: "img", "aria-label": `the digit of sample ${id}`,
    style: `background-image:url("${sprite.url}");--cols:${sprite.cols};--rows:${sprite.rows};` +
           `--col:${i % SPRITE_COLUMNS};--row:${Math.floor(i / SPRITE_COLUMNS)}` });
}

function thumb(sprite, nb, own, shared) {
  const other = own !== null && own !== undefined && nb.label !== own;  // your image has no label
  const cls = ["thumb", shared ? "shared" : "", other ? "other-label" : ""].join(" ").trim();
  const t = el("div", { class: cls, "data-id": nb.id, "data-label": nb.label, tabindex: "0", role: "button",
                        "aria-label": `sample ${nb.id}, label ${nb.label}, rank ${nb.rank}, distance ${nb.distance}` +
                          (shared ? ", in both lists" : ""),
                        title: `#${nb.id} (rank ${nb.rank}, distance ${nb.distance})` },
    digit(sprite, nb.id),
    el("span", { class: "label", text: String(nb.label) }), " · ",
    el("span", { class: "dist", text: thumbDistance(nb.distance) }));
  t.addEventListener("click", () => selectSample(nb.id));
  t.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); selectSample(nb.id); }
  });
  return t;
}

async function showNeighbours() {
  if (state.sample === null && app.drawn && pad.blob) return placeImage(pad.blob);  // your image, again
  if (state.sample === null || !app.exp) return;
  const seq = ++app.seq, { sample, model, distance, k, experiment, compare } = state;
  const q = `distance=${distance}&k=${k}&experiment=${experiment}`;
  note("sample", "loading the neighbours…", "busy");
  let orig, enc, cmp;
  try {
    [orig, enc, cmp] = await Promise.all([api(`/samples/${sample}/neighbors?space=original&${q}`),
      api(`/samples/${sample}/neighbors?space=encoded&model=${model}&${q}`),
      compare ? api(`/samples/${sample}/neighbors?space=encoded&model=${compare}&${q}`) : null]);
  } catch (e) {
    if (seq === app.seq) {
      note("sample", e.message);
      app.nbrs = { original: [], encoded: [], compare: [] };
      app.main.encoded = []; app.side.encoded = [];
      landing();
    }
    return;
  }
  if (seq !== app.seq) return; // a later selection won
  note("sample");
  app.drawn = null;  // a stored sample is the selection now
  renderLists({ sample, own: orig.sample.label, orig: orig.neighbors, enc: enc.neighbors,
                cmp: cmp ? cmp.neighbors : null, model, compare, distance, k });
}

// The selection (a stored sample, or your drawing: sample null, picture its data URL) and its lists side
// by side, with how much they share; the maps mark where they landed.
function renderLists({ sample, own, orig, enc, cmp, model, compare, distance, k, picture = null }) {
  const inOrig = new Set(orig.map((n) => n.id)), inEnc = new Set(enc.map((n) => n.id));
  const overlap = (list) => list.filter((n) => inOrig.has(n.id)).length;
  const same = (list) => list.filter((n) => n.label === own).length / list.length;
  app.nbrs = { original: orig, encoded: enc, compare: cmp || [] };
  app.main.encoded = enc; app.side.encoded = app.nbrs.compare;
  const sprite = spriteOf([...(sample === null ? [] : [sample]), ...orig.map((n) => n.id), ...enc.map((n) => n.id),
                           ...app.nbrs.compare.map((n) => n.id)]);
  const both = overlap(enc);
  const what = sample === null ? "your image" : `sample #${sample}`;
  $("selected").replaceChildren(
    sample === null ? el("img", { class: "drawn", src: picture, alt: "your image as the data's samples are made" })
      : digit(sprite, sample),
    el("div", {}, el("strong", { text: what }), el("br"),
       sample === null ? "placed by the encoder" : `label ${own}`));
  $("selected").dataset.sample = sample === null ? "drawn" : sample;
  $("stats").replaceChildren(
    el("span", { id: "overlap", "data-value": both / k,
                 text: `${both} of its ${k} pixel-space neighbours are among its ${k} code-space neighbours ` +
                       `(overlap ${(both / k).toFixed(3)})` }),
    ...(own === null || own === undefined ? [] : [" · same-label rate: pixel space ",
      el("span", { id: "rate-original", text: same(orig).toFixed(3) }),
      `, ${model} `, el("span", { id: "rate-encoded", text: same(enc).toFixed(3) }),
      ...(cmp ? [`, ${compare} `, el("span", { id: "rate-compare", text: same(cmp).toFixed(3) })] : [])]),
    ...(cmp ? [` · ${compare} overlap ${(overlap(cmp) / k).toFixed(3)}`] : []));
  $("title-original").textContent = `pixel space (${distance})`;
  $("title-encoded").textContent = `${model} code space (${distance})`;
  $("nbrs-original").replaceChildren(...orig.map((n) => thumb(sprite, n, own, inEnc.has(n.id))));
  $("nbrs-encoded").replaceChildren(...enc.map((n) => thumb(sprite, n, own, inOrig.has(n.id))));
  $("col-compare").hidden = !cmp;
  const tag = sample === null ? "drawn" : sample;
  if (cmp) {
    $("title-compare").textContent = `${compare} code space (${distance})`;
    $("nbrs-compare").replaceChildren(...cmp.map((n) => thumb(sprite, n, own, inOrig.has(n.id))));
    $("nbrs-compare").dataset.sample = tag;
  }
  $("nbrs-encoded").dataset.sample = tag;
  $("export-nbrs").hidden = sample === null;
  redraw();
}

// ------------------------------------------------------------------ your own image

// Draw a digit (or drop an image): it is posted to POST /experiments/{id}/encode while you draw (at most
// every PAD_EVERY ms) and when the stroke ends; the answer's code is marked on the map and its lists shown.
const PAD_EVERY = 250;
const pad = { drawing: false, dirty: false, timer: null, seq: 0, blob: null, pending: 0 };
app.pad = pad;  // tests wait for pending === 0 and #pad[data-placed] === seq: the last drawing is shown

function clearPad() {
  const c = $("pad"), g = c.getContext("2d");
  g.fillStyle = "#000"; g.fillRect(0, 0, c.width, c.height);
  g.strokeStyle = "#fff"; g.lineWidth = c.width / 14; g.lineCap = "round"; g.lineJoin = "round";
}

function setupPad() {
  const c = $("pad"), g = c.getContext("2d");
  clearPad();
  const at = (ev) => {
    const r = c.getBoundingClientRect();
    return [((ev.clientX - r.left) * c.width) / r.width, ((ev.clientY - r.top) * c.height) / r.height];
  };
  c.addEventListener("pointerdown", (ev) => {
    pad.drawing = true; c.setPointerCapture(ev.pointerId);
    const [x, y] = at(ev);
    g.beginPath(); g.moveTo(x, y); g.lineTo(x + 0.01, y); g.stroke();
    pad.dirty = true;
  });
  c.addEventListener("pointermove", (ev) => {
    if (!pad.drawing) return;
    const [x, y] = at(ev);
    g.lineTo(x, y); g.stroke();
    pad.dirty = true;
    if (pad.timer === null) pad.timer = setTimeout(sendPad, PAD_EVERY);  // while drawing: at most every PAD_EVERY
  });
  const end = () => {
    if (!pad.drawing) return;
    pad.drawing = false;
    clearTimeout(pad.timer); pad.timer = null;
    sendPad();
  };
  c.addEventListener("pointerup", end);
  c.addEventListener("pointercancel", end);
  $("pad-clear").addEventListener("click", () => {
    clearPad(); pad.seq++; pad.blob = null; note("pad");
    if (app.drawn) { app.drawn = null; landing(); redraw(); }
  });
  $("pad-file").addEventListener("change", (e) => { if (e.target.files[0]) placeImage(e.target.files[0]); });
  c.addEventListener("dragover", (e) => e.preventDefault());
  c.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer.files[0]) placeImage(e.dataTransfer.files[0]);
  });
}

function sendPad() {
  pad.timer = null;
  if (!pad.dirty) return;
  pad.dirty = false;
  pad.pending++;
  $("pad").toBlob((blob) => placeImage(blob).finally(() => { pad.pending--; }), "image/png");
}

async function placeImage(blob) {
  if (!app.exp || !blob) return;
  pad.blob = blob;
  const seq = ++pad.seq, { experiment, model, compare, distance, k } = state;
  const models = [model, ...(compare && compare !== model ? [compare] : [])].join(",");
  note("pad", "placing…", "busy");
  let r, body;
  try {
    r = await fetch(`/experiments/${experiment}/encode?k=${k}&models=${models}`,
                    { method: "POST", headers: { "Content-Type": blob.type || "image/png" }, body: blob });
    body = await r.json();
  } catch (e) {
    if (seq === pad.seq) note("pad", e.message);
    return;
  }
  if (seq !== pad.seq || experiment !== state.experiment) return;  // a later drawing (or experiment) won
  if (!r.ok) { note("pad", body.message || `${r.status} ${r.statusText}`); return; }
  const item = body.images[0], main = item.models[model], side = compare ? item.models[compare] : null;
  if (!main.placed) { note("pad", main.why); return; }
  note("pad", side && !side.placed ? side.why : "", "info");
  app.drawn = { code: main.code, sideCode: side && side.placed ? side.code : null, prepared: item.prepared };
  $("pad").dataset.code = JSON.stringify(main.code);
  $("pad").dataset.placed = seq;
  state.sample = null; $("sample-id").value = "";
  renderLists({ sample: null, own: null, orig: item.pixel[distance], enc: main.neighbors[distance],
                cmp: side && side.placed ? side.neighbors[distance] : null, model, compare, distance, k,
                picture: item.picture });
}

function drawnAt(m = app.main) { // where your image landed, in CSS pixels relative to the canvas (tests use this)
  const code = m === app.main ? app.drawn && app.drawn.code : app.drawn && app.drawn.sideCode;
  if (!code || !m.view) return null;
  const c = m.canvas, r = c.getBoundingClientRect(), [x, y] = toScreen(m, code[0], code[1]);
  return [(x * r.width) / c.width, (y * r.height) / c.height];
}
app.drawnAt = drawnAt;

// The lists shown, one row per neighbour: which list, its rank, id, label, distance, and whether the
// pixel-space list and that code space share it.
function neighboursCsv() {
  const rows = [["sample", "space", "distance_kind", "rank", "id", "label", "distance", "in_both"]];
  const inOrig = new Set(app.nbrs.original.map((n) => n.id)), inEnc = new Set(app.nbrs.encoded.map((n) => n.id));
  const add = (space, list, other) => list.forEach((n) => rows.push([state.sample, space, state.distance, n.rank,
    n.id, n.label, n.distance, other.has(n.id) ? 1 : 0]));
  add("original", app.nbrs.original, inEnc);
  add(state.model, app.nbrs.encoded, inOrig);
  if (state.compare) add(state.compare, app.nbrs.compare, inOrig);
  return rows;
}

// ------------------------------------------------------------------ tables

const rounded = (v) => Math.round(v * 1e4); // what is shown: ties within the shown precision are ties

function table(caption, id, header, rows, better) {
  // rows: [{name: [...cells], values: [numbers|null], attrs: [{...}]}]; better: "max" | "min" per column.
  // Each column marks the best trained model ("best") and, where a reference map beats it, that map too
  // ("best-overall"): the pixel-space row is a yardstick and is never marked.
  const cols = header.length - rows[0].name.length;
  const pick = (vals) => (vals.length ? (better === "min" ? Math.min(...vals) : Math.max(...vals)) : null);
  const valuesOf = (keep, j) => rows.filter((r) => keep(r.name[0])).map((r) => r.values[j])
    .filter((v) => v !== null && v !== undefined).map(rounded);
  const best = [], overall = [];
  for (let j = 0; j < cols; j++) {
    best.push(pick(valuesOf(contestant, j)));
    overall.push(pick(valuesOf((name) => name !== "original", j)));
  }
  const t = el("table", { id },
    el("caption", {}, caption, " ", el("a", { href: "#", class: "csv", "data-table": id, text: "CSV" })),
    el("tr", {}, ...header.map((h, j) => el("th", { text: h, class: "sortable", "data-col": j, title: "sort" }))),
    ...rows.map((r) => el("tr", {},
      ...r.name.map((nm) => el("td", { class: "name", text: nm })),
      ...r.values.map((v, j) => {
        const mark = v !== null && contestant(r.name[0]) && rounded(v) === best[j];
        const markAll = v !== null && !mark && REFERENCE_MAPS.has(r.name[0]) && rounded(v) === overall[j] &&
          overall[j] !== best[j];
        const td = el("td", { class: mark ? "best" : markAll ? "best-overall" : "", text: fmt(v),
                              ...(mark ? { title: "best trained model" } : markAll ? { title: "best of all (a reference map)" } : {}) });
        if (v !== null && v !== undefined) td.dataset.value = v;
        for (const [key, val] of Object.entries(r.attrs[j])) td.dataset[key] = val;
        return td;
      }))));
  t.querySelectorAll("th.sortable").forEach((th) => th.addEventListener("click", () => sortTable(t, th)));
  t.querySelector("a.csv").addEventListener("click", (e) => { e.preventDefault(); downloadCsv(t); });
  return t;
}

function sortTable(t, th) {
  const col = parseInt(th.dataset.col, 10), down = th.dataset.order !== "desc";
  t.querySelectorAll("th").forEach((h) => { delete h.dataset.order; });
  th.dataset.order = down ? "desc" : "asc";
  const rows = [...t.querySelectorAll("tr")].slice(1);
  const key = (tr) => { const td = tr.children[col]; return td.dataset.value !== undefined ? parseFloat(td.dataset.value) : td.textContent; };
  rows.sort((a, b) => { const x = key(a), y = key(b); const c = x < y ? -1 : x > y ? 1 : 0; return down ? -c : c; });
  t.append(...rows);
}

function csvOf(t) {
  const cell = (td) => { const s = td.dataset.value ?? td.textContent; return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s; };
  return [...t.querySelectorAll("tr")].map((tr) => [...tr.children].map(cell).join(",")).join("\n") + "\n";
}

function downloadCsv(t) {
  save(URL.createObjectURL(new Blob([csvOf(t)], { type: "text/csv" })),
       `experiment-${state.experiment}-${t.id.replace(/^t-/, "")}.csv`);
}
app.csvOf = (id) => csvOf($(id));

// The tables every scored split has (score@k, by label, same-label rates, label agreement, kNN accuracy): ids
// t-<metric>, and t-test_<metric> with "held-out test split" in the title for the test split.
function splitTables(split, kcols, { score, acc, agree, byLabel }) {
  const pre = split === "test" ? "test_" : "", of = split === "test" ? " — held-out test split, each test image " +
    "against the training images" : "";
  const values = (t, metric) => t.rows.map((r) => ({
    name: [r.model ?? r.space, r.distance], values: t.k.map((k) => r.values[String(k)]),
    attrs: t.k.map((k) => ({ metric: pre + metric, space: r.model ?? r.space, distance: r.distance, k })) }));
  const agreeRows = (field, metric) => {
    const rows = new Map();
    for (const r of agree.rows) {
      const key = `${r.model}/${r.distance}`;
      if (!rows.has(key)) rows.set(key, { name: [r.model, r.distance], values: [], attrs: [] });
      rows.get(key).values.push(r[field]);
      rows.get(key).attrs.push({ metric: pre + metric, space: r.model, distance: r.distance, k: r.k });
    }
    return [...rows.values()];
  };
  const rateRows = () => { // the pixel-space rate once per distance, then each model's
    const out = [];
    for (const d of [...new Set(agree.rows.map((r) => r.distance))]) {
      const first = agree.rows.filter((r) => r.distance === d && r.model === agree.rows[0].model);
      out.push({ name: ["original", d], values: first.map((r) => r.original_rate),
                 attrs: first.map((r) => ({ metric: pre + "same_label_rate", space: "original", distance: d, k: r.k })) });
    }
    return out.concat(agreeRows("encoded_rate", "same_label_rate"));
  };
  const labelled = acc !== null && agree !== null && byLabel !== null;  // data without labels: none of these
  const labelCols = labelled && byLabel.rows.length ? Object.keys(byLabel.rows[0].by_label).sort((a, b) => a - b) : [];
  const byLabelRows = !labelled ? [] : byLabel.rows.map((r) => ({ name: [r.model, r.distance],
    values: labelCols.map((l) => r.by_label[l] ?? null),
    attrs: labelCols.map((l) => ({ metric: pre + "score_at_k_by_label", space: r.model, distance: r.distance,
                                   k: r.k, label: l })) }));
  return [
    table(`score@k: share of each pixel-space neighbourhood kept${of}`, `t-${pre}score_at_k`,
      ["model", "distance", ...kcols], values(score, "score_at_k"), "max"),
    ...(!labelled ? [] : [
      table(`score@${byLabel.k} by label${of}`, `t-${pre}score_at_k_by_label`, ["model", "distance", ...labelCols],
        byLabelRows, "max"),
      table(`same-label rate (pixel space, then each model's code space)${of}`, `t-${pre}same_label_rate`,
        ["space", "distance", ...kcols], rateRows(), "max"),
      table(`label agreement change (encoded - original; negative = same-label neighbours lost)${of}`,
        `t-${pre}label_agreement_change`, ["model", "distance", ...kcols],
        agreeRows("change", "label_agreement_change"), "max"),
      table(`label agreement distance (mean |change|; lower is better)${of}`, `t-${pre}label_agreement_distance`,
        ["model", "distance", ...kcols], agreeRows("abs_change", "label_agreement_distance"), "min"),
      table(split === "test" ? `kNN accuracy@k (the training images vote)${of}` : "kNN accuracy@k (leave-one-out)",
        `t-${pre}knn_accuracy`, ["space", "distance", ...kcols], values(acc, "knn_accuracy"), "max")]),
  ];
}

async function loadTables() {
  const id = state.experiment, text = $("ks").value;
  const ks = parseKs(text);
  if (!ks) { note("ks", `k: "${text}" is not a comma list of whole numbers, like 5,10,20`); return; }
  note("ks", "loading the tables…", "busy");
  const splits = splitsOf(app.exp.config);
  const fetchSplit = (split) => {
    const q = `experiment=${id}&k=${ks.join(",")}${split === "test" ? "&split=test" : ""}`;
    const byLabelQ = `experiment=${id}&k=${Math.min(20, app.exp.config.k)}${split === "test" ? "&split=test" : ""}`;
    return Promise.all([api(`/metrics/score_at_k?${q}`), ifLabelled(api(`/metrics/knn_accuracy?${q}`)),
      ifLabelled(api(`/metrics/label_agreement?${q}`)), ifLabelled(api(`/metrics/score_at_k/by_label?${byLabelQ}`))])
      .then(([score, acc, agree, byLabel]) => ({ score, acc, agree, byLabel }));
  };
  const q = `experiment=${id}&k=${ks.join(",")}`;
  let scored, rest;
  try {
    [scored, rest] = await Promise.all([Promise.all(splits.map(fetchSplit)), !splits.includes("train")
      ? Promise.resolve(null)
      : Promise.all([api(`/metrics/r_nx?${q}`), api(`/metrics/trustworthiness?${q}`), api(`/metrics/continuity?${q}`),
        api(`/metrics/mrre?${q}`), api(`/metrics/lcmc?${q}`), api(`/metrics/auc_rnx?experiment=${id}`)])]);
  } catch (e) { note("ks", e.message); return; }
  if (id !== state.experiment) return;
  note("ks");
  if (ks.join(",") !== (app.exp.config.ks || []).join(",") || state.ks) { state.ks = ks; if (!app.linkProblems.length) writeUrl(); }
  const kcols = scored[0].score.k.map((k) => `k=${k}`);
  const values = (t, metric) => t.rows.map((r) => ({
    name: [r.model ?? r.space, r.distance], values: t.k.map((k) => r.values[String(k)]),
    attrs: t.k.map((k) => ({ metric, space: r.model ?? r.space, distance: r.distance, k })) }));
  const tables = [];
  splits.forEach((split, i) => {
    tables.push(...splitTables(split, kcols, scored[i]));
    if (split !== "train") return;
    const [rnx, trust, cont, mrre, lcmc, auc] = rest;
    tables.push(
      table("R_NX(k): score@k corrected for chance", "t-r_nx", ["model", "distance", ...kcols],
        values(rnx, "r_nx"), "max"),
      table("trustworthiness T(k) (1 = every code-space neighbour is a pixel-space one; k < N/2)",
        "t-trustworthiness", ["model", "distance", ...kcols], values(trust, "trustworthiness"), "max"),
      table("continuity C(k) (1 = every pixel-space neighbour is a code-space one; k < N/2)", "t-continuity",
        ["model", "distance", ...kcols], values(cont, "continuity"), "max"),
      ...["false", "missing"].map((way) => table(way === "false"
        ? "MRRE(k) of the code-space neighbours (their pixel-space rank errors; higher is better; k < N/2)"
        : "MRRE(k) of the pixel-space neighbours (their code-space rank errors; higher is better; k < N/2)",
      `t-mrre_${way}`, ["model", "distance", ...kcols], mrre.rows.filter((r) => r.direction === way).map((r) => ({
        name: [r.model, r.distance], values: mrre.k.map((k) => r.values[String(k)]),
        attrs: mrre.k.map((k) => ({ metric: `mrre_${way}`, space: r.model, distance: r.distance, k })) })), "max")),
      table("LCMC(k) = score@k - k/(N-1)", "t-lcmc", ["model", "distance", ...kcols], values(lcmc, "lcmc"), "max"),
      table(`AUC of R_NX over k = 1..${auc.rows.length ? auc.rows[0].k_max : "K"} (log-k weights)`, "t-auc_rnx",
        ["model", "distance", "AUC"], auc.rows.map((r) => ({ name: [r.model, r.distance], values: [r.value],
          attrs: [{ metric: "auc_rnx", space: r.model, distance: r.distance, k: r.k_max }] })), "max"));
  });
  $("tables").replaceChildren(...tables.map((t) => el("div", { class: "table-wrap" }, t)));
  $("tables").dataset.ready = "1";
}

// ------------------------------------------------------------------ sweeps

const POINT_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];
const pointName = (p) => Object.entries(p).map(([k, v]) => `${k} ${Array.isArray(v) ? v.join("+") : v}`).join(", ") || "all";

async function loadSweeps() {
  let list;
  try { list = await api("/sweeps"); } catch (e) { return; }
  if (!list.length) return;
  $("sweep").replaceChildren(...list.map((w) => el("option", { value: w.id,
    text: `#${w.id} ${w.status} · ${w.done}/${w.total} · ${Object.entries(w.grid).map(([k, v]) => `${k} ${v.join(",")}`).join(" × ")}` })));
  $("sweep-section").hidden = false;
  await showSweep(parseInt($("sweep").value, 10));
}

async function showSweep(id) {
  note("sweep", "loading the sweep…", "busy");
  const w = await api(`/sweeps/${id}`);
  const models = w.base.models, distances = w.base.distances;
  const model = fillSelect($("sweep-model"), models, models.includes($("sweep-model").value) ? $("sweep-model").value : models[models.length - 1]);
  const distance = fillSelect($("sweep-distance"), distances, distances.includes($("sweep-distance").value) ? $("sweep-distance").value : distances[distances.length - 1]);
  const ks = w.base.ks;
  const [table, curve] = await Promise.all([api(`/sweeps/${id}/metrics/score_at_k?k=${ks.join(",")}`),
    api(`/sweeps/${id}/metrics/score_at_k?k=1-${w.base.k}`)]);
  note("sweep");
  const varied = Object.keys(w.grid).filter((f) => f !== "seed");
  const groups = new Map();
  for (const r of table.rows) {
    const key = JSON.stringify(r.point) + `|${r.space}|${r.distance}`;
    if (!groups.has(key)) groups.set(key, { point: r.point, space: r.space, distance: r.distance, cells: {}, n: r.n });
    groups.get(key).cells[r.k] = r;
  }
  const t = el("table", { id: "t-sweep" }, el("caption", { text: `score@k, mean ± sd over seeds ${(w.grid.seed || [w.base.seed]).join(", ")}` }),
    el("tr", {}, ...[...varied, "model", "distance", ...ks.map((k) => `k=${k}`), "n"].map((h) => el("th", { text: h }))),
    ...[...groups.values()].map((g) => el("tr", {},
      ...varied.map((f) => el("td", { class: "name", text: String(g.point[f]) })),
      el("td", { class: "name", text: g.space }), el("td", { class: "name", text: g.distance }),
      ...ks.map((k) => { const c = g.cells[k]; const td = el("td", { text: c ? `${c.mean.toFixed(4)} ± ${c.sd === null ? "–" : c.sd.toFixed(4)}` : "–" });
        if (c) { td.dataset.mean = c.mean; td.dataset.sd = c.sd ?? ""; td.dataset.k = k; td.dataset.space = g.space; } return td; }),
      el("td", { text: String(g.n) }))));
  $("sweep-table").replaceChildren(t);
  const points = [...new Set(curve.rows.map((r) => JSON.stringify(r.point)))];
  const series = [], bands = [];
  points.forEach((pk, i) => {
    const rows = curve.rows.filter((r) => JSON.stringify(r.point) === pk && r.space === model && r.distance === distance);
    const colour = POINT_COLOURS[i % POINT_COLOURS.length];
    series.push({ name: pointName(JSON.parse(pk)), colour, points: rows.map((r) => [r.k, r.mean]) });
    bands.push({ colour, lo: rows.map((r) => [r.k, r.mean - (r.sd ?? 0)]), hi: rows.map((r) => [r.k, r.mean + (r.sd ?? 0)]) });
  });
  lineChart($("sweep-chart"), { title: `score@k of ${model} (${distance}) against k, per grid point`, xLabel: "k",
    yLabel: "score@k", series, bands });
  const loss = [];
  for (const [i, g] of w.groups.entries()) {
    const colour = POINT_COLOURS[i % POINT_COLOURS.length];
    for (const [j, eid] of g.experiments.entries()) {
      const l = (await api(`/experiments/${eid}/loss`)).losses[model] || [];
      loss.push({ name: j === 0 ? pointName(g.point) : "", colour, points: l.map((v, e) => [e + 1, v]) });
    }
  }
  lineChart($("sweep-loss"), { title: `training loss of ${model}, each seed`, xLabel: "epoch", yLabel: "mean loss",
    series: loss });
  $("sweep-section").dataset.ready = "1";
  $("sweep-section").dataset.sweep = String(id);
}

// ------------------------------------------------------------------ wiring

function setupControls() {
  $("experiment").addEventListener("change", (e) => {
    state.sample = null; state.ks = null; app.nbrs = { original: [], encoded: [] };
    document.body.dataset.ready = "";
    app.linkProblems = []; app.link = {};
    state.experiment = parseInt(e.target.value, 10);
    writeUrl(true);
    selectExperiment(state.experiment).catch((err) => say(err.message));
  });
  $("model").addEventListener("change", (e) => {
    state.model = e.target.value; writeUrl(true);
    $("map").dataset.ready = "";
    loadCodes().catch((err) => note("model", err.message));
    showNeighbours();
    loadAgreement().catch((err) => note("model", err.message));
  });
  $("distance").addEventListener("change", (e) => {
    state.distance = e.target.value; writeUrl(true); showNeighbours();
    loadAgreement().catch((err) => note("model", err.message));
  });
  $("k").addEventListener("change", (e) => {
    const k = parseInt(e.target.value, 10);
    if (!(k >= 1 && k <= app.exp.config.k)) { note("k", `k must be between 1 and ${app.exp.config.k}`); return; }
    note("k");
    state.k = k; writeUrl(true); showNeighbours();
    loadAgreement().catch((err) => note("model", err.message));
  });
  const show = () => {
    const id = parseInt($("sample-id").value, 10);
    const n = app.main.codes ? app.main.codes.n : Infinity;
    if (!(id >= 0 && id < n)) { note("sample", `sample id must be between 0 and ${n - 1}`); return; }
    selectSample(id);
  };
  $("show").addEventListener("click", show);
  $("sample-id").addEventListener("keydown", (e) => { if (e.key === "Enter") show(); });
  $("reset-view").addEventListener("click", () => {
    for (const m of [app.main, app.side]) if (m.codes) fitView(m);
    redraw();
  });
  $("compare").addEventListener("change", (e) => {
    state.compare = e.target.value || null; writeUrl(true);
    loadCompare().then(showNeighbours).catch((err) => note("model", err.message));
  });
  $("export-view").addEventListener("click", () => {
    if (app.main.codes) saveCsv(inView(app.main), `experiment-${state.experiment}-${state.model}-in-view.csv`);
  });
  $("export-nbrs").addEventListener("click", () => saveCsv(neighboursCsv(),
    `experiment-${state.experiment}-sample-${state.sample}-neighbours.csv`));
  $("ks-apply").addEventListener("click", () => loadTables());
  for (const id of ["sweep", "sweep-model", "sweep-distance"]) {
    $(id).addEventListener("change", () => showSweep(parseInt($("sweep").value, 10)).catch((e) => note("sweep", e.message)));
  }
  $("ks").addEventListener("keydown", (e) => { if (e.key === "Enter") loadTables(); });
}

// Back and Forward: the URL's view again, as the page's own (nothing in it is blamed on a link).
async function onHistory() {
  const before = { ...state };
  readUrl();
  app.link = {}; app.linkProblems = [];
  if (app.linkBanner) { say(""); app.linkBanner = false; }
  if (state.experiment !== before.experiment || !app.exp) {
    await selectExperiment(state.experiment);
    return;
  }
  $("model").value = state.model; $("distance").value = state.distance; $("k").value = state.k;
  if (state.sample !== null) $("sample-id").value = state.sample;
  $("compare").value = state.compare || "";
  if (state.model !== before.model) { $("map").dataset.ready = ""; await loadCodes(); }
  if (state.compare !== before.compare) await loadCompare();
  if ([...state.overlay].join() !== [...before.overlay].join()) {
    document.querySelectorAll("#t-runs input[data-run]").forEach((b) => { b.checked = state.overlay.has(+b.dataset.run); });
    await loadCharts();
  }
  renderLegend();
  redraw();
  if (state.sample !== null) await showNeighbours(); else landing();
}

async function main() {
  readUrl();
  window.addEventListener("popstate", () => onHistory().catch((e) => say(e.message)));
  setupControls();
  setupMap(app.main);
  setupMap(app.side);
  setupPad();
  for (const id of [...CURVES.map((c) => c.id), "sweep-chart", "sweep-loss", "loss-l1", "loss-mse", "loss-keep"]) {
    setupChart($(id));
  }
  loadSweeps().catch((e) => note("sweep", e.message));
  if (state.experiment !== null) { // a link that names its experiment: ask for it beside the list
    const id = state.experiment;
    app.prefetch = { id, both: Promise.all([api(`/experiments/${id}`), api(`/experiments/${id}/loss`)]) };
    app.prefetch.both.catch(() => {});  // a link to a missing experiment is answered by loadExperiments
  }
  const [found] = await Promise.all([loadExperiments(), loadModels()]);
  if (found === null) { document.body.dataset.ready = "1"; return; }
  if (app.linkProblems.length) say(`This link asks for what does not exist: ${app.linkProblems.join("; ")}.`);
  await selectExperiment(state.experiment);
}

main().catch((e) => { say(e.message); document.body.dataset.ready = "1"; });

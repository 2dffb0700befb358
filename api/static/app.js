// The aeknn page: plain JavaScript, no dependencies. Every number it shows comes from the REST API.
// The view (experiment, model, sample, distance, k) lives in the URL's query, so a view can be shared.
"use strict";

const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                 "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const MODEL_COLOURS = { linear_l1: "#1f77b4", linear_mse: "#ff7f0e", relu_l1: "#2ca02c", relu_mse: "#d62728" };
const $ = (id) => document.getElementById(id);

const state = { experiment: null, model: "relu_mse", sample: null, distance: "l2", k: 10 };
const app = {
  state, exp: null, codes: null, view: null, frameTimes: [], poll: null,
  nbrs: { original: [], encoded: [] }, hover: null, seq: 0,
};
window.aeknn = app;

// ------------------------------------------------------------------ helpers

async function api(path, kind = "json") {
  let r = await fetch(path);
  if (r.status === 401 && askForKey()) r = await fetch(path);  // a server with AEKNN_READ_KEY set
  if (!r.ok) {
    let msg = `${r.status} ${r.statusText}`;
    try { msg = (await r.json()).message || msg; } catch (e) { /* not JSON */ }
    const err = new Error(msg);
    err.status = r.status;
    throw err;
  }
  return kind === "json" ? r.json() : r.arrayBuffer();
}

// A key, asked for once when the server answers 401, kept in a same-site cookie for this tab's session
// (a cookie, so that the digits' <img> requests carry it too).
function askForKey() {
  const key = window.prompt("This aeknn server needs a key (AEKNN_READ_KEY or AEKNN_API_KEY):");
  if (!key) return false;
  document.cookie = `aeknn_key=${encodeURIComponent(key.trim())}; path=/; SameSite=Strict`;
  return true;
}

function say(text) {
  const m = $("message");
  m.textContent = text || "";
  m.hidden = !text;
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
const imageUrl = (id, scale = 2) => `/samples/${id}/image.png?experiment=${state.experiment}&scale=${scale}`;

function readUrl() {
  const q = new URLSearchParams(location.search);
  if (q.has("experiment")) state.experiment = parseInt(q.get("experiment"), 10) || null;
  if (q.has("model")) state.model = q.get("model");
  if (q.has("distance")) state.distance = q.get("distance");
  if (q.has("k")) state.k = parseInt(q.get("k"), 10) || state.k;
  if (q.has("sample") && q.get("sample") !== "") state.sample = parseInt(q.get("sample"), 10);
  if (Number.isNaN(state.sample)) state.sample = null;
}

function writeUrl() {
  const q = new URLSearchParams();
  for (const key of ["experiment", "model", "sample", "distance", "k"]) {
    if (state[key] !== null && state[key] !== undefined) q.set(key, state[key]);
  }
  history.replaceState(null, "", `${location.pathname}?${q}`);
}

// ------------------------------------------------------------------ experiments and progress

async function loadExperiments() {
  const page = await api("/experiments?per_page=100");
  const sel = $("experiment");
  sel.replaceChildren(...page.items.map((e) => el("option", { value: e.id, text: `#${e.id} ${e.status}` })));
  if (!page.items.length) {
    say("No experiment yet: submit one with POST /experiments or `aeknn submit`.");
    return null;
  }
  const known = page.items.some((e) => e.id === state.experiment);
  if (!known) {
    const done = page.items.find((e) => e.status === "succeeded");
    state.experiment = (done || page.items[0]).id;
  }
  sel.value = state.experiment;
  return state.experiment;
}

function renderProgress(exp) {
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
  const tables = el("p", { text: `neighbour tables: ${exp.tables.filter((t) => t.complete).length} of ` +
    `${exp.tables.length} complete, chunks ${exp.chunks_done} / ${exp.chunks_total}` +
    (Object.keys(exp.timings).length ? ` · stage seconds: ${Object.entries(exp.timings)
      .map(([k, v]) => `${k} ${v.toFixed(1)}`).join(", ")}` : "") });
  $("progress").replaceChildren(models, tables);
}

function drawLoss(losses, epochs) {
  const c = $("loss");
  const g = c.getContext("2d");
  const W = c.width, H = c.height, L = 56, R = 110, T = 10, B = 28;
  g.clearRect(0, 0, W, H);
  const all = Object.values(losses).flat();
  if (!all.length) { g.fillStyle = "#777"; g.fillText("no epoch finished yet", L, H / 2); return; }
  let lo = Math.min(...all), hi = Math.max(...all);
  if (hi === lo) { hi += 1e-6; lo -= 1e-6; }
  const n = Math.max(epochs, ...Object.values(losses).map((v) => v.length));
  const x = (i) => L + ((W - L - R) * i) / Math.max(1, n - 1);
  const y = (v) => T + ((H - T - B) * (hi - v)) / (hi - lo);
  g.strokeStyle = "#999"; g.strokeRect(L, T, W - L - R, H - T - B);
  g.fillStyle = "#444"; g.font = "11px system-ui";
  g.fillText(hi.toFixed(4), 2, T + 8); g.fillText(lo.toFixed(4), 2, H - B);
  g.fillText("epoch 1", L, H - 10); g.fillText(String(n), W - R - 14, H - 10);
  let row = 0;
  for (const [name, v] of Object.entries(losses)) {
    g.strokeStyle = MODEL_COLOURS[name] || "#000"; g.lineWidth = 1.5; g.beginPath();
    v.forEach((val, i) => (i ? g.lineTo(x(i), y(val)) : g.moveTo(x(i), y(val))));
    g.stroke();
    g.fillStyle = g.strokeStyle; g.fillText(name, W - R + 8, T + 12 + 14 * row++);
  }
}

async function refresh() {
  const id = state.experiment;
  const exp = await api(`/experiments/${id}`);
  if (id !== state.experiment) return;
  const first = !app.exp || app.exp.id !== exp.id || app.exp.status !== exp.status;
  app.exp = exp;
  renderProgress(exp);
  drawLoss((await api(`/experiments/${id}/loss`)).losses, exp.config.epochs);
  const live = exp.status === "queued" || exp.status === "running";
  clearTimeout(app.poll);
  if (live) app.poll = setTimeout(() => refresh().catch((e) => say(e.message)), 2000);
  if (first && exp.status === "succeeded") await showFinished(exp);
  if (exp.status !== "succeeded") {
    $("explore").hidden = true; $("tables-section").hidden = true; $("recon-figure").hidden = true;
    document.body.dataset.ready = "1";
  }
}

async function selectExperiment(id) {
  state.experiment = id;
  app.exp = null; app.codes = null;
  say("");
  writeUrl();
  await refresh();
}

// ------------------------------------------------------------------ a finished experiment

function fillSelect(sel, values, current) {
  sel.replaceChildren(...values.map((v) => el("option", { value: v, text: v })));
  sel.value = values.includes(current) ? current : values[values.length - 1];
  return sel.value;
}

async function showFinished(exp) {
  const cfg = exp.config;
  state.model = fillSelect($("model"), cfg.models, state.model);
  state.distance = fillSelect($("distance"), cfg.distances, state.distance);
  state.k = Math.min(Math.max(1, state.k), cfg.k);
  $("k").max = cfg.k; $("k").value = state.k;
  $("ks").value = (cfg.ks || [5, 10, 20, 50]).join(",");
  $("sample-id").max = (cfg.limit || 60000) - 1;
  if (state.sample !== null) $("sample-id").value = state.sample;
  $("recon").src = `/experiments/${exp.id}/plots/reconstructions.png`;
  $("recon-figure").hidden = false;
  $("explore").hidden = false; $("tables-section").hidden = false;
  writeUrl();
  await Promise.all([loadCodes(), loadTables(), state.sample !== null ? showNeighbours() : null]);
  document.body.dataset.ready = "1";
}

async function loadCodes() {
  const id = state.experiment, model = state.model;
  const buf = await api(`/experiments/${id}/codes.bin?model=${model}`, "bin");
  if (id !== state.experiment || model !== state.model) return;
  const n = buf.byteLength / 9;
  const codes = new Float32Array(buf, 0, 2 * n), labels = new Uint8Array(buf, 8 * n, n);
  app.codes = { n, codes, labels, sx: new Float32Array(n), sy: new Float32Array(n) };
  fitView();
  draw();
  $("map").dataset.ready = "1";
  performance.mark("aeknn:map-ready");
  $("legend").replaceChildren(...COLOURS.map((c, i) => el("span", { style: `--c:${c}`, text: String(i) })));
}

// ------------------------------------------------------------------ the map

const COLOUR_RGBA = COLOURS.map((h) => {
  const v = parseInt(h.slice(1), 16);
  return (255 << 24) | ((v & 0xff) << 16) | (((v >> 8) & 0xff) << 8) | (v >> 16); // little-endian ABGR
});

function fitView() {
  const { n, codes } = app.codes;
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (let i = 0; i < n; i++) {
    const x = codes[2 * i], y = codes[2 * i + 1];
    if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
  }
  const c = $("map");
  const span = Math.max(x1 - x0, y1 - y0) || 1;
  app.view = { cx: (x0 + x1) / 2, cy: (y0 + y1) / 2, scale: (0.94 * Math.min(c.width, c.height)) / span };
}

// Data coordinates -> canvas pixels (y grows upwards in the data, downwards on screen).
function toScreen(x, y) {
  const c = $("map"), v = app.view;
  return [(x - v.cx) * v.scale + c.width / 2, c.height / 2 - (y - v.cy) * v.scale];
}

function screenOf(id) { // where a sample is drawn, in CSS pixels relative to the canvas (tests use this)
  const c = $("map"), r = c.getBoundingClientRect();
  const [x, y] = toScreen(app.codes.codes[2 * id], app.codes.codes[2 * id + 1]);
  return [(x * r.width) / c.width, (y * r.height) / c.height];
}
app.screenOf = screenOf;

function draw() {
  if (!app.codes) return;
  const t0 = performance.now();
  const c = $("map"), g = c.getContext("2d"), W = c.width, H = c.height;
  const { n, codes, labels, sx, sy } = app.codes, v = app.view;
  const img = g.createImageData(W, H), px = new Uint32Array(img.data.buffer);
  px.fill(0xffffffff);
  const ox = W / 2 - v.cx * v.scale, oy = H / 2 + v.cy * v.scale, s = v.scale;
  for (let i = 0; i < n; i++) {
    const x = (codes[2 * i] * s + ox) | 0, y = (oy - codes[2 * i + 1] * s) | 0;
    sx[i] = x; sy[i] = y;
    if (x < 0 || y < 0 || x >= W - 1 || y >= H - 1) continue;
    const col = COLOUR_RGBA[labels[i]], o = y * W + x;
    px[o] = col; px[o + 1] = col; px[o + W] = col; px[o + W + 1] = col;
  }
  g.putImageData(img, 0, 0);
  const ring = (id, colour, r) => {
    g.strokeStyle = colour; g.beginPath(); g.arc(sx[id] + 1, sy[id] + 1, r, 0, 2 * Math.PI); g.stroke();
  };
  g.lineWidth = 1.5;
  for (const nb of app.nbrs.encoded) ring(nb.id, "#000", 3.5);
  if (state.sample !== null && state.sample < n) { g.lineWidth = 2.5; ring(state.sample, "#000", 8); }
  if (app.hover !== null) { g.lineWidth = 1.5; ring(app.hover, "#555", 5); }
  app.frameTimes.push(performance.now() - t0);
  if (app.frameTimes.length > 1000) app.frameTimes.splice(0, 500);
}

let drawQueued = false;
function redraw() {
  if (drawQueued) return;
  drawQueued = true;
  requestAnimationFrame(() => { drawQueued = false; draw(); });
}

function nearest(cssX, cssY, radius = 6) { // the sample drawn closest to a point of the canvas
  const c = $("map"), r = c.getBoundingClientRect();
  const x = (cssX * c.width) / r.width - 1, y = (cssY * c.height) / r.height - 1;
  const { n, sx, sy } = app.codes;
  let best = -1, bestD = radius * radius;
  for (let i = 0; i < n; i++) {
    const dx = sx[i] - x, dy = sy[i] - y, d = dx * dx + dy * dy;
    if (d < bestD) { bestD = d; best = i; }
  }
  return best < 0 ? null : best;
}

function setupMap() {
  const c = $("map"), tip = $("tip");
  let drag = null;
  c.addEventListener("wheel", (ev) => {
    if (!app.codes) return;
    ev.preventDefault();
    const r = c.getBoundingClientRect();
    const mx = ((ev.clientX - r.left) * c.width) / r.width, my = ((ev.clientY - r.top) * c.height) / r.height;
    const v = app.view, f = Math.exp(-ev.deltaY * 0.0015);
    // keep the data point under the cursor where it is
    const dx = (mx - c.width / 2) / v.scale + v.cx, dy = (c.height / 2 - my) / v.scale + v.cy;
    v.scale *= f;
    v.cx = dx - (mx - c.width / 2) / v.scale; v.cy = dy - (c.height / 2 - my) / v.scale;
    redraw();
  }, { passive: false });
  c.addEventListener("mousedown", (ev) => { drag = { x: ev.clientX, y: ev.clientY, moved: 0 }; });
  window.addEventListener("mouseup", (ev) => {
    if (!drag) return;
    const click = drag.moved < 4;
    drag = null;
    if (click && app.codes && ev.target === c) {
      const r = c.getBoundingClientRect(), hit = nearest(ev.clientX - r.left, ev.clientY - r.top);
      if (hit !== null) selectSample(hit);
    }
  });
  c.addEventListener("mousemove", (ev) => {
    if (!app.codes) return;
    const r = c.getBoundingClientRect();
    if (drag) {
      const ddx = ev.clientX - drag.x, ddy = ev.clientY - drag.y;
      drag.moved += Math.abs(ddx) + Math.abs(ddy);
      drag.x = ev.clientX; drag.y = ev.clientY;
      app.view.cx -= (ddx * c.width) / r.width / app.view.scale;
      app.view.cy += (ddy * c.height) / r.height / app.view.scale;
      tip.hidden = true;
      redraw();
      return;
    }
    const hit = nearest(ev.clientX - r.left, ev.clientY - r.top);
    if (hit !== app.hover) { app.hover = hit; redraw(); }
    if (hit === null) { tip.hidden = true; return; }
    tip.replaceChildren(el("img", { src: imageUrl(hit), alt: `sample ${hit}` }),
      el("div", { text: `#${hit} · label ${app.codes.labels[hit]}` }));
    tip.style.left = `${ev.clientX - r.left + 14}px`; tip.style.top = `${ev.clientY - r.top + 14}px`;
    tip.hidden = false;
  });
  c.addEventListener("mouseleave", () => { tip.hidden = true; app.hover = null; redraw(); });
}

// ------------------------------------------------------------------ neighbours

function selectSample(id) {
  state.sample = id;
  $("sample-id").value = id;
  writeUrl();
  showNeighbours().catch((e) => say(e.message));
}

function thumb(nb, own, shared) {
  const cls = ["thumb", shared ? "shared" : "", nb.label === own ? "" : "other-label"].join(" ").trim();
  const t = el("div", { class: cls, "data-id": nb.id, "data-label": nb.label, title: `#${nb.id} (rank ${nb.rank})` },
    el("img", { src: imageUrl(nb.id), alt: `sample ${nb.id}`, loading: "lazy" }),
    el("span", { class: "label", text: String(nb.label) }), " · ",
    el("span", { class: "dist", text: Number(nb.distance.toPrecision(4)).toString() }));
  t.addEventListener("click", () => selectSample(nb.id));
  return t;
}

async function showNeighbours() {
  if (state.sample === null || !app.exp) return;
  const seq = ++app.seq, { sample, model, distance, k, experiment } = state;
  const q = `distance=${distance}&k=${k}&experiment=${experiment}`;
  let orig, enc;
  try {
    [orig, enc] = await Promise.all([api(`/samples/${sample}/neighbors?space=original&${q}`),
      api(`/samples/${sample}/neighbors?space=encoded&model=${model}&${q}`)]);
  } catch (e) {
    if (seq === app.seq) {
      say(e.message);
      app.nbrs = { original: [], encoded: [] };
      $("nbrs-original").replaceChildren(); $("nbrs-encoded").replaceChildren();
      $("selected").replaceChildren(); $("stats").replaceChildren();
    }
    return;
  }
  if (seq !== app.seq) return; // a later selection won
  say("");
  const own = orig.sample.label;
  const inOrig = new Set(orig.neighbors.map((n) => n.id)), inEnc = new Set(enc.neighbors.map((n) => n.id));
  const both = [...inOrig].filter((i) => inEnc.has(i)).length;
  const same = (list) => list.filter((n) => n.label === own).length / list.length;
  app.nbrs = { original: orig.neighbors, encoded: enc.neighbors };
  $("selected").replaceChildren(el("img", { src: imageUrl(sample, 3), alt: `sample ${sample}` }),
    el("div", {}, el("strong", { text: `sample #${sample}` }), el("br"), `label ${own}`));
  $("selected").dataset.sample = sample;
  $("stats").replaceChildren(
    el("span", { id: "overlap", "data-value": both / k, text: `overlap ${both}/${k} = ${(both / k).toFixed(3)}` }),
    " · same-label rate: pixel space ",
    el("span", { id: "rate-original", text: same(orig.neighbors).toFixed(3) }),
    `, ${model} `, el("span", { id: "rate-encoded", text: same(enc.neighbors).toFixed(3) }));
  $("title-original").textContent = `pixel space (${distance})`;
  $("title-encoded").textContent = `${model} code space (${distance})`;
  $("nbrs-original").replaceChildren(...orig.neighbors.map((n) => thumb(n, own, inEnc.has(n.id))));
  $("nbrs-encoded").replaceChildren(...enc.neighbors.map((n) => thumb(n, own, inOrig.has(n.id))));
  $("nbrs-encoded").dataset.sample = sample;
  redraw();
}

// ------------------------------------------------------------------ tables

function table(caption, id, header, rows, better) {
  // rows: [{name: [...cells], values: [numbers|null], attrs: [{...}]}]; better: "max" | "min" per column
  const cols = header.length - rows[0].name.length;
  const best = [];
  for (let j = 0; j < cols; j++) {
    const vals = rows.map((r) => r.values[j]).filter((v) => v !== null && v !== undefined);
    best.push(vals.length ? (better === "min" ? Math.min(...vals) : Math.max(...vals)) : null);
  }
  return el("table", { id },
    el("caption", { text: caption }),
    el("tr", {}, ...header.map((h) => el("th", { text: h }))),
    ...rows.map((r) => el("tr", {},
      ...r.name.map((nm) => el("td", { class: "name", text: nm })),
      ...r.values.map((v, j) => {
        const td = el("td", { class: v !== null && v === best[j] ? "best" : "", text: fmt(v) });
        if (v !== null && v !== undefined) td.dataset.value = v;
        for (const [key, val] of Object.entries(r.attrs[j])) td.dataset[key] = val;
        return td;
      }))));
}

async function loadTables() {
  const id = state.experiment, ks = $("ks").value.replace(/\s+/g, "");
  const q = `experiment=${id}&k=${encodeURIComponent(ks)}`;
  let score, rnx, acc, agree, byLabel;
  try {
    [score, rnx, acc, agree, byLabel] = await Promise.all([
      api(`/metrics/score_at_k?${q}`), api(`/metrics/r_nx?${q}`), api(`/metrics/knn_accuracy?${q}`),
      api(`/metrics/label_agreement?${q}`), api(`/metrics/score_at_k/by_label?experiment=${id}`)]);
  } catch (e) { say(e.message); return; }
  if (id !== state.experiment) return;
  const kcols = score.k.map((k) => `k=${k}`);
  const values = (t, metric) => t.rows.map((r) => ({
    name: [r.model ?? r.space, r.distance], values: t.k.map((k) => r.values[String(k)]),
    attrs: t.k.map((k) => ({ metric, space: r.model ?? r.space, distance: r.distance, k })) }));
  const agreeRows = (field, metric) => {
    const rows = new Map();
    for (const r of agree.rows) {
      const key = `${r.model}/${r.distance}`;
      if (!rows.has(key)) rows.set(key, { name: [r.model, r.distance], values: [], attrs: [] });
      rows.get(key).values.push(r[field]);
      rows.get(key).attrs.push({ metric, space: r.model, distance: r.distance, k: r.k });
    }
    return [...rows.values()];
  };
  const rateRows = () => { // the pixel-space rate once per distance, then each model's
    const out = [];
    for (const d of [...new Set(agree.rows.map((r) => r.distance))]) {
      const first = agree.rows.filter((r) => r.distance === d && r.model === agree.rows[0].model);
      out.push({ name: ["original", d], values: first.map((r) => r.original_rate),
                 attrs: first.map((r) => ({ metric: "same_label_rate", space: "original", distance: d, k: r.k })) });
    }
    return out.concat(agreeRows("encoded_rate", "same_label_rate"));
  };
  const labelCols = byLabel.rows.length ? Object.keys(byLabel.rows[0].by_label).sort((a, b) => a - b) : [];
  const byLabelRows = byLabel.rows.map((r) => ({ name: [r.model, r.distance],
    values: labelCols.map((l) => r.by_label[l] ?? null),
    attrs: labelCols.map((l) => ({ metric: "score_at_k_by_label", space: r.model, distance: r.distance,
                                   k: r.k, label: l })) }));
  $("tables").replaceChildren(
    table("score@k: share of each pixel-space neighbourhood kept", "t-score_at_k",
      ["model", "distance", ...kcols], values(score, "score_at_k"), "max"),
    table(`score@${byLabel.k} by label`, "t-score_at_k_by_label", ["model", "distance", ...labelCols],
      byLabelRows, "max"),
    table("same-label rate (pixel space, then each model's code space)", "t-same_label_rate",
      ["space", "distance", ...kcols], rateRows(), "max"),
    table("label agreement change (encoded - original; negative = same-label neighbours lost)",
      "t-label_agreement_change", ["model", "distance", ...kcols],
      agreeRows("change", "label_agreement_change"), "max"),
    table("label agreement distance (mean |change|; lower is better)", "t-label_agreement_distance",
      ["model", "distance", ...kcols], agreeRows("abs_change", "label_agreement_distance"), "min"),
    table("kNN accuracy@k (leave-one-out)", "t-knn_accuracy", ["space", "distance", ...kcols],
      values(acc, "knn_accuracy"), "max"),
    table("R_NX(k): score@k corrected for chance", "t-r_nx", ["model", "distance", ...kcols],
      values(rnx, "r_nx"), "max"));
  $("tables").dataset.ready = "1";
}

// ------------------------------------------------------------------ wiring

function setupControls() {
  $("experiment").addEventListener("change", (e) => {
    state.sample = null; app.nbrs = { original: [], encoded: [] };
    document.body.dataset.ready = "";
    selectExperiment(parseInt(e.target.value, 10)).catch((err) => say(err.message));
  });
  $("model").addEventListener("change", (e) => {
    state.model = e.target.value; writeUrl();
    $("map").dataset.ready = "";
    loadCodes().catch((err) => say(err.message));
    showNeighbours();
  });
  $("distance").addEventListener("change", (e) => { state.distance = e.target.value; writeUrl(); showNeighbours(); });
  $("k").addEventListener("change", (e) => {
    const k = parseInt(e.target.value, 10);
    if (!(k >= 1 && k <= app.exp.config.k)) { say(`k must be between 1 and ${app.exp.config.k}`); return; }
    state.k = k; writeUrl(); showNeighbours();
  });
  const show = () => {
    const id = parseInt($("sample-id").value, 10);
    const n = app.codes ? app.codes.n : Infinity;
    if (!(id >= 0 && id < n)) { say(`sample id must be between 0 and ${n - 1}`); return; }
    selectSample(id);
  };
  $("show").addEventListener("click", show);
  $("sample-id").addEventListener("keydown", (e) => { if (e.key === "Enter") show(); });
  $("reset-view").addEventListener("click", () => { if (app.codes) { fitView(); redraw(); } });
  $("ks-apply").addEventListener("click", () => loadTables());
  $("ks").addEventListener("keydown", (e) => { if (e.key === "Enter") loadTables(); });
}

async function main() {
  readUrl();
  setupControls();
  setupMap();
  if ((await loadExperiments()) === null) { document.body.dataset.ready = "1"; return; }
  await selectExperiment(state.experiment);
}

main().catch((e) => { say(e.message); document.body.dataset.ready = "1"; });

// transferlab's page: try a served model on your images, and look at a run (the Run view).
// Served by `transferlab serve`, or inlined in a run's report.html (window.TRANSFERLAB_RUN set).
// No external URL anywhere: it works offline, and sends images only to the server that served it.
"use strict";

const REPORT = window.TRANSFERLAB_RUN || null;
const state = { models: [], model: null, token: sessionStorage.getItem("transferlab-token") || "", run: null };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "style") node.setAttribute("style", v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function say(text) { $("message").textContent = text || ""; }
const pct = (p) => (100 * p).toFixed(1) + "%";

// ---------- talking to the server ----------
async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    $("token-box").hidden = false;
    throw new Error("this server needs a token");
  }
  const isJson = (response.headers.get("content-type") || "").includes("application/json");
  const body = isJson ? await response.json() : null;
  if (!response.ok) throw new Error((body && body.error) || response.statusText);
  return body;
}

async function loadModels() {
  try {
    state.models = await api("api/models");
  } catch (e) { say(e.message); return; }
  say("");
  $("token-box").hidden = true;
  const select = $("model-select");
  select.replaceChildren(...state.models.map((m) => el("option", { value: m.name }, `${m.name} (${m.kind})`)));
  $("model-picker").hidden = state.models.length < 2;
  if (state.models.length) chooseModel(state.models[0].name);
}

function chooseModel(name) {
  state.model = state.models.find((m) => m.name === name);
  const m = state.model;
  const acc = m.metrics && (m.metrics.val_acc ?? m.metrics.val_map ?? m.metrics.val_ap50);
  const metric = m.kind !== "classifier" ? "AP@0.5" : (m.multilabel ? "mAP" : "accuracy");
  $("model-info").textContent = (m.multilabel ? `multi-label classifier, ${m.num_classes} labels` :
    `${m.kind}, ${m.num_classes} class${m.num_classes === 1 ? "" : "es"}`) +
    (m.run ? `, run folder` : "") + (acc !== undefined ? `, validation ${metric} ${acc.toFixed(3)}` : "") +
    (m.tta ? ", test-time augmentation on (each image and its mirror, averaged)" : "");
  $("tab-run").hidden = !m.run;
  $("results").replaceChildren();
  state.run = null;
  state.runName = null;
  showPanel("try-panel");
}

async function predict(files) {
  if (!state.model || !files.length) return;
  const form = new FormData();
  for (const f of files) form.append("images", f, f.name);
  say("");
  const cards = files.map((f) => {
    const card = el("div", { class: "card" }, el("div", { class: "name" }, f.name), el("div", { class: "hint" }, "…"));
    $("results").prepend(card);
    return card;
  });
  let records;
  try {
    records = await api(`api/models/${encodeURIComponent(state.model.name)}/predict?top=5`, { method: "POST", body: form });
  } catch (e) {
    cards.forEach((c) => c.replaceChildren(el("div", { class: "name" }, c.firstChild.textContent), el("div", { class: "error" }, e.message)));
    say(e.message);
    return;
  }
  records.forEach((r, i) => renderRecord(cards[i], files[i], r));
}

function renderRecord(card, file, record) {
  const url = URL.createObjectURL(file);
  card.replaceChildren(el("div", { class: "name" }, record.path));
  if (record.status !== "ok") { card.append(el("div", { class: "error" }, record.status)); return; }
  if (record.top) {
    const img = el("img", { src: url, alt: record.path });
    card.prepend(img);
    if (!REPORT) img.after(explainToggle(img, file));
    if (record.labels) card.append(renderLabels(record));
    const given = new Set((record.labels || []).map((g) => g.index));
    const thresholds = record.labels && state.model && state.model.thresholds;
    card.append(...record.top.map((t) => el("div", { class: "bar-row prediction" + (given.has(t.index) ? " given" : "") },
      el("span", { class: "label", title: t.label }, t.label),
      el("div", { class: "bar" }, el("div", { style: `width:${(100 * t.prob).toFixed(1)}%` }),
        thresholds ? el("span", { class: "tick", title: `threshold ${thresholds[t.index].toFixed(2)}`,
          style: `left:${(100 * thresholds[t.index]).toFixed(1)}%` }) : null),
      el("span", { class: "prob" }, pct(t.prob)))));
  } else {
    const canvas = el("canvas", { class: "detections" });
    card.prepend(canvas);
    const img = new Image();
    img.onload = () => drawDetections(canvas, img, record.detections);
    img.src = url;
    card.append(el("div", { class: "hint faces" }, `${record.detections.length} face(s)`));
  }
}

// the heatmap toggle of a classifier's result: the class-activation map (Grad-CAM) of its top class over
// the image the model saw, asked of the server (explain=true) the first time it is shown
function explainToggle(img, file) {
  const original = img.src;
  let heatmap = null, label = "";
  const button = el("button", { class: "explain-toggle", type: "button",
    title: "where the model looked: the Grad-CAM heatmap of its top class, over the centre crop it saw" }, "show heatmap");
  button.addEventListener("click", async () => {
    if (img.dataset.showing === "heatmap") {
      img.src = original; img.dataset.showing = "image"; button.textContent = "show heatmap"; return;
    }
    if (!heatmap) {
      button.disabled = true; button.textContent = "computing heatmap…";
      try {
        const form = new FormData();
        form.append("images", file, file.name);
        const [r] = await api(`api/models/${encodeURIComponent(state.model.name)}/predict?top=1&explain=true`,
          { method: "POST", body: form });
        if (!r.heatmap) throw new Error(r.status !== "ok" ? r.status : "no heatmap for this image");
        heatmap = r.heatmap; label = r.heatmap_class;
      } catch (e) {
        button.disabled = false; button.textContent = "show heatmap"; say(e.message); return;
      }
      button.disabled = false;
    }
    img.src = heatmap; img.dataset.showing = "heatmap";
    button.textContent = `show image (heatmap of ${label})`;
  });
  return button;
}

// a most confidently wrong image and, when the run made them, its heatmaps side by side: `roles` are
// [key in w.heatmaps, caption] pairs (true and predicted class, or a multi-label error's label)
async function errorThumb(w, caption, roles) {
  const box = await thumb(w.id, caption);
  const shown = roles.filter(([role]) => w.heatmaps && w.heatmaps[role] !== undefined);
  if (!shown.length) return box;
  const maps = await Promise.all(shown.map(([role, text]) => thumb(w.heatmaps[role], text)));
  maps.forEach((m) => m.classList.add("heatmap"));
  return el("div", { class: "error-card" }, box, maps);
}

// the gallery of most confidently wrong images, in their order (each card is filled in when its images arrive)
function errorGallery(box, errors, card) {
  for (const w of errors) {
    const slot = el("div", { class: "slot" });
    box.append(slot);
    card(w).then((node) => slot.replaceWith(node));
  }
}

// a multi-label record's labels: each one at or above its threshold, as a chip with its score
function renderLabels(record) {
  const chips = record.labels.map((g) => el("span", { class: "chip", title: `score ${g.score.toFixed(3)}` },
    `${g.label} ${g.score.toFixed(2)}`));
  return el("div", { class: "labels" }, chips.length ? chips : el("span", { class: "hint" }, "no label at or above its threshold"));
}

function drawDetections(canvas, img, detections) {
  const scale = Math.min(1, 480 / img.naturalWidth);
  canvas.width = Math.round(img.naturalWidth * scale);
  canvas.height = Math.round(img.naturalHeight * scale);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  ctx.lineWidth = 2;
  ctx.font = "12px sans-serif";
  for (const d of detections) {
    const [x0, y0, x1, y1] = d.box.map((v) => v * scale);
    ctx.strokeStyle = "#22c55e";
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.fillStyle = "#22c55e";
    ctx.fillText(d.score.toFixed(2), x0 + 2, Math.max(12, y0 - 3));
    ctx.fillStyle = "#ef4444";
    for (const [x, y] of d.keypoints) { ctx.beginPath(); ctx.arc(x * scale, y * scale, 2.5, 0, 2 * Math.PI); ctx.fill(); }
  }
}

// ---------- the Run view ----------
// the run the Run view shows: one opened from the Runs tab (runs.js), else the served model's
const shownRunName = () => state.runName || state.model.name;

function imageUrl(id) {
  if (REPORT) return REPORT.image_urls[id];
  return `api/runs/${encodeURIComponent(shownRunName())}/images/${id}`;
}

async function thumb(id, caption) {
  const img = el("img", { alt: caption });
  const box = el("div", { class: "thumb" }, img, el("div", {}, caption));
  const url = imageUrl(id);
  if (!url) { img.alt = "(unreadable)"; return box; }
  if (REPORT || !state.token) { img.src = url; return box; }
  // with a token the image request needs the header: fetch it, show it as a blob
  try {
    const r = await fetch(url, { headers: { Authorization: "Bearer " + state.token } });
    if (r.ok) img.src = URL.createObjectURL(await r.blob());
  } catch (e) { img.alt = "(unavailable)"; }
  return box;
}

async function showRun() {
  if (!state.run) {
    try { state.run = REPORT || await api(`api/runs/${encodeURIComponent(shownRunName())}`); } catch (e) { say(e.message); return; }
  }
  renderRun(state.run);
}

function renderRun(run) {
  const meta = run.meta;
  const m = meta.metrics || {};
  const facts = [["run", run.name], ["kind", run.kind], ["architecture", meta.architecture]];
  if (run.kind === "classifier" && meta.thresholds) {
    facts.push(["labels", `${meta.num_classes} (multi-label: sigmoid outputs, several labels per image): ${meta.classes.join(", ")}`],
      ["best val mAP", m.val_map !== undefined ? `${m.val_map.toFixed(4)} (epoch ${m.best_epoch} of ${m.epochs_run})` : "-"],
      ["thresholds", meta.classes.map((c, i) => `${c} ${meta.thresholds[i].toFixed(2)}`).join(", ")]);
  } else if (run.kind === "classifier") {
    facts.push(["classes", `${meta.num_classes}: ${meta.classes.join(", ")}`],
      ["best val accuracy", m.val_acc !== undefined ? `${m.val_acc.toFixed(4)} (epoch ${m.best_epoch} of ${m.epochs_run})` : "-"]);
  } else {
    if (m.val_ap50 !== undefined) facts.push(["val AP@0.5", `${m.val_ap50.toFixed(4)} (pretrained ${m.pretrained_val_ap50.toFixed(4)})`]);
    facts.push(["epochs", m.epochs_completed]);
  }
  $("run-summary").replaceChildren(el("dl", { class: "kv" }, facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])));
  renderCurves(run.history || []);
  renderEvaluation(run.evaluation);
  renderStrategy(run);
  $("run-config").textContent = JSON.stringify(meta.config || {}, null, 2);
}

function renderCurves(history) {
  const box = $("run-curves");
  box.replaceChildren();
  if (!history.length) { box.append(el("p", { class: "hint" }, "no metrics.csv in this run")); return; }
  const cols = Object.keys(history[0]).filter((k) => k !== "epoch" && typeof history[0][k] === "number" && !/time|lr|seconds|_s$|per_s/.test(k));
  const groups = [["loss", cols.filter((c) => c.includes("loss"))], ["accuracy / AP", cols.filter((c) => !c.includes("loss"))]];
  for (const [title, names] of groups) if (names.length) box.append(lineChart(title, history, names));
}

// an empty SVG chart and the function that adds an element to it
function svgChart(W, H) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("class", "chart");
  const add = (tag, attrs, text) => {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n); return n;
  };
  return [svg, add];
}

const COLORS = ["#2563eb", "#f97316", "#0d9488", "#a855f7", "#dc2626", "#65a30d", "#db2777", "#0891b2", "#ca8a04", "#4b5563"];

function lineChart(title, rows, names) {
  const W = 440, H = 250, L = 48, R = 18, T = 24 + 13 * Math.ceil(names.length / 2), B = 34;
  const [svg, add] = svgChart(W, H);
  const xs = rows.map((r) => r.epoch);
  const vals = names.flatMap((n) => rows.map((r) => r[n]).filter((v) => typeof v === "number"));
  let lo = Math.min(...vals), hi = Math.max(...vals);
  if (hi === lo) { hi += 1; lo -= lo > 0 ? Math.min(1, lo) : 0; }
  const x0 = Math.min(...xs), x1 = Math.max(...xs) === x0 ? x0 + 1 : Math.max(...xs);
  const px = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const py = (y) => T + (1 - (y - lo) / (hi - lo)) * (H - T - B);
  add("text", { x: L, y: 14 }, title);
  for (let i = 0; i <= 4; i++) {
    const v = lo + (hi - lo) * i / 4;
    add("line", { x1: L, x2: W - R, y1: py(v), y2: py(v), stroke: "#e5e7eb" });
    add("text", { x: 4, y: py(v) + 4 }, v.toPrecision(3));
  }
  const step = Math.max(1, Math.ceil(xs.length / 12));
  xs.forEach((x, i) => { if (i % step === 0 || i === xs.length - 1) add("text", { x: px(x) - 3, y: H - 18 }, x); });
  add("text", { x: W / 2 - 14, y: H - 4 }, "epoch");
  for (let i = 1; i < rows.length; i++) {
    if (rows[i].phase !== undefined && rows[i].phase !== rows[i - 1].phase) {
      const x = (px(rows[i].epoch) + px(rows[i - 1].epoch)) / 2;
      add("line", { x1: x, x2: x, y1: T, y2: H - B, stroke: "#9ca3af", "stroke-dasharray": "3 3" });
    }
  }
  const colors = COLORS.slice(0, 4);
  names.forEach((n, i) => {
    const pts = rows.filter((r) => typeof r[n] === "number").map((r) => `${px(r.epoch)},${py(r[n])}`);
    add("polyline", { points: pts.join(" "), fill: "none", stroke: colors[i % 4], "stroke-width": 2 });
    pts.forEach((p) => { const [cx, cy] = p.split(","); add("circle", { cx, cy, r: 2.5, fill: colors[i % 4] }); });
    add("text", { x: L + 140 * (i % 2), y: 30 + 13 * Math.floor(i / 2), style: `fill:${colors[i % 4]}` }, "— " + n);
  });
  return svg;
}

function renderEvaluation(ev) {
  const section = $("run-eval-section");
  if (!ev) { section.hidden = true; return; }
  section.hidden = false;
  if (ev.kind === "detector") {
    $("run-eval-title").textContent = `Evaluation (${ev.split})`;
    $("run-eval-summary").replaceChildren(el("dl", { class: "kv" },
      Object.entries(ev.ap50 || {}).flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, `AP@0.5 ${Number(v).toFixed(4)}`)])),
      el("p", { class: "hint" }, ev.summary || ""));
    for (const id of ["run-confusion", "run-per-class", "run-errors"]) $(id).replaceChildren();
    return;
  }
  $("run-eval-title").textContent = `Evaluation: ${ev.split} split`;
  if (ev.kind === "multilabel") { renderMultilabel(ev); return; }
  $("run-confusion-title").replaceChildren("Confusion matrix ",
    el("span", { class: "hint" }, "(rows: true, columns: predicted; click a cell)"));
  $("run-per-class-title").textContent = "Per class";
  $("run-errors-title").textContent = "Most confidently wrong";
  $("run-eval-summary").textContent = `accuracy ${ev.accuracy.toFixed(4)}, macro F1 ${ev.macro_f1.toFixed(4)} on ${ev.images} images` +
    (ev.unreadable ? `, ${ev.unreadable} unreadable` : "");
  const peak = Math.max(1, ...ev.confusion.flat());
  const head = el("tr", {}, el("th", {}, ""), ev.classes.map((c) => el("th", { title: c }, c)));
  const rows = ev.confusion.map((row, i) => el("tr", {}, el("th", { title: ev.classes[i] }, ev.classes[i]),
    row.map((v, j) => {
      const a = v / peak;
      return el("td", { class: "cell", "data-true": i, "data-pred": j, title: `${ev.classes[i]} predicted as ${ev.classes[j]}: ${v}`,
        style: `background: rgba(37, 99, 235, ${(0.08 + 0.85 * a).toFixed(2)}); color: ${a > 0.5 ? "#fff" : "#1d232b"}`,
        onclick: (e) => showCell(ev, i, j, e.currentTarget) }, v);
    })));
  $("run-confusion").replaceChildren(el("table", { class: "confusion" }, head, rows));
  $("run-per-class").replaceChildren(el("table", { class: "per-class" },
    el("tr", {}, el("th", {}, "class"), el("th", {}, "precision"), el("th", {}, "recall"), el("th", {}, "n")),
    ev.per_class.map((r) => el("tr", {}, el("td", {}, r.class),
      el("td", {}, bar(r.precision, "")), el("td", {}, bar(r.recall, "recall")), el("td", {}, r.support)))));
  const errors = $("run-errors");
  errors.replaceChildren();
  if (!ev.errors.length) errors.append(el("p", { class: "hint" }, "no errors"));
  errorGallery(errors, ev.errors, (w) => errorThumb(w, `${w.true} → ${w.predicted} (${pct(w.confidence)})`,
    [["true", `heatmap: ${w.true} (true)`], ["predicted", `heatmap: ${w.predicted} (predicted)`]]));
  $("cell-gallery-section").hidden = true;
}

// a multi-label evaluation: its metrics, each label's precision/recall curve and row, the most confidently wrong labels
function renderMultilabel(ev) {
  $("run-eval-summary").textContent = `mAP ${ev.map.toFixed(4)}, micro F1 ${ev.micro_f1.toFixed(4)}, ` +
    `macro F1 ${ev.macro_f1.toFixed(4)}, exact match ${ev.exact_match.toFixed(4)} on ${ev.images} images` +
    (ev.unreadable ? `, ${ev.unreadable} unreadable` : "") + " (F1 and exact match at the run's thresholds)";
  $("run-confusion-title").replaceChildren("Precision / recall per label ",
    el("span", { class: "hint" }, "(AP in the legend)"));
  $("run-confusion").replaceChildren(ev.pr_curves && ev.pr_curves.length ? prChart(ev.pr_curves)
    : el("p", { class: "hint" }, "no curves: this evaluation kept no scores"));
  $("run-per-class-title").textContent = "Per label";
  const num = (v) => el("td", { class: "num" }, v === null || v === undefined ? "-" : v.toFixed(3));
  $("run-per-class").replaceChildren(el("table", { class: "per-class per-label" },
    el("tr", {}, ["label", "AP", "precision", "recall", "F1", "threshold", "n"].map((h) => el("th", {}, h))),
    ev.per_label.map((r) => el("tr", {}, el("td", {}, r.label),
      el("td", { class: "ap" }, r.ap === null ? "-" : bar(r.ap, "")), num(r.precision), num(r.recall), num(r.f1),
      el("td", { class: "num" }, r.threshold.toFixed(2)), el("td", { class: "num" }, r.support)))));
  $("run-errors-title").textContent = "Most confidently wrong labels";
  const errors = $("run-errors");
  errors.replaceChildren();
  if (!ev.errors.length) errors.append(el("p", { class: "hint" }, "no errors"));
  errorGallery(errors, ev.errors, (w) => errorThumb(w, `${w.label} ${w.error} (score ${w.score.toFixed(2)})`,
    [["label", `heatmap: ${w.label}`]]));
  $("cell-gallery-section").hidden = true;
}

function prChart(curves) {
  const W = 440, H = 300, L = 40, R = 130, T = 22, B = 34;
  const [svg, add] = svgChart(W, H);
  const px = (x) => L + x * (W - L - R), py = (y) => T + (1 - y) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    add("line", { x1: L, x2: W - R, y1: py(i / 4), y2: py(i / 4), stroke: "#e5e7eb" });
    add("text", { x: 8, y: py(i / 4) + 4 }, (i / 4).toFixed(2));
    add("text", { x: px(i / 4) - 8, y: H - 18 }, (i / 4).toFixed(2));
  }
  add("text", { x: (W - R) / 2, y: H - 4 }, "recall");
  add("text", { x: 4, y: 11 }, "precision");
  curves.forEach((c, i) => {
    const color = COLORS[i % COLORS.length];
    add("polyline", { points: c.recall.map((r, k) => `${px(r)},${py(c.precision[k])}`).join(" "), fill: "none",
      stroke: color, "stroke-width": 2, class: "pr-curve" });
    add("text", { x: W - R + 8, y: T + 10 + 14 * i, style: `fill:${color}` }, `— ${c.label} ${c.ap.toFixed(3)}`);
  });
  return svg;
}

function bar(value, cls) {
  return el("div", { class: "bar-row", style: "grid-template-columns: 1fr 3.5em" },
    el("div", { class: `bar ${cls}` }, el("div", { style: `width:${(100 * value).toFixed(1)}%` })),
    el("span", { class: "prob" }, value.toFixed(3)));
}

async function showCell(ev, i, j, td) {
  document.querySelectorAll("td.cell.selected").forEach((c) => c.classList.remove("selected"));
  td.classList.add("selected");
  const items = ev.cells[i][j];
  $("cell-gallery-section").hidden = false;
  $("cell-title").textContent = `true ${ev.classes[i]}, predicted ${ev.classes[j]}: ${ev.confusion[i][j]} image(s)` +
    (items.length < ev.confusion[i][j] ? ` (showing ${items.length})` : "");
  const gallery = $("cell-gallery");
  gallery.replaceChildren();
  for (const it of items) gallery.append(await thumb(it.id, pct(it.confidence)));
  if (!items.length) gallery.append(el("p", { class: "hint" }, "no images"));
}

function renderStrategy(run) {
  const meta = run.meta;
  const box = $("run-strategy");
  box.replaceChildren();
  if (run.kind === "classifier") {
    box.append(el("p", {}, `strategy ${meta.strategy}, ${meta.freeze} frozen block(s)` +
      (meta.frozen_blocks && meta.frozen_blocks.length ? ` (${meta.frozen_blocks.join(", ")})` : "") + `, BatchNorm ${meta.bn_policy}`));
    if (meta.phases) box.append(el("ul", {}, meta.phases.map((p) =>
      el("li", {}, `${p.name}: ${p.epochs} epoch(s), freeze ${p.freeze}, lr ${Number(p.lr).toExponential(2)}`))));
  } else {
    box.append(el("p", {}, `fine-tuned ${meta.architecture}` + (meta.config && meta.config.freeze !== undefined ? `, freeze ${meta.config.freeze}` : "")));
  }
  const adv = meta.advice;
  if (adv) {
    const reasons = (adv.decision && adv.decision.reasons) || adv.reasons || [];
    box.append(el("h3", {}, "Why this strategy (the advisor)"),
      reasons.length ? el("ul", { class: "reasons" }, reasons.map((r) => el("li", {}, r))) : el("p", {}, adv.explanation || ""));
    if (adv.plan) box.append(el("h3", {}, "Adaptive plan (--strategy auto)"),
      el("ul", { class: "reasons" }, adv.plan.reasons.map((r) => el("li", {}, r))));
  } else {
    box.append(el("p", { class: "hint" }, "strategy chosen by hand (train --strategy auto records the advisor's reasons)"));
  }
  const decisions = meta.decisions || [];
  if (decisions.length || meta.budget) {
    const items = decisions.map((d) => el("li", {}, `epoch ${d.epoch}, ${d.event}: ${d.text}`));
    if (meta.budget) items.push(el("li", {}, `budget ${Math.round(meta.budget.seconds)}s: ` +
      `${Math.round(meta.budget.used_s)}s used before writing the run`));
    if (meta.metrics && meta.metrics.best_phase) items.push(el("li", {},
      `kept: the model of epoch ${meta.metrics.best_epoch} (${meta.metrics.best_phase} phase)`));
    box.append(el("h3", {}, "Decisions during training"), el("ul", { class: "reasons", id: "run-decisions" }, items));
  }
}

// ---------- wiring ----------
function showPanel(id) {
  for (const p of document.querySelectorAll(".panel")) p.hidden = p.id !== id;
  for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t.dataset.panel === id);
  if (id === "run-panel") showRun();
  if (id === "runs-panel" && window.showRuns) window.showRuns();
}

function init() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    state.token = fragment.get("token");
    sessionStorage.setItem("transferlab-token", state.token);
    history.replaceState(null, "", location.pathname + location.search);
  }
  if (REPORT) {
    document.title = `transferlab run: ${REPORT.name}`;
    $("tabs").hidden = true;
    $("model-info").textContent = `report of ${REPORT.name}`;
    state.run = REPORT;
    showPanel("run-panel");
    return;
  }
  for (const t of document.querySelectorAll(".tab")) t.addEventListener("click", () => showPanel(t.dataset.panel));
  $("model-select").addEventListener("change", (e) => chooseModel(e.target.value));
  $("file-input").addEventListener("change", (e) => { predict([...e.target.files]); e.target.value = ""; });
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); zone.classList.remove("over"); predict([...e.dataTransfer.files]); });
  $("token-save").addEventListener("click", () => {
    state.token = $("token-input").value.trim();
    sessionStorage.setItem("transferlab-token", state.token);
    loadModels();
  });
  loadModels();
}

init();

// The Runs tab of `transferlab serve --runs DIR`: every run under the folder as a table (sortable by any
// column, by the best metric first), the curves of the ticked runs overlaid (each run's metrics.csv), and
// each finished run opening its Run view. Uses app.js's helpers (state, $, el, api, showPanel, lineChart).
"use strict";

const runsTab = { rows: [], sort: "best", descending: true, selected: new Set(), histories: {} };
const RUN_COLUMNS = [["name", "run"], ["kind", "kind"], ["model", "model"], ["strategy", "strategy"], ["data", "data"],
  ["best", "best metric"], ["best_epoch", "epoch"], ["epochs", "epochs"], ["wall_s", "time"], ["created", "created"],
  ["status", "status"]];
const DESCENDING_FIRST = new Set(["best", "best_epoch", "epochs", "wall_s", "created"]);

async function loadRuns() {
  try {
    if (!(await api("api/health")).runs) return false;  // no --runs folder: no Runs tab
    runsTab.rows = await api("api/runs");
  } catch (e) { return false; }
  $("tab-runs").hidden = false;
  return true;
}

async function showRuns() {
  if (!runsTab.rows.length) await loadRuns();
  renderRunsTable();
  renderRunsCurves();
}

function sortedRuns() {
  const key = runsTab.sort, sign = runsTab.descending ? -1 : 1;
  const present = runsTab.rows.filter((r) => r[key] !== null && r[key] !== undefined);
  const missing = runsTab.rows.filter((r) => r[key] === null || r[key] === undefined);
  present.sort((a, b) => sign * (a[key] < b[key] ? -1 : a[key] > b[key] ? 1 : 0));
  return present.concat(missing);
}

function sortRunsBy(key) {
  if (runsTab.sort === key) runsTab.descending = !runsTab.descending;
  else { runsTab.sort = key; runsTab.descending = DESCENDING_FIRST.has(key); }
  renderRunsTable();
}

function runCell(r, key) {
  const v = r[key];
  if (v === null || v === undefined) return "-";
  if (key === "best") return `${r.metric} ${v.toFixed(4)}`;
  if (key === "wall_s") return v < 10 ? `${v.toFixed(1)}s` : v < 120 ? `${Math.round(v)}s` : `${(v / 60).toFixed(1)}m`;
  if (key === "created") return v.slice(0, 16).replace("T", " ");
  return String(v);
}

function renderRunsTable() {
  const arrow = (key) => runsTab.sort === key ? (runsTab.descending ? " ▼" : " ▲") : "";
  const head = el("tr", {}, el("th", {}, ""), RUN_COLUMNS.map(([key, title]) =>
    el("th", { class: "sortable", "data-sort": key, onclick: () => sortRunsBy(key) }, title + arrow(key))), el("th", {}, ""));
  const rows = sortedRuns().map((r) => {
    const box = el("input", { type: "checkbox", "data-run": r.key, title: "overlay its curves" });
    box.checked = runsTab.selected.has(r.key);
    box.disabled = r.status === "not a run";
    box.addEventListener("change", () => {
      if (box.checked) runsTab.selected.add(r.key); else runsTab.selected.delete(r.key);
      renderRunsCurves();
    });
    const open = r.status === "complete"
      ? el("button", { class: "open-run", "data-run": r.key, onclick: () => openListedRun(r.key) }, "open")
      : el("span", { class: "hint", title: r.note || "" }, r.status === "interrupted" ? "no Run view yet" : "");
    return el("tr", { class: r.status === "complete" ? "" : "muted", "data-run": r.key, title: r.note || "" },
      el("td", {}, box), RUN_COLUMNS.map(([key]) => el("td", { class: key }, runCell(r, key))), el("td", {}, open));
  });
  $("runs-table").replaceChildren(head, ...rows);
}

async function runHistory(key) {
  if (!runsTab.histories[key]) runsTab.histories[key] = await api(`api/runs/${encodeURIComponent(key)}/history`);
  return runsTab.histories[key];
}

async function renderRunsCurves() {
  const box = $("runs-curves");
  const chosen = runsTab.rows.filter((r) => runsTab.selected.has(r.key));
  if (!chosen.length) { box.replaceChildren(el("p", { class: "hint" }, "tick runs to overlay their curves")); return; }
  let histories;
  try { histories = await Promise.all(chosen.map((r) => runHistory(r.key))); } catch (e) { say(e.message); return; }
  // one chart per metric the chosen runs keep their best epoch by, and one of validation loss
  const metrics = [...new Set(chosen.map((r) => r.metric).filter(Boolean))].concat(["val_loss"]);
  const charts = [];
  for (const metric of metrics) {
    const byEpoch = new Map();
    chosen.forEach((r, i) => histories[i].forEach((row) => {
      if (typeof row[metric] !== "number") return;
      if (!byEpoch.has(row.epoch)) byEpoch.set(row.epoch, { epoch: row.epoch });
      byEpoch.get(row.epoch)[r.name] = row[metric];
    }));
    const rows = [...byEpoch.values()].sort((a, b) => a.epoch - b.epoch);
    const names = chosen.map((r) => r.name).filter((n) => rows.some((row) => typeof row[n] === "number"));
    if (names.length) charts.push(lineChart(metric, rows, names));
  }
  box.replaceChildren(...charts);
}

function openListedRun(key) {
  state.runName = key;
  state.run = null;
  $("tab-run").hidden = false;
  showPanel("run-panel");
}

async function initRuns() {
  if (!await loadRuns()) return;
  let models = [];
  try { models = await api("api/models"); } catch (e) { return; }
  if (!models.length) {  // `serve --runs DIR` alone: nothing to try, the runs are the page
    $("tab-try").hidden = true;
    showPanel("runs-panel");
  }
}

if (!window.TRANSFERLAB_RUN) initRuns();

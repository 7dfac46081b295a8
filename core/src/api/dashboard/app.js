// onhand's dashboard: the live stream (GET /v1/stream, read with fetch so that the key goes
// in the Authorization header), a table of levels, the open alerts, the sources' health and
// a chart of the stock flow. No framework and no build step; every value from the server is
// written with textContent, never as HTML.
"use strict";

const KEY_STORAGE = "onhand.dashboard.key";
const LEVELS_MAX = 500;
const ALERTS_MAX = 200;
const FLOW_SECONDS = 3600;
/// The flow is drawn in steps of this many seconds, each the mean rate of its step.
const FLOW_STEP_S = 30;
const RECONNECT_MS_MAX = 15000;
/// The window of the level-over-time chart and of the propagation figures.
const HOUR_MS = 3600 * 1000;
const DELAYS_MAX = 20000;

const $ = (selector) => document.querySelector(selector);

const state = {
  key: null,
  lastEventId: null,
  abort: null,
  retryMs: 500,
  levels: new Map(), // "sku@location" -> { level, row }
  alerts: new Map(), // alert id -> li
  sources: new Map(), // source name -> li
  flow: new Map(), // unix second -> { levels, alerts }
  chart: null,
  delays: [], // [arrived at ms, commit-to-page ms], the last hour
  history: null, // { sku, chart, byLocation: Map(location -> dataset) }
};

// ---- the key -------------------------------------------------------------------------

function start() {
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("#api-key").value.trim();
    if (key) {
      sessionStorage.setItem(KEY_STORAGE, key);
      connectWith(key);
    }
  });
  $("#sign-out").addEventListener("click", signOut);
  $("#watch-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const skus = $("#watch-skus").value.split(/[\s,]+/).filter(Boolean);
    loadLevels(skus)
      .then(() => skus.length && loadHistory(skus[0]))
      .catch(showProblem);
  });
  const saved = sessionStorage.getItem(KEY_STORAGE);
  if (saved) connectWith(saved);
}

function connectWith(key) {
  state.key = key;
  $("#key-error").hidden = true;
  $("#sign-in").hidden = true;
  $("#board").hidden = false;
  $("#sign-out").hidden = false;
  setupChart();
  reloadState().catch(showProblem);
  connect();
}

function signOut() {
  sessionStorage.removeItem(KEY_STORAGE);
  if (state.abort) state.abort.abort();
  state.key = null;
  location.reload();
}

function refused(message) {
  if (state.abort) state.abort.abort();
  sessionStorage.removeItem(KEY_STORAGE);
  state.key = null;
  setStatus("refused", "key refused");
  $("#board").hidden = true;
  $("#sign-in").hidden = false;
  $("#sign-out").hidden = true;
  const error = $("#key-error");
  error.textContent = message;
  error.hidden = false;
}

function setStatus(name, text) {
  const status = $("#status");
  status.dataset.state = name;
  status.textContent = text;
}

function showProblem(error) {
  console.warn("onhand dashboard:", error);
}

// ---- the API -------------------------------------------------------------------------

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${state.key}` }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401 || response.status === 403) {
    const body = await response.json().catch(() => ({}));
    refused((body.error && body.error.message) || `refused (${response.status})`);
    throw new Error("refused");
  }
  return response;
}

/// What the stream cannot replay: the sources as they are, the levels already shown
/// read again, the flow of the last minutes.
async function reloadState() {
  const sources = await api("/v1/sources");
  if (sources.ok) {
    const body = await sources.json();
    for (const report of body.sources) {
      const status = !report.healthy ? "failing" : report.gap_alert ? "gap" : "healthy";
      showSource({
        source: report.source,
        status,
        last_heard_at: report.last_heard_at,
        behind_movements: report.behind_movements,
        detail: report.detail,
      });
    }
  }
  // The alerts not resolved yet, which the stream only tells as they change.
  for (const wanted of ["open", "acknowledged"]) {
    const listed = await api(`/v1/alerts?state=${wanted}&limit=${ALERTS_MAX}`);
    if (listed.ok) for (const alert of (await listed.json()).alerts) showAlert(alert);
  }
  const stats = await api(`/v1/stream/stats?window_s=${FLOW_SECONDS}`);
  if (stats.ok) {
    const body = await stats.json();
    for (const second of body.seconds) {
      const held = state.flow.get(second.at);
      if (!held || held.levels < second.levels) state.flow.set(second.at, { levels: second.levels, alerts: second.alerts });
    }
  }
  const skus = [...new Set([...state.levels.values()].map((entry) => entry.level.sku))];
  if (skus.length) await loadLevels(skus);
}

async function loadLevels(skus) {
  for (let i = 0; i < skus.length; i += 100) {
    const response = await api("/v1/stock/query", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ skus: skus.slice(i, i + 100) }),
    });
    if (!response.ok) continue;
    const body = await response.json();
    for (const result of body.results) {
      if (result.status !== "ok") continue;
      for (const level of result.stock.locations) showLevel(Object.assign({ sku: result.stock.sku }, level), false);
    }
  }
}

// ---- the stream ----------------------------------------------------------------------

async function connect() {
  if (!state.key) return;
  const abort = new AbortController();
  state.abort = abort;
  setStatus(state.lastEventId ? "reconnecting" : "connecting", state.lastEventId ? "reconnecting" : "connecting");
  const headers = { Accept: "text/event-stream" };
  if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
  try {
    const response = await api("/v1/stream", { headers, signal: abort.signal });
    if (!response.ok) throw new Error(`the stream answered ${response.status}`);
    setStatus("live", "live");
    state.retryMs = 500;
    await readEvents(response.body, abort);
  } catch (error) {
    if (abort.signal.aborted || !state.key) return;
    showProblem(error);
  }
  if (!state.key || abort.signal.aborted) return;
  setStatus("reconnecting", "reconnecting");
  const wait = state.retryMs;
  state.retryMs = Math.min(state.retryMs * 2, RECONNECT_MS_MAX);
  setTimeout(connect, wait);
}

/// Reads Server-Sent Events from `body` until it ends: blocks of `field: value` lines
/// separated by a blank line; a line starting with ':' is a comment (keep-alive).
async function readEvents(body, abort) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = { id: null, type: "message", data: "" };
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "id") event.id = text;
        else if (field === "event") event.type = text;
        else if (field === "data") event.data += text;
      }
      if (!event.data && event.id === null) continue;
      if (handle(event) === "stop") {
        abort.abort();
        return;
      }
    }
  }
}

function handle(event) {
  let data = null;
  try {
    data = event.data ? JSON.parse(event.data) : null;
  } catch (error) {
    showProblem(error);
    return;
  }
  if (event.id !== null) state.lastEventId = event.id;
  switch (event.type) {
    case "level":
      countFlow("levels");
      notePropagation(data);
      showLevel(data, true);
      extendHistory(data);
      break;
    case "alert":
      countFlow("alerts");
      showAlert(data);
      break;
    case "source":
      showSource(data);
      break;
    case "reset":
      // The server cannot replay what was missed: read the state again, then go on live.
      reloadState().catch(showProblem);
      break;
    case "slow_consumer":
      // Too far behind: read the state again and start afresh.
      state.lastEventId = null;
      reloadState().catch(showProblem);
      setTimeout(connect, 250);
      return "stop";
    default:
      break;
  }
}

// ---- what is shown -------------------------------------------------------------------

function cell(row, level, field, text) {
  let td = row.querySelector(`td[data-field="${field}"]`);
  if (!td) {
    td = document.createElement("td");
    td.dataset.field = field;
    td.dataset.sku = level.sku;
    td.dataset.location = level.location;
    if (["on_hand", "reserved", "available"].includes(field)) td.className = "n";
    row.appendChild(td);
  }
  td.textContent = text;
  return td;
}

function showLevel(level, live) {
  if (!level || !level.sku || !level.location) return;
  const key = `${level.sku}@${level.location}`;
  let entry = state.levels.get(key);
  if (entry && entry.level.version > level.version) return; // an older version
  if (!entry) {
    const row = document.createElement("tr");
    entry = { level, row };
    state.levels.set(key, entry);
    $("#levels tbody").prepend(row);
    if (state.levels.size > LEVELS_MAX) {
      const [oldest] = state.levels.keys();
      state.levels.get(oldest).row.remove();
      state.levels.delete(oldest);
    }
  }
  entry.level = level;
  const row = entry.row;
  row.dataset.key = key;
  cell(row, level, "sku", level.sku);
  cell(row, level, "location", level.location);
  const available = level.available ?? Math.max(0, level.on_hand - (level.reserved || 0) - (level.safety_stock || 0));
  const onHand = cell(row, level, "on_hand", String(level.on_hand));
  onHand.classList.toggle("low", level.reorder_point != null && level.on_hand <= level.reorder_point);
  cell(row, level, "reserved", String(level.reserved || 0));
  cell(row, level, "available", String(available));
  cell(row, level, "updated", level.updated_at ? new Date(level.updated_at).toLocaleTimeString() : "");
  if (live) {
    row.classList.remove("changed");
    void row.offsetWidth; // restarts the animation
    row.classList.add("changed");
  }
  $("#levels-empty").hidden = state.levels.size > 0;
  $("#levels-count").textContent = `${state.levels.size} shown`;
}

function showAlert(alert) {
  if (!alert || !alert.id) return;
  let li = state.alerts.get(alert.id);
  if (alert.state === "resolved") {
    if (li) li.remove();
    state.alerts.delete(alert.id);
  } else {
    if (!li) {
      li = document.createElement("li");
      li.dataset.alertId = alert.id;
      for (const part of ["badge", "kind", "subject", "message"]) {
        const span = document.createElement("span");
        span.className = part;
        li.appendChild(span);
      }
      const ack = document.createElement("button");
      ack.type = "button";
      ack.className = "ack";
      ack.textContent = "Acknowledge";
      ack.addEventListener("click", () => acknowledge(alert.id, ack));
      li.appendChild(ack);
      $("#alerts").prepend(li);
      state.alerts.set(alert.id, li);
      if (state.alerts.size > ALERTS_MAX) {
        const [oldest] = state.alerts.keys();
        state.alerts.get(oldest).remove();
        state.alerts.delete(oldest);
      }
    }
    li.dataset.state = alert.state;
    li.dataset.kind = alert.kind;
    li.querySelector(".badge").textContent = alert.state;
    li.querySelector(".kind").textContent = alert.kind;
    li.querySelector(".subject").textContent = alert.subject;
    li.querySelector(".message").textContent = alert.message || "";
    li.querySelector(".ack").hidden = alert.state !== "open";
  }
  $("#alerts-empty").hidden = state.alerts.size > 0;
  $("#alerts-count").textContent = state.alerts.size ? `${state.alerts.size}` : "";
}

/// Marks an alert seen (POST /v1/alerts/{id}/ack); the answer is the alert as it is now.
async function acknowledge(id, button) {
  button.disabled = true;
  try {
    const response = await api(`/v1/alerts/${encodeURIComponent(id)}/ack`, { method: "POST" });
    showAlert(await response.json());
  } catch (e) {
    button.disabled = false;
  }
}

function showSource(source) {
  if (!source || !source.source) return;
  let li = state.sources.get(source.source);
  if (!li) {
    li = document.createElement("li");
    li.dataset.source = source.source;
    for (const part of ["badge", "name", "heard"]) {
      const span = document.createElement(part === "heard" ? "time" : "span");
      span.className = part;
      li.appendChild(span);
    }
    $("#sources").appendChild(li);
    state.sources.set(source.source, li);
  }
  li.dataset.status = source.status;
  li.querySelector(".badge").textContent = source.status;
  const behind = source.behind_movements > 0 ? ` (${source.behind_movements} movements behind)` : "";
  li.querySelector(".name").textContent =
    (source.detail ? `${source.source}: ${source.detail}` : source.source) + behind;
  li.querySelector(".heard").textContent = source.last_heard_at
    ? `heard ${new Date(source.last_heard_at).toLocaleTimeString()}`
    : "";
  $("#sources-empty").hidden = state.sources.size > 0;
}

// ---- the chart -----------------------------------------------------------------------

function countFlow(what) {
  const now = Math.floor(Date.now() / 1000);
  const second = state.flow.get(now) || { levels: 0, alerts: 0 };
  second[what] += 1;
  state.flow.set(now, second);
}

function setupChart() {
  if (state.chart || typeof Chart === "undefined") return;
  state.chart = new Chart($("#flow-chart"), {
    type: "line",
    data: {
      labels: [],
      datasets: [
        { label: "level changes / s", data: [], borderColor: "#2563eb", backgroundColor: "#2563eb22", fill: true, tension: 0.25, pointRadius: 0 },
        { label: "alerts / s", data: [], borderColor: "#b91c1c", backgroundColor: "#b91c1c22", fill: true, tension: 0.25, pointRadius: 0 },
      ],
    },
    options: {
      animation: false,
      maintainAspectRatio: false,
      interaction: { mode: "index", intersect: false },
      scales: { y: { beginAtZero: true }, x: { ticks: { maxTicksLimit: 8 } } },
    },
  });
  setInterval(drawFlow, 1000);
  drawFlow();
}

function drawFlow() {
  const now = Math.floor(Date.now() / 1000);
  const labels = [];
  const levels = [];
  const alerts = [];
  const end = now - (now % FLOW_STEP_S) + FLOW_STEP_S; // the step now is in ends here
  for (let step = end - FLOW_SECONDS; step < end; step += FLOW_STEP_S) {
    let [stepLevels, stepAlerts] = [0, 0];
    for (let at = step; at < step + FLOW_STEP_S; at++) {
      const second = state.flow.get(at);
      if (second) [stepLevels, stepAlerts] = [stepLevels + second.levels, stepAlerts + second.alerts];
    }
    // The current step is divided by the seconds it has had so far.
    const seconds = Math.max(1, Math.min(FLOW_STEP_S, now - step + 1));
    labels.push(new Date(step * 1000).toLocaleTimeString());
    levels.push(+(stepLevels / seconds).toFixed(2));
    alerts.push(+(stepAlerts / seconds).toFixed(2));
  }
  for (const at of state.flow.keys()) if (at <= now - FLOW_SECONDS) state.flow.delete(at);
  const chart = state.chart;
  chart.data.labels = labels;
  chart.data.datasets[0].data = levels;
  chart.data.datasets[1].data = alerts;
  chart.update("none");
}

// ---- propagation ---------------------------------------------------------------------

/// How long a level took from its commit (`updated_at`) to this page, by this browser's
/// clock; the median and the worst of the last hour are shown under the flow.
function notePropagation(level) {
  const committed = Date.parse(level && level.updated_at);
  if (Number.isNaN(committed)) return;
  const now = Date.now();
  state.delays.push([now, Math.max(0, now - committed)]);
  while (state.delays.length && (state.delays[0][0] < now - HOUR_MS || state.delays.length > DELAYS_MAX)) {
    state.delays.shift();
  }
  const sorted = state.delays.map(([, ms]) => ms).sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  $("#propagation").textContent =
    `Propagation, commit to this page, last hour: median ${at(0.5)} ms, p99 ${at(0.99)} ms, ` +
    `worst ${sorted[sorted.length - 1]} ms over ${sorted.length} level changes.`;
}

// ---- a SKU's level over time ---------------------------------------------------------

/// The first loaded SKU's on_hand per location over the last hour, from the database
/// (GET /v1/stock/{sku}/{location}/history), then live from the stream.
async function loadHistory(sku) {
  if (typeof Chart === "undefined") return;
  const locations = [...state.levels.values()].filter((e) => e.level.sku === sku).map((e) => e.level.location);
  if (!locations.length) return;
  if (state.history) state.history.chart.destroy();
  const chart = new Chart($("#history-chart"), {
    type: "line",
    data: { datasets: [] },
    options: {
      animation: false,
      maintainAspectRatio: false,
      parsing: false,
      scales: {
        x: {
          type: "linear",
          min: Date.now() - HOUR_MS,
          max: Date.now() + 60 * 1000,
          ticks: { maxTicksLimit: 8, callback: (ms) => new Date(ms).toLocaleTimeString() },
        },
        y: { beginAtZero: true, ticks: { precision: 0 } },
      },
    },
  });
  const history = { sku, chart, byLocation: new Map() };
  state.history = history;
  $("#history-card").hidden = false;
  $("#history-sku").textContent = `${sku}, last hour, by location`;
  const since = new Date(Date.now() - HOUR_MS).toISOString();
  for (const location of locations.slice(0, 12)) {
    const path = `/v1/stock/${encodeURIComponent(sku)}/${encodeURIComponent(location)}/history`;
    const response = await api(`${path}?since=${encodeURIComponent(since)}&step=1m`);
    if (!response.ok) continue;
    const body = await response.json();
    const points = [{ x: Date.parse(body.since), y: body.start_on_hand }];
    for (const point of body.points) points.push({ x: Date.parse(point.at), y: point.on_hand });
    historyDataset(location).data.push(...points);
  }
  // What changed while the history was read is in the table already: the chart ends there.
  for (const entry of state.levels.values()) {
    if (entry.level.sku === sku && history.byLocation.has(entry.level.location)) {
      historyDataset(entry.level.location).data.push({ x: Date.now(), y: entry.level.on_hand });
    }
  }
  chart.update("none");
}

const HISTORY_COLOURS = ["#2563eb", "#b91c1c", "#15803d", "#a16207", "#7c3aed", "#0e7490"];

function historyDataset(location) {
  const history = state.history;
  let dataset = history.byLocation.get(location);
  if (!dataset) {
    const colour = HISTORY_COLOURS[history.byLocation.size % HISTORY_COLOURS.length];
    dataset = { label: location, data: [], borderColor: colour, backgroundColor: colour, stepped: true, pointRadius: 0 };
    history.byLocation.set(location, dataset);
    history.chart.data.datasets.push(dataset);
  }
  return dataset;
}

function extendHistory(level) {
  const history = state.history;
  if (!history || !level || level.sku !== history.sku) return;
  const dataset = historyDataset(level.location);
  dataset.data.push({ x: Date.now(), y: level.on_hand });
  const first = Date.now() - HOUR_MS;
  while (dataset.data.length > 1 && dataset.data[0].x < first) dataset.data.shift();
  Object.assign(history.chart.options.scales.x, { min: first, max: Date.now() + 60 * 1000 });
  history.chart.update("none");
}

start();

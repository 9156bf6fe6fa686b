// decorator dashboard page: polls the JSON API every 2 s and redraws in place (no reloads, no build step).
// Charts are uPlot (vendored); everything else is plain DOM. The scope (fleet or one pod) lives in the
// URL hash (#pod=NAME) so a pod view can be linked and the back button works.
"use strict";

const REFRESH_MS = 2000;
const COLORS = ["#3563e9", "#1f9d55", "#e08a00", "#d64545", "#8e44ad", "#0e9aa7", "#c0507a", "#5d6d7e",
                "#2e86c1", "#a04000"];
const NAMED = {"requests/s": "#3563e9", "5xx/s": "#d64545", p50: "#1f9d55", p95: "#e08a00", p99: "#d64545",
               "1xx": "#8e44ad", "2xx": "#1f9d55", "3xx": "#2e86c1", "4xx": "#e0b000", "5xx": "#d64545"};

const state = {pod: null, endpoint: null, window: "15m", busy: false, again: false, charts: {}};
const $ = (id) => document.getElementById(id);

// -- formatting ---------------------------------------------------------------------------------

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                                                      "'": "&#39;"}[c]));
}
function fmtNum(v, digits = 1) {
  if (v == null) return "–";
  if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(1) + "k";
  return Number.isInteger(v) ? String(v) : v.toFixed(digits);
}
function fmtMs(v) {
  if (v == null) return "–";
  if (v >= 1000) return (v / 1000).toFixed(v >= 10000 ? 0 : 2) + " s";
  return (v < 10 ? v.toFixed(1) : Math.round(v)) + " ms";
}
function fmtBytes(v) {
  if (v == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i ? v.toFixed(v < 10 ? 1 : 0) : v) + " " + units[i];
}
function fmtPct(v) { return v == null ? "–" : v.toFixed(v < 10 ? 1 : 0) + "%"; }
function fmtTime(ts) {
  if (ts == null) return "–";
  const d = new Date(ts * 1000);
  return d.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false});
}
function fmtAge(s) {
  if (s < 60) return Math.round(s) + " s";
  if (s < 3600) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}
// Green < 100 ms, yellow-green 100-500, yellow 500-1000, red > 1000 (the seed's colours plus the gap).
function latClass(ms) {
  if (ms == null) return "";
  if (ms < 100) return "lat-good";
  if (ms < 500) return "lat-ok";
  if (ms <= 1000) return "lat-slow";
  return "lat-bad";
}
function level(pct) { return pct >= 90 ? "crit" : pct >= 70 ? "warn" : ""; }
function windowText() { return $("window").selectedOptions[0].textContent; }
function fmtCores(n) { return `${+n.toFixed(2)} core${n === 1 ? "" : "s"}`; }
// What a container's CPU % is of: its limit, else the cores it may use on the node (it has no limit).
function capacityText(c) {
  if (c.cpu_capacity === "limit") return `of its ${+c.cpu_capacity_cores.toFixed(2)}-core limit`;
  if (c.cpu_capacity === "node") return `of ${fmtCores(c.cpu_capacity_cores)} (no limit)`;
  return "";
}

// -- data ---------------------------------------------------------------------------------------

async function getJSON(path, params) {
  const q = new URLSearchParams(params);
  const res = await fetch(`${path}?${q}`, {cache: "no-store"});
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  return res.json();
}

function scope(extra) {
  const p = {window: state.window, ...extra};
  if (state.pod) p.pod = state.pod;
  return p;
}

async function refresh() {
  if (state.busy) {                 // a slow answer must not pile requests up; run once more after it
    state.again = true;
    return;
  }
  state.busy = true;
  state.again = false;
  const ep = state.endpoint ? {endpoint: state.endpoint} : {};
  try {
    const [ov, rps, lat, st, cpu, mem, eps, evs] = await Promise.all([
      getJSON("/api/overview", scope()),
      getJSON("/api/series", scope({metric: "rps", ...ep})),
      getJSON("/api/series", scope({metric: "latency", ...ep})),
      getJSON("/api/series", scope({metric: "status", ...ep})),
      getJSON("/api/series", scope({metric: "cpu"})),
      getJSON("/api/series", scope({metric: "memory"})),
      getJSON("/api/endpoints", scope({limit: 15})),
      getJSON("/api/events", scope({limit: 10})),
    ]);
    renderOverview(ov);
    renderChart("rps", rps, fmtNum);
    renderChart("latency", lat, fmtMs);
    renderChart("status", st, fmtNum);
    renderChart("cpu", cpu, fmtPct);
    renderChart("memory", mem, fmtBytes);
    renderEndpoints(eps);
    renderEvents(evs);
    setConn(true, `updated ${fmtTime(ov.now)}`);
  } catch (err) {
    setConn(false, String(err.message || err));
  } finally {
    state.busy = false;
    if (state.again) refresh();     // the scope or window changed while this one was in flight
  }
}

function setConn(ok, text) {
  const el = $("conn");
  el.className = "conn " + (ok ? "ok" : "down");
  el.textContent = ok ? "live" : "disconnected";
  el.title = text;
  if (ok) $("updated").textContent = text;
}

// -- overview and pods --------------------------------------------------------------------------

function renderOverview(ov) {
  const t = ov.totals;
  // The tile is the rate now; the window's average is labelled as one beside it.
  $("kpi-rps").textContent = fmtNum(t.rps_now, 2);
  $("kpi-rps-note").textContent = `last ${ov.recent} s · avg ${fmtNum(t.rps_avg, 2)} over ${windowText()}`;
  $("kpi-requests").textContent = fmtNum(t.requests);
  document.querySelectorAll(".win-note").forEach((el) => { el.textContent = `over ${windowText()}`; });
  const er = $("kpi-errors");
  er.textContent = t.requests ? (t.error_rate * 100).toFixed(2) + "%" : "–";
  er.classList.toggle("bad", t.error_rate > 0.01);
  for (const q of ["p50", "p95", "p99"]) {
    const el = $("kpi-" + q);
    el.textContent = fmtMs(t[q + "_ms"]);
    el.className = "value " + latClass(t[q + "_ms"]).replace("lat-", "v-");
  }
  const live = ov.counts.pods - ov.counts.stale;
  $("kpi-pods").innerHTML = `${live}<small style="font-size:13px;color:var(--muted)"> up</small>` +
    (ov.counts.stale ? ` · <span style="color:var(--bad)">${ov.counts.stale}</span>` +
     `<small style="font-size:13px;color:var(--muted)"> stale</small>` : "");
  $("pods-note").textContent = `${ov.counts.pods} seen in the window; stale after ${ov.stale_after} s without resources` +
    (state.pod ? " · click the selected pod again for the fleet" : " · click a pod for its own view");
  renderPods(ov.pods);
  cpuNote(ov.pods);
}

function cpuNote(pods) {
  if (!state.pod) {
    $("cpu-note").textContent = "% per pod: the container's of its limit (none: of the node's cores), else the node's";
    return;
  }
  const c = (pods.find((p) => p.pod === state.pod) || {}).container || {};
  $("cpu-note").textContent = "node % of all its cores" +
    (c.cpu_capacity ? ` · container % ${capacityText(c)}` : "");
}

function renderPods(pods) {
  const box = $("pods");
  if (!pods.length) {
    box.innerHTML = '<p class="empty">No pod has reported in this window. Point a sidecar here with ' +
      '<code>DASHBOARD=http://…</code>.</p>';
    return;
  }
  box.innerHTML = pods.map((p) => {
    const cores = (p.cpus || []).map((c) => `<span class="${level(c)}" style="height:${Math.max(c, 2)}%" ` +
      `title="${c.toFixed(1)}%"></span>`).join("");
    const mem = p.memory || {};
    const memPct = mem.total ? (mem.used / mem.total) * 100 : null;
    const c = p.container || {};
    // Without a limit the container's memory is shown against the node's, and says so.
    const cOf = c.memory_limit || mem.total;
    const cPct = cOf && c.memory_usage != null ? (c.memory_usage / cOf) * 100 : null;
    const cOfText = c.memory_limit ? fmtBytes(c.memory_limit) + " limit" :
      mem.total ? fmtBytes(mem.total) + " node (no limit)" : "no limit";
    const traffic = p.traffic || {};
    return `<div class="pod${p.stale ? " stale" : ""}${p.pod === state.pod ? " selected" : ""}" data-pod="${esc(p.pod)}"` +
      ` title="${p.stale ? "no resources for " + fmtAge(p.age_s) : "reporting"}">` +
      `<div class="name"><span>${esc(p.pod)}</span><span class="badge">${p.stale ? "stale · " + fmtAge(p.age_s) : "live"}</span></div>` +
      `<div class="row"><span>node CPU <b>${fmtPct(p.cpu_percent)}</b></span><span>${(p.cpus || []).length || "–"} cores</span></div>` +
      `<div class="cores">${cores}</div>` +
      `<div class="row"><span>node memory</span><span><b>${fmtBytes(mem.used)}</b> / ${fmtBytes(mem.total)}</span></div>` +
      `<div class="bar"><span class="${level(memPct)}" style="width:${memPct ?? 0}%"></span></div>` +
      (c.memory_usage != null ? `<div class="row cmem"><span>container</span><span><b>${fmtBytes(c.memory_usage)}</b>` +
        ` of ${cOfText}</span></div>` +
        `<div class="bar"><span class="${level(cPct)}" style="width:${Math.min(cPct ?? 0, 100)}%"></span></div>` : "") +
      (c.cpu_share != null ? `<div class="row ccpu" title="${fmtPct(c.cpu_percent)} of one core">` +
        `<span>container CPU <b>${fmtPct(c.cpu_share)}</b></span><span>${capacityText(c)}</span></div>` +
        `<div class="bar"><span class="${level(c.cpu_share)}" style="width:${Math.min(c.cpu_share, 100)}%"></span></div>` : "") +
      `<div class="row traffic"><span>traffic <b>${fmtNum(traffic.rps_now, 2)}/s</b> now</span>` +
      `<span>avg ${fmtNum(traffic.rps_avg, 2)}/s</span></div>` +
      `<div class="row"><span>p95 over ${windowText()}</span>` +
      `<b class="lat ${latClass(traffic.p95_ms)}">${fmtMs(traffic.p95_ms)}</b></div>` +
      `</div>`;
  }).join("");
}

function setScope(pod, endpoint) {
  const h = new URLSearchParams();
  if (pod) h.set("pod", pod);
  if (endpoint) h.set("endpoint", endpoint);
  location.hash = h.toString();
}

$("pods").addEventListener("click", (ev) => {
  const card = ev.target.closest(".pod");
  if (!card) return;
  setScope(card.dataset.pod === state.pod ? null : card.dataset.pod, state.endpoint);
});

$("endpoints").addEventListener("click", (ev) => {
  const row = ev.target.closest("tr[data-endpoint]");
  if (!row) return;
  setScope(state.pod, row.dataset.endpoint === state.endpoint ? null : row.dataset.endpoint);
});

// -- tables -------------------------------------------------------------------------------------

function rowsOrEmpty(tbody, rows, cols, text) {
  tbody.innerHTML = rows.length ? rows.join("") : `<tr class="empty"><td colspan="${cols}">${text}</td></tr>`;
}

// Names that stand for many paths, as the sidecar groups them (decorator/telemetry/aggregate.py).
const GROUPS = {
  "(unmatched)": "4xx answers on paths that no route template names and that never answered otherwise " +
                 "(scanners, typos): grouped so they cannot use up the endpoint budget",
  "other": "endpoints past the sidecar's cap of distinct names",
};

function renderEndpoints(eps) {
  rowsOrEmpty($("endpoints").tBodies[0], eps.map((e) =>
    `<tr data-endpoint="${esc(e.endpoint)}" title="${esc(GROUPS[e.endpoint] || "chart this endpoint alone")}` +
    ` (click again for all)"` +
    `${e.endpoint === state.endpoint ? ' class="selected"' : ""}>` +
    `<td class="ep${GROUPS[e.endpoint] ? " group" : ""}">${esc(e.endpoint)}` +
    `${e.file ? ' <small class="muted">file</small>' : ""}</td>` +
    `<td>${esc(e.method)}</td><td class="num">${fmtNum(e.hits)}</td>` +
    `<td class="num${e.errors ? " status-5xx" : ""}">${fmtNum(e.errors)}</td>` +
    `<td class="num"><span class="lat ${latClass(e.avg_ms)}">${fmtMs(e.avg_ms)}</span></td>` +
    `<td class="num"><span class="lat ${latClass(e.p95_ms)}">${fmtMs(e.p95_ms)}</span></td></tr>`),
  6, "No traffic in this window.");
}

function renderEvents(evs) {
  rowsOrEmpty($("errors").tBodies[0], evs.errors.map((e) =>
    `<tr><td class="muted">${fmtTime(e.ts)}</td><td>${esc(e.pod)}</td>` +
    `<td class="ep">${esc(e.method)} ${esc(e.endpoint)}</td>` +
    `<td class="num status-5xx">${e.status ?? "–"}</td><td class="num">${fmtMs(e.time_ms)}</td>` +
    `<td class="muted">${esc(e.error || e.request_id || "")}</td></tr>`),
  6, "No errors in this window.");
  rowsOrEmpty($("alerts").tBodies[0], evs.alerts.map((a) =>
    `<tr><td class="muted">${fmtTime(a.ts)}</td><td><b>${esc(a.rule || "–")}</b></td><td>${esc(a.pod || "–")}</td>` +
    `<td>${esc(a.event)}${a.status ? ` <span class="status-5xx">${a.status}</span>` : ""}</td>` +
    `<td class="num">${a.count ?? ""}</td>` +
    `<td>${esc(a.message || (a.path ? `${a.method || ""} ${a.path}` : ""))}</td></tr>`),
  6, "No alerts in this window.");
}

// -- charts -------------------------------------------------------------------------------------

function renderChart(name, data, fmt) {
  const el = $("chart-" + name);
  const lines = data.series || [];
  const key = state.pod + "|" + lines.map((s) => s.name).join("|");
  let entry = state.charts[name];
  const cols = [data.t, ...lines.map((s) => s.values)];
  if (!lines.length) {
    if (entry) { entry.plot.destroy(); delete state.charts[name]; }
    el.innerHTML = '<div class="nodata">No data in this window.</div>';
    return;
  }
  if (entry && entry.key === key) {
    entry.plot.setData(cols);
    return;
  }
  if (entry) entry.plot.destroy();
  el.innerHTML = "";
  const opts = {
    width: Math.max(el.clientWidth, 200),
    height: 190,
    cursor: {drag: {x: false, y: false}},
    scales: {x: {time: true}, y: {range: (u, lo, hi) => [Math.min(0, lo), hi > 0 ? hi * 1.1 : 1]}},
    axes: [
      {stroke: "#6b7486", grid: {stroke: "#eef1f5"}, ticks: {stroke: "#e3e7ee"}},
      {stroke: "#6b7486", grid: {stroke: "#eef1f5"}, ticks: {stroke: "#e3e7ee"}, size: 64,
       values: (u, vals) => vals.map((v) => fmt(v))},
    ],
    series: [{value: (u, v) => fmtTime(v)}, ...lines.map((s, i) => {
      const color = NAMED[s.name] || COLORS[i % COLORS.length];
      return {label: s.name, stroke: color, width: 1.6, fill: lines.length <= 2 ? color + "18" : undefined,
              spanGaps: false, points: {show: false}, value: (u, v) => fmt(v)};
    })],
  };
  entry = state.charts[name] = {key, plot: new uPlot(opts, cols, el)};
}

const resizer = new ResizeObserver(() => {
  for (const [name, entry] of Object.entries(state.charts)) {
    const w = Math.max($("chart-" + name).clientWidth, 200);
    if (Math.abs(entry.plot.width - w) > 2) entry.plot.setSize({width: w, height: 190});
  }
});
document.querySelectorAll(".chart").forEach((el) => resizer.observe(el));

// -- scope and controls -------------------------------------------------------------------------

function readScope() {
  const h = new URLSearchParams(location.hash.slice(1));
  state.pod = h.get("pod") || null;
  state.endpoint = h.get("endpoint") || null;
  $("pod-crumb").hidden = !state.pod;
  $("pod-name").textContent = state.pod || "";
  $("endpoint-crumb").hidden = !state.endpoint;
  $("endpoint-name").textContent = state.endpoint || "";
  $("fleet-link").classList.toggle("current", !state.pod);
  $("mem-note").textContent = state.pod ? "node used and container" : "per pod (container, else node used)";
  document.title = state.pod ? `${state.pod} · decorator` : "decorator · dashboard";
}

window.addEventListener("hashchange", () => { readScope(); refresh(); });
$("fleet-link").addEventListener("click", (ev) => { ev.preventDefault(); setScope(null, null); });
$("endpoint-clear").addEventListener("click", (ev) => { ev.preventDefault(); setScope(state.pod, null); });
$("window").addEventListener("change", (ev) => { state.window = ev.target.value; refresh(); });
if ($("window").value !== state.window) state.window = $("window").value;   // a restored form field

readScope();
refresh();
setInterval(refresh, REFRESH_MS);

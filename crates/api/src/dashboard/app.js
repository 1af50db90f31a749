// Tandem's dashboard: a client of the management API. Every data call
// carries the API token the administrator pasted in (kept in this tab's
// sessionStorage); what the API answers on failure is shown as it is.
"use strict";

const TOKEN_KEY = "tandem-api-token";
const PAGES = ["overview", "volumes", "events", "report"];
// The event kinds `GET /v1/events?kind=` takes (docs/events.md).
const EVENT_KINDS = [
  "failover", "primary-moved", "copy-out-of-sync", "copy-detached", "resync-start", "resync-end",
  "volume-create", "volume-resize", "volume-delete", "snapshot-create", "snapshot-delete",
  "login-refused", "checksum-error", "space-low", "space-ok", "node-down", "node-up",
  "maintenance-enter", "maintenance-exit",
];
// Rates of the I/O counters kept for the charts: a minute, one a second.
const HISTORY = 60;
// How long a call may take before the page gives up on it (a node that
// does not answer must not stop the page's refreshes).
const TIMEOUT_MS = 10000;

const $ = (id) => document.getElementById(id);

/// An element with attributes and children (strings become text, never HTML).
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    // Through the CSSOM: the content policy refuses style attributes.
    else if (k === "style") e.style.cssText = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

// ---- Formatting ----------------------------------------------------------

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

function bytes(n) {
  if (n === null || n === undefined) return "-";
  let i = 0;
  let v = n;
  while (v >= 1024 && i < UNITS.length - 1) { v /= 1024; i++; }
  const digits = i === 0 ? 0 : v < 10 ? 2 : 1;
  return v.toFixed(digits).replace(/\.0+$/, "") + " " + UNITS[i];
}

function duration(us) {
  if (us === null || us === undefined) return "-";
  if (us < 1000) return us + " µs";
  if (us < 1e6) return (us / 1000).toFixed(1) + " ms";
  const s = us / 1e6;
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function count(n) {
  return n >= 100 ? Math.round(n).toLocaleString("en") : (Math.round(n * 10) / 10).toString();
}

function when(ms) {
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

/// Bytes of a size as the CLI takes it: `100G`, `512M`, `64MiB`, `4096`.
function parseSize(text) {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$/i.exec(text);
  if (!m) throw new Error(`size ${JSON.stringify(text)}: give a number with K, M, G or T (powers of 1024), e.g. 100G`);
  const power = " KMGTP".indexOf((m[2] || " ").toUpperCase());
  return Math.round(parseFloat(m[1]) * Math.pow(1024, power));
}

// ---- The API -------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

/// Calls the API; JSON (or text) on success, an ApiError with the API's own
/// message otherwise. A refused token leads back to the login page.
async function api(method, path, body, tokenOverride) {
  const headers = { Authorization: "Bearer " + (tokenOverride || token() || "") };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      signal: AbortSignal.timeout(TIMEOUT_MS),
    });
  } catch (e) {
    if (e.name === "TimeoutError") {
      throw new ApiError(0, `the node did not answer ${method} ${path} within ${TIMEOUT_MS / 1000} s`);
    }
    throw new ApiError(0, `the node does not answer (${e.message})`);
  }
  let text;
  try {
    text = await res.text();
  } catch (e) {
    throw new ApiError(0, `the node's answer to ${method} ${path} was cut off (${e.message})`);
  }
  if (!res.ok) {
    let message = text || res.statusText;
    try { message = JSON.parse(text).error || message; } catch (_) { /* not JSON */ }
    const err = new ApiError(res.status, message);
    if (res.status === 401 && !tokenOverride) logout(message);
    throw err;
  }
  if ((res.headers.get("content-type") || "").includes("json")) return text ? JSON.parse(text) : null;
  return text;
}

// Whether the error shown is a refresh's (gone with the next refresh that
// works) rather than an action's (shown until the next action).
let refreshFailed = false;

function showError(e, fromRefresh) {
  const box = $("error");
  refreshFailed = !!e && !!fromRefresh;
  if (!e) { box.hidden = true; box.textContent = ""; return; }
  box.textContent = e.message || String(e);
  box.hidden = false;
}

// ---- Login and navigation ------------------------------------------------

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("login-error").textContent = message || "";
  route();
}

async function login(ev) {
  ev.preventDefault();
  const given = $("login-token").value.trim();
  $("login-error").textContent = "";
  try {
    await api("GET", "/v1/status", undefined, given || "-");
  } catch (e) {
    $("login-error").textContent = e.message;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, given);
  $("login-token").value = "";
  if (!location.hash || location.hash === "#login") location.hash = "#overview";
  route();
}

function current() {
  const p = location.hash.replace(/^#/, "");
  return PAGES.includes(p) ? p : "overview";
}

function route() {
  const logged = !!token();
  $("nav").hidden = !logged;
  $("logout").hidden = !logged;
  $("page-login").hidden = logged;
  const page = current();
  for (const p of PAGES) {
    $("page-" + p).hidden = !logged || p !== page;
    $("nav-" + p).classList.toggle("active", p === page);
  }
  if (!logged) { $("node-name").textContent = ""; showError(null); return; }
  refresh(page);
}

// ---- Overview ------------------------------------------------------------

const samples = []; // {t, series: {name: {labels: value}}}
const rates = [];   // {iops: [r, w], bps: [r, w], lat: [r, w]}

/// The metric families of a Prometheus text exposition, summed over labels
/// unless `keep` picks samples by their labels.
function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: parseFloat(m[3]) });
  }
  return out;
}

// The counters the charts are drawn from, by the key a sample has them.
const COUNTERS = {
  reads: "tandem_volume_reads_total",
  writes: "tandem_volume_writes_total",
  rbytes: "tandem_volume_read_bytes_total",
  wbytes: "tandem_volume_written_bytes_total",
  rsum: "tandem_volume_read_latency_seconds_sum",
  rcount: "tandem_volume_read_latency_seconds_count",
  wsum: "tandem_volume_write_latency_seconds_sum",
  wcount: "tandem_volume_write_latency_seconds_count",
};

/// Each counter's value per series (one a volume), at `t` seconds.
function sample(metrics, t) {
  const series = {};
  for (const [k, name] of Object.entries(COUNTERS)) {
    series[k] = {};
    for (const m of metrics) {
      if (m.name === name) series[k][JSON.stringify(m.labels)] = m.value;
    }
  }
  return { t: t === undefined ? performance.now() / 1000 : t, series };
}

/// Per second between two samples, series by series: a counter that went
/// back (the node restarted) counts from 0; a series that went away (a
/// volume deleted or its primary moved) or is new (created, moved here)
/// counts nothing, rather than its whole life at once.
function rate(a, b) {
  const dt = b.t - a.t;
  const d = (k) => {
    let sum = 0;
    for (const [labels, v] of Object.entries(b.series[k])) {
      const before = a.series[k][labels];
      if (before === undefined) continue;
      sum += v >= before ? v - before : v;
    }
    return sum;
  };
  const mean = (sum, n) => (d(n) > 0 ? (d(sum) / d(n)) * 1000 : 0);
  if (!(dt > 0)) return { iops: [0, 0], bps: [0, 0], lat: [0, 0] };
  return {
    iops: [d("reads") / dt, d("writes") / dt],
    bps: [d("rbytes") / dt, d("wbytes") / dt],
    lat: [mean("rsum", "rcount"), mean("wsum", "wcount")],
  };
}

let polling = false;

async function pollMetrics() {
  if (!token() || polling) return;
  polling = true;
  let text;
  try { text = await api("GET", "/metrics"); } catch (_) { return; } finally { polling = false; }
  const s = sample(parseMetrics(text));
  const last = samples[samples.length - 1];
  samples.push(s);
  if (samples.length > 2) samples.shift();
  if (last && s.t > last.t) {
    rates.push(rate(last, s));
    if (rates.length > HISTORY) rates.shift();
  }
  if (current() === "overview") drawCharts();
}

function drawCharts() {
  const now = rates[rates.length - 1] || { iops: [0, 0], bps: [0, 0], lat: [0, 0] };
  const sum = (p) => p[0] + p[1];
  $("iops-now").textContent = `${count(sum(now.iops))} IOPS`;
  $("throughput-now").textContent = `${bytes(sum(now.bps))}/s`;
  const lat = Math.max(now.lat[0], now.lat[1]);
  $("latency-now").textContent = lat > 0 ? `${lat.toFixed(lat < 10 ? 2 : 1)} ms` : "0 ms";
  chart($("chart-iops"), rates.map((r) => r.iops), count);
  chart($("chart-throughput"), rates.map((r) => r.bps), (v) => bytes(v) + "/s");
  chart($("chart-latency"), rates.map((r) => r.lat), (v) => v.toFixed(1) + " ms");
}

/// Two lines (reads, writes) over the last HISTORY seconds on `canvas`.
function chart(canvas, points, label) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 360;
  const h = canvas.clientHeight || 140;
  if (canvas.width !== w * ratio) { canvas.width = w * ratio; canvas.height = h * ratio; }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  const top = Math.max(1e-9, ...points.flat());
  const pad = 16;
  g.strokeStyle = "#e3e7ee";
  g.fillStyle = "#687084";
  g.font = "11px system-ui, sans-serif";
  for (const f of [0, 0.5, 1]) {
    const y = h - pad - f * (h - 2 * pad);
    g.beginPath(); g.moveTo(0, y); g.lineTo(w, y); g.stroke();
    if (f > 0 && points.length) g.fillText(label(top * f), 4, y - 2);
  }
  const colors = ["#2f6fde", "#d9822b"];
  for (const i of [0, 1]) {
    g.strokeStyle = colors[i];
    g.lineWidth = 1.5;
    g.beginPath();
    points.forEach((p, k) => {
      const x = w - (points.length - 1 - k) * (w / (HISTORY - 1));
      const y = h - pad - (p[i] / top) * (h - 2 * pad);
      if (k === 0) g.moveTo(x, y); else g.lineTo(x, y);
    });
    g.stroke();
  }
}

async function overview() {
  const [status, health] = await Promise.all([api("GET", "/v1/status"), api("GET", "/v1/health")]);
  $("health-word").textContent = health.state;
  $("health-word").className = "word " + health.state;
  $("health-reasons").replaceChildren(...health.reasons.map((r) => el("li", {}, r)));

  const used = status.filesystem_total_bytes ? status.filesystem_total_bytes - status.filesystem_free_bytes : null;
  $("capacity-bar").style.width = used === null ? "0" : `${(100 * used) / status.filesystem_total_bytes}%`;
  const over = Math.max(0, status.provisioned_bytes - status.allocated_bytes - (status.filesystem_free_bytes || 0));
  $("capacity").replaceChildren(
    el("tr", {}, el("th", {}, "Data filesystem"),
      el("td", {}, used === null ? "unknown" : `${bytes(used)} used of ${bytes(status.filesystem_total_bytes)}, ${bytes(status.filesystem_free_bytes)} free`)),
    el("tr", {}, el("th", {}, "Volumes"), el("td", {}, `${status.volumes}, ${bytes(status.provisioned_bytes)} provisioned`)),
    el("tr", {}, el("th", {}, "Written (allocated)"), el("td", {}, bytes(status.allocated_bytes))),
    el("tr", {}, el("th", {}, "Overcommitted"), el("td", { class: over > 0 ? "degraded" : "" }, over > 0 ? bytes(over) + " more than is free" : "no")),
  );

  const c = status.cluster;
  const me = c ? (c.members.find((m) => m.id === c.me) || {}).name : null;
  $("node-name").textContent = me ? `node ${me}` : status.data_dir;
  const rows = (c ? c.members : []).map((m) => el("tr", { "data-member": m.name },
    el("td", {}, m.name),
    el("td", {}, m.data ? "data" : "witness"),
    el("td", { class: "liveness " + m.liveness.toLowerCase() }, m.liveness === "down" ? "DOWN" : m.liveness),
    el("td", {}, m.endpoint),
    el("td", { class: "muted" }, [m.id === c.me ? "this node" : null, c.leader === m.name ? "leader" : null].filter(Boolean).join(", "))));
  $("members").tBodies[0].replaceChildren(...rows);
  $("members-note").textContent = c ? "" : "This node is not a cluster member.";
  drawCharts();
}

// ---- Volumes -------------------------------------------------------------

async function volumes() {
  const [list, cluster, status] = await Promise.all([
    api("GET", "/v1/volumes"),
    api("GET", "/v1/cluster?versions=false").catch((e) => ({ failed: e })),
    api("GET", "/v1/status"),
  ]);
  // A lone node has no cluster view; a member whose view cannot be read
  // says so rather than show its volumes as local ones.
  const unread = status.cluster && cluster.failed ? cluster.failed.message : null;
  const state = cluster.status ? cluster.status.state : null;
  const nameOf = (id) => (state && state.nodes[id] ? state.nodes[id].name : String(id));
  const members = status.cluster ? status.cluster.members.filter((m) => m.data).map((m) => m.name) : [];
  const rows = list.map((v) => {
    const rec = state ? state.volumes[v.name] : null;
    const progress = (cluster.replication && cluster.replication[v.name]) || [];
    const copies = rec
      ? Object.entries(rec.replicas).map(([id, r]) => {
        const p = progress.find((x) => String(x.node) === id);
        return el("div", { class: "copy", "data-node": nameOf(id) },
          nameOf(id), " ", el("span", { class: r.state }, r.state), resync(p));
      })
      : [el("div", { class: unread ? "degraded" : "muted" }, unread ? `unknown: ${unread}` : "local volume")];
    const sessions = v.logged_in.length
      ? v.logged_in.map((s) => el("div", {}, `${s.initiator} from ${s.address}${s.node ? " through " + s.node : ""}`))
      : [el("span", { class: "muted" }, v.sessions ? `${v.sessions}` : "none")];
    const access = v.allowed_initiators.length ? v.allowed_initiators.join(", ") : "every initiator";
    return el("tr", { "data-volume": v.name },
      el("td", {}, el("strong", {}, v.name), v.clone_of ? el("div", { class: "muted small" }, "clone of " + v.clone_of) : null),
      el("td", {}, bytes(v.size_bytes)),
      el("td", {}, bytes(v.allocated_bytes)),
      el("td", {}, copies),
      el("td", {}, rec ? nameOf(rec.primary) : unread ? "unknown" : "this node"),
      el("td", {}, sessions),
      el("td", {}, access, v.chap_user ? el("div", { class: "muted small" }, "CHAP user " + v.chap_user) : null),
      el("td", {},
        el("button", { type: "button", "data-action": "resize", onclick: () => resizeVolume(v) }, "Resize"),
        el("button", { type: "button", "data-action": "access", onclick: () => setAccess(v) }, "Access"),
        rec ? el("button", { type: "button", "data-action": "replica", onclick: () => addReplica(v, rec, members, nameOf) }, "Add copy") : null,
        el("button", { type: "button", class: "danger", "data-action": "delete", onclick: () => deleteVolume(v) }, "Delete")));
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "No volume yet.")));
  $("volumes-table").tBodies[0].replaceChildren(...rows);
}

/// A copy's resync progress and when it should end, or what it misses, as
/// its primary says (only the primary knows: elsewhere, nothing).
function resync(p) {
  if (!p) return null;
  if (p.state !== "syncing" || !p.resync_total) {
    const what = [
      p.state === "out-of-sync" && p.dirty_bytes ? `misses ${bytes(p.dirty_bytes)}` : null,
      p.connected ? null : "not connected",
    ].filter(Boolean).join(", ");
    return what ? el("div", { class: "small muted" }, what) : null;
  }
  const done = Math.min(p.resync_done, p.resync_total);
  const pct = (100 * done) / p.resync_total;
  const eta = p.resync_rate > 0 ? duration(((p.resync_total - done) / p.resync_rate) * 1e6) : "unknown";
  return el("div", { class: "small resync" },
    el("span", { class: "progress" }, el("span", { style: `width:${pct.toFixed(0)}%` })),
    ` ${pct.toFixed(0)}% of ${bytes(p.resync_total)}, ${bytes(p.resync_rate)}/s, ETA ${eta}`);
}

/// Asks the administrator to confirm `text` (with an input when `value`
/// is given); resolves to the input's value, true, or null when cancelled.
function confirmDialog(text, value) {
  return new Promise((resolve) => {
    const input = $("dialog-input");
    $("dialog-text").textContent = text;
    input.hidden = value === undefined;
    input.value = value === undefined ? "" : value;
    $("dialog").hidden = false;
    (value === undefined ? $("dialog-ok") : input).focus();
    const done = (result) => {
      $("dialog").hidden = true;
      $("dialog-form").onsubmit = null;
      $("dialog-cancel").onclick = null;
      resolve(result);
    };
    $("dialog-form").onsubmit = (ev) => { ev.preventDefault(); done(value === undefined ? true : input.value); };
    $("dialog-cancel").onclick = () => done(null);
  });
}

/// Runs an action the administrator confirmed; its error, the API's own
/// text, stays shown until the next action.
async function act(f) {
  showError(null);
  try {
    await f();
  } catch (e) {
    showError(e);
  }
  await refresh(current());
}

async function createVolume(ev) {
  ev.preventDefault();
  const name = $("create-name").value.trim();
  const replicasText = $("create-replicas").value.trim();
  await act(async () => {
    const size = parseSize($("create-size").value);
    const body = { name, size_bytes: size };
    if (replicasText) {
      if (!/^\d+$/.test(replicasText)) throw new Error(`copies ${JSON.stringify(replicasText)}: give a whole number, e.g. 2`);
      body.replicas = parseInt(replicasText, 10);
    }
    const copies = body.replicas ? `, ${body.replicas} ${body.replicas === 1 ? "copy" : "copies"}` : "";
    if (!(await confirmDialog(`Create volume ${name} of ${bytes(size)}${copies}?`))) return;
    await api("POST", "/v1/volumes", body);
    $("create-name").value = "";
  });
}

async function resizeVolume(v) {
  await act(async () => {
    const text = await confirmDialog(`Grow volume ${v.name} (now ${bytes(v.size_bytes)}) to:`, "");
    if (text === null) return;
    const size = parseSize(text);
    if (!(await confirmDialog(`Grow volume ${v.name} from ${bytes(v.size_bytes)} to ${bytes(size)}?`))) return;
    await api("PATCH", `/v1/volumes/${encodeURIComponent(v.name)}`, { size_bytes: size });
  });
}

async function deleteVolume(v) {
  await act(async () => {
    const with_sessions = v.sessions ? ` ${v.sessions} initiator(s) are logged in: it is refused unless they log out.` : "";
    if (!(await confirmDialog(`Delete volume ${v.name} and all its data (${bytes(v.size_bytes)})?${with_sessions}`))) return;
    await api("DELETE", `/v1/volumes/${encodeURIComponent(v.name)}`);
  });
}

async function setAccess(v) {
  await act(async () => {
    // The rules are replaced whole, and the page never holds a CHAP secret.
    if (v.chap_user) {
      throw new Error(`volume ${v.name} uses CHAP: change its access with tandem volume access ` +
        "(the page would drop the CHAP settings, whose secrets it never sees)");
    }
    const text = await confirmDialog(
      `Initiators allowed to log in to ${v.name}, separated by commas (empty: every initiator):`,
      v.allowed_initiators.join(", "));
    if (text === null) return;
    const allowed = text.split(",").map((s) => s.trim()).filter(Boolean);
    const who = allowed.length ? allowed.join(", ") : "every initiator";
    if (!(await confirmDialog(`Let ${who} log in to ${v.name}? Initiators not listed are refused at their next login.`))) return;
    await api("PUT", `/v1/volumes/${encodeURIComponent(v.name)}/access`, { allowed_initiators: allowed });
  });
}

async function addReplica(v, rec, members, nameOf) {
  await act(async () => {
    const holding = Object.keys(rec.replicas).map(nameOf);
    const free = members.filter((m) => !holding.includes(m));
    const text = await confirmDialog(
      `Node to hold a new copy of ${v.name} (empty: the data node with the fewest copies; ` +
      `without a copy: ${free.length ? free.join(", ") : "none"}):`, free[0] || "");
    if (text === null) return;
    const node = text.trim();
    if (!(await confirmDialog(`Add a copy of ${v.name} (${bytes(v.size_bytes)}) on ${node || "the least loaded data node"}? It is copied whole.`))) return;
    await api("POST", `/v1/volumes/${encodeURIComponent(v.name)}/replicas`, node ? { node } : {});
  });
}

// ---- Events --------------------------------------------------------------

async function events() {
  const kind = $("events-kind").value;
  const q = "/v1/events?limit=200" + (kind ? "&kind=" + encodeURIComponent(kind) : "");
  const list = await api("GET", q);
  const rows = list.slice().reverse().map((e) => el("tr", { "data-kind": e.kind },
    el("td", { class: "muted" }, e.seq),
    el("td", {}, when(e.time_ms)),
    el("td", {}, e.kind),
    el("td", {}, e.volume || ""),
    el("td", {}, e.node || ""),
    el("td", { class: "small" }, Object.entries(e.fields || {}).map(([k, val]) => `${k}=${fieldText(k, val)}`).join("  "))));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No event" + (kind ? " of this kind" : "") + " yet.")));
  $("events-table").tBodies[0].replaceChildren(...rows);
}

function fieldText(k, v) {
  if (typeof v !== "number") return v;
  if (k === "us" || k.endsWith("_us")) return duration(v);
  if (k === "bytes" || k.endsWith("_bytes")) return bytes(v);
  if (k.endsWith("_ms") && k !== "time_ms") return duration(v * 1000);
  return v;
}

// ---- Report --------------------------------------------------------------

async function report() {
  const r = await api("GET", "/v1/report");
  const kv = (rows) => el("table", { class: "kv" }, rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))));
  const e = r.efficiency;
  const a = r.agility;
  const timing = (t) => (t.count ? `${duration(t.p50_us)} median, ${duration(t.p99_us)} p99 (${t.count})` : "no data yet");
  const s = r.service;
  $("report").replaceChildren(
    el("p", { class: "muted" }, `Made ${when(r.time_ms)} from ${r.events} ${r.events === 1 ? "event" : "events"}` + (r.events_since_ms ? ` since ${when(r.events_since_ms)}` : "") + "."),
    el("div", { class: "card", id: "report-efficiency" }, el("h2", {}, "Efficiency"), kv([
      ["Volumes with data here", e.volumes],
      ["Logical size", bytes(e.logical_bytes)],
      ["Allocated", bytes(e.allocated_bytes)],
      ["Saved by thin provisioning", bytes(e.thin_saved_bytes)],
      ["Snapshots", `${e.snapshots}, taking ${bytes(e.snapshot_bytes)}, saving ${bytes(e.snapshot_saved_bytes)}`],
      ["Clones", `${e.clones}, taking ${bytes(e.clone_bytes)}, saving ${bytes(e.clone_saved_bytes)}`],
    ])),
    el("div", { class: "card", id: "report-agility" }, el("h2", {}, "Agility"), kv([
      ["Create a volume", timing(a.create)],
      ["Resize a volume", timing(a.resize)],
      ["Fail over (I/O pause)", timing(a.failover)],
      ["Resync a returning copy", timing(a.resync) + (a.resync_bytes ? `, ${bytes(a.resync_bytes)} copied` : "")],
    ])),
    el("div", { class: "card", id: "report-service" }, el("h2", {}, "Quality of service"),
      el("table", {},
        el("thead", {}, el("tr", {}, ["Volume", "Degraded", "Commands", "p99 read / write",
          "Last hour", "Last day", "Medium errors", "Reservation conflicts", "CAW miscompares"]
          .map((h) => el("th", {}, h)))),
        el("tbody", {}, s.volumes.map((v) => el("tr", { "data-volume": v.name },
          el("td", {}, v.name),
          el("td", { class: v.degraded_now ? "degraded" : "" }, v.degraded_ms || v.degraded_now ? duration(v.degraded_ms * 1000) + (v.degraded_now ? " (now)" : "") : "never"),
          el("td", {}, count(v.commands)),
          el("td", {}, `${duration(v.read_p99_us)} / ${duration(v.write_p99_us)}`),
          el("td", {}, latencyWindow(v.last_hour)),
          el("td", {}, latencyWindow(v.last_day)),
          el("td", {}, v.medium_errors),
          el("td", {}, v.reservation_conflicts),
          el("td", {}, v.caw_miscompares))))),
      el("h2", { style: "margin-top:1em" }, "Failovers"),
      s.failovers.length
        ? el("ul", {}, s.failovers.map((f) => el("li", {}, `${when(f.time_ms)} ${f.volume}: ${f.from} → ${f.to}, I/O paused ${duration(f.pause_us)}`)))
        : el("p", { class: "muted" }, "None in the history.")),
  );
}

/// p99 read / write latency over a recent window of the report.
function latencyWindow(w) {
  if (!w || !w.commands) return el("span", { class: "muted" }, "no I/O");
  return `${duration(w.read_p99_us)} / ${duration(w.write_p99_us)} (${count(w.commands)} commands)`;
}

// ---- Refresh -------------------------------------------------------------

const LOADERS = { overview, volumes, events, report };
let busy = false;

async function refresh(page) {
  if (!token() || busy) return;
  busy = true;
  try {
    await LOADERS[page]();
    if (refreshFailed) showError(null);
  } catch (e) {
    if (e.status !== 401 && (refreshFailed || $("error").hidden)) showError(e, true);
  } finally {
    busy = false;
  }
}

function start() {
  for (const k of EVENT_KINDS) $("events-kind").append(el("option", { value: k }, k));
  $("events-kind").addEventListener("change", () => refresh("events"));
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => logout(""));
  $("create-form").addEventListener("submit", createVolume);
  window.addEventListener("hashchange", () => { showError(null); route(); });
  route();
  setInterval(pollMetrics, 1000);
  // What a page shows is asked again while it is open (the dialog aside).
  const every = { overview: 2000, volumes: 2000, events: 5000, report: 10000 };
  let last = 0;
  setInterval(() => {
    const page = current();
    if (!$("dialog").hidden || performance.now() - last < every[page]) return;
    last = performance.now();
    refresh(page);
  }, 500);
  pollMetrics();
}

document.addEventListener("DOMContentLoaded", start);

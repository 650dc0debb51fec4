// vitalchain dashboard: plain JS over the API's own routes, no build step.
// The bearer token lives in sessionStorage (this tab only) and travels only in the
// Authorization header; every value from the API is put in the page with textContent.
"use strict";

const TOKEN_KEY = "vitalchain.token";
const REFRESH_MS = 5000;
const WINDOWS_SHOWN = 50;
const CHART_HEIGHT = 170;
const VITALS = [
  { key: "hr", label: "Heart rate", unit: "/min", series: ["hr"] },
  { key: "spo2", label: "SpO₂", unit: "%", series: ["spo2"] },
  { key: "rr", label: "Respiration rate", unit: "/min", series: ["rr"] },
  { key: "temp_c", label: "Temperature", unit: "°C", series: ["temp_c"] },
  { key: "bp", label: "Blood pressure", unit: "mmHg", series: ["sys", "dia"] },
];
const COLOURS = { hr: "#c0392b", spo2: "#2471a3", rr: "#17a589", temp_c: "#b9770e",
                  sys: "#7d3c98", dia: "#af7ac5" };

// refused: routes this role got a 403 for; not asked again (a role does not change under a token).
const state = { me: null, patients: new Map(), patientId: null, charts: new Map(), timer: null,
                refused: new Set(), refreshing: false };
const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, detail) {
    super(`${status} ${statusText(status)}: ${detail}`);
    this.status = status;
  }
}

function statusText(status) {
  return { 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 409: "Conflict",
           413: "Too large", 422: "Invalid request", 503: "Unavailable" }[status] || "Error";
}

function detailOf(body, fallback) {
  if (!body || body.detail === undefined) return fallback;
  if (typeof body.detail === "string") return body.detail;
  if (Array.isArray(body.detail)) {
    return body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  }
  return JSON.stringify(body.detail);
}

async function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, { ...options, headers, cache: "no-store" });
  } catch (err) {
    throw new ApiError(0, `the API did not answer (${err.message})`);
  }
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  if (!response.ok) throw new ApiError(response.status, detailOf(body, response.statusText));
  return options.withHeaders ? { body, headers: response.headers } : body;
}

function show(el, visible) { el.hidden = !visible; }

function note(el, text, isError = false) {
  el.textContent = text;
  el.classList.toggle("error", isError);
  show(el, Boolean(text));
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text === null || text === undefined ? "—" : String(text);
  if (className) td.className = className;
  return td;
}

function when(iso) {
  if (!iso) return "no reading yet";
  const t = new Date(iso);
  const ago = Math.max(0, Math.round((Date.now() - t.getTime()) / 1000));
  const age = ago < 120 ? `${ago} s ago` : ago < 7200 ? `${Math.round(ago / 60)} min ago`
    : `${Math.round(ago / 3600)} h ago`;
  return `${t.toLocaleString()} (${age})`;
}

// --- sign in / out -----------------------------------------------------------------------------
async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    state.me = await api("/me");
  } catch (err) {
    sessionStorage.removeItem(TOKEN_KEY);
    const hint = err.status === 401 ? " — check the token (it is printed once by vitalchain users add)" : "";
    note($("signin-error"), `Sign-in failed: ${err.message}${hint}`, true);
    show($("signin"), true);
    return;
  }
  note($("signin-error"), "");
  $("whoami").textContent = `${state.me.name} (${state.me.role})`;
  show($("whoami"), true);
  show($("signout"), true);
  show($("signin"), false);
  show($("app"), true);
  await refresh();
  state.timer = setInterval(refresh, REFRESH_MS);
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(state.timer);
  for (const chart of state.charts.values()) chart.destroy();
  state.charts.clear();
  state.me = null;
  state.patientId = null;
  location.reload();
}

function onAuthLost(err) {
  // A token disabled (or a grant revoked) while the page is open: say so instead of going stale.
  if (err.status === 401) {
    clearInterval(state.timer);
    sessionStorage.removeItem(TOKEN_KEY);
    show($("app"), false);
    show($("signin"), true);
    note($("signin-error"), `Signed out: ${err.message}`, true);
    return true;
  }
  return false;
}

async function refresh() {
  // Verified reads check every reading of the range (a 24 h range takes seconds): never start a
  // refresh while the previous one still runs, so slow answers cannot pile up on the server.
  if (state.refreshing) return;
  state.refreshing = true;
  try {
    await Promise.all([loadPatients(), loadWindows()]);
    if (state.patientId) await loadVitals();
  } finally {
    state.refreshing = false;
  }
}

// --- patients ----------------------------------------------------------------------------------
async function loadPatients() {
  if (state.refused.has("patients")) return;
  let body;
  try {
    body = await api("/clinician/patients");
  } catch (err) {
    if (onAuthLost(err)) return;
    show($("patients"), false);
    if (err.status === 403) state.refused.add("patients");
    const why = err.status === 403 ? "Your role shows no patient list. " : "";
    note($("patients-note"), `${why}${err.message}`, err.status !== 403);
    return;
  }
  const tbody = $("patients").tBodies[0];
  tbody.replaceChildren();
  state.patients.clear();
  for (const p of body.patients) {
    state.patients.set(p.patient_id, p);
    const row = tbody.insertRow();
    row.dataset.patient = p.patient_id;
    row.tabIndex = 0;
    row.classList.toggle("selected", p.patient_id === state.patientId);
    cell(row, p.patient_id, "id");
    const score = cell(row, p.news2 ? p.news2.score : null, "news2");
    if (p.news2) score.classList.add(`risk-${p.news2.risk}`);
    if (p.news2) score.title = `${p.news2.response}; assumed: ${p.news2.assumptions.join(", ")}`;
    cell(row, p.news2 ? p.news2.risk : null);
    cell(row, when(p.latest_time), "time");
    cell(row, p.latest ? `${p.latest.device_id} · ${p.latest.seq}` : null);
    integrityCell(row, p);
    cell(row, new Date(p.grant_until).toLocaleString());
    const open = () => openPatient(p.patient_id);
    row.addEventListener("click", open);
    row.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
  }
  show($("patients"), body.patients.length > 0);
  note($("patients-note"), body.patients.length ? "" : "No patient has granted you access yet.");
  if (state.patientId) updateProofTarget();
}

// Verified reads: every reading carries its state (docs/API.md). Values of altered/unknown
// readings never reach the page; they are listed as withheld.
const STATE_TEXT = { anchored: "anchored", sealed: "sealed", unsealed: "not yet sealed",
                     altered: "altered", unknown: "unknown" };
const STATE_TITLE = {
  anchored: "matches its sealed leaf in the ledger; its window is anchored on chain",
  sealed: "matches its sealed leaf in the ledger; not anchored on chain yet",
  unsealed: "received, its window is still open: shown at once, not verified yet",
};

function badge(text, className, title) {
  const b = document.createElement("span");
  b.className = `badge ${className}`;
  b.textContent = text;
  if (title) b.title = title;
  return b;
}

function integrityCell(row, p) {
  const td = row.insertCell();
  td.className = "integrity";
  if (p.latest) {
    td.append(badge(STATE_TEXT[p.latest.state] || p.latest.state, `state-${p.latest.state}`,
                    STATE_TITLE[p.latest.state]));
  }
  const withheld = p.withheld || [];
  if (withheld.length) {
    const more = p.withheld_truncated ? "+" : "";
    const states = [...new Set(withheld.map((w) => w.state))].join("/");
    td.append(badge(`${withheld.length}${more} newer withheld (${states})`, "state-withheld",
                    withheld.map((w) => `${w.device_id} seq ${w.seq}: ${w.state} — ${w.reason}`)
                      .join("\n")));
  }
  const missing = p.missing_newer || [];
  if (missing.length) {
    td.append(badge(`${missing.length} newer sealed missing`, "state-missing",
                    missing.map((m) => `${m.device_id} seq ${m.seq}: ${m.reason}`).join("\n")));
  }
  if (!td.childNodes.length) td.textContent = "—";
}

function showWithheld(body) {
  const list = $("withheld");
  list.replaceChildren();
  for (const w of body.withheld) {
    const li = document.createElement("li");
    li.dataset.device = w.device_id;
    li.dataset.seq = w.seq;
    li.dataset.state = w.state;
    const at = w.ts_us === null ? "time unknown" : new Date(w.ts_us / 1000).toLocaleString();
    li.append(badge(w.state, `state-${w.state}`));
    li.append(document.createTextNode(` ${w.device_id} seq ${w.seq} (${at}): ${w.reason}`));
    list.append(li);
  }
  const total = body.withheld_total;
  note($("withheld-note"), total
    ? `${total} reading(s) in range withheld: they failed verification against the ledger, so ` +
      "their values are not shown, charted or scored. An auditor should run the tamper audit."
    : "", total > 0);
  show(list, total > 0);
}

async function openPatient(patientId) {
  if (state.patientId !== patientId) {
    for (const chart of state.charts.values()) chart.destroy();
    state.charts.clear();
    $("charts").replaceChildren();
  }
  state.patientId = patientId;
  $("patient-id").textContent = patientId;
  for (const row of $("patients").tBodies[0].rows) {
    row.classList.toggle("selected", row.dataset.patient === patientId);
  }
  show($("patient"), true);
  updateProofTarget();
  await loadVitals();
}

function updateProofTarget() {
  const p = state.patients.get(state.patientId);
  const latest = p && p.latest;
  const provable = latest && latest.state !== "unsealed";
  $("proof-btn").disabled = !provable;
  $("proof-target").textContent = latest
    ? `${latest.device_id} seq ${latest.seq}, ${new Date(latest.ts_us / 1000).toLocaleString()}` +
      (provable ? "" : " — not sealed yet: no proof until its window seals")
    : "no reading to prove yet";
}

// --- vitals charts (uPlot) ---------------------------------------------------------------------
async function loadVitals() {
  const patientId = state.patientId;
  const minutes = Number($("range").value);
  const end = new Date();
  const start = new Date(end.getTime() - minutes * 60000);
  const query = new URLSearchParams({ start: start.toISOString(), end: end.toISOString(),
                                      max_points: "300" });
  let body;
  try {
    body = await api(`/clinician/patients/${encodeURIComponent(patientId)}/vitals?${query}`);
  } catch (err) {
    if (onAuthLost(err)) return;
    note($("patient-note"), err.message, true);
    return;
  }
  if (patientId !== state.patientId) return;  // the user switched patient meanwhile
  const n = body.points.length;
  const unsealed = body.states ? body.states.unsealed : 0;
  note($("patient-note"), n ? `${n} points, ${body.interval_s} s each` +
    (body.late.length ? `; ${body.late.length} late reading(s) in range` : "") +
    (unsealed ? `; ${unsealed} reading(s) not yet sealed` : "") +
    `; every reading checked against the ledger`
    : `No readings in the last ${minutes} min.`);
  showWithheld(body);
  $("live").textContent = `live · updated ${new Date().toLocaleTimeString()}`;
  const xs = body.points.map((p) => p.ts_us / 1e6);
  for (const vital of VITALS) {
    const data = [xs, ...vital.series.map((k) => body.points.map((p) => p[k] ?? null))];
    const scale = { min: start.getTime() / 1000, max: end.getTime() / 1000 };
    let chart = state.charts.get(vital.key);
    if (!chart) {
      chart = makeChart(vital, data);
      state.charts.set(vital.key, chart);
    } else {
      chart.setData(data, false);
    }
    chart.setScale("x", scale);
    // The newest plotted values, as text: what a screen reader (or a test) can check.
    const box = document.querySelector(`figure.chart[data-vital="${vital.key}"]`);
    box.dataset.latest = n ? data.slice(1).map((s) => s[n - 1]).join("/") : "";
  }
}

function chartWidth(box) {
  return Math.max(240, box.clientWidth - 10);  // fill the grid cell the figure was given
}

function resizeCharts() {
  for (const box of document.querySelectorAll("figure.chart")) {
    const chart = state.charts.get(box.dataset.vital);
    if (chart) chart.setSize({ width: chartWidth(box), height: CHART_HEIGHT });
  }
}

function makeChart(vital, data) {
  const box = document.createElement("figure");
  box.className = "chart";
  box.dataset.vital = vital.key;
  const caption = document.createElement("figcaption");
  caption.textContent = `${vital.label} (${vital.unit})`;
  box.append(caption);
  $("charts").append(box);
  const opts = {
    width: chartWidth(box), height: CHART_HEIGHT,
    legend: { show: true },
    scales: { x: { time: true }, y: { auto: true } },
    axes: [{}, { size: 50 }],
    series: [{}, ...vital.series.map((k) => ({
      label: k, stroke: COLOURS[k], width: 2, spanGaps: false,
      points: { show: data[0].length < 60, size: 4 },
    }))],
  };
  return new uPlot(opts, data, box);
}

// --- proofs and verification -------------------------------------------------------------------
function download(doc, filename) {
  const blob = new Blob([JSON.stringify(doc, null, 2)], { type: "application/json" });
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function showVerdict(status, text, steps = []) {
  show($("proof-card"), true);
  const verdict = $("verdict");
  verdict.replaceChildren();
  const badge = document.createElement("span");
  badge.className = `badge verdict-${status}`;
  badge.textContent = status;
  const detail = document.createElement("span");
  detail.textContent = ` ${text}`;
  verdict.append(badge, detail);
  verdict.dataset.status = status;
  const list = $("steps");
  list.replaceChildren();
  for (const s of steps) {
    const li = document.createElement("li");
    li.className = `step-${s.status}`;
    li.textContent = `${s.step}: ${s.status}${s.detail ? ` — ${s.detail}` : ""}`;
    list.append(li);
  }
  $("proof-card").scrollIntoView({ block: "nearest" });
}

async function verify(bundle, label, proofStatus = null, confirmations = null) {
  let report;
  try {
    report = await api("/audit/verify", { method: "POST", body: JSON.stringify(bundle),
                                          headers: { "Content-Type": "application/json" } });
  } catch (err) {
    if (onAuthLost(err)) return;
    const hint = err.status === 403
      ? " The proof file was downloaded: verify it offline with `vitalchain verify FILE`, or ask an auditor."
      : "";
    showVerdict("not-verified", `${label}: ${err.message}.${hint}`);
    return;
  }
  // The lead never says "anchored" unless the server checked the anchor on chain; the
  // server's summary names what was checked ("anchor verified on chain (block N)" or not).
  const lead = {
    valid: report.anchor_checked && report.anchor_block != null
      ? "every hash checks out and the checkpoint is anchored"
      : "every hash checks out; the anchor was NOT checked",
    pending: "every hash checks out; the checkpoint is not anchored on chain yet",
    invalid: `verification FAILED at step “${report.failed_step}”`,
    error: "the document is not a usable proof",
  }[report.status] || report.status;
  if (report.status === "pending" && proofStatus === "pending-confirmation") {
    // Mined but not yet confirmed: the server withholds the anchor until it is (a reorg could
    // still remove the block), so say how far along it is rather than just "not anchored".
    showVerdict("pending-confirmation",
      `${label}: every hash checks out; the checkpoint's anchoring transaction is mined with ` +
      `${confirmations || "too few"} confirmations, not yet counted as anchored. ` +
      "Fetch the proof again shortly for an anchored one.", report.steps);
    return;
  }
  const summary = report.summary ? ` (${report.summary})` : "";
  showVerdict(report.status, `${label}: ${lead}${summary}`, report.steps);
}

async function proveReading(deviceId, seq) {
  const label = `${deviceId} seq ${seq}`;
  showVerdict("working", `${label}: fetching the proof…`);
  let bundle, proofStatus, confirmations;
  try {
    const got = await api(`/audit/proofs/${encodeURIComponent(deviceId)}/${encodeURIComponent(seq)}`,
                          { withHeaders: true });
    bundle = got.body;
    proofStatus = got.headers.get("X-Vitalchain-Proof-Status");
    confirmations = got.headers.get("X-Vitalchain-Confirmations");
  } catch (err) {
    if (onAuthLost(err)) return;
    showVerdict("not-verified", `${label}: ${err.message}`);
    return;
  }
  download(bundle, `proof-${deviceId}-${seq}.json`);
  showVerdict("working", `${label}: proof downloaded, verifying…`);
  await verify(bundle, label, proofStatus, confirmations);
}

// --- windows (auditors) ------------------------------------------------------------------------
async function loadWindows() {
  if (state.refused.has("windows")) return;
  let body;
  try {
    const head = await api("/audit/windows?limit=1");
    const start = Math.max(0, head.log_size - WINDOWS_SHOWN);
    body = await api(`/audit/windows?start=${start}&limit=${WINDOWS_SHOWN}`);
  } catch (err) {
    if (onAuthLost(err)) return;
    show($("audit-tools"), false);
    if (err.status === 403) state.refused.add("windows");
    const why = err.status === 403 ? "Windows and anchors are for auditors. " : "";
    note($("windows-note"), `${why}${err.message}`, err.status !== 403);
    return;
  }
  show($("audit-tools"), true);
  note($("windows-note"), `${body.log_size} windows in the log; the newest ${body.windows.length} shown.`);
  const tbody = $("windows").tBodies[0];
  tbody.replaceChildren();
  for (const w of body.windows.slice().reverse()) {
    const row = tbody.insertRow();
    cell(row, w.log_index);
    cell(row, w.window_id, "id");
    cell(row, w.kind);
    cell(row, w.header.size);
    cell(row, w.header.start_us ? new Date(w.header.start_us / 1000).toLocaleString() : null, "time");
    const anchor = document.createElement("span");
    anchor.className = `badge anchor-${w.anchor.status}`;
    anchor.textContent = w.anchor.status;
    if (w.anchor.status === "pending-confirmation") {
      anchor.textContent += ` ${w.anchor.confirmations}/${w.anchor.confirmations_required}`;
    }
    if (w.anchor.tx_hash) anchor.title = `checkpoint ${w.anchor.checkpoint_size}, tx ${w.anchor.tx_hash}`;
    row.insertCell().append(anchor);
    const devices = row.insertCell();
    for (const [deviceId, d] of Object.entries(w.header.devices || {})) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "small";
      b.textContent = `${deviceId} #${d.last_seq}`;
      b.addEventListener("click", () => proveReading(deviceId, d.last_seq));
      devices.append(b);
    }
  }
}

// --- wiring ------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token").value.trim();
    $("token").value = "";
    signIn(token);
  });
  $("signout").addEventListener("click", signOut);
  window.addEventListener("resize", resizeCharts);
  $("range").addEventListener("change", () => { if (state.patientId) loadVitals(); });
  $("proof-btn").addEventListener("click", () => {
    const p = state.patients.get(state.patientId);
    if (p && p.latest && p.latest.state !== "unsealed") proveReading(p.latest.device_id, p.latest.seq);
  });
  $("proof-form").addEventListener("submit", (e) => {
    e.preventDefault();
    proveReading($("proof-device").value.trim(), Number($("proof-seq").value));
  });
  $("proof-file").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    if (!file) return;
    let bundle;
    try {
      bundle = JSON.parse(await file.text());
    } catch (err) {
      showVerdict("error", `${file.name}: not JSON (${err.message})`);
      return;
    }
    await verify(bundle, file.name);
  });
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) signIn(token);
});

// vitalchain dashboard: plain JS over the API's own routes, no build step.
// The bearer token lives in sessionStorage (this tab only) and travels only in the
// Authorization header; every value from the API is put in the page with textContent.
"use strict";

const TOKEN_KEY = "vitalchain.token";
// The patients list (latest reading, NEWS2) is polled every second: a reading is on screen
// within a second of being queryable, and one GET /clinician/patients is one InfluxDB query for
// all patients (docs/PERFORMANCE.md).  The open patient's charts and the auditor's window log
// change far more slowly than that: they are fetched at most every SLOW_MS, and a chart no more
// often than one of its points (its interval) can change.  A hidden tab asks for nothing.
const REFRESH_MS = 1000;
const SLOW_MS = 5000;
const WINDOWS_SHOWN = 50;
const CHART_HEIGHT = 200;
// range: the y-axis always shows at least this clinical range (widened only for values outside
// it), so ordinary noise looks like noise; bands: which NEWS2 parameter shades the chart.
const VITALS = [
  { key: "hr", label: "Heart rate", unit: "/min", series: ["hr"], range: [40, 150], bands: "hr",
    news2: "pulse", digits: 0 },
  { key: "spo2", label: "SpO₂", unit: "%", series: ["spo2"], range: [85, 100], bands: "spo2",
    news2: "spo2_scale1", digits: 0 },
  { key: "rr", label: "Respiration rate", unit: "/min", series: ["rr"], range: [5, 35], bands: "rr",
    news2: "respiration_rate", digits: 0 },
  { key: "temp_c", label: "Temperature", unit: "°C", series: ["temp_c"], range: [34.5, 40.5],
    bands: "temp_c", news2: "temperature", digits: 1 },
  { key: "bp", label: "Blood pressure", unit: "mmHg", series: ["sys", "dia"], range: [40, 200],
    bands: "sys", news2: "systolic_bp", digits: 0 },
];
// NEWS2 points per parameter (RCP 2017, SpO2 Scale 1) as [above, up to and including, points];
// the same limits as api/news2.py (tests/test_dashboard_clinician.py checks they agree).
const NEWS2_BANDS = {
  "hr": [[null, 40, 3], [40, 50, 1], [50, 90, 0], [90, 110, 1], [110, 130, 2], [130, null, 3]],
  "spo2": [[null, 91, 3], [91, 93, 2], [93, 95, 1], [95, null, 0]],
  "rr": [[null, 8, 3], [8, 11, 1], [11, 20, 0], [20, 24, 2], [24, null, 3]],
  "temp_c": [[null, 35, 3], [35, 36, 1], [36, 38, 0], [38, 39, 1], [39, null, 2]],
  "sys": [[null, 90, 3], [90, 100, 2], [100, 110, 1], [110, 219, 0], [219, null, 3]]
};
const BAND_FILL = { 1: "rgba(241, 196, 15, 0.22)", 2: "rgba(230, 126, 34, 0.22)",
                    3: "rgba(192, 57, 43, 0.18)" };
const NEWS2_ROWS = [
  ["respiration_rate", "Respiration rate", (v) => `${fmt(v.rr, 0)} /min`],
  ["spo2_scale1", "SpO₂ (Scale 1)", (v) => `${fmt(v.spo2, 0)} %`],
  ["air_or_oxygen", "Air or oxygen", () => "air (assumed)"],
  ["systolic_bp", "Systolic BP", (v) => `${fmt(v.sys, 0)} mmHg`],
  ["pulse", "Pulse", (v) => `${fmt(v.hr, 0)} /min`],
  ["consciousness", "Consciousness", () => "alert (assumed)"],
  ["temperature", "Temperature", (v) => `${fmt(v.temp_c, 1)} °C`],
];
const COLOURS = { hr: "#c0392b", spo2: "#2471a3", rr: "#17a589", temp_c: "#b9770e",
                  sys: "#7d3c98", dia: "#af7ac5" };

// refused: routes this role got a 403 for; not asked again (a role does not change under a token).
const state = { me: null, patients: new Map(), patientId: null, charts: new Map(), timer: null,
                refused: new Set(), refreshing: false, vitalsAt: 0, vitalsEvery: SLOW_MS,
                windowsAt: 0 };
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

// Times: the browser's local time, 24-hour, with the zone named (a ward screen is read by people
// in one place; an unlabelled or 12-hour time is a misreading waiting to happen).
const TIME_PARTS = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
  second: "2-digit", hourCycle: "h23", timeZoneName: "short" });

function parts(t) {
  const out = {};
  for (const p of TIME_PARTS.formatToParts(t)) out[p.type] = p.value;
  return out;
}

function zoneName(t = new Date()) { return parts(t).timeZoneName || "local time"; }

// "2026-11-30 10:42:13 CET"; clock=true: "10:42:13 CET"
function fmtTime(t, clock = false) {
  const p = parts(t instanceof Date ? t : new Date(t));
  const time = `${p.hour}:${p.minute}:${p.second} ${p.timeZoneName}`;
  return clock ? time : `${p.year}-${p.month}-${p.day} ${time}`;
}

function fmt(value, digits) {
  return value === null || value === undefined ? "—" : Number(value).toFixed(digits);
}

function ageOf(t) {
  const ago = Math.max(0, Math.round((Date.now() - t.getTime()) / 1000));
  return ago < 120 ? `${ago} s ago` : ago < 7200 ? `${Math.round(ago / 60)} min ago`
    : `${Math.round(ago / 3600)} h ago`;
}

// Today's times without the date (a ward screen is read the same day), others with it.
function fmtShort(t) {
  const p = parts(t);
  const today = parts(new Date());
  const same = p.year === today.year && p.month === today.month && p.day === today.day;
  return same ? fmtTime(t, true) : fmtTime(t);
}

// The patients list's "Last reading" cell: the same text as when(), but the time and its age
// may go on two lines (each kept whole), so the list fits its card at 1280 px.
function lastReadingCell(row, iso) {
  const td = row.insertCell();
  td.className = "time last";
  if (!iso) {
    td.textContent = when(iso);
    return td;
  }
  const t = new Date(iso);
  const at = document.createElement("span");
  at.textContent = fmtShort(t);
  const age = document.createElement("span");
  age.textContent = `(${ageOf(t)})`;
  td.append(at, " ", age);
  return td;
}

function when(iso) {
  if (!iso) return "no reading yet";
  const t = new Date(iso);
  return `${fmtShort(t)} (${ageOf(t)})`;
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
  showRoleCards(state.me.role);
  await refresh();
  state.timer = setInterval(refresh, REFRESH_MS);
}

// Each role sees only the cards it may use: asking for the others would only show a 403.
const ROLE_CARDS = { clinician: ["patients-card"], auditor: ["audit-card"], admin: [] };

function showRoleCards(role) {
  const cards = ROLE_CARDS[role] || [];
  for (const id of ["patients-card", "audit-card"]) show($(id), cards.includes(id));
  if (!cards.includes("patients-card")) state.refused.add("patients");
  if (!cards.includes("audit-card")) state.refused.add("windows");
  note($("role-note"), cards.length ? "" : `The ${role} role has no dashboard cards: users and ` +
    "grants are managed with `vitalchain users` and `vitalchain grants` or the admin API.");
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
  // Nothing is shown while the tab is hidden, so nothing is asked for (visibilitychange
  // refreshes as soon as it is shown again).
  if (state.refreshing || document.hidden) return;
  state.refreshing = true;
  try {
    const now = Date.now();
    const windowsDue = now - state.windowsAt >= SLOW_MS;
    if (windowsDue) state.windowsAt = now;
    await Promise.all([loadPatients(), windowsDue ? loadWindows() : null]);
    if (state.patientId && Date.now() - state.vitalsAt >= state.vitalsEvery) await loadVitals();
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
  // sickest first: the highest NEWS2 at the top, patients without a reading last
  const ranked = body.patients.slice().sort((a, b) =>
    (b.news2 ? b.news2.score : -1) - (a.news2 ? a.news2.score : -1)
    || a.patient_id.localeCompare(b.patient_id));
  for (const p of ranked) {
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
    vitalsCell(row, p);
    lastReadingCell(row, p.latest_time);
    integrityCell(row, p);
    cell(row, fmtShort(new Date(p.grant_until)).replace(/:\d\d /, " "), "until");
    const open = () => openPatient(p.patient_id);
    row.addEventListener("click", open);
    row.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
  }
  show($("patients"), body.patients.length > 0);
  note($("patients-note"), body.patients.length ? "" : "No patient has granted you access yet.");
  if (state.patientId) {
    updateProofTarget();
    showLatest();
  }
}

// The latest reading's vitals as numbers, each marked with the NEWS2 points it scores.
function vitalsCell(row, p) {
  const td = row.insertCell();
  td.className = "vitals";
  if (!p.latest) {
    td.textContent = "—";
    return;
  }
  const v = p.latest.vitals;
  const c = p.news2 ? p.news2.components : {};
  for (const vital of VITALS) {
    const span = document.createElement("span");
    span.className = `vital points-${c[vital.news2] || 0}`;
    span.dataset.vital = vital.key;
    const value = vital.key === "bp" ? `${fmt(v.sys, 0)}/${fmt(v.dia, 0)}` : fmt(v[vital.key], vital.digits);
    span.textContent = `${SHORT[vital.key]} ${value}${vital.unit === "%" ? "%" : ` ${vital.unit}`}`;
    span.title = `${vital.label}: NEWS2 ${c[vital.news2] || 0} point(s)`;
    td.append(span);
  }
}

function news2Tile(score) {
  const tile = document.createElement("div");
  tile.className = `tile news2 risk-${score.risk}`;
  tile.dataset.vital = "news2";
  const label = document.createElement("div");
  label.className = "label";
  label.textContent = "NEWS2";
  const value = document.createElement("div");
  value.className = "value";
  const num = document.createElement("span");
  num.className = "num";
  num.textContent = String(score.score);
  const unit = document.createElement("span");
  unit.className = "unit";
  unit.textContent = `${score.risk} risk`;
  value.append(num, " ", unit);
  const at = document.createElement("div");
  at.className = "at";
  at.textContent = score.response;
  tile.append(label, value, at);
  return tile;
}

const SHORT = { hr: "HR", spo2: "SpO₂", rr: "RR", temp_c: "T", bp: "BP" };

// The patient card's head: one tile per vital (number, unit, time) and the NEWS2 breakdown.
function showLatest() {
  const p = state.patients.get(state.patientId);
  const box = $("latest");
  box.replaceChildren();
  const tbody = $("news2-breakdown").tBodies[0];
  tbody.replaceChildren();
  if (!p || !p.latest) {
    box.textContent = "No verified reading yet.";
    $("news2-total").textContent = "—";
    $("news2-total").className = "badge";
    $("news2-risk").textContent = "";
    $("news2-note").textContent = "";
    return;
  }
  const v = p.latest.vitals;
  const t = new Date(p.latest.ts_us / 1000);
  const stale = Date.now() - t.getTime() > 120000;
  const c = p.news2.components;
  for (const vital of VITALS) {
    const tile = document.createElement("div");
    tile.className = `tile points-${c[vital.news2] || 0}${stale ? " stale" : ""}`;
    tile.dataset.vital = vital.key;
    const label = document.createElement("div");
    label.className = "label";
    label.textContent = vital.label;
    const value = document.createElement("div");
    value.className = "value";
    const num = document.createElement("span");
    num.className = "num";
    num.textContent = vital.key === "bp" ? `${fmt(v.sys, 0)}/${fmt(v.dia, 0)}` : fmt(v[vital.key], vital.digits);
    const unit = document.createElement("span");
    unit.className = "unit";
    unit.textContent = vital.unit;
    value.append(num, " ", unit);
    const at = document.createElement("div");
    at.className = "at";
    at.textContent = `${fmtTime(t, true)} · ${ageOf(t)}` +
      (p.latest.state === "received" ? " · received, not verified yet" : "") + (stale ? " · no newer reading" : "");
    tile.append(label, value, at);
    box.append(tile);
  }
  box.append(news2Tile(p.news2));
  const total = $("news2-total");
  total.textContent = String(p.news2.score);
  total.className = `badge risk-${p.news2.risk}`;
  $("news2-risk").textContent = `${p.news2.risk} risk: ${p.news2.response}`;
  for (const [key, label, value] of NEWS2_ROWS) {
    const row = tbody.insertRow();
    row.dataset.component = key;
    cell(row, label);
    cell(row, value(v));
    const points = cell(row, c[key], "points");
    points.classList.add(`points-${c[key]}`);
  }
  $("news2-note").textContent = `From the reading of ${fmtTime(t)} (${p.latest.device_id} · ` +
    `${p.latest.seq}). Not measured by the devices, so assumed: consciousness alert, breathing ` +
    "air — assess the patient; the real score can only be higher.";
}

// Verified reads: every reading carries its state (docs/API.md). Values of altered/unknown
// readings never reach the page; they are listed as withheld.
const STATE_TEXT = { anchored: "anchored", sealed: "sealed", received: "received · not verified",
                     altered: "altered", unknown: "unknown" };
const STATE_TITLE = {
  anchored: "matches its sealed leaf in the ledger; its window is anchored on chain",
  sealed: "matches its sealed leaf in the ledger; not anchored on chain yet",
  received: "received, its window is still open: shown at once, not verified yet",
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
    // which reading that is: an audit detail, kept small beside its state
    const id = document.createElement("span");
    id.className = "reading-id";
    id.textContent = `${p.latest.device_id} · ${p.latest.seq}`;
    td.append(id);
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
    const at = w.ts_us === null ? "time unknown" : fmtTime(new Date(w.ts_us / 1000));
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
  showLatest();
  await loadVitals();
}

function updateProofTarget() {
  const p = state.patients.get(state.patientId);
  const latest = p && p.latest;
  const provable = latest && latest.state !== "received";
  $("proof-btn").disabled = !provable;
  $("proof-target").textContent = latest
    ? `${latest.device_id} seq ${latest.seq}, ${fmtTime(new Date(latest.ts_us / 1000))}` +
      (provable ? "" : " — not sealed yet: no proof until its window seals")
    : "no reading to prove yet";
}

// --- vitals charts (uPlot) ---------------------------------------------------------------------
async function loadVitals() {
  const patientId = state.patientId;
  state.vitalsAt = Date.now();
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
  // One point of the chart is one interval: fetching the series more often than that would
  // only redraw its still-filling last point (the latest reading is in the tiles, every second).
  state.vitalsEvery = Math.max(SLOW_MS, body.interval_s * 1000);
  const n = body.points.length;
  const received = body.states ? body.states.received : 0;
  const what = pointMeaning(body.interval_s, body.points);
  note($("patient-note"), n ? `${n} points; ${what.sentence}` +
    (body.late.length ? `; ${body.late.length} late reading(s) in range` : "") +
    (received ? `; ${received} reading(s) received, not verified yet (window still open); ` +
      "the others checked against the ledger" : "; every reading checked against the ledger")
    : `No readings in the last ${minutes} min.`);
  showWithheld(body);
  $("live").textContent = `live · updated ${fmtTime(new Date(), true)}`;
  const { rows, gaps } = withGaps(body.points, body.interval_s);
  const xs = rows.map((r) => r.t);
  for (const vital of VITALS) {
    const data = [xs, ...vital.series.map((k) => rows.map((r) => (r.p ? r.p[k] ?? null : null)))];
    const scale = { min: start.getTime() / 1000, max: end.getTime() / 1000 };
    let chart = state.charts.get(vital.key);
    if (!chart) {
      chart = makeChart(vital, data);
      state.charts.set(vital.key, chart);
    }
    chart.batch(() => {
      chart.setData(data);  // rescales y (clinical range, widened for outliers)
      chart.setScale("x", scale);
    });
    // The newest plotted values, as text: what a screen reader (or a test) can check.
    const box = document.querySelector(`figure.chart[data-vital="${vital.key}"]`);
    const last = n ? body.points[n - 1] : null;
    box.dataset.latest = last ? vital.series.map((k) => last[k]).join("/") : "";
    box.dataset.gaps = String(gaps);
    box.querySelector(".sub").textContent = last
      ? `${what.short}` + (gaps ? ` · ${gaps} gap(s) with no readings` : " · no gaps")
      : "no readings in range";
  }
}

function seconds(s) {
  return s < 60 ? `${s} s` : s < 3600 ? `${s / 60} min` : `${s / 3600} h`;
}

// What one plotted point is: the API averages the verified readings of each interval.
function pointMeaning(interval, points) {
  const counts = points.map((p) => p.n);
  const most = counts.length ? Math.max(...counts) : 0;
  const least = counts.length ? Math.min(...counts) : 0;
  if (most <= 1) {
    return { short: `points: single readings (${seconds(interval)} grid)`,
             sentence: `each point is one raw reading (at most one per ${seconds(interval)} interval)` };
  }
  const spread = least === most ? `${most}` : `${least}–${most}`;
  return { short: `points: ${seconds(interval)} means`,
           sentence: `each point is the mean of the readings in a ${seconds(interval)} interval ` +
                     `(${spread} readings per point)` };
}

// A hole in the data must look like one: a null between two points farther apart than two
// steps (step: the interval, or the device's own spacing if it samples more sparsely) makes
// uPlot break the line (spanGaps false) instead of drawing a straight line across it.
function withGaps(points, interval) {
  const times = points.map((p) => p.ts_us / 1e6);
  const diffs = times.slice(1).map((t, i) => t - times[i]).sort((a, b) => a - b);
  const typical = diffs.length ? diffs[Math.floor(diffs.length / 2)] : interval;
  const step = Math.max(interval, typical);
  const rows = [];
  let gaps = 0;
  points.forEach((p, i) => {
    if (i && times[i] - times[i - 1] > 2 * step) {
      rows.push({ t: times[i - 1] + step, p: null });
      gaps += 1;
    }
    rows.push({ t: times[i], p });
  });
  return { rows, gaps, step };
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

// At least the vital's clinical range, widened (with a margin) only for values outside it.
function yRange(vital, dataMin, dataMax) {
  let [low, high] = vital.range;
  const pad = (high - low) * 0.05;
  if (dataMin !== null && dataMin !== undefined && dataMin < low) low = Math.floor(dataMin - pad);
  if (dataMax !== null && dataMax !== undefined && dataMax > high) high = Math.ceil(dataMax + pad);
  return [low, high];
}

// Shade the plot area by the NEWS2 points a value there would score, under the axes and lines.
function drawBands(u, vital) {
  const bands = NEWS2_BANDS[vital.bands];
  const { ctx } = u;
  const { left, width } = u.bbox;
  const ymin = u.scales.y.min;
  const ymax = u.scales.y.max;
  if (ymin === null || ymax === null || ymin === undefined) return;
  ctx.save();
  for (const [from, to, points] of bands) {
    if (!points) continue;
    const a = Math.max(from === null ? ymin : from, ymin);
    const b = Math.min(to === null ? ymax : to, ymax);
    if (b <= a) continue;
    const top = u.valToPos(b, "y", true);
    const bottom = u.valToPos(a, "y", true);
    ctx.fillStyle = BAND_FILL[points];
    ctx.fillRect(left, top, width, bottom - top);
  }
  ctx.restore();
}

const SERIES_LABEL = { hr: "Heart rate", spo2: "SpO₂", rr: "Respiration", temp_c: "Temperature",
                       sys: "Systolic", dia: "Diastolic" };

function lastIndex(values) {
  for (let i = values.length - 1; i >= 0; i -= 1) {
    if (values[i] !== null && values[i] !== undefined) return i;
  }
  return null;
}

function timeValue(u, v, si, idx) {
  const i = idx ?? lastIndex(u.data[1]);
  if (i === null) return "—";
  return `${fmtTime(new Date(u.data[0][i] * 1000), true)}${idx === null || idx === undefined ? " (last point)" : ""}`;
}

function clockLabel(s) {
  const p = parts(new Date(s * 1000));
  return `${p.hour}:${p.minute}`;
}

function makeChart(vital, data) {
  const box = document.createElement("figure");
  box.className = "chart";
  box.dataset.vital = vital.key;
  const caption = document.createElement("figcaption");
  const title = document.createElement("span");
  title.className = "title";
  title.textContent = `${vital.label} (${vital.unit})`;
  const sub = document.createElement("span");
  sub.className = "sub";
  caption.append(title, sub);
  box.append(caption);
  $("charts").append(box);
  const font = "12px system-ui, sans-serif";
  const opts = {
    width: chartWidth(box), height: CHART_HEIGHT,
    // the legend shows the point under the cursor, and the last point when there is none
    legend: { show: true, live: true },
    cursor: { points: { size: 6 } },
    scales: { x: { time: true }, y: { range: (u, lo, hi) => yRange(vital, lo, hi) } },
    axes: [
      { values: (u, splits) => splits.map(clockLabel), font, label: `local time (${zoneName()})`,
        labelSize: 16, labelFont: font },
      { size: 44, font },
    ],
    series: [{ label: "Time", value: timeValue }, ...vital.series.map((k) => ({
      label: SERIES_LABEL[k], stroke: COLOURS[k], width: 2, spanGaps: false,
      value: (u, v, si, idx) => {
        const i = idx ?? lastIndex(u.data[si]);
        const value = i === null ? null : u.data[si][i];
        return value === null || value === undefined ? "no reading" : `${fmt(value, vital.digits)} ${vital.unit}`;
      },
      points: { show: data[0].length < 60, size: 4 },
    }))],
    hooks: { drawClear: [(u) => drawBands(u, vital)] },
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
    cell(row, w.header.start_us ? fmtTime(new Date(w.header.start_us / 1000)) : null, "time");
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
  document.addEventListener("visibilitychange", () => { if (!document.hidden && state.me) refresh(); });
  $("proof-btn").addEventListener("click", () => {
    const p = state.patients.get(state.patientId);
    if (p && p.latest && p.latest.state !== "received") proveReading(p.latest.device_id, p.latest.seq);
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

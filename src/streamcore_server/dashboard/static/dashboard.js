// The live dashboard: log in, then the org's entries, totals and the service's metrics, kept
// current by the realtime stream (the JavaScript client, served from this origin).
import { StreamClient } from "./client/index.js";

const RECENT = 50; // entries shown
const METRICS_EVERY_MS = 2000;
const TOKEN_KEY = "streamcore.token";
const METRICS_TOKEN_KEY = "streamcore.metrics-token";

const $ = (id) => document.getElementById(id);
const state = {
  token: null,
  client: null,
  entries: new Map(), // "expense:12" -> the record, with its kind
  totals: new Map(), // propertyId -> {version, totals}
  metricsTimer: null,
  loads: 0,
};

class Unauthorized extends Error {}

async function api(path, { method = "GET", body, token = state.token, quiet = false } = {}) {
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const payload = await response.json().catch(() => null);
  if (response.status === 401 && token && !quiet) throw new Unauthorized(payload?.error?.message ?? "unauthorized");
  if (!response.ok) {
    const error = new Error(payload?.error?.message ?? `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return payload;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.append(td);
  return td;
}

function money(cents, currency) {
  try {
    const format = new Intl.NumberFormat(undefined, { style: "currency", currency });
    const digits = format.resolvedOptions().maximumFractionDigits;
    return format.format(cents / 10 ** digits);
  } catch {
    return `${cents} (minor units)`;
  }
}

function amount(cents, currency) {
  // The currency has its own column: show the number alone.
  try {
    const format = new Intl.NumberFormat(undefined, { style: "currency", currency, currencyDisplay: "code" });
    const digits = format.resolvedOptions().maximumFractionDigits;
    return new Intl.NumberFormat(undefined, { minimumFractionDigits: digits, maximumFractionDigits: digits }).format(cents / 10 ** digits);
  } catch {
    return String(cents);
  }
}

function notice(text) {
  const el = $("notice");
  el.textContent = text;
  el.hidden = !text;
}

function setStatus(kind, text) {
  const el = $("stream-status");
  el.dataset.state = kind;
  el.textContent = text;
}

// --- entries and totals ----------------------------------------------------------------------

function addEntry(kind, record) {
  state.entries.set(`${kind}:${record.id}`, { ...record, kind });
}

function setTotals(propertyId, totals, version) {
  const known = state.totals.get(propertyId);
  // Snapshots can arrive out of order; a stream state (versioned) beats an HTTP read (none).
  if (known && version !== null && known.version !== null && known.version > version) return;
  if (known && version === null && known.version !== null) return;
  state.totals.set(propertyId, { totals, version });
}

function renderEntries() {
  const rows = [...state.entries.values()]
    .sort((a, b) => (a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : b.id - a.id))
    .slice(0, RECENT);
  const body = $("entries").tBodies[0];
  body.replaceChildren(
    ...rows.map((r) => {
      const row = document.createElement("tr");
      row.className = r.kind;
      row.dataset.key = `${r.kind}:${r.id}`;
      cell(row, r.kind);
      cell(row, r.description || "—", "description");
      cell(row, amount(r.amountCents, r.currency), "num");
      cell(row, r.currency);
      cell(row, `#${r.propertyId}`);
      cell(row, r.category);
      cell(row, new Date(r.createdAt).toLocaleTimeString());
      return row;
    }),
  );
  $("entries-empty").hidden = rows.length > 0;
}

function renderTotals() {
  const body = $("totals").tBodies[0];
  const rows = [];
  for (const [propertyId, { totals }] of [...state.totals.entries()].sort((a, b) => a[0] - b[0])) {
    for (const t of totals) {
      const row = document.createElement("tr");
      row.dataset.property = String(propertyId);
      cell(row, `#${propertyId}`);
      cell(row, t.currency);
      cell(row, money(t.expensesCents, t.currency), "num");
      cell(row, money(t.revenuesCents, t.currency), "num");
      cell(row, money(t.revenuesCents - t.expensesCents, t.currency), "num");
      rows.push(row);
    }
  }
  body.replaceChildren(...rows);
}

function render() {
  renderEntries();
  renderTotals();
}

/** Read the org's state over HTTP: the recent entries and their properties' totals. */
async function load() {
  const [expenses, revenues] = await Promise.all([
    api(`/v1/finance/expenses?limit=${RECENT}`),
    api(`/v1/finance/revenues?limit=${RECENT}`),
  ]);
  for (const r of expenses.items) addEntry("expense", r);
  for (const r of revenues.items) addEntry("revenue", r);
  const properties = new Set([...state.entries.values()].map((r) => r.propertyId));
  const summaries = await Promise.all(
    [...properties].map((id) => api(`/v1/finance/summary?propertyId=${id}`)),
  );
  for (const s of summaries) setTotals(s.propertyId, s.totals, null);
  state.loads += 1;
  document.body.dataset.loads = String(state.loads);
  render();
}

function onStreamEvents(events) {
  for (const event of events) {
    if (event.type === "expense.created") addEntry("expense", event.data);
    else if (event.type === "revenue.created") addEntry("revenue", event.data);
    else if (event.type === "property.totals")
      setTotals(event.data.propertyId, event.data.totals, event.data.version ?? null);
  }
  render();
}

// --- metrics ---------------------------------------------------------------------------------

function ms(value) {
  return value == null ? "–" : `${value < 10 ? value.toFixed(1) : Math.round(value)} ms`;
}

function sloValue(slo) {
  if (slo.current == null) return "–";
  if (slo.unit === "seconds") return ms(slo.current * 1000);
  return `${(slo.current * 100).toFixed(slo.current > 0.99 ? 2 : 1)} %`;
}

function sloTarget(slo) {
  const target = slo.unit === "seconds" ? ms(slo.target * 1000) : `${(slo.target * 100).toFixed(2)} %`;
  return `${slo.comparison} ${target}`;
}

async function refreshMetrics() {
  let m;
  try {
    // Open unless the server sets METRICS_TOKEN; then the operator's token, not the user's.
    const token = sessionStorage.getItem(METRICS_TOKEN_KEY);
    m = await api("/v1/system/metrics/aggregated", { token, quiet: true });
  } catch (error) {
    const refused = error.status === 401 || error instanceof Unauthorized;
    $("metrics-token-form").hidden = !refused;
    $("metrics-at").textContent = refused ? "" : "metrics unavailable; retrying";
    return;
  }
  $("metrics-token-form").hidden = true;
  const d = m.realtime.delivery_latency ?? {};
  $("p50").textContent = ms(d.p50_ms);
  $("p95").textContent = ms(d.p95_ms);
  $("p99").textContent = ms(d.p99_ms);
  $("delivered").textContent = String(d.count ?? 0);
  $("slo").tBodies[0].replaceChildren(
    ...m.slo.map((slo) => {
      const row = document.createElement("tr");
      row.dataset.slo = slo.name;
      cell(row, slo.description);
      cell(row, sloTarget(slo));
      cell(row, sloValue(slo), "num");
      const met = cell(row, slo.met == null ? "n/a" : slo.met ? "met" : "missed");
      met.className = slo.met == null ? "unknown" : slo.met ? "met" : "missed";
      if (slo.reason) met.title = slo.reason;
      return row;
    }),
  );
  // generated_at is in seconds since the epoch.
  $("metrics-at").textContent = `metrics at ${new Date(m.generated_at * 1000).toLocaleTimeString()}`;
}

function scheduleMetrics() {
  clearTimeout(state.metricsTimer);
  state.metricsTimer = setTimeout(async () => {
    await refreshMetrics();
    if (state.token) scheduleMetrics();
  }, METRICS_EVERY_MS);
}

// --- the stream ------------------------------------------------------------------------------

function streamUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/v2/realtime/stream`;
}

const CODEC_NAMES = ["none", "zstd", "gzip"];

function connect() {
  // zstd (the vendored fzstd) unless the address asks otherwise: /dashboard?codec=gzip uses the
  // browser's DecompressionStream, ?codec=none nothing.
  const asked = new URLSearchParams(location.search).get("codec");
  const codec = CODEC_NAMES.includes(asked) ? asked : "zstd";
  const client = new StreamClient(streamUrl(), () => state.token, { codec });
  const frames = { none: 0, zstd: 0, gzip: 0 };
  client.addEventListener("hello", () => setStatus("live", "live"));
  client.addEventListener("events", (e) => {
    // Frames applied per codec actually used (small ones go raw on any connection).
    frames[CODEC_NAMES[e.detail.codec]] += 1;
    document.body.dataset.frames = JSON.stringify(frames);
    onStreamEvents(e.detail.events);
  });
  client.addEventListener("error", (e) => notice(`The stream sent a frame this page cannot read: ${e.detail.error}`));
  client.addEventListener("reset", async (e) => {
    // Events were lost to this page: what it shows may be stale. Read it all again.
    state.entries.clear();
    state.totals.clear();
    render();
    try {
      await load();
      notice(`The stream was reset (${e.detail.reason}); reloaded at ${new Date().toLocaleTimeString()}.`);
      document.body.dataset.reset = e.detail.reason;
    } catch (error) {
      handleError(error);
    }
  });
  client.addEventListener("disconnect", async (e) => {
    if (!e.detail.willRetry) return;
    setStatus("reconnecting", `reconnecting (${e.detail.code})…`);
    if (e.detail.code === 1006 && state.token) {
      // A browser is not told why a handshake failed: ask the API whether the token still holds.
      try {
        await api("/v1/finance/expenses?limit=1");
      } catch (error) {
        if (error instanceof Unauthorized) handleError(error);
      }
    }
  });
  client.addEventListener("closed", (e) => {
    if (e.detail.fatal) setStatus("stopped", `stopped (${e.detail.code})`);
  });
  client.start();
  return client;
}

// --- session ---------------------------------------------------------------------------------

function handleError(error) {
  if (error instanceof Unauthorized) {
    logout("Your session ended: log in again.");
    return;
  }
  notice(`Could not load: ${error.message}`);
}

async function enter(token) {
  state.token = token;
  $("login").hidden = true;
  $("live").hidden = false;
  $("session").hidden = false;
  setStatus("connecting", "connecting…");
  state.client = connect(); // first, so nothing published while the page loads is missed
  refreshMetrics().then(scheduleMetrics);
  try {
    await load();
  } catch (error) {
    handleError(error);
  }
}

function logout(message = "") {
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  state.client?.close();
  state.client = null;
  clearTimeout(state.metricsTimer);
  state.entries.clear();
  state.totals.clear();
  render();
  notice("");
  $("live").hidden = true;
  $("session").hidden = true;
  $("login").hidden = false;
  const error = $("login-error");
  error.textContent = message;
  error.hidden = !message;
  $("email").focus();
}

$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault(); // Enter in either field submits the form
  const error = $("login-error");
  error.hidden = true;
  try {
    const body = await api("/auth/login", {
      method: "POST",
      body: { email: $("email").value, password: $("password").value },
      token: null,
    });
    sessionStorage.setItem(TOKEN_KEY, body.accessToken);
    $("password").value = "";
    await enter(body.accessToken);
  } catch (failure) {
    error.textContent = failure.message;
    error.hidden = false;
  }
});

$("logout").addEventListener("click", () => logout());

$("metrics-token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(METRICS_TOKEN_KEY, $("metrics-token").value);
  $("metrics-token").value = "";
  refreshMetrics();
});

const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) enter(saved);
else logout();

// The live spend page: today's totals (UTC) from the ledger's WatchSpend (GET stats/stream, server-sent
// events read with fetch so an API key can go in the Authorization header), breakdowns from GET stats.
// Every value from the ledger is written with textContent, never as HTML: caller names are free text.
"use strict";

const KEY_STORAGE = "llmroute.apiKey"; // sessionStorage: gone when the tab closes
const MAX_POINTS = 5000;
const TABLE_ROWS = 10;

const state = {
  day: null, // the UTC day (YYYY-MM-DD) the chart shows
  points: [], // [seconds, spend, baseline, gross, net], cumulative since 00:00 UTC
  chart: null,
  tablesFor: -1, // totals.requests when the tables were last read
  tablesBusy: false,
  tablesAgain: false,
};

function headers() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: "Bearer " + key } : {};
}

function setStatus(text, kind) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.dataset.state = kind;
}

function usd(value) {
  const magnitude = Math.abs(value);
  const digits = magnitude === 0 ? 2 : magnitude < 0.01 ? 6 : magnitude < 100 ? 4 : 2;
  return (value < 0 ? "−$" : "$") + magnitude.toFixed(digits);
}

function percent(value) {
  return (100 * value).toFixed(1) + "%";
}

function show(id, value, text) {
  const element = document.getElementById(id);
  element.dataset.value = String(value);
  element.textContent = text;
}

function showTotals(totals) {
  show("requests", totals.requests, totals.requests.toLocaleString("en-US"));
  show("spend", totals.cost_usd, usd(totals.cost_usd));
  show("baseline", totals.baseline_cost_usd, usd(totals.baseline_cost_usd));
  show("gross", totals.gross_savings_usd, usd(totals.gross_savings_usd));
  show("net", totals.net_savings_usd, usd(totals.net_savings_usd));
  show("escalation", totals.escalation_rate, percent(totals.escalation_rate));
}

class HttpError extends Error {
  constructor(status, body) {
    const message = (body && body.error && body.error.message) || "HTTP " + status;
    super(message);
    this.status = status;
  }
}

async function getJson(path) {
  const reply = await fetch(path, { headers: headers(), cache: "no-store" });
  const body = await reply.json().catch(() => null);
  if (!reply.ok) throw new HttpError(reply.status, body);
  return body;
}

function utcDay(date) {
  return date.toISOString().slice(0, 10);
}

// ---- the chart --------------------------------------------------------------------------------------

function chartSize() {
  const box = document.getElementById("chart");
  return { width: Math.max(box.clientWidth, 300), height: 260 };
}

function makeChart() {
  // Steps, not slopes: between two snapshots the totals rose at times nobody observed.
  const paths = uPlot.paths.stepped({ align: 1 });
  const series = [
    {},
    { label: "spend", stroke: "#dc2626", width: 2, paths },
    { label: "baseline", stroke: "#6b7280", width: 2, dash: [6, 4], paths },
    { label: "gross savings", stroke: "#2563eb", width: 2, paths },
    { label: "net savings", stroke: "#059669", width: 2, paths },
  ];
  const options = {
    ...chartSize(),
    series,
    scales: { x: { time: true } },
    axes: [{}, { values: (u, ticks) => ticks.map((t) => "$" + t.toPrecision(3)) , size: 70 }],
    legend: { live: true },
  };
  const chart = new uPlot(options, columns(), document.getElementById("chart"));
  window.addEventListener("resize", () => chart.setSize(chartSize()));
  return chart;
}

function columns() {
  const out = [[], [], [], [], []];
  for (const point of state.points) point.forEach((v, i) => out[i].push(v));
  return out;
}

function redraw() {
  if (state.points.length > MAX_POINTS) state.points.splice(1, state.points.length - MAX_POINTS);
  if (state.chart) state.chart.setData(columns());
}

function point(seconds, totals) {
  return [seconds, totals.cost_usd, totals.baseline_cost_usd, totals.gross_savings_usd, totals.net_savings_usd];
}

// The history: cumulative totals at the end of each whole hour since midnight (GetStats by hour),
// from the start of the first hour with traffic (the current hour's, when there is none before).
function history(stats, now) {
  const hours = (stats.breakdowns.find((b) => b.group_by === "GROUP_BY_HOUR") || { groups: [] }).groups;
  hours.sort((a, b) => a.key.localeCompare(b.key));
  const sum = { cost_usd: 0, baseline_cost_usd: 0, gross_savings_usd: 0, net_savings_usd: 0 };
  const first = hours.find((g) => g.totals.requests > 0);
  const start = first ? Date.parse(first.key) : Math.floor(now / 3600000) * 3600000;
  const points = [point(start / 1000, sum)];
  for (const group of hours) {
    const end = Date.parse(group.key) + 3600 * 1000;
    if (end > now) break; // the current hour comes from the live snapshots
    for (const name of Object.keys(sum)) sum[name] += group.totals[name];
    points.push(point(end / 1000, sum));
  }
  return points;
}

// ---- the tables ---------------------------------------------------------------------------------------

function fillTable(id, rows) {
  const body = document.querySelector("#" + id + " tbody");
  const fresh = document.createElement("tbody");
  for (const cells of rows) {
    const row = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      td.textContent = cell;
      row.appendChild(td);
    }
    fresh.appendChild(row);
  }
  body.replaceWith(fresh);
}

function groups(stats, dimension) {
  const found = stats.breakdowns.find((b) => b.group_by === dimension);
  return found ? found.groups : [];
}

function showTables(stats) {
  const total = stats.totals.requests || 1;
  const tiers = groups(stats, "GROUP_BY_TIER").slice().sort((a, b) => b.totals.requests - a.totals.requests);
  fillTable("tiers", tiers.map((g) => [g.key.replace(/^TIER_/, "").toLowerCase(), g.totals.requests, percent(g.totals.requests / total), usd(g.totals.cost_usd)]));
  // The ledger orders groups by descending cost.
  fillTable(
    "callers",
    groups(stats, "GROUP_BY_CALLER").slice(0, TABLE_ROWS).map((g) => [g.key || "(none)", g.totals.requests, usd(g.totals.cost_usd), usd(g.totals.net_savings_usd)]),
  );
  fillTable(
    "models",
    groups(stats, "GROUP_BY_MODEL").slice(0, TABLE_ROWS).map((g) => [g.key, g.totals.attempts, usd(g.totals.cost_usd)]),
  );
}

function todayQuery(groupBy) {
  const midnight = new Date();
  midnight.setUTCHours(0, 0, 0, 0);
  return { midnight, path: "stats?since=" + encodeURIComponent(midnight.toISOString()) + "&group_by=" + groupBy };
}

// Re-read the breakdowns when the request count moved; one read at a time, the last change re-read.
async function refreshTables(requests) {
  if (requests === state.tablesFor) return;
  if (state.tablesBusy) {
    state.tablesAgain = true;
    return;
  }
  state.tablesBusy = true;
  try {
    const stats = await getJson(todayQuery("tier,caller,model").path);
    state.tablesFor = requests;
    showTables(stats);
  } catch (error) {
    console.warn("stats", error);
  } finally {
    state.tablesBusy = false;
    if (state.tablesAgain) {
      state.tablesAgain = false;
      refreshTables(Number(document.getElementById("requests").dataset.value));
    }
  }
}

// ---- live -----------------------------------------------------------------------------------------------

async function load() {
  const { midnight, path } = todayQuery("hour,tier,caller,model");
  const stats = await getJson(path);
  state.day = utcDay(midnight);
  state.points = history(stats, Date.now());
  state.tablesFor = stats.totals.requests;
  showTables(stats);
  if (!state.chart) state.chart = makeChart();
  redraw();
}

function onSnapshot(snapshot) {
  const time = new Date(snapshot.time);
  if (state.day !== utcDay(time)) {
    // A new UTC day: the snapshot's window restarted at midnight; so does the chart.
    load().catch((error) => console.warn("load", error));
    return;
  }
  showTotals(snapshot.totals);
  state.points.push(point(time.getTime() / 1000, snapshot.totals));
  redraw();
  document.getElementById("updated").textContent = "Last snapshot " + time.toISOString().slice(11, 19) + " UTC.";
  refreshTables(snapshot.totals.requests);
}

// Server-sent events over fetch: EventSource cannot send an Authorization header.
async function watch() {
  const reply = await fetch("stats/stream", { headers: headers(), cache: "no-store" });
  if (!reply.ok) throw new HttpError(reply.status, await reply.json().catch(() => null));
  setStatus("live", "live");
  const reader = reply.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the stream ended");
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (!data) continue;
      const parsed = JSON.parse(data);
      if (event === "error") throw new Error(parsed.error ? parsed.error.message : "stream error");
      onSnapshot(parsed);
    }
  }
}

async function run() {
  let wait = 1000;
  for (;;) {
    try {
      if (!state.chart) await load();
      await watch();
    } catch (error) {
      if (error instanceof HttpError && (error.status === 401 || error.status === 403)) {
        setStatus(error.status === 401 ? "an API key is needed" : "this key may not read stats", "error");
        document.getElementById("key").focus();
        await keyEntered();
        wait = 1000;
        continue;
      }
      setStatus("reconnecting: " + error.message, "error");
    }
    await new Promise((resolve) => setTimeout(resolve, wait));
    wait = Math.min(wait * 2, 30000);
  }
}

let keyWaiter = null;
function keyEntered() {
  return new Promise((resolve) => (keyWaiter = resolve));
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("key");
  if (input.value) sessionStorage.setItem(KEY_STORAGE, input.value.trim());
  else sessionStorage.removeItem(KEY_STORAGE);
  input.value = "";
  input.placeholder = sessionStorage.getItem(KEY_STORAGE) ? "key set for this tab" : "lrk_… (only with keys)";
  if (keyWaiter) {
    keyWaiter();
    keyWaiter = null;
  }
});

run();

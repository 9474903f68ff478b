"""The dashboard: one self-contained page (no external assets: lb often runs where nothing
outside is reachable) that polls /api/status every second, and /api/series and /api/fleet
every five (the charts and the fleet table, dashboard_charts.py). Service and backend rates
are lb's own (the series' last point); route and listener rates come from successive polls.
Held in a module rather than a data file so that every kind of install ships it."""

from .dashboard_charts import CHARTS_CSS, CHARTS_JS

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lb dashboard</title>
<style>
:root {
  --bg: #0e1217; --panel: #161b22; --panel2: #1c222b; --line: #2a323d; --text: #dde3ea;
  --muted: #8d98a7; --green: #2fbf71; --amber: #f0a202; --red: #ef5350; --blue: #58a6ff;
  --mono: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { display: flex; align-items: center; gap: 18px; padding: 14px 24px;
  border-bottom: 1px solid var(--line); background: var(--panel); position: sticky; top: 0;
  z-index: 2; }
.logo { font-weight: 700; font-size: 20px; letter-spacing: .5px; }
.logo span { color: var(--blue); }
.meta { color: var(--muted); font-size: 13px; }
.spacer { flex: 1; }
.pill { display: inline-flex; align-items: center; gap: 6px; padding: 2px 10px;
  border-radius: 999px; font-size: 12px; font-weight: 600; border: 1px solid var(--line);
  background: var(--panel2); white-space: nowrap; }
.pill.ok { color: var(--green); border-color: #1f5f3d; }
.pill.warn { color: var(--amber); border-color: #6b4c0a; }
.pill.bad { color: var(--red); border-color: #6e2727; }
.pill.info { color: var(--blue); border-color: #1f4470; }
.live::before { content: ""; width: 8px; height: 8px; border-radius: 50%;
  background: currentColor; display: inline-block; }
main { padding: 20px 24px 40px; max-width: 1600px; margin: 0 auto; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 14px;
  margin-bottom: 22px; }
.tile { background: var(--panel); border: 1px solid var(--line); border-radius: 10px;
  padding: 12px 16px; }
.tile .k { color: var(--muted); font-size: 12px; text-transform: uppercase;
  letter-spacing: .6px; }
.tile .v { font-size: 26px; font-weight: 650; margin-top: 2px; font-variant-numeric: tabular-nums; }
.tile .v small { font-size: 13px; color: var(--muted); font-weight: 400; }
h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .8px; color: var(--muted);
  margin: 26px 0 10px; font-weight: 600; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(580px, 1fr)); gap: 16px;
  align-items: start; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 12px;
  overflow: hidden; }
.card.alert { border-color: #6e2727; }
.card-head { padding: 12px 16px 10px; border-bottom: 1px solid var(--line); }
.card-title { display: flex; align-items: center; gap: 8px; flex-wrap: wrap; }
.card-title b { font-size: 16px; margin-right: 4px; }
.stats { display: flex; gap: 22px; margin-top: 8px; color: var(--muted); font-size: 13px; }
.stats b { color: var(--text); font-variant-numeric: tabular-nums; font-size: 15px; }
.bar { display: flex; height: 6px; border-radius: 3px; overflow: hidden; margin-top: 10px;
  background: var(--panel2); }
.bar i { display: block; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th { text-align: left; color: var(--muted); font-weight: 500; font-size: 12px;
  padding: 7px 8px; border-bottom: 1px solid var(--line); white-space: nowrap; }
td { padding: 7px 8px; border-bottom: 1px solid #20262f; vertical-align: middle; }
th:first-child, td:first-child { padding-left: 16px; }
th:last-child, td:last-child { padding-right: 16px; }
tr:last-child td { border-bottom: 0; }
td.num, th.num { text-align: right; }
.name { font-family: var(--mono); font-size: 13px; white-space: nowrap; }
.dot { width: 10px; height: 10px; border-radius: 50%; display: inline-block;
  margin-right: 8px; vertical-align: -1px; }
.s-up { color: var(--green); } .s-draining { color: var(--amber); } .s-down { color: var(--red); }
.bg-up { background: var(--green); } .bg-draining { background: var(--amber); }
.bg-down { background: var(--red); }
.reason { color: var(--muted); font-size: 11px; line-height: 1.3; max-width: 230px; }
.err { color: var(--red); font-weight: 600; }
.muted { color: var(--muted); }
button { background: transparent; color: var(--muted); border: 1px solid var(--line);
  border-radius: 6px; padding: 2px 8px; font-size: 12px; cursor: pointer; }
button:hover { color: var(--text); border-color: var(--muted); }
.panel { background: var(--panel); border: 1px solid var(--line); border-radius: 12px;
  overflow: hidden; }
.errors { background: #2a1416; border: 1px solid #6e2727; color: #ffb4b4; border-radius: 10px;
  padding: 10px 14px; margin-bottom: 18px; font-family: var(--mono); font-size: 12px;
  white-space: pre-wrap; }
#login { display: none; max-width: 420px; margin: 80px auto; background: var(--panel);
  border: 1px solid var(--line); border-radius: 12px; padding: 22px; }
#login input { width: 100%; margin: 10px 0; padding: 8px; background: var(--bg);
  color: var(--text); border: 1px solid var(--line); border-radius: 6px; }
/*CHARTS_CSS*/
</style>
</head>
<body>
<header>
  <div class="logo">l<span>b</span></div>
  <div class="meta" id="meta">connecting…</div>
  <div class="spacer"></div>
  <div id="config"></div>
  <div id="live" class="pill warn live">connecting</div>
</header>
<div id="login">
  <b>Admin token required</b>
  <div class="meta">This lb protects its admin API with a bearer token.</div>
  <input id="token" type="password" placeholder="token" autocomplete="off">
  <button id="login-btn">Use token</button>
</div>
<main id="app"></main>
<script>
"use strict";
const POLL_MS = 1000;
const WINDOW_S = 5;  // rates are averaged over this many seconds of polls
let history = [];    // [{time, counters}] of recent polls, oldest first
let rates = {};      // key -> {rps, err}
let last = null;

const esc = (v) => String(v ?? "").replace(/[&<>"']/g,
  (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const token = () => sessionStorage.getItem("lb-admin-token") || "";
const headers = () => token() ? {"Authorization": "Bearer " + token()} : {};
/*CHARTS_JS*/

function fmtRate(x) {
  if (x === null || x === undefined) return "&ndash;";
  if (x >= 10000) return (x / 1000).toFixed(1) + "k";
  return x >= 10 ? x.toFixed(0) : x.toFixed(1);
}
function fmtPct(x) {
  if (x === null || x === undefined) return "&ndash;";
  const s = (x * 100).toFixed(x >= 0.1 ? 0 : 1) + "%";
  return x > 0 ? `<span class="err">${s}</span>` : s;
}
function fmtAge(s) {
  if (s === null || s === undefined) return "never";
  s = Math.max(0, Math.round(s));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor(s % 3600 / 60) + "m";
  return Math.floor(s / 86400) + "d " + Math.floor(s % 86400 / 3600) + "h";
}
function fmtTime(t) { return new Date(t * 1000).toLocaleString(); }

// Requests and errors per backend: exact counts when metrics are on, picks and failed
// attempts otherwise.
function counters(b) {
  return b.requests === null ? [b.selected, b.failures] : [b.requests, b.errors];
}

function computeRates(st) {
  const cur = {};
  for (const s of st.services) {
    let sr = 0, se = 0;
    for (const b of s.backends) {
      const [r, e] = counters(b);
      cur["b:" + s.name + "/" + b.name] = [r, e];
      sr += r; se += e;
    }
    cur["s:" + s.name] = [sr, se];
  }
  for (const r of st.routes) if (r.requests !== null) cur["r:" + r.name] = [r.requests, r.errors];
  for (const l of st.listeners) cur["l:" + l.name] = [l.accepted, 0];
  // Compare with the oldest poll still inside the window: smoother than poll-to-poll.
  while (history.length > 1 && st.time - history[1].time >= WINDOW_S) history.shift();
  const base = history[0];
  if (base && st.time > base.time) {
    const dt = st.time - base.time;
    rates = {};
    for (const k in cur) {
      const p = base.counters[k];
      if (!p) continue;
      const dr = Math.max(0, cur[k][0] - p[0]), de = Math.max(0, cur[k][1] - p[1]);
      // No requests in the window: no error rate to show, rather than a reassuring 0%.
      rates[k] = {rps: dr / dt, err: dr > 0 ? Math.min(1, de / dr) : (de > 0 ? 1 : null)};
    }
  }
  history.push({time: st.time, counters: cur});
}
const rate = (k) => liveRate(k) || rates[k] || {rps: null, err: null};

function pill(cls, text, title) {
  return `<span class="pill ${cls}"${title ? ` title="${esc(title)}"` : ""}>${esc(text)}</span>`;
}
function breakerPill(state, prefix) {
  if (!state) return "";
  const cls = state === "closed" ? "ok" : state === "open" ? "bad" : "warn";
  return pill(cls, (prefix || "breaker ") + state.replace("_", "-"));
}

function renderService(s) {
  const r = rate("s:" + s.name);
  const total = s.backends.length || 1;
  const badges = [pill("info", s.discovery)];
  const d = s.discovery_status;
  if (d) {
    badges.push(d.stale
      ? pill("bad", "stale " + fmtAge(d.age_seconds), d.last_error || "")
      : pill("ok", "synced " + fmtAge(d.age_seconds) + " ago"));
  }
  if (s.panic) badges.push(pill("bad", "panic"));
  if (s.breaker) badges.push(breakerPill(s.breaker.state));
  if (s.outlier && s.outlier.ejected) badges.push(pill("bad", s.outlier.ejected + " ejected"));
  if (s.fallback) badges.push(pill("", "fallback → " + s.fallback));
  const alert = s.panic || s.counts.down > 0 || (s.breaker && s.breaker.state !== "closed")
    || (d && d.stale);
  const rows = s.backends.map((b) => {
    const br = rate("b:" + s.name + "/" + b.name);
    const color = backendColor(s.name, b.name);
    const swatch = color ? `<i class="swatch" style="background:${color}"></i>` : "";
    const reason = b.reason && b.reason !== b.state
      ? `<div class="reason">${esc(b.reason)}</div>` : "";
    const act = b.drained ? "undrain" : "drain";
    return `<tr data-backend="${esc(b.name)}" data-state="${esc(b.state)}">
      <td class="name"><span class="dot bg-${esc(b.state)}"></span>${swatch}${esc(b.name)}</td>
      <td><div class="s-${esc(b.state)}">${esc(b.state)}</div>${reason}</td>
      <td class="num">${b.weight}</td>
      <td class="num">${b.in_flight}</td>
      <td class="num">${fmtRate(br.rps)}</td>
      <td class="num">${fmtPct(br.err)}</td>
      <td>${breakerPill(b.breaker, " ") || '<span class="muted">&ndash;</span>'}</td>
      <td class="num"><button data-act="${act}" data-svc="${esc(s.name)}"
        data-b="${esc(b.name)}">${act}</button></td></tr>`;
  }).join("");
  const seg = (st) => s.counts[st]
    ? `<i class="bg-${st}" style="width:${100 * s.counts[st] / total}%"></i>` : "";
  return `<section class="card${alert ? " alert" : ""}" data-service="${esc(s.name)}">
    <div class="card-head">
      <div class="card-title"><b>${esc(s.name)}</b>${badges.join("")}</div>
      <div class="stats">
        <span><b>${fmtRate(r.rps)}</b> req/s</span>
        <span><b>${fmtPct(r.err)}</b> errors</span>
        <span><b>${s.in_flight}</b> in flight</span>
        <span><b class="s-up">${s.counts.up}</b> up · <b class="s-draining">${s.counts.draining}
          </b> draining · <b class="s-down">${s.counts.down}</b> down</span>
      </div>
      <div class="bar">${seg("up")}${seg("draining")}${seg("down")}</div>
    </div>
    ${serviceCharts(s)}
    <table><thead><tr><th>backend</th><th>state</th><th class="num">weight</th>
      <th class="num">in flight</th><th class="num">req/s</th><th class="num">errors</th>
      <th>breaker</th><th class="num"></th></tr></thead>
    <tbody>${rows || '<tr><td colspan="8" class="muted">no backends</td></tr>'}</tbody></table>
  </section>`;
}

function routeTarget(r) {
  if (r.action === "service") return "→ " + esc(r.service);
  if (r.action === "split") return "split " + r.split.map(
    (t) => esc(t.service) + " " + t.weight).join(" / ");
  return esc(r.action) + " " + esc(r.status);
}

function render(st) {
  last = st;
  computeRates(st);
  document.getElementById("meta").textContent =
    `v${st.version} · picker ${st.picker} · pid ${st.pid} · up ${fmtAge(st.uptime_seconds)}`;
  const c = st.config;
  document.getElementById("config").innerHTML =
    pill("info", "config " + c.hash.slice(0, 12), c.files.join("\\n")) + " " +
    (c.last_reload_ok ? pill("ok", "last reload ok")
                      : pill("bad", "last reload failed", c.last_reload_errors.join("\\n")));
  let rps = 0, errs = 0, any = false, inflight = 0, up = 0, all = 0;
  for (const s of st.services) {
    const r = rate("s:" + s.name);
    if (r.rps !== null) { any = true; rps += r.rps; errs += r.rps * r.err; }
    inflight += s.in_flight; up += s.counts.up; all += s.backends.length;
  }
  const conns = st.listeners.reduce((a, l) => a + l.connections, 0);
  const tiles = [
    ["requests / s", fmtRate(any ? rps : null)],
    ["error rate", fmtPct(any ? (rps > 0 ? errs / rps : 0) : null)],
    ["in flight", inflight],
    ["client connections", conns],
    ["backends up", `${up}<small> / ${all}</small>`],
    ["config loaded", `${fmtAge(st.time - c.loaded_at)}<small> ago</small>`],
  ];
  const errors = c.last_reload_ok ? "" : `<div class="errors">last reload failed:\\n${
    c.last_reload_errors.map(esc).join("\\n")}</div>`;
  const routes = st.routes.map((r) => {
    const rr = rate("r:" + r.name);
    const path = r.path ? `${esc(r.path.kind)} ${esc(r.path.value)}` : "any";
    return `<tr><td class="name">${esc(r.name)}</td>
      <td class="name">${r.hosts.length ? r.hosts.map(esc).join(", ") : "any"}</td>
      <td class="name">${path}${r.methods.length ? " · " + r.methods.map(esc).join(",") : ""}</td>
      <td>${routeTarget(r)}</td><td class="num">${fmtRate(rr.rps)}</td>
      <td class="num">${fmtPct(rr.err)}</td></tr>`;
  }).join("");
  const listeners = st.listeners.map((l) => `<tr><td class="name">${esc(l.name)}</td>
    <td class="name">${esc(l.bind)}${l.tls ? " · tls" : ""}</td>
    <td class="num">${l.connections}</td><td class="num">${fmtRate(rate("l:" + l.name).rps)}</td>
    <td class="name">${esc(l.access_log || "off")}</td></tr>`).join("");
  document.getElementById("app").innerHTML = `${errors}
    <div class="tiles">${tiles.map(([k, v]) =>
      `<div class="tile"><div class="k">${k}</div><div class="v">${v}</div></div>`).join("")}
    </div>
    ${renderFleet(fleet)}
    <h2>Services</h2>
    <div class="grid">${st.services.map(renderService).join("") ||
      '<div class="muted">no services</div>'}</div>
    <h2>Routes</h2>
    <div class="panel"><table><thead><tr><th>route</th><th>hosts</th><th>match</th>
      <th>action</th><th class="num">req/s</th><th class="num">errors</th></tr></thead>
      <tbody>${routes || '<tr><td colspan="6" class="muted">no routes</td></tr>'}</tbody>
    </table></div>
    <h2>Listeners</h2>
    <div class="panel"><table><thead><tr><th>listener</th><th>bind</th>
      <th class="num">connections</th><th class="num">new conns / s</th><th>access log</th>
      </tr></thead><tbody>${listeners}</tbody></table></div>`;
}

function setLive(ok, text) {
  const el = document.getElementById("live");
  el.className = "pill live " + (ok ? "ok" : "bad");
  el.textContent = text;
}

async function poll() {
  try {
    const due = polls++ % SERIES_EVERY === 0;
    const [resp, se, fl] = await Promise.all([
      fetch("/api/status", {headers: headers(), cache: "no-store"}),
      due ? getJSON("/api/series?window=15m") : null,
      due ? getJSON("/api/fleet") : null,
    ]);
    if (se) takeSeries(se);
    if (fl) fleet = fl;
    if (resp.status === 401) {
      document.getElementById("login").style.display = "block";
      setLive(false, "token needed");
      return;  // polling resumes once a token is entered
    }
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    render(await resp.json());
    setLive(true, "live");
  } catch (e) {
    setLive(false, last ? "connection lost" : "unreachable");
  }
  setTimeout(poll, POLL_MS);
}

document.getElementById("login-btn").addEventListener("click", () => {
  sessionStorage.setItem("lb-admin-token", document.getElementById("token").value);
  document.getElementById("login").style.display = "none";
  polls = 0;  // read the series and the fleet at once
  poll();
});

document.getElementById("app").addEventListener("click", async (ev) => {
  const btn = ev.target.closest("button[data-act]");
  if (!btn) return;
  const {act, svc, b} = btn.dataset;
  if (act === "drain" && !confirm(`Drain ${b} of ${svc}? It stops getting new requests.`)) {
    return;
  }
  const url = `/api/backends/${encodeURIComponent(svc)}/${encodeURIComponent(b)}/${act}`;
  const resp = await fetch(url, {method: "POST", headers: headers()});
  if (!resp.ok) alert(`${act} failed: HTTP ${resp.status}`);
});

poll();
</script>
</body>
</html>
"""

PAGE = _PAGE.replace("/*CHARTS_CSS*/", CHARTS_CSS).replace("/*CHARTS_JS*/", CHARTS_JS)

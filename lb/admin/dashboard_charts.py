"""The dashboard's charts and fleet table: CSS and JavaScript inlined into the page
(dashboard.py), which draw inline SVG from /api/series and a table from /api/fleet. Nothing
is fetched from elsewhere: lb often runs where nothing outside is reachable.

Per service, three charts over the last 15 minutes: requests per second, the error ratio and
the p50 (solid) and p99 (dashed) latency; the service's own line is the thick light one, each
backend's a thin coloured one (the legend and the backend rows carry the same colour). The
service and backend rates in the cards come from the last point lb computed itself (`last`),
so they show on the first poll."""

CHARTS_CSS = """
.charts { display: grid; grid-template-columns: repeat(3, 1fr); gap: 10px;
  padding: 10px 16px 6px; border-bottom: 1px solid var(--line); }
.charts figure { margin: 0; min-width: 0; }
.charts figcaption { color: var(--muted); font-size: 11px; text-transform: uppercase;
  letter-spacing: .5px; margin-bottom: 2px; }
.charts svg { width: 100%; height: auto; display: block; }
.charts svg text { fill: var(--muted); font: 9px var(--mono); }
.charts svg .grid { stroke: #232a34; stroke-width: 1; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; padding: 0 16px 8px;
  color: var(--muted); font-size: 11px; font-family: var(--mono);
  border-bottom: 1px solid var(--line); }
.swatch { display: inline-block; width: 12px; height: 3px; border-radius: 2px;
  margin-right: 5px; vertical-align: 3px; }
.no-traffic { padding: 8px 16px; border-bottom: 1px solid var(--line); }
tr.old-config td { background: #2a1416; }
"""

CHARTS_JS = r"""
const SERIES_EVERY = 5;  // polls between reads of /api/series and /api/fleet: lb samples every 5 s
const CHART_SPAN_S = 900;
const PALETTE = ["#58a6ff", "#2fbf71", "#f0a202", "#d2a8ff", "#ff7b72", "#39c5cf", "#e3b341",
  "#7ee787", "#ffa657", "#a5d6ff", "#8d98a7"];
let series = null;      // the last /api/series answer
let fleet = null;       // the last /api/fleet answer
let serverRates = {};   // key -> {rps, err}: from lb's own last point
let polls = 0;

function takeSeries(se) {
  series = se;
  serverRates = {};
  const put = (k, last) => {
    const rps = last.requests_per_s, eps = last.errors_per_s;
    serverRates[k] = {rps, err: rps > 0 ? Math.min(1, eps / rps) : (eps > 0 ? 1 : null)};
  };
  for (const s of se.services) put("s:" + s.name, s.last);
  for (const b of se.backends) put("b:" + b.service + "/" + b.backend, b.last);
}
// A service or backend the series do not list had no traffic in the window.
function liveRate(k) {
  if (!series || !/^[sb]:/.test(k)) return null;
  return serverRates[k] || {rps: 0, err: null};
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// lines: [{pts: [[t, v or null]], color, w, dash}]; the y axis ends at most at `cap`.
function chart(lines, fmt, cap = Infinity) {
  const W = 180, H = 100, L = 30, R = 3, T = 6, B = 13;
  const now = series.time, t0 = now - CHART_SPAN_S;
  let top = 0;
  for (const l of lines) for (const p of l.pts) if (p[1] !== null && p[1] > top) top = p[1];
  top = Math.min(cap, niceMax(top * 1.05));
  const x = (t) => L + (W - L - R) * Math.max(0, t - t0) / CHART_SPAN_S;
  const y = (v) => T + (H - T - B) * (1 - v / top);
  let out = `<svg viewBox="0 0 ${W} ${H}" role="img">`;
  for (const f of [0, 0.5, 1]) {
    const yy = y(top * f).toFixed(1);
    out += `<line class="grid" x1="${L}" x2="${W - R}" y1="${yy}" y2="${yy}"/>` +
      `<text x="${L - 3}" y="${(+yy + 3).toFixed(1)}" text-anchor="end">${fmt(top * f)}</text>`;
  }
  for (const [m, label] of [[15, "-15m"], [10, "-10m"], [5, "-5m"], [0, "now"]]) {
    const anchor = m === 15 ? "start" : m === 0 ? "end" : "middle";
    out += `<text x="${x(now - m * 60).toFixed(1)}" y="${H - 3}" text-anchor="${anchor}">${
      label}</text>`;
  }
  for (const l of lines) {
    let d = "", pen = "M";
    for (const [t, v] of l.pts) {
      if (v === null || t < t0) { pen = "M"; continue; }
      d += `${pen}${x(t).toFixed(1)} ${y(v).toFixed(1)} `;
      pen = "L";
    }
    if (d) {
      out += `<path d="${d}" fill="none" stroke="${l.color}" stroke-width="${l.w}"` +
        `${l.dash ? ' stroke-dasharray="4 3"' : ""} stroke-linejoin="round"/>`;
    }
  }
  return out + "</svg>";
}

const fmtNum = (v) => v >= 1000 ? (v / 1000).toFixed(v >= 10000 ? 0 : 1) + "k"
  : v >= 10 || v === 0 ? v.toFixed(0) : v.toFixed(1);
const fmtMs = (v) => v >= 1000 ? (v / 1000).toFixed(1) + "s" : fmtNum(v) + "ms";

function backendColor(service, name) {
  if (!series) return null;
  const i = series.backends.filter((b) => b.service === service)
    .findIndex((b) => b.backend === name);
  return i < 0 ? null : PALETTE[i % PALETTE.length];
}

// One series' points, oldest first, the last being lb's newest (`last`).
function points(x) {
  const out = series.times.map((t, i) => ({time: t, requests_per_s: x.requests_per_s[i],
    errors_per_s: x.errors_per_s[i], p50_s: x.p50_s[i], p99_s: x.p99_s[i]}));
  out.push({time: series.time, ...x.last});
  return out;
}

function serviceCharts(s) {
  if (!series) return "";
  const svc = series.services.find((x) => x.name === s.name);
  const bes = series.backends.filter((b) => b.service === s.name);
  if (!svc) return '<div class="no-traffic muted">no requests in the last 15 minutes</div>';
  const all = [{x: svc, color: "#dde3ea", w: 2}, ...bes.map((b, i) =>
    ({x: b, color: PALETTE[i % PALETTE.length], w: 1.2}))];
  const of = (f, dash) => all.map((l) => ({
    pts: points(l.x).map((p) => [p.time, f(p)]), color: l.color, w: l.w, dash}));
  const errPct = (p) => p.requests_per_s > 0
    ? 100 * Math.min(1, p.errors_per_s / p.requests_per_s) : null;
  const ms = (k) => (p) => p[k] === null ? null : p[k] * 1000;
  const legend = bes.map((b, i) => `<span><i class="swatch" style="background:${
    PALETTE[i % PALETTE.length]}"></i>${esc(b.backend)}</span>`).join("");
  return `<div class="charts" data-charts="${esc(s.name)}">
    <figure><figcaption>requests / s</figcaption>${
      chart(of((p) => p.requests_per_s), fmtNum)}</figure>
    <figure><figcaption>errors %</figcaption>${chart(of(errPct), fmtNum, 100)}</figure>
    <figure><figcaption>latency p50 · p99 (dashed)</figcaption>${
      chart([...of(ms("p50_s")), ...of(ms("p99_s"), true)], fmtMs)}</figure>
  </div><div class="legend"><span><i class="swatch" style="background:#dde3ea"></i>${
    esc(s.name)}</span>${legend}</div>`;
}

function statePill(state) {
  const cls = state === "passing" ? "ok" : state === "warning" || state === "unregistered"
    ? "warn" : state === "local" ? "info" : "bad";
  return pill(cls, state);
}

function renderFleet(fl) {
  if (!fl) return "";
  const c = fl.consul;
  const note = !c ? pill("info", "not registered in Consul: this lb only")
    : c.stale ? pill("bad", "Consul stale " + fmtAge(c.age_seconds), c.error || "")
    : pill("ok", "Consul service " + c.service);
  const rows = fl.instances.map((i) => {
    const hash = esc((i.config_hash || "").slice(0, 12));
    const cfg = i.old_config ? pill("bad", "old config")
      : i.same_config ? "" : pill("warn", "differs");
    return `<tr data-instance="${esc(i.id || "")}" data-config="${
      i.same_config ? "same" : "differs"}"${i.old_config ? ' class="old-config"' : ""}>
      <td class="name">${esc(i.id || "this lb")} ${i.self ? pill("info", "this one") : ""}</td>
      <td class="name">${esc(i.node || "")}</td><td class="name">${esc(i.address || "")}</td>
      <td class="name">${esc(i.admin || "")}</td><td class="name">${esc(i.version || "")}</td>
      <td class="name">${hash} ${cfg}</td><td class="num">${fmtAge(i.uptime_seconds)}</td>
      <td>${statePill(i.state)}</td></tr>`;
  }).join("");
  return `<h2>Fleet ${note}</h2>
    <div class="panel"><table><thead><tr><th>instance</th><th>node</th><th>serves</th>
      <th>admin</th><th>version</th><th>config</th><th class="num">uptime</th><th>state</th>
      </tr></thead><tbody>${rows}</tbody></table></div>`;
}

async function getJSON(path) {
  try {
    const resp = await fetch(path, {headers: headers(), cache: "no-store"});
    return resp.ok ? await resp.json() : null;
  } catch (e) {
    return null;
  }
}
"""

"""The dashboard's one web page (``PAGE``): HTML with inline CSS and vanilla JS, nothing
loaded from elsewhere. It polls ``/api/snapshot`` every second and draws the workers
table, the totals (with ids such as ``tasks-done`` and ``bytes-peer`` holding the exact
numbers), two time-series charts (tasks by state; bytes by path) and the transfer graph
between workers, all as inline SVG."""

from __future__ import annotations

PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>vinework dashboard</title>
<style>
body{font-family:sans-serif;margin:16px;background:#fafafa;color:#222}
h1{font-size:20px;margin:0 0 8px}h2{font-size:15px;margin:14px 0 6px}
.cards{display:flex;flex-wrap:wrap;gap:8px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px 10px;min-width:110px}
.card .k{font-size:11px;color:#666}.card .v{font-size:18px;font-weight:bold}
table{border-collapse:collapse;background:#fff}
td,th{border:1px solid #ddd;padding:3px 8px;font-size:13px;text-align:right}
th{background:#eee}td:first-child{text-align:left}
svg{background:#fff;border:1px solid #ddd}
.row{display:flex;flex-wrap:wrap;gap:16px}
#error{color:#b00}
.legend span{margin-right:12px;font-size:12px}
</style></head>
<body>
<h1>vinework <span id="manager-name"></span> <small>port <span id="manager-port"></span>,
updated <span id="updates">0</span> times</small></h1>
<div id="error"></div>
<div class="cards">
 <div class="card"><div class="k">workers</div><div class="v" id="workers-connected">-</div></div>
 <div class="card"><div class="k">submitted</div><div class="v" id="tasks-submitted">-</div></div>
 <div class="card"><div class="k">waiting</div><div class="v" id="tasks-waiting">-</div></div>
 <div class="card"><div class="k">running</div><div class="v" id="tasks-running">-</div></div>
 <div class="card"><div class="k">done</div><div class="v" id="tasks-done">-</div></div>
 <div class="card"><div class="k">failed</div><div class="v" id="tasks-failed">-</div></div>
 <div class="card"><div class="k">recoveries</div><div class="v" id="tasks-recovery">-</div></div>
 <div class="card"><div class="k">files lost</div><div class="v" id="files-lost">-</div></div>
 <div class="card"><div class="k">bytes manager&rarr;worker</div><div class="v" id="bytes-sent">-</div></div>
 <div class="card"><div class="k">bytes worker&rarr;manager</div><div class="v" id="bytes-received">-</div></div>
 <div class="card"><div class="k">bytes worker&rarr;worker</div><div class="v" id="bytes-peer">-</div></div>
</div>
<h2>Workers</h2>
<table id="workers"><thead><tr><th>worker</th><th>host</th><th>cores in use</th>
<th>cores</th><th>tasks running</th><th>tasks done</th><th>bytes in</th><th>bytes out</th>
</tr></thead><tbody></tbody></table>
<div class="row">
<div><h2>Tasks by state</h2><svg id="chart-tasks" width="460" height="200"></svg>
<div class="legend" id="legend-tasks"></div></div>
<div><h2>Bytes by path</h2><svg id="chart-bytes" width="460" height="200"></svg>
<div class="legend" id="legend-bytes"></div></div>
<div><h2>Transfers between workers</h2><svg id="graph" width="360" height="300"></svg></div>
</div>
<script>
"use strict";
const NS = "http://www.w3.org/2000/svg";
let updates = 0;
function el(name, attrs, text) {
  const e = document.createElementNS(NS, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
function human(n) {
  const u = ["B", "kB", "MB", "GB", "TB"]; let i = 0;
  while (Math.abs(n) >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + u[i];
}
function setNum(id, v) { const e = document.getElementById(id); e.textContent = String(v); }
function chart(id, legendId, series, keys, colors) {
  const svg = document.getElementById(id); svg.replaceChildren();
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height"), P = 30;
  let max = 1;
  for (const s of series) for (const k of keys) max = Math.max(max, s[k]);
  const t0 = series.length ? series[0].t : 0;
  const t1 = series.length ? Math.max(series[series.length - 1].t, t0 + 1) : 1;
  svg.appendChild(el("line", {x1: P, y1: H - P, x2: W - 5, y2: H - P, stroke: "#999"}));
  svg.appendChild(el("line", {x1: P, y1: 5, x2: P, y2: H - P, stroke: "#999"}));
  svg.appendChild(el("text", {x: 2, y: 14, "font-size": 10}, keys[0].startsWith("bytes") ? human(max) : String(max)));
  svg.appendChild(el("text", {x: W - 60, y: H - 8, "font-size": 10}, Math.round(t1 - t0) + " s"));
  const legend = document.getElementById(legendId); legend.replaceChildren();
  keys.forEach((k, i) => {
    const pts = series.map(s => (P + (s.t - t0) / (t1 - t0) * (W - P - 5)).toFixed(1) + "," +
      (H - P - s[k] / max * (H - P - 5)).toFixed(1));
    if (pts.length) svg.appendChild(el("polyline", {points: pts.join(" "), fill: "none",
      stroke: colors[i], "stroke-width": 2, "class": "series-" + k}));
    const sp = document.createElement("span"); sp.style.color = colors[i]; sp.textContent = "\u25A0 " + k;
    legend.appendChild(sp);
  });
}
function graph(workers, pairs) {
  const svg = document.getElementById("graph"); svg.replaceChildren();
  const ids = new Set(workers.map(w => w.worker_id));
  for (const p of pairs) { ids.add(p.source); ids.add(p.dest); }
  const names = [...ids].sort(), n = names.length, pos = {};
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height");
  const R = Math.min(W, H) / 2 - 40;
  names.forEach((id, i) => {
    const a = 2 * Math.PI * i / Math.max(n, 1) - Math.PI / 2;
    pos[id] = [W / 2 + R * Math.cos(a), H / 2 + R * Math.sin(a)];
  });
  let max = 1; for (const p of pairs) max = Math.max(max, p.bytes);
  const defs = el("defs", {}), mk = el("marker", {id: "arrow", viewBox: "0 0 10 10", refX: 22,
    refY: 5, markerWidth: 12, markerHeight: 12, markerUnits: "userSpaceOnUse", orient: "auto"});
  mk.appendChild(el("path", {d: "M0,0L10,5L0,10z", fill: "#3a6"})); defs.appendChild(mk);
  svg.appendChild(defs);
  for (const p of pairs) {
    const [x1, y1] = pos[p.source], [x2, y2] = pos[p.dest];
    const line = el("line", {x1, y1, x2, y2, stroke: "#3a6", "stroke-width": 1 + 7 * p.bytes / max,
      "marker-end": "url(#arrow)", "class": "edge", "data-bytes": p.bytes,
      "data-source": p.source, "data-dest": p.dest});
    line.appendChild(el("title", {}, p.source + " \u2192 " + p.dest + ": " + human(p.bytes)));
    svg.appendChild(line);
    svg.appendChild(el("text", {x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 4, "font-size": 10,
      "text-anchor": "middle"}, human(p.bytes)));
  }
  for (const id of names) {
    const [x, y] = pos[id];
    svg.appendChild(el("circle", {cx: x, cy: y, r: 14, fill: ids.has(id) && workers.some(w => w.worker_id === id) ? "#48c" : "#bbb", "class": "node"}));
    svg.appendChild(el("text", {x, y: y + 28, "font-size": 11, "text-anchor": "middle"}, id));
  }
}
function draw(s) {
  const st = s.stats;
  document.getElementById("manager-name").textContent = s.manager.name || "";
  document.getElementById("manager-port").textContent = String(s.manager.port);
  setNum("workers-connected", st.workers_connected);
  setNum("tasks-submitted", st.tasks_submitted);
  setNum("tasks-waiting", s.tasks.waiting);
  setNum("tasks-running", s.tasks.running);
  setNum("tasks-done", st.tasks_done);
  setNum("tasks-failed", st.tasks_failed);
  setNum("tasks-recovery", st.tasks_recovery);
  setNum("files-lost", st.files_lost);
  setNum("bytes-sent", st.bytes_sent);
  setNum("bytes-received", st.bytes_received);
  setNum("bytes-peer", st.bytes_peer);
  const body = document.querySelector("#workers tbody"); body.replaceChildren();
  for (const w of s.workers) {
    const tr = document.createElement("tr"); tr.id = "worker-" + w.worker_id;
    for (const v of [w.worker_id, w.hostname, w.cores_inuse, w.cores_total, w.tasks_running,
                     w.tasks_done, w.bytes_in, w.bytes_out]) {
      const td = document.createElement("td"); td.textContent = String(v); tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  chart("chart-tasks", "legend-tasks", s.series, ["waiting", "running", "done", "failed"],
        ["#e90", "#48c", "#3a6", "#c33"]);
  chart("chart-bytes", "legend-bytes", s.series, ["bytes_sent", "bytes_received", "bytes_peer"],
        ["#84c", "#c84", "#3a6"]);
  graph(s.workers, s.peer_pairs);
}
async function poll() {
  try {
    const r = await fetch("api/snapshot", {cache: "no-store"});
    const s = await r.json();
    if (!r.ok) throw new Error(s.error || r.statusText);
    draw(s);
    document.getElementById("error").textContent = "";
    setNum("updates", ++updates);
  } catch (e) {
    document.getElementById("error").textContent = "no answer from the manager: " + e;
  }
  setTimeout(poll, 1000);
}
poll();
</script>
</body></html>
"""

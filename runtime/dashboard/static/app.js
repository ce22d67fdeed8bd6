// The dashboard's page: plain JavaScript over the dashboard's own JSON (Ray's job and state
// APIs, plus api/orrery/overview). Every URL is relative, so the page works the same at
// http://127.0.0.1:8265/ and behind a proxy (Jupyter's /orrery/dashboard/).
"use strict";

const POLL_MS = 2000, MAX_POLL_MS = 30000, HISTORY = 150;
let delay = POLL_MS, timer = null, history = [], openJob = null;

const $ = (html) => { const t = document.createElement("template"); t.innerHTML = html.trim(); return t.content; };
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const short = (id) => esc((id || "").slice(0, 12));
const bytes = (n) => { const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0; n = n || 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; } return `${n.toFixed(i ? 1 : 0)} ${u[i]}`; };
const time = (ms) => (ms ? new Date(ms).toLocaleTimeString() : "");

async function getJSON(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" } });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}
const state = (path) => getJSON(path).then((b) => b.data.result);
const rows = (resource, query = "") => state(`api/v0/${resource}?limit=10000&detail=true${query}`).then((r) => r.result);

function bar(label, used, total, fmt = (x) => x) {
  const pct = total > 0 ? Math.min(100, (100 * used) / total) : 0;
  return `<div class="bar"><div class="label"><span>${esc(label)}</span><span>${esc(fmt(used))} / ${esc(fmt(total))}</span></div>
    <div class="track"><div class="fill${pct > 85 ? " high" : ""}" style="width:${pct.toFixed(1)}%"></div></div></div>`;
}

function table(cols, items, empty = "none") {
  if (!items.length) return `<p class="muted">${esc(empty)}</p>`;
  return `<table><thead><tr>${cols.map((c) => `<th>${esc(c[0])}</th>`).join("")}</tr></thead><tbody>${
    items.map((it) => `<tr>${cols.map((c) => `<td>${c[1](it)}</td>`).join("")}</tr>`).join("")}</tbody></table>`;
}
const stateCell = (s) => `<span class="state-${esc(s)}">${esc(s)}</span>`;

// -- views ------------------------------------------------------------------------------------
const views = {
  async overview() {
    const o = await getJSON("api/orrery/overview");
    const cards = o.nodes.map((n) => {
      const t = n.resources_total || {}, a = n.resources_available || {};
      const res = Object.keys(t).filter((k) => !k.startsWith("node:") && !k.includes("_group_") &&
        !["memory", "object_store_memory"].includes(k));
      return `<div class="card node" data-node="${esc(n.node_id)}"><h3>${n.is_head ? "Head" : "Node"} ${esc(n.node_ip)}
        <span class="mono muted">${short(n.node_id)}</span> ${stateCell(n.state)}</h3>
        ${res.map((k) => bar(k, t[k] - (a[k] ?? 0), t[k])).join("")}
        ${n.store ? bar("object store", n.store.used_bytes, n.store.capacity_bytes, bytes) : ""}
        ${n.memory_total ? bar("machine memory", n.memory_used, n.memory_total, bytes) : ""}
        <div class="muted">${n.workers ?? 0} workers · ${n.store ? n.store.num_objects : 0} objects · ${n.store ? n.store.spilled_objects : 0} spilled</div></div>`;
    }).join("");
    const counts = Object.entries(o.tasks_by_state).map(([s, n]) => `${stateCell(s)} ${n}`).join(" · ") || "none yet";
    return `<h2>Nodes</h2><div class="cards">${cards}</div><h2>Tasks</h2><p>${counts}</p>
      <p class="muted">Session ${esc(o.session_name)} · ${o.jobs_running} running jobs · ${o.actors_alive} live actors</p>`;
  },

  async jobs() {
    const jobs = await getJSON("api/jobs/");
    let html = `<h2>Jobs</h2>` + table([
      ["id", (j) => `<a href="#jobs" class="job-link mono" data-job="${esc(j.submission_id || j.job_id)}">${esc(j.submission_id || j.job_id)}</a>`],
      ["type", (j) => esc(j.type)], ["status", (j) => stateCell(j.status)],
      ["entrypoint", (j) => `<span class="mono">${esc(j.entrypoint)}</span>`],
      ["started", (j) => esc(time(j.start_time))], ["message", (j) => esc(j.message)]], jobs, "no jobs yet");
    if (openJob) {
      const job = jobs.find((j) => (j.submission_id || j.job_id) === openJob);
      if (job && job.type === "SUBMISSION") {
        const logs = await getJSON(`api/jobs/${encodeURIComponent(openJob)}/logs`);
        html += `<h2>Log of ${esc(openJob)}</h2><pre class="log" id="job-log">${esc(logs.logs)}</pre>`;
      }
    }
    return html;
  },

  async tasks() {
    const [summary, failed, events] = await Promise.all([
      state("api/v0/tasks/summarize"), rows("tasks", "&filter_keys=state&filter_predicates=%3D&filter_values=FAILED"),
      getJSON("api/v0/tasks/timeline")]);
    const groups = Object.values(summary.result.node_id_to_summary.cluster.summary);
    const colors = { FINISHED: "#1a7f37", FAILED: "#cf222e", RUNNING: "#bf8700", PENDING_NODE_ASSIGNMENT: "#8c959f" };
    const progress = (c) => { const total = Object.values(c).reduce((a, b) => a + b, 0) || 1;
      return `<div class="progress">${Object.entries(c).map(([s, n]) =>
        `<span title="${esc(s)} ${n}" style="width:${(100 * n) / total}%;background:${colors[s] || "#0969da"}"></span>`).join("")}</div>`; };
    return `<h2>By function</h2>` + table([["function", (g) => `<span class="mono">${esc(g.func_or_class_name)}</span>`],
      ["type", (g) => esc(g.type)], ["progress", (g) => progress(g.state_counts)],
      ["states", (g) => Object.entries(g.state_counts).map(([s, n]) => `${stateCell(s)} ${n}`).join(" · ")]], groups, "no tasks yet")
      + `<h2>Timeline</h2>${timeline(events)}`
      + `<h2>Failed tasks</h2>` + table([["task", (t) => `<span class="mono">${short(t.task_id)}</span>`],
        ["function", (t) => esc(t.func_or_class_name)], ["error", (t) => `<div class="error-text">${esc(t.error_message)}</div>`],
        ["ended", (t) => esc(time(t.end_time_ms))]], failed, "no failed tasks");
  },

  async actors() {
    return `<h2>Actors</h2>` + table([["actor", (a) => `<span class="mono">${short(a.actor_id)}</span>`],
      ["class", (a) => esc(a.class_name)], ["name", (a) => esc(a.name)], ["state", (a) => stateCell(a.state)],
      ["node", (a) => `<span class="mono">${short(a.node_id)}</span>`], ["pid", (a) => esc(a.pid)],
      ["restarts", (a) => esc(a.num_restarts)],
      ["death cause", (a) => `<div class="error-text">${esc(a.death_cause?.actor_died_error_context?.error_message)}</div>`]],
      await rows("actors"), "no actors");
  },

  async placement_groups() {
    return `<h2>Placement groups</h2>` + table([["group", (g) => `<span class="mono">${short(g.placement_group_id)}</span>`],
      ["name", (g) => esc(g.name)], ["state", (g) => stateCell(g.state)],
      ["bundles", (g) => (g.bundles || []).map((b) => `${esc(JSON.stringify(b.unit_resources))} on <span class="mono">${short(b.node_id)}</span>`).join("<br>")]],
      await rows("placement_groups"), "no placement groups");
  },

  async objects() {
    const objs = (await rows("objects")).sort((a, b) => b.object_size - a.object_size);
    return `<h2>Objects</h2><p class="muted">${objs.length} objects, ${bytes(objs.reduce((s, o) => s + o.object_size, 0))}</p>` +
      table([["object", (o) => `<span class="mono">${esc(o.object_id)}</span>`], ["size", (o) => esc(bytes(o.object_size))],
        ["pinned by", (o) => esc(`${o.type} pid ${o.pid} (${o.ip})`)], ["reference", (o) => esc(o.reference_type)],
        ["created at", (o) => `<span class="mono">${esc(o.call_site)}</span>`]], objs, "no objects");
  },

  async metrics() {
    const series = [["CPU in use", (h) => h.cpu_used], ["object store bytes", (h) => h.store_used],
      ["running tasks", (h) => h.running], ["finished tasks", (h) => h.finished]];
    return `<p class="muted">Sampled every ${POLL_MS / 1000} s while this page is open (the last ${HISTORY} samples);
      Prometheus keeps them for longer (docs/observability.md).</p>` +
      series.map(([name, pick]) => `<h2>${esc(name)}</h2>${lineChart(history.map(pick))}`).join("");
  },
};

function timeline(events) {
  const spans = events.filter((e) => e.ph === "X");
  if (!spans.length) return `<p class="muted">no task has run yet</p>`;
  const names = {}; events.filter((e) => e.name === "thread_name").forEach((e) => (names[`${e.pid}/${e.tid}`] = e.args.name));
  const rowsKey = [...new Set(spans.map((s) => `${s.pid}/${s.tid}`))];
  const t0 = Math.min(...spans.map((s) => s.ts)), t1 = Math.max(...spans.map((s) => s.ts + s.dur)), w = Math.max(1, t1 - t0);
  const h = 18, left = 130;
  const rects = spans.map((s) => { const y = rowsKey.indexOf(`${s.pid}/${s.tid}`) * h;
    const x = left + ((s.ts - t0) / w) * 800, width = Math.max(1, (s.dur / w) * 800);
    const fill = s.args.state === "FAILED" ? "#cf222e" : s.args.state === "RUNNING" ? "#bf8700" : "#0969da";
    return `<rect x="${x}" y="${y + 2}" width="${width}" height="${h - 4}" fill="${fill}"><title>${esc(s.name)} ${(s.dur / 1000).toFixed(1)} ms</title></rect>`; }).join("");
  const labels = rowsKey.map((k, i) => `<text x="0" y="${i * h + 13}" font-size="11">${esc(names[k] || k)}</text>`).join("");
  return `<svg class="timeline" viewBox="0 0 ${left + 810} ${rowsKey.length * h}" style="width:100%;height:${rowsKey.length * h + 4}px">${labels}${rects}</svg>
    <p class="muted">${spans.length} executions over ${(w / 1e6).toFixed(2)} s; <a href="api/v0/tasks/timeline?download=1">download</a> for Perfetto.</p>`;
}

function lineChart(values) {
  if (values.length < 2) return `<p class="muted">collecting…</p>`;
  const max = Math.max(...values, 1), n = values.length;
  const pts = values.map((v, i) => `${(i / (n - 1)) * 1000},${150 - (v / max) * 140}`).join(" ");
  return `<svg class="chart" viewBox="0 0 1000 160" preserveAspectRatio="none"><polyline fill="none" stroke="#0969da" stroke-width="2" points="${pts}"/>
    <text x="4" y="14" font-size="12">max ${esc(max.toLocaleString())}</text></svg>`;
}

// -- polling with backoff ------------------------------------------------------------------
function current() { return (location.hash || "#overview").slice(1) in views ? (location.hash || "#overview").slice(1) : "overview"; }

async function sample() {
  const o = await getJSON("api/orrery/overview");
  history.push({ cpu_used: o.nodes.reduce((s, n) => s + ((n.resources_total.CPU || 0) - ((n.resources_available || {}).CPU || 0)), 0),
    store_used: o.nodes.reduce((s, n) => s + (n.store ? n.store.used_bytes : 0), 0),
    running: o.tasks_by_state.RUNNING || 0, finished: o.tasks_by_state.FINISHED || 0 });
  if (history.length > HISTORY) history.shift();
}

async function refresh() {
  clearTimeout(timer);
  const name = current(), status = document.getElementById("status");
  document.querySelectorAll("#tabs a").forEach((a) => a.classList.toggle("active", a.dataset.view === name));
  try {
    await sample();
    const html = await views[name]();
    if (name === current()) {
      const view = document.getElementById("view");
      view.replaceChildren($(html));
      view.dataset.view = name;
    }
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    status.classList.remove("error");
    delay = POLL_MS;
  } catch (e) {
    status.textContent = `${e.message}; retrying in ${Math.round(delay / 1000)} s`;
    status.classList.add("error");
    delay = Math.min(delay * 2, MAX_POLL_MS);
  }
  timer = setTimeout(refresh, delay);
}

document.addEventListener("click", (ev) => {
  const job = ev.target.closest(".job-link");
  if (job) { openJob = job.dataset.job; setTimeout(refresh, 0); }
});
window.addEventListener("hashchange", refresh);
refresh();

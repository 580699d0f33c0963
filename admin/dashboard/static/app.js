// The gateway's dashboard: every few seconds it asks the management API
// for the tunnels, agents, series and recent errors, and redraws. With a
// token on the listener it asks for it once and keeps it for the tab's
// session (sessionStorage), sending it as Authorization: Bearer.
"use strict";

const every = 2000; // ms between updates
const tokenKey = "diglett-admin-token";
const colors = ["#1565c0", "#2e7d32", "#c62828", "#6a1b9a", "#ef6c00", "#00838f", "#5d4037", "#ad1457"];
const svgNS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
const statusEl = $("status");
let timer = 0;

function text(tag, value, cls) {
  const el = document.createElement(tag);
  el.textContent = value;
  if (cls) el.className = cls;
  return el;
}

class Unauthorized extends Error {}

async function api(path) {
  const headers = {};
  const token = sessionStorage.getItem(tokenKey);
  if (token) headers.Authorization = "Bearer " + token;
  const resp = await fetch("api/v1/" + path, { headers, cache: "no-store" });
  if (resp.status === 401) throw new Unauthorized();
  if (!resp.ok) throw new Error(path + ": " + resp.status + " " + (await resp.text()));
  return resp.json();
}

function setStatus(label, cls) {
  statusEl.textContent = label;
  statusEl.className = cls || "";
}

function askToken(message) {
  clearTimeout(timer);
  $("board").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  setStatus("token needed", "off");
  $("token").focus();
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(tokenKey, $("token").value.trim());
  $("token").value = "";
  $("login").hidden = true;
  update();
});

async function update() {
  clearTimeout(timer);
  try {
    const [t, a, s, e] = await Promise.all([api("tunnels"), api("agents"), api("series"), api("errors")]);
    $("login").hidden = true;
    $("board").hidden = false;
    showTunnels(t.tunnels || []);
    showAgents(a.agents || []);
    showSeries(s);
    showErrors(e.errors || []);
    setStatus("live");
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    if (err instanceof Unauthorized) {
      const had = sessionStorage.getItem(tokenKey);
      sessionStorage.removeItem(tokenKey);
      askToken(had ? "That token was refused." : "");
      return;
    }
    setStatus("unreachable", "error");
    $("updated").textContent = String(err.message || err);
  }
  timer = setTimeout(update, every);
}

function fillRows(tableId, emptyId, items, row) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren(...items.map(row));
  $(emptyId).hidden = items.length > 0;
}

function since(t) {
  return t ? new Date(t).toLocaleString() : "-";
}

function showTunnels(tunnels) {
  tunnels.sort((x, y) => x.name.localeCompare(y.name));
  fillRows("tunnels", "no-tunnels", tunnels, (t) => {
    const tr = document.createElement("tr");
    tr.dataset.name = t.name;
    let state = t.state;
    if (t.state === "leased" && t.lease_ends) {
      state += " (" + Math.max(0, Math.round((new Date(t.lease_ends) - Date.now()) / 1000)) + " s left)";
    }
    tr.append(
      text("td", t.name),
      text("td", state, t.state),
      text("td", t.port || "-"),
      text("td", (t.hosts || []).join(", ") || "-"),
      text("td", (t.members || []).map((m) => m.address + "/" + m.transport).join(", ") || "-"),
      text("td", t.visitors),
      text("td", t.identity || "-"),
    );
    return tr;
  });
}

function showAgents(agents) {
  agents.sort((x, y) => x.id - y.id);
  fillRows("agents", "no-agents", agents, (a) => {
    const tr = document.createElement("tr");
    tr.dataset.id = a.id;
    tr.append(
      text("td", a.id),
      text("td", a.identity || "-"),
      text("td", a.address),
      text("td", a.transport),
      text("td", since(a.since)),
      text("td", (a.names || []).join(", ") || "-"),
    );
    return tr;
  });
}

function svg(tag, attrs) {
  const el = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

function human(n) {
  const units = ["", "k", "M", "G", "T"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return (i ? n.toFixed(1) : String(Math.round(n))) + units[i];
}

// chart draws one polyline a tunnel of values(series) in the svg, with
// the total of each line in data-total for whoever reads the page.
function chart(id, snap, values) {
  const el = $(id);
  const w = 600, h = 160, left = 40, top = 8, bottom = 18;
  const lines = snap.tunnels.map((t) => ({ name: t.tunnel, v: values(t) }));
  const max = lines.reduce((m, l) => l.v.reduce((a, v) => Math.max(a, v), m), 1);
  const n = lines.length ? lines[0].v.length : 0;
  const x = (i) => left + (i * (w - left - 4)) / Math.max(1, n - 1);
  const y = (v) => h - bottom - (v * (h - top - bottom)) / max;
  const kids = [
    svg("line", { class: "axis", x1: left, y1: h - bottom, x2: w - 4, y2: h - bottom }),
    svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: h - bottom }),
  ];
  const label = (x0, y0, s, anchor) => {
    const t = svg("text", { x: x0, y: y0, "text-anchor": anchor });
    t.textContent = s;
    return t;
  };
  kids.push(label(left - 4, top + 8, human(max), "end"), label(left - 4, h - bottom, "0", "end"));
  if (n) {
    const minutes = Math.round((n * snap.interval_seconds) / 60);
    kids.push(label(left, h - 4, "-" + minutes + " min", "start"), label(w - 4, h - 4, "now", "end"));
  }
  lines.forEach((l, i) => {
    kids.push(svg("polyline", {
      points: l.v.map((v, j) => x(j).toFixed(1) + "," + y(v).toFixed(1)).join(" "),
      fill: "none",
      stroke: colors[i % colors.length],
      "stroke-width": 1.5,
      "data-tunnel": l.name,
      "data-total": l.v.reduce((s, v) => s + v, 0),
    }));
  });
  el.replaceChildren(...kids);
}

function showSeries(snap) {
  snap.tunnels = snap.tunnels || [];
  chart("chart-requests", snap, (t) => t.requests.map((r, i) => r + t.connections[i]));
  chart("chart-bytes", snap, (t) => t.bytes_in.map((b, i) => b + t.bytes_out[i]));
  $("legend").replaceChildren(...snap.tunnels.map((t, i) => {
    const li = document.createElement("li");
    const sw = svg("svg", { width: 10, height: 10, viewBox: "0 0 10 10" });
    sw.append(svg("rect", { width: 10, height: 10, fill: colors[i % colors.length] }));
    li.append(sw, document.createTextNode(" " + t.tunnel));
    return li;
  }));
}

function showErrors(records) {
  fillRows("errors", "no-errors", records, (r) => {
    const tr = document.createElement("tr");
    const rest = Object.entries(r)
      .filter(([k]) => k !== "time" && k !== "level" && k !== "msg")
      .map(([k, v]) => k + "=" + (typeof v === "string" ? v : JSON.stringify(v)))
      .join(" ");
    tr.append(text("td", since(r.time)), text("td", r.level, r.level), text("td", r.msg, "wrap"), text("td", rest, "wrap"));
    return tr;
  });
}

update();

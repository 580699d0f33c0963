// The inspector's page: the list follows /api/events live; a click shows
// an exchange from /api/requests/ID; Replay posts to its replay endpoint.
"use strict";

const rows = document.querySelector("#requests tbody");
const empty = document.getElementById("empty");
const live = document.getElementById("live");
const detail = document.getElementById("detail-pane");
const replayButton = document.getElementById("replay");
const replayStatus = document.getElementById("replay-status");
const seen = new Set();
let selected = 0;

function text(tag, value, cls) {
  const el = document.createElement(tag);
  el.textContent = value;
  if (cls) el.className = cls;
  return el;
}

// addRow shows s in the list, which is kept newest (highest id) first.
function addRow(s) {
  if (seen.has(s.id)) return;
  seen.add(s.id);
  empty.hidden = true;
  const tr = document.createElement("tr");
  tr.dataset.id = s.id;
  tr.append(
    text("td", s.replay_of ? s.id + " ↺" + s.replay_of : s.id),
    text("td", new Date(s.time).toLocaleTimeString()),
    text("td", s.tunnel),
    text("td", s.method),
    text("td", s.path, "path"),
    text("td", s.status || (s.error ? "error" : "-"), "s" + Math.floor(s.status / 100)),
    text("td", s.duration_ms.toFixed(1) + " ms"),
  );
  tr.title = s.error || "";
  tr.addEventListener("click", () => show(s.id));
  const after = Array.from(rows.children).find((r) => Number(r.dataset.id) < s.id);
  rows.insertBefore(tr, after || null);
}

function fillHeaders(table, header) {
  table.replaceChildren();
  for (const name of Object.keys(header || {}).sort()) {
    for (const v of header[name]) {
      const tr = document.createElement("tr");
      tr.append(text("td", name), text("td", v));
      table.append(tr);
    }
  }
}

function bodyText(m) {
  if (!m.size) return "(no body)";
  const bytes = Uint8Array.from(atob(m.body || ""), (c) => c.charCodeAt(0));
  let s;
  try {
    s = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    s = "(" + bytes.length + " bytes of binary data)";
  }
  if (m.truncated) s += "\n… (" + m.size + " bytes in all; the first " + bytes.length + " are kept)";
  if (!m.complete) s += "\n(the body was cut short)";
  return s;
}

async function show(id) {
  selected = id;
  for (const tr of rows.children) tr.classList.toggle("selected", tr.dataset.id == id);
  const resp = await fetch("api/requests/" + id);
  if (!resp.ok) {
    replayStatus.textContent = "request " + id + " is no longer kept";
    return;
  }
  const e = await resp.json();
  if (selected !== id) return;
  detail.hidden = false;
  document.getElementById("detail-title").textContent = e.method + " " + e.host + e.path;
  let meta = "#" + e.id + " · " + e.tunnel + " · " + (e.status || "no response") + " · " + e.duration_ms.toFixed(1) + " ms";
  if (e.visitor) meta += " · from " + e.visitor;
  if (e.replay_of) meta += " · replay of #" + e.replay_of;
  if (e.error) meta += " · " + e.error;
  document.getElementById("detail-meta").textContent = meta;
  fillHeaders(document.getElementById("request-headers"), e.request.header);
  document.getElementById("request-body").textContent = bodyText(e.request);
  fillHeaders(document.getElementById("response-headers"), e.response.header);
  document.getElementById("response-body").textContent = bodyText(e.response);
  replayStatus.textContent = "";
  replayStatus.className = "";
}

replayButton.addEventListener("click", async () => {
  const id = selected;
  replayStatus.textContent = "replaying…";
  replayStatus.className = "";
  const resp = await fetch("api/requests/" + id + "/replay", { method: "POST" });
  const r = await resp.json();
  if (r.id) {
    addRowById(r.id);
  }
  replayStatus.textContent = r.error ? r.error : "replayed as #" + r.id;
  replayStatus.className = r.error ? "error" : "";
});

async function addRowById(id) {
  const resp = await fetch("api/requests/" + id);
  if (resp.ok) addRow(await resp.json());
}

async function load() {
  const resp = await fetch("api/requests");
  const list = await resp.json();
  for (const s of list) addRow(s);
}

function follow() {
  const es = new EventSource("api/events");
  es.onopen = () => {
    live.textContent = "live";
    live.className = "";
    load();
  };
  es.addEventListener("request", (ev) => addRow(JSON.parse(ev.data)));
  es.onerror = () => {
    live.textContent = "reconnecting…";
    live.className = "off";
  };
}

follow();

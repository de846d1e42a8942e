// printvigil status page: polls /api/status and draws each printer. No libraries.
"use strict";

const errors = document.getElementById("errors");
function noteError(msg) {
  const li = document.createElement("li");
  li.textContent = String(msg);
  errors.appendChild(li);
  errors.hidden = false;
}
window.addEventListener("error", (e) => noteError("error: " + e.message));
window.addEventListener("unhandledrejection", (e) => noteError("rejection: " + (e.reason && e.reason.message || e.reason)));

const token = new URLSearchParams(location.search).get("token");
const headers = token ? { Authorization: "Bearer " + token } : {};
const withToken = (url) => token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url;
const enc = encodeURIComponent;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}
const svgNs = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const e = document.createElementNS(svgNs, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}
const fmt = (x, d = 2) => (x === null || x === undefined) ? "–" : Number(x).toFixed(d);
const ago = (now, t) => { const s = Math.max(0, now - t); return s < 90 ? Math.round(s) + " s ago" : Math.round(s / 60) + " min ago"; };

// The score (0..1, blue) and p (grey, scaled to its own maximum) over the print.
function chart(history) {
  const w = 300, h = 100;
  const s = svg("svg", { class: "chart", viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none", "data-points": String(history.length) });
  for (const y of [1 / 3, 2 / 3]) s.append(svg("line", { class: "limit", x1: 0, x2: w, y1: h - y * h, y2: h - y * h }));
  if (history.length > 0) {
    const n = Math.max(history.length - 1, 1);
    const pmax = Math.max(...history.map((q) => q.p), 1e-9);
    const pts = (f) => history.map((q, i) => `${(i / n * w).toFixed(1)},${(h - Math.min(Math.max(f(q), 0), 1) * h).toFixed(1)}`).join(" ");
    s.append(svg("polyline", { class: "p", points: pts((q) => q.p / pmax) }));
    s.append(svg("polyline", { class: "score", points: pts((q) => q.score) }));
  }
  const title = svg("title", {});
  title.textContent = "failure score (blue, 0..1; dashed: medium and high) and p (grey) over this print";
  s.append(title);
  return s;
}

async function control(printer, what, body) {
  const r = await fetch(`api/printers/${enc(printer)}/${what}`, {
    method: "POST",
    headers: Object.assign({ "Content-Type": "application/json", "X-Printvigil": "1" }, headers),
    body: JSON.stringify(body || {}),
  });
  const answer = await r.json().catch(() => ({}));
  if (!r.ok) alert(answer.error || ("refused: " + r.status));
  refresh();
}

const images = new Map();
function frameImage(p) {
  // One <img> per printer, reloaded only when a new frame was scored.
  let img = images.get(p.printer);
  if (!img) {
    img = el("img", { class: "frame", alt: "latest frame of " + p.printer });
    img.addEventListener("load", () => { img.dataset.loaded = "1"; });
    img.addEventListener("error", () => { img.dataset.loaded = "error"; });
    images.set(p.printer, img);
  }
  const src = withToken(`api/printers/${enc(p.printer)}/frame.jpg?n=${p.frame_num}-${p.history.length}`);
  if (p.has_frame && img.dataset.src !== src) { img.dataset.src = src; img.src = src; }
  return p.has_frame ? img : el("p", { class: "muted" }, "no frame scored yet");
}

function printerCard(now, p) {
  const d = p.last_decision;
  const decision = d ? el("span", { class: d.decision }, `${d.decision} ${ago(now, d.at)}`) : el("span", { class: "muted" }, "no decision yet");
  const controls = el("div", { class: "controls" });
  if (!p.watching) controls.append(el("button", { onclick: () => control(p.printer, "watching", {}) }, "Resume watching"));
  if (p.snoozed_until && p.snoozed_until > now) {
    controls.append(el("span", { class: "muted" }, `alerts snoozed until ${new Date(p.snoozed_until * 1000).toLocaleTimeString()} `));
    controls.append(el("button", { onclick: () => control(p.printer, "snooze", { secs: 0 }) }, "Alerts on"));
  } else {
    controls.append(el("button", { onclick: () => control(p.printer, "snooze", { secs: 3600 }) }, "Snooze alerts 1 h"));
  }
  return el("article", { class: "printer", "data-printer": p.printer },
    el("h3", {}, p.printer, el("span", { class: "phase " + p.phase }, p.phase + (p.acted ? " (acted)" : ""))),
    el("div", {}, p.file ? `${p.file}${p.progress !== null && p.progress !== undefined ? ` — ${Math.round(p.progress * 100)} %` : ""}` : el("span", { class: "muted" }, "no print")),
    p.offline_reason ? el("div", { class: "warn" }, p.offline_reason) : null,
    p.camera_error ? el("div", { class: "warn" }, "camera: " + p.camera_error) : null,
    p.watching ? null : el("div", { class: "warn" }, "detection off for this print"),
    el("div", { class: "figures" },
      el("span", {}, "frame " + p.frame_num),
      el("span", { class: "p-value" }, "p " + fmt(p.p)),
      el("span", { class: "score-value" }, "score " + fmt(p.normalized_p)),
      decision),
    chart(p.history),
    frameImage(p),
    controls);
}

function render(s) {
  const sch = s.scheduler;
  const host = document.getElementById("scheduler");
  host.replaceChildren(
    el("div", {}, `detector: ${sch.sessions} session(s), ${sch.frame_ms ? fmt(sch.frame_ms, 0) + " ms a frame" : "no frame yet"}, load ${fmt(sch.load)}, ${sch.queued} waiting`),
    sch.behind ? el("div", { class: "behind" }, sch.behind) : el("div", { class: "muted" }, `every printer scored each ${fmt(s.cadence_secs, 1)} s`));
  const m = s.mirror;
  document.getElementById("mirror").replaceChildren(m
    ? el("div", {}, `server mirror: ${m.outbox_pending ?? "?"} event(s) waiting` + (m.oldest_event_age_secs ? `, oldest ${Math.round(m.oldest_event_age_secs)} s` : "") + `, ${m.events_sent} sent`, m.health ? el("div", { class: "warn" }, m.health) : "")
    : el("div", { class: "muted" }, "no server mirror configured"));
  document.getElementById("printers").replaceChildren(...s.printers.map((p) => printerCard(s.now, p)));
  const recent = document.getElementById("recent");
  recent.replaceChildren(...(s.recent.length ? s.recent.map((r) => el("li", { class: r.what === "warn" ? "warn" : "pause" },
    `${new Date(r.t * 1000).toLocaleTimeString()} ${r.printer}: ${r.what}${r.p !== null && r.p !== undefined ? ` (p ${fmt(r.p)})` : ""}`,
    r.frame ? el("a", { href: withToken(`api/printers/${enc(r.printer)}/frames/${enc(r.frame)}`) }, el("img", { src: withToken(`api/printers/${enc(r.printer)}/frames/${enc(r.frame)}`), alt: r.what + " frame" })) : null))
    : [el("li", { class: "muted" }, "none yet")]));
  document.getElementById("updated").textContent = "updated " + new Date(s.now * 1000).toLocaleTimeString();
  document.body.dataset.ready = "1";
}

let busy = false;
async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const r = await fetch("api/status", { headers });
    if (!r.ok) throw new Error("status answer " + r.status);
    render(await r.json());
  } catch (e) {
    document.getElementById("updated").textContent = "cannot reach printvigil: " + e.message;
  } finally {
    busy = false;
  }
}
refresh();
setInterval(refresh, 2000);

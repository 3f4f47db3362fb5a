// The p2pkey status page: polls /api/status and redraws. No framework, no
// build step; every string from the node goes in through textContent.
"use strict";

const POLL_MS = 1500;
const SVG = "http://www.w3.org/2000/svg";
let polls = 0;

function el(tag, attrs, ...kids) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const k of kids) if (k) e.append(k);
  return e;
}
function short(id) { return id && id.length > 16 ? id.slice(0, 8) + "…" + id.slice(-6) : (id || "—"); }
function tail(id) { return id ? id.slice(-6) : "?"; }
function set(id, text, cls) {
  const e = document.getElementById(id);
  e.textContent = text;
  if (cls !== undefined) e.className = cls;
}
function ago(t, now) {
  const s = Math.round((now - new Date(t)) / 1000);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.round(s / 60) + " min";
  if (s < 86400) return Math.round(s / 3600) + " h";
  return Math.round(s / 86400) + " d";
}

function render(d) {
  const st = d.status, now = new Date(d.time);
  document.title = "p2pkey · " + st.lock;
  set("cluster", short(st.cluster_id));
  document.getElementById("cluster").title = st.cluster_id;
  set("self", short(st.peer_id));
  document.getElementById("self").title = st.peer_id;

  // At a glance.
  set("lock", st.lock, "big state-" + st.lock);
  const u = st.unlock;
  let lsub = "";
  if (u.threshold) {
    lsub = st.lock === "locked" ? `${u.shares_held} of ${u.threshold} shares gathered` : `${u.shares_held} shares held, threshold ${u.threshold}`;
    if (u.generation) lsub += `, generation ${u.generation}`;
  }
  if (st.lock !== "unlocked" && u.reason) lsub = u.reason;
  set("lock-sub", lsub + (st.reachability ? ` · reachability ${st.reachability}` : ""));
  const g = st.generation;
  set("gen", g.current != null ? "current " + g.current : "none yet");
  set("gen-sub", g.open ? `open ${g.open.number}: ${g.open.members} members, threshold ${g.open.threshold}` : "none open");
  set("raft", st.raft.state || "—");
  set("raft-sub", `term ${st.raft.term} · applied ${st.raft.applied_index} · leader ${st.raft.leader ? tail(st.raft.leader) : "unknown"}`);
  const active = st.members.filter(m => m.status === "active");
  const reach = active.filter(m => m.connection !== "none");
  set("members-count", `${reach.length} / ${active.length} reachable`);
  const missing = active.filter(m => m.connection === "none").map(m => tail(m.peer_id));
  set("members-sub", missing.length ? "missing: " + missing.join(", ") : "all active members connected");
  document.getElementById("members-count").className = "big " + (missing.length ? "state-locked" : "state-unlocked");

  renderMembers(st);
  renderMatrices(d.generations, st);
  renderTimeline(d.generations, now);
}

function shareBar(held, need, width) {
  const max = Math.max(held, need, 1), x = v => (v / max) * width;
  return el("svg:svg", { width, height: 10, class: "bar" },
    el("svg:rect", { class: "track", x: 0.5, y: 0.5, width: width - 1, height: 9 }),
    el("svg:rect", { class: "avail", x: 0.5, y: 0.5, width: x(held), height: 9 }),
    need ? el("svg:line", { class: "threshold", x1: x(need), x2: x(need), y1: 0, y2: 10 }) : null);
}

function renderMembers(st) {
  const body = document.querySelector("#members tbody");
  body.replaceChildren();
  st.members.forEach((m, i) => {
    const self = m.peer_id === st.peer_id;
    const notes = [];
    if (m.catching_up) notes.push("catching up");
    if (m.behind) notes.push(`${m.behind} generation${m.behind > 1 ? "s" : ""} behind`);
    if (m.reason) notes.push(m.reason);
    if (m.remove_votes && m.remove_votes.length) notes.push(`remove votes ${m.remove_votes.length}/${m.votes_needed}`);
    if (m.peer_id === st.raft.leader) notes.push("Raft leader");
    // Only this node knows its own lock state; another member's shows
    // when the node reports it (m.lock), else its escrow coverage says
    // whether it could unlock.
    let lock = self ? st.lock : (m.lock || (m.threshold ? (m.shares_held >= m.threshold ? "can unlock" : "cannot unlock") : "—"));
    const tr = el("tr", { "data-peer": m.peer_id, "data-connection": m.connection, class: m.connection === "none" && m.status === "active" ? "missing" : null },
      el("td", { text: String(i + 1) }),
      el("td", {}, el("code", { text: short(m.peer_id), title: m.peer_id })),
      el("td", { text: m.status }),
      el("td", { text: m.voter ? "voter" : "non-voter" }),
      el("td", {}, el("span", { class: "badge conn-" + m.connection, text: m.connection === "none" ? "missing" : m.connection })),
      el("td", { text: lock, class: "state-" + lock }),
      el("td", { text: m.escrow_generation != null ? "gen " + m.escrow_generation : "—" }),
      el("td", {}, m.threshold ? shareBar(m.shares_held, m.threshold, 80) : null, document.createTextNode(m.threshold ? `${m.shares_held} / ${m.threshold}` : "—")),
      el("td", { class: "notes", text: notes.join("; ") }));
    body.append(tr);
  });
}

function renderMatrices(gens, st) {
  const box = document.getElementById("matrices");
  box.replaceChildren();
  const conn = {};
  for (const m of st.members) conn[m.peer_id] = m.connection;
  // Live generations: open or committed. A retired one keeps an empty
  // matrix (its envelopes are deleted) that would only read as alarming.
  const live = gens.filter(g => (g.state === "open" || g.state === "committed") && g.matrix && g.matrix.length);
  if (!live.length) { box.append(el("p", { class: "empty", text: "No live generation yet." })); return; }
  for (const g of live.reverse()) {
    const n = g.members.length, c = 22, left = 70, top = 58, barW = 110, gap = 16;
    const w = left + n * c + gap + barW + 40, h = top + n * c + 10;
    const svg = el("svg:svg", { class: "matrix", width: w, height: h, "data-generation": g.number, role: "img",
      "aria-label": `generation ${g.number} share matrix` });
    const away = g.members.map(id => conn[id] === "none" || conn[id] === undefined);
    // Holder columns: index and tail of the ID, red when missing.
    g.members.forEach((id, j) => {
      const x = left + j * c + c / 2;
      const t = el("svg:text", { x, y: top - 8, transform: `rotate(-50 ${x} ${top - 8})`, class: away[j] ? "col-missing" : null, text: `${j + 1} ${tail(id)}` });
      t.append(el("svg:title", { text: id + (away[j] ? " (missing)" : "") }));
      svg.append(t);
    });
    svg.append(el("svg:text", { x: left + n * c + gap, y: top - 8, class: "muted", text: "shares held" }));
    g.matrix.forEach((row, i) => {
      const y = top + i * c;
      svg.append(el("svg:text", { x: 4, y: y + c / 2 + 4, class: away[i] ? "col-missing" : null, text: `${i + 1} ${tail(g.members[i])}` }));
      row.forEach((held, j) => {
        const cls = "cell " + (held ? "held" + (away[j] ? " away" : "") : "none");
        const r = el("svg:rect", { class: cls, x: left + j * c + 2, y: y + 2, width: c - 4, height: c - 4, rx: 3,
          "data-owner": g.members[i], "data-holder": g.members[j] });
        r.append(el("svg:title", { text: `owner ${tail(g.members[i])} → holder ${tail(g.members[j])}: ${held ? (away[j] ? "held, holder missing" : "held") : "no envelope"}` }));
        svg.append(r);
      });
      // Held bar: all held (pale) and held by connected holders (solid),
      // against the threshold line.
      const heldN = g.shares_held ? g.shares_held[i] : row.filter(Boolean).length;
      const avail = row.filter((v, j) => v && !away[j]).length;
      const bx = left + n * c + gap, unit = barW / n;
      svg.append(el("svg:rect", { class: "track", x: bx, y: y + 5, width: barW, height: c - 10 }));
      svg.append(el("svg:rect", { class: "fill", x: bx, y: y + 5, width: heldN * unit, height: c - 10 }));
      svg.append(el("svg:rect", { class: "avail", x: bx, y: y + 5, width: avail * unit, height: c - 10 }));
      svg.append(el("svg:text", { x: bx + barW + 6, y: y + c / 2 + 4, text: `${heldN}/${g.threshold}` }));
    });
    const tx = left + n * c + gap + g.threshold * (barW / n);
    svg.append(el("svg:line", { class: "threshold", x1: tx, x2: tx, y1: top - 2, y2: top + n * c + 2 }));
    svg.append(el("svg:text", { x: tx - 8, y: top - 24, class: "muted", text: `t=${g.threshold}` }));
    const tag = g.current ? " (current)" : "";
    box.append(el("div", { class: "matrix-card" },
      el("h3", { text: `generation ${g.number}: ${g.state}${tag} · ${n} members · threshold ${g.threshold} · ${g.owners_escrowed} owners escrowed` }),
      svg));
  }
}

function renderTimeline(gens, now) {
  const box = document.getElementById("timeline");
  box.replaceChildren();
  if (!gens.length) { box.append(el("p", { class: "empty", text: "No generations yet." })); return; }
  const t0 = Math.min(...gens.map(g => +new Date(g.opened_at)));
  const t1 = Math.max(+now, t0 + 1000);
  const lane = 20, left = 60, width = Math.max(400, Math.min(1100, box.clientWidth - 30)), right = 90;
  const h = gens.length * lane + 24;
  const svg = el("svg:svg", { width, height: h, class: "timeline" });
  const x = t => left + ((t - t0) / (t1 - t0)) * (width - left - right);
  // The next commit after a generation's own ends its time as the newest.
  const commits = gens.filter(g => g.committed_at).map(g => +new Date(g.committed_at));
  gens.forEach((g, i) => {
    const y = i * lane + 4, open = +new Date(g.opened_at);
    const committed = g.committed_at ? +new Date(g.committed_at) : null;
    svg.append(el("svg:text", { x: 4, y: y + 13, text: "gen " + g.number }));
    const openEnd = committed || (g.state === "open" ? +now : Math.min(+now, open + (t1 - t0) / 100));
    svg.append(el("svg:rect", { class: g.state === "aborted" ? "g-aborted" : "g-open", x: x(open), y: y + 3, width: Math.max(2, x(openEnd) - x(open)), height: lane - 8 },
      el("svg:title", { text: `generation ${g.number} opened ${new Date(open).toISOString()}` })));
    if (committed) {
      const next = commits.filter(c => c > committed);
      const end = g.state === "retired" && next.length ? Math.min(...next) : +now;
      svg.append(el("svg:rect", { class: "g-" + g.state, x: x(committed), y: y + 3, width: Math.max(2, x(end) - x(committed)), height: lane - 8 },
        el("svg:title", { text: `generation ${g.number} ${g.state}, committed ${new Date(committed).toISOString()}` })));
    }
    svg.append(el("svg:text", { x: width - right + 6, y: y + 13, class: "muted", text: g.state + (g.current ? " *" : "") }));
  });
  svg.append(el("svg:line", { class: "grid", x1: left, x2: width - right, y1: h - 18, y2: h - 18 }));
  svg.append(el("svg:text", { x: left, y: h - 4, class: "muted", text: ago(t0, now) + " ago" }));
  svg.append(el("svg:text", { x: width - right - 24, y: h - 4, class: "muted", text: "now" }));
  box.append(svg);
}

async function poll() {
  try {
    let d;
    try {
      const r = await fetch("api/status", { cache: "no-store" });
      if (!r.ok) throw new Error(r.status + " " + (await r.text()));
      d = await r.json();
    } catch (e) {
      document.getElementById("banner").hidden = false;
      document.getElementById("updated").textContent = "no answer: " + e.message;
      return;
    }
    // A bug in render is thrown, not shown as a lost node.
    render(d);
    polls++;
    document.body.dataset.polls = polls;
    document.getElementById("banner").hidden = true;
    document.getElementById("updated").textContent = "updated " + new Date(d.time).toLocaleTimeString();
  } finally {
    setTimeout(poll, POLL_MS);
  }
}
poll();

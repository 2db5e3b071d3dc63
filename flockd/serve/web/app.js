// The node's page: served models, the on-chain catalogue with lineage graphs, chat (streamed over SSE from /v1/chat/completions), tasks.
"use strict";

const keyInput = document.getElementById("api-key");
keyInput.value = sessionStorage.getItem("flockd-api-key") || "";
keyInput.addEventListener("change", () => { sessionStorage.setItem("flockd-api-key", keyInput.value); refresh(); });

function headers() {
  const h = {"Content-Type": "application/json"};
  if (keyInput.value) h["Authorization"] = "Bearer " + keyInput.value;
  return h;
}

async function getJSON(path) {
  const response = await fetch(path, {headers: headers()});
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
  return body;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, attrs || {});
  for (const child of children) node.append(child);
  return node;
}

async function loadCatalogue() {
  const box = document.getElementById("models");
  const select = document.getElementById("chat-model");
  try {
    const cat = await getJSON("/api/catalogue");
    const table = el("table", {}, el("tr", {}, el("th", {}, "id"), el("th", {}, "kind"), el("th", {}, "parameters"),
                                     el("th", {}, "hash"), el("th", {}, "lineage")));
    select.replaceChildren();
    for (const m of cat.models) {
      const hash = m.files_hash || m.model_hash;
      table.append(el("tr", {}, el("td", {}, m.id), el("td", {}, m.kind + (m.recipe ? " (" + m.recipe + ")" : "")),
        el("td", {}, m.parameters.toLocaleString()), el("td", {}, el("code", {}, hash)),
        el("td", {className: "note"}, m.lineage_note)));
      if (m.kind === "causal-lm") select.append(el("option", {value: m.id}, m.id));
    }
    box.replaceChildren(table);
    const k = cat.knowledge;
    document.getElementById("knowledge").textContent = k.folder
      ? "Knowledge folder: " + k.folder + " (" + k.chunks + " chunks indexed)"
      : "No knowledge folder: chats are answered without retrieval.";
  } catch (err) {
    box.textContent = "cannot load the catalogue: " + err.message;
  }
}

function showSources(sources, parent) {
  if (!sources || !sources.length) return;
  const list = el("ol", {className: "sources"});
  for (const s of sources) {
    list.append(el("li", {}, el("b", {}, s.file + " #" + s.chunk), " (score " + s.score.toPrecision(3) + "): ",
                   s.text.slice(0, 160) + (s.text.length > 160 ? "…" : "")));
  }
  parent.append(el("div", {className: "sources"}, "Sources:"), list);
}

async function sendChat(event) {
  event.preventDefault();
  const input = document.getElementById("chat-input");
  const question = input.value.trim();
  if (!question) return;
  input.value = "";
  const conversation = document.getElementById("conversation");
  const status = document.getElementById("chat-status");
  conversation.append(el("div", {className: "msg user"}, el("b", {}, "you: "), question));
  const answer = el("span", {className: "answer"});
  const turn = el("div", {className: "msg assistant"}, el("b", {}, "model: "), answer);
  conversation.append(turn);
  const body = {
    model: document.getElementById("chat-model").value,
    messages: [{role: "user", content: question}],
    stream: true,
    max_tokens: Number(document.getElementById("max-tokens").value) || 64,
    retrieval: document.getElementById("use-retrieval").checked,
    stream_options: {include_usage: true},
  };
  status.textContent = "generating…";
  try {
    const response = await fetch("/v1/chat/completions", {method: "POST", headers: headers(), body: JSON.stringify(body)});
    if (!response.ok) {
      const err = await response.json();
      throw new Error(err.error ? err.error.message : response.statusText);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.sources) showSources(chunk.sources, turn);
        for (const choice of chunk.choices) if (choice.delta.content) answer.textContent += choice.delta.content;
        if (chunk.usage) status.textContent = chunk.usage.prompt_tokens + " prompt tokens, "
          + chunk.usage.completion_tokens + " generated";
      }
    }
  } catch (err) {
    status.textContent = "error: " + err.message;
  }
}

function plot(tasks) {
  const canvas = document.getElementById("task-plot");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const task = tasks.find(t => t.history.length);
  if (!task) { canvas.hidden = true; return; }
  canvas.hidden = false;
  const bpc = task.recipe.startsWith("lm");
  const key = bpc ? "test_loss" : "test_accuracy";
  const points = task.history.filter(h => typeof h[key] === "number").map(h => [h.round, h[key]]);
  const ys = points.map(p => p[1]);
  const lo = Math.min(...ys), hi = Math.max(...ys), span = hi - lo || 1;
  const x = i => 50 + (points.length > 1 ? i / (points.length - 1) : 0.5) * (canvas.width - 70);
  const y = v => canvas.height - 30 - (v - lo) / span * (canvas.height - 60);
  ctx.strokeStyle = "#1f3a5f"; ctx.fillStyle = "#1c2330"; ctx.font = "12px sans-serif";
  ctx.fillText("task " + task.task_id + ": " + (bpc ? "bits per character" : "test accuracy") + " by round", 50, 16);
  ctx.fillText(hi.toFixed(3), 4, y(hi) + 4); ctx.fillText(lo.toFixed(3), 4, y(lo) + 4);
  ctx.beginPath();
  points.forEach((p, i) => (i ? ctx.lineTo(x(i), y(p[1])) : ctx.moveTo(x(i), y(p[1]))));
  ctx.stroke();
  points.forEach((p, i) => { ctx.fillRect(x(i) - 2, y(p[1]) - 2, 4, 4); ctx.fillText("r" + p[0], x(i) - 6, canvas.height - 10); });
}

async function loadTasks() {
  const box = document.getElementById("task-list");
  try {
    const view = await getJSON("/api/tasks");
    if (!view.available) { box.textContent = view.why; plot([]); return; }
    if (!view.tasks.length) { box.textContent = "This node runs no task now."; plot([]); return; }
    const table = el("table", {}, el("tr", {}, ...["task", "recipe", "state", "rounds done", "model"].map(h => el("th", {}, h))));
    for (const t of view.tasks) {
      table.append(el("tr", {}, el("td", {}, String(t.task_id)), el("td", {}, t.recipe), el("td", {}, t.state),
        el("td", {}, t.history.length + " / " + t.rounds), el("td", {}, el("code", {}, t.model_hash || "—"))));
    }
    box.replaceChildren(table);
    plot(view.tasks);
  } catch (err) {
    box.textContent = "cannot load the tasks: " + err.message;
  }
}

// -- the catalogue of every listing on chain, each with its lineage as an SVG graph --------
// Every string here comes from the chain (any lister's): it is set with textContent only.
const SVG = "http://www.w3.org/2000/svg";
const NODE_W = 168, NODE_H = 50, GAP = 42;
const NODE_FILL = {arena: "#fde7c8", start: "#e8def8", task: "#d7e6f7", round: "#eef2f7", elided: "#f6f7f9",
                   listing: "#dff3e6"};
let listingsStart = 1;
let canReplay = false;  // inside a daemon: POST /api/listings/N/replay
const LISTINGS_PAGE = 10;

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function clip(text, n) { text = String(text); return text.length > n ? text.slice(0, n - 1) + "…" : text; }

// Two lines per node: what it is, and what the chain says of it.
function nodeLines(node) {
  const d = node.details;
  const short = hash => hash ? String(hash).slice(0, 10) + "…" : "no hash";
  switch (node.type) {
    case "arena": return ["Arena competition " + d.competition_id,
                          d.winner ? "winner scored " + d.winner.score.toFixed(4) : (d.problem || d.phase)];
    case "start": return ["started from listing " + d.listing_id, "its model " + short(d.model_hash)];
    case "task": return ["Alliance task " + d.task_id, d.recipe + ", " + d.rounds + " round(s)"];
    case "round": {
      let text = d.accepted + "/" + d.proposals + " accepted";
      if (typeof d.test_accuracy === "number") text += ", acc " + d.test_accuracy.toFixed(3);
      else if (typeof d.test_loss === "number") text += ", loss " + d.test_loss.toFixed(3);
      else text += ", " + short(d.model_hash);
      return ["round " + d.round, text];
    }
    case "elided": return ["earlier rounds", d.rounds + " round(s) not shown"];
    default: return ["listing " + d.listing_id, node.label.replace(/^listing \d+: /, "")];
  }
}

function showDetails(node, box) {
  const list = el("dl", {className: "node-details"});
  list.append(el("dt", {}, "node"), el("dd", {}, node.label));
  for (const [key, value] of Object.entries(node.details)) {
    const text = value !== null && typeof value === "object" ? JSON.stringify(value) : String(value);
    list.append(el("dt", {}, key), el("dd", {}, text));
  }
  box.replaceChildren(list);
  if (node.type === "start" && document.getElementById("listing-" + node.details.listing_id)) {
    box.append(el("a", {href: "#listing-" + node.details.listing_id}, "to listing " + node.details.listing_id));
  }
}

function drawLineage(graph, parent) {
  const holder = el("div", {className: "lineage"});
  const details = el("div", {});
  const nodes = graph.nodes;
  const width = nodes.length * (NODE_W + GAP) - GAP + 4, height = NODE_H + 8;
  const picture = svg("svg", {width, height, viewBox: "0 0 " + width + " " + height, role: "img"});
  const defs = svg("defs");
  const marker = svg("marker", {id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7,
                                orient: "auto-start-reverse"});
  marker.append(svg("path", {d: "M 0 0 L 10 5 L 0 10 z", fill: "#6b7380"}));
  defs.append(marker);
  picture.append(defs);
  const at = new Map(nodes.map((n, i) => [n.id, 2 + i * (NODE_W + GAP)]));
  for (const [from, to] of graph.edges) {
    if (!at.has(from) || !at.has(to)) continue;
    picture.append(svg("line", {class: "edge", x1: at.get(from) + NODE_W, y1: 4 + NODE_H / 2, x2: at.get(to) - 2,
                                y2: 4 + NODE_H / 2, "marker-end": "url(#arrow)"}));
  }
  nodes.forEach((node, i) => {
    const x = at.get(node.id);
    const g = svg("g", {class: "node " + node.type, tabindex: 0, "data-node": i});
    g.append(svg("rect", {x, y: 4, width: NODE_W, height: NODE_H, rx: 6, fill: NODE_FILL[node.type] || "#fff"}));
    const [head, line] = nodeLines(node);
    const title = svg("text", {x: x + 8, y: 22, class: "head"});
    title.textContent = clip(head, 26);
    const sub = svg("text", {x: x + 8, y: 40});
    sub.textContent = clip(line, 27);
    const tip = svg("title");
    tip.textContent = node.label;
    g.append(title, sub, tip);
    const select = () => {
      for (const other of picture.querySelectorAll(".node.selected")) other.classList.remove("selected");
      g.classList.add("selected");
      showDetails(node, details);
    };
    g.addEventListener("click", select);
    g.addEventListener("keydown", e => { if (e.key === "Enter") select(); });
    picture.append(g);
  });
  holder.append(picture);
  parent.append(holder);
  if (graph.error) parent.append(el("div", {className: "lineage-error"}, "lineage not read whole: " + graph.error));
  parent.append(details);
}

function listingCard(row) {
  const card = el("div", {className: "listing-card", id: "listing-" + row.listing_id});
  if (row.error) {
    card.append(el("h3", {}, "listing " + row.listing_id), el("div", {className: "lineage-error"}, row.error));
    return card;
  }
  const title = el("h3", {}, "#" + row.listing_id + " ", el("span", {className: "listing-name"}, row.name));
  if (row.served) title.append(el("span", {className: "badge served"}, "served here as " + row.served.model
                                   + " (" + row.served.endpoint + ")"));
  if (!row.active) title.append(el("span", {className: "badge unlisted"}, "unlisted"));
  card.append(title);
  if (row.description) card.append(el("p", {className: "description"}, row.description));
  const meta = [(row.kind === "competition" ? "Arena winner" : "Alliance task " + row.source_id)
                + (row.recipe ? " (" + row.recipe + ")" : ""), "licence: " + (row.licence || "none given"),
                "lister " + row.lister, "model " + row.model_hash.slice(0, 18) + "…", "block " + row.listed_block];
  if (row.verified) meta.push(row.verified.ok ? "fetched and verified here (" + row.verified.rounds_checked + " rounds)"
                                              : "fetched here, lineage not verified");
  card.append(el("div", {className: "meta"}, meta.join(" · ")));
  drawLineage(row.lineage, card);
  if (canReplay) {
    const outcome = el("div", {className: "replay-outcome"});
    const button = el("button", {type: "button", className: "replay"}, "replay the lineage here");
    button.addEventListener("click", () => replayLineage(row.listing_id, button, outcome));
    card.append(el("div", {}, button, " ", outcome));
  }
  return card;
}

// The listing's lineage replayed by this node (market_lineage): the competition recomputed,
// the rounds rebuilt from the deltas; slow, and one at a time on the server.
async function replayLineage(listingId, button, outcome) {
  button.disabled = true;
  outcome.textContent = "replaying…";
  try {
    const response = await fetch("/api/listings/" + listingId + "/replay", {method: "POST", headers: headers()});
    const report = await response.json();
    if (!response.ok) throw new Error(report.error ? report.error.message : response.statusText);
    if (report.error) { outcome.textContent = "not replayed: " + report.error; return; }
    const parts = report.lineage.map(p => p.kind === "competition"
      ? "competition " + p.competition_id + (p.ok ? " recomputed" : " does not verify")
      : "task " + p.task_id + ": " + p.rounds_checked + " round(s) replayed" + (p.ok ? "" : " with problems"));
    const problems = report.lineage.flatMap(p => p.problems || []);
    outcome.textContent = (report.ok ? "verified here: " : "NOT verified: ") + parts.join(" → ")
      + (problems.length ? " (" + problems.join("; ") + ")" : "");
    outcome.className = "replay-outcome " + (report.ok ? "ok" : "bad");
  } catch (err) {
    outcome.textContent = "cannot replay: " + err.message;
  } finally {
    button.disabled = false;
  }
}

async function loadListings() {
  const status = document.getElementById("listings-status");
  const cards = document.getElementById("listing-cards");
  try {
    const view = await getJSON("/api/listings?start=" + listingsStart + "&limit=" + LISTINGS_PAGE);
    if (!view.available) { status.textContent = view.why; cards.replaceChildren(); return; }
    canReplay = Boolean(view.replay);
    const last = listingsStart + view.listings.length - 1;
    status.textContent = view.total
      ? "listings " + listingsStart + "–" + last + " of " + view.total + " (as of block " + view.block + ")"
      : "nothing is listed on chain yet (block " + view.block + ")";
    document.getElementById("listings-prev").disabled = listingsStart <= 1;
    document.getElementById("listings-next").disabled = last >= view.total;
    cards.replaceChildren(...view.listings.map(listingCard));
  } catch (err) {
    status.textContent = "cannot load the listings: " + err.message;
  }
}

document.getElementById("listings-prev").addEventListener("click", () => {
  listingsStart = Math.max(1, listingsStart - LISTINGS_PAGE); loadListings();
});
document.getElementById("listings-next").addEventListener("click", () => { listingsStart += LISTINGS_PAGE; loadListings(); });

function refresh() { loadCatalogue(); loadListings(); loadTasks(); }
document.getElementById("chat-form").addEventListener("submit", sendChat);
refresh();

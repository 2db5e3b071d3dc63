// The node's page: catalogue, chat (streamed over SSE from /v1/chat/completions), tasks.
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

function refresh() { loadCatalogue(); loadTasks(); }
document.getElementById("chat-form").addEventListener("submit", sendChat);
refresh();

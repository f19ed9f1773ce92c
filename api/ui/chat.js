// engine's chat page: the OpenAI chat endpoint, streamed, with no build step and nothing fetched from
// elsewhere. Model output only ever reaches the page as text nodes (see renderMarkdown), never as HTML.
"use strict";

const STORE = "engine.chat.v1";
const KEY_STORE = "engine.apiKey";
const $ = (id) => document.getElementById(id);

const state = {
  messages: JSON.parse(localStorage.getItem(STORE) || "[]"),  // {role, content, stats?}
  model: null,
  controller: null,
};

function save() {
  localStorage.setItem(STORE, JSON.stringify(state.messages));
}

// ---- the API, with the key asked for once when the server wants one ----

async function api(path, init = {}) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const key = localStorage.getItem(KEY_STORE);
    const headers = { "Content-Type": "application/json", ...(init.headers || {}) };
    if (key) headers.Authorization = `Bearer ${key}`;
    const response = await fetch(path, { ...init, headers });
    if (response.status !== 401 || attempt === 1) return response;
    const given = window.prompt("This server needs an API key:");
    if (!given) return response;
    localStorage.setItem(KEY_STORE, given);
  }
}

async function loadModel() {
  const response = await api("/v1/models");
  if (!response.ok) {
    $("model").textContent = `no model (${response.status})`;
    return;
  }
  state.model = (await response.json()).data[0].id;
  $("model").textContent = state.model;
}

// ---- server-sent events, per the spec: data lines joined by newlines, dispatched at a blank line ----

async function* sseData(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = lines.pop();  // an unfinished line waits for more
    for (const line of lines) {
      if (line === "") {
        if (data.length) yield data.join("\n");
        data = [];
      } else if (line.startsWith("data:")) {
        data.push(line.slice(5).replace(/^ /, ""));
      }  // event:, id:, retry: and comments carry nothing the page uses
    }
  }
  if (data.length) yield data.join("\n");
}

// ---- markdown, built from DOM nodes: code blocks, headings, lists, paragraphs, `code`, **bold**, *em* ----

function inline(parent, text) {
  const pattern = /(`[^`]+`|\*\*[^*]+\*\*|\*[^*\s][^*]*\*)/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    parent.append(document.createTextNode(text.slice(last, match.index)));
    const token = match[0];
    const tag = token.startsWith("`") ? "code" : token.startsWith("**") ? "strong" : "em";
    const trim = tag === "strong" ? 2 : 1;
    const node = document.createElement(tag);
    node.textContent = token.slice(trim, token.length - trim);
    parent.append(node);
    last = match.index + token.length;
  }
  parent.append(document.createTextNode(text.slice(last)));
}

function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  const parts = text.split(/```[^\n]*\n?/);
  parts.forEach((part, index) => {
    if (index % 2 === 1) {  // inside a fence (an unclosed one too, while it streams)
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      code.textContent = part;
      pre.append(code);
      fragment.append(pre);
      return;
    }
    let list = null;
    for (const block of part.split(/\n{2,}/)) {
      for (const line of block.split("\n")) {
        const item = line.match(/^\s*(?:[-*]|\d+\.)\s+(.*)$/);
        const heading = line.match(/^(#{1,4})\s+(.*)$/);
        if (item) {
          if (!list) fragment.append(list = document.createElement("ul"));
          const li = document.createElement("li");
          inline(li, item[1]);
          list.append(li);
          continue;
        }
        list = null;
        if (!line.trim()) continue;
        const node = document.createElement(heading ? `h${heading[1].length + 2}` : "p");
        inline(node, heading ? heading[2] : line);
        fragment.append(node);
      }
      list = null;
    }
  });
  return fragment;
}

// ---- the conversation ----

function messageNode(message) {
  const node = document.createElement("div");
  node.className = `message ${message.role}`;
  fill(node, message);
  return node;
}

function fill(node, message) {
  node.replaceChildren(renderMarkdown(message.content || ""));
  if (message.stats) {
    const stats = document.createElement("div");
    stats.className = "stats";
    stats.textContent = message.stats;
    node.append(stats);
  }
}

function render() {
  $("conversation").replaceChildren(...state.messages.map(messageNode));
  $("conversation").scrollTop = $("conversation").scrollHeight;
}

const SETTINGS = ["system", "temperature", "top_p", "max_tokens"];
const SETTINGS_STORE = "engine.settings.v1";

function settings() {
  return {
    temperature: Number($("temperature").value),
    top_p: Number($("top_p").value),
    max_tokens: Number($("max_tokens").value),
  };
}

function keepSettings() {  // the settings outlive a reload, like the conversation
  const saved = JSON.parse(localStorage.getItem(SETTINGS_STORE) || "{}");
  for (const id of SETTINGS) {
    if (id in saved) $(id).value = saved[id];
    $(id).addEventListener("change", () => {
      localStorage.setItem(SETTINGS_STORE, JSON.stringify(Object.fromEntries(SETTINGS.map((k) => [k, $(k).value]))));
    });
  }
}

async function send(text) {
  state.messages.push({ role: "user", content: text });
  const reply = { role: "assistant", content: "" };
  state.messages.push(reply);
  render();
  const node = $("conversation").lastElementChild;
  const system = $("system").value.trim();
  const history = state.messages.slice(0, -1).filter((m) => m.role !== "error");
  const body = {
    model: state.model, stream: true, ...settings(),
    messages: [...(system ? [{ role: "system", content: system }] : []),
               ...history.map(({ role, content }) => ({ role, content }))],
  };
  state.controller = new AbortController();
  setBusy(true);
  const started = performance.now();
  let first = null, pieces = 0;
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST", body: JSON.stringify(body), signal: state.controller.signal,
    });
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      throw new Error((error.error && error.error.message) || `HTTP ${response.status}`);
    }
    for await (const data of sseData(response.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const delta = (chunk.choices[0] || {}).delta || {};
      if (delta.content) {
        if (first === null) first = performance.now();
        pieces += 1;
        reply.content += delta.content;
        fill(node, reply);
        $("conversation").scrollTop = $("conversation").scrollHeight;
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") {
      reply.role = "error";
      reply.content = `Error: ${error.message}`;
    }
  } finally {
    const now = performance.now();
    if (first !== null) {
      const rate = pieces > 1 ? ((pieces - 1) / ((now - first) / 1000)).toFixed(1) : "–";
      reply.stats = `TTFT ${(first - started).toFixed(0)} ms · ${rate} tok/s · ${pieces} tokens` +
                    (state.controller.signal.aborted ? " · stopped" : "");
    }
    node.className = `message ${reply.role}`;
    fill(node, reply);
    state.controller = null;
    setBusy(false);
    save();
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || state.controller) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("clear").addEventListener("click", () => {
  state.messages = [];
  save();
  render();
});

keepSettings();
render();
loadModel();

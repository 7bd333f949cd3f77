// The explorer's page: it asks the server for one panel at a time (JSON: the panel's SQL, its
// columns and rows) and lays the rows out. No number is computed here; the temperature slider asks
// SQL again. Routes are the URL's hash: #generate, #run/R, #step/R/S, #attention/R, #lens/R,
// #model/NAME, #runs.
"use strict";

const state = { run: null, step: 1, temperature: 1, block: 0, head: 0, model: null };
// The generation being streamed (its AbortController): leaving the view or the page aborts it, and
// the server then stops the run (marked interrupted, like Ctrl-C in the terminal).
let streaming = null;
const stopStreaming = () => { if (streaming) { streaming.abort(); streaming = null; } };
const main = () => document.getElementById("main");

// ------------------------------------------------------------------------------- small helpers
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}
const visible = (piece) => (piece ?? "").replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥");
const short = (text, width) => (text.length <= width ? text : `${text.slice(0, width - 1)}…`);
const fmt = (x, d = 4) => (x === null || x === undefined ? "—" : Number(x).toFixed(d));
const shade = (p) => `rgba(37, 99, 235, ${(0.08 + 0.77 * Math.max(0, Math.min(1, p ?? 0))).toFixed(3)})`;
const records = (panel) => panel.rows.map((r) => Object.fromEntries(panel.columns.map((c, i) => [c, r[i]])));

async function api(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  let body;
  try {
    body = await response.json();
  } catch (_) {   // not the API's JSON (a crash, a proxy's page): one line saying where to look
    throw new Error(`the server answered ${response.status} ${response.statusText} without a message; ` +
                    "see the terminal running gptsql serve");
  }
  if (body.error) throw new Error(body.error);
  return body;
}

function card(title, ...children) {
  return el("section", { class: "card" }, el("h2", {}, ...[].concat(title)), ...children);
}

function errorBox(message) {
  return el("div", { class: "error", role: "alert", text: message || "" });
}

// The query behind a panel, with a copy button: pasted into `gptsql db psql` it returns the rows.
function sqlBox(panel, open = false) {
  const pre = el("pre", { class: "sql-text", text: panel.sql + ";" });
  const copy = el("button", { class: "quiet copy", type: "button", text: "Copy" });
  copy.addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(pre.textContent); }
    catch (_) {  // no clipboard API (not a secure context): select and copy
      const range = document.createRange(); range.selectNodeContents(pre);
      const sel = getSelection(); sel.removeAllRanges(); sel.addRange(range); document.execCommand("copy");
    }
    copy.textContent = "Copied"; setTimeout(() => (copy.textContent = "Copy"), 1200);
  });
  return el("details", { class: "sql", open: open ? "" : null },
    el("summary", { text: `The query behind it (${panel.rows.length} rows) — paste into gptsql db psql` }), copy, pre);
}

async function show(render, waiting = "asking the database…") {
  const root = main();
  root.replaceChildren(el("p", { class: "muted", id: "waiting", text: waiting }));
  try { root.replaceChildren(...[].concat(await render())); }
  catch (exc) { root.replaceChildren(errorBox(exc.message)); }
}

function setRun(run) {
  state.run = run;
  const box = document.getElementById("current-run");
  box.replaceChildren();
  if (run === null) return;
  box.append("run ", el("a", { href: `#run/${run}`, text: `#${run}` }), " · ",
    el("a", { href: `#step/${run}/${state.step}`, text: "step" }), " · ",
    el("a", { href: `#attention/${run}`, text: "attention" }), " · ",
    el("a", { href: `#lens/${run}`, text: "lens" }));
}

async function latestRun() {
  if (state.run !== null) return state.run;
  const runs = await api("/api/runs?limit=1");
  if (!runs.rows.length) throw new Error('there are no runs yet; start one in Generate');
  setRun(runs.rows[0][0]);
  return state.run;
}

// ------------------------------------------------------------------------------------ tokens
// The run's tokens coloured by the probability each had when chosen; a click opens its step.
function tokenStrip(run, tokens, promptText) {
  const strip = el("div", { class: "tokens", id: "tokens" });
  if (promptText !== undefined) strip.append(el("span", { class: "prompt", text: promptText }));
  let step = 0;
  for (const t of tokens) {
    if (t.is_prompt) { strip.append(el("span", { class: "prompt", text: t.piece })); continue; }
    step += 1;
    strip.append(tokenSpan(run, step, t.piece, t.probability));
  }
  return strip;
}

function tokenSpan(run, step, text, probability) {
  const span = el("span", {
    class: "tok", text, "data-step": step, "data-p": probability, "data-arrived": performance.now().toFixed(1),
    title: `step ${step}: p = ${fmt(probability)} — click to open the step`,
  });
  span.style.background = shade(probability);
  if (probability > 0.6) span.style.color = "white";
  span.addEventListener("click", () => { state.step = step; location.hash = `#step/${run}/${step}`; });
  return span;
}

const legend = () => el("div", { class: "legend" }, "probability when chosen: 0", el("span", { class: "scale" }), "1");

// ---------------------------------------------------------------------------------- generate
async function viewGenerate() {
  const models = await api("/api/models");
  if (!models.rows.length) return errorBox("no model is loaded; load one first: gptsql load random:tiny");
  const names = models.rows.map((r) => r[0]);
  const field = (label, input) => el("label", {}, label, input);
  const form = el("form", { class: "generate", id: "generate-form" },
    el("label", { class: "wide" }, "Prompt",
      el("textarea", { id: "prompt", name: "prompt", rows: 2, text: "Happy New Year! I wish" })),
    field("Model", el("select", { id: "model", name: "model" }, ...names.map((n) => el("option", { value: n, text: n })))),
    field("Temperature", el("input", { id: "temperature", name: "temperature", value: "0.8", size: 5 })),
    field("Top-k (0: all)", el("input", { id: "top_k", name: "top_k", value: "0", size: 5 })),
    field("Top-p", el("input", { id: "top_p", name: "top_p", value: "1", size: 5 })),
    field("Seed (empty: random)", el("input", { id: "seed", name: "seed", value: "", size: 6 })),
    field("Max tokens", el("input", { id: "max_tokens", name: "max_tokens", value: "20", size: 5 })),
    el("div", { class: "wide row" }, el("button", { id: "go", type: "submit", text: "Generate" }),
      el("span", { class: "muted", id: "gen-status" })));
  const error = errorBox("");
  error.id = "error";
  const output = el("div", { id: "output" });
  form.addEventListener("submit", (e) => { e.preventDefault(); generate(form, error, output); });
  return [card("Generate", error, form), output];
}

// A generation is a POST of the form's fields (the server refuses a GET: a link or an image could
// start one); its answer is a stream of server-sent events, read here as they come.
async function generate(form, error, output) {
  const fields = Object.fromEntries(new FormData(form));
  const go = form.querySelector("#go"), status = form.querySelector("#gen-status");
  error.textContent = "";
  go.disabled = true;
  status.textContent = "starting…";
  const strip = el("div", { class: "tokens", id: "tokens" });
  const box = card("The continuation, as the database chose it", strip, legend());
  output.replaceChildren(box);
  stopStreaming();
  const controller = new AbortController();
  streaming = controller;
  let run = null;
  const handlers = {
    start: (d) => {
      run = d.run; setRun(run);
      strip.append(el("span", { class: "prompt", text: d.prompt }));
      status.textContent = `run ${run}: ${d.prompt_tokens} prompt tokens, generating…`;
    },
    token: (d) => {
      strip.append(tokenSpan(run, d.step, d.text, d.probability));
      status.textContent = `run ${run}: ${d.step} tokens`;
    },
    done: async (d) => {
      // The strip again, from the recorded run: the numbers the query below returns.
      try {
        const tokens = await api(`/api/runs/${d.run}/tokens`);
        strip.replaceWith(tokenStrip(d.run, records(tokens)));
        box.append(sqlBox(tokens));
      } catch (exc) { error.textContent = exc.message; }
      status.textContent = `run ${d.run}: done, ${d.tokens} tokens. Click a token to open its step.`;
    },
    error: (d) => { error.textContent = d.message; status.textContent = ""; },
  };
  let ended = false;
  try {
    const response = await fetch("/api/generate", {
      method: "POST", signal: controller.signal, body: JSON.stringify(fields),
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
    });
    if (!response.ok) {
      let message = `the server answered ${response.status} ${response.statusText}; see the terminal running gptsql serve`;
      try { message = (await response.json()).error || message; } catch (_) { /* not the API's JSON */ }
      throw new Error(message);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const message = sseMessage(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
        if (message && handlers[message.kind]) {
          ended = ended || ["done", "error"].includes(message.kind);
          await handlers[message.kind](message.data);
        }
      }
    }
    if (!ended) error.textContent = "the server closed the stream";
  } catch (exc) {
    if (exc.name !== "AbortError") { error.textContent = exc.message; status.textContent = ""; }
  } finally {
    if (streaming === controller) streaming = null;
    go.disabled = false;
  }
}

// One server-sent event ("event: KIND" and "data: JSON" lines) as { kind, data }.
function sseMessage(text) {
  let kind = "message", data = "";
  for (const line of text.split("\n")) {
    if (line.startsWith("event:")) kind = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  return data ? { kind, data: JSON.parse(data) } : null;
}

// ------------------------------------------------------------------------------------- a run
async function viewRun(run) {
  setRun(run);
  const [info, tokens] = await Promise.all([api(`/api/runs/${run}`), api(`/api/runs/${run}/tokens`)]);
  const r = records(info)[0];
  const kv = el("div", { class: "kv" });
  for (const k of ["model", "status", "prompt_tokens", "generated_tokens", "temperature", "top_k", "top_p", "seed", "recorded", "started_at"]) {
    kv.append(el("span", { class: "k", text: k }), el("span", { text: String(r[k] ?? "—") }));
  }
  if (r.error) kv.append(el("span", { class: "k", text: "error" }), el("span", { text: r.error }));
  return [card([`Run ${run} `, el("span", { class: "muted", text: r.kind })], kv, sqlBox(info)),
          card("Its tokens", tokenStrip(run, records(tokens)), legend(), sqlBox(tokens))];
}

// -------------------------------------------------------------------------------------- step
async function viewStep(run, step) {
  run = run ?? (await latestRun());
  setRun(run);
  state.step = step;
  const info = records(await api(`/api/runs/${run}`))[0];
  const n = info.generated_tokens;
  const error = errorBox("");
  const bars = el("div", { id: "bars" });
  const value = el("span", { class: "mono", id: "temperature-value", text: fmt(state.temperature, 2) });
  const slider = el("input", { type: "range", id: "temperature-slider", min: "0", max: "2", step: "0.05",
                               value: String(state.temperature) });
  let pending = 0;
  async function redraw() {
    const asked = ++pending;
    try {
      const panel = await api(`/api/runs/${run}/steps/${step}?temperature=${state.temperature}`);
      if (asked !== pending) return;  // a newer position of the slider is on its way
      error.textContent = "";
      bars.replaceChildren(stepBars(panel), sqlBox(panel));
    } catch (exc) { error.textContent = exc.message; }
  }
  slider.addEventListener("input", () => {
    state.temperature = Number(slider.value);
    value.textContent = fmt(state.temperature, 2);
    redraw();
  });
  const nav = el("div", { class: "row" },
    el("button", { class: "quiet", type: "button", disabled: step <= 1 ? "" : null,
                   onclick: () => (location.hash = `#step/${run}/${step - 1}`), text: "← previous" }),
    el("span", { text: `step ${step} of ${n}` }),
    el("button", { class: "quiet", type: "button", disabled: step >= n ? "" : null,
                   onclick: () => (location.hash = `#step/${run}/${step + 1}`), text: "next →" }));
  await redraw();
  return card([`Step ${step} of run ${run} `, el("span", { class: "muted", title: info.prompt, text: `· ${info.model} · “${short(info.prompt, 80)}”` })],
    nav, error,
    el("div", { class: "slider" }, "temperature", slider, value,
       el("span", { class: "muted", text: "softmax at T over the ten recorded logits, in SQL (0: greedy)" })),
    bars);
}

function stepBars(panel) {
  const rows = records(panel);
  const head = rows.length ? `after “${visible(rows[0].after_piece)}” (place ${rows[0].place})` : "no candidates recorded";
  const grid = el("div", { class: "bars" },
    el("span", { class: "head", text: "candidate" }), el("span", { class: "head", text: head }),
    // At T = 1 the two differ: the slider's softmax is over these ten, the recorded one over the vocabulary.
    el("span", { class: "head", text: "p at T, among these ten" }),
    el("span", { class: "head", text: "p at T = 1, whole vocabulary" }));
  for (const r of rows) {
    const cls = r.chosen ? "chosen" : "";
    const bar = el("div", { class: "bar" });
    bar.style.width = `${(100 * r.p_at_temperature).toFixed(2)}%`;
    grid.append(
      el("span", { class: `piece ${cls}`, text: (r.chosen ? "★ " : "") + visible(r.piece), title: `token ${r.token}, logit ${r.logit}` }),
      el("div", { class: `track ${cls}` }, bar),
      el("span", { class: "num p-at-t", "data-rank": r.rank, text: fmt(r.p_at_temperature) }),
      el("span", { class: "num muted", text: fmt(r.probability) }));
  }
  const chosen = rows.some((r) => r.chosen) ? "★ the token the run went on with" : "the run went on with a token outside these ten";
  return el("div", {}, grid, el("p", { class: "muted", text: chosen }));
}

// --------------------------------------------------------------------------------- attention
async function viewAttention(run) {
  run = run ?? (await latestRun());
  setRun(run);
  const grid = await api(`/api/runs/${run}/attention?pixels=32`);
  const maps = {};
  for (const [block, head, q, weights] of grid.rows) {
    (maps[`${block}/${head}`] ??= [])[q] = weights;
  }
  const heads = el("div", { class: "heads", id: "heads" });
  heads.style.gridTemplateColumns = `60px repeat(${grid.n_head}, 76px)`;
  heads.append(el("span"));
  for (let h = 0; h < grid.n_head; h++) heads.append(el("span", { class: "label", text: `head ${h}`, style: "text-align:center" }));
  const large = el("div", { id: "large" });
  const thumbs = [];
  for (let b = 0; b < grid.n_layer; b++) {
    heads.append(el("span", { class: "label", text: `block ${b}` }));
    for (let h = 0; h < grid.n_head; h++) {
      const canvas = el("canvas", { class: "thumb", "data-block": b, "data-head": h, title: `block ${b}, head ${h}` });
      drawMatrix(canvas, maps[`${b}/${h}`] || [], 1);
      canvas.addEventListener("click", () => { state.block = b; state.head = h; openHead(run, large, thumbs); });
      thumbs.push(canvas);
      heads.append(canvas);
    }
  }
  const first = card([`Attention of run ${run} `, el("span", { class: "muted", text: "every head of every block; click one" })],
    el("div", { class: "scroll" }, heads),
    el("p", { class: "muted", text: "Each square shows the strongest weight among the places it covers (rows: query places, columns: key places)." }),
    sqlBox(grid));
  const second = card("One head", large);
  openHead(run, large, thumbs);
  return [first, second];
}

// A weight matrix (rows of weights, row q has q + 1 keys) onto a canvas, `cell` pixels a place.
function drawMatrix(canvas, rows, cell) {
  const n = rows.length;
  canvas.width = Math.max(1, n * cell); canvas.height = Math.max(1, n * cell);
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  rows.forEach((weights, q) => (weights || []).forEach((w, k) => {
    ctx.fillStyle = shade(w); ctx.fillRect(k * cell, q * cell, cell, cell);
  }));
}

async function openHead(run, box, thumbs) {
  for (const t of thumbs) t.classList.toggle("selected", +t.dataset.block === state.block && +t.dataset.head === state.head);
  box.replaceChildren(el("p", { class: "muted", text: "asking the database…" }));
  try {
    const panel = await api(`/api/runs/${run}/attention/${state.block}/${state.head}`);
    box.replaceChildren(...headMap(panel), sqlBox(panel));
  } catch (exc) { box.replaceChildren(errorBox(exc.message)); }
}

// One head large: token pieces on both axes (keys on top, queries on the left), weight under the pointer.
function headMap(panel) {
  const rows = records(panel);
  const n = rows.length, cell = Math.max(12, Math.min(28, Math.floor(720 / Math.max(n, 1))));
  const pieces = rows.map((r) => visible(r.query_piece));
  const margin = Math.min(140, 14 + 7 * Math.max(...pieces.map((p) => p.length), 4));
  const canvas = el("canvas", { id: "head-map", "data-margin": margin, "data-cell": cell, "data-places": n });
  const ratio = window.devicePixelRatio || 1;
  const size = margin + n * cell + 4;
  canvas.width = size * ratio; canvas.height = size * ratio;
  canvas.style.width = `${size}px`; canvas.style.height = `${size}px`;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, size, size);
  ctx.font = `${Math.min(12, cell - 1)}px system-ui, sans-serif`;
  ctx.fillStyle = "#1f2933"; ctx.textBaseline = "middle";
  pieces.forEach((p, i) => {
    ctx.textAlign = "right"; ctx.fillText(p, margin - 4, margin + i * cell + cell / 2, margin - 8);
    ctx.save(); ctx.translate(margin + i * cell + cell / 2, margin - 4); ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "left"; ctx.fillText(p, 0, 0, margin - 8); ctx.restore();
  });
  rows.forEach((r, q) => r.weights.forEach((w, k) => {
    ctx.fillStyle = shade(w); ctx.fillRect(margin + k * cell, margin + q * cell, cell - 1, cell - 1);
  }));
  const readout = el("div", { class: "readout", id: "readout", text: "point at a square: who looks at whom, and how much" });
  canvas.addEventListener("mousemove", (e) => {
    const box = canvas.getBoundingClientRect();
    const k = Math.floor((e.clientX - box.left - margin) / cell), q = Math.floor((e.clientY - box.top - margin) / cell);
    if (q < 0 || k < 0 || q >= n || k > q) { readout.textContent = " "; return; }
    readout.textContent = `query ${q} “${pieces[q]}” → key ${k} “${pieces[k]}”: weight ${fmt(rows[q].weights[k])}`;
  });
  const title = el("p", {}, el("b", { text: `block ${state.block}, head ${state.head}` }),
    el("span", { class: "muted", text: ` · ${n} places · rows: the place that looks (query) · columns: the place looked at (key)` }));
  return [title, readout, el("div", { class: "big" }, canvas)];
}

// ----------------------------------------------------------------------- lens and residual
async function viewLens(run, first, last) {
  run = run ?? (await latestRun());
  setRun(run);
  const query = first !== undefined ? `?first=${first}&last=${last}` : "";
  const [lens, norms] = await Promise.all([api(`/api/runs/${run}/lens${query}`), api(`/api/runs/${run}/norms`)]);
  const rows = records(lens);
  const places = [...new Set(rows.map((r) => r.place))], blocks = [...new Set(rows.map((r) => r.block))];
  const at = Object.fromEntries(rows.map((r) => [`${r.block}/${r.place}`, r]));
  const table = el("table", { class: "grid", id: "lens" });
  const head = el("tr", {}, el("th", { text: "block \\ place" }));
  for (const p of places) head.append(el("th", { text: `${p}\n${visible(at[`0/${p}`]?.piece)}` }));
  table.append(head);
  for (const b of blocks) {
    const tr = el("tr", {}, el("th", { text: String(b) }));
    for (const p of places) {
      const r = at[`${b}/${p}`];
      const td = el("td", { class: r.is_next ? "next" : "", text: `${visible(r.predicted_piece)}\n${fmt(r.probability, 3)}`,
                            title: `after block ${b}, place ${p} would say “${r.predicted_piece}” with p = ${r.probability}${r.is_next ? " (what came next)" : ""}` });
      td.style.background = shade(r.probability);
      if (r.probability > 0.6) td.style.color = "white";
      tr.append(td);
    }
    table.append(tr);
  }
  const lo = places[0], hi = places[places.length - 1];
  const window_ = el("form", { class: "row" }, "places",
    el("input", { id: "lens-first", value: lo, size: 4 }), "to", el("input", { id: "lens-last", value: hi, size: 4 }),
    el("button", { class: "quiet", type: "submit", text: "Show" }),
    el("span", { class: "muted", text: `of 0 to ${lens.places - 1} (one vocabulary scan per block and place: keep the window small on big models)` }));
  window_.addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = `#lens/${run}/${window_.querySelector("#lens-first").value}/${window_.querySelector("#lens-last").value}`;
  });
  return [
    card([`Logit lens of run ${run} `, el("span", { class: "muted", text: "what the model would say if it stopped after each block" })],
      window_, el("div", { class: "scroll" }, table),
      el("p", { class: "muted", text: "Framed: the token that actually came next." }), sqlBox(lens)),
    card(["Residual stream ", el("span", { class: "muted", text: "its length (L2 norm) through the blocks, one line per place" })],
      normsChart(records(norms)), sqlBox(norms)),
  ];
}

function normsChart(rows) {
  const blocks = Math.max(...rows.map((r) => r.block)) + 1;
  const byPlace = {};
  for (const r of rows) {
    const line = (byPlace[r.place] ??= { piece: r.piece, points: [] });
    line.points[2 * r.block] = r.norm_after_attention; line.points[2 * r.block + 1] = r.norm_after_mlp;
  }
  const W = 900, H = 300, left = 50, bottom = 40, top = 10, right = 20;  // right: half the last label
  const max = Math.max(...rows.map((r) => Math.max(r.norm_after_attention, r.norm_after_mlp)), 1e-9);
  const x = (i) => left + (i / Math.max(1, 2 * blocks - 1)) * (W - left - right);
  const y = (v) => top + (1 - v / max) * (H - top - bottom);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`); svg.setAttribute("width", "100%"); svg.id = "norms";
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node); return node;
  };
  for (let t = 0; t <= 4; t++) {
    const v = (max * t) / 4;
    add("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), stroke: "#e3e7ec" });
    add("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, v.toFixed(v < 10 ? 1 : 0));
  }
  // A label needs about 28 px ("47m"): every point when they fit, else every k-th block's end (and the last).
  const room = W - left - right, label = 28;
  if (2 * blocks * label <= room) {
    for (let i = 0; i < 2 * blocks; i++) {
      add("text", { x: x(i), y: H - bottom + 16, "text-anchor": "middle" }, `${Math.floor(i / 2)}${i % 2 ? "m" : "a"}`);
    }
    add("text", { x: (left + W) / 2, y: H - 6, "text-anchor": "middle" }, "block: a after the attention, m after the MLP");
  } else {
    const k = Math.ceil((blocks * label) / room);
    for (let b = 0; b < blocks; b++) {
      if ((b % k === 0 && blocks - 1 - b >= k) || b === blocks - 1) {
        add("text", { x: x(2 * b + 1), y: H - bottom + 16, "text-anchor": "middle" }, String(b));
      }
    }
    add("text", { x: (left + W) / 2, y: H - 6, "text-anchor": "middle" },
        "block (two points each: after the attention, after the MLP; labelled after the MLP)");
  }
  const places = Object.keys(byPlace);
  places.forEach((p, j) => {
    const line = byPlace[p];
    const pts = line.points.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    const hue = 220 - (160 * j) / Math.max(1, places.length - 1);
    const poly = add("polyline", { points: pts, fill: "none", stroke: `hsl(${hue}, 70%, 45%)`, "stroke-width": 1.5, opacity: 0.7 });
    const title = document.createElementNS(ns, "title");
    title.textContent = `place ${p} “${line.piece}”: ${line.points.map((v) => v.toFixed(1)).join(" → ")}`;
    poly.append(title);
    poly.addEventListener("mouseenter", () => { poly.setAttribute("stroke-width", 4); poly.setAttribute("opacity", 1); });
    poly.addEventListener("mouseleave", () => { poly.setAttribute("stroke-width", 1.5); poly.setAttribute("opacity", 0.7); });
  });
  return el("div", {}, svg, el("p", { class: "muted", text: "Colour runs from the first place (blue) to the last (green); point at a line for its place and numbers." }));
}

// ---------------------------------------------------------------------------------- the model
const FLOW = [  // one place's way through the model: part, what it is, its shape, the SQL function and its file
  { part: "tokens", title: "Tokenizer", shape: () => "text → token ids (byte-pair merges)", fn: "gptsql.tokenize", file: "01_tokenizer.sql" },
  { part: "wte", title: "Token embedding wte", shape: (m) => `${m.n_vocab} × ${m.n_embd}`, fn: "gptsql.embeddings", file: "02_embeddings.sql" },
  { part: "wpe", title: "+ Position embedding wpe", shape: (m) => `${m.n_ctx} × ${m.n_embd}`, fn: "gptsql.embeddings", file: "02_embeddings.sql" },
  { block: [
    { part: "ln_1", title: "Layer norm ln_1", shape: (m) => `γ, β: ${m.n_embd} each`, fn: "gptsql.layer_norm", file: "03_norm_linear.sql" },
    { part: "c_attn", title: "Queries, keys, values c_attn", shape: (m) => `${m.n_embd} → 3 × ${m.n_embd}`, fn: "gptsql.matmul", file: "03_norm_linear.sql" },
    { part: "attention", title: "Causal self-attention", shape: (m) => `${m.n_head} heads × ${m.n_embd / m.n_head}, softmax(q·k/√${m.n_embd / m.n_head})`, fn: "gptsql.attend", file: "04_attention.sql" },
    { part: "attn_proj", title: "Projection attn_proj", shape: (m) => `${m.n_embd} → ${m.n_embd}`, fn: "gptsql.attention_share", file: "04_attention.sql" },
    { part: "add", title: "+ residual", shape: () => "h + attention(ln_1(h))", fn: "gptsql.block", file: "06_blocks.sql" },
    { part: "ln_2", title: "Layer norm ln_2", shape: (m) => `γ, β: ${m.n_embd} each`, fn: "gptsql.layer_norm", file: "03_norm_linear.sql" },
    { part: "c_fc", title: "MLP up c_fc + GELU", shape: (m) => `${m.n_embd} → ${4 * m.n_embd}`, fn: "gptsql.mlp_share", file: "05_mlp.sql" },
    { part: "mlp_proj", title: "MLP down mlp_proj", shape: (m) => `${4 * m.n_embd} → ${m.n_embd}`, fn: "gptsql.mlp_share", file: "05_mlp.sql" },
    { part: "add", title: "+ residual", shape: () => "a + mlp(ln_2(a))", fn: "gptsql.block", file: "06_blocks.sql" },
  ] },
  { part: "ln_f", title: "Final layer norm ln_f", shape: (m) => `γ, β: ${m.n_embd} each`, fn: "gptsql.forward", file: "06_blocks.sql" },
  { part: "logits", title: "Logits: h · wteᵀ (tied)", shape: (m) => `${m.n_embd} → ${m.n_vocab}`, fn: "gptsql.logits", file: "07_logits.sql" },
  { part: "sampling", title: "Softmax, temperature, top-k / top-p", shape: () => "→ the next token", fn: "gptsql.choose", file: "07_logits.sql" },
];

async function viewModel(name) {
  const models = await api("/api/models");
  if (!models.rows.length) return errorBox("no model is loaded; load one first: gptsql load random:tiny");
  const all = records(models);
  const m = all.find((r) => r.name === name) || all[0];
  state.model = m.name;
  const parts = await api(`/api/models/${encodeURIComponent(m.name)}/parts`);
  const perBlock = Object.fromEntries(records(parts).map((r) => [r.part, r.per_block]));
  const total = parts.rows.length ? records(parts)[0].all_parts : 0;
  const picker = el("select", { id: "model-pick", onchange: (e) => (location.hash = `#model/${encodeURIComponent(e.target.value)}`) },
    ...all.map((r) => el("option", { value: r.name, text: r.name, selected: r.name === m.name ? "" : null })));
  const box = (s) => {
    const params = perBlock[s.part];   // a block's part: its parameters in one block (the query's per_block)
    const label = params === undefined ? "" : `${Number(params).toLocaleString("en")} parameters`;
    return el("div", { class: `box ${s.part === "add" ? "add" : ""}`, "data-part": s.part, "data-function": s.fn },
      el("b", { text: s.title }), el("a", { href: `/sql/${s.file}`, target: "_blank", text: `sql/${s.file}` }),
      el("span", { class: "shape", text: s.shape(m) }), el("span", { class: "params", text: label }),
      el("code", { class: "fn", text: s.fn, title: `in psql: \\sf ${s.fn}` }));
  };
  const flow = el("div", { class: "flow", id: "flow" });
  FLOW.forEach((s, i) => {
    if (i) flow.append(el("div", { class: "arrow", text: "↓" }));
    if (s.block) {
      const block = el("div", { class: "block" }, el("div", { class: "title", text: `block × ${m.n_layer} (parameters per block)` }));
      s.block.forEach((b, j) => { if (j) block.append(el("div", { class: "arrow", text: "↓" })); block.append(box(b)); });
      flow.append(block);
    } else flow.append(box(s));
  });
  const kv = el("div", { class: "kv", id: "model-facts" });
  for (const [k, v] of [["source", m.source], ["blocks (n_layer)", m.n_layer], ["width (n_embd)", m.n_embd],
                        ["heads (n_head)", m.n_head], ["context (n_ctx)", m.n_ctx], ["vocabulary (n_vocab)", m.n_vocab],
                        ["parameters (model row)", Number(m.n_params).toLocaleString("en")],
                        ["parameters (counted in the rows)", Number(total).toLocaleString("en")],
                        ["size on disk", `${(m.bytes / 2 ** 20).toFixed(0)} MB`]]) {
    kv.append(el("span", { class: "k", text: k }), el("span", { text: String(v) }));
  }
  return [card(["The model ", picker], kv, sqlBox(models)),
          card(["One place through the model ", el("span", { class: "muted", text: "each part names the SQL function that computes it and links to its file" })],
            flow,
            // The default path (workers, one per core) splits each block's heads and units over several
            // backends: the same math by other functions, in one file of its own.
            el("p", { class: "muted", id: "shards" }, "Each block's heads, MLP units and the vocabulary are shared out over the session's backends (one per core by default: share 0 on its own backend, the others through dblink) by ",
              el("a", { href: "/sql/10_shares.sql", target: "_blank", text: "sql/10_shares.sql" }),
              ": the functions above, each on its share; gptsql serve --workers 1 runs them all on one backend."),
            sqlBox(parts))];
}

// --------------------------------------------------------------------------------------- runs
async function viewRuns() {
  const runs = await api("/api/runs?limit=50");
  if (!runs.rows.length) return card("Runs", el("p", { class: "muted", text: "No runs yet: generate one." }));
  const table = el("table", { class: "list", id: "runs" },
    el("tr", {}, ...["run", "model", "status", "prompt → continuation", "tokens", "T", "started", "open"].map((h) => el("th", { text: h }))));
  for (const r of records(runs)) {
    const open = el("span", {}, el("a", { href: `#run/${r.run}`, text: "tokens" }));
    if (r.recorded && r.generated_tokens) {
      open.append(" · ", el("a", { href: `#step/${r.run}/1`, text: "step" }), " · ",
        el("a", { href: `#attention/${r.run}`, text: "attention" }), " · ", el("a", { href: `#lens/${r.run}`, text: "lens" }));
    }
    table.append(el("tr", { "data-run": r.run },
      el("td", {}, el("a", { href: `#run/${r.run}`, text: `#${r.run}` })), el("td", { text: r.model }),
      el("td", {}, el("span", { class: `status ${r.status}`, text: r.status })),
      el("td", { class: "text" }, el("span", { class: "muted", text: r.prompt }), r.generated_text ?? ""),
      el("td", { text: `${r.prompt_tokens} + ${r.generated_tokens}` }), el("td", { text: String(r.temperature) }),
      el("td", { class: "muted", text: (r.started_at || "").replace("T", " ").slice(0, 19) }), el("td", {}, open)));
  }
  return card(["Runs ", el("span", { class: "muted", text: "newest first" })], el("div", { class: "scroll" }, table), sqlBox(runs));
}

// ------------------------------------------------------------------------------------ routing
function route() {
  stopStreaming();
  const [view, ...args] = (location.hash.slice(1) || "generate").split("/").map(decodeURIComponent);
  const num = (v) => (v === undefined || v === "" ? undefined : Number(v));
  const tab = { run: "runs" }[view] || view;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === tab);
  const views = {
    generate: () => viewGenerate(),
    run: () => viewRun(num(args[0])),
    step: () => viewStep(num(args[0]), num(args[1]) ?? 1),
    attention: () => viewAttention(num(args[0])),
    lens: () => viewLens(num(args[0]), num(args[1]), num(args[2])),
    model: () => viewModel(args[0]),
    runs: () => viewRuns(),
  };
  const waiting = {
    lens: "asking the database: the logit lens is one scan of the whole vocabulary per block and place (a few seconds on GPT-2 124M)…",
    attention: "asking the database for every head's weights…",
  }[view];
  show(views[view] || views.generate, waiting);
}

window.addEventListener("hashchange", route);
window.addEventListener("pagehide", stopStreaming);
window.addEventListener("DOMContentLoaded", () => {
  for (const a of document.querySelectorAll("#nav a")) {
    // The Step, Attention and Lens tabs open the current run (the newest when none is chosen).
    a.addEventListener("click", (e) => {
      const v = a.dataset.view;
      if (state.run !== null && ["step", "attention", "lens"].includes(v)) {
        e.preventDefault();
        location.hash = v === "step" ? `#step/${state.run}/${state.step}` : `#${v}/${state.run}`;
      }
    });
  }
  route();
});

// The explorer's page: it asks the server for one panel at a time (JSON: the panel's SQL, its
// columns and rows) and lays the rows out. No number is computed here; the temperature slider asks
// SQL again. Routes are the URL's hash: #generate, #run/R, #step/R/S, #inside/R/P/B/H[/stage],
// #tour/N, #attention/R, #lens/R, #model/NAME, #runs.
"use strict";

const state = { run: null, step: 1, temperature: null, block: 0, head: 0, place: null, model: null };
const main = () => document.getElementById("main");

// The view on screen: its number and an AbortController. A view that answers after another was
// opened is dropped (its requests are aborted, and the server cancels their queries).
let current = { id: 0, controller: new AbortController() };

// The generation being streamed. It goes on while other views are open (a click on one of its
// tokens opens that token's step); it stops when the page goes away or Stop is pressed, and the
// server then ends the run as interrupted, like Ctrl-C in the terminal.
const live = { controller: null, nodes: null, run: null };
const stopStreaming = () => { if (live.controller) { live.controller.abort(); live.controller = null; } showLive(); };

const UNREACHABLE = "the explorer's server does not answer: is gptsql serve still running? " +
                    "Start it again, then reload the page";

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
const sqlLink = (file) => el("a", { href: `/sql/${file}`, target: "_blank", class: "mono", text: `sql/${file}` });

// One request of the view on screen (or of `signal`'s): the panel's JSON, or an Error in the
// page's words (an AbortError when the view was left).
async function api(path, signal = current.controller.signal) {
  let response;
  try {
    response = await fetch(path, { headers: { Accept: "application/json" }, signal });
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw new Error(UNREACHABLE);
  }
  let body;
  try {
    body = await response.json();
  } catch (exc) {   // not the API's JSON (a crash, a proxy's page): one line saying where to look
    if (exc.name === "AbortError") throw exc;
    throw new Error(`the server answered ${response.status} ${response.statusText} without a message; ` +
                    "see the terminal running gptsql serve");
  }
  if (body.error) throw new Error(body.error);
  return body;
}

// Run `jobs` (functions returning promises) two at a time, in order.
async function inTurn(jobs, width = 2) {
  let next = 0;
  const worker = async () => { while (next < jobs.length) await jobs[next++](); };
  await Promise.all(Array.from({ length: Math.min(width, jobs.length) }, worker));
}

function card(title, ...children) {
  return el("section", { class: "card" }, el("h2", {}, ...[].concat(title)), ...children);
}

function errorBox(message) {
  return el("div", { class: "error", role: "alert", text: message || "" });
}

// The query behind a panel, with a copy button: pasted into `gptsql db psql` it returns the rows.
function sqlBox(panel, open = false, note = "") {
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
    el("summary", { text: `The query behind it (${panel.rows.length} rows) — paste into gptsql db psql${note}` }), copy, pre);
}

async function show(render, waiting = "asking the database…") {
  current.controller.abort();
  const mine = { id: current.id + 1, controller: new AbortController() };
  current = mine;
  const root = main();
  root.replaceChildren(el("p", { class: "muted", id: "waiting", text: waiting }));
  try {
    const nodes = [].concat(await render());
    if (current === mine) root.replaceChildren(...nodes);
  } catch (exc) {
    if (current === mine && exc.name !== "AbortError") root.replaceChildren(errorBox(exc.message));
  }
}

function setRun(run) {
  if (run !== state.run) {       // another run: its own step, place and temperature
    state.step = 1; state.place = null; state.temperature = null;
  }
  state.run = run;
  const box = document.getElementById("current-run");
  box.replaceChildren();
  if (run === null) return;
  box.append("run ", el("a", { href: `#run/${run}`, text: `#${run}` }), " · ",
    el("a", { href: `#step/${run}/${state.step}`, text: "step" }), " · ",
    el("a", { href: `#inside/${run}`, text: "inside" }), " · ",
    el("a", { href: `#attention/${run}`, text: "attention" }), " · ",
    el("a", { href: `#lens/${run}`, text: "lens" }));
}

async function latestRun() {
  if (state.run !== null) return state.run;
  const runs = await api("/api/runs?limit=1");
  if (!runs.rows.length) throw new Error("there are no runs yet; start one in Generate");
  setRun(runs.rows[0][0]);
  return state.run;
}

// ------------------------------------------------------------------------------------ tokens
// The run's tokens coloured by the probability each had when chosen; each is a link to its step.
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
  const link = el("a", {
    class: "tok", href: `#step/${run}/${step}`, text, "data-step": step, "data-p": probability,
    "data-arrived": performance.now().toFixed(1), title: `step ${step}: p = ${fmt(probability)} — open the step`,
  });
  link.style.background = shade(probability);
  if (probability > 0.6) link.style.color = "white";
  return link;
}

const legend = () => el("div", { class: "legend" }, "probability when chosen: 0", el("span", { class: "scale" }), "1");

// ---------------------------------------------------------------------------------- generate
async function viewGenerate() {
  if (live.nodes) return live.nodes;      // the generation streaming (or the last one), as it was left
  const models = await api("/api/models");
  if (!models.rows.length) return errorBox("no model is loaded; load one first: gptsql load random:tiny");
  const names = models.rows.map((r) => r[0]);
  const field = (label, input) => el("label", {}, label, input);
  const form = el("form", { class: "generate", id: "generate-form" },
    el("label", { class: "wide" }, "Prompt",
      el("textarea", { id: "prompt", name: "prompt", rows: 2, text: "Happy New Year! I wish" })),
    el("label", { class: "wide check" }, el("input", { type: "checkbox", id: "truncate", name: "truncate", value: "left" }),
      "Keep the end of a long prompt (what does not fit the context window is dropped from its start)"),
    field("Model", el("select", { id: "model", name: "model" }, ...names.map((n) => el("option", { value: n, text: n })))),
    field("Temperature", el("input", { id: "temperature", name: "temperature", value: "0.8", size: 5 })),
    field("Top-k (0: all)", el("input", { id: "top_k", name: "top_k", value: "0", size: 5 })),
    field("Top-p", el("input", { id: "top_p", name: "top_p", value: "1", size: 5 })),
    field("Seed (empty: random)", el("input", { id: "seed", name: "seed", value: "", size: 6 })),
    field("Max tokens", el("input", { id: "max_tokens", name: "max_tokens", value: "20", size: 5 })),
    el("div", { class: "wide row" }, el("button", { id: "go", type: "submit", text: "Generate" }),
      el("button", { id: "stop", type: "button", class: "quiet", hidden: "", text: "Stop", onclick: stopStreaming }),
      el("span", { class: "muted", id: "gen-status" })));
  const error = errorBox("");
  error.id = "error";
  const output = el("div", { id: "output" });
  form.addEventListener("submit", (e) => { e.preventDefault(); generate(form, error, output); });
  return [card("Generate", error, form), output];
}

// The header's line about the generation that streams while another view is open.
function showLive(text) {
  const box = document.getElementById("live");
  if (!box) return;
  box.replaceChildren();
  if (!live.controller || text === undefined) return;
  box.append(text, " ", el("button", { class: "quiet small", type: "button", text: "Stop", onclick: stopStreaming }));
}

// A generation is a POST of the form's fields (the server refuses a GET: a link or an image could
// start one); its answer is a stream of server-sent events, read here as they come.
async function generate(form, error, output) {
  const fields = Object.fromEntries(new FormData(form));
  fields.truncate = fields.truncate ? "left" : "none";
  const go = form.querySelector("#go"), stop = form.querySelector("#stop"), status = form.querySelector("#gen-status");
  error.textContent = "";
  go.disabled = true; stop.hidden = false;
  status.textContent = "starting…";
  const strip = el("div", { class: "tokens", id: "tokens" });
  const box = card("The continuation, as the database chose it", strip, legend());
  output.replaceChildren(box);
  stopStreaming();
  const controller = new AbortController();
  live.controller = controller;
  live.nodes = [...main().children];
  let run = null;
  const say = (text) => { status.textContent = text; showLive(text); };
  const handlers = {
    start: (d) => {
      run = d.run; live.run = run; setRun(run);
      strip.append(el("span", { class: "prompt", text: d.prompt }));
      say(`run ${run}: ${d.prompt_tokens} prompt tokens, generating…`);
    },
    token: (d) => {
      strip.append(tokenSpan(run, d.step, d.text, d.probability));
      say(`run ${run}: ${d.step} tokens`);
    },
    done: async (d) => {
      // The strip again, from the recorded run: the numbers the query below returns.
      try {
        const tokens = await api(`/api/runs/${d.run}/tokens`, controller.signal);
        strip.replaceWith(tokenStrip(d.run, records(tokens)));
        box.append(sqlBox(tokens));
      } catch (exc) { if (exc.name !== "AbortError") error.textContent = exc.message; }
      status.textContent = `run ${d.run}: done, ${d.tokens} tokens. Click a token to open its step.`;
    },
    error: (d) => { error.textContent = d.message; status.textContent = ""; },
  };
  let ended = false;
  try {
    let response;
    try {
      response = await fetch("/api/generate", {
        method: "POST", signal: controller.signal, body: JSON.stringify(fields),
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      });
    } catch (exc) {
      if (exc.name === "AbortError") throw exc;
      throw new Error(UNREACHABLE);
    }
    if (!response.ok) {
      let message = `the server answered ${response.status} ${response.statusText}; see the terminal running gptsql serve`;
      try { message = (await response.json()).error || message; } catch (_) { /* not the API's JSON */ }
      throw new Error(message);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (exc) {
        if (exc.name === "AbortError") throw exc;
        throw new Error(`the connection to gptsql serve was lost${run === null ? "" : ` while run ${run} was generating`}: ` +
                        "is it still running? Start it again, then reload the page");
      }
      if (chunk.done) break;
      buffer += chunk.value;
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
    if (!ended) { error.textContent = "the server closed the stream before the generation ended"; status.textContent = ""; }
  } catch (exc) {
    if (exc.name === "AbortError") status.textContent = run === null ? "stopped" : `run ${run}: stopped`;
    else { error.textContent = exc.message; status.textContent = ""; }
  } finally {
    if (live.controller === controller) live.controller = null;
    showLive();
    go.disabled = false; stop.hidden = true;
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
  const inside = r.recorded ? el("p", {}, el("a", { href: `#inside/${run}`, text: "Inside the model, place by place →" })) : null;
  return [card([`Run ${run} `, el("span", { class: "muted", text: r.kind })], kv, inside, sqlBox(info)),
          card("Its tokens", tokenStrip(run, records(tokens)), legend(), sqlBox(tokens))];
}

// -------------------------------------------------------------------------------------- step
async function viewStep(run, step) {
  run = run ?? (await latestRun());
  setRun(run);
  state.step = step;
  const info = records(await api(`/api/runs/${run}`))[0];
  const n = info.generated_tokens;
  if (state.temperature === null) state.temperature = info.temperature;   // the run's own, to start with
  const error = errorBox("");
  const bars = el("div", { id: "bars" });
  const whole = el("div", { id: "cut" });
  const value = el("span", { class: "mono", id: "temperature-value", text: fmt(state.temperature, 2) });
  const slider = el("input", { type: "range", id: "temperature-slider", min: "0", max: String(Math.max(2, info.temperature)),
                               step: "0.05", value: String(state.temperature), "aria-label": "temperature" });
  const place = info.prompt_tokens + step - 2;        // the place whose output chose this step's token
  let pending = 0;
  async function redraw() {
    const asked = ++pending;
    const signal = current.controller.signal;
    try {
      const [panel, cut] = await Promise.all([
        api(`/api/runs/${run}/steps/${step}?temperature=${state.temperature}`, signal),
        info.recorded && place >= 0 ? api(`/api/runs/${run}/inside/${place}/sampling?temperature=${state.temperature}`, signal) : null]);
      if (asked !== pending) return;  // a newer position of the slider is on its way
      error.textContent = "";
      bars.replaceChildren(stepBars(panel), sqlBox(panel));
      if (cut) whole.replaceChildren(samplingTable(cut, info, state.temperature), sqlBox(cut));
    } catch (exc) { if (exc.name !== "AbortError") error.textContent = exc.message; }
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
                   onclick: () => (location.hash = `#step/${run}/${step + 1}`), text: "next →" }),
    place >= 0 && info.recorded ? el("a", { href: `#inside/${run}/${place}`, text: "inside the model at this place →" }) : null);
  await redraw();
  const cutTitle = `The cut over the whole vocabulary: top-k ${info.top_k || "off"}, top-p ${info.top_p}`;
  return [card([`Step ${step} of run ${run} `, el("span", { class: "muted", title: info.prompt, text: `· ${info.model} · “${short(info.prompt, 80)}” · the run sampled at T = ${info.temperature}` })],
    nav, error,
    el("div", { class: "slider" }, "temperature", slider, value,
       el("span", { class: "muted", text: `starts at the run's own (T = ${info.temperature}); 0: greedy` })),
    bars),
    card([cutTitle, el("span", { class: "muted", text: " at the slider's temperature, as gptsql.choose cuts it (sql/07_logits.sql)" })], whole)];
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

// The next token over the whole vocabulary: p at T = 1 and at T, cumulative, the top-k / top-p cut
// (kept rows shaded, a line under the last kept), the probability each kept token is drawn with,
// ★ the engine's draw with the run's seed, ▸ the token that came next.
function samplingTable(panel, info, temperature) {
  const rows = records(panel);
  const table = el("table", { class: "list sampling", id: "sampling" },
    el("tr", {}, ...["rank", "token", "logit", "p (T = 1)", `p at T = ${fmt(temperature, 2)}`, "cumulative", "kept", "p drawn"]
      .map((h) => el("th", { text: h }))));
  let lastKept = null;
  for (const r of rows) {
    const marks = `${r.drawn ? "★" : ""}${r.next ? "▸" : ""}`;
    const bar = el("div", { class: "bar" });
    bar.style.width = `${(100 * (r.p_at_temperature ?? 0)).toFixed(2)}%`;
    const tr = el("tr", { class: r.kept ? "kept" : "cut", "data-rank": r.rank, "data-token": r.token },
      el("td", { class: "num", text: String(r.rank) }),
      el("td", { class: "mono", title: `token ${r.token}`, text: `${marks ? marks + " " : ""}${visible(r.piece)}` }),
      el("td", { class: "num", text: fmt(r.logit, 2) }),
      el("td", { class: "num", text: fmt(r.probability) }),
      el("td", { class: "num" }, el("div", { class: "track" }, bar), fmt(r.p_at_temperature)),
      el("td", { class: "num", text: fmt(r.cumulative) }),
      el("td", { text: r.kept === null ? "" : r.kept ? "kept" : "cut" }),
      el("td", { class: "num", text: fmt(r.p_drawn) }));
    if (r.kept) lastKept = tr;
    table.append(tr);
  }
  if (lastKept) lastKept.classList.add("last-kept");
  const drawn = rows.find((r) => r.drawn), next = rows.find((r) => r.next);
  const says = [];
  if (drawn) says.push(`★ the engine's draw with the run's seed: “${visible(drawn.piece)}”`);
  else if (rows.some((r) => r.drawn === false)) says.push("★ the engine's draw is not among these rows");
  else says.push(info.seed === null ? "the run drew with random(): its draw cannot be repeated" : "no token was drawn here (a prompt's place)");
  if (next) says.push(`▸ what came next: “${visible(next.piece)}” (rank ${next.rank})`);
  const cut = `Cut at T = ${fmt(temperature, 2)}, top-k ${info.top_k || "off (0)"}, top-p ${info.top_p} (the run's: T = ${info.temperature}); the orange line is under the last token kept.`;
  return el("div", { class: "scroll" }, el("p", { class: "muted", text: cut }), table, el("p", { class: "muted", text: says.join(" · ") }));
}

// --------------------------------------------------------------------------- heat strips
// A heat map of numbers (rows of cells; NULL drawn hatched: the causal mask's −∞), its value under
// the pointer or the keyboard cursor (arrow keys) in a readout line. Diverging colours (red above
// 0, blue below) scaled to the largest |value|, or weights (0 to 1) in the page's blue.
function heat(rows, { label, cellLabel, weights = false, maxWidth = 900, what = "", square = false, span = 0 }) {
  const n = rows.length, cols = Math.max(...rows.map((r) => r.length), 1);
  const top = weights ? 1 : Math.max(1e-12, ...rows.flat().filter((v) => v !== null).map((v) => Math.abs(v)));
  const mask = rows.flat().every((v) => v === null || v === 0);     // the causal mask: 0 or −∞
  // span: the columns the cells are sized for (strips over places share one scale: the run's places)
  const cell = Math.max(2, Math.min(square ? 8 : 16, Math.floor(maxWidth / Math.max(cols, span))));
  // A vector's rows are square cells; a matrix of many places fits about 400 px; a lone row is a band.
  const height = square ? cell : n > 1 ? Math.max(2, Math.min(12, cell, Math.floor(400 / n))) : Math.max(10, Math.min(18, cell * 2));
  const canvas = el("canvas", { class: "strip", tabindex: "0", role: "img", "data-rows": n, "data-cols": cols,
                                "data-cell": cell, "data-height": height, "data-what": what,
                                "aria-label": `${label}: arrow keys read its values` });
  const ratio = window.devicePixelRatio || 1;
  canvas.width = cols * cell * ratio; canvas.height = n * height * ratio;
  canvas.style.width = `${cols * cell}px`; canvas.style.height = `${n * height}px`;
  const ctx = canvas.getContext("2d");
  const paint = (cursor) => {
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, cols * cell, n * height);
    rows.forEach((row, r) => row.forEach((v, c) => {
      if (v === null) {
        ctx.fillStyle = "#e9ecf0"; ctx.fillRect(c * cell, r * height, cell, height);
        ctx.strokeStyle = "#b8c0ca"; ctx.beginPath(); ctx.moveTo(c * cell, (r + 1) * height); ctx.lineTo((c + 1) * cell, r * height); ctx.stroke();
        return;
      }
      const a = Math.min(1, Math.abs(v) / top);
      ctx.fillStyle = weights ? shade(v) : mask ? "#fff" : v >= 0 ? `rgba(217, 72, 15, ${(0.05 + 0.9 * a).toFixed(3)})` : `rgba(37, 99, 235, ${(0.05 + 0.9 * a).toFixed(3)})`;
      ctx.fillRect(c * cell, r * height, cell, height);
    }));
    if (cursor) { ctx.strokeStyle = "#111827"; ctx.lineWidth = 1.5; ctx.strokeRect(cursor[1] * cell + 0.5, cursor[0] * height + 0.5, cell - 1, height - 1); }
  };
  paint();
  const scale = mask ? "white: 0, read · hatched: −∞, masked" : weights ? "0 (white) to 1 (blue)" : `blue −${fmt(top, 3)} … red +${fmt(top, 3)}`;
  const readout = el("div", { class: "readout", text: `${scale} · point at a cell, or focus it and use the arrow keys` });
  let at = [0, 0];
  const say = (r, c) => {
    const v = rows[r]?.[c];
    if (v === undefined) return;
    at = [r, c];
    readout.textContent = `${cellLabel(r, c)}: ${v === null ? "−∞ (masked)" : fmt(v)}`;
    paint(at);
  };
  canvas.addEventListener("mousemove", (e) => {
    const box = canvas.getBoundingClientRect();
    say(Math.floor((e.clientY - box.top) / height), Math.floor((e.clientX - box.left) / cell));
  });
  canvas.addEventListener("focus", () => say(...at));
  canvas.addEventListener("keydown", (e) => {
    const moves = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
    let [r, c] = at;
    if (moves[e.key]) { r += moves[e.key][0]; c += moves[e.key][1]; }
    else if (e.key === "Home") c = 0;
    else if (e.key === "End") c = rows[r].length - 1;
    else return;
    e.preventDefault();
    if (r >= 0 && r < n && c >= 0 && c < rows[r].length) say(r, c);
  });
  return el("div", { class: "heat" }, el("div", { class: "heat-label", text: label }),
    el("div", { class: "heat-scroll" }, canvas), readout);
}

// A vector wrapped into rows of `width` cells: cell (r, c) is element r * width + c.
function vectorHeat(values, label, what, maxWidth) {
  const width = values.length <= 128 ? values.length : 128;
  const rows = [];
  for (let i = 0; i < values.length; i += width) rows.push(values.slice(i, i + width));
  return heat(rows, { label: `${label} (${values.length})`, what, maxWidth: Math.min(maxWidth, 640), square: true,
                      cellLabel: (r, c) => `${label} [${r * width + c}]` });
}

// A stage's rows (step, what, at_place, unit, value, vals) drawn in their order: a vector as a
// heat strip, vectors of several places as a matrix (a row per place), numbers over places as a
// strip (a cell per place), a lone number as text, the MLP's strongest units as a table.
function drawStage(panel, pieces) {
  const rows = records(panel);
  const width = Math.max(240, Math.min(900, main().clientWidth - 80));
  const groups = [];
  for (const r of rows) {
    const last = groups[groups.length - 1];
    if (last && last.step === r.step) last.rows.push(r); else groups.push({ step: r.step, what: r.what, rows: [r] });
  }
  const out = el("div", { class: "stage-body" });
  const placeName = (p) => `place ${p} “${visible(pieces?.[p] ?? "")}”`;
  const span = Math.max(0, ...groups.filter((g) => g.rows[0].vals === null && g.rows.length > 1).map((g) => g.rows.length));
  for (const g of groups) {
    const first = g.rows[0];
    let drawn;
    if (first.unit !== null && first.unit !== undefined) {
      drawn = unitsTable(g);
    } else if (first.vals !== null && g.rows.length === 1) {
      drawn = vectorHeat(first.vals, g.what, `${g.step}`, width);
    } else if (first.vals !== null) {
      drawn = heat(g.rows.map((r) => r.vals), {
        label: `${g.what} (rows: places ${first.at_place} to ${g.rows[g.rows.length - 1].at_place}; columns: its ${first.vals.length} numbers)`,
        what: `${g.step}`, maxWidth: Math.min(width, 640),
        cellLabel: (r, c) => `${placeName(g.rows[r].at_place)}, [${c}]` });
    } else if (g.rows.length === 1) {
      drawn = el("div", { class: "scalar", "data-what": `${g.step}` }, el("span", { class: "k", text: g.what }),
        el("span", { class: "mono", text: fmt(first.value) }));
    } else {
      drawn = heat([g.rows.map((r) => r.value)], { label: `${g.what} (places ${g.rows[0].at_place} to ${g.rows[g.rows.length - 1].at_place})`,
        what: `${g.step}`, maxWidth: width, weights: /weight/.test(g.what), span,
        cellLabel: (_r, c) => placeName(g.rows[c].at_place) });
    }
    out.append(drawn);
  }
  return out;
}

function unitsTable(group) {
  const top = Math.max(...group.rows.map((r) => Math.max(Math.abs(r.vals[0]), Math.abs(r.vals[1]))), 1e-12);
  const bar = (v) => {
    const b = el("div", { class: `bar ${v < 0 ? "neg" : ""}` });
    b.style.width = `${(50 * Math.abs(v) / top).toFixed(1)}%`;
    return el("div", { class: "track centred" }, b);
  };
  const table = el("table", { class: "list units", "data-what": `${group.step}` },
    el("tr", {}, ...["unit", "before", "", "after", ""].map((h) => el("th", { text: h }))));
  for (const r of group.rows) {
    table.append(el("tr", { "data-unit": r.unit }, el("td", { class: "num", text: String(r.unit) }),
      el("td", { class: "num", text: fmt(r.vals[0]) }), el("td", {}, bar(r.vals[0])),
      el("td", { class: "num", text: fmt(r.vals[1]) }), el("td", {}, bar(r.vals[1]))));
  }
  return el("div", {}, el("div", { class: "heat-label", text: `${group.what}: the ${group.rows.length} largest after it` }),
            el("div", { class: "scroll" }, table));
}

// ------------------------------------------------------------------ inside one place of a run
// Every stage in the model's order: what it is in plain words, the SQL file and function that
// compute it, its panel's address (run, place, block, head) and how its rows are drawn.
const STAGES = [
  { key: "tokens", title: () => "Tokens", file: "01_tokenizer.sql", fn: "gptsql.tokenize",
    text: "The text is cut into tokens by byte-pair merges: each token is an id in the vocabulary, a piece of text and its bytes. The model reads one token per place.",
    url: (c) => `/api/runs/${c.run}/inside/tokens`, draw: (p, c) => tokensTable(p, c) },
  { key: "embedding", title: () => "Embeddings", file: "02_embeddings.sql", fn: "gptsql.embeddings",
    text: "Each token id picks a row of the token embedding wte; each place a row of the position embedding wpe. Their sum is the vector that enters block 0 (the Llama family has no wpe: it turns q and k by their place instead).",
    url: (c) => `/api/runs/${c.run}/inside/${c.place}/embedding` },
  { key: "ln_1", title: (c) => `Block ${c.block}: ${normName(c)} ln_1`, file: "03_norm_linear.sql", fn: "gptsql.norm_all",
    text: "The norm rescales the stream so that every place enters the attention at a similar size: minus its mean, divided by its standard deviation (an RMS norm: by its root mean square), times γ, plus β.",
    url: (c) => `/api/runs/${c.run}/inside/${c.place}/norm/ln_1?block=${c.block}` },
  { key: "attention", title: (c) => `Block ${c.block}: attention, head ${c.head}${kvNote(c)}`, file: "04_attention.sql", fn: "gptsql.qkv, gptsql.attend",
    text: "The norm's output times c_attn gives every place a query q, a key k and a value v per head (the keys and values of the earlier places are the KV cache; a finished run's is computed again here). The query scores every key (q·k), scaled by 1/√d; the causal mask hides later places; the softmax turns the scores into weights that add up to 1; the weighted values are the head's output, and its columns of the projection attn_proj turn them into its share of the block's attention output.",
    url: (c) => `/api/runs/${c.run}/inside/${c.place}/attention/${c.block}/${c.head}` },
  { key: "projection", title: (c) => `Block ${c.block}: attention output and the residual add`, file: "06_blocks.sql", fn: "gptsql.block",
    text: "Every head's share through attn_proj, with its bias, is the attention's output; it is added to the stream it read (the residual connection), as the run recorded it.",
    url: (c) => `/api/runs/${c.run}/inside/${c.place}/projection/${c.block}` },
  { key: "ln_2", title: (c) => `Block ${c.block}: ${normName(c)} ln_2`, file: "03_norm_linear.sql", fn: "gptsql.norm_all",
    text: "A second norm, of the stream after the attention, before the MLP.",
    url: (c) => `/api/runs/${c.run}/inside/${c.place}/norm/ln_2?block=${c.block}` },
  { key: "mlp", title: (c) => `Block ${c.block}: MLP`, file: "05_mlp.sql", fn: "gptsql.mlp_share",
    text: "The MLP widens each place to its hidden units (c_fc), bends them with the activation (GPT-2: GELU; Llama: silu(gate) × up), and projects them back (mlp_proj); the result is added to the stream: the block's output.",
    url: (c) => `/api/runs/${c.run}/inside/${c.place}/mlp/${c.block}` },
  { key: "ln_f", title: (c) => `After the last block: ${normName(c)} ln_f`, file: "06_blocks.sql", fn: "gptsql.forward",
    text: "After the last block, a final norm: its output is the hidden state that scores the vocabulary.",
    url: (c) => `/api/runs/${c.run}/inside/${c.place}/norm/ln_f` },
  { key: "sampling", title: () => "Logits and the next token", file: "07_logits.sql", fn: "gptsql.choose",
    text: "The hidden state's inner product with every token's embedding is its logit; a softmax at the run's temperature turns logits into probabilities; top-k and top-p cut the list; the token is drawn from what is left.",
    url: (c) => `/api/runs/${c.run}/inside/${c.place}/sampling`, draw: (p, c) => samplingTable(p, c.info, c.info.temperature) },
  { key: "lens", title: () => "Logit lens at this place", file: "11_explore.sql", fn: "gptsql.explore_lens",
    text: "What the model would say if it stopped after each block: that block's output through ln_f and the vocabulary. Framed: what came next.",
    url: null, draw: null },
];

const normName = (c) => (c.info?.family === "llama" ? "RMS norm" : "layer norm");
function kvNote(c) {
  const info = c.info;
  if (!info || info.n_kv_head === info.n_head) return "";
  const group = info.n_head / info.n_kv_head, kv = Math.floor(c.head / group);
  return ` (reads key/value head ${kv}, shared by heads ${kv * group} to ${kv * group + group - 1})`;
}

function tokensTable(panel, c) {
  const rows = records(panel);
  const strip = el("div", { class: "tokens chips", id: "inside-tokens" });
  for (const t of rows) {
    const cls = `chip ${t.place === c.place ? "here" : ""} ${t.is_prompt ? "prompt" : ""}`;
    const text = visible(t.piece);
    strip.append(t.read
      ? el("a", { class: cls, href: `#inside/${c.run}/${t.place}/${c.block}/${c.head}`, "data-place": t.place,
                  title: `place ${t.place}: token ${t.token}, bytes ${t.bytes}`, text })
      : el("span", { class: `${cls} unread`, title: `place ${t.place}: token ${t.token} (chosen last, never read back)`, text }));
  }
  const here = rows.find((t) => t.place === c.place);
  const bytes = (here.bytes.match(/../g) || []).join(" ");
  const detail = el("div", { class: "kv", id: "token-detail" },
    el("span", { class: "k", text: "place" }), el("span", { text: String(here.place) }),
    el("span", { class: "k", text: "token id" }), el("span", { class: "mono", text: String(here.token) }),
    el("span", { class: "k", text: "piece" }), el("span", { class: "mono", text: `“${visible(here.piece)}”` }),
    el("span", { class: "k", text: "bytes" }), el("span", { class: "mono", text: bytes }),
    el("span", { class: "k", text: "from" }), el("span", { text: here.is_prompt ? "the prompt" : `generated, p = ${fmt(here.probability)}` }));
  return el("div", {}, strip, detail);
}

function stageCard(stage, c) {
  const body = el("div", { class: "stage-panel" }, el("p", { class: "muted", text: "asking the database…" }));
  const box = el("section", { class: "card stage", id: `stage-${stage.key}`, "data-stage": stage.key },
    el("h2", {}, stage.title(c), " ", el("span", { class: "muted", text: "· " }), sqlLink(stage.file),
      el("code", { class: "fn", text: ` ${stage.fn}` })),
    el("p", { class: "explain", text: stage.text }), body);
  const load = stage.key === "lens" ? () => lensAt(body, c) : async () => {
    try {
      const panel = await api(stage.url(c), c.signal);
      body.replaceChildren((stage.draw || ((p) => drawStage(p, c.pieces)))(panel, c), sqlBox(panel));
    } catch (exc) { if (exc.name !== "AbortError") body.replaceChildren(errorBox(exc.message)); }
  };
  return { box, load };
}

// The lens at one place, four blocks a request (one vocabulary scan per block), filled as they come.
async function lensAt(body, c) {
  const table = el("table", { class: "grid", id: "lens-at" },
    el("tr", {}, el("th", { text: "after block" }), el("th", { text: "1st" }), el("th", { text: "2nd" }), el("th", { text: "3rd" })));
  body.replaceChildren(el("div", { class: "scroll" }, table));
  const chunk = 4, all = [];
  let whole = null;
  try {
    for (let first = 0; first < c.info.n_layer; first += chunk) {
      const last = Math.min(c.info.n_layer - 1, first + chunk - 1);
      const panel = await api(`/api/runs/${c.run}/inside/${c.place}/lens?first_block=${first}&last_block=${last}`, c.signal);
      whole = panel.whole_sql;
      for (const r of records(panel)) {
        all.push(r);
        let tr = table.querySelector(`tr[data-block="${r.block}"]`);
        if (!tr) { tr = el("tr", { "data-block": r.block }, el("th", { text: String(r.block) })); table.append(tr); }
        const td = el("td", { class: r.is_next ? "next" : "", text: `${visible(r.predicted_piece)}\n${fmt(r.probability, 3)}` });
        td.style.background = shade(r.probability);
        if (r.probability > 0.6) td.style.color = "white";
        tr.append(td);
      }
    }
    body.append(sqlBox({ sql: whole, rows: all }, false, " (the page asks for it four blocks at a time)"));
  } catch (exc) { if (exc.name !== "AbortError") body.append(errorBox(exc.message)); }
}

async function insideContext(run, place, block, head) {
  run = run ?? state.run ?? (await recordedRun());
  setRun(run);
  const [info, tokens] = await Promise.all([api(`/api/runs/${run}/inside`), api(`/api/runs/${run}/inside/tokens`)]);
  const i = records(info)[0];
  const pieces = records(tokens).map((t) => t.piece);
  place = place ?? state.place ?? i.places - 1;
  if (!(place >= 0 && place < i.places)) throw new Error(`place must be between 0 and ${i.places - 1} (the places run ${run} read), not ${place}`);
  block = block ?? state.block;
  head = head ?? state.head;
  if (!(block >= 0 && block < i.n_layer)) throw new Error(`block must be between 0 and ${i.n_layer - 1} (the model has ${i.n_layer} blocks), not ${block}`);
  if (!(head >= 0 && head < i.n_head)) throw new Error(`head must be between 0 and ${i.n_head - 1} (the model has ${i.n_head} heads), not ${head}`);
  Object.assign(state, { place, block, head });
  return { run, place, block, head, info: i, infoPanel: info, pieces, signal: current.controller.signal };
}

function insideControls(c, stage) {
  const go = (p, b, h) => (location.hash = `#inside/${c.run}/${p}/${b}/${h}${stage ? `/${stage}` : ""}`);
  const blocks = el("select", { id: "inside-block", "aria-label": "block", onchange: (e) => go(c.place, Number(e.target.value), c.head) },
    ...Array.from({ length: c.info.n_layer }, (_, b) => el("option", { value: b, text: `block ${b}`, selected: b === c.block ? "" : null })));
  const group = c.info.n_head / c.info.n_kv_head;
  const heads = el("select", { id: "inside-head", "aria-label": "head", onchange: (e) => go(c.place, c.block, Number(e.target.value)) },
    ...Array.from({ length: c.info.n_head }, (_, h) => el("option", {
      value: h, selected: h === c.head ? "" : null,
      text: group > 1 ? `head ${h} (key/value head ${Math.floor(h / group)})` : `head ${h}` })));
  return el("div", { class: "row controls" },
    el("button", { class: "quiet", type: "button", disabled: c.place <= 0 ? "" : null, onclick: () => go(c.place - 1, c.block, c.head), text: "← place" }),
    el("span", { class: "mono", text: `place ${c.place} “${visible(c.pieces[c.place])}”` }),
    el("button", { class: "quiet", type: "button", disabled: c.place >= c.info.places - 1 ? "" : null, onclick: () => go(c.place + 1, c.block, c.head), text: "place →" }),
    blocks, heads);
}

async function viewInside(run, place, block, head, focus) {
  const c = await insideContext(run, place, block, head);
  const cards = STAGES.map((s) => stageCard(s, c));
  const index = el("nav", { class: "stages", "aria-label": "stages" },
    ...STAGES.map((s) => el("a", { href: `#inside/${c.run}/${c.place}/${c.block}/${c.head}/${s.key}`, text: s.title(c).replace(/^Block \d+: /, "") })));
  const head_ = card([`Inside run ${c.run} at place ${c.place} `,
    el("span", { class: "muted", text: `· ${c.info.model} (${c.info.family}) · every stage of this place in the model's order` })],
    insideControls(c), index,
    el("p", { class: "muted" }, "Numbers the run did not record are computed again for this place by the engine's own functions (",
      sqlLink("11_explore.sql"), "); where the run recorded them too, they are the same. New to this? ",
      el("a", { href: "#tour/1", text: "The walkthrough" }), " goes through it in plain words."),
    sqlBox(c.infoPanel));
  // The stages load two at a time, from the top.
  setTimeout(() => inTurn(cards.map((k) => k.load)), 0);
  if (focus) setTimeout(() => document.getElementById(`stage-${focus}`)?.scrollIntoView(), 0);
  return [head_, ...cards.map((k) => k.box)];
}

// ------------------------------------------------------------------------------- walkthrough
const CHAPTERS = [
  { stage: "tokens", title: "Text becomes tokens",
    text: "A model reads numbers, not letters. The tokenizer cuts the text into pieces from a fixed vocabulary (50,257 for GPT-2) by merging the most frequent pairs of bytes first; each piece is a token id. Below: the run's tokens, with the id, the piece and the bytes of the one picked." },
  { stage: "embedding", title: "Tokens become vectors",
    text: "Each token id picks a row of a table of learned vectors (wte); each place adds a row of another (wpe), so that the same word at another place looks different. Their sum — hundreds of numbers — is all the model knows about this place when it starts." },
  { stage: "ln_1", title: "Norm before attention",
    text: "Every block first rescales the vector: subtract its mean, divide by its spread, then stretch and shift it by learned γ and β. This keeps the numbers in a range the next step expects, whatever happened before." },
  { stage: "attention", title: "Who looks at whom",
    text: "Each head turns every place into a query (what am I looking for?), a key (what do I offer?) and a value (what do I pass on?). The query of this place is compared with the keys of every earlier place (later ones are masked: the model may not read the future), the scores become weights by a softmax, and the weighted values are what the head brings back." },
  { stage: "projection", title: "The residual stream",
    text: "All heads' outputs are mixed by one more matrix and added to the vector the block read, not put in its place: each block only adds a correction to a running stream of numbers." },
  { stage: "mlp", title: "The MLP thinks about each place alone",
    text: "After attention moved information between places, the MLP works on each place by itself: it widens the vector four times, bends every unit with a smooth function (GELU), and projects it back. Its strongest units are listed; its output is added to the stream again." },
  { stage: "ln_f", title: "After the last block",
    text: "The same block repeats (12 times in GPT-2 124M, each with its own weights). After the last, a final norm gives the hidden state: the one vector from which the next token is predicted." },
  { stage: "sampling", title: "Logits, temperature and the cut",
    text: "The hidden state is compared with every token's embedding: that score is its logit. Divided by the temperature and put through a softmax, logits become probabilities (a low temperature sharpens them). Top-k keeps the k best, top-p the fewest whose probabilities reach p; the token is drawn from what is left." },
  { stage: "lens", title: "What each block would have said",
    text: "The logit lens sends the output of every block, not only the last, through the final norm and the vocabulary: it shows at which block the model settles on its answer." },
];

async function viewTour(n) {
  n = Math.max(1, Math.min(CHAPTERS.length, n || 1));
  const chapter = CHAPTERS[n - 1];
  const stage = STAGES.find((s) => s.key === chapter.stage);
  let c;
  try {
    let run = state.run ?? (await recordedRun());
    // The run in view, if it kept its activations; else the newest that did.
    if (!records(await api(`/api/runs/${run}`))[0].recorded) run = await recordedRun();
    c = await insideContext(run, state.run === run && state.place !== null ? state.place : await tourPlace(run), undefined, undefined);
  }
  catch (exc) { if (exc.name === "AbortError") throw exc; throw new Error(`the walkthrough shows a recorded run: ${exc.message}`); }
  const k = stageCard(stage, c);
  const nav = el("div", { class: "row" },
    el("a", { class: n <= 1 ? "disabled" : "", href: `#tour/${Math.max(1, n - 1)}`, text: "← previous chapter" }),
    el("span", { class: "muted", text: `chapter ${n} of ${CHAPTERS.length}` }),
    el("a", { class: n >= CHAPTERS.length ? "disabled" : "", href: `#tour/${Math.min(CHAPTERS.length, n + 1)}`, text: "next chapter →" }));
  const contents = el("ol", { class: "chapters" }, ...CHAPTERS.map((ch, i) => el("li", { class: i + 1 === n ? "here" : "" },
    el("a", { href: `#tour/${i + 1}`, text: ch.title }))));
  const text = card([`${n}. ${chapter.title}`],
    el("p", { class: "chapter-text", id: "chapter-text", text: chapter.text }),
    el("p", { class: "muted", id: "chapter-sql" }, "Computed in SQL by ", el("code", { text: stage.fn }), " in ", sqlLink(stage.file),
      `: run ${c.run}, place ${c.place}, block ${c.block}, head ${c.head}. `,
      el("a", { href: `#inside/${c.run}/${c.place}/${c.block}/${c.head}/${stage.key}`, id: "open-view", text: "Open it in the run's inside view →" })),
    nav, contents);
  setTimeout(k.load, 0);
  return [text, k.box];
}

// The walkthrough's place: the one before the last the run read, so that a token was drawn after
// it and a later place is masked from its query.
async function tourPlace(run) {
  const places = records(await api(`/api/runs/${run}/inside`))[0].places;
  return Math.max(0, places - 2);
}

async function recordedRun() {
  const runs = records(await api("/api/runs?limit=50"));
  const found = runs.find((r) => r.recorded && r.prompt_tokens + r.generated_tokens > 1);
  if (!found) throw new Error("there is no recorded run yet; generate one first");
  return found.run;
}

// --------------------------------------------------------------------------------- attention
// The thumbnails come a block at a time (each block one query), drawn as they arrive.
async function viewAttention(run) {
  run = run ?? (await latestRun());
  setRun(run);
  const signal = current.controller.signal;
  const firstBlock = await api(`/api/runs/${run}/attention?pixels=32&block=0`);
  const { n_layer, n_head, n_kv_head } = firstBlock;
  const group = n_head / n_kv_head;
  const heads = el("div", { class: "heads", id: "heads", role: "grid", "aria-label": "attention heads" });
  heads.style.gridTemplateColumns = `60px repeat(${n_head}, 76px)`;
  heads.append(el("span"));
  for (let h = 0; h < n_head; h++) {
    heads.append(el("span", { class: "label", text: group > 1 ? `head ${h} · kv ${Math.floor(h / group)}` : `head ${h}`, style: "text-align:center" }));
  }
  const large = el("div", { id: "large" });
  const thumbs = [];
  const canvases = {};
  for (let b = 0; b < n_layer; b++) {
    heads.append(el("span", { class: "label", text: `block ${b}` }));
    for (let h = 0; h < n_head; h++) {
      const canvas = el("canvas", { class: "thumb", tabindex: "0", role: "button", "data-block": b, "data-head": h,
                                    title: `block ${b}, head ${h}`, "aria-label": `block ${b}, head ${h}: open it large` });
      canvas.width = 1; canvas.height = 1;
      const open = () => { state.block = b; state.head = h; openHead(run, large, thumbs); };
      canvas.addEventListener("click", open);
      canvas.addEventListener("keydown", (e) => thumbKey(e, open, b, h, n_layer, n_head));
      thumbs.push(canvas);
      canvases[`${b}/${h}`] = canvas;
      heads.append(canvas);
    }
  }
  const allRows = [];
  const draw = (panel) => {
    const maps = {};
    for (const [block, head, q, weights] of panel.rows) (maps[`${block}/${head}`] ??= [])[q] = weights;
    for (const [key, rows] of Object.entries(maps)) drawMatrix(canvases[key], rows, 1);
    allRows.push(...panel.rows);
  };
  draw(firstBlock);
  const box = el("div", { class: "grid-sql" });
  const first = card([`Attention of run ${run} `, el("span", { class: "muted", text: "every head of every block; click one (or Enter)" })],
    el("div", { class: "scroll" }, heads),
    el("p", { class: "muted", text: "Each square shows the strongest weight among the places it covers (rows: query places, columns: key places)." }),
    box);
  const rest = Array.from({ length: n_layer - 1 }, (_, i) => async () => draw(await api(`/api/runs/${run}/attention?pixels=32&block=${i + 1}`, signal)));
  setTimeout(async () => {
    try {
      await inTurn(rest);
      box.replaceChildren(sqlBox({ sql: firstBlock.whole_sql, rows: allRows }, false, " (the page asks for it a block at a time)"));
    } catch (exc) { if (exc.name !== "AbortError") box.replaceChildren(errorBox(exc.message)); }
  }, 0);
  const second = card("One head", large);
  openHead(run, large, thumbs);
  return [first, second];
}

// Arrow keys move between the thumbnails; Enter or Space opens one.
function thumbKey(e, open, b, h, n_layer, n_head) {
  const moves = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
  if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); return; }
  if (!moves[e.key]) return;
  e.preventDefault();
  const nb = b + moves[e.key][0], nh = h + moves[e.key][1];
  if (nb >= 0 && nb < n_layer && nh >= 0 && nh < n_head) document.querySelector(`#heads canvas[data-block="${nb}"][data-head="${nh}"]`)?.focus();
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
    box.replaceChildren(...headMap(panel, run), sqlBox(panel));
  } catch (exc) { if (exc.name !== "AbortError") box.replaceChildren(errorBox(exc.message)); }
}

// One head large: token pieces on both axes (keys on top, queries on the left), which stay in view
// while the map scrolls; the weight under the pointer.
function headMap(panel, run) {
  const rows = records(panel);
  const n = rows.length, cell = Math.max(12, Math.min(28, Math.floor(720 / Math.max(n, 1))));
  const pieces = rows.map((r) => visible(r.query_piece));
  const margin = Math.min(140, 14 + 7 * Math.max(...pieces.map((p) => p.length), 4));
  const ratio = window.devicePixelRatio || 1;
  const paper = (id, w, h) => {
    const c = el("canvas", { id });
    c.width = w * ratio; c.height = h * ratio; c.style.width = `${w}px`; c.style.height = `${h}px`;
    const ctx = c.getContext("2d"); ctx.scale(ratio, ratio);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, w, h);
    ctx.font = `${Math.min(12, cell - 1)}px system-ui, sans-serif`; ctx.fillStyle = "#1f2933"; ctx.textBaseline = "middle";
    return [c, ctx];
  };
  const [canvas, ctx] = paper("head-map", n * cell + 4, n * cell + 4);
  canvas.dataset.margin = "0"; canvas.dataset.cell = cell; canvas.dataset.places = n;
  const [left, lctx] = paper("head-queries", margin, n * cell + 4);
  const [topLabels, tctx] = paper("head-keys", n * cell + 4, margin);
  pieces.forEach((p, i) => {
    lctx.textAlign = "right"; lctx.fillText(p, margin - 4, i * cell + cell / 2, margin - 8);
    tctx.save(); tctx.translate(i * cell + cell / 2, margin - 4); tctx.rotate(-Math.PI / 2);
    tctx.textAlign = "left"; tctx.fillText(p, 0, 0, margin - 8); tctx.restore();
  });
  rows.forEach((r, q) => r.weights.forEach((w, k) => {
    ctx.fillStyle = shade(w); ctx.fillRect(k * cell, q * cell, cell - 1, cell - 1);
  }));
  const readout = el("div", { class: "readout", id: "readout", text: "point at a square: who looks at whom, and how much" });
  canvas.addEventListener("mousemove", (e) => {
    const box = canvas.getBoundingClientRect();
    const k = Math.floor((e.clientX - box.left) / cell), q = Math.floor((e.clientY - box.top) / cell);
    if (q < 0 || k < 0 || q >= n || k > q) { readout.textContent = " "; return; }
    readout.textContent = `query ${q} “${pieces[q]}” → key ${k} “${pieces[k]}”: weight ${fmt(rows[q].weights[k])}`;
  });
  const corner = el("div", { class: "corner" });
  corner.style.width = `${margin}px`; corner.style.height = `${margin}px`;
  const big = el("div", { class: "big headmap" }, corner, topLabels, left, canvas);
  big.style.gridTemplateColumns = `${margin}px ${n * cell + 4}px`;
  const title = el("p", {}, el("b", { text: `block ${state.block}, head ${state.head}` }),
    el("span", { class: "muted", text: ` · ${n} places · rows: the place that looks (query) · columns: the place looked at (key) · ` }),
    el("a", { href: `#inside/${run}/${n - 1}/${state.block}/${state.head}/attention`, text: "its q, k, v and scores →" }));
  return [title, readout, big];
}

// ----------------------------------------------------------------------- lens and residual
// The lens comes a block at a time (one vocabulary scan per block and place), row by row.
async function viewLens(run, first, last) {
  run = run ?? (await latestRun());
  setRun(run);
  const signal = current.controller.signal;
  const query = first !== undefined ? `first=${first}&last=${last}&` : "";
  const [lens0, norms] = await Promise.all([api(`/api/runs/${run}/lens?${query}block=0`), api(`/api/runs/${run}/norms`)]);
  const places = Array.from({ length: lens0.last - lens0.first + 1 }, (_, i) => lens0.first + i);
  const table = el("table", { class: "grid", id: "lens" });
  const pieces = {};
  for (const r of records(lens0)) pieces[r.place] = r.piece;
  const head = el("tr", {}, el("th", { text: "block \\ place" }));
  for (const p of places) head.append(el("th", { text: `${p}\n${visible(pieces[p])}` }));
  table.append(head);
  const allRows = [];
  const addRows = (panel) => {
    const rows = records(panel);
    allRows.push(...panel.rows);
    const b = rows[0].block;
    const tr = el("tr", { "data-block": b }, el("th", { text: String(b) }));
    for (const r of rows) {
      const open = () => (location.hash = `#inside/${run}/${r.place}/${r.block}/${state.head}`);
      const td = el("td", { class: r.is_next ? "next" : "", tabindex: "0", role: "link", "data-place": r.place, "data-block": r.block,
                            text: `${visible(r.predicted_piece)}\n${fmt(r.probability, 3)}`,
                            title: `after block ${b}, place ${r.place} would say “${r.predicted_piece}” with p = ${r.probability}${r.is_next ? " (what came next)" : ""}; open the place inside the block`,
                            onclick: open, onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); } } });
      td.style.background = shade(r.probability);
      if (r.probability > 0.6) td.style.color = "white";
      tr.append(td);
    }
    table.append(tr);
  };
  addRows(lens0);
  const lo = places[0], hi = places[places.length - 1];
  const window_ = el("form", { class: "row" }, "places",
    el("input", { id: "lens-first", value: lo, size: 4, "aria-label": "first place" }), "to",
    el("input", { id: "lens-last", value: hi, size: 4, "aria-label": "last place" }),
    el("button", { class: "quiet", type: "submit", text: "Show" }),
    el("span", { class: "muted", text: `of 0 to ${lens0.places - 1} (one vocabulary scan per block and place: keep the window small on big models)` }));
  window_.addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = `#lens/${run}/${window_.querySelector("#lens-first").value}/${window_.querySelector("#lens-last").value}`;
  });
  const box = el("div", { class: "grid-sql" });
  const rest = Array.from({ length: lens0.n_layer - 1 }, (_, i) => async () =>
    addRows(await api(`/api/runs/${run}/lens?first=${lo}&last=${hi}&block=${i + 1}`, signal)));
  setTimeout(async () => {
    try {
      for (const job of rest) await job();       // in order: the rows are the blocks
      box.replaceChildren(sqlBox({ sql: lens0.whole_sql, rows: allRows }, false, " (the page asks for it a block at a time)"));
    } catch (exc) { if (exc.name !== "AbortError") box.replaceChildren(errorBox(exc.message)); }
  }, 0);
  const lensCard = card([`Logit lens of run ${run} `, el("span", { class: "muted", text: "what the model would say if it stopped after each block" })],
    window_, el("div", { class: "scroll" }, table),
    el("p", { class: "muted", text: "Framed: the token that actually came next. A cell opens that place inside that block." }), box);
  const normsCard = card(["Residual stream ", el("span", { class: "muted", text: "its length (L2 norm) through the blocks, one line per place" })],
    normsChart(records(norms)), sqlBox(norms));
  lensCard.id = "lens-card"; normsCard.id = "norms-card";
  return [lensCard, normsCard];
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
// One place's way through the model: part, what it is, its shape, the SQL function and its file
// (GPT-2's names; the Llama family's where they differ).
const FLOW = [
  { part: "tokens", title: () => "Tokenizer", shape: () => "text → token ids (byte-pair merges)", fn: "gptsql.tokenize", file: "01_tokenizer.sql" },
  { part: "wte", title: () => "Token embedding wte", shape: (m) => `${m.n_vocab} × ${m.n_embd}`, fn: "gptsql.embeddings", file: "02_embeddings.sql" },
  { part: "wpe", title: (m) => (m.family === "llama" ? "No position embedding: RoPE turns q and k" : "+ Position embedding wpe"),
    shape: (m) => (m.family === "llama" ? "by their place" : `${m.n_ctx} × ${m.n_embd}`), fn: "gptsql.embeddings", file: "02_embeddings.sql" },
  { block: [
    { part: "ln_1", title: (m) => `${m.family === "llama" ? "RMS norm" : "Layer norm"} ln_1`, shape: (m) => `γ${m.family === "llama" ? "" : ", β"}: ${m.n_embd} each`, fn: "gptsql.layer_norm", file: "03_norm_linear.sql" },
    { part: "c_attn", title: () => "Queries, keys, values c_attn", shape: (m) => `${m.n_embd} → ${m.n_embd} + 2 × ${(m.n_embd / m.n_head) * m.n_kv_head}`, fn: "gptsql.matmul", file: "03_norm_linear.sql" },
    { part: "attention", title: () => "Causal self-attention", shape: (m) => `${m.n_head} heads${m.n_kv_head < m.n_head ? ` reading ${m.n_kv_head} key/value heads` : ""} × ${m.n_embd / m.n_head}, softmax(q·k/√${m.n_embd / m.n_head})`, fn: "gptsql.attend", file: "04_attention.sql" },
    { part: "attn_proj", title: () => "Projection attn_proj", shape: (m) => `${m.n_embd} → ${m.n_embd}`, fn: "gptsql.attention_share", file: "04_attention.sql" },
    { part: "add", title: () => "+ residual", shape: () => "h + attention(ln_1(h))", fn: "gptsql.block", file: "06_blocks.sql" },
    { part: "ln_2", title: (m) => `${m.family === "llama" ? "RMS norm" : "Layer norm"} ln_2`, shape: (m) => `γ${m.family === "llama" ? "" : ", β"}: ${m.n_embd} each`, fn: "gptsql.layer_norm", file: "03_norm_linear.sql" },
    { part: "c_fc", title: (m) => (m.family === "llama" ? "MLP gate and up (c_fc), silu(gate) × up" : "MLP up c_fc + GELU"), shape: (m) => `${m.n_embd} → ${m.n_inner}`, fn: "gptsql.mlp_share", file: "05_mlp.sql" },
    { part: "mlp_proj", title: () => "MLP down mlp_proj", shape: (m) => `${m.n_inner} → ${m.n_embd}`, fn: "gptsql.mlp_share", file: "05_mlp.sql" },
    { part: "add", title: () => "+ residual", shape: () => "a + mlp(ln_2(a))", fn: "gptsql.block", file: "06_blocks.sql" },
  ] },
  { part: "ln_f", title: () => "Final norm ln_f", shape: (m) => `γ${m.family === "llama" ? "" : ", β"}: ${m.n_embd} each`, fn: "gptsql.forward", file: "06_blocks.sql" },
  { part: "logits", title: () => "Logits: h · wteᵀ (tied)", shape: (m) => `${m.n_embd} → ${m.n_vocab}`, fn: "gptsql.logits", file: "07_logits.sql" },
  { part: "sampling", title: () => "Softmax, temperature, top-k / top-p", shape: () => "→ the next token", fn: "gptsql.choose", file: "07_logits.sql" },
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
  const picker = el("select", { id: "model-pick", "aria-label": "model", onchange: (e) => (location.hash = `#model/${encodeURIComponent(e.target.value)}`) },
    ...all.map((r) => el("option", { value: r.name, text: r.name, selected: r.name === m.name ? "" : null })));
  const box = (s) => {
    const params = perBlock[s.part];   // a block's part: its parameters in one block (the query's per_block)
    const label = params === undefined ? "" : `${Number(params).toLocaleString("en")} parameters`;
    return el("div", { class: `box ${s.part === "add" ? "add" : ""}`, "data-part": s.part, "data-function": s.fn },
      el("b", { text: s.title(m) }), el("a", { href: `/sql/${s.file}`, target: "_blank", text: `sql/${s.file}` }),
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
  for (const [k, v] of [["source", m.source], ["family", m.family], ["blocks (n_layer)", m.n_layer], ["width (n_embd)", m.n_embd],
                        ["heads (n_head)", m.n_head], ["key/value heads (n_kv_head)", m.n_kv_head], ["MLP units (n_inner)", m.n_inner],
                        ["context (n_ctx)", m.n_ctx], ["vocabulary (n_vocab)", m.n_vocab],
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
        el("a", { href: `#inside/${r.run}`, text: "inside" }), " · ",
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
  const [view, ...args] = (location.hash.slice(1) || "generate").split("/").map(decodeURIComponent);
  const num = (v) => (v === undefined || v === "" ? undefined : Number(v));
  const tab = { run: "runs" }[view] || view;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === tab);
  const views = {
    generate: () => viewGenerate(),
    run: () => viewRun(num(args[0])),
    step: () => viewStep(num(args[0]), num(args[1]) ?? 1),
    inside: () => viewInside(num(args[0]), num(args[1]), num(args[2]), num(args[3]), args[4]),
    tour: () => viewTour(num(args[0])),
    attention: () => viewAttention(num(args[0])),
    lens: () => viewLens(num(args[0]), num(args[1]), num(args[2])),
    model: () => viewModel(args[0]),
    runs: () => viewRuns(),
  };
  const waiting = {
    lens: "asking the database: the logit lens is one scan of the whole vocabulary per block and place…",
    attention: "asking the database for every head's weights…",
  }[view];
  show(views[view] || views.generate, waiting);
}

window.addEventListener("hashchange", route);
window.addEventListener("pagehide", stopStreaming);
window.addEventListener("DOMContentLoaded", () => {
  for (const a of document.querySelectorAll("#nav a")) {
    // The Step, Inside, Attention and Lens tabs open the current run (the newest when none is chosen).
    a.addEventListener("click", (e) => {
      const v = a.dataset.view;
      if (state.run !== null && ["step", "inside", "attention", "lens"].includes(v)) {
        e.preventDefault();
        location.hash = v === "step" ? `#step/${state.run}/${state.step}` : `#${v}/${state.run}`;
      }
    });
  }
  route();
});

// OnlineMPO dashboard: a small hash-routed page over the JSON API of services/dashboard/app.py.
// Live updates come from one server-sent event stream per open run page; nothing polls.
"use strict";

const view = document.getElementById("view");
const banner = document.getElementById("banner");
// Open charts by name, so tests (and curious users in the console) can inspect what is drawn.
window.mpoDashboard = { charts: {}, rounds: [] };
let closeCurrent = () => {};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function showBanner(message) {
  banner.textContent = message;
  banner.hidden = !message;
}

async function api(path) {
  let response;
  try {
    response = await fetch(path, { headers: { Accept: "application/json" } });
  } catch (error) {
    throw new Error(`dashboard server unreachable (${error.message})`);
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

const percent = (value) => (value === null || value === undefined ? "–" : `${(100 * value).toFixed(1)}%`);
const when = (seconds) => (seconds ? new Date(seconds * 1000).toLocaleString() : "–");
function duration(seconds) {
  const s = Math.round(seconds);
  return s >= 3600 ? `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m` : `${Math.floor(s / 60)}m ${s % 60}s`;
}
const stateBadge = (state) => el("span", { class: `state ${state}` }, state);
const runLink = (id) => `#/runs/${encodeURIComponent(id)}`;

// --- runs list ------------------------------------------------------------------------------------------

async function showRuns() {
  const { runs } = await api("api/runs");
  view.replaceChildren(el("h1", {}, "Runs"));
  if (runs.length === 0) {
    view.append(
      el("p", { class: "empty" }, "No runs yet. Start one with ", el("code", {}, "mpo demo"), " or ",
        el("code", {}, "mpo run --config run.yaml"), "; it appears here once the controller stores it."));
    return;
  }
  const rows = runs.map((run) =>
    el("tr", { "data-run": run.run_id },
      el("td", {}, el("a", { href: runLink(run.run_id) }, run.run_id)),
      el("td", {}, stateBadge(run.state)),
      el("td", {}, run.current_round),
      el("td", {}, run.policy_version),
      el("td", {}, run.best_round ? `${percent(run.best_eval_accuracy)} (round ${run.best_round})` : "–"),
      el("td", {}, when(run.started_at)),
      el("td", {}, duration(run.duration_seconds))));
  view.append(el("div", { class: "scroll" }, el("table", { id: "runs" },
    el("thead", {}, el("tr", {}, ["run", "state", "round", "policy version", "best accuracy", "started", "duration"]
      .map((name) => el("th", {}, name)))),
    el("tbody", {}, rows))));
}

// --- one run ----------------------------------------------------------------------------------------------

// Each chart: title and the round-row keys it plots (a function of the rows for per-task series).
const CHARTS = [
  // Round 0 of the accuracy chart is the base policy (the run's base_eval_accuracy).
  { name: "accuracy", title: "Held-out accuracy per task (round 0: base policy)", keys: (rows) => prefixed(rows, "eval_accuracy."), withBase: true },
  // Share of held-out answers with no final answer, a repetition loop or cut at the token limit.
  { name: "degenerate", title: "Degenerate held-out answers per task (round 0: base policy)", keys: (rows) => prefixed(rows, "eval_degenerate."), withBase: true },
  // Held-out scene descriptions judged against each scene: share hallucinated, hallucinated mentions per
  // description, recall of what the scene holds.
  { name: "hallucination", title: "Hallucination in held-out descriptions (round 0: base policy)", keys: (rows) => prefixed(rows, "eval_hallucination.").filter((key) => !key.endsWith(".descriptions")), withBase: true },
  { name: "loss", title: "MPO loss terms", keys: () => ["train.loss_preference", "train.loss_quality", "train.loss_generation", "train.loss"] },
  { name: "shift", title: "δ (reward shift)", keys: () => ["train.reward_shift"] },
  { name: "reward", title: "Reward margin and preference accuracy", keys: () => ["train.reward_margin", "train.preference_accuracy"] },
  { name: "pairs", title: "Pairs per round by source", keys: () => ["labels.pairs_correctness", "labels.pairs_dropout_ntp"] },
  { name: "prompts", title: "Prompts all right / all wrong", keys: () => ["labels.prompts_all_correct", "labels.prompts_all_wrong"] },
  { name: "staleness", title: "Staleness (policy versions)", keys: () => ["staleness_max", "staleness_mean"] },
  { name: "timings", title: "Round time by phase (s)", keys: () => ["generate", "label", "commit", "train", "publish", "eval", "overhead"].map((p) => `timings.${p}`) },
  { name: "tokens", title: "Rollout tokens/s", keys: () => ["rollout_tokens_per_second"] },
];
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#4b5563"];

function prefixed(rows, prefix) {
  return [...new Set(rows.flatMap((row) => Object.keys(row).filter((key) => key.startsWith(prefix))))].sort();
}

function chartData(rows, keys) {
  return [rows.map((row) => row.round), ...keys.map((key) => rows.map((row) => (key in row ? row[key] : null)))];
}

// The base policy's held-out figures (base_eval_accuracy.*, base_eval_hallucination.*.rate, ...) as a round-0 row, or
// null when the run has not measured them.
function baseRow(run) {
  const row = { round: 0 };
  for (const [key, value] of Object.entries(run)) {
    if (/^base_eval_\w+\./.test(key)) row[key.replace("base_", "")] = value;
  }
  return Object.keys(row).length > 1 ? row : null;
}

function makeChart(spec, allRows, base, container, replacing = null) {
  const rows = spec.withBase && base ? [base, ...allRows] : allRows;
  const keys = spec.keys(rows);
  const box = el("div", { class: "chart", "data-chart": spec.name }, el("h3", {}, spec.title));
  if (replacing) replacing.replaceWith(box);
  else container.append(box);
  const chart = new uPlot({
    width: 420, height: 200,
    scales: { x: { time: false } },
    axes: [{ label: "round", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] }, {}],
    series: [{ label: "round" }, ...keys.map((key, i) => ({
      label: key.replace(/^(train|labels|timings|eval_accuracy|eval_degenerate|eval_hallucination)\./, ""),
      stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true, points: { show: true, size: 5 } }))],
  }, chartData(rows, keys), box);
  chart.mpoKeys = keys;
  return chart;
}

function roundsTable(rows) {
  const columns = [...new Set(rows.flatMap((row) => Object.keys(row)))].filter((key) => key !== "run_id");
  const format = (value) => (typeof value === "number" && !Number.isInteger(value) ? value.toFixed(4) : value ?? "");
  return el("div", { class: "scroll" }, el("table", { id: "rounds" },
    el("thead", {}, el("tr", {}, columns.map((key) => el("th", {}, key)))),
    el("tbody", {}, rows.slice().reverse().map((row) =>
      el("tr", { "data-round": row.round }, columns.map((key) => el("td", {}, format(row[key]))))))));
}

function runFacts(run) {
  const fact = (label, value) => el("div", {}, el("span", {}, label), value);
  const base = Object.entries(run).filter(([key]) => key.startsWith("base_eval_accuracy."))
    .map(([key, value]) => `${key.split(".")[1]} ${percent(value)}`).join(", ");
  return el("div", { id: "run-facts" },
    el("div", { class: "facts" },
      fact("state", stateBadge(run.state)),
      fact("round", run.current_round),
      fact("policy version", run.policy_version),
      fact("phase", run.phase ? `${run.phase} (round ${run.phase_round})` : "–"),
      fact("best accuracy", run.best_round ? `${percent(run.best_eval_accuracy)} (round ${run.best_round})` : "–"),
      fact("base accuracy", base || "–"),
      fact("started", when(run.started_at)),
      fact("duration", duration(run.duration_seconds))),
    run.error ? el("div", { class: "error", id: "run-error" }, `The run failed: ${run.error}`) : null);
}

async function showRun(runId) {
  const [{ run }, { rounds }] = await Promise.all([
    api(`api/runs/${encodeURIComponent(runId)}`), api(`api/runs/${encodeURIComponent(runId)}/rounds`)]);
  const state = { rows: rounds, base: baseRow(run) };
  window.mpoDashboard.rounds = state.rows;
  const charts = el("div", { class: "charts" });
  const tableSlot = el("div", {}, roundsTable(state.rows));
  view.replaceChildren(
    el("h1", {}, `Run ${runId}`),
    runFacts(run),
    el("p", {},
      el("a", { href: `${runLink(runId)}/pairs` }, "Browse pairs"), " · ",
      el("a", { href: `api/runs/${encodeURIComponent(runId)}/rounds.csv`, download: `${runId}-rounds.csv`, id: "csv" },
        "Download rounds (CSV)")),
    state.rows.length ? "" : el("p", { class: "empty muted", id: "no-rounds" }, "No finished round yet."),
    charts,
    el("h2", {}, "Rounds"),
    tableSlot);
  window.mpoDashboard.charts = Object.fromEntries(
    CHARTS.map((spec) => [spec.name, makeChart(spec, state.rows, state.base, charts)]));

  const redraw = () => {
    for (const spec of CHARTS) {
      const chart = window.mpoDashboard.charts[spec.name];
      const rows = spec.withBase && state.base ? [state.base, ...state.rows] : state.rows;
      const keys = spec.keys(rows);
      if (keys.join() !== chart.mpoKeys.join()) {  // a new series (task): rebuild this chart
        const box = chart.root.parentElement;
        chart.destroy();
        window.mpoDashboard.charts[spec.name] = makeChart(spec, state.rows, state.base, charts, box);
      } else {
        chart.setData(chartData(rows, keys));
      }
    }
    tableSlot.replaceChildren(roundsTable(state.rows));
    document.getElementById("no-rounds")?.remove();
  };
  follow(runId, state, redraw);
}

// One event stream per open run page, resumed after the last round shown when the connection drops.
function follow(runId, state, redraw) {
  let source = null;
  let retry = null;
  let ended = false;
  const open = () => {
    const last = state.rows.length ? state.rows[state.rows.length - 1].round : 0;
    source = new EventSource(`api/runs/${encodeURIComponent(runId)}/events?from_round=${last + 1}`);
    source.addEventListener("open", () => showBanner(""));
    source.addEventListener("round", (event) => {
      const row = JSON.parse(event.data);
      if (state.rows.some((existing) => existing.round === row.round)) return;
      state.rows.push(row);
      redraw();
    });
    const update = (event) => document.getElementById("run-facts")?.replaceWith(runFacts(JSON.parse(event.data)));
    source.addEventListener("run", update);
    source.addEventListener("end", (event) => { ended = true; update(event); source.close(); });
    source.addEventListener("error", () => {
      if (ended) return;
      source.close();
      showBanner("Lost the connection to the dashboard server (controller restarting?); reconnecting…");
      retry = setTimeout(open, 2000);
    });
  };
  open();
  closeCurrent = () => { ended = true; source?.close(); clearTimeout(retry); };
}

// --- pair browser -------------------------------------------------------------------------------------------

function verdict(answer, truth) {
  if (truth === null) return "";
  if (!answer) return " · unparsable";
  const right = answer === truth;
  return el("span", { class: right ? "ok" : "bad" }, ` · answer ${answer} ${right ? "✓" : "✗"}`);
}

function pairCard(runId, pair) {
  const images = Array.from({ length: pair.images }, (_, index) => el("img", {
    alt: `image ${index} of pair ${pair.id}`,
    src: `api/runs/${encodeURIComponent(runId)}/pairs/${encodeURIComponent(pair.id)}/images/${index}`,
  }));
  const dropout = pair.source === "PAIR_SOURCE_DROPOUT_NTP";
  return el("div", { class: "pair", "data-pair": pair.id },
    el("div", { class: "meta" },
      `round ${pair.round} · ${pair.task} · ${pair.source.replace("PAIR_SOURCE_", "").toLowerCase()} · `
      + `policy version ${pair.policy_version}`
      + (pair.verifier ? ` · verifier ${pair.verifier}` : "")
      + (pair.ground_truth !== null ? ` · ground truth ${pair.ground_truth}` : "")),
    el("div", { class: "question" }, pair.question),
    el("div", {}, images),
    el("div", { class: "sides" },
      el("div", { class: "side chosen" },
        el("h4", {}, dropout ? "chosen (with the image)" : "chosen",
          dropout ? "" : verdict(pair.chosen_answer, pair.ground_truth)),
        pair.chosen),
      el("div", { class: "side rejected" },
        el("h4", {}, dropout ? "rejected (continued without the image)" : "rejected",
          dropout ? "" : verdict(pair.rejected_answer, pair.ground_truth)),
        pair.rejected)));
}

async function showPairs(runId, params) {
  const query = new URLSearchParams();
  for (const key of ["round", "task", "source", "offset"]) if (params.get(key)) query.set(key, params.get(key));
  const page = await api(`api/runs/${encodeURIComponent(runId)}/pairs?${query}`);
  const offset = Number(params.get("offset") || 0);
  const navigate = (changes) => {
    const next = new URLSearchParams(params);
    for (const [key, value] of Object.entries(changes)) value === "" ? next.delete(key) : next.set(key, value);
    location.hash = `${runLink(runId)}/pairs?${next}`;
  };
  const select = (name, options, current) => el("select", { name, onchange: (e) => navigate({ [name]: e.target.value, offset: "" }) },
    el("option", { value: "" }, "all"),
    options.map((option) => el("option", option === current ? { value: option, selected: "" } : { value: option }, option)));
  view.replaceChildren(
    el("h1", {}, "Pairs of ", el("a", { href: runLink(runId) }, runId)),
    el("div", { class: "filters" },
      el("label", {}, "round", select("round", page.rounds.map(String), params.get("round") || "")),
      el("label", {}, "task", el("input", { name: "task", value: params.get("task") || "", placeholder: "any",
        onchange: (e) => navigate({ task: e.target.value, offset: "" }) })),
      el("label", {}, "source", select("source", page.sources, params.get("source") || "")),
      el("span", { class: "muted", id: "pair-count" },
        page.total ? `${offset + 1}–${offset + page.pairs.length} of ${page.total}` : "no pairs match"),
      el("button", { disabled: offset === 0 ? "" : null, onclick: () => navigate({ offset: Math.max(0, offset - page.pairs.length || 20) }) }, "previous"),
      el("button", { disabled: offset + page.pairs.length >= page.total ? "" : null, onclick: () => navigate({ offset: offset + page.pairs.length }) }, "next")),
    el("div", { id: "pairs" }, page.pairs.map((pair) => pairCard(runId, pair))));
}

// --- services ----------------------------------------------------------------------------------------------

async function showServices() {
  const { services } = await api("api/services");
  view.replaceChildren(el("h1", {}, "Services ", el("button", { onclick: route }, "refresh")));
  if (services === null) {
    view.append(el("p", { class: "empty" }, "This dashboard reads a run store only (",
      el("code", {}, "mpo dashboard"), "); the services panel is live when the controller serves the dashboard."));
    return;
  }
  const columns = ["service", "address", "health", "ready", "policy_version", "queue_depth", "replicas", "detail", "error"];
  view.append(el("table", { id: "services" },
    el("thead", {}, el("tr", {}, columns.map((key) => el("th", {}, key.replace("_", " "))))),
    el("tbody", {}, services.map((row) => el("tr", { "data-service": row.service },
      columns.map((key) => el("td", { "data-key": key, class: key === "health" ? (row.health === "serving" ? "ok" : "bad") : null },
        row[key] ?? "–")))))));
}

// --- routing ------------------------------------------------------------------------------------------------

async function route() {
  closeCurrent();
  closeCurrent = () => {};
  const [path, search] = location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  try {
    if (parts[0] === "runs" && parts[1] && parts[2] === "pairs") await showPairs(parts[1], new URLSearchParams(search));
    else if (parts[0] === "runs" && parts[1]) await showRun(parts[1]);
    else if (parts[0] === "services") await showServices();
    else await showRuns();
    showBanner("");
  } catch (error) {
    view.replaceChildren(el("div", { class: "error", id: "load-error" }, error.message));
  }
}

window.addEventListener("hashchange", route);
route();

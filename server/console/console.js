// AIMatrix console: one ES module, no framework and no build step, over the server's own HTTP API
// (GET /v1/jobs, POST /v1/jobs, DELETE /v1/jobs/{id}, POST /v1/sql, GET /v1/catalog) and its
// WebSocket subscriptions (GET /v1/subscribe). Every value is put into the page as text
// (textContent), never as HTML.

const $ = (id) => document.getElementById(id);
const PAGE_ROWS = 100;
let token = sessionStorage.getItem("aimatrix-token");

// ---- HTTP -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Calls the API; throws ApiError with the server's `error` text (or the network failure). */
async function api(method, path, body, contentType, { text: asText = false } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = contentType;
  let response;
  try {
    response = await fetch(path, { method, headers, body });
  } catch (e) {
    throw new ApiError(0, `the server cannot be reached (${e.message})`);
  }
  const text = await response.text();
  if (asText && response.ok) return text;
  let parsed = null;
  try {
    parsed = text ? parseJson(text) : null;
  } catch {
    parsed = null;
  }
  if (response.status === 401) {
    showLogin(parsed?.error ?? "a bearer token is needed");
  }
  if (!response.ok) {
    throw new ApiError(response.status, parsed?.error ?? (text || response.statusText));
  }
  return parsed;
}

/** JSON.parse, keeping integers past 2^53 exact (as BigInt, from their source text). */
function parseJson(text) {
  return JSON.parse(text, (_key, value, context) =>
    typeof value === "number" && Number.isInteger(value) && !Number.isSafeInteger(value) && context?.source
      ? BigInt(context.source)
      : value,
  );
}

const sql = (statement) => api("POST", "/v1/sql", JSON.stringify({ sql: statement }), "application/json");

function showLogin(message) {
  $("login").hidden = false;
  notice(message);
}

function notice(message) {
  const p = $("notice");
  p.textContent = message ?? "";
  p.hidden = !message;
}

$("forget-token").addEventListener("click", () => {
  token = null;
  sessionStorage.removeItem("aimatrix-token");
  $("forget-token").hidden = true;
  showLogin("the token is forgotten: enter another");
  $("token").focus();
});

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("aimatrix-token", token);
  $("login").hidden = true;
  $("forget-token").hidden = false;
  notice(null);
  refreshAll();
});

// ---- Tabs (WAI-ARIA tabs pattern: arrow keys move between tabs) ---------------------------

const tabs = [...document.querySelectorAll('[role="tab"]')];

function select(tab) {
  for (const t of tabs) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !on;
  }
  // The panel in the address (a link or a reload opens it), without scrolling or moving focus.
  history.replaceState(null, "", `#${tab.getAttribute("aria-controls")}`);
  refresh(tab.getAttribute("aria-controls"));
}

for (const [i, tab] of tabs.entries()) {
  tab.addEventListener("click", () => select(tab));
  tab.addEventListener("keydown", (e) => {
    const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
    if (to !== undefined) {
      e.preventDefault();
      const next = tabs[(to + tabs.length) % tabs.length];
      next.focus();
      select(next);
    }
  });
}

// ---- Tables -------------------------------------------------------------------------------

function cell(tr, value, tag = "td") {
  const td = document.createElement(tag);
  if (value === null || value === undefined) {
    td.textContent = "NULL";
    td.className = "null";
  } else if (typeof value === "number" || typeof value === "bigint") {
    // The shortest text that reads back as the same double (ECMAScript Number::toString).
    td.textContent = String(value);
    td.className = "num";
  } else if (value instanceof Node) {
    td.append(value);
  } else {
    td.textContent = typeof value === "object" ? JSON.stringify(value) : String(value);
  }
  tr.append(td);
  return td;
}

/** A table of `rows` (objects) with `columns`; sortable by any column, in pages of PAGE_ROWS. */
function table(columns, rows, { caption, sortable = true } = {}) {
  const wrap = document.createElement("div");
  let sortBy = null;
  let descending = false;
  let page = 0;
  const draw = () => {
    wrap.replaceChildren();
    const t = document.createElement("table");
    if (caption) t.createCaption().textContent = caption;
    const head = t.createTHead().insertRow();
    for (const c of columns) {
      const th = document.createElement("th");
      th.scope = "col";
      if (sortable) {
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = c + (sortBy === c ? (descending ? " ▼" : " ▲") : "");
        b.addEventListener("click", () => {
          descending = sortBy === c ? !descending : false;
          sortBy = c;
          draw();
          wrap.querySelectorAll("th button")[columns.indexOf(c)]?.focus();
        });
        th.setAttribute("aria-sort", sortBy === c ? (descending ? "descending" : "ascending") : "none");
        th.append(b);
      } else {
        th.textContent = c;
      }
      head.append(th);
    }
    let shown = rows;
    if (sortBy !== null) {
      // NULLs last, either way.
      shown = [...rows].sort((a, b) => {
        const [x, y] = [a[sortBy], b[sortBy]];
        if (isNull(x) || isNull(y)) return isNull(x) - isNull(y);
        return compare(x, y) * (descending ? -1 : 1);
      });
    }
    const pages = Math.max(1, Math.ceil(shown.length / PAGE_ROWS));
    page = Math.min(page, pages - 1);
    const body = t.createTBody();
    for (const row of shown.slice(page * PAGE_ROWS, (page + 1) * PAGE_ROWS)) {
      const tr = body.insertRow();
      for (const c of columns) cell(tr, row[c]);
    }
    wrap.append(t);
    if (pages > 1) {
      const pager = document.createElement("div");
      pager.className = "pager";
      const button = (label, to, disabled) => {
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = label;
        b.disabled = disabled;
        b.addEventListener("click", () => {
          page = to;
          draw();
          const again = [...wrap.querySelectorAll(".pager button")].find((x) => x.textContent === label && !x.disabled);
          (again ?? wrap.querySelector(".pager button:not([disabled])"))?.focus();
        });
        return b;
      };
      const where = document.createElement("span");
      where.textContent = `page ${page + 1} of ${pages} (${shown.length} rows)`;
      pager.append(button("Previous", page - 1, page === 0), where, button("Next", page + 1, page >= pages - 1));
      wrap.append(pager);
    }
  };
  draw();
  if (!rows.length) {
    const none = document.createElement("p");
    none.className = "hint";
    none.textContent = "No rows.";
    wrap.append(none);
  }
  return wrap;
}

const isNull = (v) => v === null || v === undefined;
const isNumeric = (v) => typeof v === "number" || typeof v === "bigint";

/** Orders two non-NULL values: numbers (and big integers) by value, the rest as text. */
function compare(a, b) {
  if (isNumeric(a) && isNumeric(b)) return a < b ? -1 : a > b ? 1 : 0;
  return String(a).localeCompare(String(b));
}

// ---- Health -------------------------------------------------------------------------------

/** Whether the server was ready once: from then on the page asks only whether it is up
 * (`/healthz`), as `/readyz` also answers 503 while a new job's collections start. */
let wasReady = false;

async function refreshHealth() {
  const h = $("health");
  try {
    const r = await fetch(wasReady ? "/healthz" : "/readyz");
    wasReady ||= r.ok;
    h.textContent = r.ok ? "server ready" : "server starting";
    h.className = r.ok ? "ok" : "";
  } catch {
    h.textContent = "server unreachable";
    h.className = "bad";
    wasReady = false;
  }
}

// ---- Overview -----------------------------------------------------------------------------

/** Cards of `[label, value]` pairs: the value large, the label under it ("–" for none). */
function cardsOf(pairs) {
  return pairs.map(([label, value]) => {
    const div = document.createElement("div");
    div.className = "card";
    const v = document.createElement("div");
    v.className = "value";
    v.textContent = value ?? "–";
    const l = document.createElement("div");
    l.textContent = label;
    div.append(v, l);
    return div;
  });
}

/** A horizontal bar `fraction` (0–1) of `width` px long, hidden from screen readers (the
 * number beside it says the same). */
function barOf(fraction, width, className = "bar") {
  const b = document.createElement("span");
  b.className = className;
  b.style.width = `${Math.round(fraction * width)}px`;
  b.setAttribute("aria-hidden", "true");
  return b;
}

async function refreshOverview() {
  const [traces, models, tools, runs, collections, latency, recent, days] = await Promise.all([
    sql(`SELECT count(*) AS traces, sum(CASE WHEN status = 'error' THEN 1 ELSE 0 END) AS failed,
                sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, sum(cost_usd) AS cost_usd
         FROM agent_traces`),
    sql(`SELECT provider, request_model, calls, error_calls, latency_ms_p50, latency_ms_p95, cost_usd
         FROM model_usage ORDER BY latency_ms_p95 DESC NULLS LAST LIMIT 20`),
    sql(`SELECT tool_name, calls, errors, CAST(errors AS DOUBLE) / calls AS error_rate
         FROM tool_usage ORDER BY error_rate DESC, calls DESC LIMIT 20`),
    sql("SELECT status, count(*) AS runs FROM workflow_runs GROUP BY status ORDER BY runs DESC"),
    sql("SELECT collection, documents, edits, size_bytes FROM collection_stats ORDER BY documents DESC LIMIT 20"),
    // Model calls by latency, in buckets of powers of two (ms): [1, 2), [2, 4), … ([0, 2) for the first).
    sql(`SELECT CAST(power(2, floor(log2(greatest(1.0,
                (CAST(end_time AS BIGINT) - CAST(start_time AS BIGINT)) / 1000.0)))) AS BIGINT) AS bucket_ms,
                count(*) AS calls
         FROM spans WHERE operation IN ('chat', 'text_completion', 'generate_content') AND end_time >= start_time
         GROUP BY 1 ORDER BY 1`),
    sql(`SELECT trace_id, agent_name, status, spans, llm_calls, tool_errors, input_tokens, output_tokens, cost_usd,
                start_time, (CAST(end_time AS BIGINT) - CAST(start_time AS BIGINT)) / 1000 AS duration_ms
         FROM agent_traces ORDER BY start_time DESC NULLS LAST, trace_id LIMIT 20`),
    sql(`SELECT date_trunc('day', start_time) AS day, count(*) AS spans,
                sum(CASE WHEN status = 'error' THEN 1 ELSE 0 END) AS errors
         FROM spans WHERE start_time IS NOT NULL GROUP BY 1 ORDER BY 1 DESC LIMIT 30`),
  ]);
  const t = traces.rows[0] ?? {};
  const cards = [
    ["traces", t.traces],
    ["failed traces", t.failed ?? 0],
    ["input tokens", t.input_tokens],
    ["output tokens", t.output_tokens],
    ["cost (USD, priced calls)", t.cost_usd === null || t.cost_usd === undefined ? null : String(t.cost_usd)],
  ];
  $("overview-cards").replaceChildren(...cardsOf(cards));
  // Latency as bars, scaled to the slowest p95 shown.
  const slowest = Math.max(1, ...models.rows.map((r) => r.latency_ms_p95 ?? 0));
  const withBars = models.rows.map((r) => {
    const bar = document.createElement("span");
    if (r.latency_ms_p95 !== null) {
      bar.append(barOf(r.latency_ms_p95 / slowest, 120), `${Math.round(r.latency_ms_p95)} ms`);
    } else {
      bar.textContent = "NULL";
      bar.className = "null";
    }
    return { ...r, "p95 latency": bar };
  });
  $("overview-models").replaceChildren(
    table(
      ["provider", "request_model", "calls", "error_calls", "latency_ms_p50", "p95 latency", "cost_usd"],
      withBars,
      { sortable: false },
    ),
  );
  const most = Math.max(1, ...latency.rows.map((r) => r.calls));
  $("overview-latency").replaceChildren(
    table(
      ["latency", "calls"],
      latency.rows.map((r) => {
        const bar = document.createElement("span");
        bar.append(barOf(r.calls / most, 240), String(r.calls));
        const from = Number(r.bucket_ms) === 1 ? 0 : Number(r.bucket_ms);
        return { latency: `${from}–${Number(r.bucket_ms) * 2} ms`, calls: bar };
      }),
      { sortable: false },
    ),
  );
  $("overview-traces").replaceChildren(
    table(
      ["trace_id", "agent_name", "status", "spans", "llm_calls", "tool_errors", "input_tokens", "output_tokens", "cost_usd",
       "start_time", "duration_ms"],
      recent.rows,
    ),
  );
  // Failed spans per day (UTC), oldest first: a bar for the spans, its failed part in red.
  const byDay = [...days.rows].reverse();
  const busiest = Math.max(1, ...byDay.map((d) => Number(d.spans)));
  $("overview-errors").replaceChildren(
    table(
      ["day", "spans", "failed"],
      byDay.map((d) => {
        const bar = document.createElement("span");
        const [spans, errors] = [Number(d.spans), Number(d.errors)];
        bar.append(barOf((spans - errors) / busiest, 240), barOf(errors / busiest, 240, "bar bad"), `${errors} of ${spans}`);
        return { day: String(d.day).slice(0, 10), spans: d.spans, failed: bar };
      }),
      { sortable: false },
    ),
  );
  $("overview-tools").replaceChildren(table(["tool_name", "calls", "errors", "error_rate"], tools.rows));
  $("overview-workflows").replaceChildren(table(["status", "runs"], runs.rows));
  $("overview-collections").replaceChildren(table(["collection", "documents", "edits", "size_bytes"], collections.rows));
}

// ---- Jobs ---------------------------------------------------------------------------------

async function refreshJobs() {
  const { jobs } = await api("GET", "/v1/jobs");
  const recent = jobs.slice(-50).reverse();
  const shownNote = jobs.length > recent.length ? `The newest ${recent.length} of ${jobs.length} jobs.` : "";
  const details = await Promise.all(
    recent.map((j) => (j.state === "cancelled" ? Promise.resolve(j) : api("GET", `/v1/jobs/${j.id}`).catch(() => j))),
  );
  const rows = details.map((j) => {
    const state = document.createElement("span");
    state.textContent = j.state;
    state.className = `state-${j.state}`;
    let hydration = "–"; // a cancelled job has no dataflow left to hydrate
    if (j.state !== "cancelled") {
      hydration = document.createElement("progress");
      hydration.max = 1;
      hydration.value = j.hydration ?? 1;
      hydration.setAttribute("aria-label", `job ${j.id} hydration`);
      hydration.title = `${Math.round((j.hydration ?? 1) * 100)}% hydrated`;
    }
    const sources = (j.source_stats ?? []).map((s) => {
      let lag = "";
      const p = s.progress;
      if (p?.caught_up) {
        lag = ", caught up";
      } else if (p) {
        // The backfill: bytes read of the files' bytes, and the time left at the rate so far.
        lag = `, catching up: ${bytes(p.bytes_read)} of ${bytes(p.bytes_total)}`;
        if (p.eta_ms !== null && p.eta_ms !== undefined) lag += `, about ${Math.ceil(p.eta_ms / 1000)} s left`;
      }
      return `${s.name} (${s.kind}): ${s.records} records, ${s.errors} errors${lag}`;
    });
    let cancel = "";
    if (j.state !== "cancelled") {
      cancel = document.createElement("button");
      cancel.type = "button";
      cancel.textContent = "Cancel";
      cancel.setAttribute("aria-label", `Cancel job ${j.id}`);
      cancel.addEventListener("click", async () => {
        if (!confirm(`Cancel job ${j.id}${j.name ? ` (${j.name})` : ""}? Its sources stop and its views are dropped.`)) return;
        const out = $("job-result");
        try {
          await api("DELETE", `/v1/jobs/${j.id}`);
          out.className = "";
          out.textContent = `job ${j.id} cancelled`;
        } catch (e) {
          out.className = "error";
          out.textContent = `cancelling job ${j.id}: ${e.message}`;
        }
        refreshJobs().catch(report);
      });
    }
    const errors = (j.errors ?? []).join("; ");
    return { id: j.id, name: j.name, kind: j.kind, state, hydration, sources: sources.join("; "), errors, "": cancel };
  });
  $("job-list").replaceChildren(
    rows.length
      ? table(["id", "name", "kind", "state", "hydration", "sources", "errors", ""], rows, { sortable: false })
      : Object.assign(document.createElement("p"), { className: "hint", textContent: "No jobs yet." }),
    Object.assign(document.createElement("p"), { className: "hint", textContent: shownNote }),
  );
}

$("job-file").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  // Cleared, so that choosing the same file again reads it again.
  e.target.value = "";
  if (!file) return;
  const out = $("job-result");
  const text = await file.text();
  if (file.size > 1 << 20 || text.includes("\u0000") || text.includes("\ufffd")) {
    out.className = "error";
    out.textContent = `${file.name} is not a job file: a job file is TOML text (UTF-8, at most 1 MiB)`;
    return;
  }
  out.className = "";
  out.textContent = `${file.name} read: Submit job sends it`;
  $("job-toml").value = text;
});

$("job-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const out = $("job-result");
  out.className = "";
  out.textContent = "submitting…";
  // (Relative paths in a job sent from here resolve against the server's working directory.)
  try {
    const { id } = await api("POST", "/v1/jobs", $("job-toml").value, "application/toml");
    out.className = "";
    out.textContent = `job ${id} submitted`;
  } catch (err) {
    out.className = "error";
    out.textContent = `the job was refused (${err.status}): ${err.message}`;
    selectLine($("job-toml"), err.message);
  }
  refreshJobs().catch(report);
});

/** Selects, in `area`, the word at the position a message names (`at line L, column C`, as
 * the server's SQL errors give it). */
function selectPosition(area, message) {
  const m = /\bline (\d+), column (\d+)/.exec(message);
  if (!m) return;
  const lines = area.value.split("\n");
  const n = Math.min(Number(m[1]), lines.length) - 1;
  const column = Math.min(Number(m[2]) - 1, lines[n].length);
  const start = lines.slice(0, n).reduce((a, l) => a + l.length + 1, 0) + column;
  const word = /^\w+/.exec(lines[n].slice(column))?.[0] ?? lines[n].slice(column, column + 1);
  area.focus();
  area.setSelectionRange(start, start + word.length);
}

/** Selects, in `area`, the line a message names (`line N`, as TOML errors give it). */
function selectLine(area, message) {
  const m = /\bline (\d+)/.exec(message);
  if (!m) return;
  const lines = area.value.split("\n");
  const n = Math.min(Number(m[1]), lines.length) - 1;
  const start = lines.slice(0, n).reduce((a, l) => a + l.length + 1, 0);
  area.focus();
  area.setSelectionRange(start, start + lines[n].length);
}

// ---- SQL ----------------------------------------------------------------------------------

let sqlRun = 0;

async function runSql() {
  const status = $("sql-status");
  const result = $("sql-result");
  const run = ++sqlRun;
  const button = document.querySelector("#sql-form button[type=submit]");
  button.disabled = true;
  status.className = "";
  status.textContent = "running…";
  const started = performance.now();
  try {
    const answer = await sql($("sql-text").value);
    if (run !== sqlRun) return;
    const ms = Math.round(performance.now() - started);
    if (answer.columns) {
      const names = answer.columns.map((c) => c.name);
      const repeated = names.filter((n, i) => names.indexOf(n) !== i);
      status.textContent =
        `${answer.rows.length} rows at ${when(answer.timestamp)} (${ms} ms)` +
        (repeated.length
          ? `; columns named alike (${[...new Set(repeated)].join(", ")}) show one value: give them names with AS`
          : "");
      result.replaceChildren(table(names, answer.rows));
    } else if (answer.created !== undefined) {
      status.textContent = answer.existed ? `${answer.created} already exists` : `created ${answer.created}`;
      result.replaceChildren();
    } else {
      status.textContent = answer.existed ? `dropped ${answer.dropped}` : `${answer.dropped} did not exist`;
      result.replaceChildren();
    }
  } catch (err) {
    if (run !== sqlRun) return;
    status.className = "error";
    status.textContent = `error (${err.status}): ${err.message}`;
    result.replaceChildren();
    selectPosition($("sql-text"), err.message);
  } finally {
    if (run === sqlRun) button.disabled = false;
  }
}

/** A timestamp (ms since the Unix epoch) as the API gives it and as a UTC time. */
function when(ms) {
  return `timestamp ${ms} (${new Date(Number(ms)).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC")})`;
}

$("sql-form").addEventListener("submit", (e) => {
  e.preventDefault();
  runSql();
});
$("sql-text").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    if (!document.querySelector("#sql-form button[type=submit]").disabled) runSql();
  }
});

// ---- Relations and live views -------------------------------------------------------------

let relations = [];
let live = null; // the open subscription: { socket, name }

async function refreshRelations() {
  relations = (await api("GET", "/v1/catalog")).relations;
  drawRelationList();
}

function drawRelationList() {
  const filter = $("relation-filter").value.trim().toLowerCase();
  const current = live?.name ?? $("relation-detail").dataset.name;
  $("relation-list").replaceChildren(
    ...relations
      .filter((r) => r.name.toLowerCase().includes(filter))
      .map((r) => {
        const li = document.createElement("li");
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = r.name;
        b.setAttribute("aria-current", String(r.name === current));
        b.addEventListener("click", () => {
          showRelation(r);
          [...$("relation-list").querySelectorAll("button")].find((x) => x.textContent === r.name)?.focus();
        });
        li.append(b);
        return li;
      }),
  );
}

$("relation-filter").addEventListener("input", drawRelationList);

function showRelation(relation) {
  stopLive();
  const detail = $("relation-detail");
  detail.dataset.name = relation.name;
  const h = document.createElement("h3");
  h.textContent = relation.name;
  const watch = document.createElement("button");
  watch.type = "button";
  watch.id = "watch";
  watch.textContent = "Watch live";
  // One handler: it stops the subscription that is open, or opens one.
  watch.onclick = () => {
    if (live?.name === relation.name) {
      stopLive();
      $("live-status").textContent = "stopped";
    } else {
      startLive(relation);
    }
  };
  const status = document.createElement("p");
  status.id = "live-status";
  status.setAttribute("role", "status");
  const rows = document.createElement("div");
  rows.id = "live-rows";
  detail.replaceChildren(
    h,
    table(["name", "type"], relation.columns, { caption: "Columns", sortable: false }),
    watch,
    status,
    rows,
  );
  drawRelationList();
}

function stopLive() {
  if (live) {
    live.closing = true;
    live.socket.close(1000);
    live = null;
  }
  if ($("watch")) $("watch").textContent = "Watch live";
}

/** Rows of a live view drawn at most; the others are counted (SQL reads them all). */
const LIVE_ROWS = 500;

/** Subscribes to `relation` and keeps its rows in a table: each distinct row with its count;
 * inserts highlighted, retractions struck out for a moment before they go. At most
 * LIVE_ROWS rows are drawn, so that a large relation does not stall the page. */
function startLive(relation) {
  stopLive();
  const columns = relation.columns.map((c) => c.name);
  const counts = new Map(); // JSON of the row → { count, tr (null: not drawn) }
  let drawn = 0;
  let timestamp = null;
  const status = $("live-status");
  status.className = "";
  const wrap = $("live-rows");
  const t = document.createElement("table");
  t.id = "live-table";
  const head = t.createTHead().insertRow();
  for (const c of [...columns, "count"]) cell(head, c, "th").scope = "col";
  const body = t.createTBody();
  const more = document.createElement("p");
  more.className = "hint";
  wrap.replaceChildren(t, more);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const query = new URLSearchParams({ view: relation.name });
  if (token) query.set("access_token", token);
  const socket = new WebSocket(`${scheme}://${location.host}/v1/subscribe?${query}`);
  const me = { socket, name: relation.name, closing: false, heard: false };
  live = me;
  status.textContent = "subscribing…";
  $("watch").textContent = "Stop";
  // The status line, redrawn at most once a frame.
  let pending = false;
  const showStatus = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      if (live !== me) return;
      status.textContent = `${counts.size} rows at ${when(timestamp)}`;
      more.textContent = counts.size > drawn ? `${counts.size - drawn} more rows are counted but not drawn (SQL reads them all).` : "";
    });
  };
  const apply = (row, diff, highlight) => {
    const key = JSON.stringify(row);
    let entry = counts.get(key);
    if (!entry) {
      entry = { count: 0, tr: null };
      if (drawn < LIVE_ROWS) {
        const tr = body.insertRow();
        for (const c of columns) cell(tr, row[c]);
        cell(tr, 0);
        entry.tr = tr;
        drawn += 1;
      }
      counts.set(key, entry);
    }
    entry.count += diff;
    if (entry.count <= 0) counts.delete(key);
    const tr = entry.tr;
    if (!tr) return;
    tr.lastChild.textContent = String(entry.count);
    tr.classList.remove("inserted", "retracted");
    if (entry.count <= 0) {
      tr.classList.add("retracted");
      setTimeout(() => {
        tr.remove();
        drawn -= 1;
      }, 2000);
    } else if (highlight) {
      tr.classList.add("inserted");
    }
  };
  socket.addEventListener("message", (m) => {
    if (live !== me) return;
    me.heard = true;
    const msg = parseJson(m.data);
    timestamp = msg.timestamp;
    if (msg.type === "snapshot") {
      for (const { row, diff } of msg.rows) apply(row, diff, false);
    } else if (msg.type === "update") {
      apply(msg.row, msg.diff, true);
    }
    showStatus();
  });
  socket.addEventListener("close", (e) => {
    if (me.closing) return;
    if (live === me) live = null;
    if ($("watch")) $("watch").textContent = "Watch live";
    status.className = "error";
    status.textContent = !me.heard
      ? `the subscription could not open (${e.code}): the relation may be gone, or the server unreachable; Watch live tries again`
      : e.code === 1000
        ? "the view was dropped"
        : `the subscription closed (${e.code}${e.reason ? `: ${e.reason}` : ""}); Watch live subscribes again`;
    // The catalog may have changed (a view dropped).
    refreshRelations().catch(report);
  });
}

// ---- Errors -------------------------------------------------------------------------------

async function refreshErrors() {
  const [ingest, views] = await Promise.all([
    sql("SELECT source, location, error, raw FROM ingest_errors ORDER BY source, location LIMIT 1000"),
    sql("SELECT view, error FROM aimatrix_view_errors LIMIT 1000"),
  ]);
  $("errors-ingest").replaceChildren(table(["source", "location", "error", "raw"], ingest.rows));
  $("errors-view").replaceChildren(table(["view", "error"], views.rows));
}

// ---- Health -------------------------------------------------------------------------------

/** Samples of the sources' totals: { at (ms), records, errors }, the last 60 (5 minutes). */
const samples = [];

/** The sum of the Prometheus text-format samples of metric `name` (over all its labels), or
 * null when there are none. */
function metric(text, name) {
  const values = text
    .split("\n")
    .filter((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`))
    .map((l) => Number(l.slice(l.lastIndexOf(" ") + 1)));
  return values.length ? values.reduce((a, b) => a + b, 0) : null;
}

function bytes(n) {
  if (n === null || n === undefined) return null;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** An SVG line chart of `series` ([{ label, values, className }]) over the samples' times. */
function chart(series, title) {
  const ns = "http://www.w3.org/2000/svg";
  const width = 480;
  const height = 120;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", String(width));
  svg.setAttribute("height", String(height));
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", title);
  const top = Math.max(1, ...series.flatMap((s) => s.values));
  for (const s of series) {
    const n = s.values.length;
    if (n < 2) continue;
    const points = s.values.map((v, i) => `${(i / (n - 1)) * (width - 2) + 1},${height - 1 - (v / top) * (height - 12)}`);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("class", s.className);
    svg.append(line);
  }
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", "4");
  label.setAttribute("y", "10");
  label.textContent = `max ${Math.round(top)}/s`;
  svg.append(label);
  const legend = document.createElement("p");
  legend.className = "legend";
  for (const s of series) {
    const key = document.createElement("span");
    key.className = `key ${s.className}`;
    key.textContent = s.label;
    legend.append(key);
  }
  const figure = document.createElement("figure");
  figure.append(svg, legend);
  return figure;
}

async function refreshHealthPanel() {
  const [sources, frontiers, metricsText] = await Promise.all([
    sql("SELECT source, records, decoded, errors FROM aimatrix_source_stats ORDER BY source"),
    sql("SELECT collection, frontier, lag_ms FROM aimatrix_frontiers ORDER BY lag_ms DESC LIMIT 20"),
    api("GET", "/metrics", undefined, undefined, { text: true }),
  ]);
  const now = Date.now();
  const records = sources.rows.reduce((a, r) => a + r.records, 0);
  const errors = sources.rows.reduce((a, r) => a + r.errors, 0);
  samples.push({ at: now, records, errors });
  if (samples.length > 61) samples.shift();
  const rates = [];
  for (let i = 1; i < samples.length; i += 1) {
    const dt = (samples[i].at - samples[i - 1].at) / 1000;
    rates.push({
      records: Math.max(0, (samples[i].records - samples[i - 1].records) / dt),
      errors: Math.max(0, (samples[i].errors - samples[i - 1].errors) / dt),
    });
  }
  const last = rates.at(-1);
  const rss = metric(metricsText, "process_resident_memory_bytes");
  const arranged = metric(metricsText, "aimatrix_arrangement_bytes");
  const lag = frontiers.rows.length ? frontiers.rows[0].lag_ms : null;
  const cards = [
    ["records/s", last ? Math.round(last.records) : "…"],
    ["ingest errors/s", last ? Math.round(last.errors) : "…"],
    ["records read", records],
    ["ingest errors", errors],
    ["largest frontier lag", lag === null ? null : `${lag} ms`],
    ["resident memory", bytes(rss)],
    ["arranged collections", bytes(arranged)],
  ];
  $("health-cards").replaceChildren(...cardsOf(cards));
  $("health-chart").replaceChildren(
    rates.length < 2
      ? Object.assign(document.createElement("p"), { className: "hint", textContent: "Measuring… (a point every 5 s)" })
      : chart(
          [
            { label: "records/s", values: rates.map((r) => r.records), className: "series-records" },
            { label: "ingest errors/s", values: rates.map((r) => r.errors), className: "series-errors" },
          ],
          "records and ingest errors per second over the last minutes",
        ),
  );
  $("health-sources").replaceChildren(table(["source", "records", "decoded", "errors"], sources.rows));
  $("health-frontiers").replaceChildren(table(["collection", "frontier", "lag_ms"], frontiers.rows));
}

// ---- Refreshing ---------------------------------------------------------------------------

const refreshers = {
  overview: refreshOverview,
  jobs: refreshJobs,
  sql: async () => {},
  relations: refreshRelations,
  errors: refreshErrors,
  "health-panel": refreshHealthPanel,
};

function report(err) {
  if (err.status !== 401) notice(`${err.message}`);
}

async function refresh(panel) {
  try {
    await refreshers[panel]();
    if ($("login").hidden) notice(null);
  } catch (err) {
    report(err);
  }
}

function refreshAll() {
  refreshHealth();
  const open = tabs.find((t) => t.getAttribute("aria-selected") === "true");
  refresh(open.getAttribute("aria-controls"));
}

// Periodic refresh of what is shown (not of the SQL result, nor of a live view, which pushes).
setInterval(() => {
  refreshHealth();
  if (!$("login").hidden) return; // waiting for a token: asking again would only be refused
  const panel = tabs.find((t) => t.getAttribute("aria-selected") === "true").getAttribute("aria-controls");
  if (panel === "overview" || panel === "jobs" || panel === "health-panel") refresh(panel);
}, 5000);

$("forget-token").hidden = !token;
const initial = tabs.find((t) => t.getAttribute("aria-controls") === location.hash.slice(1)) ?? tabs[0];
select(initial);
refreshHealth();

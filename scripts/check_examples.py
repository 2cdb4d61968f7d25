#!/usr/bin/env python3
"""Runs the example jobs on the real data in ../shared/data and checks every answer against
numbers computed here, independently, straight from the raw files (plain Python, no engine code).

usage: check_examples.py AIMATRIX_BINARY [--serve]
With --serve, each example is submitted to a running server instead (`aimatrix serve`, then
`aimatrix job submit`), and its queries are answered over HTTP (POST /v1/sql) once every source
has been read and caught up with.
Exits 0 when every check passes; prints a plain "N passed, N failed" line at the end.
Skips (and says so) when ../shared/data is missing.
"""
import json
import os
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
passed = failed = 0


def check(name, got, want):
    global passed, failed
    if got == want:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}\n  got:  {got}\n  want: {want}")


SERVE = False


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http(method, url, body=None):
    import urllib.request
    import urllib.error
    req = urllib.request.Request(url, data=body.encode() if body else None, method=method,
                                 headers={"Content-Type": "application/json"} if body else {})
    def parse(body):
        try:
            return json.loads(body)
        except ValueError:
            return body.decode(errors="replace")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, parse(r.read())
    except urllib.error.HTTPError as e:
        return e.code, parse(e.read())


def served(binary, job):
    """The job's answers from a fresh server: submitted with `aimatrix job submit`, queried
    over HTTP once its sources are caught up with."""
    import time
    import tomllib
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # The examples read ../shared/data: the one directory this server lets jobs read.
    server = subprocess.Popen([binary, "serve", "--http", f"127.0.0.1:{port}", "--pgwire", "", "--workers", "2",
                               "--file-root", DATA],
                              stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                if http("GET", base + "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("the server did not become ready")
            time.sleep(0.2)
        path = os.path.join(ROOT, "examples", job)
        out = subprocess.run([binary, "job", "submit", path, "--server", base], check=True, capture_output=True, text=True)
        job_id = int(out.stdout.strip())
        while True:
            status, info = http("GET", f"{base}/v1/jobs/{job_id}")
            if status == 200 and all(s["progress"]["caught_up"] for s in info["source_stats"]):
                break
            if time.time() > deadline + 120:
                raise RuntimeError(f"job {job} did not catch up: {info}")
            time.sleep(0.2)
        answers = []
        with open(path, "rb") as f:
            queries = tomllib.load(f).get("queries", [])
        for q in queries:
            status, body = http("POST", base + "/v1/sql", json.dumps({"sql": q["sql"]}))
            if status != 200:
                raise RuntimeError(f"{q['sql']}: {status} {body}")
            answers.append(body["rows"])
        return answers
    finally:
        server.terminate()
        server.wait(10)


def run(binary, job):
    if SERVE:
        return served(binary, job)
    out = subprocess.run(
        [binary, "run", os.path.join(ROOT, "examples", job), "--output", "json", "--quiet"],
        check=True, capture_output=True, text=True,
    )
    sys.stderr.write(out.stderr)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def us(ts):
    """RFC 3339 text -> epoch microseconds (exact)."""
    if ts is None:
        return None
    ts = ts.replace("Z", "+00:00")
    main, _, rest = ts.partition(".")
    frac, tz = "", ""
    if rest:
        digits = ""
        for i, ch in enumerate(rest):
            if ch.isdigit():
                digits += ch
            else:
                tz = rest[i:]
                break
        frac = digits
    else:
        if "+" in main[10:]:
            main, tz = main[:main.rindex("+")], main[main.rindex("+"):]
    dt = datetime.fromisoformat(main + (tz or "+00:00"))
    return int(dt.timestamp()) * 1_000_000 + int((frac + "000000")[:6] or 0)


def tau(binary):
    runs = json.load(open(os.path.join(DATA, "agent", "tau_bench_gpt-4o-airline_tasks0-5.json")))
    tools = defaultdict(lambda: [0, 0, set()])
    traces = {}
    for r in runs:
        trace = f"{r['task_id']}/{r['trial']}"
        chats = calls = errors = 0
        pending = defaultdict(list)  # tool_call_id -> unanswered calls (latest last)
        for m in r["traj"]:
            if m["role"] == "assistant":
                chats += 1
                for tc in m.get("tool_calls") or []:
                    name = tc["function"]["name"]
                    call = {"name": name, "error": False}
                    pending[tc["id"]].append(call)
                    tools[name][0] += 1
                    tools[name][2].add(trace)
                    calls += 1
            elif m["role"] == "tool" and pending[m["tool_call_id"]]:
                call = pending[m["tool_call_id"]].pop()
                if str(m.get("content") or "").strip().lower().startswith("error"):
                    tools[call["name"]][1] += 1
                    errors += 1
        traces[trace] = (chats + calls, chats, calls, errors, float(r["reward"]))
    answers = run(binary, "tau-bench.toml")
    check("tau: tool_usage", [(a["tool_name"], a["calls"], a["errors"], a["traces"]) for a in answers[0]],
          sorted((t, c, e, len(tr)) for t, (c, e, tr) in tools.items()))
    t = answers[1][0]
    check("tau: totals",
          (t["traces"], t["spans"], t["llm_calls"], t["tool_calls"], t["tool_errors"], t["reward_sum"]),
          (len(traces), sum(v[0] for v in traces.values()), sum(v[1] for v in traces.values()),
           sum(v[2] for v in traces.values()), sum(v[3] for v in traces.values()),
           sum(v[4] for v in traces.values())))
    check("tau: per trace",
          [(a["trace_id"], a["spans"], a["llm_calls"], a["tool_calls"], a["tool_errors"], a["eval_score"])
           for a in answers[2]],
          sorted((k,) + v for k, v in traces.items()))
    check("tau: ingest errors", answers[4], [{"errors": 0}])


TEMPORAL_STATES = {
    "COMPLETED": "COMPLETED", "FAILED": "FAILED", "TIMED_OUT": "TIMED_OUT", "CANCELED": "CANCELLED",
    "TERMINATED": "TERMINATED", "STARTED": "RUNNING", "SCHEDULED": "SCHEDULED", "INITIATED": "SCHEDULED",
}


def snake(event_type):
    """EVENT_TYPE_ACTIVITY_TASK_STARTED or ActivityTaskStarted -> ACTIVITY_TASK_STARTED."""
    if event_type.startswith("EVENT_TYPE_"):
        return event_type[len("EVENT_TYPE_"):]
    out = ""
    for i, ch in enumerate(event_type):
        if ch.isupper() and i:
            out += "_"
        out += ch.upper()
    return out


def temporal(binary):
    folder = os.path.join(DATA, "workflow", "temporal")
    runs, steps = [], []
    for name in sorted(os.listdir(folder)):
        events = json.load(open(os.path.join(folder, name)))["events"]
        first = events[0]["workflowExecutionStartedEventAttributes"]
        run_id, wf = first["originalExecutionRunId"], first["workflowType"]["name"]
        run_states, step = [], {}
        for e in events:
            kind, seq, time = snake(e["eventType"]), int(e["eventId"]), us(e["eventTime"])
            attrs = next((v for k, v in e.items() if k.endswith("Attributes")), {})
            if kind.startswith("WORKFLOW_EXECUTION_") and kind != "WORKFLOW_EXECUTION_SIGNALED":
                word = kind[len("WORKFLOW_EXECUTION_"):]
                state = "COMPLETED" if word == "CONTINUED_AS_NEW" else TEMPORAL_STATES.get(word)
                if state:
                    run_states.append((seq, time, state))
            elif kind == "ACTIVITY_TASK_SCHEDULED":
                step[seq] = {"name": attrs["activityType"]["name"], "type": "activity", "ev": [(seq, time, "SCHEDULED", None)]}
            elif kind == "START_CHILD_WORKFLOW_EXECUTION_INITIATED":
                step[seq] = {"name": attrs["workflowType"]["name"], "type": "child_workflow", "ev": [(seq, time, "SCHEDULED", None)]}
            elif kind.startswith("ACTIVITY_TASK_") or kind.startswith("CHILD_WORKFLOW_EXECUTION_"):
                word = kind.split("_TASK_")[-1] if kind.startswith("ACTIVITY") else kind[len("CHILD_WORKFLOW_EXECUTION_"):]
                if word in TEMPORAL_STATES:
                    ref = int(attrs.get("scheduledEventId") or attrs.get("initiatedEventId"))
                    attempt = int(attrs["attempt"]) if "attempt" in attrs else None
                    step[ref]["ev"].append((seq, time, TEMPORAL_STATES[word], attempt))
        all_times = [t for (_, t, _) in run_states] + [t for s in step.values() for (_, t, _, _) in s["ev"]]
        last = max(run_states)
        step_states = []
        for sid, s in sorted(step.items()):
            latest = max(s["ev"], key=lambda x: (x[0], x[1]))
            attempts = max([a for (_, _, _, a) in s["ev"] if a is not None] or [1])
            started = min([t for (_, t, st, _) in s["ev"] if st == "RUNNING"] or [None], key=lambda x: x or 0)
            terminal = latest[2] not in ("SCHEDULED", "RUNNING")
            steps.append((run_id, str(sid), s["name"], s["type"], latest[2], attempts, started,
                          latest[1] if terminal else None))
            step_states.append((latest[2], attempts))
        runs.append((run_id, wf, last[2], min(all_times), last[1], len(step), sum(1 for s in step_states if s[0] == "COMPLETED"),
                     sum(1 for s in step_states if s[0] in ("FAILED", "TIMED_OUT")), sum(a - 1 for _, a in step_states)))
    answers = run(binary, "temporal.toml")
    check("temporal: workflow_runs",
          [(a["run_id"], a["workflow_name"], a["status"], us(a["started_at"]), us(a["ended_at"]), a["steps"],
            a["steps_completed"], a["steps_failed"], a["retries"]) for a in answers[0]],
          sorted(runs))
    check("temporal: workflow_steps",
          [(a["run_id"], a["step_id"], a["step_name"], a["step_type"], a["state"], a["attempts"],
            us(a["started_at"]), us(a["ended_at"])) for a in answers[1]],
          sorted(steps, key=lambda s: (s[0], int(s[1]))))
    check("temporal: ingest errors", answers[2], [{"errors": 0}])


GITHUB_DONE = {"success": "COMPLETED", "neutral": "COMPLETED", "skipped": "COMPLETED", "failure": "FAILED",
               "startup_failure": "FAILED", "action_required": "FAILED", "cancelled": "CANCELLED",
               "stale": "CANCELLED", "timed_out": "TIMED_OUT"}
# The engine's order of states (SCHEDULED < RUNNING < terminal states, as declared).
STATE_RANK = {s: i for i, s in enumerate(
    ["SCHEDULED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT", "TERMINATED"])}


def opt(v):
    """A sort key for a value that may be NULL (NULL first, as the engine orders it)."""
    return (0,) if v is None else (1, v)


def github(binary):
    """workflow_runs and workflow_steps from the GitHub Actions payloads, by the mapping the
    README documents for format `github-actions`, and the views' documented definitions."""
    folder = os.path.join(DATA, "workflow", "github_actions")
    events = []  # (run_id, step_id, step_name, step_type, workflow_name, state, attempt, time, seq)

    def transitions(run_id, step, wf, entity, attempt, created, started, ended):
        status = entity["status"]
        base = 4 * (attempt or 1)
        sid, name, kind = step if step else (None, None, None)
        waiting = status in ("requested", "queued", "waiting", "pending")
        out = []
        if waiting or entity.get(created or "") is not None:
            out.append(("SCHEDULED", us(entity.get(created)) if created else None, base))
        if not waiting and (entity.get(started or "") is not None or status == "in_progress"):
            out.append(("RUNNING", us(entity.get(started)) if started else None, base + 1))
        if status == "completed":
            out.append((GITHUB_DONE[entity["conclusion"]], us(entity.get(ended)), base + 2))
        for state, time, seq in out:
            events.append((run_id, sid, name, kind, wf, state, attempt, time, seq))

    for name in sorted(os.listdir(folder)):
        payload = json.load(open(os.path.join(folder, name)))
        if "workflow_job" in payload:
            job = payload["workflow_job"]
            run_id, attempt, wf = str(job["run_id"]), job.get("run_attempt"), job.get("workflow_name") or None
            transitions(run_id, (str(job["id"]), job["name"], "job"), wf, job, attempt, "created_at", "started_at",
                        "completed_at")
            for st in job.get("steps") or []:
                transitions(run_id, (f"{job['id']}/{st['number']}", st["name"], "step"), wf, st, attempt, None,
                            "started_at", "completed_at")
        elif "workflow_run" in payload:
            r = payload["workflow_run"]
            wf = r.get("name") or payload.get("workflow", {}).get("name") or None
            transitions(str(r["id"]), None, wf, r, r.get("run_attempt"), "created_at", "run_started_at", "updated_at")

    def order(e):
        return (e[8], opt(e[7]), STATE_RANK[e[5]])

    steps, summaries = {}, defaultdict(list)
    by_step = defaultdict(list)
    for e in events:
        if e[1] is not None:
            by_step[(e[0], e[1])].append(e)
    for (run_id, sid), es in sorted(by_step.items()):
        # Event order, ties broken as the engine sorts its items: attempt, then the names.
        es.sort(key=lambda e: (order(e), opt(e[6]), opt(e[2]), opt(e[3]), opt(e[4])))
        latest = es[-1]
        first_name = lambda i: next((e[i] for e in es if e[i] is not None), None)
        running = [e[7] for e in es if e[5] == "RUNNING" and e[7] is not None]
        terminal = latest[5] not in ("SCHEDULED", "RUNNING")
        row = (run_id, sid, first_name(2), first_name(3), latest[5], max([e[6] for e in es if e[6]] or [1]),
               min(running) if running else None, latest[7] if terminal else None)
        steps[(run_id, sid)] = row
        times = [e[7] for e in es if e[7] is not None]
        summaries[run_id].append((row, min(times) if times else None, first_name(4)))
    runs = []
    for run_id in sorted({e[0] for e in events}):
        run_events = sorted((e for e in events if e[0] == run_id and e[1] is None),
                            key=lambda e: (order(e), opt(e[4])))
        summ = sorted(summaries[run_id], key=lambda s: s[0][1])
        wf = next((e[4] for e in run_events if e[4] is not None), None)
        wf = wf or next((s[2] for s in summ if s[2] is not None), None)
        times = [e[7] for e in run_events if e[7] is not None] + [s[1] for s in summ if s[1] is not None]
        latest = run_events[-1] if run_events else None
        status = latest[5] if latest else None
        ended = latest[7] if latest and status not in ("SCHEDULED", "RUNNING") else None
        runs.append((run_id, wf, status, min(times) if times else None, ended, len(summ),
                     sum(1 for s in summ if s[0][4] == "COMPLETED"),
                     sum(1 for s in summ if s[0][4] in ("FAILED", "TIMED_OUT")),
                     sum(max(s[0][5] - 1, 0) for s in summ)))
    answers = run(binary, "github-actions.toml")
    check("github actions: workflow_runs",
          [(a["run_id"], a["workflow_name"], a["status"], us(a["started_at"]), us(a["ended_at"]), a["steps"],
            a["steps_completed"], a["steps_failed"], a["retries"]) for a in answers[0]],
          runs)
    check("github actions: workflow_steps",
          [(a["run_id"], a["step_id"], a["step_name"], a["step_type"], a["state"], a["attempts"],
            us(a["started_at"]), us(a["ended_at"])) for a in answers[1]],
          [steps[k] for k in sorted(steps)])
    check("github actions: ingest errors", answers[2], [{"errors": 0}])


def wikipedia(binary):
    path = os.path.join(DATA, "knowledge", "wikimedia_recentchange_enwiki_2023-07-29_part1.ndjson")
    events = [json.loads(line) for line in open(path) if line.strip()]
    by_doc = defaultdict(list)
    for e in events:
        by_doc[e["title"]].append(e)
    docs = {}
    for title, es in by_doc.items():
        key = lambda e: (e["timestamp"], (e.get("revision") or {}).get("new") or -1)
        w = max(es, key=key)
        if w.get("log_action") == "delete":
            continue
        docs[title] = ((w.get("revision") or {}).get("new"), (w.get("length") or {}).get("new"),
                       w["timestamp"] * 1_000_000, len(es))
    domains = {e["meta"]["domain"] for e in events}
    answers = run(binary, "wikipedia.toml")
    check("wikipedia: collection_stats",
          [(a["collection"], a["documents"], a["edits"], a["bot_edits"], a["size_bytes"]) for a in answers[0]],
          [(sorted(domains)[0], len(docs), len(events), sum(1 for e in events if e["bot"]),
            sum(d[1] for d in docs.values() if d[1] is not None))])
    check("wikipedia: documents",
          [(a["document_id"], a["version"], a["size_bytes"], us(a["updated_at"]), a["edits"]) for a in answers[1]],
          sorted((t,) + d for t, d in docs.items()))
    most = sorted(((t, d[3]) for t, d in docs.items() if d[3] > 1), key=lambda x: (-x[1], x[0]))[:5]
    check("wikipedia: most edited", [(a["document_id"], a["edits"]) for a in answers[2]], most)


def cassettes(binary):
    """examples/openai-cassettes.toml: each exchange of the YAML cassettes (read with PyYAML)
    as README documents format `llm-http`, priced with dataflows/data/model_prices.csv."""
    import csv
    import email.utils
    import glob
    import yaml
    folder = os.path.join(DATA, "agent", "openai_cassettes")
    rows, usage = [], defaultdict(lambda: [0, 0, None, None, None])
    prices = [r for r in csv.reader(l for l in open(os.path.join(ROOT, "dataflows", "data", "model_prices.csv"))
                                    if not l.startswith("#"))][1:]

    def price(model):
        # The longest matching pattern (exact beats a prefix pattern); every row here is valid from 1970.
        best = None
        for provider, pattern, _, inp, cached, out, reasoning in prices:
            exact = pattern == model
            if exact or (pattern.endswith("*") and model.startswith(pattern[:-1])):
                rank = (exact, len(pattern))
                if best is None or rank > best[0]:
                    best = (rank, float(inp), float(cached or inp), float(out), float(reasoning or out))
        return best[1:] if best else None

    def add(a, b):
        return b if a is None else a + b

    for f in sorted(glob.glob(os.path.join(folder, "*.yaml"))):
        for k, it in enumerate(yaml.safe_load(open(f))["interactions"]):
            req = json.loads(it["request"]["body"])
            resp = it["response"]
            code, body = resp["status"]["code"], resp["body"]["string"]
            date = [v[0] for h, v in resp["headers"].items() if h.lower() == "date"][0]
            date = int(email.utils.parsedate_to_datetime(date).timestamp()) * 1_000_000
            model = created = completed = u = err = None
            calls, complete = {}, True
            if code >= 400:
                e = json.loads(body)["error"]
                err = e.get("code") or e.get("type")
            elif body.startswith("data:"):
                complete = False
                for line in body.splitlines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        complete = True
                        continue
                    c = json.loads(line[6:])
                    model, created, u = c["model"], c["created"] * 1_000_000, c.get("usage") or u
                    for ch in c["choices"]:
                        for tc in ch["delta"].get("tool_calls") or []:
                            calls.setdefault(tc["index"], tc.get("id"))
            else:
                j = json.loads(body)
                model, u = j["model"], j["usage"]
                created = (j.get("created") or j.get("created_at")) * 1_000_000
                completed = j["completed_at"] * 1_000_000 if j.get("completed_at") else None
            start = created or date
            end = completed or (date if date >= start else None)
            tokens = [None] * 4
            if u:
                if "prompt_tokens" in u:
                    tokens = [u["prompt_tokens"], u["completion_tokens"], u["prompt_tokens_details"]["cached_tokens"],
                              u["completion_tokens_details"]["reasoning_tokens"]]
                else:
                    tokens = [u["input_tokens"], u["output_tokens"], u["input_tokens_details"]["cached_tokens"],
                              u["output_tokens_details"]["reasoning_tokens"]]
            status = "error" if err or not complete else "ok"
            rows.append([f"x{k}", "chat " + req["model"], "openai", req["model"], model] + tokens +
                        [status, err, start, end, None])
            for j, call_id in sorted(calls.items()):
                rows.append([f"x{k}.t{j}", "execute_tool get_current_weather", None, None, None, None, None, None,
                             None, "unset", None, end, None, call_id])
            acc = usage[req["model"]]
            acc[0] += 1
            acc[1] += status == "error"
            if u:
                acc[2], acc[3] = add(acc[2], tokens[0]), add(acc[3], tokens[1])
                p = price(model or req["model"])
                if p:
                    inp, out, cached, reasoning = tokens
                    cost = ((inp - cached) * p[0] + cached * p[1] + (out - reasoning) * p[2] + reasoning * p[3]) / 1e6
                    acc[4] = add(acc[4], cost)
    answers = run(binary, "openai-cassettes.toml")
    check("openai cassettes: spans",
          [[a["span_id"], a["name"], a["provider"], a["request_model"], a["response_model"], a["input_tokens"],
            a["output_tokens"], a["cache_read_input_tokens"], a["reasoning_output_tokens"], a["status"],
            a["error_type"], us(a["start_time"]), us(a["end_time"]), a["tool_call_id"]] for a in answers[0]],
          sorted(rows, key=lambda r: (r[11], r[0])))
    check("openai cassettes: model_usage",
          [(a["provider"], a["request_model"], a["calls"], a["error_calls"], a["input_tokens"], a["output_tokens"],
            None if a["cost_usd"] is None else round(a["cost_usd"], 12)) for a in answers[1]],
          [("openai", m, c, e, i, o, None if cost is None else round(cost, 12))
           for m, (c, e, i, o, cost) in sorted(usage.items())])
    check("openai cassettes: ingest errors", answers[2], [{"errors": 0}])


def main():
    global SERVE
    if len(sys.argv) == 3 and sys.argv[2] == "--serve":
        SERVE = True
    elif len(sys.argv) != 2:
        sys.exit(__doc__)
    if not os.path.isdir(DATA):
        print(f"skipped: {DATA} does not exist (the real-data checks need ../shared/data)")
        print("0 passed, 0 failed, 5 skipped")
        return
    binary = sys.argv[1]
    for example in (tau, temporal, github, wikipedia, cassettes):
        example(binary)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

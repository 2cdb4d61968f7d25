#!/usr/bin/env python3
"""Property-based test of the HTTP API against its own OpenAPI document, with Schemathesis.

usage: openapi_check.py AIMATRIX_BINARY SCHEMATHESIS [MAX_EXAMPLES]

Starts `aimatrix serve` on a free loopback port, installs a job with a push source `events`
(job 1) and a view, pushes a few records, a second job to cancel (job 2), then runs
Schemathesis over every operation of GET /v1/openapi.json: generated requests (valid ones, from
the document's examples and schemas, and invalid ones), each answer checked for
  - no 5xx (not_a_server_error),
  - a status the document lists for that operation (status_code_conformance),
  - a content type it lists (content_type_conformance),
  - a body valid against the schema it gives (response_schema_conformance).
Bounded: MAX_EXAMPLES (default 25) per operation and phase, a fixed seed (so CI is
reproducible; pass SEED=… in the environment to explore others), and a 600 s limit.
Exits non-zero on any failure, printing Schemathesis's report.
"""
import os
import socket
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))

JOB = """name = "openapi"
[[sources]]
name = "events"
kind = "push"
format = "json"
[sources.options]
relation = "knowledge_events"
[sources.options.mapping]
collection = "/c"
document_id = "/id"
op = { pointer = "/op", default = "upsert" }
version = "/v"
size_bytes = "/size"
event_time = { pointer = "/t", unit = "s" }
[views]
sizes = "SELECT collection, count(*) AS n, sum(size_bytes) AS bytes FROM knowledge_events GROUP BY collection"
"""


def post(url, body, content_type):
    request = urllib.request.Request(url, data=body.encode(), method="POST", headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return answer.status


def main():
    binary, schemathesis = sys.argv[1], sys.argv[2]
    max_examples = sys.argv[3] if len(sys.argv) > 3 else "25"
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([binary, "serve", "--http", f"127.0.0.1:{port}", "--pgwire", "", "--workers", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit("openapi: the server did not become ready")
            time.sleep(0.2)
        assert post(base + "/v1/jobs", JOB, "application/toml") == 201
        lines = "\n".join(f'{{"c": "docs-{i % 3}", "id": "d{i}", "v": 1, "size": {i}, "t": 1700000000}}'
                          for i in range(20))
        assert post(base + "/v1/ingest/1/events", lines, "application/x-ndjson") == 200
        assert post(base + "/v1/jobs", JOB.replace('"events"', '"spare"').replace("sizes =", "spare_sizes ="),
                    "application/toml") == 201
        env = dict(os.environ, SCHEMATHESIS_HOOKS="openapi_hooks", PYTHONPATH=HERE)
        command = [schemathesis, "run", base + "/v1/openapi.json",
                   "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                               "response_schema_conformance",
                   "--max-examples", max_examples, "--workers", "1", "--request-timeout", "30",
                   "--seed", os.environ.get("SEED", "20261204"), "--no-color"]
        result = subprocess.run(command, env=env, cwd=HERE, timeout=600)
        if server.poll() is not None:
            print("openapi: the server exited during the run")
            return 1
        print("openapi: every answer conforms to /v1/openapi.json" if result.returncode == 0
              else "openapi: answers that do not conform (above)")
        return result.returncode
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


sys.exit(main())

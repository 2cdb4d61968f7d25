#!/usr/bin/env python3
"""Restart memory of a durable `aimatrix serve`, each phase in a process of its own.

usage: benches/restart_memory.py BINARY [--events N] [--per M] [--workers W] [--rounds R]

For each mode — the log replayed whole (`storage.compact_after_bytes = 0`), and the log
compacted into a snapshot first — a fresh server with `--data-dir` gets the job of
`amx-durable-bench` (a push source `events` and the view `by_id`) and N knowledge events with
distinct ids, in pushes of M with an `Idempotency-Key` each. Reported: the live process's
resident memory once the view holds them all, and its peak while ingesting (Linux `VmRSS` and
`VmHWM` of the server's process); then `kill -9`, a restart on the same directory, the time
until `by_id` holds N rows again (restart to serving), and the restarted process's resident
and peak memory. Each phase runs in a process of its own, so no memory of an earlier phase is
counted (the in-process `amx-durable-bench` runs every phase in one process). The figures
print as a table; repeat with `--rounds` and compare modes within one run.
"""
import argparse, json, os, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request

# The job of amx-durable-bench and amx-serve-bench (benches/src/lib.rs reads the same file).
JOB = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "knowledge_job.toml")).read()


def http(method, url, body=None, ctype="application/json", key=None, timeout=120):
    headers = {"Content-Type": ctype} if body is not None else {}
    if key:
        headers["Idempotency-Key"] = key
    data = body.encode() if isinstance(body, str) else body
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method, headers=headers),
                                timeout=timeout) as r:
        return r.status, r.read().decode()


def memory_mib(pid):
    """(VmRSS, VmHWM) of process `pid`, in MiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


class Server:
    def __init__(self, binary, data, workers, compact_after):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        env = dict(os.environ, AIMATRIX__HTTP__LISTEN=f"127.0.0.1:{self.port}",
                   AIMATRIX__STORAGE__COMPACT_AFTER_BYTES=str(compact_after),
                   AIMATRIX__CLUSTER__WORKERS=str(workers),
                   AIMATRIX__PGWIRE__LISTEN="")
        self.base = f"http://127.0.0.1:{self.port}"
        self.started = time.time()
        self.proc = subprocess.Popen([binary, "serve", "--data-dir", data], env=env,
                                     stdout=open(data + ".log", "a"), stderr=subprocess.STDOUT)
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"the server exited ({self.proc.returncode}); see {data}.log")
            try:
                if http("GET", self.base + "/healthz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)

    def count(self):
        _, body = http("POST", self.base + "/v1/sql", json.dumps({"sql": "SELECT count(*) AS n FROM by_id"}))
        return json.loads(body)["rows"][0]["n"]

    def wait_for(self, n):
        while True:
            try:
                if self.count() >= n:
                    return
            except Exception:
                pass  # the view is not there yet while the log is replayed
            time.sleep(0.05)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def run(binary, events, per, workers, compact):
    tmp = tempfile.mkdtemp(prefix="amx-restart-")
    data = os.path.join(tmp, "data")
    # Compaction: as soon as the log holds an eighth of what the pushes write (70 bytes an event).
    compact_after = max(events * 70 // 8, 1 << 20) if compact else 0
    try:
        server = Server(binary, data, workers, compact_after)
        _, body = http("POST", server.base + "/v1/jobs", JOB, "application/toml")
        job = json.loads(body)["id"]
        for push in range(events // per):
            lines = "\n".join(
                '{"c":"c%d","id":"d%d","v":1,"size":%d,"t":%d}' % (n % 16, n, n % 5000, 1700000000 + n % 100000)
                for n in range(push * per, (push + 1) * per))
            http("POST", f"{server.base}/v1/ingest/{job}/events", lines, "application/x-ndjson", key=f"push-{push}")
        server.wait_for(events)
        if compact:
            # Until the log past the snapshot is small (the last compaction took nearly all of it).
            log = os.path.join(data, "log")
            deadline = time.time() + 120
            while os.path.getsize(log) > compact_after // 4 and time.time() < deadline:
                time.sleep(0.25)
            time.sleep(1)
        live_rss, live_peak = memory_mib(server.proc.pid)
        log_bytes = os.path.getsize(os.path.join(data, "log"))
        snapshots = os.path.join(data, "snapshots")
        snapshot_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(snapshots) for f in fs) \
            if os.path.isdir(snapshots) else 0
        server.kill()
        started = time.time()
        server = Server(binary, data, workers, compact_after)
        peak_sampled = 0.0
        while True:
            peak_sampled = max(peak_sampled, memory_mib(server.proc.pid)[0])
            try:
                if server.count() >= events:
                    break
            except Exception:
                pass
            time.sleep(0.05)
        to_serving = time.time() - started
        rss, peak = memory_mib(server.proc.pid)
        server.kill()
        return dict(live_rss=live_rss, live_peak=live_peak, log_mb=log_bytes / 1e6, snapshot_mb=snapshot_bytes / 1e6,
                    restart_s=to_serving, restart_rss=rss, restart_peak=peak)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("binary")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--per", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--modes", default="log,snapshot")
    args = parser.parse_args()
    print(f"{args.events} events in pushes of {args.per}, {args.workers} workers")
    print("| restart from | live RSS / peak (MiB) | log / snapshot (MB) | restart to serving | restarted RSS / peak (MiB) |")
    print("|---|---|---|---|---|")
    for _ in range(args.rounds):
        for mode in args.modes.split(","):
            r = run(os.path.abspath(args.binary), args.events, args.per, args.workers, mode == "snapshot")
            print(f"| {mode} | {r['live_rss']:.0f} / {r['live_peak']:.0f} | {r['log_mb']:.1f} / {r['snapshot_mb']:.1f} "
                  f"| {r['restart_s']:.2f} s | {r['restart_rss']:.0f} / {r['restart_peak']:.0f} |", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Drives the web console (`/console`) in a real headless browser (Debian's chromium through
chromedriver, with Selenium) against a running `aimatrix serve`, as a person would use it:
submits a job (a bad one first), pushes records over HTTP, runs queries (a failing one too),
watches a view change live, drops a watched view, browses ingest errors, cancels the job; checks
accessibility with axe-core on every panel and that the browser logged no errors beyond the
refusals the test provoked. Screenshots of each step go to SCREENSHOT_DIR.

usage: console_browser.py BASE_URL SCREENSHOT_DIR [READER_TOKEN]
With READER_TOKEN, the server has users instead: the page asks for a token, refuses a wrong
one, and with a reader's shows the data, subscribes (the token as `access_token`) and shows
the refusal of a job submission (admin only).
Exits 0 when every check passes; prints "N passed, N failed".
"""
import json
import os
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

BASE, SHOTS = sys.argv[1], sys.argv[2]
READER = sys.argv[3] if len(sys.argv) > 3 else None
os.makedirs(SHOTS, exist_ok=True)
passed = failed = 0

JOB = """name = "console-test"
[[sources]]
name = "docs"
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
"""


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {detail}")


def push(job, lines):
    body = "\n".join(json.dumps(l) for l in lines).encode()
    req = urllib.request.Request(f"{BASE}/v1/ingest/{job}/docs", data=body, method="POST",
                                 headers={"Content-Type": "application/x-ndjson"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def wait(what, predicate, timeout=20):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as e:  # the page is redrawing: try again
            last = e
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


options = webdriver.ChromeOptions()
options.binary_location = os.environ.get("AIMATRIX_CHROMIUM", "/usr/bin/chromium")
for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
            "--disable-gpu", "--no-first-run"):
    options.add_argument(arg)
options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(service=Service(os.environ.get("AIMATRIX_CHROMEDRIVER", "/usr/bin/chromedriver")),
                          options=options)
step = 0


def shot(name):
    global step
    step += 1
    driver.save_screenshot(os.path.join(SHOTS, f"{step:02d}-{name}.png"))


def tab(name):
    driver.find_element(By.ID, f"tab-{name}").click()
    wait(f"panel {name}", lambda: driver.find_element(By.ID, name).is_displayed())


def table_rows(container):
    rows = container.find_elements(By.CSS_SELECTOR, "tbody tr")
    return [[td.text for td in r.find_elements(By.TAG_NAME, "td")] for r in rows]


def axe(panel):
    import axe_selenium_python
    a = axe_selenium_python.Axe(driver)
    a.inject()
    results = a.run()
    violations = [(v["id"], v["impact"], len(v["nodes"])) for v in results["violations"]]
    check(f"axe-core finds no accessibility violation on {panel}", not violations, violations)


def run_sql(statement):
    box = driver.find_element(By.ID, "sql-text")
    box.clear()
    box.send_keys(statement)
    before = driver.find_element(By.ID, "sql-status").text
    driver.find_element(By.CSS_SELECTOR, "#sql-form button[type=submit]").click()
    return wait("the SQL answer",
                lambda: (t := driver.find_element(By.ID, "sql-status").text) != before and t != "running…" and t)


def with_users():
    """The page on a server with users, as a reader."""
    driver.get(f"{BASE}/console")
    wait("the token prompt", lambda: driver.find_element(By.ID, "login").is_displayed())
    notice = driver.find_element(By.ID, "notice").text
    check("a server with users: the page asks for a token", "bearer token" in notice, notice)
    driver.find_element(By.ID, "token").send_keys("amx_wrong")
    driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
    wait("the refusal", lambda: driver.find_element(By.ID, "login").is_displayed()
         and "not one this server knows" in driver.find_element(By.ID, "notice").text)
    check("a wrong token is refused, and asked again", True)
    shot("token-refused")
    box = driver.find_element(By.ID, "token")
    box.clear()
    box.send_keys(READER)
    driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
    wait("the overview", lambda: len(driver.find_elements(By.CSS_SELECTOR, "#overview-cards .card")) == 5)
    check("a reader's token shows the data", not driver.find_element(By.ID, "login").is_displayed())
    tab("jobs")
    driver.find_element(By.ID, "job-toml").send_keys(JOB)
    driver.find_element(By.CSS_SELECTOR, "#job-form button[type=submit]").click()
    refused = wait("the refusal", lambda: "refused" in (t := driver.find_element(By.ID, "job-result").text) and t)
    check("a reader may not submit a job: the page says why", "refused (403)" in refused and "admin" in refused, refused)
    tab("relations")
    wait("the catalog", lambda: driver.find_elements(By.XPATH, "//button[text()='agent_traces']"))
    driver.find_element(By.XPATH, "//button[text()='agent_traces']").click()
    driver.find_element(By.ID, "watch").click()
    status = wait("the subscription", lambda: "rows at timestamp" in (t := driver.find_element(By.ID, "live-status").text) and t)
    check("a reader subscribes with the token as access_token", status.startswith("0 rows at timestamp"), status)
    driver.refresh()
    wait("the panel after a reload", lambda: driver.find_element(By.ID, "relations").is_displayed())
    wait("the catalog after a reload", lambda: driver.find_elements(By.XPATH, "//button[text()='agent_traces']"))
    check("the token is kept for the tab: no prompt after a reload", not driver.find_element(By.ID, "login").is_displayed())
    shot("reader")
    log = driver.get_log("browser")
    severe = [e["message"] for e in log if e["level"] == "SEVERE"
              and not any(f"status of {c}" in e["message"] for c in (401, 403))
              and not ("/readyz" in e["message"] and "status of 503" in e["message"])]
    check("the browser logged no errors but the refusals", not severe, severe)


try:
    if READER:
        with_users()
        raise SystemExit
    driver.get(f"{BASE}/")
    wait("the console at /", lambda: "/console" in driver.current_url)
    wait("the health line", lambda: driver.find_element(By.ID, "health").text == "server ready")
    wait("the overview's cards", lambda: len(driver.find_elements(By.CSS_SELECTOR, "#overview-cards .card")) == 5)
    shot("overview")
    check("the overview shows five cards", True)
    axe("overview")

    # Keyboard: the arrow keys move between tabs (WAI-ARIA tabs pattern).
    driver.find_element(By.ID, "tab-overview").send_keys(Keys.ARROW_RIGHT)
    wait("the jobs panel by keyboard", lambda: driver.find_element(By.ID, "jobs").is_displayed())
    focused = driver.switch_to.active_element.get_attribute("id")
    check("ArrowRight on a tab opens the next panel, and focuses its tab", focused == "tab-jobs", focused)

    # A job that does not parse: the server's message, at its line.
    toml = driver.find_element(By.ID, "job-toml")
    toml.send_keys('name = "broken"\n[[sources]\nname = "x"\n')
    driver.find_element(By.CSS_SELECTOR, "#job-form button[type=submit]").click()
    refused = wait("the refusal", lambda: "refused" in (t := driver.find_element(By.ID, "job-result").text) and t)
    shot("job-refused")
    check("a job that does not parse is refused with the server's reason and line",
          "refused (400)" in refused and "line 2" in refused, refused)
    selected = driver.execute_script(
        "const a = document.getElementById('job-toml'); return a.value.slice(a.selectionStart, a.selectionEnd);")
    check("and that line is selected in the editor", selected == "[[sources]", selected)

    toml.clear()
    toml.send_keys(JOB)
    driver.find_element(By.CSS_SELECTOR, "#job-form button[type=submit]").click()
    done = wait("the job's id", lambda: (t := driver.find_element(By.ID, "job-result").text).startswith("job ") and t)
    job = int(done.split()[1])
    check("a job is submitted from the page", done == f"job {job} submitted", done)
    wait("the job in the list", lambda: any(r[1] == "console-test" and r[3] == "running"
                                            for r in table_rows(driver.find_element(By.ID, "job-list"))))
    shot("job-submitted")
    axe("jobs")

    push(job, [{"c": "a", "id": "d1", "v": 1, "size": 10, "t": 1},
               {"c": "a", "id": "d2", "v": 1, "size": 20, "t": 2},
               {"c": "b", "id": "d3", "v": 1, "size": 30, "t": 3}])

    tab("sql")
    status = run_sql("SELECT collection, count(*) AS n, sum(size_bytes) AS bytes FROM knowledge_events "
                     "GROUP BY collection ORDER BY collection")
    rows = table_rows(driver.find_element(By.ID, "sql-result"))
    check("a query's rows are shown in a table", rows == [["a", "2", "30"], ["b", "1", "30"]], (status, rows))
    headers = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#sql-result th")]
    check("with its columns", headers == ["collection", "n", "bytes"], headers)
    # Sorting by a column, descending on the second click.
    driver.find_element(By.CSS_SELECTOR, "#sql-result th button").click()
    driver.find_element(By.CSS_SELECTOR, "#sql-result th button").click()
    rows = table_rows(driver.find_element(By.ID, "sql-result"))
    check("a column header sorts the table", [r[0] for r in rows] == ["b", "a"], rows)
    run_sql("SELECT NULL AS nothing, 1 AS one")
    rows = table_rows(driver.find_element(By.ID, "sql-result"))
    check("NULL is shown as NULL", rows == [["NULL", "1"]], rows)
    run_sql("SELECT 100000.4 AS a, 9007199254740993 AS b, 0.0000001 AS c, 123456789.123 AS d")
    rows = table_rows(driver.find_element(By.ID, "sql-result"))
    check("numbers are shown exactly (doubles in their shortest form, integers past 2^53 whole)",
          rows == [["100000.4", "9007199254740993", "1e-7", "123456789.123"]], rows)
    status = run_sql("SELECT nope FROM knowledge_events")
    check("a failing query shows the server's error",
          status.startswith("error (400)") and "nope" in status, status)
    selected = driver.execute_script(
        "const a = document.getElementById('sql-text'); return a.value.slice(a.selectionStart, a.selectionEnd);")
    check("and the position it names is selected in the editor", selected == "nope", selected)
    shot("sql-error")
    status = run_sql("SELECT count(*) AS n FROM knowledge_events")
    check("the page recovers: the next query answers", table_rows(driver.find_element(By.ID, "sql-result")) == [["3"]],
          status)
    status = run_sql("CREATE MATERIALIZED VIEW console_sizes AS SELECT collection, sum(size_bytes) AS bytes "
                     "FROM knowledge_events GROUP BY collection")
    check("a materialized view is created from the editor", status == "created console_sizes", status)
    shot("sql")
    axe("sql")

    tab("relations")
    wait("the catalog", lambda: driver.find_elements(By.XPATH, "//ul[@id='relation-list']//button[text()='documents']"))
    driver.find_element(By.XPATH, "//ul[@id='relation-list']//button[text()='documents']").click()
    columns = wait("the columns", lambda: table_rows(driver.find_element(By.ID, "relation-detail")))
    check("a relation's columns and types are shown", ["collection", "Utf8"] in columns, columns)
    driver.find_element(By.ID, "watch").click()
    live = lambda: driver.find_element(By.ID, "live-table")
    wait("the snapshot", lambda: len(table_rows(live())) == 3)
    check("watching a view shows its rows", sorted(r[1] for r in table_rows(live())) == ["d1", "d2", "d3"])
    push(job, [{"c": "b", "id": "d4", "v": 1, "size": 40, "t": 4}])
    new = wait("the inserted row", lambda: live().find_elements(By.CSS_SELECTOR, "tbody tr.inserted"))
    check("an inserted row appears highlighted", [td.text for td in new[0].find_elements(By.TAG_NAME, "td")][1] == "d4")
    shot("live-insert")
    push(job, [{"c": "a", "id": "d1", "op": "delete", "v": 2, "t": 5}])
    gone = wait("the retracted row", lambda: live().find_elements(By.CSS_SELECTOR, "tbody tr.retracted"))
    check("a retracted row is struck out", [td.text for td in gone[0].find_elements(By.TAG_NAME, "td")][1] == "d1")
    shot("live-retract")
    wait("the retracted row to go", lambda: sorted(r[1] for r in table_rows(live())) == ["d2", "d3", "d4"])
    check("then it goes", True)
    status = driver.find_element(By.ID, "live-status").text
    check("the view's timestamp is shown", "rows at timestamp" in status, status)
    driver.find_element(By.ID, "watch").click()
    wait("stopped", lambda: driver.find_element(By.ID, "live-status").text == "stopped")
    driver.find_element(By.ID, "watch").click()
    wait("subscribed again", lambda: len(table_rows(live())) == 3 and "rows at" in driver.find_element(By.ID, "live-status").text)
    check("Stop, then Watch live again, subscribes again", driver.find_element(By.ID, "watch").text == "Stop")
    axe("relations")

    # A watched view dropped: the page says so, and the console goes on.
    driver.refresh()
    wait("the relations panel after a reload", lambda: driver.find_element(By.ID, "relations").is_displayed())
    wait("console_sizes", lambda: driver.find_elements(By.XPATH, "//button[text()='console_sizes']"))
    driver.find_element(By.XPATH, "//button[text()='console_sizes']").click()
    driver.find_element(By.ID, "watch").click()
    wait("its snapshot", lambda: len(table_rows(live())) == 2)
    body = json.dumps({"sql": "DROP MATERIALIZED VIEW console_sizes"}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{BASE}/v1/sql", data=body, method="POST",
                                                  headers={"Content-Type": "application/json"}), timeout=30).read()
    closed = wait("the closed subscription", lambda: "dropped" in (t := driver.find_element(By.ID, "live-status").text) and t)
    check("a dropped view's subscription says so", closed == "the view was dropped", closed)
    shot("live-dropped")

    # Bad input pushed: browsable in the errors panel.
    req = urllib.request.Request(f"{BASE}/v1/ingest/{job}/docs", data=b'{"c": "a", "id": \n', method="POST",
                                 headers={"Content-Type": "application/x-ndjson"})
    try:
        urllib.request.urlopen(req, timeout=30)
    except urllib.error.HTTPError:
        pass
    tab("errors")

    def ingest_errors():
        rows = table_rows(driver.find_element(By.ID, "errors-ingest"))
        if not rows:
            driver.find_element(By.ID, "tab-errors").click()  # the panel reads them when opened
            time.sleep(0.5)
        return rows

    errors = wait("the ingest error", ingest_errors)
    check("ingest errors are listed with their location and reason",
          errors and errors[0][0] == "docs" and errors[0][1] == f"POST /v1/ingest/{job}/docs:1"
          and errors[0][2].startswith("invalid JSON"), errors)
    shot("errors")
    axe("errors")

    tab("health")

    def health_cards():
        return {c.text.split("\n")[1]: c.text.split("\n")[0]
                for c in driver.find_elements(By.CSS_SELECTOR, "#health-cards .card")}

    # The sources' totals reach the page at its next refresh (every 5 s) once the workers report them.
    try:
        cards = wait("the health totals", lambda: (c := health_cards()).get("records read") == "6" and c, timeout=30)
    except AssertionError:
        cards = health_cards()
    # Pushed: 3 + 1 + 1 lines, and the bad one (a record read, an ingest error).
    check("health shows records read and ingest errors", (cards.get("records read"), cards.get("ingest errors")) == ("6", "1"),
          cards)
    check("health shows the resident memory", cards.get("resident memory", "–").endswith("iB"), cards)
    wait("the rates chart", lambda: driver.find_elements(By.CSS_SELECTOR, "#health-chart svg polyline"), timeout=30)
    check("health charts the rates over time", True)
    shot("health")
    axe("health")

    tab("jobs")
    wait("the cancel button", lambda: driver.find_elements(By.CSS_SELECTOR, f"button[aria-label='Cancel job {job}']"))
    driver.find_element(By.CSS_SELECTOR, f"button[aria-label='Cancel job {job}']").click()
    confirm = wait("the confirmation", lambda: driver.switch_to.alert)
    check("cancelling asks first", f"Cancel job {job}" in confirm.text, confirm.text)
    confirm.accept()
    cancelled = wait("the cancelled job", lambda: any(r[0] == str(job) and r[3] == "cancelled"
                                                      for r in table_rows(driver.find_element(By.ID, "job-list"))))
    check("a job is cancelled from the page", cancelled)
    shot("job-cancelled")

    # The browser's log: nothing but the refusals provoked above (the bad job, the failing query).
    log = driver.get_log("browser")
    # (A server still starting answers /readyz with 503, which the browser logs too.)
    severe = [e["message"] for e in log if e["level"] == "SEVERE"
              and "the server responded with a status of 400" not in e["message"]
              and not ("/readyz" in e["message"] and "status of 503" in e["message"])]
    check("the browser logged no errors", not severe, severe)

    # The server goes away (killed): the page says so rather than showing stale data as current.
    pid = os.environ.get("AIMATRIX_SERVER_PID")
    if pid:
        tab("overview")
        os.kill(int(pid), 9)
        gone = wait("the page to notice", lambda: driver.find_element(By.ID, "health").text == "server unreachable"
                    and driver.find_element(By.ID, "notice").text, timeout=30)
        check("a server that went away: the page says it is unreachable", "cannot be reached" in gone, gone)
        shot("server-gone")
except SystemExit:
    pass
except Exception as e:  # a step that could not even run
    failed += 1
    print(f"FAIL {type(e).__name__}: {e}")
    try:
        shot("failure")
    except Exception:
        pass
finally:
    driver.quit()

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)

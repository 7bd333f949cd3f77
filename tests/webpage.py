"""The explorer's page as the browser tests see it (tests/test_web.py, tests/test_web_inside.py):
`gptsql serve` started and Chromium driven, requests made as a program makes them, the page's
pieces as it shows them. Plain functions; each module makes its own fixtures of explorer() and
chromium()."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

PROMPT = "Happy New Year! I wish"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(backend) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPTSQL_")}
    env.update(backend[1])
    return env


def explorer(backend):
    """`gptsql serve` on a free port (a module's `server` fixture): yields its address as printed."""
    proc = subprocess.Popen([sys.executable, "-m", "gptsql", "serve", "--port", str(free_port())],
                            env=cli_env(backend), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("gptsql explorer at http://127.0.0.1:"):
        proc.kill()
        raise AssertionError(f"gptsql serve did not say where it listens: {line!r} {proc.stderr.read()}")
    yield line.split(" at ", 1)[1].split()[0]
    proc.terminate()
    proc.wait(timeout=30)


def chromium():
    """Headless Chromium through its driver (a module's `browser` fixture); skipped without it."""
    if not (CHROMIUM and DRIVER):
        pytest.skip("no chromium / chromedriver here: apt-get install -y chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="gq-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1000"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait(driver, condition, timeout=60):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # A panel redrawn between finding an element and reading it: look again.
    return WebDriverWait(driver, timeout, poll_frequency=0.05,
                         ignored_exceptions=[StaleElementReferenceException]).until(condition)


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def open_form(driver, server, model):
    """Open the page with `model` chosen: never the page's default (the newest model), which
    depends on what other tests loaded."""
    from selenium.webdriver.support.ui import Select

    driver.get(server)
    wait(driver, lambda d: css(d, "#prompt") and css(d, f"#model option[value='{model}']"))
    Select(css(driver, "#model")[0]).select_by_value(model)


def generate(driver, server, model, prompt=PROMPT, **fields):
    """Open the page, choose the model, type the prompt and the fields, press Generate; the run's id
    once done."""
    open_form(driver, server, model)
    for name, value in {"prompt": prompt, **fields}.items():
        box = css(driver, f"#{name}")[0]
        box.clear()
        box.send_keys(str(value))
    css(driver, "#go")[0].click()
    wait(driver, lambda d: "done" in css(d, "#gen-status")[0].text or css(d, "#error")[0].text)
    assert not css(driver, "#error")[0].text, css(driver, "#error")[0].text
    return int(css(driver, "#current-run a")[0].text.lstrip("#"))


def panel_sql(driver, scope="") -> str:
    return css(driver, f"{scope} pre.sql-text")[0].get_attribute("textContent").rstrip().rstrip(";")


# -------------------------------------------------------------------------------- the tests


def ask(server: str, path: str, method: str = "GET", headers: dict | None = None, body: bytes | None = None,
        timeout: float = 120):
    """A request as a program makes it (no browser headers but those given): (status, the JSON
    answer, or its text)."""
    import http.client
    import json
    from urllib.parse import urlsplit

    where = urlsplit(server)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read().decode()
    finally:
        conn.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, data


def generation_events(server: str, fields: dict, headers: dict | None = None) -> list[tuple[str, dict]]:
    """POST a generation as the page does: its server-sent events, (kind, data) each."""
    import json

    status, text = ask(server, "/api/generate", "POST", {"Content-Type": "application/json", **(headers or {})},
                       json.dumps(fields).encode())
    assert status == 200, text
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def visible(piece: str) -> str:
    """A piece as the page shows it (app.js's visible): spaces, newlines and tabs made visible."""
    return (piece or "").replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")


def psql_rows(run_cli, sql: str) -> list[list[str]]:
    """A panel's query pasted into `gptsql db psql`: its rows, fields split (record separator \\x1e,
    so values holding newlines stay whole)."""
    out = run_cli("db", "psql", "-X", "-A", "-t", "-F", "\x1f", "-R", "\x1e", "-c", sql).stdout
    return [record.split("\x1f") for record in out.rstrip("\n").split("\x1e") if record]

"""The explorer (`gptsql serve`, issue 15) in a real browser: Debian's chromium and chromium-driver
driven by selenium, against `gptsql serve` started as a user starts it, on random:tiny.

Skipped, with the reason, only when chromium or its driver is missing (.ci/run installs them).
"""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

from gptsql.server.db import wait_for
from webpage import (PROMPT, ask, cli_env, css, explorer, free_port, generate, generation_events, open_form,
                     panel_sql, psql_rows, visible, wait)

@pytest.fixture(scope="module")
def server(backend, tiny):
    """The explorer, `gptsql serve` on a free port: its address."""
    yield from explorer(backend)


def test_tokens_stream_in_one_by_one(server, browser, database, db, tiny):
    """Each step records its best tokens in gptsql.step_logit: a lock held there stops the
    generation at its first step, and taken again as soon as that step has it, at its second;
    meanwhile the page shows exactly the one token the database has chosen."""
    driver = browser
    open_form(driver, server, tiny)
    for name, value in {"max_tokens": "24", "temperature": "0"}.items():
        css(driver, f"#{name}")[0].clear()
        css(driver, f"#{name}")[0].send_keys(value)
    holder = database.connect(autocommit=False)
    me = holder.info.backend_pid
    blocked = lambda: db.execute("select count(*) from pg_stat_activity "  # noqa: E731
                                 "where %s = any(pg_blocking_pids(pid))", [me]).fetchone()[0] > 0
    try:
        holder.execute("lock gptsql.step_logit in exclusive mode")
        css(driver, "#go")[0].click()
        assert wait_for(blocked, 60), "the generation never reached its first step"
        holder.commit()                                           # the first step takes the lock first,
        holder.execute("lock gptsql.step_logit in exclusive mode")  # this waits for it, then holds step 2
        assert wait_for(blocked, 60), "the generation never reached its second step"
        wait(driver, lambda d: len(css(d, "#tokens .tok")) == 1)
        assert "done" not in css(driver, "#gen-status")[0].text
    finally:
        holder.close()
    wait(driver, lambda d: "done" in css(d, "#gen-status")[0].text)
    # Coloured by the probability the database gave each token when it chose it.
    run = int(css(driver, "#current-run a")[0].text.lstrip("#"))
    expected = db.execute("select probability from gptsql.run_tokens where run = %s and not is_prompt "
                          "order by place", [run]).fetchall()
    shown = [float(s.get_attribute("data-p")) for s in css(driver, "#tokens .tok")]
    assert len(shown) == 24 and shown == pytest.approx([p for (p,) in expected], abs=1e-9)
    colours = {s.value_of_css_property("background-color") for s in css(driver, "#tokens .tok")}
    assert len(colours) > 1


def test_a_step_and_its_temperature_slider(server, browser, run_cli, tiny):
    from selenium.webdriver.common.keys import Keys

    driver = browser
    run = generate(driver, server, tiny, max_tokens=5, temperature=1, top_k=5, seed=3)
    css(driver, "#tokens .tok")[2].click()                      # the third generated token
    wait(driver, lambda d: css(d, "#bars .p-at-t"))
    assert driver.current_url.endswith(f"#step/{run}/3")
    chosen = css(driver, "#bars .piece.chosen")
    assert len(chosen) == 1 and chosen[0].text.startswith("★")
    before = [b.text for b in css(driver, "#bars .p-at-t")]
    width = lambda: [float(re.search(r"width: ([\d.]+)%", b.get_attribute("style")).group(1))  # noqa: E731
                     for b in css(driver, "#bars .bar")]
    widths = width()
    slider = css(driver, "#temperature-slider")[0]
    assert css(driver, "#temperature-value")[0].text == "1.00", "the run's own temperature"
    for _ in range(10):
        slider.send_keys(Keys.ARROW_LEFT)                        # 1.0 -> 0.5
    wait(driver, lambda d: css(d, "#temperature-value")[0].text == "0.50"
         and [b.text for b in css(d, "#bars .p-at-t")] != before)
    after = [float(b.text) for b in css(driver, "#bars .p-at-t")]
    assert after[0] > float(before[0]), "a lower temperature sharpens the distribution"
    bars = width()
    assert bars != widths and bars == pytest.approx([100 * p for p in after], abs=0.01), "the bars are the numbers"
    # The numbers are SQL's: the panel's query, run as shown, gives them.
    wait(driver, lambda d: "0.5::float8" in panel_sql(d, "#bars"))
    pasted = css(driver, "#bars pre.sql-text")[0].get_attribute("textContent")
    out = run_cli("db", "psql", "-X", "-A", "-t", "-F", "|", "-c", pasted).stdout
    assert [float(line.split("|")[7]) for line in out.splitlines() if line] == after


def test_attention_grid_has_every_head_and_the_large_map(server, browser, tiny, db):
    driver = browser
    run = generate(driver, server, tiny, max_tokens=4, temperature=0)
    driver.get(f"{server}#attention/{run}")
    wait(driver, lambda d: css(d, "#heads canvas.thumb") and css(d, "#head-map"))
    n_layer, n_head, = db.execute("select n_layer, n_head from gptsql.model_size where name = %s", [tiny]).fetchone()
    assert len(css(driver, "#heads canvas.thumb")) == n_layer * n_head
    places = db.execute("select count(*) - 1 from gptsql.run_tokens where run = %s", [run]).fetchone()[0]
    thumb = css(driver, "#heads canvas.thumb")[0]
    assert int(thumb.get_attribute("width")) == places       # 9 places: one pixel each
    css(driver, f'#heads canvas[data-block="{n_layer - 1}"][data-head="{n_head - 1}"]')[0].click()
    wait(driver, lambda d: f"block {n_layer - 1}, head {n_head - 1}" in d.find_element("id", "large").text)
    rows = db.execute(panel_sql(driver, "#large")).fetchall()
    assert len(rows) == places and all(len(w) == q + 1 for q, (_p, _piece, w) in enumerate(rows))
    # The weight under the pointer: query place 5 looking at key place 2.
    from selenium.webdriver.common.action_chains import ActionChains

    big = driver.find_element("id", "head-map")
    margin, cell = float(big.get_attribute("data-margin")), float(big.get_attribute("data-cell"))
    size = big.size["width"]
    ActionChains(driver).move_to_element_with_offset(
        big, int(margin + 2.5 * cell - size / 2), int(margin + 5.5 * cell - size / 2)).perform()
    readout = driver.find_element("id", "readout").text
    assert readout.startswith(f"query 5 “{rows[5][1].replace(' ', '␣')}” → key 2 “{rows[2][1].replace(' ', '␣')}”")
    assert readout.endswith(f"weight {float(rows[5][2][2]):.4f}")


def test_attention_at_200_places_stays_readable(server, browser, db, run_cli):
    """A 200-place run (a model with a 256-token context): the thumbnails are binned to at most 32
    squares across, and one head's map keeps 12 px a place with every piece labelled, scrolling."""
    run_cli("load", "random:small", "--name", "web-small", "--replace")
    driver = browser
    try:
        open_form(driver, server, "web-small")
        prompt = "The quick brown fox jumps over the lazy dog. " * 19
        driver.execute_script("document.getElementById('prompt').value = arguments[0]", prompt)
        for name, value in {"max_tokens": "8", "temperature": "0"}.items():
            css(driver, f"#{name}")[0].clear()
            css(driver, f"#{name}")[0].send_keys(value)
        css(driver, "#go")[0].click()
        wait(driver, lambda d: "done" in css(d, "#gen-status")[0].text or css(d, "#error")[0].text, 300)
        assert not css(driver, "#error")[0].text, css(driver, "#error")[0].text
        run = int(css(driver, "#current-run a")[0].text.lstrip("#"))
        places = db.execute("select count(*) - 1 from gptsql.run_tokens where run = %s", [run]).fetchone()[0]
        assert places >= 195
        driver.get(f"{server}#attention/{run}")
        wait(driver, lambda d: css(d, "#heads canvas.thumb") and css(d, "#head-map"), 120)
        assert {int(t.get_attribute("width")) for t in css(driver, "#heads canvas.thumb")} <= set(range(1, 33))
        big = driver.find_element("id", "head-map")
        assert int(big.get_attribute("data-places")) == places and float(big.get_attribute("data-cell")) >= 12
        assert big.size["width"] >= 12 * places
        scrolls = driver.execute_script("const b = arguments[0].parentElement; "
                                        "return b.scrollWidth > b.clientWidth && getComputedStyle(b).overflowX;", big)
        assert scrolls in ("auto", "scroll"), scrolls
        # Scrolled to its far corner, the map keeps its labels in view: the queries' on the left, the
        # keys' on top (before, they were drawn on the map and scrolled away with it).
        seen = driver.execute_script("""
            const box = arguments[0].parentElement;
            box.scrollLeft = box.scrollWidth; box.scrollTop = box.scrollHeight;
            const frame = box.getBoundingClientRect();
            const rect = (id) => document.getElementById(id).getBoundingClientRect();
            const [queries, keys] = [rect('head-queries'), rect('head-keys')];
            return { scrolled: box.scrollLeft > 0 && box.scrollTop > 0,
                     queries: Math.abs(queries.left - frame.left) < 2, keys: Math.abs(keys.top - frame.top) < 2 };""", big)
        assert seen == {"scrolled": True, "queries": True, "keys": True}, seen
    finally:
        run_cli("unload", "web-small", "--yes")


def test_the_runs_the_lens_and_the_model(server, browser, tiny, db):
    driver = browser
    earlier = generate(driver, server, tiny, max_tokens=2, temperature=0)
    run = generate(driver, server, tiny, max_tokens=3, temperature=0)
    driver.get(f"{server}#runs")
    wait(driver, lambda d: css(d, "#runs tr[data-run]"))
    listed = [int(tr.get_attribute("data-run")) for tr in css(driver, "#runs tr[data-run]")]
    assert listed[:2] == [run, earlier] and listed == sorted(listed, reverse=True), "newest first"
    driver.get(f"{server}#lens/{run}")
    wait(driver, lambda d: css(d, "#lens-card details.sql") and css(d, "#norms polyline"))
    lens = db.execute(panel_sql(driver, "#lens-card")).fetchall()
    cells = [td.text.split("\n") for td in css(driver, "#lens td")]
    assert [float(c[1]) for c in cells] == [round(float(r[4]), 3) for r in lens]
    assert [c[0] for c in cells] == [visible(r[3]) for r in lens], "the top piece of each block and place"
    driver.get(f"{server}#model/{tiny}")
    wait(driver, lambda d: css(d, "#flow .box"))
    facts = driver.find_element("id", "model-facts").text
    n_params = db.execute("select n_params from gptsql.model_size where name = %s", [tiny]).fetchone()[0]
    assert f"parameters (counted in the rows)\n{n_params:,}" in facts
    # Every number of the drawing is a row of the query under it: parameters per block, and the total.
    parts_sql = css(driver, "pre.sql-text")[1].get_attribute("textContent").rstrip().rstrip(";")
    parts = {part: (per_block, total) for part, _rows, _blocks, _p, per_block, total in db.execute(parts_sql)}
    assert {total for _, total in parts.values()} == {n_params}
    shown = {box.get_attribute("data-part"): box.find_element("css selector", ".params").text
             for box in css(driver, "#flow .box[data-part]")}
    assert {p: t for p, t in shown.items() if p in parts} == {p: f"{per_block:,} parameters"
                                                              for p, (per_block, _) in parts.items()}
    links = {a.get_attribute("href").rsplit("/", 1)[1] for a in css(driver, "#flow a")}
    assert "04_attention.sql" in links and len(links) >= 7
    driver.get(f"{server}sql/04_attention.sql")
    assert "CREATE" in driver.find_element("tag name", "body").text


def test_bad_parameters_get_the_clis_line_in_the_page(server, browser, run_cli, tiny):
    driver = browser
    open_form(driver, server, tiny)
    box = css(driver, "#temperature")[0]
    box.clear()
    box.send_keys("-1")
    css(driver, "#go")[0].click()
    wait(driver, lambda d: css(d, "#error")[0].text)
    cli = run_cli("generate", "-m", tiny, "-t", "-1", PROMPT, check=False)
    assert cli.returncode == 1
    shown = css(driver, "#error")[0].text          # the CLI's check, in the page's words: the field's label
    assert shown.startswith("Temperature: ") and shown.removeprefix("Temperature: ") in cli.stderr
    # A run that is not a number: the page's API says what `gptsql runs show` says.
    import json
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{server}api/runs/abc/tokens")
    assert refused.value.code == 400
    message = json.loads(refused.value.read())["error"]
    assert f"Error: {message}" in run_cli("runs", "show", "abc", check=False).stderr
    driver.get(f"{server}#step/999999/1")
    wait(driver, lambda d: css(d, ".error"))
    assert css(driver, ".error")[0].text == "there is no run 999999; list them with: gptsql runs list"


def test_a_prompt_of_a_dash_is_text_in_the_page(server, tiny):
    """On the command line "-" reads standard input; typed in the page it is the prompt itself
    (the server's standard input is never read)."""
    events = generation_events(server, {"prompt": "-", "max_tokens": 1, "temperature": 0, "model": tiny})
    start = next(data for kind, data in events if kind == "start")
    assert start["prompt"] == "-" and start["prompt_tokens"] == 1


def test_the_pages_pieces_show_part_of_a_character_as_the_cli_does(server, tiny, run_cli, monkeypatch):
    """A token that is part of a character shows its bytes (<e4 bd>) in every panel that shows
    pieces, as `gptsql runs show` and `gptsql trace` show them, never U+FFFD."""
    monkeypatch.setenv("COLUMNS", "250")
    events = generation_events(server, {"prompt": "你好，世界", "max_tokens": 2, "temperature": 0, "model": tiny})
    run = next(data for kind, data in events if kind == "start")["run"]
    partial = re.compile(r"<[0-9a-f]{2}( [0-9a-f]{2})*>")

    def records(path):
        status, answer = ask(server, path)
        assert status == 200, answer
        return [dict(zip(answer["columns"], row)) for row in answer["rows"]]

    tokens = records(f"/api/runs/{run}/tokens")
    shown = run_cli("runs", "show", str(run)).stdout
    for t in tokens:
        assert repr(t["piece"]) in shown, (t, shown)
    assert any(partial.search(t["piece"]) for t in tokens), tokens
    by_place = {t["place"]: t["piece"] for t in tokens}
    [step] = [r for r in records(f"/api/runs/{run}/steps/1") if r["rank"] == 1]
    assert step["after_piece"] == by_place[step["place"] - 1] and partial.search(step["after_piece"]), step
    panels = {"step": records(f"/api/runs/{run}/steps/1"), "head": records(f"/api/runs/{run}/attention/0/0"),
              "lens": records(f"/api/runs/{run}/lens"), "norms": records(f"/api/runs/{run}/norms")}
    for panel, rows in panels.items():
        texts = [v for r in rows for k, v in r.items() if k.endswith("piece")]
        assert texts and not any("\ufffd" in text for text in texts), (panel, texts)
    assert all(r["query_piece"] == by_place[r["query_place"]] for r in panels["head"])
    assert all(r["piece"] == by_place[r["place"]] for r in panels["lens"] + panels["norms"])


def test_the_page_streams_the_text_the_cli_streams(server, tiny, run_cli):
    """The same greedy generation: the page's token texts (and what was held back at the end) are
    what `gptsql generate --no-prompt` prints, character for character."""
    prompt = "你好，世界"
    events = generation_events(server, {"prompt": prompt, "max_tokens": 6, "temperature": 0, "model": tiny})
    page = "".join(data["text"] for kind, data in events if kind in ("token", "done"))
    cli = run_cli("generate", "-m", tiny, "-n", "6", "-t", "0", "--workers", "1", "--no-prompt", prompt).stdout
    assert page == cli.removesuffix("\n")


def test_serve_warns_off_localhost(backend):
    proc = subprocess.Popen([sys.executable, "-m", "gptsql", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
                            env=cli_env(backend), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("gptsql explorer at http://0.0.0.0:")
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert err.startswith("warning: listening on 0.0.0.0")


def test_closing_the_page_mid_generation_interrupts_the_run(server, browser, database, db, tiny):
    """The page is left while a step is held (a lock on gptsql.step_logit, taken before the run
    starts, so a fast model cannot finish first): once the step goes on, the server sees the page
    gone and stops the run, marked interrupted, long before its 100 tokens."""
    driver = browser
    open_form(driver, server, tiny)
    css(driver, "#max_tokens")[0].clear()
    css(driver, "#max_tokens")[0].send_keys("100")
    newest = db.execute("select coalesce(max(id), 0) from gptsql.run").fetchone()[0]
    holder = database.connect(autocommit=False)
    try:
        holder.execute("lock gptsql.step_logit in exclusive mode")
        css(driver, "#go")[0].click()
        assert wait_for(lambda: db.execute("select count(*) from pg_stat_activity where %s = any(pg_blocking_pids(pid))",
                                           [holder.info.backend_pid]).fetchone()[0] > 0, 60)
        run, = db.execute("select id from gptsql.run where id > %s and model_id = gptsql.model_id(%s)",
                          [newest, tiny]).fetchone()
        driver.get("about:blank")
    finally:
        holder.close()
    row = lambda: db.execute("select status, generated_tokens from gptsql.runs where run = %s",  # noqa: E731
                             [run]).fetchone()
    assert wait_for(lambda: row()[0] != "running", 60), row()
    status, n = row()
    assert (status, n < 100) == ("interrupted", True), f"run {run}: {status} after {n} tokens"


def test_panels_read_in_read_only_transactions(db):
    """queries.read: a statement that writes is refused, and nothing is left open."""
    import psycopg

    from gptsql.web import queries

    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        queries.read(db, "insert into gptsql.meta (key, value) values ('web-test', 'x') returning key", {})
    assert db.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert db.execute("select count(*) from gptsql.meta where key = 'web-test'").fetchone()[0] == 0


def test_readme_has_the_explorer_section_and_its_pictures():
    from helpers import REPO

    text = (REPO / "README.md").read_text()
    start, end = text.index("<!-- explorer:start -->"), text.index("<!-- explorer:end -->")
    assert text.index("<!-- exploring:end -->") < start, "the Explorer section follows 'Exploring a run in psql'"
    section = text[start:end]
    for needed in ["gptsql serve", "http://127.0.0.1:8000/", "--host", "SET TRANSACTION READ ONLY",
                   "gptsql db psql", "chromium-driver", "ten stored logits"]:
        assert needed in section, f"the Explorer section does not say {needed!r}"
    pictures = re.findall(r"!\[[^\]]*\]\((docs/[^)]+\.png)\)", section)
    assert len(pictures) == 3 and all((REPO / p).is_file() for p in pictures)
    assert "docs/explorer-inside.png" in pictures, "a picture of the inside of a block"
    assert "(docs/explorer.md)" in section and (REPO / "docs/explorer.md").is_file()


def test_serve_on_a_port_in_use_is_one_line(run_cli):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--port", str(port), check=False, timeout=60)
    assert result.returncode == 1
    assert result.stderr == (f"Error: cannot listen on 127.0.0.1:{port} (Address already in use); "
                             "choose another --port (--port 0: any free port)\n")


def test_the_form_passes_top_k_top_p_and_seed(server, browser, tiny, db, run_cli):
    """Every field of the form reaches the run: the page's run records them, and its text is the
    CLI's for the same seed (a seeded draw is the same whatever else runs)."""
    driver = browser
    options = {"temperature": "1.3", "top_k": "7", "top_p": "0.9", "seed": "424242", "max_tokens": "6"}
    run = generate(driver, server, tiny, prompt=PROMPT, **options)
    row = db.execute("select model, temperature, top_k, top_p, seed, max_tokens, generated_text from gptsql.runs "
                     "where run = %s", [run]).fetchone()
    assert row[:6] == (tiny, 1.3, 7, pytest.approx(0.9), 424242, 6)
    cli = run_cli("generate", "--model", tiny, "--no-prompt", "-t", "1.3", "--top-k", "7", "--top-p", "0.9",
                  "--seed", "424242", "-n", "6", PROMPT).stdout
    assert row[6] == cli.rstrip("\n")
    assert len(css(driver, "#tokens .tok")) == 6


def test_every_panels_query_pasted_into_psql_returns_its_rows(server, browser, tiny, run_cli):
    """Every view's every panel has "The query behind it" with a Copy button; the copied text, run by
    `gptsql db psql`, returns as many rows as the panel says it has."""
    driver = browser
    run = generate(driver, server, tiny, max_tokens=3, temperature=0)
    driver.execute_cdp_cmd("Browser.grantPermissions", {"origin": server.rstrip("/"),
                                                        "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    views = {f"#run/{run}": 2, f"#step/{run}/2": 2, f"#attention/{run}": 2, f"#lens/{run}": 2,
             f"#model/{tiny}": 2, "#runs": 1, f"#inside/{run}/3/1/2": 11, "#tour/4": 1}
    for view, panels in views.items():
        driver.get(f"{server}{view}")
        wait(driver, lambda d: len(css(d, "details.sql")) == panels)
        assert not css(driver, ".error:not(:empty)"), (view, css(driver, ".error")[0].text)
        for box in css(driver, "details.sql"):
            summary = box.find_element("css selector", "summary")
            summary.click()
            count = int(re.search(r"\((\d+) rows?\)", summary.text).group(1))
            button = box.find_element("css selector", "button.copy")
            button.click()
            wait(driver, lambda d: button.text == "Copied")
            copied = driver.execute_async_script(
                "const done = arguments[0]; navigator.clipboard.readText().then(done, (e) => done('no clipboard: ' + e))")
            assert copied == box.find_element("css selector", "pre").get_attribute("textContent"), view
            assert len(psql_rows(run_cli, copied)) == count, (view, copied)


def test_the_page_fetches_nothing_from_elsewhere(server, browser, tiny):
    """No CDN, no internet: every file and request of every view comes from gptsql serve itself."""
    driver = browser
    origin = server.rstrip("/")
    run = generate(driver, server, tiny, max_tokens=3, temperature=0)
    for view in [f"#step/{run}/1", f"#attention/{run}", f"#lens/{run}", f"#model/{tiny}", "#runs"]:
        driver.get(f"{server}{view}")
        wait(driver, lambda d: css(d, "details.sql"))
        fetched = driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
        assert fetched and all(url.startswith(origin + "/") for url in fetched), (view, fetched)


def test_a_runs_links_open_it_in_each_view(server, browser, tiny):
    driver = browser
    run = generate(driver, server, tiny, max_tokens=3, temperature=0)
    for link, ready in [("step", "#bars .p-at-t"), ("attention", "#heads canvas.thumb"), ("lens", "#lens td"),
                        ("tokens", ".tokens .tok")]:
        driver.get(f"{server}#runs")
        wait(driver, lambda d: css(d, f'#runs tr[data-run="{run}"]'))
        row = css(driver, f'#runs tr[data-run="{run}"]')[0]
        row.find_element("link text", link).click()
        wait(driver, lambda d: css(d, ready))
        assert re.search(rf"#\w+/{run}(/\d+)?$", driver.current_url), driver.current_url
        assert f"run {run}" in driver.find_element("id", "main").text.lower()


def test_the_residual_norms_are_the_querys(server, browser, db, tiny):
    """One line per place, its points the query's norms after each half of each block."""
    driver = browser
    run = generate(driver, server, tiny, max_tokens=4, temperature=0)
    driver.get(f"{server}#lens/{run}")
    wait(driver, lambda d: css(d, "#norms polyline"))
    norms_sql = panel_sql(driver, "#norms-card")
    expected = {}
    for block, place, _piece, after_attention, after_mlp in db.execute(norms_sql):
        expected.setdefault(place, []).extend([float(after_attention), float(after_mlp)])
    lines = [poly.find_element("css selector", "title").get_attribute("textContent")
             for poly in css(driver, "#norms polyline")]
    assert len(lines) == len(expected) == db.execute(
        "select count(*) - 1 from gptsql.run_tokens where run = %s", [run]).fetchone()[0]
    for line in lines:
        place = int(re.match(r"place (\d+) ", line).group(1))
        shown = [float(v) for v in line.split(": ", 1)[1].split(" → ")]
        assert shown == pytest.approx(expected[place], abs=0.051), line


def test_the_step_says_what_each_probability_is_over(server, browser, tiny):
    """The slider's column is over the ten recorded candidates; the last is over the whole
    vocabulary at T = 1: at T = 1 they differ, so each header says which it is."""
    driver = browser
    run = generate(driver, server, tiny, max_tokens=2, temperature=0)
    driver.get(f"{server}#step/{run}/1")
    wait(driver, lambda d: css(d, "#bars .p-at-t"))
    heads = [h.text.replace("\n", " ") for h in css(driver, "#bars .bars .head")]
    assert "these ten" in heads[2] and "whole vocabulary" in heads[3], heads


def test_each_part_of_the_model_links_to_the_file_defining_its_function(server, browser, tiny):
    """Each box names the SQL function that computes its part and links to the sql/ file that
    defines it; the statements' shares over several backends link to sql/10_shares.sql."""
    import urllib.request

    driver = browser
    driver.get(f"{server}#model/{tiny}")
    wait(driver, lambda d: css(d, "#flow .box"))
    boxes = css(driver, "#flow .box[data-part]")
    assert len(boxes) >= 14
    for box in boxes:
        function = box.get_attribute("data-function")
        link = box.find_element("css selector", "a").get_attribute("href")
        assert function and function in box.text, box.text
        source = urllib.request.urlopen(link).read().decode()
        assert re.search(rf"CREATE (OR REPLACE )?FUNCTION {re.escape(function)}\(", source), (function, link)
    sampling = css(driver, '#flow .box[data-part="sampling"]')[0]
    assert sampling.get_attribute("data-function") == "gptsql.choose"
    assert any(a.get_attribute("href").endswith("/sql/10_shares.sql") for a in css(driver, "#flow ~ * a, #flow a"))


def test_the_residual_charts_labels_fit_and_do_not_overlap(server, browser):
    """The residual chart's labels stay inside it and apart, for every GPT-2 depth (2 to 48 blocks):
    drawn by the page's own normsChart on norms of that many blocks."""
    driver = browser
    driver.get(server)
    wait(driver, lambda d: css(d, "#prompt"))
    for blocks in (2, 4, 12, 24, 36, 48):
        found = driver.execute_script("""
            const blocks = arguments[0], rows = [];
            for (let b = 0; b < blocks; b++) for (let p = 0; p < 3; p++)
              rows.push({ block: b, place: p, piece: 'x', norm_after_attention: 10 * b + p + 1, norm_after_mlp: 10 * b + p + 5 });
            const chart = normsChart(rows);
            document.getElementById('main').replaceChildren(chart);
            const svg = chart.querySelector('svg'), [x0, y0, w, h] = svg.getAttribute('viewBox').split(' ').map(Number);
            const boxes = [...svg.querySelectorAll('text')].map((t) => [t.textContent, t.getBBox()]);
            const outside = boxes.filter(([_, b]) => b.x < x0 || b.y < y0 || b.x + b.width > x0 + w || b.y + b.height > y0 + h);
            const axis = boxes.filter(([_, b]) => b.y > y0 + h - 40 && b.y < y0 + h - 18).sort((a, b) => a[1].x - b[1].x);
            const overlapping = axis.slice(1).filter(([_, b], i) => b.x < axis[i][1].x + axis[i][1].width + 2);
            return { outside: outside.map(([t]) => t), overlapping: overlapping.map(([t]) => t),
                     last: axis.length ? axis[axis.length - 1][0] : null };""", blocks)
        assert found["outside"] == [] and found["overlapping"] == [], (blocks, found)
        assert found["last"] is not None and found["last"].startswith(str(blocks - 1)), (blocks, found)


# ------------------------------------------------- issue 28: who the explorer answers, and how much
def test_only_the_host_names_it_was_started_for_are_answered(server):
    """DNS rebinding: a page whose name resolves to 127.0.0.1 sends its own name as the Host. Only
    the names the server was started for are answered (loopback names by default), in one line."""
    from urllib.parse import urlsplit

    port = urlsplit(server).port
    for host in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1.nip.io:{port}"):
        status, answer = ask(server, "/api/runs/latest", headers={"Host": host})
        assert status == 400 and "answers only for the host names it was started for" in answer["error"], answer
        assert f"open http://127.0.0.1:{port}/" in answer["error"] and "--host" in answer["error"]
        status, text = ask(server, "/", headers={"Host": host})
        assert status == 400 and len(text.strip().splitlines()) == 1 and "<html" not in text
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LocalHost"):
        status, answer = ask(server, "/api/models", headers={"Host": host})
        assert status == 200 and "rows" in answer, (host, answer)


def test_listening_on_every_address_answers_loopback_names_and_addresses(backend):
    """The Docker demo: `serve --host 0.0.0.0` reached from the host machine as 127.0.0.1:8000 or
    localhost:8000 (or by an address of the machine); a name is still refused."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gptsql", "serve", "--host", "0.0.0.0", "--port", str(port)],
                            env=cli_env(backend), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("gptsql explorer at http://0.0.0.0:")
        server = f"http://127.0.0.1:{port}/"
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"10.1.2.3:{port}", f"[::1]:{port}"):
            assert ask(server, "/api/models", headers={"Host": host})[0] == 200, host
        status, answer = ask(server, "/api/models", headers={"Host": f"attacker.example:{port}"})
        assert status == 400 and "answers only for the host names" in answer["error"]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def runs_with_prompt(db, prompt: str) -> int:
    return db.execute("select count(*) from gptsql.run where prompt = %s", [prompt]).fetchone()[0]


def test_a_generation_is_a_post_from_the_page_itself(server, db, tiny):
    """A GET (an <img src>, a link) starts nothing; a POST is refused when a browser says another
    site's page sent it; the page's own POST (and a program's, which sends neither header) runs."""
    import json
    from urllib.parse import urlsplit

    prompt = "pwned by a page"
    fields = json.dumps({"prompt": prompt, "max_tokens": 1, "model": tiny}).encode()
    json_type = {"Content-Type": "application/json"}
    status, answer = ask(server, f"/api/generate?prompt=pwned+by+a+page&max_tokens=1&model={tiny}")
    assert status == 405 and "POST" in answer["error"]
    for headers in ({"Origin": "http://attacker.example", **json_type},
                    {"Origin": "null", **json_type},
                    {"Sec-Fetch-Site": "cross-site", **json_type},
                    {"Sec-Fetch-Site": "same-site", **json_type}):
        status, answer = ask(server, "/api/generate", "POST", headers, fields)
        assert status == 403 and "for its own page only" in answer["error"], (headers, answer)
    status, answer = ask(server, "/api/generate", "POST", {"Content-Type": "text/plain"}, fields)
    assert status == 400 and "application/json" in answer["error"]
    assert runs_with_prompt(db, prompt) == 0
    own = f"http://127.0.0.1:{urlsplit(server).port}"
    events = generation_events(server, {"prompt": prompt, "max_tokens": 1, "model": tiny},
                               {"Origin": own, "Sec-Fetch-Site": "same-origin"})
    assert [kind for kind, _ in events] == ["start", "token", "done"]
    assert runs_with_prompt(db, prompt) == 1


def test_another_sites_page_cannot_read_the_runs(server, tiny):
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                    {"Origin": "http://attacker.example"}):
        status, answer = ask(server, "/api/runs?limit=1", headers=headers)
        assert status == 403 and "for its own page only" in answer["error"], headers
    assert ask(server, "/api/runs?limit=1", headers={"Sec-Fetch-Site": "same-origin"})[0] == 200
    assert ask(server, "/api/runs?limit=1", headers={"Sec-Fetch-Site": "none"})[0] == 200   # typed in the address bar


def test_a_page_of_another_site_starts_no_generation(server, browser, db, tiny, tmp_path):
    """In the browser: a page of another origin (a second local server) with an <img> on the
    generate URL and a no-cors POST, as a hostile page would: no run is recorded."""
    import functools
    import http.server
    import threading

    prompt = "pwned by another site"
    (tmp_path / "evil.html").write_text(f"""<!doctype html><html><body>
<img id="img" src="{server}api/generate?prompt=pwned+by+another+site&max_tokens=1&model={tiny}"
     onload="document.body.dataset.img = 'done'" onerror="document.body.dataset.img = 'done'">
<script>
fetch("{server}api/generate", {{ method: "POST", mode: "no-cors", headers: {{ "Content-Type": "text/plain" }},
      body: JSON.stringify({{ prompt: "{prompt}", max_tokens: "1", model: "{tiny}" }}) }})
  .finally(() => {{ document.body.dataset.post = "done"; }});
</script></body></html>""")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://localhost:{other.server_address[1]}/evil.html")
        wait(browser, lambda d: d.execute_script("return document.body.dataset.img === 'done' && "
                                                 "document.body.dataset.post === 'done'"))
    finally:
        other.shutdown()
    assert runs_with_prompt(db, prompt) == 0


def long_run(conn, tiny) -> int:
    """A recorded run of about 50 places on random:tiny (2 blocks, context 128)."""
    conn.execute("select gptsql.generate(%s, 3, model => %s)", ["one two three four five six seven eight nine ten " * 5,
                                                                 tiny])
    return conn.execute("select max(id) from gptsql.run where model_id = gptsql.model_id(%s)", [tiny]).fetchone()[0]


def test_every_panel_takes_bounded_windows(server, db, tiny):
    """Every parameter of every panel is checked against its bound, with a one-line error in the
    page's words (not the CLI's flags): the lens's window (one vocabulary scan per block and place),
    the runs list's limit, the attention's size and head, the step's temperature."""
    run = long_run(db, tiny)
    answer = ask(server, f"/api/runs/{run}")[1]
    info = dict(zip(answer["columns"], answer["rows"][0]))
    last = info["prompt_tokens"] + info["generated_tokens"] - 2        # the last place through the blocks
    assert last >= 48
    status, answer = ask(server, f"/api/runs/{run}/lens?first=0&last={last}")
    assert status == 400 and "too many at once" in answer["error"] and "at most 48 places" in answer["error"], answer
    assert ask(server, f"/api/runs/{run}/lens?first={last - 47}&last={last}")[0] == 200
    bad = {"/api/runs?limit=-1": "limit must be between 1 and 1000 runs, not -1",
           "/api/runs?limit=0": "limit must be between 1 and 1000",
           "/api/runs?limit=100000": "limit must be between 1 and 1000",
           f"/api/runs/{run}/lens?first=5&last=2": "places must be between 0 and",
           f"/api/runs/{run}/attention?pixels=5000": "pixels must be between 4 and 256",
           f"/api/runs/{run}/attention/7/0": "block must be between 0 and 1",
           f"/api/runs/{run}/attention/0/9": "head must be between 0 and 3",
           f"/api/runs/{run}/steps/1?temperature=nan": "temperature must be a number >= 0 (0 is greedy), got NaN",
           f"/api/runs/{run}/steps/1?temperature=inf": "got Infinity",
           f"/api/runs/{run}/steps/1?temperature=1e-320": "too close to 0",
           f"/api/runs/{run}/steps/99": f"run {run} has no step 99"}
    for path, needle in bad.items():
        status, answer = ask(server, path)
        assert status == 400 and needle in answer["error"], (path, status, answer)
        assert "\n" not in answer["error"] and "--" not in answer["error"], answer


def blocked_by(db, holder) -> list:
    return db.execute("select pid from pg_stat_activity where %s = any(pg_blocking_pids(pid))",
                      [holder.info.backend_pid]).fetchall()


def test_a_panel_whose_page_goes_away_stops_its_query(server, database, db, tiny):
    """A panel's query waiting on a lock (a long query stands for any): the client gives up, and the
    query is cancelled at once instead of running on, holding a connection and a thread."""
    import http.client
    from urllib.parse import urlsplit

    run = long_run(db, tiny)
    holder = database.connect(autocommit=False)
    try:
        holder.execute("lock gptsql.residual in access exclusive mode")
        where = urlsplit(server)
        client = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
        client.request("GET", f"/api/runs/{run}/norms")
        assert wait_for(lambda: len(blocked_by(db, holder)) == 1, 60), "the panel's query never reached the lock"
        client.close()                                             # the page goes away
        assert wait_for(lambda: not blocked_by(db, holder), 60), "the query ran on after its client left"
    finally:
        holder.close()
    assert ask(server, f"/api/runs/{run}/norms")[0] == 200


def test_the_explorers_queries_have_a_time_limit(database):
    from gptsql.web.app import Explorer

    explorer = Explorer(database)
    explorer.pool.open()
    try:
        with explorer.pool.connection() as conn:
            assert conn.execute("show statement_timeout").fetchone()[0] == "1min"
    finally:
        explorer.pool.close()


@pytest.mark.slow
def test_the_explorers_connections_are_bounded_and_survive_a_server_restart(tiny_checkpoint):
    """20 panels at once take at most the pool's 8 connections (the others wait for one), and none
    is left over beyond them; after the embedded server stops, the next panel starts it again and
    every panel answers (each pooled connection is checked before it is used, a broken one replaced)."""
    import threading
    from pathlib import Path

    from helpers import make_server

    from gptsql.loader.load import load

    pool_size = 8                          # Explorer.POOL_SIZE
    data_dir = Path(tempfile.mkdtemp(prefix="gqw-", dir="/tmp"))
    s = make_server(data_dir)
    with s.connect() as conn:
        load(conn, tiny_checkpoint, "random-tiny")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gptsql", "serve", "--port", str(port)], env=s.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watcher = s.connect()
    clients = lambda: watcher.execute("select count(*) from pg_stat_activity where backend_type = 'client backend' "  # noqa: E731
                                      "and pid <> pg_backend_pid()").fetchone()[0]
    try:
        assert proc.stdout.readline().startswith("gptsql explorer at")
        server = f"http://127.0.0.1:{port}/"
        run = long_run(watcher, "random-tiny")
        baseline = clients()
        holder = s.database.connect(autocommit=False)
        answers = []
        asking = [threading.Thread(target=lambda: answers.append(ask(server, f"/api/runs/{run}/norms")[0]))
                  for _ in range(20)]
        try:
            holder.execute("lock gptsql.residual in access exclusive mode")
            for thread in asking:
                thread.start()
            assert wait_for(lambda: len(blocked_by(watcher, holder)) >= pool_size, 60)
        finally:
            holder.close()
            for thread in asking:
                thread.join(120)
        assert answers == [200] * 20
        assert clients() - baseline <= pool_size
        watcher.close()
        s.embedded.stop()                  # every pooled connection is now broken
        for _ in range(12):                # the first one starts the embedded server again, as a command does
            status, answer = ask(server, f"/api/runs/{run}/norms")
            assert status == 200, answer
        watcher = s.connect()
    finally:
        watcher.close()
        proc.terminate()
        proc.communicate(timeout=30)
        s.embedded.stop()
        shutil.rmtree(data_dir, ignore_errors=True)

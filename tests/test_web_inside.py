"""The explorer inside every stage (issue 33) in Chromium: each stage's view draws its query's
numbers, the walkthrough opens each stage and names its SQL file, the page works at 400 px and from
the keyboard, and the bugs of the issue stay fixed (each test here failed before its fix).

The same browser, server and helpers as tests/test_web.py (tests/webpage.py)."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from gptsql.server.db import wait_for
from webpage import ask, cli_env, css, explorer, free_port, generate, open_form, panel_sql, visible, wait


@pytest.fixture(scope="module")
def server(backend, tiny):
    """The explorer, `gptsql serve` on a free port: its address."""
    yield from explorer(backend)


def rows_of(db, sql: str) -> list[dict]:
    cur = db.execute(sql)
    names = [c.name for c in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def number(text: str):
    return None if text.endswith("−∞ (masked)") else float(text.rsplit(": ", 1)[1])


def read_cell(driver, canvas, keys: list[str]) -> float | None:
    """Focus a heat strip, move its cursor with the keys, and read the readout under it."""
    from selenium.webdriver.common.keys import Keys

    driver.execute_script("arguments[0].focus()", canvas)
    canvas.send_keys(Keys.HOME)
    while True:          # back to the first row
        before = readout(canvas)
        canvas.send_keys(Keys.ARROW_UP)
        if readout(canvas) == before:
            break
    canvas.send_keys(Keys.HOME)
    for key in keys:
        canvas.send_keys(key)
    return number(readout(canvas))


def readout(canvas) -> str:
    return canvas.find_element("xpath", "../following-sibling::div[@class='readout']").text


def check_strips(driver, stage, rows: list[dict]):
    """Every heat strip of a stage card: its shape is its rows', and the first, the last of the first
    row and the first of the last row read (keyboard) the query's numbers."""
    from selenium.webdriver.common.keys import Keys

    by_step: dict[int, list[dict]] = {}
    for r in rows:
        by_step.setdefault(r["step"], []).append(r)
    canvases = stage.find_elements("css selector", "canvas.strip")
    drawn = set()
    for canvas in canvases:
        step = int(canvas.get_attribute("data-what"))
        group = by_step[step]
        n_rows, n_cols = int(canvas.get_attribute("data-rows")), int(canvas.get_attribute("data-cols"))
        if group[0]["vals"] is not None and len(group) == 1:            # a vector, wrapped
            values = [float(v) for v in group[0]["vals"]]
            assert n_cols * (n_rows - 1) < len(values) <= n_cols * n_rows
            cell = lambda r, c: values[r * n_cols + c]  # noqa: E731
        elif group[0]["vals"] is not None:                               # a matrix: a row per place
            assert n_rows == len(group) and n_cols == len(group[0]["vals"])
            cell = lambda r, c: float(group[r]["vals"][c])  # noqa: E731
        else:                                                            # numbers over places
            assert n_rows == 1 and n_cols == len(group)
            cell = lambda r, c: None if group[c]["value"] is None else float(group[c]["value"])  # noqa: E731
        assert read_cell(driver, canvas, []) == cell(0, 0), (step, "first")
        assert read_cell(driver, canvas, [Keys.END]) == cell(0, n_cols - 1), (step, "end of the first row")
        if n_rows > 1:
            assert read_cell(driver, canvas, [Keys.ARROW_DOWN] * (n_rows - 1)) == cell(n_rows - 1, 0), (step, "last row")
        drawn.add(step)
    for scalar in stage.find_elements("css selector", ".scalar"):
        step = int(scalar.get_attribute("data-what"))
        assert float(scalar.find_element("css selector", ".mono").text) == float(by_step[step][0]["value"])
        drawn.add(step)
    for table in stage.find_elements("css selector", "table.units"):
        step = int(table.get_attribute("data-what"))
        units = [int(tr.get_attribute("data-unit")) for tr in table.find_elements("css selector", "tr[data-unit]")]
        assert units == [r["unit"] for r in by_step[step]]
        drawn.add(step)
    assert drawn == set(by_step), f"every row of the query is drawn: {sorted(by_step)} vs {sorted(drawn)}"


@pytest.fixture(scope="module")
def sampled_run(server, browser, tiny):
    """A recorded, sampled, seeded run of the page: T 1.3, top-k 7, top-p 0.9."""
    return generate(browser, server, tiny, max_tokens=6, temperature=1.3, top_k=7, top_p=0.9, seed=77)


def test_each_stage_draws_its_querys_numbers(server, browser, db, sampled_run):
    """#inside/R/P/B/H: every stage card's strips, numbers and tables are its query's rows (the query
    shown under it, run as pasted)."""
    driver, run = browser, sampled_run
    place = db.execute("select count(*) from gptsql.residual where run_id = %s and block = 0", [run]).fetchone()[0] - 2
    driver.get(f"{server}#inside/{run}/{place}/1/2")
    wait(driver, lambda d: len(css(d, ".card.stage details.sql")) == 10, 120)
    assert not css(driver, ".error:not(:empty)"), css(driver, ".error")[0].text
    stages = {s.get_attribute("data-stage"): s for s in css(driver, ".card.stage")}
    assert list(stages) == ["tokens", "embedding", "ln_1", "attention", "projection", "ln_2", "mlp", "ln_f",
                            "sampling", "lens"], "the model's order"
    for key in ["embedding", "ln_1", "attention", "projection", "ln_2", "mlp", "ln_f"]:
        sql = panel_sql(driver, f'.card.stage[data-stage="{key}"]')
        assert "explore_" in sql and f"({run}, {place}" in sql
        check_strips(driver, stages[key], rows_of(db, sql))
    # Tokens: every token a chip (the last, never read, not a link), the place's id, piece and bytes.
    tokens = rows_of(db, panel_sql(driver, '.card.stage[data-stage="tokens"]'))
    chips = stages["tokens"].find_elements("css selector", ".chip")
    assert [c.text for c in chips] == [visible(t["piece"]) for t in tokens]
    assert [c.tag_name for c in chips] == ["a" if t["read"] else "span" for t in tokens]
    detail = driver.find_element("id", "token-detail").text
    here = tokens[place]
    assert f"token id\n{here['token']}" in detail and " ".join(f"{b:02x}" for b in here["bytes"]) in detail
    # The next token: every row of the sampling query, the cut, the draw and what came next.
    sampling = rows_of(db, panel_sql(driver, '.card.stage[data-stage="sampling"]'))
    shown = stages["sampling"].find_elements("css selector", "table.sampling tr[data-rank]")
    assert [int(tr.get_attribute("data-token")) for tr in shown] == [r["token"] for r in sampling]
    assert [tr.get_attribute("class").split()[0] for tr in shown] == ["kept" if r["kept"] else "cut" for r in sampling]
    for tr, r in zip(shown, sampling):
        cells = tr.find_elements("css selector", "td")
        assert float(cells[3].text) == float(r["probability"]) and cells[4].text.endswith(f"{float(r['p_at_temperature']):.4f}")
        assert cells[1].text.startswith("★") == bool(r["drawn"])
    assert any(r["drawn"] and r["next"] for r in sampling), "the engine's draw is the token the run went on with"
    assert 1 <= sum(r["kept"] for r in sampling) <= 7, "top-k 7"
    # The lens at the place: a row per block, its cells the query's.
    lens = rows_of(db, panel_sql(driver, '.card.stage[data-stage="lens"]'))
    cells = [td.text.split("\n") for td in css(driver, "#lens-at td")]
    assert [c[0] for c in cells] == [visible(r["predicted_piece"]) for r in lens]
    assert [float(c[1]) for c in cells] == [round(float(r["probability"]), 3) for r in lens]


def test_the_attention_stage_masks_the_later_places_and_matches_the_record(server, browser, db, sampled_run):
    """At an early place: the keys stop at the query, the mask hides every later place (drawn
    hatched, −∞ in the readout), and the softmax is the weight the run recorded."""
    from selenium.webdriver.common.keys import Keys

    driver, run = browser, sampled_run
    driver.get(f"{server}#inside/{run}/2/0/1/attention")
    wait(driver, lambda d: css(d, '.card.stage[data-stage="attention"] details.sql'), 120)
    stage = css(driver, '.card.stage[data-stage="attention"]')[0]
    rows = rows_of(db, panel_sql(driver, '.card.stage[data-stage="attention"]'))
    mask = [r["value"] for r in rows if r["step"] == 6]
    assert mask[:3] == [0, 0, 0] and set(mask[3:]) == {None}
    canvas = stage.find_element("css selector", 'canvas.strip[data-what="6"]')
    assert read_cell(driver, canvas, [Keys.ARROW_RIGHT] * 3) is None and "−∞ (masked)" in readout(canvas)
    softmax = [r["value"] for r in rows if r["step"] == 7]
    recorded = [r["value"] for r in rows if r["step"] == 8]
    assert softmax == recorded and len(softmax) == 3


@pytest.fixture(scope="module")
def llama_run(server, browser, db):
    """A recorded run of a random Llama (random:llama-tiny: 4 query heads reading 2 key/value heads,
    RoPE, RMS norms, SwiGLU) made in the page."""
    from gptsql.loader.load import load
    from gptsql.loader.sources import random_model

    load(db, random_model("llama-tiny"), "web-llama")
    yield generate(browser, server, "web-llama", max_tokens=4, temperature=0)
    db.execute("select gptsql.drop_model('web-llama')")


def test_a_llama_run_inside_and_its_heads(server, browser, db, llama_run):
    """The Llama family in the explorer: its stages in the model's order with their query's numbers,
    RMS norms named so, a query head naming the key/value head it reads, and the attention grid's
    heads labelled with theirs."""
    driver, run = browser, llama_run
    driver.get(f"{server}#inside/{run}/3/1/3")
    wait(driver, lambda d: len(css(d, ".card.stage details.sql")) == 10, 120)
    assert not css(driver, ".error:not(:empty)"), css(driver, ".error")[0].text
    stages = {s.get_attribute("data-stage"): s for s in css(driver, ".card.stage")}
    assert list(stages) == ["tokens", "embedding", "ln_1", "attention", "projection", "ln_2", "mlp", "ln_f",
                            "sampling", "lens"]
    assert "RMS norm" in stages["ln_1"].text
    assert "reads key/value head 1, shared by heads 2 to 3" in stages["attention"].text
    for key in ["ln_1", "attention", "mlp"]:
        check_strips(driver, stages[key], rows_of(db, panel_sql(driver, f'.card.stage[data-stage="{key}"]')))
    driver.get(f"{server}#attention/{run}")
    wait(driver, lambda d: css(d, "#large details.sql"), 120)
    labels = [e.text for e in css(driver, "#heads .label")][:4]
    assert labels == ["head 0 · kv 0", "head 1 · kv 0", "head 2 · kv 1", "head 3 · kv 1"]


def test_the_walkthrough_opens_each_stage_and_names_its_file(server, browser, sampled_run):
    """Each chapter, in plain words, shows the stage it talks about (drawn from the run's query) and
    names the sql/ file that computes it; its link opens that stage in the inside view."""
    import urllib.request

    driver = browser
    driver.get(f"{server}#run/{sampled_run}")                # the walkthrough follows the run in view
    wait(driver, lambda d: css(d, ".tokens .tok"))
    expected = ["tokens", "embedding", "ln_1", "attention", "projection", "mlp", "ln_f", "sampling", "lens"]
    for n, stage in enumerate(expected, start=1):
        driver.get(f"{server}#tour/{n}")
        wait(driver, lambda d: css(d, f'.card.stage[data-stage="{stage}"] details.sql'), 120)
        assert not css(driver, ".error:not(:empty)"), (n, css(driver, ".error")[0].text)
        text = driver.find_element("id", "chapter-text").text
        assert len(text.split()) >= 25 and "--" not in text
        link = driver.find_element("css selector", "#chapter-sql a[href^='/sql/']").get_attribute("href")
        card_link = css(driver, f'.card.stage[data-stage="{stage}"] h2 a')[0].get_attribute("href")
        assert link == card_link and "CREATE" in urllib.request.urlopen(link).read().decode()
        opened = driver.find_element("id", "open-view").get_attribute("href")
        assert f"#inside/{sampled_run}/" in opened and opened.endswith(f"/{stage}")
    driver.find_element("id", "open-view").click()
    wait(driver, lambda d: css(d, '.card.stage[data-stage="lens"] details.sql'), 120)
    assert "#inside/" in driver.current_url


# --------------------------------------------------------------------------------- the bugs
def blocked(db, holder) -> bool:
    return db.execute("select count(*) from pg_stat_activity where %s = any(pg_blocking_pids(pid))",
                      [holder.info.backend_pid]).fetchone()[0] > 0


def test_a_slow_view_never_replaces_the_one_opened_after_it(server, browser, database, db, sampled_run):
    """The lens waits (its rows locked); Runs is opened meanwhile and shows; when the lens's query
    could go on, the runs table stays (before: the lens replaced it under #runs). The same for the
    Generate form (its models list locked) and a step opened before it came."""
    driver, run = browser, sampled_run
    driver.get(f"{server}#runs")
    wait(driver, lambda d: css(d, "#runs"))
    holder = database.connect(autocommit=False)
    try:
        holder.execute("lock gptsql.residual in access exclusive mode")
        driver.get(f"{server}#lens/{run}")
        assert wait_for(lambda: blocked(db, holder), 60), "the lens never asked"
        css(driver, '#nav a[data-view="runs"]')[0].click()
        wait(driver, lambda d: css(d, "#runs"))
    finally:
        holder.close()
    # The lens's query can go on now (on tiny it answers in well under a second): it must not show.
    assert not wait_for(lambda: css(driver, "#lens"), 5), "the lens came back over the runs"
    assert driver.current_url.endswith("#runs") and css(driver, "#runs")

    holder = database.connect(autocommit=False)
    try:
        holder.execute("lock gptsql.wpe in access exclusive mode")   # the models list sums every table's rows
        driver.get("about:blank")                                     # a new page: no form kept from before
        driver.get(f"{server}#generate")
        assert wait_for(lambda: blocked(db, holder), 60), "the form never asked for the models"
        driver.execute_script(f"location.hash = '#step/{run}/1'")
        wait(driver, lambda d: css(d, "#bars .p-at-t"))
    finally:
        holder.close()
    assert not wait_for(lambda: css(driver, "#generate-form"), 5), "the form came back over the step"
    assert css(driver, "#bars .p-at-t")


def test_the_step_tab_opens_a_step_the_current_run_has(server, browser, tiny):
    """Step 5 of a run, then a 2-token run: the Step tab opens step 1 of the new run (before: its
    step 5, "run N has no step 5")."""
    driver = browser
    first = generate(driver, server, tiny, max_tokens=5, temperature=0)
    driver.execute_script(f"location.hash = '#step/{first}/5'")
    wait(driver, lambda d: css(d, "#bars .p-at-t"))
    css(driver, '#nav a[data-view="generate"]')[0].click()     # in the same page, as a user goes on
    wait(driver, lambda d: css(d, "#max_tokens"))
    css(driver, "#max_tokens")[0].clear()
    css(driver, "#max_tokens")[0].send_keys("2")
    css(driver, "#go")[0].click()
    wait(driver, lambda d: "done" in css(d, "#gen-status")[0].text)
    second = int(css(driver, "#current-run a")[0].text.lstrip("#"))
    assert second != first
    css(driver, '#nav a[data-view="step"]')[0].click()
    wait(driver, lambda d: css(d, "#bars .p-at-t") or css(d, ".error:not(:empty)"))
    assert not css(driver, ".error:not(:empty)"), css(driver, ".error")[0].text
    assert driver.current_url.endswith(f"#step/{second}/1")


def test_a_token_clicked_while_streaming_opens_its_step_and_the_run_goes_on(server, browser, database, db, tiny):
    """A generation held at its second step (a lock on gptsql.step_logit); its first token is
    clicked: the step opens, and once the lock goes the run ends done with every token (before:
    the click stopped it, interrupted)."""
    driver = browser
    open_form(driver, server, tiny)
    for name, value in {"max_tokens": "12", "temperature": "0"}.items():
        css(driver, f"#{name}")[0].clear()
        css(driver, f"#{name}")[0].send_keys(value)
    holder = database.connect(autocommit=False)
    try:
        holder.execute("lock gptsql.step_logit in exclusive mode")
        css(driver, "#go")[0].click()
        assert wait_for(lambda: blocked(db, holder), 60)
        holder.commit()
        holder.execute("lock gptsql.step_logit in exclusive mode")
        assert wait_for(lambda: blocked(db, holder), 60)
        wait(driver, lambda d: len(css(d, "#tokens .tok")) == 1)
        run = int(css(driver, "#current-run a")[0].text.lstrip("#"))
        css(driver, "#tokens .tok")[0].click()
        wait(driver, lambda d: css(d, "#bars .p-at-t"))
        assert driver.current_url.endswith(f"#step/{run}/1")
        said = [e.text for e in css(driver, "#live")]       # the header says it goes on
    finally:
        holder.close()
    status = lambda: db.execute("select status, generated_tokens from gptsql.runs where run = %s", [run]).fetchone()  # noqa: E731
    assert wait_for(lambda: status()[0] != "running", 120)
    assert status() == ("done", 12)
    assert said and f"run {run}" in said[0], said
    driver.get(f"{server}#generate")                         # the generation's view, as it was left
    wait(driver, lambda d: css(d, "#gen-status") and "done" in css(d, "#gen-status")[0].text)


def own_server(backend):
    """A `gptsql serve` of this test's own (to be stopped): (process, its address)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gptsql", "serve", "--port", str(port)], env=cli_env(backend),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("gptsql explorer at")
    return proc, f"http://127.0.0.1:{port}/"


def test_with_the_server_stopped_the_page_says_so(backend, browser, tiny):
    """gptsql serve stops under an open page: Generate and every panel say, in the page's words,
    that the server does not answer (before: "Failed to fetch", and Generate stayed at
    "starting…")."""
    driver = browser
    proc, address = own_server(backend)
    try:
        open_form(driver, address, tiny)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    css(driver, "#go")[0].click()
    wait(driver, lambda d: css(d, "#error")[0].text)
    assert css(driver, "#error")[0].text.startswith("the explorer's server does not answer: is gptsql serve still running?")
    assert css(driver, "#gen-status")[0].text == ""
    driver.execute_script("location.hash = '#runs'")
    wait(driver, lambda d: css(d, ".error:not(:empty)"))
    assert "does not answer" in css(driver, ".error")[0].text and "Failed to fetch" not in driver.page_source


def test_ctrl_c_stops_a_streaming_generation_at_once(backend, browser, database, db, tiny):
    """Ctrl-C on gptsql serve while a generation is held mid-step (a lock): the server exits at once,
    the lock still held, and the run is marked interrupted (before: it waited for the generation's
    end, here forever)."""
    import time

    driver = browser
    proc, address = own_server(backend)
    holder = database.connect(autocommit=False)
    try:
        open_form(driver, address, tiny)
        for name, value in {"max_tokens": "100", "temperature": "0"}.items():
            css(driver, f"#{name}")[0].clear()
            css(driver, f"#{name}")[0].send_keys(value)
        holder.execute("lock gptsql.step_logit in exclusive mode")
        css(driver, "#go")[0].click()
        assert wait_for(lambda: blocked(db, holder), 60)
        run = db.execute("select max(id) from gptsql.run where model_id = gptsql.model_id(%s)", [tiny]).fetchone()[0]
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        assert time.monotonic() - started < 20
        assert db.execute("select status from gptsql.run where id = %s", [run]).fetchone()[0] == "interrupted"
        wait(driver, lambda d: css(d, "#error")[0].text)
        assert "stopped" in css(driver, "#error")[0].text or "lost" in css(driver, "#error")[0].text
    finally:
        holder.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_errors_say_the_pages_controls_not_the_clis_flags(server, browser, db, tiny):
    """A prompt too long for the context window: the error names the page's box, not --truncate
    left; ticked, the box keeps the prompt's end. A run without records: no --no-record either."""
    driver = browser
    open_form(driver, server, tiny)
    long_prompt = "one two three four five six seven eight nine ten " * 20          # ~200 tokens > 128
    driver.execute_script("document.getElementById('prompt').value = arguments[0]", long_prompt)
    css(driver, "#max_tokens")[0].clear()
    css(driver, "#max_tokens")[0].send_keys("4")
    css(driver, "#go")[0].click()
    wait(driver, lambda d: css(d, "#error")[0].text)
    shown = css(driver, "#error")[0].text
    assert "--" not in shown and "Keep the end of a long prompt" in shown, shown
    css(driver, "#truncate")[0].click()
    css(driver, "#go")[0].click()
    wait(driver, lambda d: "done" in css(d, "#gen-status")[0].text or css(d, "#error")[0].text)
    assert not css(driver, "#error")[0].text
    run = int(css(driver, "#current-run a")[0].text.lstrip("#"))
    assert db.execute("select prompt_tokens from gptsql.runs where run = %s", [run]).fetchone()[0] == 124
    db.execute("select gptsql.generate('Hello', 2, model => %s, record => false)", [tiny])
    bare = db.execute("select max(id) from gptsql.run").fetchone()[0]
    driver.get(f"{server}#inside/{bare}")
    wait(driver, lambda d: css(d, ".error:not(:empty)"))
    shown = css(driver, ".error")[0].text
    assert "kept no activations" in shown and "--" not in shown, shown


# ------------------------------------------------------------------------- 400 px, keyboard
@pytest.fixture
def narrow(browser):
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 400, "height": 800, "deviceScaleFactor": 1, "mobile": True})
    yield browser
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_every_view_fits_400_pixels(server, narrow, sampled_run, tiny):
    """At 400 px wide the header is one short line (before: a third of the screen) and nothing runs
    off the side (before: the form did); wide things scroll inside their own box."""
    driver, run = narrow, sampled_run
    views = {"#generate": "#go", f"#step/{run}/1": "#cut details.sql", f"#inside/{run}/3/1/2": ".card.stage details.sql",
             f"#attention/{run}": "#large details.sql", f"#lens/{run}": "#norms", "#tour/4": ".card.stage details.sql",
             f"#model/{tiny}": "#flow", "#runs": "#runs", f"#run/{run}": ".tokens"}
    for view, ready in views.items():
        driver.get(f"{server}{view}")
        # every card of the view drawn (the inside view's ten stages, the MLP's table among them)
        count = 10 if view.startswith("#inside") else 1
        wait(driver, lambda d: len(css(d, ready)) >= count, 120)
        header, width, inner = driver.execute_script(
            "return [document.querySelector('header').getBoundingClientRect().height, "
            "document.documentElement.scrollWidth, window.innerWidth]")
        assert inner == 400 and header <= 60, (view, header)
        assert width <= inner, f"{view}: the page is {width} px wide"
    driver.get(f"{server}#generate")
    wait(driver, lambda d: css(d, "#go"))
    go = css(driver, "#go")[0].rect
    assert go["x"] + go["width"] <= 400


def tab_to(driver, selector: str, limit: int = 200):
    """Press Tab from the top of the page until `selector` has the focus; the focused element."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver.execute_script("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")
    for _ in range(limit):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        if driver.execute_script("return document.activeElement.matches(arguments[0])", selector):
            return driver.switch_to.active_element
    raise AssertionError(f"Tab never reached {selector}")


def test_tokens_thumbnails_and_lens_cells_from_the_keyboard(server, browser, sampled_run):
    """Tab reaches a token of the run (Enter opens its step), a head's thumbnail (arrow keys move,
    Enter opens it large) and a lens cell (Enter opens that place inside that block); before, none
    took the focus."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver, run = browser, sampled_run
    driver.get(f"{server}#run/{run}")
    wait(driver, lambda d: css(d, "#tokens .tok"))
    tab_to(driver, "#tokens .tok")
    ActionChains(driver).send_keys(Keys.ENTER).perform()
    wait(driver, lambda d: css(d, "#bars .p-at-t"))
    assert driver.current_url.endswith(f"#step/{run}/1")

    driver.get(f"{server}#attention/{run}")
    wait(driver, lambda d: css(d, "#head-map") and css(d, "#large details.sql"))
    tab_to(driver, "#heads canvas.thumb")
    ActionChains(driver).send_keys(Keys.ARROW_RIGHT, Keys.ARROW_DOWN, Keys.ENTER).perform()
    wait(driver, lambda d: "block 1, head 1" in d.find_element("id", "large").text)

    driver.get(f"{server}#lens/{run}")
    wait(driver, lambda d: css(d, "#lens-card details.sql"))
    cell = tab_to(driver, "#lens td")
    place, block = cell.get_attribute("data-place"), cell.get_attribute("data-block")
    ActionChains(driver).send_keys(Keys.ENTER).perform()
    wait(driver, lambda d: css(d, ".card.stage"))
    assert f"#inside/{run}/{place}/{block}/" in driver.current_url


def test_the_inside_panels_refuse_bad_addresses_in_one_line(server, sampled_run):
    """Every parameter of the inside panels is checked, refused in one line in the page's words."""
    run = sampled_run
    places = ask(server, f"/api/runs/{run}/inside")[1]["rows"][0][-1]
    bad = {f"/api/runs/{run}/inside/{places}/embedding": f"place must be between 0 and {places - 1}",
           f"/api/runs/{run}/inside/-1/embedding": "place must be between 0 and",
           f"/api/runs/{run}/inside/x/embedding": "place is a whole number, not 'x'",
           f"/api/runs/{run}/inside/0/norm/ln_3?block=0": "a norm is one of ln_1, ln_2, ln_f, not 'ln_3'",
           f"/api/runs/{run}/inside/0/norm/ln_1": "block is missing",
           f"/api/runs/{run}/inside/0/norm/ln_1?block=2": "block must be between 0 and 1",
           f"/api/runs/{run}/inside/0/attention/0/4": "head must be between 0 and 3",
           f"/api/runs/{run}/inside/0/mlp/9": "block must be between 0 and 1",
           f"/api/runs/{run}/inside/0/projection/-1": "block must be between 0 and 1",
           f"/api/runs/{run}/inside/0/sampling?temperature=nan": "Temperature: temperature must be a number >= 0",
           f"/api/runs/{run}/inside/0/sampling?top_p=2": "Top-p:",
           f"/api/runs/{run}/inside/0/sampling?top_k=-3": "Top-k:",
           f"/api/runs/{run}/inside/0/lens?first_block=1&last_block=0": "blocks must be between 0 and 1",
           f"/api/runs/{run}/attention?block=5": "block must be between 0 and 1",
           f"/api/runs/{run}/lens?block=7": "block must be between 0 and 1",
           "/api/runs/999999/inside": "there is no run 999999"}
    for path, needle in bad.items():
        status, answer = ask(server, path)
        assert status == 400 and needle in answer["error"], (path, status, answer)
        assert "\n" not in answer["error"] and "--" not in answer["error"], answer
    assert ask(server, f"/api/runs/{run}/inside/0/sampling?temperature=0&top_k=3&top_p=0.5")[0] == 200

"""Issue 14: the rough edges a new user hits off the documented paths. Every bad input is one line
(`Error: ...`, exit 1, no traceback); piped output carries whole values; the README and the CLI
agree."""
from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import psycopg
import pytest

PROMPT = "Happy New Year! I wish"


def one_line_error(result, *fragments):
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------- non-UTF-8 argv
@pytest.mark.parametrize("args", [
    ["generate", "-n", "2", b"Hello \xff\xfe world"],
    ["tokenize", b"Hello \xff\xfe world"],
    ["predict", b"Hello \xff\xfe world"],
    ["generate", "-m", b"Hello \xff\xfe world", "hi"],
    ["load", "random:tiny", "--name", b"Hello \xff\xfe world"],
])
def test_arguments_that_are_not_utf8_are_one_line_naming_the_byte(tiny, run_cli, args):
    one_line_error(run_cli(*args, check=False), "not UTF-8", "byte 0xff at offset 6", r"Hello \xff\xfe world")


@pytest.mark.parametrize("name", ["GPTSQL_DSN", "GPTSQL_DATA_DIR", "GPTSQL_WORKERS"])
def test_environment_variables_that_are_not_utf8_are_one_line_naming_them(backend, tmp_path, name):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPTSQL_")}
    env.update(backend[1])
    env[name] = os.fsencode(tmp_path) + b"/x\xff\xfe" if name == "GPTSQL_DATA_DIR" else b"x\xff\xfe"
    result = subprocess.run([sys.executable, "-m", "gptsql", "generate", "-n", "1", "hi"], capture_output=True,
                            text=True, env=env, timeout=120)
    one_line_error(result, f"environment variable {name}", "not UTF-8", "byte 0xff at offset")
    assert list(tmp_path.iterdir()) == []            # refused before anything ran: no data directory made


# ------------------------------------------------------------------------- markup in the data
@pytest.fixture
def markup_model(db, tiny_checkpoint):
    from gptsql.loader.load import load

    name = "[bold]:smile:[i]"       # markup would take the brackets away ('/' is not in a model name)
    load(db, tiny_checkpoint, name)
    yield name
    db.execute("select gptsql.drop_model(%s)", [name])   # later tests take the newest model by default


def test_names_and_prompts_are_data_not_markup(markup_model, run_cli):
    prompt = "[bold]x[/i] :smile:"
    run_cli("generate", "-m", markup_model, "-n", "2", "-t", "0", prompt)
    for args in (["models"], ["runs", "list"], ["runs", "show"], ["trace", "--run", "latest"]):
        result = run_cli(*args)
        assert markup_model in result.stdout, args
    assert prompt in run_cli("runs", "show").stdout


def at_a_terminal(backend, *args, columns: int = 120):
    """The CLI at a terminal (a pty, through script(1)), as a person runs it; colours and cursor moves
    taken out of what it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPTSQL_")}
    env.update(backend[1], COLUMNS=str(columns))
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "gptsql", *args])
    result = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True, text=True, env=env,
                            timeout=300)
    result.stdout = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stdout).replace("\r", "")
    return result


def test_at_a_terminal_names_and_prompts_are_data_not_markup(db, backend, run_cli):
    """Rich reads '[/bold]' as markup unless told not to: at a terminal (tables, the load's bar) a
    model so named crashed with MarkupError."""
    name = "[bold]:smile:[red]"     # markup would take the brackets away ('/' is not in a model name)
    loaded = at_a_terminal(backend, "load", "random:tiny", "--name", name)        # its progress bar names it
    try:
        assert loaded.returncode == 0 and "Traceback" not in loaded.stdout, loaded.stdout
        assert f"loaded {name} (" in loaded.stdout
        prompt = "[bold]x[/i] :smile:"
        run_cli("generate", "-m", name, "-n", "2", "-t", "0", prompt)
        run_id = str(db.execute("select gptsql.latest_run()").fetchone()[0])
        for args in (["models"], ["runs", "list"], ["runs", "show", run_id], ["trace", "--run", run_id],
                     ["check", "-m", name, "--tokens", "1"]):
            result = at_a_terminal(backend, *args)
            assert result.returncode == 0 and "Traceback" not in result.stdout, (args, result.stdout)
            assert name in result.stdout, (args, result.stdout)
            if args[0] != "models" and args[0] != "check":
                assert prompt in result.stdout, (args, result.stdout)
    finally:
        db.execute("select gptsql.drop_model(%s)", [name])


# ------------------------------------------------------------------------ bad option values
def test_bench_contexts_must_be_numbers(run_cli):
    one_line_error(run_cli("bench", "--contexts", "abc", check=False), "--contexts", "'abc'")


@pytest.mark.parametrize("out, says", [("/proc/a.png", "cannot write '/proc/a.png'"),
                                       ("/nonexistent-14/dir/x.png", "'/nonexistent-14/dir' does not exist")])
def test_pictures_say_where_they_cannot_be_written(db, tiny, run_cli, out, says):
    runs = db.execute("select count(*) from gptsql.run").fetchone()[0]
    for command in ("attention", "lens"):
        one_line_error(run_cli(command, "-m", tiny, PROMPT, "--out", out, check=False), says)
    assert not os.path.exists("/nonexistent-14")      # no folders made, even as root
    assert db.execute("select count(*) from gptsql.run").fetchone()[0] == runs     # said before the prompt ran


@pytest.mark.parametrize("args, value", [
    (["generate", "-n", "2147483648", "hi"], "2147483648"),
    (["generate", "--top-k", "99999999999", "hi"], "99999999999"),
    (["detokenize", "99999999999"], "99999999999"),
    (["generate", "--seed", str(2**63), "hi"], str(2**63)),
    (["runs", "drop", str(2**63)], str(2**63)),
    (["check", "--tokens", "2147483648"], "2147483648"),
    (["generate", "--workers", "99999999999", "hi"], "99999999999"),     # refused before a run is started
])
def test_integers_past_their_sql_type_name_the_value_and_range(tiny, run_cli, args, value):
    one_line_error(run_cli(*args, check=False), value, "is not in the range")


def test_a_seed_is_an_integer(tiny, run_cli):
    one_line_error(run_cli("generate", "--seed", "1.5", "hi", check=False), "'1.5' is not a valid integer")


# ------------------------------------------------------------- several tokens in a later step
def test_a_step_fed_several_tokens_records_them(db, tiny, run_cli):
    run_id, _, tokens, _ = db.execute("select * from gptsql.start_run(%s, %s, 5)", [tiny, PROMPT]).fetchone()
    first = db.execute("select token from gptsql.step(%s, %s, 0)", [run_id, tokens]).fetchone()[0]
    fed = [first, 11, 22]
    db.execute("select * from gptsql.step(%s, %s, %s)", [run_id, fed, len(tokens)])
    db.execute("select gptsql.finish_run(%s)", [run_id])
    recorded = db.execute("select token, is_prompt, probability is null from gptsql.run_tokens "
                          "where run = %s order by place", [run_id]).fetchall()
    assert [t for t, *_ in recorded] == tokens + fed + [recorded[-1][0]]
    assert [(p, none) for _, p, none in recorded[len(tokens) + 1:-1]] == [(False, True)] * 2   # fed, not chosen
    for command in (["attention", "--run", str(run_id), "--out", "/tmp/gq-14-attention.png"],
                    ["lens", "--run", str(run_id), "--out", "/tmp/gq-14-lens.png"]):
        assert f"of run {run_id}" in run_cli(*command).stdout
    trace = run_cli("trace", "--run", str(run_id)).stdout
    assert "after None" not in trace
    assert len(re.findall(r"│ fed\s+│", run_cli("runs", "show", str(run_id)).stdout)) == 2


# ------------------------------------------------------------------------- piped output whole
def test_piped_models_and_runs_list_print_whole_values(db, tiny_checkpoint, run_cli):
    from gptsql.loader.load import load

    name = "random-tiny-with-a-long-name-that-tables-used-to-cut"
    load(db, tiny_checkpoint, name)
    try:
        prompt = "A prompt long enough that a table at eighty columns would cut it short: " + "word " * 12
        run_cli("generate", "-m", name, "-n", "2", "-t", "0", prompt)
        models = run_cli("models").stdout.splitlines()
        assert models[0].split("\t")[:2] == ["name", "source"]
        assert any(line.split("\t")[0] == name for line in models)
        runs = run_cli("runs", "list").stdout.splitlines()
        header, newest = runs[0].split("\t"), dict(zip(runs[0].split("\t"), runs[1].split("\t")))
        assert "prompt" in header and newest["model"] == name and newest["prompt"] == prompt
    finally:
        db.execute("select gptsql.drop_model(%s)", [name])


def test_piped_runs_show_trace_and_predict_print_whole_pieces_and_text(db, tiny, run_cli, monkeypatch):
    """Piped, rich drew at 80 columns: a 64-character piece became '===============…' and the text
    wrapped, so a grep for a phrase across the wrap found nothing."""
    monkeypatch.delenv("COLUMNS", raising=False)
    long_piece = "=" * 64                       # one GPT-2 token
    prompt = f"{long_piece} and a prompt long enough to pass eighty columns, which a grep wants whole: {long_piece}"
    run_cli("generate", "-m", tiny, "-n", "2", "-t", "0", prompt)
    run_id, text = db.execute("select run, prompt || generated_text from gptsql.runs "
                              "where run = gptsql.latest_run()").fetchone()
    for args in (["runs", "show", str(run_id)], ["trace", "--run", str(run_id)]):
        out = run_cli(*args).stdout
        assert "…" not in out, (args, out)
        assert text in out.splitlines() or any(line.endswith(text) for line in out.splitlines()), (args, out)
    assert repr(long_piece) in run_cli("runs", "show", str(run_id)).stdout
    out = run_cli("predict", "-m", tiny, "--top", "50", "--workers", "1", long_piece).stdout
    assert "…" not in out, out


@pytest.mark.parametrize("width", [120, 80, 50, 40])
def test_models_at_a_narrow_terminal_keep_every_value_whole(width):
    """Names never cut; nor the other values: at 50 columns the source, shape and size were cropped
    to 8 characters a line ('random:t')."""
    from rich.console import Console

    from gptsql.cli.main import print_models

    name = "random-tiny-with-a-long-name-that-tables-cut"
    rows = [[name, "/a/rather/long/directory/path/of/a/checkpoint", "12", "768", "12", "1024", "124.4M", "488 MB"],
            ["gpt2", "gpt2", "12", "768", "12", "1024", "124.4M", "488 MB"]]
    buffer = io.StringIO()
    print_models(Console(file=buffer, width=width, force_terminal=True, color_system=None, markup=False),
                 ["name", "source", "layers", "width", "heads", "context", "params", "size"], rows)
    shown = buffer.getvalue()
    lines = shown.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "…" not in shown
    flat = re.sub(r"\s+", "", shown)
    for row in rows:                   # every value is there, whole (wrapped lines joined)
        for value in row:
            assert re.sub(r"\s+", "", value) in flat, (value, shown)


@pytest.mark.parametrize("fontsize", [11, 12])
def test_a_long_subtitle_is_cut_to_the_picture_width_keeping_its_start(fontsize):
    from gptsql.plots.figures import _heading, _pyplot

    fig = _pyplot().figure(figsize=(6, 3))
    subtitle = "run 42, random-tiny: " + "WWW mmm 000 " * 40
    _heading(fig, "attention, block 0", subtitle, fontsize)
    heading = fig._suptitle
    assert heading.get_window_extent(fig.canvas.get_renderer()).width <= fig.bbox.width
    assert heading.get_text().split("\n")[1].startswith("run 42, random-tiny: ")
    assert heading.get_text().endswith("…")
    _pyplot().close(fig)


@pytest.mark.parametrize("width", [80, 120])
def test_runs_list_at_a_terminal_keeps_model_names_and_run_ids_whole(width):
    import datetime

    from rich.console import Console

    from gptsql.cli.runs import print_runs

    name = "random-tiny-with-a-really-long-name-that-tables-would-cut[/bold]"
    row = dict(run=123456, model=name, status="done", recorded=True, kind="generate",
               started_at=datetime.datetime.now(datetime.timezone.utc), prompt_tokens=4, generated_tokens=20,
               decode_ms_per_token=93.0, prompt="Once upon a time", generated_text=" there was a table")
    buffer = io.StringIO()
    print_runs(Console(file=buffer, width=width, force_terminal=True, color_system=None, markup=False), [row])
    shown = buffer.getvalue()
    assert name in shown and "123456" in shown and "done" in shown and "Once upon a time" in shown
    assert max(len(line) for line in shown.splitlines()) <= width


# --------------------------------------------------------------------- partial UTF-8 pieces
def test_tokenize_shows_the_bytes_of_partial_characters(tiny, run_cli):
    import tiktoken

    from helpers import PATTERN, gpt2_ranks       # tiktoken on the same vocabulary files, offline

    text = "你好，世界。我们在数据库里运行语言模型"
    enc = tiktoken.Encoding(name="gpt2_local", pat_str=PATTERN, mergeable_ranks=gpt2_ranks(), special_tokens={})
    shown = [line.split("\t", 1)[1] for line in run_cli("tokenize", "-m", tiny, text).stdout.splitlines()]
    expected = []
    for token in enc.encode(text):
        raw = enc.decode_single_token_bytes(token)
        try:
            expected.append(repr(raw.decode("utf-8")))
        except UnicodeDecodeError:
            expected.append(None)
    assert len(shown) == len(expected)
    assert "�" not in "".join(shown)
    for got, want, token in zip(shown, expected, enc.encode(text)):
        raw = enc.decode_single_token_bytes(token)
        if want is None:
            assert re.fullmatch(r"'[^']*<[0-9a-f]{2}( [0-9a-f]{2})*>[^']*'", got), got
            for b in raw:
                if b >= 0x80:
                    assert f"{b:02x}" in got, (got, raw)
        else:
            assert got == want


def test_predict_trace_and_runs_show_show_the_bytes_of_partial_characters(tiny, run_cli, monkeypatch):
    """Candidates and pieces that are part of a character print as <xx xx>, never as U+FFFD."""
    monkeypatch.setenv("COLUMNS", "250")
    partial = re.compile(r"'[^'\n]*<[0-9a-f]{2}( [0-9a-f]{2})*>[^'\n]*'")
    text = "你好，世界"
    for args in (["predict", "-m", tiny, "--workers", "1", "--top", "300", text],   # 300 candidates: some are partial
                 ["runs", "show", "latest"],
                 ["trace", "-m", tiny, "-n", "2", "--workers", "1", text]):          # 界's pieces: the "after" column
        out = run_cli(*args).stdout
        assert "\ufffd" not in out, (args, out)
        assert partial.search(out), (args, out)


def test_pictures_of_characters_the_font_lacks_print_no_warnings(tiny, run_cli, tmp_path):
    """DejaVu Sans has no CJK: matplotlib warned once per missing glyph on stderr (five lines for
    '你好，世界' in the subtitle); the picture draws boxes and the command prints its one line."""
    for command in ("lens", "attention"):
        result = run_cli(command, "-m", tiny, "-n", "1", "你好，世界", "--out", str(tmp_path / f"{command}.png"))
        assert result.stderr == "", result.stderr
        assert result.stdout.startswith("wrote ") and len(result.stdout.splitlines()) == 1, result.stdout


def test_the_lens_picture_shows_partial_characters_as_bytes(db, tiny, run_cli, tmp_path, monkeypatch):
    """Its axes (the run's pieces) and its cells (each block's top token) alike."""
    from gptsql.cli.runs import draw_lens
    from gptsql.plots import figures

    run_cli("generate", "-m", tiny, "-n", "1", "-t", "0", "你好，世界")
    run_id = db.execute("select gptsql.latest_run()").fetchone()[0]
    drawn = {}
    real = figures.lens
    monkeypatch.setattr(figures, "lens", lambda *args, **kw: drawn.update(args=args) or real(*args, **kw))
    draw_lens(db, run_id, tmp_path / "lens.png")
    labels, next_labels, top = drawn["args"][:3]
    shown = [*labels, *filter(None, next_labels), *(t for row in top for t in row)]
    assert not any("\ufffd" in text for text in shown), shown
    partial = re.compile(r"<[0-9a-f]{2}( [0-9a-f]{2})*>")
    assert any(partial.search(t) for t in labels) and any(partial.search(t) for row in top for t in row), shown


def test_readable_pieces():
    from gptsql.service.text import readable

    assert readable(b"\xe4\xbd") == "<e4 bd>"
    assert readable(b" \xe4") == " <e4>"
    assert readable("中".encode()) == "中"
    assert readable(b"a><b>c") == "a><b>c"
    assert readable(b"x\xe4\xbdy") == "x<e4 bd>y"


def test_picture_labels_show_spaces_but_not_inside_a_partial_characters_bytes():
    from gptsql.plots.figures import shown

    assert shown(" <f0 9f 91>") == "␣<f0 9f 91>"
    assert shown("a b\n") == "a␣b↵"


# --------------------------------------------------------------------------- README vs CLI
def test_generate_prints_the_prompt_unless_no_prompt(db, tiny, run_cli):
    with_prompt = run_cli("generate", "-m", tiny, "-n", "3", "-t", "0", PROMPT).stdout
    only = run_cli("generate", "-m", tiny, "-n", "3", "-t", "0", "--no-prompt", PROMPT).stdout
    sql = db.execute("select gptsql.generate(%s, 3, model => %s)", [PROMPT, tiny]).fetchone()[0]
    assert with_prompt == PROMPT + sql + "\n"
    assert only == sql + "\n"


def test_latest_means_the_same_in_sql_and_the_cli(db, tiny, run_cli):
    run_cli("generate", "-m", tiny, "-n", "1", "-t", "0", PROMPT)
    run_cli("predict", "-m", tiny, "I wish you a happy New")
    latest = db.execute("select gptsql.latest_run()").fetchone()[0]
    assert re.search(rf"^run\s+{latest}\b", run_cli("runs", "show", "latest").stdout, re.M)
    assert db.execute("select kind from gptsql.run where id = %s", [latest]).fetchone()[0] == "predict"


def test_runs_drop_with_a_missing_id_drops_nothing_and_says_so(db, tiny, run_cli):
    run_cli("generate", "-m", tiny, "-n", "1", "-t", "0", PROMPT)
    real = db.execute("select max(id) from gptsql.run").fetchone()[0]
    one_line_error(run_cli("runs", "drop", str(real), str(real + 1000), check=False),
                   f"no run {real + 1000}", "nothing was dropped")
    assert db.execute("select exists (select from gptsql.run where id = %s)", [real]).fetchone()[0]


@pytest.mark.parametrize("age", ["99999999d", "99999999999999999999d", "9999999999w"])
def test_runs_drop_older_than_an_age_past_postgresqls_dates_drops_nothing(db, tiny, run_cli, age):
    """'timestamp out of range' / 'interval field value out of range' from the server: no run is
    older than PostgreSQL's dates go (4713 BC), so there is nothing to drop."""
    run_cli("generate", "-m", tiny, "-n", "1", "-t", "0", PROMPT)
    result = run_cli("runs", "drop", "--older-than", age)
    assert result.stdout.strip() == f"no finished runs older than {age}" and result.stderr == "", result
    assert db.execute("select count(*) from gptsql.run").fetchone()[0] > 0


def test_seeds_are_bigints_end_to_end(db, tiny, run_cli):
    def sample(seed):
        return run_cli("generate", "-m", tiny, "-n", "8", "-t", "2", "--seed", str(seed), "--no-prompt", PROMPT).stdout

    big = 123456789012345678               # 2^53 < big: float8 seeds made big and big + 1 the same
    assert sample(big) != sample(big + 1)
    assert db.execute("select seed from gptsql.runs where run = gptsql.latest_run()").fetchone()[0] == big + 1
    assert db.execute("select format_type(atttypid, null) from pg_attribute "
                      "where attrelid = 'gptsql.run'::regclass and attname = 'seed'").fetchone()[0] == "bigint"
    assert db.execute("select gptsql.generate(%s, 8, 2, seed => %s, model => %s)",
                      [PROMPT, big, tiny]).fetchone()[0] + "\n" == sample(big)
    signatures = db.execute("select proname, pg_get_function_arguments(oid) from pg_proc "
                            "where proname in ('start_run', 'generate', 'uniform') "
                            "and pronamespace = 'gptsql'::regnamespace").fetchall()
    assert sorted(name for name, _ in signatures) == ["generate", "start_run", "uniform"]   # old ones dropped
    assert all("seed bigint" in args for _, args in signatures), signatures


def test_the_interrupted_count_is_what_the_run_recorded(db, tiny):
    from gptsql.driver.generation import Generation

    gen = Generation(db, tiny, PROMPT, 5)
    gen.step(list(gen.prompt_tokens), 0)      # a step committed whose token never reached the loop
    assert gen.generated == 0 and gen.recorded() == 1
    gen.stop("interrupted")


def test_check_with_no_tokens_compares_the_logits_only(tiny, run_cli):
    out = run_cli("check", "-m", tiny, "--tokens", "0").stdout
    assert "greedy SQL [] vs numpy []: same" in out


def test_check_reports_progress(db, tiny):
    from gptsql.reference.check import check_model

    seen = []
    check_model(db, tiny, PROMPT, 2, lambda stage, done, total: seen.append((stage, done, total)))
    stages = [s for s, *_ in seen]
    assert "reading the weights" in stages and any(s.startswith("SQL") for s in stages) and stages[-1] == "done"
    assert all(0 <= done <= total for _, done, total in seen)


def test_check_shows_its_progress_at_a_terminal_only(tiny, backend, run_cli):
    """The 124M shape's check said nothing for 26 s: at a terminal a bar names the stage."""
    shown = at_a_terminal(backend, "check", "-m", tiny, "--tokens", "2")
    assert shown.returncode == 0, shown.stdout
    assert "check: done" in shown.stdout and "greedy SQL" in shown.stdout, shown.stdout
    piped = run_cli("check", "-m", tiny, "--tokens", "2")
    assert piped.stderr == "" and piped.stdout.startswith(f"model {tiny}: "), piped


def test_one_token_is_singular_and_the_hint_fits_the_options(tiny, run_cli):
    one_line_error(run_cli("generate", "-m", tiny, "-n", "200", "x", check=False), "the prompt (1 token) plus")
    line = one_line_error(run_cli("generate", "-m", tiny, "-n", "128", "--truncate", "left", "x", check=False),
                          "leaves no room")
    assert "--truncate left" not in line


def test_generate_with_a_null_option_names_it_without_the_prompt(db, tiny):
    secret = "a prompt that must not be echoed back"
    with pytest.raises(psycopg.Error) as err:
        db.execute("select gptsql.generate(%s, 2, record => NULL, model => %s)", [secret, tiny])
    assert err.value.diag.message_primary == "record is NULL"
    assert err.value.diag.message_hint and secret not in str(err.value) + (err.value.diag.message_detail or "")


# ------------------------------------------------------------------------ pictures at length
def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_a_200_token_attention_map_stays_readable(tmp_path):
    from gptsql.plots import figures

    n = 200
    labels = [f" w{i}" for i in range(n)]
    weights = np.tril(np.full((n, n), 1.0 / n))
    weights[np.triu_indices(n, 1)] = np.nan
    one = figures.attention(labels, {0: weights}, 0, tmp_path / "one.png", "t")
    grid = figures.attention(labels, {h: weights for h in range(12)}, 0, tmp_path / "grid.png", "t")
    assert png_size(one.path) == (one.width, one.height)
    assert one.width <= (figures.MAX_SIDE + 1.2) * figures.DPI and one.height <= (figures.MAX_SIDE + 0.8) * figures.DPI
    assert grid.width <= (figures.MAX_WIDTH + 0.4) * figures.DPI
    for picture in (one, grid):
        panel = picture.panels[0]
        assert panel.label_size >= figures.MIN_FONT and len(panel.xlabels) == n
        step = panel.ticks[1] - panel.ticks[0]
        inches_per_label = (one.width / figures.DPI) * 0.7 * step / n if picture is one else None
        assert 1 < len(panel.ticks) < n and panel.ticks == list(range(0, n, step))
        if inches_per_label:                 # labels do not overlap: each has at least its own height
            assert inches_per_label * 72 >= panel.label_size


def test_a_200_place_lens_wraps_into_rows(tmp_path):
    from gptsql.plots import figures

    n, blocks = 200, 12
    labels = [f" w{i}" for i in range(n)]
    top = [[f" t{b}.{p}" for p in range(n)] for b in range(blocks)]
    p = np.random.default_rng(0).random((blocks, n))
    picture = figures.lens(labels, labels[1:] + [None], top, p, p > 0.9, tmp_path / "lens.png", "t")
    assert len(picture.panels) == 5 and all(len(panel.xlabels) == 40 for panel in picture.panels)
    assert [panel.first for panel in picture.panels] == [0, 40, 80, 120, 160]
    assert all(panel.label_size >= figures.MIN_FONT for panel in picture.panels)
    assert picture.width <= 40 * 0.8 * figures.DPI + 250
    assert np.allclose(np.hstack([panel.values for panel in picture.panels]), p)


def test_pictures_draw_a_window_of_places(db, tiny, run_cli, tmp_path):
    run_cli("generate", "-m", tiny, "-n", "6", "-t", "0", PROMPT)
    run_id = db.execute("select gptsql.latest_run()").fetchone()[0]
    out = run_cli("attention", "--run", str(run_id), "--head", "1", "--places", "3:9", "-o", str(tmp_path / "a.png"))
    assert "places 3-8 of 11" in out.stdout and "6 tokens" in out.stdout
    from gptsql.cli.runs import draw_attention, draw_lens

    whole = draw_attention(db, run_id, 0, 1, tmp_path / "whole.png").panels[0]
    part = draw_attention(db, run_id, 0, 1, tmp_path / "part.png", "3:9").panels[0]
    assert part.xlabels == whole.xlabels[3:9] and part.first == 3
    assert np.allclose(part.values, whole.values[3:9, 3:9], equal_nan=True)
    raw = dict(db.execute("select place, weights from gptsql.attention_row where run_id = %s and block = 0 "
                          "and head = 1", [run_id]).fetchall())
    for q in range(3, 9):                    # the window's cells are the recorded weights of those places
        assert np.allclose(part.values[q - 3, :q - 2], raw[q][3:q + 1])
        assert np.isnan(part.values[q - 3, q - 2:]).all()
    lens_whole = draw_lens(db, run_id, tmp_path / "lw.png").panels[0]
    lens_part = draw_lens(db, run_id, tmp_path / "lp.png", "5:").panels[0]
    assert np.allclose(lens_part.values, lens_whole.values[:, 5:])
    for bad in ("9:3", "0:99", "x"):
        one_line_error(run_cli("lens", "--run", str(run_id), "--places", bad, "-o", str(tmp_path / "b.png"),
                               check=False), f"--places '{bad}'", "0 <= A < B <= 11")


def test_the_readme_step_candidates_query_always_shows_the_taken_token(db, tiny, run_cli):
    from helpers import readme_queries

    [query] = [q for q in readme_queries() if "gptsql.step_candidates" in q and "rank <= 5" in q]
    run_cli("generate", "-m", tiny, "-n", "8", "-t", "5", "--seed", "1", PROMPT)   # hot: ranks far below 5
    run_id = db.execute("select gptsql.latest_run()").fetchone()[0]
    taken = db.execute("select piece, rank from gptsql.run_tokens where run = %s and not is_prompt order by place",
                       [run_id]).fetchall()
    assert any(rank is None or rank > 5 for _, rank in taken)          # the case the old query lost
    answer = db.execute(query).fetchall()
    assert len(answer) == len(taken)
    for (step, _after, chosen, _top), (piece, rank) in zip(answer, taken):
        assert chosen.startswith(db.execute("select quote_literal(%s::text)", [piece]).fetchone()[0] + " ")
        assert f"(rank {rank if rank is not None else '> 10'})" in chosen



def test_the_utf8_check_names_lone_surrogates_too():
    from gptsql.cli.common import check_utf8
    from gptsql.errors import UserError

    with pytest.raises(UserError, match=r"lone surrogate \(U\+D800\)"):
        check_utf8(["fine", "a\ud800b"])
    check_utf8(["Hello, 世界", "-"])

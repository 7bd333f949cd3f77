"""One statement over several backends (sql/10_shares.sql): 1, 2 and 3 shares (3 divides neither the
4 heads nor the 4 MLP groups: uneven shares), from psql's SQL functions and from the CLI, against
one share and against transformers; greedy and sampled; the recorded run (tokens, top logits,
attention weights, residual stream) the same as one share records; and where other backends
cannot be had, one backend with one notice, never an error."""
from __future__ import annotations

import json
import re

import numpy as np
import psycopg
import pytest
import torch
from pgvector.psycopg import register_vector

from gptsql.driver.shares import start_generation, start_prediction

PROMPT = "Happy New Year! I wish"
MODEL = "hf-shares"


@pytest.fixture(scope="module")
def hf_model(hf_tiny, run_cli, db):
    directory, model = hf_tiny
    run_cli("load", str(directory), "--name", MODEL, "--dtype", "float32")
    register_vector(db)
    return model


def generate(database, conn, shares, n=6, model=MODEL, **sampling):
    gen = start_generation(database, conn, shares, model, PROMPT, n, record=True, **sampling)
    tokens = [token for token, _raw, _p in gen.steps()]
    return gen.run_id, gen.prompt_tokens, tokens


def sql_generate(conn, shares, n=6, **sampling):
    """select gptsql.generate(...) as psql runs it: (its run, the text)."""
    conn.execute("select set_config('gptsql.shares', %s, false)", [str(shares)])
    text = conn.execute("select gptsql.generate(%s, %s, model => %s, temperature => %s, top_k => %s, top_p => %s, "
                        "seed => %s)", [PROMPT, n, MODEL, sampling.get("temperature", 0), sampling.get("top_k", 0),
                                        sampling.get("top_p", 1), sampling.get("seed")]).fetchone()[0]
    return latest_run(conn, "generate"), text


def latest_run(db, kind):
    return db.execute("select max(id) from gptsql.run where kind = %s", [kind]).fetchone()[0]


def recorded(db, run_id):
    """Everything a run recorded, in a fixed order."""
    q = lambda sql: db.execute(sql, [run_id]).fetchall()  # noqa: E731
    return {
        "tokens": q("select place, token, probability, logit from gptsql.run_token where run_id = %s order by place"),
        "top": q("select place, rank, token, logit, probability from gptsql.step_logit where run_id = %s "
                 "order by place, rank"),
        "attention": q("select block, head, place, weights from gptsql.attention_row where run_id = %s "
                       "order by block, head, place"),
        "residual": q("select block, place, after_attention, after_mlp from gptsql.residual where run_id = %s "
                      "order by block, place"),
    }


def assert_same_record(got, want, tol=1e-4):
    for key in want:
        assert len(got[key]) == len(want[key]) > 0, key
        for a, b in zip(got[key], want[key]):
            for x, y in zip(a, b):
                if isinstance(y, (int, str)) and not isinstance(y, bool):
                    assert x == y, key
                elif y is None:
                    assert x is None, key
                else:
                    x, y = (v.to_numpy() if hasattr(v, "to_numpy") else v for v in (x, y))
                    assert np.abs(np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)).max() <= tol, key


def share_backends(conn):
    """The other backends this session has open for its shares."""
    return conn.execute("select coalesce(cardinality(dblink_get_connections()), 0)").fetchone()[0]


@pytest.mark.parametrize("shares", [1, 2, 3])
def test_shares_match_one_share_and_transformers(database, conn, hf_model, shares):
    one_id, prompt, one_tokens = generate(database, conn, 1, temperature=0)
    run_id, _, tokens = generate(database, conn, shares, temperature=0)
    assert tokens == one_tokens
    assert_same_record(recorded(conn, run_id), recorded(conn, one_id))

    with torch.no_grad():  # every step's ten best logits and probabilities against transformers'
        logits = hf_model(torch.tensor([prompt + tokens])).logits[0].double()
    probabilities = torch.softmax(logits, -1)
    rows = conn.execute("select place, token, logit, probability from gptsql.step_logit where run_id = %s",
                        [run_id]).fetchall()
    assert len(rows) == 10 * len(tokens)
    for place, token, logit, probability in rows:
        assert abs(logit - float(logits[place, token])) <= 1e-3
        assert abs(probability - float(probabilities[place, token])) <= 1e-4
    assert tokens == [int(logits[len(prompt) - 1 + i].argmax()) for i in range(len(tokens))]


@pytest.mark.parametrize("shares", [2, 3])
def test_psql_generate_runs_over_shares_and_records_the_same_run(conn, database, hf_model, shares):
    """select gptsql.generate(...) with SET gptsql.shares: the other backends do their shares (they
    are connected while it runs), and the run it records is one share's record."""
    one_id, one_text = sql_generate(conn, 1)
    run_id, text = sql_generate(conn, shares)
    assert text == one_text
    assert share_backends(conn) == shares - 1
    assert_same_record(recorded(conn, run_id), recorded(conn, one_id))


def test_psql_generate_in_an_open_transaction(conn, hf_model):
    """The other backends never wait for the statement's transaction: a generation started in a
    transaction block records its attention and residual rows with its run; a rollback takes them
    all away (the other backends wrote only the KV cache, which finish_run empties)."""
    one_id, one_text = sql_generate(conn, 1)
    conn.execute("begin")
    run_id, text = sql_generate(conn, 2)
    assert text == one_text
    assert_same_record(recorded(conn, run_id), recorded(conn, one_id))
    conn.execute("rollback")
    assert conn.execute("select count(*) from gptsql.run where id = %s", [run_id]).fetchone()[0] == 0
    assert conn.execute("select count(*) from gptsql.attention_row where run_id = %s", [run_id]).fetchone()[0] == 0
    assert conn.execute("select count(*) from gptsql.kv_cache where run_id = %s", [run_id]).fetchone()[0] == 0


@pytest.mark.parametrize("sampling", [dict(temperature=0.9, seed=3), dict(temperature=0.9, seed=3, top_k=20),
                                      dict(temperature=1.5, seed=5, top_p=0.6),
                                      dict(temperature=3.0, seed=2, top_p=0.995)],  # past the 1000 best
                         ids=["gumbel", "top_k", "top_p", "top_p_wide"])
def test_sampling_over_shares_draws_the_same_tokens(database, conn, hf_model, sampling):
    one_id, _, one_tokens = generate(database, conn, 1, n=8, **sampling)
    for shares in (2, 3):
        run_id, _, tokens = generate(database, conn, shares, n=8, **sampling)
        assert tokens == one_tokens, shares
        assert_same_record(recorded(conn, run_id), recorded(conn, one_id))


def test_a_prompt_fed_in_chunks_over_shares(database, conn, hf_model, monkeypatch):
    """The prompt in chunks of 2 places (feed over the shares, then the step or the prediction):
    the same tokens, distribution and record as one share fed in one statement."""
    from gptsql.driver.generation import Generation

    one_id, _, one_tokens = generate(database, conn, 1, temperature=0)
    one = start_prediction(database, conn, 1, MODEL, PROMPT).predict(12)
    one_predict = latest_run(conn, "predict")
    monkeypatch.setattr(Generation, "PREFILL_CHUNK", 2)
    fed = []
    gen = start_generation(database, conn, 2, MODEL, PROMPT, 6, record=True, temperature=0)
    gen.on_prefill = lambda done, total: fed.append(done)
    assert [token for token, _raw, _p in gen.steps()] == one_tokens
    assert len(fed) >= 3 and fed[-1] == len(gen.prompt_tokens)     # several chunks went through feed()
    assert_same_record(recorded(conn, gen.run_id), recorded(conn, one_id))

    rows = start_prediction(database, conn, 2, MODEL, PROMPT).predict(12)
    assert [r[:3] for r in rows] == [r[:3] for r in one]
    assert max(abs(r[3] - r1[3]) + abs(r[4] - r1[4]) for r, r1 in zip(rows, one)) <= 1e-4
    assert_same_record(recorded(conn, latest_run(conn, "predict")), recorded(conn, one_predict))


@pytest.mark.parametrize("shares", [1, 2, 3, 4])
def test_vocabulary_shares_hold_every_token_once(db, hf_model, shares):
    """Each share reads a range of the token embeddings' pages (vocab_pages): together they read
    every token of the vocabulary, and none twice."""
    model_id, n_vocab = db.execute("select id, n_vocab from gptsql.model where name = %s", [MODEL]).fetchone()
    hidden = db.execute("select w from gptsql.wte where model_id = %s and token = 7", [model_id]).fetchone()[0]
    held = []
    for share in range(shares):
        held += db.execute("select (gptsql.vocab_share(%s, %s, %s, %s, 0, 0.5, NULL)).cand_tokens",
                           [model_id, hidden, share, shares]).fetchone()[0]
    assert sorted(held) == list(range(n_vocab))


def test_projection_shares_are_the_projection_s_columns_and_go_with_the_model(database, conn, run_cli, hf_tiny,
                                                                             hf_model):
    """Shares multiply their heads' columns of the attention projection from rows cut once per model
    and split (gptsql.projection_share), made on a share's own connection so that every share reads
    them: each row is its whole row's columns of those heads (3 shares over 4 heads: uneven); one
    share reads the whole rows; an emptied table (as after a crash: it is unlogged) is made again at
    the next use; unloading the model removes them."""
    directory, _ = hf_tiny
    run_cli("load", str(directory), "--name", "hf-projection", "--dtype", "float32")
    model_id, n_embd, n_head, n_layer = conn.execute(
        "select id, n_embd, n_head, n_layer from gptsql.model where name = 'hf-projection'").fetchone()
    head_dim = n_embd // n_head
    generate(database, conn, 1, n=2, model="hf-projection")
    assert conn.execute("select count(*) from gptsql.projection_share where model_id = %s",
                        [model_id]).fetchone()[0] == 0
    generate(database, conn, 3, n=2, model="hf-projection")
    splits = conn.execute("select head_lo, head_hi, count(*) from gptsql.projection_share where model_id = %s "
                          "group by 1, 2 order by 1", [model_id]).fetchall()
    assert splits == [(0, 2, n_layer * n_embd), (2, 3, n_layer * n_embd), (3, 4, n_layer * n_embd)]
    rows = conn.execute("""select s.head_lo, s.head_hi, s.w, w.w, s.bias, w.bias from gptsql.projection_share s
                           join gptsql.linear w on w.model_id = s.model_id and w.name = 'attn_proj' and w.part = 0
                            and w.block = s.block and w.grp = s.grp and w.idx = s.idx
                           where s.model_id = %s""", [model_id]).fetchall()
    assert len(rows) == 3 * n_layer * n_embd
    for lo, hi, cut, whole, cut_bias, bias in rows:
        assert np.array_equal(cut.to_numpy(), whole.to_numpy()[lo * head_dim:hi * head_dim]) and cut_bias == bias
    _, _, want = generate(database, conn, 1, model="hf-projection")
    conn.execute("delete from gptsql.projection_share where model_id = %s", [model_id])
    _, _, tokens = generate(database, conn, 2, model="hf-projection")
    assert tokens == want
    assert conn.execute("select count(*) from gptsql.projection_share where model_id = %s",
                        [model_id]).fetchone()[0] == 2 * n_layer * n_embd
    run_cli("unload", "hf-projection", "--yes")
    assert conn.execute("select count(*) from gptsql.projection_share where model_id = %s",
                        [model_id]).fetchone()[0] == 0


def test_a_float16_model_over_shares_matches_one_share(database, conn, run_cli, hf_tiny, hf_model):
    """float16 models keep their weights (and their projection shares) as halfvec: 2 shares choose
    the same tokens with the same top logits as one."""
    directory, _ = hf_tiny
    run_cli("load", str(directory), "--name", "hf-shares16", "--dtype", "float16")
    runs = {}
    for shares in (1, 2):
        run_id, _, tokens = generate(database, conn, shares, model="hf-shares16")
        runs[shares] = (tokens, recorded(conn, run_id)["top"])
    assert runs[2][0] == runs[1][0]
    assert_same_record({"top": runs[2][1]}, {"top": runs[1][1]}, tol=1e-3)
    run_cli("unload", "hf-shares16", "--yes")


@pytest.mark.parametrize("shares", [2, 3])
def test_predict_over_shares_records_the_same_run(database, conn, hf_model, shares):
    one = start_prediction(database, conn, 1, MODEL, PROMPT).predict(12)
    one_id = latest_run(conn, "predict")
    conn.execute("select set_config('gptsql.shares', %s, false)", [str(shares)])
    rows = conn.execute("select * from gptsql.predict(%s, 12, %s)", [PROMPT, MODEL]).fetchall()   # as psql
    run_id = latest_run(conn, "predict")
    assert run_id != one_id and len(rows) == len(one) == 12
    assert [r[:3] for r in rows] == [r[:3] for r in one]            # rank, token, piece
    for (*_, p, logit), (*_, p1, logit1) in zip(rows, one):
        assert abs(p - p1) <= 1e-5 and abs(logit - logit1) <= 1e-4
    assert_same_record(recorded(conn, run_id), recorded(conn, one_id))

    prompt = conn.execute("select array_agg(token order by place) from gptsql.run_token where run_id = %s",
                          [run_id]).fetchone()[0]
    with torch.no_grad():
        logits = hf_model(torch.tensor([prompt])).logits[0, -1].double()
    probabilities = torch.softmax(logits, -1)
    assert [r[1] for r in rows] == torch.topk(logits, 12).indices.tolist()
    for _rank, token, _piece, p, logit in rows:
        assert abs(logit - float(logits[token])) <= 1e-3 and abs(p - float(probabilities[token])) <= 1e-4


def test_cli_predict_trace_and_lens_over_workers_record_the_same_runs(run_cli, db, hf_model, tmp_path):
    runs = re.compile(r"\brun \d+")

    def predicted(*workers):
        lines = run_cli("predict", "-m", MODEL, "--json", *workers, PROMPT).stdout.splitlines()
        return [json.loads(line) for line in lines]

    one, rows = predicted("--workers", "1"), predicted()                      # predicted(): the default workers
    assert [(r["rank"], r["token"], r["piece"]) for r in rows] == [(r["rank"], r["token"], r["piece"]) for r in one]
    assert max(abs(r["probability"] - r1["probability"]) + abs(r["logit"] - r1["logit"])
               for r, r1 in zip(rows, one)) <= 1e-4

    traced = [runs.sub("run N", run_cli("trace", "-n", "3", "-m", MODEL, "--workers", workers, PROMPT).stdout)
              for workers in ("1", "3")]
    assert traced[0] == traced[1]
    trace_id = latest_run(db, "generate")
    run_cli("lens", "-n", "3", "-o", str(tmp_path / "lens.png"), "-m", MODEL, "--workers", "2", PROMPT)
    one_id = db.execute("select max(id) from gptsql.run where kind = 'generate' and id < %s", [trace_id]).fetchone()[0]
    for run_id in (trace_id, latest_run(db, "generate")):                   # trace and lens over workers
        assert_same_record(recorded(db, run_id), recorded(db, one_id))


def test_cli_workers_give_the_same_text(run_cli, hf_model):
    one = run_cli("generate", "-m", MODEL, "-n", "6", "-t", "0", "--workers", "1", PROMPT)
    for workers in ("3", "5"):       # 5: as many as the model's 4 heads and 4 MLP groups split into
        result = run_cli("generate", "-m", MODEL, "-n", "6", "-t", "0", "--workers", workers, PROMPT)
        assert result.stdout == one.stdout and result.stderr == ""
    assert run_cli("generate", "-m", MODEL, "-n", "6", "-t", "0", PROMPT).stdout == one.stdout   # the default


@pytest.fixture
def non_superuser(database, db):
    """A DSN of a role that is no superuser: PostgreSQL lets it open a dblink connection only with a
    password, and this server's socket asks none."""
    db.execute("drop role if exists gptsql_plain")   # left by an interrupted session: has no grants then
    db.execute("create role gptsql_plain login")
    db.execute("grant usage on schema gptsql to gptsql_plain")
    db.execute("grant all on all tables in schema gptsql to gptsql_plain")
    db.execute("grant all on all sequences in schema gptsql to gptsql_plain")
    try:
        yield psycopg.conninfo.make_conninfo(database.dsn(), user="gptsql_plain")
    finally:
        for (pid,) in db.execute("select pid from pg_stat_activity where usename = 'gptsql_plain'").fetchall():
            db.execute("select pg_terminate_backend(%s)", [pid])
        db.execute("drop owned by gptsql_plain")
        db.execute("drop role if exists gptsql_plain")


def notices(conn):
    said = []
    conn.add_notice_handler(lambda diag: said.append(diag.message_primary))
    return said


def test_refused_share_connections_run_on_one_backend_with_one_notice(db, hf_model, non_superuser):
    one = db.execute("select gptsql.generate(%s, 3, model => %s)", [PROMPT, MODEL]).fetchone()[0]
    with psycopg.connect(non_superuser, autocommit=True) as plain:
        said = notices(plain)
        plain.execute("set gptsql.shares = 2")
        assert plain.execute("select gptsql.generate(%s, 3, model => %s)", [PROMPT, MODEL]).fetchone()[0] == one
        assert plain.execute("select gptsql.generate(%s, 3, model => %s)", [PROMPT, MODEL]).fetchone()[0] == one
    assert len(said) == 1 and said[0].startswith("gptsql runs on one backend: another backend refused the connection")


def test_cli_says_why_it_runs_on_one_backend(run_cli, hf_model, non_superuser):
    one = run_cli("generate", "-m", MODEL, "-n", "4", "-t", "0", "--workers", "1", PROMPT).stdout
    result = run_cli("--dsn", non_superuser, "generate", "-m", MODEL, "-n", "4", "-t", "0", "--workers", "2", PROMPT)
    assert result.stdout == one
    assert result.stderr.startswith("gptsql runs on one backend: another backend refused the connection")
    assert len(result.stderr.strip().splitlines()) == 1


def test_shares_leave_half_the_connections_to_other_commands(database, conn, db, hf_model):
    """Shares take connections only while half of max_connections stays free: a crowd of commands
    (their shares' connections on every core) took every slot, and the commands that came later
    waited for one, then failed. With the server half full a generation runs on one backend (the
    same text); with it empty, over its shares."""
    one = db.execute("select gptsql.generate(%s, 3, model => %s)", [PROMPT, MODEL]).fetchone()[0]
    used, limit = db.execute("select count(*), current_setting('max_connections')::int from pg_stat_activity "
                             "where backend_type = 'client backend'").fetchone()
    held = [psycopg.connect(database.dsn(), autocommit=True) for _ in range(limit // 2 - used)]
    said = notices(conn)
    try:
        conn.execute("set gptsql.shares = 2")
        assert conn.execute("select gptsql.generate(%s, 3, model => %s)", [PROMPT, MODEL]).fetchone()[0] == one
        assert share_backends(conn) == 0 and said == ["gptsql runs on one backend: the server's connections are half used"]
    finally:
        for c in held:
            c.close()
    assert conn.execute("select gptsql.generate(%s, 3, model => %s)", [PROMPT, MODEL]).fetchone()[0] == one
    assert share_backends(conn) == 1


def test_a_database_without_dblink_runs_on_one_backend(database, db, hf_model, hf_tiny, run_cli):
    """A server whose database has no dblink (it is PostgreSQL's contrib, not always installed):
    one backend, one notice, the same text."""
    one = db.execute("select gptsql.generate(%s, 3, model => %s)", [PROMPT, MODEL]).fetchone()[0]
    db.execute("drop database if exists gptsql_no_dblink")
    db.execute("create database gptsql_no_dblink")
    dsn = psycopg.conninfo.make_conninfo(database.dsn(), dbname="gptsql_no_dblink")
    try:
        run_cli("--dsn", dsn, "load", str(hf_tiny[0]), "--name", MODEL)
        with psycopg.connect(dsn, autocommit=True) as other:
            other.execute("drop extension dblink")
            said = notices(other)
            other.execute("set gptsql.shares = 2")
            assert other.execute("select gptsql.generate(%s, 3, model => %s)", [PROMPT, MODEL]).fetchone()[0] == one
        assert said == ["gptsql runs on one backend: the dblink extension is not installed in this database"]
    finally:
        db.execute("select pg_terminate_backend(pid) from pg_stat_activity where datname = 'gptsql_no_dblink'")
        db.execute("drop database if exists gptsql_no_dblink")


def test_a_bad_shares_setting_is_one_line(conn, hf_model):
    conn.execute("set gptsql.shares = 'two'")
    with pytest.raises(psycopg.errors.RaiseException, match=r"^gptsql.shares must be a whole number"):
        conn.execute("select gptsql.generate(%s, 2, model => %s)", [PROMPT, MODEL])


@pytest.mark.parametrize("path", ["gptsql", "pg_catalog", "hostile, public"])
def test_the_sql_api_under_any_search_path(conn, hf_model, path):
    """Every function of the engine resolves its own names: under a search_path without pgvector's
    schema, or with a schema ahead of it that shadows pgvector's functions and operators."""
    want = conn.execute("select gptsql.generate(%s, 3, model => %s)", [PROMPT, MODEL]).fetchone()[0]
    want_tokens = conn.execute("select gptsql.tokenize(%s, %s)", [PROMPT, MODEL]).fetchone()[0]
    conn.execute("drop schema if exists hostile cascade")
    conn.execute("create schema hostile")
    conn.execute("create function hostile.inner_product(public.vector, public.vector) returns float8 "
                 "language sql as 'select 0::float8'")
    conn.execute("create function hostile.vector_add(public.vector, public.vector) returns public.vector "
                 "language sql as 'select $1'")
    conn.execute("create operator hostile.+ (leftarg = public.vector, rightarg = public.vector, "
                 "function = hostile.vector_add)")
    try:
        conn.execute(f"set search_path = {path}")
        for shares in ("1", "2"):
            conn.execute("select set_config('gptsql.shares', %s, false)", [shares])
            assert conn.execute("select gptsql.generate(%s, 3, model => %s)", [PROMPT, MODEL]).fetchone()[0] == want
        assert conn.execute("select gptsql.tokenize(%s, %s)", [PROMPT, MODEL]).fetchone()[0] == want_tokens
        rows = conn.execute("select rank, token from gptsql.predict(%s, 3, %s)", [PROMPT, MODEL]).fetchall()
        assert len(rows) == 3
    finally:
        conn.execute("reset search_path")
        conn.execute("drop schema hostile cascade")


def test_a_database_whose_search_path_starts_at_the_gptsql_schema(database, db, hf_model, hf_tiny, run_cli):
    """A role named gptsql (the Docker demo's) finds the schema gptsql first on its search_path
    ("$user"): dblink is installed beside pgvector all the same, not among the engine's functions
    that every upgrade drops and makes again, and an upgrade after it works."""
    db.execute("drop database if exists gptsql_user_path")
    db.execute("create database gptsql_user_path")
    dsn = psycopg.conninfo.make_conninfo(database.dsn(), dbname="gptsql_user_path")
    try:
        with psycopg.connect(dsn, autocommit=True) as other:
            other.execute("create extension vector")
            other.execute("create schema gptsql")
            other.execute("alter database gptsql_user_path set search_path = gptsql, public")
        run_cli("--dsn", dsn, "load", str(hf_tiny[0]), "--name", MODEL)
        with psycopg.connect(dsn, autocommit=True) as other:
            assert other.execute("select extnamespace::regnamespace::text from pg_extension "
                                 "where extname = 'dblink'").fetchone()[0] == "public"
            other.execute("update gptsql.meta set value = 'an earlier version' where key = 'engine_version'")
        one = db.execute("select gptsql.generate(%s, 3, model => %s)", [PROMPT, MODEL]).fetchone()[0]
        assert run_cli("--dsn", dsn, "generate", "-m", MODEL, "-n", "3", "-t", "0", "--no-prompt",
                       PROMPT).stdout == one + "\n"
    finally:
        db.execute("select pg_terminate_backend(pid) from pg_stat_activity where datname = 'gptsql_user_path'")
        db.execute("drop database if exists gptsql_user_path")

"""The README's promise "once `gptsql load` returns, the model is safe": the server crashes (an
immediate stop: no shutdown checkpoint, crash recovery at the next start) right after a load
returns, and the model is found whole.

The embedded server commits asynchronously, so the WAL writer would make an asynchronous commit
durable by itself within wal_writer_delay (200 ms). This server's WAL writer waits 10 s
(the most PostgreSQL allows) and never wakes for the volume written: a load that committed
asynchronously is then still lost in a crash seconds later, and only a synchronous commit (the
load's `synchronous_commit = on`) survives it. Nothing here depends on sub-second timing.

The same private server also shows what `gptsql db status` and `gptsql db stop` print (stopping
the session's server would cut off every other test).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from pgvector.psycopg import register_vector

from helpers import make_server

NAME = "durable"   # a new name: replacing a model drops its tables, which forces a synchronous commit


@pytest.fixture(scope="module")
def server():
    data_dir = Path(tempfile.mkdtemp(prefix="gqd-", dir="/tmp"))   # short: the socket lives inside
    s = make_server(data_dir)
    conn = s.connect()
    conn.execute("alter system set wal_writer_delay = '10s'")
    conn.execute("alter system set wal_writer_flush_after = '1GB'")
    conn.execute("select pg_reload_conf()")
    conn.close()
    yield s
    s.embedded.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


def whole(conn, name: str, checkpoint) -> None:
    """The model's rows are all there, and its weights add up to the checkpoint's."""
    register_vector(conn)
    c, t = checkpoint.config, checkpoint.tensors
    model_id = conn.execute("select id from gptsql.model where name = %s", [name]).fetchone()
    assert model_id is not None, f"model {name!r} is gone after the crash"
    count = lambda table: conn.execute(f"select count(*) from gptsql.{table} where model_id = %s",  # noqa: E731
                                       model_id).fetchone()[0]
    assert count("token") == c.n_vocab and count("merge") == len(checkpoint.vocab.merges)
    assert (count("wte"), count("wpe"), count("norm")) == (c.n_vocab, c.n_ctx, 2 * c.n_layer + 1)
    assert count("linear") == c.n_layer * 12 * c.n_embd
    # Checksums: each table's rows summed as vectors, against numpy's sums of the same tensors.
    total = lambda query: conn.execute(query, model_id).fetchone()[0].to_numpy()  # noqa: E731
    assert np.allclose(total("select sum(w) from gptsql.wte where model_id = %s"), t["wte.weight"].sum(0),
                       atol=1e-2)
    assert np.allclose(total("select sum(w) from gptsql.wpe where model_id = %s"), t["wpe.weight"].sum(0),
                       atol=1e-3)
    layers = {"c_attn": "attn.c_attn", "attn_proj": "attn.c_proj", "c_fc": "mlp.c_fc", "mlp_proj": "mlp.c_proj"}
    for lname, key in layers.items():
        want = sum(t[f"h.{i}.{key}.weight"].reshape(-1, c.n_embd, t[f"h.{i}.{key}.weight"].shape[1]).sum((0, 2))
                   for i in range(c.n_layer))
        got = total(f"select sum(w) from gptsql.linear where model_id = %s and name = '{lname}'")
        assert np.allclose(got, want, atol=1e-2), lname


def test_a_load_survives_a_crash_right_after_it_returns(server, tiny_checkpoint):
    server.cli("load", "random:tiny", "--name", NAME)
    server.stop_immediately()
    conn = server.connect()                      # starts the server again: crash recovery
    assert conn.execute("select count(*) from gptsql.model where name = %s", [NAME]).fetchone()[0] == 1
    whole(conn, NAME, tiny_checkpoint)
    assert conn.execute("select gptsql.generate('Hello', 3, model => %s)", [NAME]).fetchone()[0]
    conn.close()


def test_db_status_and_stop_say_what_they_did(server):
    """Last in this module: it stops the module's private server (never the session's)."""
    pid = server.embedded.pid()
    assert server.cli("db", "start").stdout.strip() == f"embedded PostgreSQL running (pid {pid})"
    assert server.cli("db", "status").stdout.splitlines() == [
        f"embedded PostgreSQL: running (pid {pid})", f"data directory: {server.embedded.pgdata}",
        f"socket directory: {server.embedded.socket_dir}"]
    assert server.cli("db", "stop").stdout.strip() == "stopped"
    assert server.embedded.pid() is None
    assert server.cli("db", "status").stdout.splitlines()[0] == "embedded PostgreSQL: stopped"
    assert server.cli("db", "stop").stdout.strip() == "not running"


def test_a_database_made_before_integer_seeds_keeps_its_runs(server, tiny_checkpoint):
    """A database whose run.seed is still float8 (made before seeds were bigint) is migrated in
    place by the next command: the column becomes bigint, recorded seeds keep their values (1.5,
    which only a float could hold, rounds to 2), and a seed gives the text it gave before."""
    from gptsql.loader.load import load
    from gptsql.server.db import DROP_ENGINE

    conn = server.connect()
    load(conn, tiny_checkpoint, "seeds")
    generate = "select gptsql.generate('Once upon', 6, 0.9, 0, 1, %s, 'seeds')"
    before = conn.execute(generate, [5]).fetchone()[0]
    run_id = conn.execute("select max(id) from gptsql.run").fetchone()[0]
    conn.execute(DROP_ENGINE)    # an earlier version's functions, as an upgrade finds them: gone first
    conn.execute("alter table gptsql.run alter column seed type float8")
    half = conn.execute("insert into gptsql.run (model_id, prompt, seed, status) select model_id, 'old', 1.5, 'done' "
                        "from gptsql.run where id = %s returning id", [run_id]).fetchone()[0]
    conn.execute("update gptsql.meta set value = 'before integer seeds' where key = 'engine_version'")
    conn.close()

    conn = server.connect()   # every command installs the engine when its version differs
    seed_type = "select atttypid::regtype::text from pg_attribute where attrelid = 'gptsql.run'::regclass and attname = 'seed'"
    assert conn.execute(seed_type).fetchone()[0] == "bigint"
    seeds = dict(conn.execute("select run, seed from gptsql.runs where run in (%s, %s)", [run_id, half]).fetchall())
    assert seeds == {run_id: 5, half: 2}
    assert conn.execute(generate, [5]).fetchone()[0] == before
    conn.execute("select gptsql.drop_model('seeds')")


def test_a_llama_stored_before_gate_and_up_shared_a_row_still_runs(server, hf_llama):
    """A Llama loaded when SwiGLU's up rows were rows of their own (c_up) is moved in place by the
    next command: each up row joins its gate row in c_fc, c_up is gone, and the logits are still
    transformers'."""
    import torch

    from gptsql.loader.load import load
    from gptsql.loader.sources import resolve
    from gptsql.server.db import DROP_ENGINE

    conn = server.connect()
    model_id = load(conn, resolve(str(hf_llama[0]), name="before-up-rows"), "before-up-rows")
    conn.execute("""insert into gptsql.linear (model_id, name, block, part, grp, idx, w, h, bias)
                    select model_id, 'c_up', block, part, grp, idx, up_w, up_h, 0 from gptsql.linear
                    where model_id = %s and name = 'c_fc'""", [model_id])
    conn.execute("update gptsql.linear set up_w = null, up_h = null where model_id = %s", [model_id])
    conn.execute(DROP_ENGINE)
    conn.execute("alter table gptsql.linear drop column up_w, drop column up_h")
    conn.execute("update gptsql.meta set value = 'before gate and up shared a row' where key = 'engine_version'")
    conn.close()

    conn = server.connect()   # the engine installs again, and migrates
    rows = dict(conn.execute("select name, count(*) filter (where up_w is not null) from gptsql.linear "
                             "where model_id = %s group by name", [model_id]).fetchall())
    assert "c_up" not in rows and rows["c_fc"] == hf_llama[1].config.num_hidden_layers * hf_llama[1].config.intermediate_size
    tokens = [5, 17, 300, 2, 41, 9]
    register_vector(conn)
    run = conn.execute("select run_id from gptsql.start_run('before-up-rows', 'x', 0, record => false)").fetchone()[0]
    hidden = conn.execute("select gptsql.forward(%s, %s, %s, %s, %s, 1)",
                          [model_id, [run] * len(tokens), list(range(len(tokens))), tokens, [False] * len(tokens)]).fetchone()[0]
    got = np.stack([np.array(conn.execute("select array_agg(logit order by token) from gptsql.logits(%s, %s)",
                                          [model_id, h]).fetchone()[0]) for h in hidden])
    with torch.no_grad():
        want = hf_llama[1](torch.tensor([tokens])).logits[0].double().numpy()
    assert np.abs(got - want).max() <= 1e-3
    conn.execute("select gptsql.finish_run(%s)", [run])
    conn.execute("select gptsql.drop_model('before-up-rows')")

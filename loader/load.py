"""Write a checkpoint into the database: one transaction, binary COPY, pgvector types.

A failed or killed load rolls back and leaves the previously loaded model of that name intact.
Neither a load nor an unload makes a generation on another model wait: the big tables are built
apart and attached at the end, and a removed model's tables are detached concurrently, after the
commit (see gptsql.new_partitions in sql/00_schema.sql).
"""
from __future__ import annotations

import struct
from typing import Callable, Iterator

import numpy as np
import psycopg
from psycopg import sql
from pgvector.psycopg import register_vector

from ..errors import UserError
from . import checks
from .sources import Checkpoint
from .vocab import Vocabulary, unicode_class_ranges

Progress = Callable[[str, int, int], None]  # (stage, done, total)


# Binary COPY's framing (PostgreSQL docs, "COPY", binary format): a signature, flags and header
# extension length first, a field count of -1 last.
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
COPY_TRAILER = struct.pack("!h", -1)


def copy_rows(n_rows: int, fields: list[tuple[object, str]]) -> bytes:
    """`n_rows` rows of a binary COPY, made in one piece by numpy instead of one Python call per
    row and value. Each field is (value, big-endian dtype); a scalar or bytes value repeats on every
    row, a 1-d array gives one value per row, a 2-d array one pgvector vector (float4) or halfvec
    (float2) per row, with its int16 dim and int16 unused in front, None a NULL."""
    layout, values = [("count", ">i2")], {"count": len(fields)}
    for i, (value, dtype) in enumerate(fields):
        if value is None:                              # NULL on every row: a length of -1, no bytes
            layout.append((f"len{i}", ">i4"))
            values[f"len{i}"] = -1
            continue
        value = np.asarray(value)
        if value.ndim == 2:
            dim = value.shape[1]
            layout += [(f"len{i}", ">i4"), (f"dim{i}", ">i2"), (f"unused{i}", ">i2"), (f"v{i}", dtype, (dim,))]
            values.update({f"len{i}": 4 + dim * np.dtype(dtype).itemsize, f"dim{i}": dim, f"unused{i}": 0})
        else:
            layout += [(f"len{i}", ">i4"), (f"v{i}", dtype)]
            values[f"len{i}"] = np.dtype(dtype).itemsize
        values[f"v{i}"] = value
    rows = np.empty(n_rows, dtype=np.dtype(layout))   # packed: no alignment between fields, as COPY reads
    for key, value in values.items():
        rows[key] = value
    return rows.tobytes()


def linear_chunks(model_id: int, name: str, block: int, weight: np.ndarray, bias: np.ndarray | float, part: int,
                  group_size: int, vector_dtype: str, up: np.ndarray | None = None) -> Iterator[bytes]:
    """COPY rows of gptsql.linear for y = x @ weight + bias: one row per (input part, output unit),
    one chunk per part of `part` inputs. Output units come in groups of `group_size` (a head, or a
    group of the MLP's hidden units). `up` (SwiGLU's up projection, the shape of weight) rides in
    the same rows as the gate's weights; without it, the up column is NULL."""
    n_in, n_out = weight.shape
    columns = np.ascontiguousarray(weight.T)          # columns[j] = weights of output unit j
    up_columns = None if up is None else np.ascontiguousarray(up.T)
    units = np.arange(n_out)
    for i in range(n_in // part):
        cut = slice(i * part, (i + 1) * part)
        yield copy_rows(n_out, [
            (model_id, ">i4"), (name.encode(), f"S{len(name)}"), (block, ">i4"), (i, ">i4"),
            (units // group_size, ">i4"), (units % group_size, ">i4"),
            (columns[:, cut], vector_dtype),
            (bias if i == 0 else 0.0, ">f4"),
            (None if up_columns is None else up_columns[:, cut], vector_dtype),
        ])


def mlp_groups(n_inner: int) -> int:
    """How many groups the MLP's hidden units are stored in (gptsql.model.mlp_groups): the shares'
    unit of the MLP, 4 where the width allows."""
    return next(g for g in (4, 3, 2, 1) if n_inner % g == 0)


def block_layers(c, t, i: int) -> list[tuple[str, np.ndarray, np.ndarray | float, int, int, np.ndarray | None]]:
    """The linear layers of block i as gptsql.linear stores them: (name, weight as (in, out), bias,
    input part width, output group size, SwiGLU's up weight beside the gate's or None). GPT-2's
    Conv1D weights are (in, out) already; the Llama family's Linear weights are (out, in), with no
    biases; its q, k and v are one c_attn, its gate and up one c_fc."""
    n, d, hidden = c.n_embd, c.head_dim, c.n_inner // mlp_groups(c.n_inner)
    if c.family == "llama":
        at = f"layers.{i}"
        qkv = np.concatenate([t[f"{at}.self_attn.{x}_proj.weight"] for x in "qkv"]).T
        return [("c_attn", qkv, 0.0, n, d, None),
                ("attn_proj", t[f"{at}.self_attn.o_proj.weight"].T, 0.0, n, n, None),
                ("c_fc", t[f"{at}.mlp.gate_proj.weight"].T, 0.0, n, hidden, t[f"{at}.mlp.up_proj.weight"].T),
                ("mlp_proj", t[f"{at}.mlp.down_proj.weight"].T, 0.0, hidden, n, None)]
    at = f"h.{i}"
    return [("c_attn", t[f"{at}.attn.c_attn.weight"], t[f"{at}.attn.c_attn.bias"], n, d, None),
            ("attn_proj", t[f"{at}.attn.c_proj.weight"], t[f"{at}.attn.c_proj.bias"], n, n, None),
            ("c_fc", t[f"{at}.mlp.c_fc.weight"], t[f"{at}.mlp.c_fc.bias"], n, hidden, None),
            ("mlp_proj", t[f"{at}.mlp.c_proj.weight"], t[f"{at}.mlp.c_proj.bias"], hidden, n, None)]


def block_norms(c, t, i: int) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """(name, gamma, beta) of block i's two norms, or of the final norm for i = n_layer; the Llama
    family's RMS norms have no beta."""
    if c.family == "llama":
        if i == c.n_layer:
            return [("ln_f", t["norm.weight"], None)]
        return [("ln_1", t[f"layers.{i}.input_layernorm.weight"], None),
                ("ln_2", t[f"layers.{i}.post_attention_layernorm.weight"], None)]
    if i == c.n_layer:
        return [("ln_f", t["ln_f.weight"], t["ln_f.bias"])]
    return [(ln, t[f"h.{i}.{ln}.weight"], t[f"h.{i}.{ln}.bias"]) for ln in ("ln_1", "ln_2")]


MAX_NAME = 200


def check_name(name: str) -> str:
    """A model name that every command and the explorer's addresses (/api/models/NAME,
    #model/NAME) can carry: no '/' or '\\' (a path's separator), no control character, not '.'
    or '..' (a browser folds them out of a path), at most MAX_NAME characters."""
    shown = repr(name if len(name) <= 40 else name[:39] + "…")
    if not name.strip():
        raise UserError("the model name is empty: give the model a name, or leave --name out for the default")
    problem = ("holds '/'" if "/" in name else "holds '\\'" if "\\" in name
               else "holds a control character" if any(ord(c) < 32 or ord(c) == 127 for c in name)
               else "is a path's '.' or '..'" if name in (".", "..")
               else f"is longer than {MAX_NAME} characters" if len(name) > MAX_NAME else None)
    if problem:
        raise UserError(f"the model name {shown} {problem}, which the explorer's addresses cannot carry; "
                        "choose another --name (letters, digits, '-', '_', ':' and '.' are fine)")
    return name


class NameTaken(UserError):
    """The model under the name is no longer the one the caller agreed to replace."""


ANY = "any"


def load(conn: psycopg.Connection, ck: Checkpoint, name: str, dtype: str = "float32",
         progress: Progress | None = None, replaces: int | None | str = ANY) -> int:
    """Load `ck` as model `name`, replacing a model of that name; returns the new model id.
    `replaces`: the id of the model of that name the caller agreed to replace (None: there is none);
    another one found there (a load under the same name meanwhile) is NameTaken, nothing loaded."""
    if dtype not in ("float32", "float16"):
        raise UserError(f"dtype {dtype!r} is not supported; use --dtype float16 or --dtype float32")
    check_name(name)
    checks.check_dtype_fits(ck.source, ck.config.family, ck.config.n_embd, dtype)
    # The big matrices (wte and the linear layers) go to the halfvec column h for float16, to the
    # vector column w for float32; position embeddings and norms are small and stay float32.
    big_column, vector_dtype = ("h", ">f2") if dtype == "float16" else ("w", ">f4")
    progress = progress or (lambda stage, done, total: None)
    register_vector(conn)
    c, t = ck.config, ck.tensors
    # output units a block writes: q, k, v; the projection; the MLP's (gate, up,) down
    rows_per_block = (c.n_head + 2 * c.n_kv_head) * c.head_dim + c.n_embd \
        + (3 if c.family == "llama" else 2) * c.n_inner
    total_rows = c.n_vocab * (1 if c.tied else 2) + c.n_ctx + c.n_layer * rows_per_block + len(ck.vocab) * 2
    done = 0

    def tick(stage: str, rows: int) -> None:
        nonlocal done
        done += rows
        progress(stage, done, total_rows)

    remove_leftovers(conn)
    with conn.transaction():
        # The embedded server commits asynchronously (fast steps); a load is durable once it returns.
        conn.execute("set local synchronous_commit = on")
        ensure_unicode_classes(conn)
        taken = NameTaken(f'model "{name}" was loaded by another command while this one was starting; '
                          "nothing loaded: run the load again to replace it")
        if replaces != ANY:
            found = conn.execute("select id from gptsql.model where name = %s for update", [name]).fetchone()
            if (found and found[0]) != replaces:
                raise taken
        conn.execute("select gptsql.drop_model(%s)", [name])
        try:
            model_id = conn.execute(
                """insert into gptsql.model (name, source, n_vocab, n_ctx, n_embd, n_head, n_layer,
                                             layer_norm_epsilon, dtype, n_params, family, n_kv_head, n_inner,
                                             mlp_groups, rope_theta, tied)
                   values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) returning id""",
                [name, ck.source, c.n_vocab, c.n_ctx, c.n_embd, c.n_head, c.n_layer,
                 c.layer_norm_epsilon, dtype, ck.n_params(), c.family, c.n_kv_head, c.n_inner,
                 mlp_groups(c.n_inner), c.rope_theta or None, c.tied],
            ).fetchone()[0]
        except psycopg.errors.UniqueViolation as exc:   # another load of the name committed first
            raise taken from exc
        conn.execute("select gptsql.new_partitions(%s)", [model_id])

        write_vocabulary(conn, model_id, ck.vocab)
        tick("vocabulary", 2 * len(ck.vocab))
        with conn.cursor() as cur:
            # The big tables go straight into the partitions-to-be created above, frozen: their rows are
            # visible to all from the start, so neither the first steps (setting hint bits, each a
            # full-page write with checksums on) nor an autovacuum right after the load rewrite
            # 500 MB while a generation runs.
            embeddings = [("wte", t["embed_tokens.weight" if c.family == "llama" else "wte.weight"])]
            if not c.tied:
                embeddings.append(("lm_head", t["lm_head.weight"]))
            for table, matrix in embeddings:
                with cur.copy(frozen_copy(f"{table}_{model_id}", ["model_id", "token", big_column])) as cp:
                    cp.write(COPY_SIGNATURE)
                    for first in range(0, c.n_vocab, 5000):
                        rows = matrix[first:first + 5000]
                        cp.write(copy_rows(len(rows), [(model_id, ">i4"), (np.arange(first, first + len(rows)), ">i4"),
                                                       (rows, vector_dtype)]))
                        tick("token embeddings" if table == "wte" else "output layer", len(rows))
                    cp.write(COPY_TRAILER)
            if c.family == "llama":
                conn.execute("select gptsql.make_rope(%s)", [model_id])
            else:
                with cur.copy("copy gptsql.wpe (model_id, place, w) from stdin (format binary)") as cp:
                    cp.set_types(["int4", "int4", "vector"])
                    for place, row in enumerate(t["wpe.weight"]):
                        cp.write_row((model_id, place, row))
            tick("position embeddings", c.n_ctx)

            with cur.copy("copy gptsql.norm (model_id, name, block, gamma, beta) from stdin (format binary)") as cp:
                cp.set_types(["int4", "text", "int4", "vector", "vector"])
                for i in range(c.n_layer + 1):
                    for ln, gamma, beta in block_norms(c, t, i):
                        cp.write_row((model_id, ln, i, gamma, beta))

            copy_sql = frozen_copy(f"linear_{model_id}", ["model_id", "name", "block", "part", "grp", "idx",
                                                          big_column, "bias", f"up_{big_column}"])
            # One COPY for every block: each COPY leaves the pages it extended the table by ahead unused.
            with cur.copy(copy_sql) as cp:
                cp.write(COPY_SIGNATURE)
                for i in range(c.n_layer):
                    for lname, weight, bias, part, group, up in block_layers(c, t, i):
                        for chunk in linear_chunks(model_id, lname, i, weight, bias, part, group, vector_dtype, up):
                            cp.write(chunk)
                    tick(f"block {i + 1}/{c.n_layer}", rows_per_block)
                cp.write(COPY_TRAILER)
        conn.execute("select gptsql.attach_partitions(%s)", [model_id])
        probe(conn, model_id, name)
        progress("analyze", total_rows, total_rows)
    remove_leftovers(conn)   # the tables of the model this one replaced
    for table in ("token", "merge", f"wte_{model_id}", f"lm_head_{model_id}", "wpe", "rope", "norm",
                  f"linear_{model_id}"):
        conn.execute(f"analyze gptsql.{table}")
    return model_id


def probe(conn: psycopg.Connection, model_id: int, name: str) -> None:
    """A model that cannot compute one token is not loaded: token 0 at place 0 through every block
    and the vocabulary (gptsql.predict_run), in a savepoint rolled back, so that no run is left.
    Weights within their bound can still drive the activations past what the engine's numbers hold
    (halfvec: ±65504)."""
    try:
        with conn.transaction():
            # on this backend alone: the others cannot see the model before it commits
            conn.execute("set local gptsql.shares = 1")
            run = conn.execute("insert into gptsql.run (model_id, kind, prompt) values (%s, 'predict', '') returning id",
                               [model_id]).fetchone()[0]
            conn.execute("select * from gptsql.predict_run(%s, array[0], 0, 1)", [run]).fetchall()
            raise psycopg.Rollback()
    except psycopg.DataError as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f'model "{name}" cannot compute a token ({detail}): its weights drive the activations '
                        "past the engine's numbers; this checkpoint cannot run, nothing loaded") from exc


def refuse_if_generating(conn: psycopg.Connection, name: str, then: str) -> None:
    """A model with a running run is not removed or replaced (gptsql.drop_model refuses it too,
    as `runs drop` refuses a running run): said before anything is asked or read."""
    running = [r for r, in conn.execute(
        """select r.id from gptsql.run r join gptsql.model m on m.id = r.model_id
           where m.name = %s and r.status = 'running'
             and r.backend_pid in (select pid from pg_stat_activity where pid is not null) order by r.id""", [name])]
    if running:
        raise UserError(f'model "{name}" is generating (running run {", ".join(map(str, running))}): it is not removed '
                        f"while a run uses it; stop the run (Ctrl-C) or let it finish, then {then}")


def write_vocabulary(conn: psycopg.Connection, model_id: int, vocab: Vocabulary) -> None:
    """The model's tokenizer rows: its tokens and merges, its pre-tokenizer, special tokens, bos / eos
    and, for a chat model, its chat format (the tables of sql/00_schema.sql)."""
    with conn.cursor() as cur:
        with cur.copy("copy gptsql.token (model_id, token, bytes, piece) from stdin (format binary)") as cp:
            cp.set_types(["int4", "int4", "bytea", "text"])
            for token, raw in enumerate(vocab.tokens):
                cp.write_row((model_id, token, raw, raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")))
        with cur.copy("copy gptsql.merge (model_id, first, second, rank, token) from stdin (format binary)") as cp:
            cp.set_types(["int4", "int4", "int4", "int4", "int4"])
            for rank, (first, second, merged) in enumerate(vocab.merges):
                cp.write_row((model_id, first, second, rank, merged))
    conn.execute("insert into gptsql.tokenizer (model_id, pre_tokenizer, bos, eos, add_bos) values (%s, %s, %s, %s, %s)",
                 [model_id, vocab.pre_tokenizer, vocab.bos, vocab.eos, vocab.add_bos])
    for token, text in vocab.specials.items():
        conn.execute("insert into gptsql.special_token (model_id, token, text) values (%s, %s, %s)",
                     [model_id, token, text])
    chat = vocab.chat
    if chat is not None:
        conn.execute("""insert into gptsql.chat_format (model_id, begin_text, generation_prompt, default_system,
                                                        stop_tokens, template)
                        values (%s, %s, %s, %s, %s, %s)""",
                     [model_id, chat.begin, chat.generation_prompt, chat.default_system, chat.stop, chat.template])
        for role in chat.prefix:
            conn.execute("insert into gptsql.chat_role (model_id, role, prefix, suffix) values (%s, %s, %s, %s)",
                         [model_id, role, chat.prefix[role], chat.suffix[role]])


def load_vocabulary(conn: psycopg.Connection, ck: Checkpoint, name: str) -> int:
    """Only the model row and its tokenizer rows (no weights), replacing a model of that name: enough
    for gptsql.tokenize, detokenize and chat_prompt, for a family the engine does not run yet."""
    c = ck.config
    remove_leftovers(conn)
    with conn.transaction():
        ensure_unicode_classes(conn)
        conn.execute("select gptsql.drop_model(%s)", [name])
        model_id = conn.execute(
            """insert into gptsql.model (name, source, n_vocab, n_ctx, n_embd, n_head, n_layer, layer_norm_epsilon,
                                         family, n_kv_head, n_inner, rope_theta, tied, n_params)
               values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) returning id""",
            [name, ck.source, c.n_vocab, c.n_ctx, c.n_embd, c.n_head, c.n_layer, c.layer_norm_epsilon,
             c.family, c.n_kv_head, c.n_inner, c.rope_theta or None, c.tied, ck.n_params()],
        ).fetchone()[0]
        conn.execute("select gptsql.create_partitions(%s)", [model_id])
        write_vocabulary(conn, model_id, ck.vocab)
    remove_leftovers(conn)
    for table in ("token", "merge"):
        conn.execute(f"analyze gptsql.{table}")
    return model_id


def unload(conn: psycopg.Connection, name: str) -> bool:
    """Remove model `name` (its runs go with it); False when there is none."""
    found = conn.execute("select gptsql.drop_model(%s)", [name]).fetchone()[0]
    remove_leftovers(conn)
    return found


def remove_leftovers(conn: psycopg.Connection) -> None:
    """Detach and drop the big tables of models that are gone (an unload, a replaced model, or one
    of these interrupted). Each statement runs on its own: DETACH CONCURRENTLY refuses a
    transaction block, and waits for the queries in flight on the parent without blocking any.
    Inside a caller's transaction it does nothing: the next load or unload removes them."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return
    autocommit, conn.autocommit = conn.autocommit, True
    try:
        for (statement,) in conn.execute("select * from gptsql.leftover_statements()").fetchall():
            conn.execute(statement)
    finally:
        conn.autocommit = autocommit


def frozen_copy(table: str, columns: list[str]) -> sql.Composed:
    """COPY into gptsql.<table> in binary, rows frozen (the table must be new in this transaction)."""
    return sql.SQL("copy {} ({}) from stdin (format binary, freeze)").format(
        sql.Identifier("gptsql", table), sql.SQL(", ").join(map(sql.Identifier, columns)))


def ensure_unicode_classes(conn: psycopg.Connection) -> None:
    """Fill gptsql.unicode_class once: the tokenizer's letter / number / space classes."""
    if conn.execute("select exists (select from gptsql.unicode_class)").fetchone()[0]:
        return
    with conn.cursor() as cur:
        with cur.copy("copy gptsql.unicode_class (class, lo, hi) from stdin") as cp:
            for row in unicode_class_ranges():
                cp.write_row(row)

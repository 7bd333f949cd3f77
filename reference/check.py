"""`gptsql check`: the SQL engine against the numpy reference, on weights read back from the database."""
from __future__ import annotations

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from .gpt2 import GPT2


# float16 storage also rounds the activations fed to halfvec inner products.
TOLERANCE = {"float32": 1e-3, "float16": 0.1}


def vec(value) -> np.ndarray:
    return value.to_numpy() if hasattr(value, "to_numpy") else np.asarray(value, dtype=np.float32)


def no_progress(stage: str, done: int, total: int) -> None:
    pass


def linear_weight(conn: psycopg.Connection, model_id: int, lname: str, block: int,
                  up: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A layer's (in, out) weight and its bias, put back together from its rows (units in (grp,
    idx) order, each unit's parts side by side); `up`: SwiGLU's up weight, beside c_fc's gate."""
    weight = "coalesce(up_w, up_h::vector)" if up else "coalesce(w, h::vector)"
    rows = conn.execute(
        f"""select part, {weight}, bias from gptsql.linear where model_id = %s and name = %s and block = %s
            order by grp, idx, part""", [model_id, lname, block]).fetchall()
    parts = max(r[0] for r in rows) + 1
    units = len(rows) // parts
    columns = np.stack([np.concatenate([vec(rows[u * parts + p][1]) for p in range(parts)]) for u in range(units)])
    return columns.T.copy(), np.array([rows[u * parts][2] for u in range(units)], dtype=np.float32)


def read_tensors(conn: psycopg.Connection, model_id: int, progress=no_progress) -> tuple[dict[str, np.ndarray], dict]:
    """Rebuild the checkpoint's tensors of a loaded model from its tables, in its family's names
    (progress: one call per block read)."""
    from ..loader.sources import Config

    register_vector(conn)
    row = conn.execute("""select n_vocab, n_ctx, n_embd, n_head, n_layer, layer_norm_epsilon, family, n_kv_head,
                                 n_inner, rope_theta, tied, name, dtype from gptsql.model where id = %s""",
                       [model_id]).fetchone()
    *shape, name, dtype = row
    c = Config(*shape[:6], family=shape[6], n_kv_head=shape[7], n_inner=shape[8], rope_theta=shape[9] or 0.0,
               tied=shape[10])
    llama = c.family == "llama"
    progress("reading the weights", 0, c.n_layer + 1)
    matrix = lambda table: np.stack([vec(r[0]) for r in conn.execute(  # noqa: E731
        f"select coalesce(w, h::vector) from gptsql.{table} where model_id = %s order by token", [model_id])])
    t = {("embed_tokens.weight" if llama else "wte.weight"): matrix("wte")}
    if not c.tied:
        t["lm_head.weight"] = matrix("lm_head")
    if not llama:
        t["wpe.weight"] = np.stack([vec(r[0]) for r in conn.execute(
            "select w from gptsql.wpe where model_id = %s order by place", [model_id])])
    norm_name = {"ln_1": "input_layernorm", "ln_2": "post_attention_layernorm"}
    for lname, block, gamma, beta in conn.execute(
            "select name, block, gamma, beta from gptsql.norm where model_id = %s", [model_id]):
        if llama:
            t["norm.weight" if lname == "ln_f" else f"layers.{block}.{norm_name[lname]}.weight"] = vec(gamma)
        else:
            prefix = "ln_f" if lname == "ln_f" else f"h.{block}.{lname}"
            t[f"{prefix}.weight"], t[f"{prefix}.bias"] = vec(gamma), vec(beta)
    for block in range(c.n_layer):
        progress("reading the weights", 1 + block, c.n_layer + 1)
        if llama:
            at = f"layers.{block}"
            qkv, _ = linear_weight(conn, model_id, "c_attn", block)
            q, k, v = np.split(qkv.T, [c.n_head * c.head_dim, (c.n_head + c.n_kv_head) * c.head_dim])
            t.update({f"{at}.self_attn.q_proj.weight": q, f"{at}.self_attn.k_proj.weight": k,
                      f"{at}.self_attn.v_proj.weight": v})
            for lname, key, up in (("attn_proj", "self_attn.o_proj", False), ("c_fc", "mlp.gate_proj", False),
                                   ("c_fc", "mlp.up_proj", True), ("mlp_proj", "mlp.down_proj", False)):
                t[f"{at}.{key}.weight"] = linear_weight(conn, model_id, lname, block, up)[0].T.copy()
        else:
            for lname, key in (("c_attn", "attn.c_attn"), ("attn_proj", "attn.c_proj"), ("c_fc", "mlp.c_fc"),
                               ("mlp_proj", "mlp.c_proj")):
                t[f"h.{block}.{key}.weight"], t[f"h.{block}.{key}.bias"] = linear_weight(conn, model_id, lname, block)
    return t, {"config": c, "n_head": c.n_head, "n_layer": c.n_layer, "eps": c.layer_norm_epsilon, "name": name,
               "dtype": dtype}


def sql_logits(conn: psycopg.Connection, run_id: int, model_id: int, tokens: list[int], start: int) -> np.ndarray:
    register_vector(conn)
    hidden = conn.execute("select gptsql.forward(%s, %s, %s)", [run_id, tokens, start]).fetchone()[0]
    return np.array(conn.execute("select array_agg(logit order by token) from gptsql.logits(%s, %s)",
                                 [model_id, hidden]).fetchone()[0])


def check_model(conn: psycopg.Connection, model: str | None, prompt: str, n_tokens: int,
                progress=no_progress) -> dict:
    """The prompt's logits from both engines, then n_tokens greedy tokens from each (0: logits only)."""
    model_id = conn.execute("select gptsql.model_id(%s)", [model]).fetchone()[0]
    tensors, cfg = read_tensors(conn, model_id, progress)
    if cfg["config"].family == "llama":
        from .llama import Llama

        ref = Llama(tensors, cfg["config"])
    else:
        ref = GPT2(tensors, cfg["n_head"], cfg["n_layer"], cfg["eps"])
    run_id, _, tokens, _ = conn.execute(
        "select run_id, model_id, tokens, eot from gptsql.start_run(%s, %s, %s, record => false)",
        [cfg["name"], prompt, n_tokens]).fetchone()
    try:
        steps = 2 + 2 * max(n_tokens - 1, 0)
        progress("numpy: the prompt", 0, steps)
        expected = ref.forward(tokens)
        progress("SQL: the prompt", 1, steps)
        got = sql_logits(conn, run_id, model_id, tokens, 0)
        diff = float(np.abs(got - expected[-1]).max())
        sql_tokens = [int(np.argmax(got))][:n_tokens]
        for i in range(n_tokens - 1):
            progress(f"SQL: greedy token {i + 2} of {n_tokens}", 2 + i, steps)
            got = sql_logits(conn, run_id, model_id, [sql_tokens[-1]], len(tokens) + len(sql_tokens) - 1)
            sql_tokens.append(int(np.argmax(got)))
        progress(f"numpy: {n_tokens} greedy tokens", 1 + n_tokens, steps)
        numpy_tokens = ref.generate(tokens, n_tokens)
        progress("done", steps, steps)
    finally:
        conn.execute("select gptsql.finish_run(%s, 'done')", [run_id])
    return {"model": cfg["name"], "max_abs_diff": diff, "positions": len(tokens), "sql_tokens": sql_tokens,
            "numpy_tokens": numpy_tokens, "same_tokens": sql_tokens == numpy_tokens,
            "dtype": cfg["dtype"], "tolerance": TOLERANCE[cfg["dtype"]],
            "ok": diff <= TOLERANCE[cfg["dtype"]] and sql_tokens == numpy_tokens}

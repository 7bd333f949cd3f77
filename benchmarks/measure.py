"""`gptsql bench`: GPT-2 decode (124M shape by default, any random shape with --shape) and prefill in SQL against numpy and PyTorch, in one run,
on the very same weights. Ratios matter, not absolute times (these machines are shared)."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np
import psycopg

from ..reference.gpt2 import GPT2
from ..reference.llama import Llama

Progress = Callable[[str], None]
PROMPT_LEN, DECODE_TOKENS, CONTEXTS = 64, 32, (16, 128, 512, 1000)
PROMPT_LENGTHS, CURVE_DECODE_STEPS = (64, 256, 1000), 3   # the long-prompt curve


def prompt_tokens(n: int, vocab: int = 50257, seed: int = 7) -> list[int]:
    return np.random.default_rng(seed).integers(0, vocab - 1, n).tolist()


def timed(fn):
    began = time.perf_counter()
    value = fn()
    return time.perf_counter() - began, value


def open_run(conn, model: str, n_new: int, record: bool = False, workers: int = 1, connect=None):
    """A run to step by hand: (run id, step(fresh, start) -> token, finish()), through gptsql.step
    on `workers` shares (sql/10_shares.sql)."""
    conn.execute("select set_config('gptsql.shares', %s, false)", [str(workers)])
    run_id = conn.execute("select run_id from gptsql.start_run(%s, '', %s, record => %s)",
                          [model, n_new, record]).fetchone()[0]
    step = lambda fresh, start: conn.execute("select token from gptsql.step(%s, %s, %s)",  # noqa: E731
                                             [run_id, fresh, start], prepare=True).fetchone()[0]
    finish = lambda: conn.execute("select gptsql.finish_run(%s)", [run_id])  # noqa: E731
    conn.execute("delete from gptsql.run_token where run_id = %s", [run_id])  # the '' prompt's token
    return run_id, step, finish


def sql_decode(conn, model: str, tokens: list[int], n_new: int, record: bool = False, workers: int = 1,
               connect=None):
    """Prefill time, per-token decode times and greedy tokens through gptsql.step (the CLI's path
    with --workers 1) or over `workers` backends."""
    _run_id, step, finish = open_run(conn, model, n_new, record, workers, connect)
    fresh, start, out, times = list(tokens), 0, [], []
    prefill = None
    for i in range(n_new):
        elapsed, token = timed(lambda: step(fresh, start))
        if i == 0:
            prefill = elapsed
        else:
            times.append(elapsed)
        start += len(fresh)
        fresh = [token]
        out.append(token)
    finish()
    return prefill, times, out


def sql_long_prompt(conn, model: str, tokens: list[int], n_decode: int = CURVE_DECODE_STEPS) -> tuple[float, float]:
    """(time to first token, median decode step right after it) for a prompt of `tokens` through
    the CLI's path: gptsql.feed per PREFILL_CHUNK places, the last chunk by gptsql.step."""
    from ..driver.generation import Generation

    run_id = conn.execute("select run_id from gptsql.start_run(%s, '', %s, record => false)",
                          [model, n_decode + 1]).fetchone()[0]
    conn.execute("delete from gptsql.run_token where run_id = %s", [run_id])  # the '' prompt's token
    chunk = Generation.PREFILL_CHUNK

    def first_token():
        start = 0
        while len(tokens) - start > chunk:
            conn.execute("select gptsql.feed(%s, %s, %s)", [run_id, tokens[start:start + chunk], start])
            start += chunk
        return conn.execute("select token from gptsql.step(%s, %s, %s)", [run_id, tokens[start:], start]).fetchone()[0]

    ttft, token = timed(first_token)
    times = []
    for i in range(n_decode):
        elapsed, token = timed(lambda: conn.execute("select token from gptsql.step(%s, %s, %s)",
                                                    [run_id, [token], len(tokens) + i], prepare=True).fetchone()[0])
        times.append(elapsed)
    conn.execute("select gptsql.finish_run(%s)", [run_id])
    return ttft, statistics.median(times)


def sql_decode_at_context(conn, model: str, model_id: int, n_ctx: int, n_steps: int = 3, workers: int = 1,
                          connect=None) -> float:
    """Median time of one decode step with the KV cache already holding n_ctx places. The cache is
    filled with random keys and values (a step's cost does not depend on their values)."""
    cfg = conn.execute("select n_head, n_embd / n_head, n_layer from gptsql.model where id = %s",
                       [model_id]).fetchone()
    n_head, head_dim, n_layer = cfg
    run_id, step, finish = open_run(conn, model, n_steps, False, workers, connect)
    conn.execute(
        """insert into gptsql.kv_cache (run_id, block, head, place, k, v)
           select %s, b, h, p, r.k, r.v
           from generate_series(0, %s - 1) b, generate_series(0, %s - 1) h, generate_series(0, %s - 1) p,
                lateral (select array_agg(random()::real - 0.5)::vector as k,
                                array_agg(random()::real - 0.5)::vector as v
                         from generate_series(1, %s) where p >= 0) r""",
        [run_id, n_layer, n_head, n_ctx, head_dim])
    times = [timed(lambda: step([11], n_ctx + i))[0] for i in range(n_steps)]
    finish()
    return statistics.median(times)


def weights_pass(conn, model_id: int, n_embd: int, places: int = 1, repeats: int = 3) -> float:
    """Median time of one pass over every weight row of the model taking one inner product per row
    and place (the vocabulary for one place only) and nothing else: what a step of `places` new
    tokens must at least spend reading and multiplying the weights as pgvector rows. Serial, as the
    engine's statements run."""
    xs = np.random.default_rng(1).standard_normal((places, n_embd)).astype(np.float32)
    literal = "{" + ",".join('"[' + ",".join(f"{v:.6f}" for v in x) + ']"' for x in xs) + "}"
    # A row narrower than n_embd (the Llama family's down projection reads a group of the MLP's
    # hidden units) takes the first elements of x.
    query = """select (select sum(coalesce(inner_product(case when vector_dims(w) = %(n)s then q.xv
                                                             else subvector(q.xv, 1, vector_dims(w)) end, w),
                                            inner_product(case when vector_dims(h) = %(n)s then q.xh
                                                               else subvector(q.xh, 1, vector_dims(h)) end, h)))
                       from gptsql.linear, unnest(%(xs)s::vector[], %(xs)s::vector[]::halfvec[]) as q(xv, xh)
                       where model_id = %(m)s)
                    + (select sum(coalesce(inner_product(q.xv, w), inner_product(q.xv::halfvec, h)))
                       from gptsql.wte, (select (%(xs)s::vector[])[1] as xv) as q
                       where model_id = %(m)s)"""
    times = []
    with conn.transaction():
        conn.execute("set local max_parallel_workers_per_gather = 0")
        for _ in range(repeats + 1):            # the first pass warms the buffers
            times.append(timed(lambda: conn.execute(query, {"xs": literal, "m": model_id, "n": n_embd}).fetchone())[0])
    return statistics.median(times[1:])


def numpy_decode(ref: GPT2 | Llama, tokens, n_new):
    prefill, logits = timed(lambda: ref.forward(tokens))
    out, times = [int(np.argmax(logits[-1]))], []
    for _ in range(n_new - 1):
        elapsed, logits = timed(lambda: ref.forward([out[-1]], start=len(tokens) + len(out) - 1))
        times.append(elapsed)
        out.append(int(np.argmax(logits[-1])))
    return prefill, times, out


def torch_model(checkpoint, tensors: dict[str, np.ndarray]):
    try:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
        from transformers.utils import logging as hf_logging
    except ImportError:
        return None
    hf_logging.set_verbosity_error()    # its deprecation notes (past_key_values...) are not bench output
    c = checkpoint.config
    if c.family == "llama":
        config = LlamaConfig(vocab_size=c.n_vocab, hidden_size=c.n_embd, intermediate_size=c.n_inner,
                             num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head,
                             max_position_embeddings=c.n_ctx, rms_norm_eps=c.layer_norm_epsilon,
                             rope_theta=c.rope_theta, tie_word_embeddings=c.tied)
        kind, prefix, embedding = LlamaForCausalLM, "model.", "embed_tokens.weight"
    else:
        config = GPT2Config(n_layer=c.n_layer, n_embd=c.n_embd, n_head=c.n_head, n_positions=c.n_ctx,
                            vocab_size=c.n_vocab, layer_norm_epsilon=c.layer_norm_epsilon)
        kind, prefix, embedding = GPT2LMHeadModel, "transformer.", "wte.weight"
    # Built without weights and given the numpy arrays themselves (assign): one copy of the model in
    # memory for numpy and PyTorch, 3-6 GB for the large and xl shapes.
    with torch.device("meta"):
        model = kind(config)
    state = {(k if k == "lm_head.weight" else prefix + k): torch.from_numpy(v) for k, v in tensors.items()}
    state.setdefault("lm_head.weight", state[prefix + embedding])
    model.load_state_dict(state, strict=False, assign=True)
    if c.family == "llama":      # the rotary buffers are not weights: made for the real device
        model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    model.eval()
    torch.set_num_threads(2)
    return model


def torch_decode(model, tokens, n_new):
    import torch

    with torch.no_grad():
        prefill, out = timed(lambda: model(torch.tensor([tokens]), use_cache=True))
        past, logits = out.past_key_values, out.logits[0]
        first_logits = logits[-1].numpy().astype(np.float64)
        generated, times = [int(torch.argmax(logits[-1]))], []
        for _ in range(n_new - 1):
            elapsed, out = timed(lambda: model(torch.tensor([[generated[-1]]]), past_key_values=past, use_cache=True))
            past = out.past_key_values
            times.append(elapsed)
            generated.append(int(torch.argmax(out.logits[0, -1])))
    return prefill, times, generated, first_logits


def run(conn: psycopg.Connection, dtype: str = "float32", contexts=CONTEXTS, decode_tokens: int = DECODE_TOKENS,
        shape: str = "gpt2", progress: Progress = lambda s: None, checkpoint=None, workers: int = 1,
        connect=None, prompt_lengths=PROMPT_LENGTHS, batch_sizes=(1, 4, 16), score_texts=(16, 32)) -> dict:
    from ..reference.check import sql_logits
    from ..loader.load import load
    from ..loader.sources import random_model

    results: dict = {"shape": shape, "dtype": dtype}
    progress(f"building random:{shape}")
    checkpoint = checkpoint or random_model(shape)
    name = f"bench-{shape}-{dtype}"
    progress(f"loading {name} ({checkpoint.n_params() / 1e6:.0f}M parameters)")
    results["load_s"], model_id = timed(lambda: load(conn, checkpoint, name, dtype=dtype))
    results["size_bytes"] = conn.execute("select bytes from gptsql.model_size where name = %s", [name]).fetchone()[0]
    results["n_params"] = checkpoint.n_params()

    tokens = prompt_tokens(PROMPT_LEN)
    # On these virtual machines the first ~10 s of work after a pause run up to 2x slower (memory
    # access, not the engine: PyTorch slows down too), so a run is done first and thrown away.
    progress("SQL: warming up (one prefill and a few steps, not counted)")
    sql_decode(conn, name, tokens, 8)
    progress(f"SQL: prefill {PROMPT_LEN} tokens, then {decode_tokens} greedy tokens")
    prefill, times, sql_tokens = sql_decode(conn, name, tokens, decode_tokens + 1)
    results["sql"] = {"prefill_s": prefill, "decode_s": statistics.median(times), "tokens": sql_tokens}

    # the shares a step takes at most: one per head and per MLP group (gptsql.shares() clamps the same way)
    workers = conn.execute("select least(%s, n_head, mlp_groups) from gptsql.model where id = %s",
                           [workers, model_id]).fetchone()[0]
    if workers > 1:
        results["workers"] = side_by_side(conn, name, model_id, tokens, decode_tokens, workers, connect, progress)

    progress("SQL: logits of the prompt's last place")
    run_id = conn.execute("select run_id from gptsql.start_run(%s, '', 0, record => false)", [name]).fetchone()[0]
    sql_first = sql_logits(conn, run_id, model_id, tokens, 0)
    conn.execute("select gptsql.finish_run(%s)", [run_id])

    progress("SQL: one pass over every weight row, one inner product each (the floor of a step)")
    results["sql"]["weights_pass_s"] = weights_pass(conn, model_id, checkpoint.config.n_embd)
    progress(f"SQL: one pass over every weight row with {PROMPT_LEN} places (the floor of the prefill)")
    results["sql"]["prefill_weights_pass_s"] = weights_pass(conn, model_id, checkpoint.config.n_embd,
                                                            places=PROMPT_LEN, repeats=1)

    results["sql"]["by_context"] = {}
    for n_ctx in contexts:
        if n_ctx + 4 > checkpoint.config.n_ctx:
            continue
        progress(f"SQL: decode step with {n_ctx} places in the KV cache")
        results["sql"]["by_context"][n_ctx] = sql_decode_at_context(conn, name, model_id, n_ctx)

    lengths = [n for n in prompt_lengths if n + CURVE_DECODE_STEPS + 1 <= checkpoint.config.n_ctx]
    curve: dict = {}
    for n in lengths:
        progress(f"SQL: time to first token for a prompt of {n} tokens, then {CURVE_DECODE_STEPS} decode steps")
        curve[n] = dict(zip(("sql_ttft_s", "sql_decode_s"), sql_long_prompt(conn, name, prompt_tokens(n, seed=n))))

    progress("numpy reference: same weights")
    tensors = dict(checkpoint.tensors)  # made once here (shapes over 400M are not kept by the load)
    if checkpoint.config.family == "llama":
        ref = Llama(tensors, checkpoint.config)
    else:
        ref = GPT2(tensors, checkpoint.config.n_head, checkpoint.config.n_layer)
    prefill, times, np_tokens = numpy_decode(ref, tokens, decode_tokens + 1)
    results["numpy"] = {"prefill_s": prefill, "decode_s": statistics.median(times), "tokens": np_tokens}

    model = torch_model(checkpoint, tensors)
    if model is not None:
        progress("PyTorch (transformers, 2 threads): same weights")
        prefill, times, pt_tokens, pt_first = torch_decode(model, tokens, decode_tokens + 1)
        results["torch"] = {"prefill_s": prefill, "decode_s": statistics.median(times), "tokens": pt_tokens}
        results["fidelity"] = {
            "max_abs_logit_error": float(np.abs(sql_first - pt_first).max()),
            "top1_same": int(np.argmax(sql_first)) == int(np.argmax(pt_first)),
            "greedy_tokens_same": sql_tokens == pt_tokens,
            "greedy_tokens_agreeing": int(sum(a == b for a, b in zip(sql_tokens, pt_tokens))),
        }
        for n in lengths:
            progress(f"PyTorch: time to first token for a prompt of {n} tokens, then {CURVE_DECODE_STEPS} decode steps")
            ttft, times, _, _ = torch_decode(model, prompt_tokens(n, seed=n), CURVE_DECODE_STEPS + 1)
            point = curve[n]
            point.update(torch_ttft_s=ttft, torch_decode_s=statistics.median(times))
            point.update(ttft_ratio=point["sql_ttft_s"] / point["torch_ttft_s"],
                         decode_ratio=point["sql_decode_s"] / point["torch_decode_s"])
        results["ratios"] = {
            "decode_sql_over_torch": results["sql"]["decode_s"] / results["torch"]["decode_s"],
            "prefill_sql_over_torch": results["sql"]["prefill_s"] / results["torch"]["prefill_s"],
            "weights_pass_over_torch_decode": results["sql"]["weights_pass_s"] / results["torch"]["decode_s"],
            "prefill_weights_pass_over_torch_prefill":
                results["sql"]["prefill_weights_pass_s"] / results["torch"]["prefill_s"],
        }
    results.setdefault("ratios", {})
    results["curve"] = curve
    by_context = results["sql"]["by_context"]
    if by_context and min(by_context) <= 16:   # how decode grows with the context (issue 11: <= 1.3x)
        results["ratios"]["decode_longest_over_ctx16"] = by_context[max(by_context)] / by_context[min(by_context)]
    results["ratios"]["decode_sql_over_numpy"] = results["sql"]["decode_s"] / results["numpy"]["decode_s"]
    results["ratios"]["prefill_sql_over_numpy"] = results["sql"]["prefill_s"] / results["numpy"]["prefill_s"]

    if batch_sizes:
        results["batches"] = batches(conn, name, batch_sizes, max(workers, 1), model, progress)
    if score_texts:
        results["scoring"] = scoring(conn, name, *score_texts, max(workers, 1), progress)

    tokenizer = tokenizer_speed(conn, name, progress)
    if tokenizer:
        results["tokenizer"] = tokenizer
    progress(f"dropping {name}")
    conn.execute("select gptsql.drop_model(%s)", [name])
    return results


def side_by_side(conn, name: str, model_id: int, tokens: list[int], decode_tokens: int, workers: int, connect,
                 progress: Progress, rounds: int = 3) -> dict:
    """One backend and `workers` backends measured in turn (A, B, A, B, ...): the ratios of each
    round, whose neighbours ran under the same load of the machine."""
    progress(f"{workers} workers: warming up")
    sql_decode(conn, name, tokens, 4, workers=workers, connect=connect)
    figures: dict = {"n": workers, "one": [], "workers": []}
    for i in range(rounds):
        for who, n in (("one", 1), ("workers", workers)):
            progress(f"round {i + 1}/{rounds}: {'one backend' if n == 1 else f'{n} workers'}, prefill, decode, "
                     "decode at context 16")
            prefill, times, out = sql_decode(conn, name, tokens, decode_tokens + 1, workers=n, connect=connect)
            at16 = sql_decode_at_context(conn, name, model_id, 16, workers=n, connect=connect)
            figures[who].append({"prefill_s": prefill, "decode_s": statistics.median(times), "ctx16_s": at16,
                                 "tokens": out})
    for key in ("prefill_s", "decode_s", "ctx16_s"):
        figures[f"{key[:-2]}_ratios"] = [b[key] / a[key] for a, b in zip(figures["one"], figures["workers"])]
        for who in ("one", "workers"):
            figures[f"{who}_{key}"] = statistics.median(r[key] for r in figures[who])
    figures["tokens_same"] = all(r["tokens"] == figures["one"][0]["tokens"] for r in figures["one"] + figures["workers"])
    return figures


BATCH_PROMPT = 16    # tokens of each prompt of a batch
BATCH_STEPS = 8      # greedy steps of a batch, after the one that reads the prompts


def sql_batch(conn, name: str, size: int, workers: int) -> tuple[float, list[list[int]]]:
    """Seconds per generated token when `size` runs step together (gptsql.steps), the prompts'
    step not counted, on `workers` shares; and each run's greedy tokens."""
    conn.execute("select set_config('gptsql.shares', %s, false)", [str(workers)])
    runs = [conn.execute("select run_id from gptsql.start_run(%s, '', %s, record => false)",
                         [name, BATCH_STEPS + 1]).fetchone()[0] for _ in range(size)]
    conn.execute("delete from gptsql.run_token where run_id = any(%s)", [runs])   # the '' prompt's token
    fed = [prompt_tokens(BATCH_PROMPT, seed=100 + i) for i in range(size)]
    out: list[list[int]] = [[] for _ in runs]
    elapsed = 0.0
    for step in range(BATCH_STEPS + 1):
        spent, rows = timed(lambda: conn.execute("select token from gptsql.steps(%s, %s, %s)",
                                                 [runs, [t for f in fed for t in f], [len(f) for f in fed]]).fetchall())
        if step:
            elapsed += spent
        fed = [[token] for (token,) in rows]
        for o, (token,) in zip(out, rows):
            o.append(token)
    for run in runs:
        conn.execute("select gptsql.finish_run(%s)", [run])
    return elapsed / (size * BATCH_STEPS), out


def torch_batch(model, size: int) -> tuple[float, list[list[int]]]:
    import torch

    with torch.no_grad():
        tokens = torch.tensor([prompt_tokens(BATCH_PROMPT, seed=100 + i) for i in range(size)])
        out = model(tokens, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        generated, elapsed = [nxt], 0.0
        for _ in range(BATCH_STEPS):
            spent, out = timed(lambda: model(nxt, past_key_values=past, use_cache=True))
            elapsed += spent
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            generated.append(nxt)
    return elapsed / (size * BATCH_STEPS), torch.cat(generated, 1).tolist()


def batches(conn, name: str, sizes, workers: int, model, progress: Progress) -> dict:
    """Per generated token, batches of each size beside one sequence, SQL and PyTorch, and whether
    each sequence of a batch chose the tokens it chooses alone."""
    figures: dict = {}
    alone = {}
    for size in sizes:
        progress(f"SQL: a batch of {size}, {BATCH_STEPS} greedy steps together ({workers} shares)")
        per_token, out = sql_batch(conn, name, size, workers)
        for i, tokens in enumerate(out):
            alone.setdefault(i, tokens)
        figures[size] = {"sql_per_token_s": per_token,
                         "same_as_alone": all(tokens == alone[i] for i, tokens in enumerate(out))}
        if model is not None:
            progress(f"PyTorch: a batch of {size}")
            figures[size]["torch_per_token_s"] = torch_batch(model, size)[0]
    one = figures[min(sizes)]["sql_per_token_s"]
    for size in sizes:
        figures[size]["sql_over_one"] = figures[size]["sql_per_token_s"] / one
    return figures


def scoring(conn, name: str, n_texts: int, length: int, workers: int, progress: Progress) -> dict:
    """Tokens scored per second by gptsql.score: all the texts in one call, then one call each."""
    conn.execute("select set_config('gptsql.shares', %s, false)", [str(workers)])
    texts = [conn.execute("select gptsql.detokenize(%s, %s)", [prompt_tokens(length, seed=500 + i), name]).fetchone()[0]
             for i in range(n_texts)]
    progress(f"SQL: scoring {n_texts} texts of {length} tokens in one call")
    together, rows = timed(lambda: conn.execute("select tokens from gptsql.score(%s, %s)", [texts, name]).fetchall())
    scored = sum(max(t - 1, 0) for (t,) in rows)
    progress(f"SQL: scoring the {n_texts} texts one call each")
    apart, _ = timed(lambda: [conn.execute("select tokens from gptsql.score(%s, %s)", [[t], name]).fetchall()
                              for t in texts])
    return {"texts": n_texts, "length": length, "tokens_scored": scored,
            "together_tokens_per_s": scored / together, "apart_tokens_per_s": scored / apart,
            "together_over_apart": apart / together}


def tokenizer_speed(conn, model: str, progress: Progress) -> dict | None:
    """Tokens per second of the SQL tokenizer on English prose and mixed scripts (the corpus of
    tests/, so only from a clone of the repository)."""
    from . import tokenizer_speed as speed

    if not speed.CORPUS.is_dir():
        return None
    progress("SQL tokenizer throughput")
    return speed.measure(conn, model)

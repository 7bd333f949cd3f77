"""The Llama family through the SQL engine against transformers' LlamaForCausalLM: RMS norms,
rotary embeddings, grouped-query attention (4 query heads on 2 and on 1 key/value heads), SwiGLU
with an MLP width that is no multiple of n_embd, tied and untied output layers; the logits at every
place and the greedy tokens, on 1, 2 and 3 shares, short prompts and one long enough for the
chunked keys (kv_chunk), float32 and float16 storage."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import make_hf_llama

TIED, UNTIED = "llama-engine-tied", "llama-engine-untied"


@pytest.fixture(scope="module")
def llamas(hf_llama, tmp_path_factory, run_cli):
    """{name: torch model} of the two Llamas, loaded."""
    untied_dir = tmp_path_factory.mktemp("llama-engine-untied")
    untied, _ = make_hf_llama(untied_dir, n_layer=3, n_head=4, n_kv_head=1, n_inner=128, tied=False, seed=3)
    run_cli("load", str(hf_llama[0]), "--name", TIED)
    run_cli("load", str(untied_dir), "--name", UNTIED)
    run_cli("load", str(hf_llama[0]), "--name", TIED + "-16", "--dtype", "float16")
    return {TIED: hf_llama[1], UNTIED: untied, TIED + "-16": hf_llama[1]}


def sql_logits(conn, model: str, tokens: list[int], shares: int) -> np.ndarray:
    """The logits after every place of `tokens` (one statement through every block, over `shares`)."""
    conn.execute("select set_config('gptsql.shares', %s, false)", [str(shares)])
    run, model_id = conn.execute("select run_id, model_id from gptsql.start_run(%s, 'x', 0, record => false)",
                                 [model]).fetchone()
    n = len(tokens)
    hidden = conn.execute("select gptsql.forward(%s, %s, %s, %s, %s, gptsql.shares(%s))",
                          [model_id, [run] * n, list(range(n)), tokens, [False] * n, model_id]).fetchone()[0]
    conn.execute("select gptsql.finish_run(%s)", [run])
    return np.stack([np.array(conn.execute("select array_agg(logit order by token) from gptsql.logits(%s, %s)",
                                           [model_id, h]).fetchone()[0]) for h in hidden])


def torch_logits(model, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].double().numpy()


def prompt(n: int, seed: int = 1) -> list[int]:
    return np.random.default_rng(seed).integers(0, 50257, n).tolist()


@pytest.mark.parametrize("shares", [1, 2, 3])
@pytest.mark.parametrize("model", [TIED, UNTIED])
def test_logits_at_every_place_match_transformers(conn, llamas, model, shares):
    tokens = prompt(12)
    got, want = sql_logits(conn, model, tokens, shares), torch_logits(llamas[model], tokens)
    assert np.abs(got - want).max() <= 1e-3


@pytest.mark.parametrize("n", [4, 5, 17, 64, 65])
def test_every_batch_width_of_the_weight_rows(conn, llamas, n):
    """A prompt's places go through each weight row 64 at a time, the rest in the narrowest of 1, 4,
    16 or 64 columns that holds them (gptsql.products_W): each width, and a batch past 64, on 1 and 2
    shares (the projection cut to a share's heads has its own functions)."""
    tokens = prompt(n, seed=n)
    want = torch_logits(llamas[UNTIED], tokens)
    for shares in (1, 2):
        got = sql_logits(conn, UNTIED, tokens, shares)
        assert np.abs(got - want).max() <= 1e-3, shares


def test_a_long_prompt_reads_its_keys_in_chunks(conn, llamas):
    """100 places: queries past 4 chunks of 15 places read them from kv_chunk rows (per key/value head)."""
    tokens = prompt(100, seed=2)
    want = torch_logits(llamas[TIED], tokens)
    for shares in (1, 2):
        got = sql_logits(conn, TIED, tokens, shares)
        assert np.abs(got - want).max() <= 1e-3, shares


def test_float16_storage_stays_close(conn, llamas):
    tokens = prompt(12, seed=3)
    got, want = sql_logits(conn, TIED + "-16", tokens, 2), torch_logits(llamas[TIED], tokens)
    assert np.abs(got - want).max() <= 0.1


@pytest.mark.parametrize("model", [TIED, UNTIED])
def test_greedy_generation_is_transformers(conn, llamas, run_cli, model):
    tokens = prompt(10, seed=4)
    with torch.no_grad():
        want = llamas[model].generate(torch.tensor([tokens]), max_new_tokens=20, do_sample=False,
                                      eos_token_id=None, pad_token_id=0)[0, len(tokens):].tolist()
    for shares in ("1", "2"):
        conn.execute("select set_config('gptsql.shares', %s, false)", [shares])
        run, model_id, toks = conn.execute("select run_id, model_id, tokens from gptsql.start_run(%s, 'x', 20)",
                                           [model]).fetchone()
        conn.execute("delete from gptsql.run_token where run_id = %s", [run])
        fresh, start, got = tokens, 0, []
        for _ in range(20):
            token = conn.execute("select token from gptsql.step(%s, %s, %s)", [run, fresh, start]).fetchone()[0]
            got.append(token)
            start += len(fresh)
            fresh = [token]
        conn.execute("select gptsql.finish_run(%s)", [run])
        assert got == want, shares


def test_check_runs_the_llama_reference(llamas, run_cli):
    """gptsql check reads a Llama back from its tables and runs the numpy Llama block beside SQL."""
    for model in (TIED, UNTIED):
        out = run_cli("check", "-m", model).stdout
        assert out.rstrip().endswith(": same") and "max |Δlogit|" in out, out

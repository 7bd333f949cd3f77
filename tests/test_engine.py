"""The SQL engine against transformers (GPT2LMHeadModel on CPU PyTorch), on random models saved in
the real Hugging Face layout and loaded through `gptsql load DIR`."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pgvector.psycopg import register_vector

PROMPTS = [
    [15496, 11, 616, 1438, 318],                     # "Hello, my name is"
    [25082, 968, 6280, 0, 314, 4601],                # "Happy New Year! I wish"
    [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13, 383, 3290],
    [50256],
]


@pytest.fixture(scope="module")
def hf_model(hf_tiny, run_cli, db):
    directory, model = hf_tiny
    run_cli("load", str(directory), "--name", "hf-tiny", "--dtype", "float32")
    return model


def torch_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy().astype(np.float64)


def new_run(db, model="hf-tiny", max_tokens=0):
    return db.execute("select run_id, model_id from gptsql.start_run(%s, '', %s, record => false)",
                      [model, max_tokens]).fetchone()


def sql_logits(db, run_id, model_id, tokens, start):
    register_vector(db)
    hidden = db.execute("select gptsql.forward(%s, %s, %s)", [run_id, tokens, start]).fetchone()[0]
    return np.array(db.execute("select array_agg(logit order by token) from gptsql.logits(%s, %s)",
                               [model_id, hidden]).fetchone()[0])


@pytest.mark.parametrize("tokens", PROMPTS, ids=[f"prompt{i}" for i in range(len(PROMPTS))])
def test_logits_match_transformers_at_every_position(db, hf_model, tokens):
    expected = torch_logits(hf_model, tokens)
    run_id, model_id = new_run(db)
    # Prefill: the whole prompt at once, last place.
    got = sql_logits(db, run_id, model_id, tokens, 0)
    assert np.abs(got - expected[-1]).max() <= 1e-3
    # Decode: every place one at a time through the KV cache.
    run_id, model_id = new_run(db)
    for place, token in enumerate(tokens):
        got = sql_logits(db, run_id, model_id, [token], place)
        assert np.abs(got - expected[place]).max() <= 1e-3, f"place {place}"
    db.execute("select gptsql.finish_run(%s)", [run_id])


@pytest.mark.parametrize("n", [17, 64, 70])
def test_prompts_past_each_batch_width_match_transformers(db, hf_model, n):
    """Places go through each weight row 64 at a time, the rest in 1, 4, 16 or 64 columns."""
    tokens = (PROMPTS[2] * 8)[:n]
    run_id, model_id = new_run(db)
    got = sql_logits(db, run_id, model_id, tokens, 0)
    db.execute("select gptsql.finish_run(%s)", [run_id])
    assert np.abs(got - torch_logits(hf_model, tokens)[-1]).max() <= 1e-3


def test_distributions_are_peaked(hf_model):
    # The scaled random weights make the comparison meaningful: top-1 well above uniform.
    probs = torch.softmax(torch.tensor(torch_logits(hf_model, PROMPTS[1])[-1]), -1)
    assert probs.max() > 0.05


def hf_greedy(model, tokens, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([tokens]), max_new_tokens=n, do_sample=False,
                             attention_mask=torch.ones(1, len(tokens), dtype=torch.long),
                             pad_token_id=50256)
    return out[0, len(tokens):].tolist()


def test_greedy_continuation_matches_transformers(db, hf_model):
    tokens = PROMPTS[1]
    expected = hf_greedy(hf_model, tokens, 20)
    run_id, model_id = db.execute(
        "select run_id, model_id from gptsql.start_run('hf-tiny', '', 20, record => false)").fetchone()
    got, fresh, start = [], list(tokens), 0
    for _ in range(20):
        token = db.execute("select token from gptsql.step(%s, %s, %s)", [run_id, fresh, start]).fetchone()[0]
        start += len(fresh)
        fresh = [token]
        got.append(token)
        if token == 50256:
            break
    db.execute("select gptsql.finish_run(%s)", [run_id])
    assert got == expected


def test_numpy_reference_matches_transformers(hf_tiny, hf_model):
    from gptsql.loader.sources import from_directory
    from gptsql.reference.gpt2 import GPT2

    directory, model = hf_tiny
    ck = from_directory(directory)
    ref = GPT2(ck.tensors, ck.config.n_head, ck.config.n_layer)
    for tokens in PROMPTS:
        assert np.abs(ref.forward(tokens) - torch_logits(model, tokens)).max() <= 1e-3
    assert ref.generate(PROMPTS[1], 10) == hf_greedy(model, PROMPTS[1], 10)


def test_check_command_compares_sql_and_numpy(run_cli, hf_model):
    result = run_cli("check", "--model", "hf-tiny", "--tokens", "3")
    assert "same" in result.stdout and "max |Δlogit|" in result.stdout


def test_shapes_come_from_config(db, tmp_path, run_cli):
    # A different shape (3 layers, 6 heads, 48 wide) runs with no change to the SQL.
    from helpers import make_hf_model

    model = make_hf_model(tmp_path, n_layer=3, n_embd=48, n_head=6, n_ctx=32, seed=3)
    run_cli("load", str(tmp_path), "--name", "odd-shape", "--dtype", "float32")
    tokens = PROMPTS[0]
    run_id, model_id = new_run(db, "odd-shape")
    got = sql_logits(db, run_id, model_id, tokens, 0)
    assert np.abs(got - torch_logits(model, tokens)[-1]).max() <= 1e-3


def test_float16_storage_keeps_greedy_tokens(db, hf_tiny, hf_model, run_cli):
    # float16 storage (halfvec) is not exact, but close: same top token, small logit error.
    directory, model = hf_tiny
    run_cli("load", str(directory), "--name", "hf-tiny-16", "--dtype", "float16")
    assert db.execute("select dtype from gptsql.model where name = 'hf-tiny-16'").fetchone()[0] == "float16"
    tokens = PROMPTS[1]
    run_id, model_id = new_run(db, "hf-tiny-16")
    got = sql_logits(db, run_id, model_id, tokens, 0)
    expected = torch_logits(model, tokens)[-1]
    assert np.abs(got - expected).max() <= 0.1
    assert int(np.argmax(got)) == int(np.argmax(expected))


def test_recorded_activations_match_transformers(db, hf_model):
    """What a run records for exploring is the model's own: the attention weights of every block,
    head and place against transformers' (output_attentions), and the residual stream after each
    block but the last against its hidden states (the last one of those has ln_f applied)."""
    from gptsql.driver.generation import Generation

    gen = Generation(db, "hf-tiny", "Happy New Year! I wish", 4, record=True)
    generated = [token for token, _raw, _p in gen.steps()]
    read = list(gen.prompt_tokens) + generated[:-1]            # the last chosen token is never read back
    hf_model.set_attn_implementation("eager")
    with torch.no_grad():
        out = hf_model(torch.tensor([read]), output_attentions=True, output_hidden_states=True)
    n_layer, n_head = len(out.attentions), out.attentions[0].shape[1]
    rows = db.execute("select block, head, place, weights from gptsql.attention_row where run_id = %s",
                      [gen.run_id]).fetchall()
    assert len(rows) == n_layer * n_head * len(read)
    for block, head, place, weights in rows:
        expected = out.attentions[block][0, head, place, :place + 1].numpy()
        assert np.abs(np.array(weights) - expected).max() <= 1e-5, (block, head, place)
    register_vector(db)
    for block, place, after_mlp in db.execute(
            "select block, place, after_mlp from gptsql.residual where run_id = %s and block < %s",
            [gen.run_id, n_layer - 1]):
        expected = out.hidden_states[block + 1][0, place].numpy()
        assert np.abs(after_mlp.to_numpy() - expected).max() <= 1e-4, (block, place)


def test_attention_far_apart_scores_match_transformers(db, tmp_path, run_cli):
    """Attention scores far apart (a query's own score far below another key's) take the softmax's
    second pass; the logits still match transformers'."""
    from helpers import make_hf_model

    model = make_hf_model(tmp_path, n_layer=2, n_embd=32, n_head=2, n_ctx=32, seed=5)
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(12)
    model.save_pretrained(tmp_path, safe_serialization=True)
    tokens = PROMPTS[2]
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(torch.tensor([tokens]), output_attentions=True)
    # Some query's own weight is below e^-80 of its largest: another key's score passes its own by > 80.
    own = [a[0].diagonal(dim1=-2, dim2=-1) / a[0].max(dim=-1).values for a in out.attentions]
    assert min(float(o.min()) for o in own) < np.exp(-80)
    run_cli("load", str(tmp_path), "--name", "far-apart", "--dtype", "float32")
    expected = torch_logits(model, tokens)
    run_id, model_id = new_run(db, "far-apart")
    got = sql_logits(db, run_id, model_id, tokens, 0)
    assert np.abs(got - expected[-1]).max() <= 1e-3
    run_id, model_id = new_run(db, "far-apart")
    for place, token in enumerate(tokens):
        got = sql_logits(db, run_id, model_id, [token], place)
        assert np.abs(got - expected[place]).max() <= 1e-3, f"place {place}"
    # The weights a recorded run keeps come from the same second pass.
    run_id = db.execute("select run_id from gptsql.start_run('far-apart', '', 0)").fetchone()[0]
    db.execute("select gptsql.forward(%s, %s, 0)", [run_id, tokens])
    for block, head, place, weights in db.execute(
            "select block, head, place, weights from gptsql.attention_row where run_id = %s", [run_id]):
        want = out.attentions[block][0, head, place, :place + 1].numpy()
        assert np.abs(np.array(weights) - want).max() <= 1e-5, (block, head, place)

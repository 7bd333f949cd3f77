"""The explorer's stages (sql/11_explore.sql) against transformers: every number a stage function
computes again for one place of a recorded run — embeddings, the norms' statistics, a head's q, k,
v, scores and weights, its share of the projection, the MLP's hidden units, the logit lens and the
sampling cut — is the transformers GPT-2's own, computed by its modules on the same tokens; and
where the run recorded a number too (attention weights, the residual stream, the step's
candidates, the token drawn), the stage's equals it."""
from __future__ import annotations

import numpy as np
import psycopg
import pytest
import torch

from gptsql.driver.shares import start_generation

MODEL = "hf-explore"
PROMPT = "Happy New Year! I wish you all the best for"
SAMPLING = dict(temperature=1.2, top_k=6, top_p=0.9, seed=5)
N_NEW = 5


@pytest.fixture(scope="module")
def hf_model(hf_tiny, run_cli):
    directory, model = hf_tiny
    run_cli("load", str(directory), "--name", MODEL, "--dtype", "float32", "--replace")
    return model


@pytest.fixture(scope="module")
def recorded(database, db, hf_model):
    """A sampled, seeded, recorded run: (run id, the tokens the blocks read, the generated ones)."""
    gen = start_generation(database, db, 1, MODEL, PROMPT, N_NEW, record=True, **SAMPLING)
    for _ in gen.steps():
        pass
    tokens = list(gen.prompt_tokens) + list(gen.tokens)
    return gen.run_id, tokens[:-1], list(gen.tokens), len(gen.prompt_tokens)


@pytest.fixture(scope="module")
def reference(hf_model, recorded):
    """transformers' numbers on the run's tokens: hidden[b] is the input of block b (hidden[n_layer]:
    ln_f's input), attended[b] block b's attention output (taken by a hook: the model passes its
    attention the causal mask, whichever implementation the model was set to), and the logits."""
    _run, read, _generated, _n = recorded
    attended = {}
    hooks = [block.attn.register_forward_hook(lambda m, a, out, b=b: attended.__setitem__(b, out[0][0]))
             for b, block in enumerate(hf_model.transformer.h)]
    try:
        with torch.no_grad():
            out = hf_model(torch.tensor([read]), output_hidden_states=True)
    finally:
        for hook in hooks:
            hook.remove()
    hidden = [h[0] for h in out.hidden_states[:-1]]       # the last one is after ln_f
    last = hf_model.transformer.h[-1]
    with torch.no_grad():
        a = hidden[-1] + attended[len(hidden) - 1]
        hidden.append(a + last.mlp(last.ln_2(a)))
    return hidden, out.logits[0].double().numpy(), attended


def stage(db, function: str, *args) -> dict:
    """A stage function's rows by step: {step: (what, [(at_place, unit, value, vals)])}."""
    found: dict = {}
    for step, what, at_place, unit, value, vals in db.execute(f"select * from gptsql.{function}", args):
        found.setdefault(step, (what, []))[1].append((at_place, unit, value, None if vals is None else np.array(vals)))
    return found


def vector(found: dict, step: int) -> np.ndarray:
    (_place, _unit, _value, vals), = found[step][1]
    return vals


def close(got, want, what, rtol=2e-4):
    want = np.asarray(want, dtype=np.float64)
    scale = max(float(np.abs(want).max()), 1e-6)
    assert got is not None and np.shape(got) == np.shape(want), f"{what}: shape {np.shape(got)} != {np.shape(want)}"
    assert np.abs(np.asarray(got) - want).max() <= rtol * scale, f"{what}: off by {np.abs(got - want).max()}"


def tensor(x) -> np.ndarray:
    return x.detach().double().numpy()


PLACES = (0, 5, -1)                 # the first, one inside the prompt, the last the blocks read


def places(recorded):
    return [p % len(recorded[1]) for p in PLACES]


def test_embeddings_are_wte_and_wpe(db, hf_model, recorded, reference):
    run, read, _gen, _n = recorded
    hidden, _logits, _attended = reference
    wte, wpe = hf_model.transformer.wte.weight, hf_model.transformer.wpe.weight
    for place in places(recorded):
        found = stage(db, "explore_embedding(%s, %s)", run, place)
        assert [found[s][0] for s in (1, 2)] == [f"token embedding: row {read[place]} of wte",
                                                 f"position embedding: row {place} of wpe"]
        close(vector(found, 1), tensor(wte[read[place]]), "wte")
        close(vector(found, 2), tensor(wpe[place]), "wpe")
        close(vector(found, 3), tensor(hidden[0][place]), "input")


@pytest.mark.parametrize("norm", ["ln_1", "ln_2", "ln_f"])
def test_each_norm_its_statistics_and_output(db, hf_model, recorded, reference, norm):
    run, _read, _gen, _n = recorded
    hidden, _logits, attended = reference
    blocks = [None] if norm == "ln_f" else range(len(hf_model.transformer.h))
    for block in blocks:
        if norm == "ln_f":
            module, x = hf_model.transformer.ln_f, hidden[-1]
        elif norm == "ln_1":
            module, x = hf_model.transformer.h[block].ln_1, hidden[block]
        else:
            blk = hf_model.transformer.h[block]
            x = hidden[block] + attended[block]
            module = blk.ln_2
        for place in places(recorded):
            found = stage(db, "explore_norm(%s, %s, %s, %s)", run, place, norm, block)
            xp = tensor(x[place])
            mean, var = xp.mean(), xp.var()
            close(vector(found, 1), xp, f"{norm} {block} input")
            close(found[2][1][0][2], mean, "mean", rtol=1e-3)
            close(vector(found, 3), xp - mean, "x - mean")
            close(found[4][1][0][2], var, "variance")
            close(found[5][1][0][2], 1 / np.sqrt(var + module.eps), "1/sqrt")
            close(vector(found, 6), (xp - mean) / np.sqrt(var + module.eps), "normalised")
            close(vector(found, 7), tensor(module.weight), "gamma")
            close(vector(found, 8), tensor(module.bias), "beta")
            with torch.no_grad():
                close(vector(found, 9), tensor(module(x[place])), f"{norm} {block} output")


def test_a_heads_queries_keys_values_scores_and_weights(db, hf_model, recorded, reference):
    """Every head of every block at three places: q, the keys and values of the places up to it,
    the scores, scaled, masked and softmaxed (and the weights the run recorded: the same), the
    weighted values and their share of the projection; the shares of all heads and the projection's
    bias add up to the attention output the run recorded."""
    run, read, _gen, _n = recorded
    hidden, _logits, attended = reference
    n_embd, n_head = hf_model.config.n_embd, hf_model.config.n_head
    d = n_embd // n_head
    for block, blk in enumerate(hf_model.transformer.h):
        with torch.no_grad():
            x = blk.ln_1(hidden[block])
            q, k, v = blk.attn.c_attn(x).split(n_embd, dim=-1)
        attention_output = tensor(attended[block])
        for place in places(recorded):
            shares = np.zeros(n_embd)
            for head in range(n_head):
                cols = slice(head * d, (head + 1) * d)
                found = stage(db, "explore_attention(%s, %s, %s, %s)", run, place, block, head)
                qh, kh, vh = tensor(q[place, cols]), tensor(k[:place + 1, cols]), tensor(v[:place + 1, cols])
                close(vector(found, 1), qh, "q")
                assert [r[0] for r in found[2][1]] == list(range(place + 1)), "a key for every place up to the query"
                close(np.stack([r[3] for r in found[2][1]]), kh, "k")
                close(np.stack([r[3] for r in found[3][1]]), vh, "v")
                scores = kh @ qh
                close(np.array([r[2] for r in found[4][1]]), scores, "q·k")
                close(np.array([r[2] for r in found[5][1]]), scores / np.sqrt(d), "scaled")
                mask = [r[2] for r in found[6][1]]
                assert mask == [0.0] * (place + 1) + [None] * (len(read) - place - 1), "the causal mask"
                weights = np.exp(scores / np.sqrt(d) - (scores / np.sqrt(d)).max())
                weights /= weights.sum()
                softmax = np.array([r[2] for r in found[7][1]])
                close(softmax, weights, "softmax")
                close(np.array([r[2] for r in found[8][1]]), softmax, "the recorded weights", rtol=1e-6)
                close(vector(found, 9), weights @ vh, "z")
                share = vector(found, 10)
                close(share, (weights @ vh) @ tensor(blk.attn.c_proj.weight[cols]), "the head's share")
                shares += share
            projection = stage(db, "explore_projection(%s, %s, %s)", run, place, block)
            recorded_output = vector(projection, 2)
            close(recorded_output, attention_output[place], "the attention output")
            close(shares + tensor(blk.attn.c_proj.bias), recorded_output, "every head's share and the bias")
            close(vector(projection, 1), tensor(hidden[block][place]), "the block's input")
            close(vector(projection, 3), tensor(hidden[block][place]) + attention_output[place], "after the attention")


def test_the_mlps_hidden_units(db, hf_model, recorded, reference):
    run, _read, _gen, _n = recorded
    hidden, _logits, attended = reference
    for block, blk in enumerate(hf_model.transformer.h):
        with torch.no_grad():
            a = hidden[block] + attended[block]
            x = blk.ln_2(a)
            pre = blk.mlp.c_fc(x)
            post = blk.mlp.act(pre)
            out = blk.mlp.c_proj(post)
        for place in places(recorded):
            found = stage(db, "explore_mlp(%s, %s, %s)", run, place, block)
            close(vector(found, 1), tensor(x[place]), "input")
            close(vector(found, 2), tensor(pre[place]), "before GELU")
            assert 3 not in found, "GPT-2 has no up projection"
            close(vector(found, 4), tensor(post[place]), "after GELU")
            strongest = found[5][1]
            want = np.argsort(-np.abs(tensor(post[place])), kind="stable")[:10]
            assert [r[1] for r in strongest] == want.tolist()
            for _p, unit, value, (before, after) in strongest:
                close(np.array([before, after, value]), [tensor(pre[place, unit]), tensor(post[place, unit]),
                                                         tensor(post[place, unit])], f"unit {unit}")
            close(vector(found, 6), tensor(out[place]), "MLP output")
            close(vector(found, 7), vector(found, 6), "what the run recorded it added")
            close(vector(found, 8), tensor(a[place] + out[place]), "after the MLP")


def test_the_logit_lens(db, hf_model, recorded, reference):
    run, read, _gen, _n = recorded
    hidden, _logits, _attended = reference
    wte = tensor(hf_model.transformer.wte.weight)
    n_layer = len(hf_model.transformer.h)
    lens = db.execute("select block, place, rank, token, probability, is_next from gptsql.explore_lens(%s, 3, 5, 0, %s, 2)",
                      [run, n_layer - 1]).fetchall()
    assert [(b, p, r) for b, p, r, *_ in lens] == [(b, p, r) for b in range(n_layer) for p in (3, 4, 5) for r in (1, 2)]
    for block, place, rank, token, probability, is_next in lens:
        with torch.no_grad():
            logits = tensor(hf_model.transformer.ln_f(hidden[block + 1][place])) @ wte.T
        e = np.exp(logits - logits.max())
        order = np.lexsort((np.arange(len(logits)), -logits))
        assert token == order[rank - 1]
        close(probability, e[token] / e.sum(), "lens probability", rtol=2e-3)
        assert is_next == (token == read[place + 1])


def cut(logits: np.ndarray, temperature, top_k, top_p) -> dict[int, float]:
    """The tokens top-k / top-p keep at a temperature, and the probability each is drawn with."""
    order = np.lexsort((np.arange(len(logits)), -logits))
    e = np.exp((logits[order] - logits.max()) / temperature)
    if top_k:
        order, e = order[:top_k], e[:top_k]
    p = e / e.sum()
    keep = (np.cumsum(p) - p) < top_p
    return dict(zip(order[keep].tolist(), (p[keep] / p[keep].sum()).tolist()))


def test_the_sampling_cut_and_the_draw(db, hf_model, recorded, reference):
    """At every place the run drew from: the probabilities over the whole vocabulary at 1 and at the
    run's temperature, the tokens top-k / top-p keep and the probability each is drawn with (against
    a numpy cut of transformers' logits), the recorded candidates' probabilities, and the engine's
    draw with the run's seed: the token the run went on with. At a temperature asked for instead,
    the cut moves."""
    run, read, generated, n_prompt = recorded
    _hidden, logits, _attended = reference
    for place in range(n_prompt - 1, len(read)):
        rows = db.execute("select * from gptsql.explore_sampling(%s, %s)", [run, place]).fetchall()
        top = logits[place]
        probability = np.exp(top - top.max()) / np.exp(top - top.max()).sum()
        at_t = np.exp((top - top.max()) / SAMPLING["temperature"])
        at_t /= at_t.sum()
        order = np.lexsort((np.arange(len(top)), -top))
        want = cut(top, SAMPLING["temperature"], SAMPLING["top_k"], SAMPLING["top_p"])
        shown = [r for r in rows if r[0] <= 20]
        assert [r[1] for r in shown] == order[:20].tolist()
        for rank, token, _piece, logit, p, p_t, _cum, kept, p_drawn, _drawn, _next in shown:
            assert abs(logit - top[token]) <= 1e-3
            close(p, probability[token], "probability", rtol=2e-3)
            close(p_t, at_t[token], "at the temperature", rtol=2e-3)
            assert kept == (token in want), f"place {place} rank {rank}"
            close(p_drawn, want.get(token, 0.0), "drawn with", rtol=2e-3)
        step_logits = dict(db.execute("select token, probability from gptsql.step_logit where run_id = %s and place = %s",
                                      [run, place]).fetchall())
        for rank, token, *_rest in shown[:10]:
            assert step_logits[token] == pytest.approx(rows[rank - 1][4], rel=1e-9), "the recorded candidates"
        went_on = generated[place - n_prompt + 1]
        assert [r[1] for r in rows if r[9]] == [went_on], "the engine's draw is the token the run went on with"
        assert [r[1] for r in rows if r[10]] == [went_on]
    greedy = db.execute("select token, kept, p_drawn from gptsql.explore_sampling(%s, %s, 0) where kept",
                        [run, len(read) - 1]).fetchall()
    assert greedy == [(int(np.argmax(logits[-1])), True, 1.0)]
    wide = db.execute("select count(*) from gptsql.explore_sampling(%s, %s, 2.0, 0, 1, 50) where kept",
                      [run, len(read) - 1]).fetchone()[0]
    assert wide == 50, "no top-k, no top-p: every token shown is kept"


def test_a_prompts_next_token_is_shown_though_not_drawn(db, recorded):
    """At a place inside the prompt, the next token is the prompt's (marked next, however far down
    it ranks), and nothing was drawn there."""
    run, read, _gen, _n = recorded
    rows = db.execute("select rank, token, drawn, next from gptsql.explore_sampling(%s, 2, shown => 3)",
                      [run]).fetchall()
    assert [r[1] for r in rows if r[3]] == [read[3]]
    assert all(r[2] is None for r in rows)
    assert len(rows) in (3, 4) and rows[-1][3]


@pytest.mark.parametrize("call, needle", [
    ("explore_embedding(999999, 0)", "there is no run 999999"),
    ("explore_embedding({run}, 500)", "went through the blocks at places 0 to"),
    ("explore_embedding({run}, -1)", "not at place -1"),
    ("explore_norm({run}, 0, 'ln_1', 7)", "the model has blocks 0 to 1, not 7"),
    ("explore_attention({run}, 0, 0, 4)", "the model has heads 0 to 3, not 4"),
    ("explore_mlp({run}, 0, -1)", "the model has blocks 0 to 1, not -1"),
    ("explore_lens({run}, 0, 999, 0, 1)", "not at place 999"),
])
def test_bad_arguments_are_one_line(db, recorded, call, needle):
    with pytest.raises(psycopg.errors.RaiseException) as refused:
        db.execute(f"select * from gptsql.{call.format(run=recorded[0])}")
    assert needle in str(refused.value).splitlines()[0]


def test_a_run_without_records_is_refused(db, hf_model):
    db.execute("select gptsql.generate('Hello', 2, model => %s, record => false)", [MODEL])
    run = db.execute("select max(id) from gptsql.run").fetchone()[0]
    with pytest.raises(psycopg.errors.RaiseException, match=f"run {run} kept no activations"):
        db.execute("select * from gptsql.explore_embedding(%s, 0)", [run])


def test_a_llama_runs_stages_match_what_it_recorded(database, db, run_cli, hf_llama):
    """The Llama family (grouped-query attention: 4 query heads on 2 key/value heads; rotary
    embeddings; RMS norms; SwiGLU): each query head's recomputed weights equal the weights the run
    recorded, every head's share of the projection adds up to the recorded attention output, and the
    MLP's stage runs."""
    run_cli("load", str(hf_llama[0]), "--name", "explore-llama", "--replace")
    gen = start_generation(database, db, 1, "explore-llama", PROMPT, 3, record=True, temperature=0)
    for _ in gen.steps():
        pass
    run, n_head = gen.run_id, hf_llama[1].config.num_attention_heads
    last = len(gen.prompt_tokens) + 1
    for block in range(hf_llama[1].config.num_hidden_layers):
        for place in (0, 5, last):
            shares = 0
            for head in range(n_head):
                found = stage(db, "explore_attention(%s, %s, %s, %s)", run, place, block, head)
                close(np.array([r[2] for r in found[7][1]]), np.array([r[2] for r in found[8][1]]),
                      f"head {head}'s weights against the recorded ones", rtol=1e-5)
                shares = shares + vector(found, 10)
            projection = stage(db, "explore_projection(%s, %s, %s)", run, place, block)
            close(shares, vector(projection, 2), "every head's share: the recorded attention output")
            assert stage(db, "explore_mlp(%s, %s, %s)", run, place, block)
    assert stage(db, "explore_norm(%s, %s, %s, %s)", run, 5, "ln_1", 0)

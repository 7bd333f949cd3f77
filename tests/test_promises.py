"""Promises of the README that no other test could fail: greedy ties go to the lower token id,
generation stops at <|endoftext|>, a layer_norm_epsilon other than 1e-5, the residual stream after
the attention (and after the last block's MLP) against transformers, the CLI's --no-record,
--allow-special and default temperature, "run is full" from gptsql.step, a load that breaks
half-way leaves nothing behind, `runs drop --older-than` in every unit, and what predict and
detokenize print (db status and db stop: tests/test_durability.py, on its private server).

Models with a tie or an <|endoftext|> are transformers' own random GPT-2s with a few token
embeddings changed on purpose (GPT-2 ties its output layer to wte, so a copied row ties a logit)."""
from __future__ import annotations

import json
import re
import shutil
import numpy as np
import psycopg
import pytest
import torch
from pgvector.psycopg import register_vector

from helpers import make_hf_model
from gptsql.driver.generation import Generation
from gptsql.driver.shares import start_generation

PROMPT = "Happy New Year! I wish"
PROMPT_TOKENS = [25082, 968, 6280, 0, 314, 4601]
EOT = 50256


def load_dir(run_cli, directory, name):
    run_cli("load", str(directory), "--name", name, "--dtype", "float32", "--replace")
    return name


def torch_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy().astype(np.float64)


def sql_logits(db, model, tokens):
    register_vector(db)
    run_id, model_id = db.execute("select run_id, model_id from gptsql.start_run(%s, '', 0, record => false)",
                                  [model]).fetchone()
    hidden = db.execute("select gptsql.forward(%s, %s, 0)", [run_id, tokens]).fetchone()[0]
    db.execute("select gptsql.finish_run(%s)", [run_id])
    return np.array(db.execute("select array_agg(logit order by token) from gptsql.logits(%s, %s)",
                               [model_id, hidden]).fetchone()[0])


def greedy(database, db, model, n, workers=1, prompt=PROMPT):
    gen = start_generation(database, db, workers, model, prompt, n, record=True)
    for _ in gen.steps():
        pass
    return gen.run_id, list(gen.tokens)


def run_of(db, prompt, model):
    """The newest run of this prompt on this model."""
    return db.execute("select max(r.id) from gptsql.run r join gptsql.model m on m.id = r.model_id "
                      "where r.prompt = %s and m.name = %s", [prompt, model]).fetchone()[0]


# -------------------------------------------------------------------------------- greedy ties
LOW, HIGH = 10, 40000            # one in each half of the vocabulary: the two workers' shards


@pytest.fixture(scope="module")
def tied(tmp_path_factory, run_cli):
    """A model whose first greedy choice ties three ways: tokens LOW and HIGH get the embedding of
    the token transformers would choose, so their logits equal its logit exactly."""
    directory = tmp_path_factory.mktemp("tied")
    model = make_hf_model(directory, seed=1)
    first = int(np.argmax(torch_logits(model, PROMPT_TOKENS)[-1]))
    assert first not in PROMPT_TOKENS and LOW < first != HIGH
    with torch.no_grad():
        wte = model.transformer.wte.weight
        wte[LOW] = wte[first]
        wte[HIGH] = wte[first]
    model.save_pretrained(directory, safe_serialization=True)
    return load_dir(run_cli, directory, "tied"), first, model


@pytest.mark.parametrize("workers", [1, 2], ids=["one backend", "two workers"])
def test_greedy_ties_go_to_the_lower_id(database, db, tied, workers):
    model, first, _torch = tied
    run_id, tokens = greedy(database, db, model, 1, workers)
    assert tokens == [LOW]
    top = db.execute("select rank, token, logit from gptsql.step_candidates where run = %s and rank <= 3 "
                     "order by rank", [run_id]).fetchall()
    assert [t for _, t, _ in top] == sorted([LOW, first, HIGH])
    assert len({logit for _, _, logit in top}) == 1                 # an exact tie


def test_greedy_ties_from_sql_and_cli(db, tied, run_cli):
    model, _first, _torch = tied
    assert db.execute("select token from gptsql.predict(%s, 1, %s)", [PROMPT, model]).fetchone()[0] == LOW
    text = db.execute("select gptsql.detokenize(array[%s], %s)", [LOW, model]).fetchone()[0]
    assert db.execute("select gptsql.generate(%s, 1, model => %s)", [PROMPT, model]).fetchone()[0] == text
    assert run_cli("generate", "-m", model, "-t", "0", "-n", "1", PROMPT).stdout == PROMPT + text + "\n"


# -------------------------------------------------------------------------------- end of text
def plant_endoftext(model, prompt_tokens, n=6):
    """Give <|endoftext|> a multiple c of the embedding of the token greedy would take at some
    step s > 1, with c chosen so that its logit passes every other at step s but none before
    (margins of 0.5): greedy then writes s - 1 tokens and stops. Returns (s, those tokens)."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_tokens]), max_new_tokens=n, do_sample=False,
                             attention_mask=torch.ones(1, len(prompt_tokens), dtype=torch.long), pad_token_id=EOT)
        chosen = out[0, len(prompt_tokens):].tolist()
        read = prompt_tokens + chosen[:-1]
        hidden = model.transformer(torch.tensor([read])).last_hidden_state[0, len(prompt_tokens) - 1:].double()
        wte = model.transformer.wte.weight
        embeddings = wte.detach().double()
        best = (hidden @ embeddings.T).max(dim=1).values
    assert EOT not in chosen
    for s in (3, 4, 2, 5):
        a = hidden[:s] @ embeddings[chosen[s - 1]]            # its logit at steps 1..s, over c
        if a[s - 1] <= 0:
            continue
        lo = 1 + 0.5 / float(a[s - 1])
        hi = min([(float(best[j]) - 0.5) / float(a[j]) for j in range(s - 1) if a[j] > 0] + [lo + 2.0])
        if lo < hi:
            with torch.no_grad():
                wte[EOT] = (lo + hi) / 2 * wte[chosen[s - 1]]
            return s, chosen[:s - 1]
    raise AssertionError("no step to plant <|endoftext|> at")


@pytest.fixture(scope="module")
def ends(tmp_path_factory, run_cli):
    directory = tmp_path_factory.mktemp("ends")
    model = make_hf_model(directory, seed=2)
    s, before = plant_endoftext(model, PROMPT_TOKENS)
    model.save_pretrained(directory, safe_serialization=True)
    with torch.no_grad():           # transformers itself stops there
        out = model.generate(torch.tensor([PROMPT_TOKENS]), max_new_tokens=10, do_sample=False, eos_token_id=EOT,
                             attention_mask=torch.ones(1, len(PROMPT_TOKENS), dtype=torch.long), pad_token_id=EOT)
    assert out[0, len(PROMPT_TOKENS):].tolist() == before + [EOT]
    return load_dir(run_cli, directory, "ends"), before


@pytest.mark.parametrize("workers", ["1", "2"])
def test_generation_stops_at_endoftext(db, ends, run_cli, workers):
    model, before = ends
    text = db.execute("select gptsql.detokenize(%s, %s)", [before, model]).fetchone()[0]
    result = run_cli("generate", "-m", model, "-t", "0", "-n", "10", "--workers", workers, PROMPT)
    assert result.stdout == PROMPT + text + "\n"
    run_id = run_of(db, PROMPT, model)
    assert db.execute("select status, generated_tokens, generated_text from gptsql.runs where run = %s",
                      [run_id]).fetchone() == ("done", len(before) + 1, text)
    generated = db.execute("select token from gptsql.run_token where run_id = %s and not is_prompt order by place",
                           [run_id]).fetchall()
    assert [t for (t,) in generated] == before + [EOT]
    # gptsql.generate's recursive query stops there too (the text leaves <|endoftext|> out either way).
    assert db.execute("select gptsql.generate(%s, 10, model => %s)", [PROMPT, model]).fetchone()[0] == text
    generated = db.execute("select token from gptsql.run_token where run_id = %s and not is_prompt order by place",
                           [run_of(db, PROMPT, model)]).fetchall()
    assert [t for (t,) in generated] == before + [EOT]


# --------------------------------------------------------------------------- layer_norm_epsilon
def test_layer_norm_epsilon_other_than_the_default(database, db, tmp_path, run_cli):
    """On one backend (every logit) and over two workers (their own ln_f: the ten best logits)."""
    from gptsql.driver.shares import start_prediction

    model = make_hf_model(tmp_path, seed=4)
    tokens = PROMPT_TOKENS
    default = torch_logits(model, tokens)
    model.config.layer_norm_epsilon = 0.1
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = 0.1
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert json.loads((tmp_path / "config.json").read_text())["layer_norm_epsilon"] == 0.1
    expected = torch_logits(model, tokens)
    assert np.abs(expected - default).max() > 0.05              # the epsilon matters to these logits
    name = load_dir(run_cli, tmp_path, "epsilon")
    assert db.execute("select layer_norm_epsilon from gptsql.model where name = %s", [name]).fetchone()[0] == 0.1
    assert np.abs(sql_logits(db, name, tokens) - expected[-1]).max() <= 1e-3
    rows = start_prediction(database, db, 2, name, PROMPT).predict(10)
    assert [r[1] for r in rows] == np.argsort(-expected[-1], kind="stable")[:10].tolist()
    assert np.abs(np.array([r[4] for r in rows]) - expected[-1][[r[1] for r in rows]]).max() <= 1e-3


# ----------------------------------------------------------------------- the residual stream
def test_residual_stream_against_transformers(db, tied):
    """after_attention of every block (the block's input plus its attention's output, taken with
    hooks) and after_mlp of the last block (its output before ln_f) against transformers'."""
    name, _first, hf_model = tied
    gen = Generation(db, name, PROMPT, 4, record=True)
    generated = [token for token, _raw, _p in gen.steps()]
    read = list(gen.prompt_tokens) + generated[:-1]
    blocks = hf_model.transformer.h
    inputs, attn, outputs = {}, {}, {}
    hooks = []
    for i, block in enumerate(blocks):
        hooks.append(block.register_forward_pre_hook(lambda m, args, kw, i=i: inputs.__setitem__(i, args[0] if args else kw["hidden_states"]),
                                                     with_kwargs=True))
        hooks.append(block.attn.register_forward_hook(lambda m, a, out, i=i: attn.__setitem__(i, out[0])))
        hooks.append(block.register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(
            i, out[0] if isinstance(out, tuple) else out)))
    try:
        with torch.no_grad():
            hf_model(torch.tensor([read]))
    finally:
        for hook in hooks:
            hook.remove()
    register_vector(db)
    rows = db.execute("select block, place, after_attention, after_mlp from gptsql.residual where run_id = %s",
                      [gen.run_id]).fetchall()
    assert len(rows) == len(blocks) * len(read)
    last = len(blocks) - 1
    for block, place, after_attention, after_mlp in rows:
        want = (inputs[block] + attn[block])[0, place].numpy()
        assert np.abs(after_attention.to_numpy() - want).max() <= 1e-4, ("after_attention", block, place)
        if block == last:
            want = outputs[block][0, place].numpy()
            assert np.abs(after_mlp.to_numpy() - want).max() <= 1e-4, ("after_mlp", block, place)


# -------------------------------------------------------------------------------------- CLI
def test_no_record_keeps_the_tokens_only(db, tiny, run_cli):
    prompt = "No record, please"
    out = run_cli("generate", "-m", tiny, "-n", "3", "-t", "0", "--no-record", prompt).stdout
    run_id = run_of(db, prompt, tiny)
    recorded, n_generated, text = db.execute(
        "select recorded, generated_tokens, generated_text from gptsql.runs where run = %s", [run_id]).fetchone()
    assert (recorded, n_generated, out) == (False, 3, prompt + text + "\n")
    for table in ("residual", "attention_row", "step_logit"):
        assert db.execute(f"select count(*) from gptsql.{table} where run_id = %s", [run_id]).fetchone()[0] == 0
    # The same command recording: the same text, with the activations.
    assert run_cli("generate", "-m", tiny, "-n", "3", "-t", "0", prompt).stdout == out
    run_id = run_of(db, prompt, tiny)
    for table in ("residual", "attention_row", "step_logit"):
        assert db.execute(f"select count(*) from gptsql.{table} where run_id = %s", [run_id]).fetchone()[0] > 0


def test_allow_special_reads_endoftext_as_the_token(db, tiny, run_cli):
    """Without --allow-special the prompt's <|endoftext|> is text; with it, token 50256. tiktoken
    (built from the same vocabulary files) tokenizes both ways."""
    import tiktoken

    from helpers import PATTERN, gpt2_ranks

    enc = tiktoken.Encoding(name="gpt2_local", pat_str=PATTERN, mergeable_ranks=gpt2_ranks(),
                            special_tokens={"<|endoftext|>": EOT})
    prompt = "The end.<|endoftext|>A new text"
    for flags, want in (((), enc.encode(prompt, disallowed_special=())),
                        (("--allow-special",), enc.encode(prompt, allowed_special="all"))):
        run_cli("generate", "-m", tiny, "-n", "1", *flags, prompt)
        tokens = [t for (t,) in db.execute("select token from gptsql.run_token where run_id = %s and is_prompt "
                                           "order by place", [run_of(db, prompt, tiny)])]
        assert tokens == want and (EOT in tokens) == bool(flags)


def test_default_temperature_is_0_8(db, tiny, run_cli):
    prompt = "The default temperature"
    default = run_cli("generate", "-m", tiny, "-n", "8", "--seed", "5", prompt).stdout
    run_id = run_of(db, prompt, tiny)
    assert db.execute("select temperature, seed from gptsql.runs where run = %s", [run_id]).fetchone() == (0.8, 5)
    assert run_cli("generate", "-m", tiny, "-n", "8", "--seed", "5", "-t", "0.8", prompt).stdout == default
    assert run_cli("generate", "--help").stdout.count("0.8") >= 1


# ------------------------------------------------------------------------------ run is full
def test_a_full_run_takes_no_more_steps(db, tiny):
    n_ctx = db.execute("select n_ctx from gptsql.model where name = %s", [tiny]).fetchone()[0]
    run_id, tokens = db.execute("select run_id, tokens from gptsql.start_run(%s, %s, 0, record => false)",
                                [tiny, " a" * n_ctx]).fetchone()
    assert len(tokens) == n_ctx
    token = db.execute("select token from gptsql.step(%s, %s, 0)", [run_id, tokens]).fetchone()[0]  # the window's end
    with pytest.raises(psycopg.Error) as raised:
        db.execute("select gptsql.step(%s, %s, %s)", [run_id, [token], n_ctx])
    diag = raised.value.diag
    assert diag.message_primary == (f'run {run_id} is full: the context window of model "{tiny}" '
                                    f"ends at {n_ctx} tokens")
    assert "start a new run" in diag.message_hint
    assert db.execute("select count(*) from gptsql.run_token where run_id = %s", [run_id]).fetchone()[0] == n_ctx + 1
    db.execute("select gptsql.finish_run(%s)", [run_id])


# --------------------------------------------------------------------------- a broken load
def leftovers(db):
    """Every model and every partition of the weight tables."""
    models = db.execute("select name from gptsql.model order by name").fetchall()
    tables = db.execute("select relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                        "where n.nspname = 'gptsql' and relname ~ '^(wte|linear)_[0-9]+$' order by 1").fetchall()
    return models, tables


class BreaksHalfWay(dict):
    """Tensors of a checkpoint whose file fails while the load reads block 1 (a disk error)."""

    def __getitem__(self, key):
        if key.startswith("h.1."):
            raise OSError(f"Input/output error reading {key}")
        return super().__getitem__(key)


def test_a_load_that_breaks_half_way_leaves_nothing(db, tiny_checkpoint):
    from gptsql.loader.load import load
    from gptsql.loader.sources import Checkpoint

    before = leftovers(db)
    broken = Checkpoint(tiny_checkpoint.config, BreaksHalfWay({k: tiny_checkpoint.tensors[k]
                                                               for k in tiny_checkpoint.tensors}),
                        tiny_checkpoint.vocab, "test:broken", "broken")
    with pytest.raises(Exception):          # the disk error (or whatever a broken loader raises first)
        load(db, broken, "broken-half-way")
    assert leftovers(db) == before
    assert db.execute("select count(*) from gptsql.token t where not exists "
                      "(select from gptsql.model m where m.id = t.model_id)").fetchone()[0] == 0


def test_a_broken_checkpoint_leaves_nothing(db, hf_tiny, tmp_path, run_cli):
    from safetensors.numpy import load_file, save_file

    directory = tmp_path / "broken"
    shutil.copytree(hf_tiny[0], directory)
    tensors = load_file(str(directory / "model.safetensors"))
    tensors.pop("transformer.h.1.mlp.c_fc.weight")
    save_file(tensors, str(directory / "model.safetensors"))
    before = leftovers(db)
    result = run_cli("load", str(directory), "--name", "broken-checkpoint", check=False)
    assert result.returncode == 1 and "missing tensors" in result.stderr
    assert leftovers(db) == before


# --------------------------------------------------------------------- runs drop --older-than
# Ages far beyond any run of the test session (the database is shared): each unit, with a run just
# older and a run just younger than the age.
AGES = {"40000000s": 40_000_000, "700000m": 700_000 * 60, "12000h": 12_000 * 3600, "500d": 500 * 86400,
        "75w": 75 * 7 * 86400}


def test_runs_drop_older_than_each_unit(db, tiny, run_cli):
    from gptsql.cli.runs import parse_age

    for age, seconds in AGES.items():
        older, younger = (db.execute("select run_id from gptsql.start_run(%s, 'old', 0)", [tiny]).fetchone()[0]
                          for _ in range(2))
        for run_id, factor in ((older, 1.05), (younger, 0.95)):
            db.execute("update gptsql.run set status = 'done', started_at = now() - make_interval(secs => %s) "
                       "where id = %s", [seconds * factor, run_id])
        assert run_cli("runs", "drop", "--older-than", age).stdout.strip() == f"dropped 1 run: {older}", age
        assert [r for (r,) in db.execute("select id from gptsql.run where id = any(%s)",
                                          [[older, younger]])] == [younger], age
        db.execute("delete from gptsql.run where id = %s", [younger])
    # The long spellings of the same units.
    for short, long in (("45s", "45sec"), ("30m", "30min")):
        assert db.execute("select %s::interval = %s::interval", [parse_age(short), parse_age(long)]).fetchone()[0]
    assert db.execute("select %s::interval", [parse_age("45sec")]).fetchone()[0].total_seconds() == 45


# ------------------------------------------------------------------- predict and detokenize
def test_predict_prints_the_table_of_the_sql_function(db, tiny, run_cli, monkeypatch):
    # One backend on both sides: the same sums (over shares they agree to 1e-5: test_shares.py)
    monkeypatch.setenv("COLUMNS", "200")
    with db.transaction():
        db.execute("set local gptsql.shares = 1")
        want = db.execute("select rank, token, piece, probability, logit from gptsql.predict(%s, 5, %s)",
                          [PROMPT, tiny]).fetchall()
    lines = [json.loads(line) for line in run_cli("predict", "-m", tiny, "--workers", "1", "--top", "5", "--json", PROMPT).stdout.splitlines()]
    assert [(d["rank"], d["token"], d["piece"]) for d in lines] == [w[:3] for w in want]
    assert np.allclose([d["probability"] for d in lines], [w[3] for w in want], rtol=1e-9)
    assert np.allclose([d["logit"] for d in lines], [w[4] for w in want], rtol=1e-9)
    table = run_cli("predict", "-m", tiny, "--workers", "1", "--top", "5", PROMPT).stdout
    rows = [line for line in table.splitlines() if re.match(r"\W*\d+\W+\d+\W", line)]
    assert len(rows) == 5
    for line, (rank, token, piece, p, logit) in zip(rows, want):
        cells = [c.strip() for c in re.split(r"[│|┃]", line) if c.strip()]
        assert cells[:3] == [str(rank), str(token), repr(piece)], line
        assert abs(float(cells[3]) - p) <= 5e-7 and abs(float(cells[4]) - logit) <= 5e-5, line


def test_detokenize_prints_the_text(db, tiny, run_cli):
    ids = [15496, 11, 995, 0, 220, 8582, 234, 235]        # "Hello, world!" and a character in pieces
    text = run_cli("detokenize", "-m", tiny, *map(str, ids)).stdout
    assert text == db.execute("select gptsql.detokenize(%s, %s)", [ids, tiny]).fetchone()[0] + "\n"
    assert text == "Hello, world! \U0001f30d\n"              # the four bytes of U+1F30D, joined
    assert run_cli("detokenize", "-m", tiny, "15496", "11", "995", "0").stdout == "Hello, world!\n"

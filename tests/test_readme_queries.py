"""The README's "Exploring a run in psql" and docs/exploring.md cannot rot: right after one
`gptsql generate`, every ```sql block of that section and page goes through psql (`gptsql db psql`, as a newcomer would paste it) and must
answer with rows."""
from __future__ import annotations

import re

import pytest

from helpers import readme_queries

PROMPT = "Happy New Year! I wish"
QUERIES = readme_queries()


def query_id(query: str) -> str:
    words = re.findall(r"gptsql\.\w+|\\d\+", query)
    return "-".join(dict.fromkeys(words)) or query.split()[0]


MODEL = "readme-newest"


@pytest.fixture(scope="module")
def newest(db, tiny, tiny_checkpoint):
    """The README's predict names no model (the newest answers): one is loaded here, after `tiny`,
    so which model that is does not depend on what other tests loaded before."""
    from gptsql.loader.load import load

    load(db, tiny_checkpoint, MODEL)
    yield MODEL
    db.execute("select gptsql.drop_model(%s)", [MODEL])


@pytest.fixture
def generated(newest, run_cli):
    """What the README says to do first: one generation, from the command line, right before each
    query (the queries read gptsql.latest_run(), and the predict query makes a run of its own: each
    query finds the run it expects whatever order they run in)."""
    result = run_cli("generate", "--model", newest, "-n", "5", "--seed", "1", PROMPT)
    assert result.stdout.startswith(PROMPT)
    return result.stdout.strip()


def psql(run_cli, query):
    return run_cli("db", "psql", "-X", "-v", "ON_ERROR_STOP=1", "-f", "-", input=query, check=False)


def test_the_section_has_the_queries_the_issue_asks_for():
    assert len(QUERIES) >= 8
    text = "\n".join(QUERIES)
    for needle in ["gptsql.step_candidates", "rank <= 5", "gptsql.attention_weights", "gptsql.residual_norms",
                   "gptsql.logit_lens", "gptsql.predict('I wish you a happy New', 5)", "<=>"]:
        assert needle in text, needle


@pytest.mark.parametrize("query", QUERIES, ids=[f"{i}-{query_id(q)}" for i, q in enumerate(QUERIES)])
def test_readme_query_answers(run_cli, db, generated, query):
    result = psql(run_cli, query)
    assert result.returncode == 0, result.stderr
    assert "ERROR" not in result.stderr and "WARNING" not in result.stderr, result.stderr
    out = result.stdout
    if query.lstrip().startswith("\\"):                 # a psql command: the view with its comments
        assert "Description" in out and "Which generated token this step chose" in out
        return
    counted = re.findall(r"^\((\d+) rows?\)$", out, re.M)
    assert counted and int(counted[-1]) > 0, out
    lines = out.splitlines()
    header = lines[0]
    assert all(line.strip(" |") for line in lines[2:2 + int(counted[-1])]), f"empty rows:\n{out}"
    # Sharper checks where a query's answer is known.
    if "gptsql.predict(" in query:
        assert int(counted[-1]) == 5 and "probability" in header
        assert db.execute("select model, kind from gptsql.runs where run = gptsql.latest_run()").fetchone() == \
            (MODEL, "predict")
    if "from    gptsql.runs" in query:
        assert PROMPT in out and generated[len(PROMPT):].strip() in out
    if "<=>" in query:
        assert re.search(r"^\s*6280 \|  Year\s+\|\s+1\.000$", lines[2]), out   # ' Year' is nearest to itself
    if "top_token_at_each_place" in query:
        blocks = db.execute("select m.n_layer from gptsql.run r join gptsql.model m on m.id = r.model_id "
                            "where r.id = gptsql.latest_run()").fetchone()[0]
        assert int(counted[-1]) == blocks                # a row per block of the latest run's model
        for line in lines[2:4]:                          # a token for each place read: 6 + 5 - 1
            assert line.count(" | ") == 1 + 9, line

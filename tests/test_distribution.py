"""One goodness-of-fit test over the whole distribution the sampler draws from: a G-test of 20,000
seeded draws of `gptsql.choose` against softmax(logits / T) (cut to top_k / top_p), over every
token of a hand-built vocabulary.

The logits (one token far ahead, two between, a flat tail of 37) make the distribution move with
the temperature, so that 20,000 draws tell T from 1.05·T: the G statistic's noncentrality at 1.05·T
is 144-199 over 24-39 degrees of freedom, a power above 0.999 at the 0.001 level. Draws are seeded
(the same every run), so the test is deterministic; each case also shows that its own draws
reject the distributions at 0.95·T and 1.05·T.

Read in shares, the vocabulary is split in ranges of pages, each share answers with its own
candidates and sums, and the answers merge (gptsql.vocab_share, gptsql.merge_answers): the same
`gptsql.choose` then draws exactly what it draws from one share, which this checks draw by draw on
the same logits spread over every share (a temperature 5% off in the shares' Gumbel keys or in their
top-k / top-p draw changes 3 to 25% of the draws)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import power_divergence

from helpers import expected, made_up_model

DRAWS = 20_000
ALPHA = 1e-3
LOGITS = np.array([5.0, 2.0, 1.0] + [0.0] * 37)
CASES = {                                  # temperature, top_k, top_p, seed
    "T=1": (1.0, 0, 1.0, 101),
    "T=0.8": (0.8, 0, 1.0, 102),
    "T=1.3": (1.3, 0, 1.0, 103),
    "T=1, top-k 25": (1.0, 25, 1.0, 104),
    "T=1.2, top-p 0.9": (1.2, 0, 0.9, 105),
}


@pytest.fixture(scope="module")
def state(db):
    yield made_up_model(db, "distribution-test", LOGITS)
    db.execute("select gptsql.drop_model('distribution-test')")


def counts(db, state, temperature, top_k, top_p, seed) -> np.ndarray:
    model_id, hidden, logits = state
    tokens = db.execute(
        """select c.token
           from generate_series(1, %s) as i
           cross join lateral gptsql.choose(%s, %s, %s, %s, %s, gptsql.uniform(%s, i)) as c""",
        [DRAWS, model_id, hidden, temperature, top_k, top_p, seed]).fetchall()
    return np.bincount([t for (t,) in tokens], minlength=len(logits))


def g_test(observed: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(G, p-value) of the counts against the distribution p; a draw where p is 0 rejects outright."""
    if observed[p == 0].sum():
        return float("inf"), 0.0
    keep = p > 0
    g, p_value = power_divergence(observed[keep], DRAWS * p[keep], lambda_="log-likelihood")
    return float(g), float(p_value)


@pytest.mark.parametrize("case", list(CASES))
def test_draws_fit_the_distribution_and_not_a_5_percent_other_temperature(db, state, case):
    temperature, top_k, top_p, seed = CASES[case]
    observed = counts(db, state, temperature, top_k, top_p, seed)
    g, p_value = g_test(observed, expected(LOGITS, temperature, top_k, top_p))
    assert p_value > ALPHA, f"{case}: G = {g:.1f}, p = {p_value:.2g}: the draws do not fit softmax(logits / T)"
    for other in (0.95 * temperature, 1.05 * temperature):
        g_other, p_other = g_test(observed, expected(LOGITS, other, top_k, top_p))
        assert p_other < ALPHA, f"{case}: the draws cannot tell T from {other:.3g} (G = {g_other:.1f})"


# ------------------------------------------------------------------------------- over shares
SHARES = 3
SPREAD = 16            # the 40 logits 16 tokens apart, the tokens between far below: wte spans
                       # several pages, so each share (a range of pages) holds some of the 40
SHARD_DRAWS = 1000


@pytest.fixture(scope="module")
def spread(db):
    logits = np.full(len(LOGITS) * SPREAD, -60.0)
    logits[::SPREAD] = LOGITS
    model_id, hidden, logits = made_up_model(db, "distribution-shares", logits)
    peaks = [db.execute("select (gptsql.vocab_share(%s, %s, %s, %s, 1, 0.5, 0)).peak",
                        [model_id, hidden, share, SHARES]).fetchone()[0] for share in range(SHARES)]
    assert all(p is not None and p > -60 for p in peaks), peaks
    yield model_id, hidden
    db.execute("select gptsql.drop_model('distribution-shares')")


def draws(db, model_id, hidden, shares, temperature, top_k, top_p, seed) -> list[int]:
    return [t for (t,) in db.execute(
        """select c.token from generate_series(1, %s) as i
           cross join lateral gptsql.choose(%s, %s, %s, %s, %s, gptsql.uniform(%s, i), %s) as c order by i""",
        [SHARD_DRAWS, model_id, hidden, temperature, top_k, top_p, seed, shares])]


@pytest.mark.parametrize("case", list(CASES))
def test_shares_draw_what_one_share_draws(db, spread, case):
    """The vocabulary read in shares (each a range of wte's pages, on a backend of its own), their
    answers merged: the same draw as one pass over every token, draw by draw."""
    temperature, top_k, top_p, seed = CASES[case]
    model_id, hidden = spread
    one = draws(db, model_id, hidden, 1, temperature, top_k, top_p, seed)
    shared = draws(db, model_id, hidden, SHARES, temperature, top_k, top_p, seed)
    differ = [i + 1 for i, (a, b) in enumerate(zip(one, shared)) if a != b]
    assert not differ, f"{case}: {len(differ)} of {SHARD_DRAWS} draws differ over {SHARES} shares: {differ[:5]}..."
    assert len(set(one)) > 10                     # the draws do spread over the tokens

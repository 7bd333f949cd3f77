"""The sampler draws from the distribution it claims: softmax(logits / temperature), cut to top_k
and top_p. Frequencies over many draws are compared with the probabilities numpy computes from the
same logits; every bound is several standard deviations wide, so a correct sampler passes and a
sampler that draws from anything else (another temperature, no cut, a cut too wide) fails."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import expected, made_up_model

DRAWS = 2000
LOGITS = np.array([3.0, 2.5, 2.2, 2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0] + [-2.0] * 20 + [-4.0] * 10)


@pytest.fixture(scope="module")
def state(db):
    yield made_up_model(db, "sampling-test", LOGITS)
    db.execute("select gptsql.drop_model('sampling-test')")


@pytest.fixture(scope="module")
def flat(db):
    """3,000 tokens of nearly equal logits: the top_p = 0.9 nucleus holds more than the 1,000 best
    that the sampler sorts first, so it takes its second way."""
    yield made_up_model(db, "sampling-flat", -0.001 * np.arange(3000, dtype=np.float32))
    db.execute("select gptsql.drop_model('sampling-flat')")


def draw(db, state, temperature, top_k=0, top_p=1.0, n=DRAWS) -> np.ndarray:
    """How often each token was chosen in n draws, u from the seed 42 at places 1..n."""
    model_id, hidden, logits = state
    tokens = db.execute(
        """select c.token
           from generate_series(1, %s) as i
           cross join lateral gptsql.choose(%s, %s, %s, %s, %s, gptsql.uniform(42, i)) as c""",
        [n, model_id, hidden, temperature, top_k, top_p]).fetchall()
    return np.bincount([t for (t,) in tokens], minlength=len(logits)) / n


def assert_same_distribution(got, want, n=DRAWS):
    # Each frequency within 5 standard deviations of its probability (plus one draw), and nothing
    # drawn where the probability is 0.
    sigma = np.sqrt(want * (1 - want) / n)
    assert np.all(np.abs(got - want) <= 5 * sigma + 1 / n), (np.argsort(-want)[:5], got[np.argsort(-want)[:5]],
                                                           want[np.argsort(-want)[:5]])
    assert got[want == 0].sum() == 0


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_whole_vocabulary(db, state, temperature):
    got = draw(db, state, temperature)
    assert_same_distribution(got, expected(state[2], temperature))
    # ... and not the distribution of another temperature.
    other = expected(state[2], temperature * 2)
    assert np.abs(got - other).sum() > 0.1


def test_top_k(db, state):
    got = draw(db, state, 2.0, top_k=3)
    want = expected(state[2], 2.0, top_k=3)
    assert np.count_nonzero(want) == 3
    assert_same_distribution(got, want)


def test_top_p(db, state):
    got = draw(db, state, 2.0, top_p=0.5)
    want = expected(state[2], 2.0, top_p=0.5)
    assert 1 < np.count_nonzero(want) < 10
    assert_same_distribution(got, want)


def test_greedy_takes_the_argmax(db, state):
    got = draw(db, state, 0.0, n=5)
    assert got[int(np.argmax(state[2]))] == 1.0


def truncated_choice(logits, temperature, top_k, top_p, u) -> int:
    """The token the ranked sampler must take for the uniform u: logits / T softmaxed over the
    whole vocabulary (over the top_k when there is one), most probable first (ties: lower id),
    kept while the mass before a token is under top_p, and the first whose share of the kept mass,
    added up, reaches u."""
    logits = logits.astype(np.float64)
    order = np.lexsort((np.arange(len(logits)), -logits))
    if top_k:
        order = order[:top_k]
    e = np.exp((logits - logits.max()) / temperature)
    p = e[order] / (e[order].sum() if top_k else e.sum())
    keep = np.cumsum(p) - p < top_p
    share = np.cumsum(p[keep]) / p[keep].sum()
    return int(order[keep][np.argmax(share >= u)])


@pytest.mark.parametrize("top_k, top_p", [(3, 1.0), (0, 0.5), (5, 0.6)])
def test_ranked_draws_are_exactly_the_inverse_cdf(db, state, top_k, top_p):
    model_id, hidden, logits = state
    for u in np.random.default_rng(1).uniform(0.001, 0.999, 40):
        got = db.execute("select token from gptsql.choose(%s, %s, 1.5, %s, %s, %s)",
                         [model_id, hidden, top_k, top_p, float(u)]).fetchone()[0]
        assert got == truncated_choice(logits, 1.5, top_k, top_p, u), u


@pytest.mark.parametrize("temperature, past_the_best", [(1.0, True), (0.2, False)])
def test_nucleus_of_a_large_vocabulary(db, flat, temperature, past_the_best):
    """At T = 1 the nucleus reaches past the 1,000 best; at T = 0.2 it lies inside them, but its
    shares are still of the whole vocabulary's mass (the 1,000 best hold 99.3% of it)."""
    model_id, hidden, logits = flat
    p = np.exp((logits - logits.max()) / temperature)
    assert (np.sort(p / p.sum())[::-1][:1000].sum() < 0.9) == past_the_best
    for u in np.random.default_rng(2).uniform(0.001, 0.999, 30):
        got = db.execute("select token from gptsql.choose(%s, %s, %s, 0, 0.9, %s)",
                         [model_id, hidden, temperature, float(u)]).fetchone()[0]
        assert got == truncated_choice(logits, temperature, 0, 0.9, u), u

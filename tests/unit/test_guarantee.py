"""The threshold selection of a guaranteed cascade (guarantee.py) on synthetic populations.

Each seed draws a population of keys whose cheap-model confidence is informative but imperfect (a
wrong answer is more likely at low confidence), samples keys uniformly, chooses the thresholds and
measures the cascade's true agreement with the oracle over the whole population. The guarantee: over
200 seeds, the share of seeds below the target is at most ``failure_probability``.
"""
from __future__ import annotations

import random

import pytest

from dbt_pg_llm.models.guarantee import (GRID, NEVER, cascade_answers_index, choose_thresholds,
                                  clopper_pearson_upper)

N, SAMPLE, TARGET, DELTA, SEEDS = 5000, 500, 0.9, 0.1, 200


def _population(rng: random.Random, models: int, error_scale: float):
    """Per key: (confidences, agrees) for ``models`` cheaper models; model j is worse with j smaller."""
    keys = []
    for _ in range(N):
        confs, agrees = [], []
        for j in range(models):
            c = rng.random()
            p_wrong = error_scale * (1 - c) ** 1.5 / (j + 1)
            confs.append(c)
            agrees.append(rng.random() >= p_wrong)
        keys.append((confs, agrees))
    return keys


def _agreement(population, thresholds) -> tuple[float, float]:
    """(true agreement with the oracle over the population, share answered by the oracle)."""
    agree = oracle = 0
    for confs, agrees in population:
        j = cascade_answers_index(confs, thresholds)
        if j == len(thresholds):
            agree += 1
            oracle += 1
        else:
            agree += agrees[j]
    return agree / len(population), oracle / len(population)


def _naive(sample, target):
    """The point estimate without a bound: the lowest grid threshold whose sample agreement meets the target."""
    n = len(sample)
    for t in GRID:
        errors = sum(1 for confs, agrees in sample if confs[0] >= t and not agrees[0])
        if 1 - errors / n >= target:
            return (t,)
    return (NEVER,)


def test_clopper_pearson_matches_known_values():
    # 0 successes in n: the exact bound is 1 - alpha^(1/n)
    assert clopper_pearson_upper(0, 100, 0.05) == pytest.approx(1 - 0.05 ** (1 / 100), rel=1e-9)
    # 10 of 100 at 95% one-sided: the upper end of the two-sided 90% interval (0.0545, 0.1637)
    assert clopper_pearson_upper(10, 100, 0.05) == pytest.approx(0.1637, abs=2e-4)
    assert clopper_pearson_upper(100, 100, 0.05) == 1.0


def test_guarantee_holds_over_200_seeds_and_the_naive_rule_does_not():
    failures = naive_failures = 0
    oracle_shares = []
    for seed in range(SEEDS):
        rng = random.Random(seed)
        population = _population(rng, 1, error_scale=0.5)
        sample = rng.sample(population, SAMPLE)
        choice = choose_thresholds(sample, TARGET, DELTA)
        agreement, oracle_share = _agreement(population, choice.thresholds)
        failures += agreement < TARGET
        oracle_shares.append(oracle_share)
        assert choice.agreement_lower_bound >= TARGET or choice.thresholds == (NEVER,)
        naive_failures += _agreement(population, _naive(sample, TARGET))[0] < TARGET
    assert failures / SEEDS <= DELTA, f"{failures} of {SEEDS} seeds missed the target"
    # the test can fail: without the bound the same data misses the target in far more seeds than delta
    assert naive_failures / SEEDS > DELTA, naive_failures
    # and the guaranteed cascade saves: most keys never reach the oracle
    assert sum(oracle_shares) / SEEDS < 0.7, sum(oracle_shares) / SEEDS


def test_three_model_cascade_meets_the_target():
    failures = 0
    for seed in range(40):
        rng = random.Random(1000 + seed)
        population = _population(rng, 2, error_scale=0.6)
        choice = choose_thresholds(rng.sample(population, SAMPLE), TARGET, DELTA)
        assert len(choice.thresholds) == 2
        failures += _agreement(population, choice.thresholds)[0] < TARGET
    assert failures <= 4


def test_no_threshold_fits_then_every_key_goes_to_the_oracle():
    rng = random.Random(5)
    sample = [([rng.random()], [rng.random() < 0.5]) for _ in range(50)]  # a coin-flip model, a small sample
    choice = choose_thresholds(sample, 0.99, 0.05)
    assert choice.thresholds == (NEVER,) and choice.oracle_share == 1.0 and choice.measured_agreement == 1.0


@pytest.mark.parametrize("target,delta", [(0, 0.1), (1.2, 0.1), (0.9, 0), (0.9, 1)])
def test_bad_parameters_are_refused(target, delta):
    with pytest.raises(ValueError, match="target_accuracy|failure_probability"):
        choose_thresholds([([0.5], [True])], target, delta)


def test_profile_entries_for_guaranteed_cascades_and_measured_routes():
    from dbt_pg_llm.errors import ConfigError
    from dbt_pg_llm.models.strategy import InferenceStrategy

    models = {"small", "large"}
    sure = InferenceStrategy.from_dict({"strategy": "cascade", "models": ["small", "large"], "target_accuracy": 0.9,
                                        "failure_probability": 0.01, "sample_size": 300}, "llm.models.sure", models)
    assert (sure.target_accuracy, sure.failure_probability, sure.sample_size, sure.thresholds) == (0.9, 0.01, 300, None)
    meas = InferenceStrategy.from_dict({"strategy": "route", "default": "small", "scores": "from_evaluations"},
                                       "llm.models.meas", models)
    assert meas.scores_source == "from_evaluations" and meas.scores == {}
    with pytest.raises(ConfigError) as bad:
        InferenceStrategy.from_dict({"strategy": "cascade", "models": ["large"], "target_accuracy": 1.5,
                                     "failure_probability": "often", "sample_size": 3}, "llm.models.bad", models)
    text = str(bad.value)
    for part in ("llm.models.bad.target_accuracy", "llm.models.bad.failure_probability",
                 "llm.models.bad.sample_size", "cheaper models and an oracle"):
        assert part in text, text
    with pytest.raises(ConfigError, match="target_accuracy: not used by strategy 'vote'"):
        InferenceStrategy.from_dict({"strategy": "vote", "models": ["small", "large"], "target_accuracy": 0.9},
                                    "llm.models.v", models)


def test_simulator_model_error_rate_is_deterministic_per_model_and_lowers_confidence():
    import json
    import math

    from dbt_pg_llm.simulator import answers as A
    from dbt_pg_llm.simulator.__main__ import build_parser, config_from_args

    system = A.LABELS_PHRASE + json.dumps(["a", "b", "c", "d"])
    users = [f"row {i}" for i in range(4000)]
    picks = [A.mistaken_label("sim-small", system, u, A.compute_answer(system, u)[1], 0.3, 7) for u in users]
    assert picks == [A.mistaken_label("sim-small", system, u, A.compute_answer(system, u)[1], 0.3, 7) for u in users]
    wrong = [p for p in picks if p is not None]
    assert 0.27 < len(wrong) / len(users) < 0.33  # the stated rate
    assert all(p != A.compute_answer(system, u)[1] for p, u in zip(picks, users) if p is not None)
    other = [A.mistaken_label("sim-mid", system, u, A.compute_answer(system, u)[1], 0.3, 7) for u in users]
    assert other != picks  # another model makes other mistakes
    assert A.mistaken_label("sim-small", "no labels here", "x", "a", 0.3, 7) is None  # labels only

    def confidence(answer, mistaken):
        lps = [t["logprob"] for t in A.logprobs_for(answer, 0, "m\x00" + answer, mistaken)]
        return math.exp(sum(lps) / len(lps))
    right = [confidence(f"lab{i}", False) for i in range(500)]
    bad = [confidence(f"lab{i}", True) for i in range(500)]
    assert sum(bad) / 500 < sum(right) / 500 - 0.2

    ns = build_parser().parse_args(["--model-error-rate", "sim-small=0.25"])
    assert config_from_args(ns).model_error_rates == {"sim-small": 0.25}
    for bad_arg in ("sim-small", "sim-small=lots", "sim-small=2", "=0.1"):
        with pytest.raises(ValueError, match="--model-error-rate .*MODEL=RATE"):
            config_from_args(build_parser().parse_args(["--model-error-rate", bad_arg]))

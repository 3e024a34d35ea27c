"""Confidence thresholds of a cascade with an accuracy guarantee (issue 21.3, decision 0033).

A cascade ``[m1, ..., mk]`` answers a key with the first model whose confidence reaches that
model's threshold; the last model (the oracle) answers the rest. ``choose_thresholds`` picks the
thresholds from a *uniform random sample* of keys on which every model was asked, so that with
probability at least ``1 - failure_probability`` the cascade's agreement with the oracle over the
whole population of keys is at least ``target``:

* the error of stage j at threshold t is e_j(t) = P(key reaches m_j, conf_j >= t, m_j != oracle);
  the cascade's disagreement with the oracle is the sum of the stages' errors, so it suffices that
  each stage's error is at most ``(1 - target) / (k - 1)`` (the error budget split evenly);
* on the sample, e_j(t) is a binomial proportion: its one-sided Clopper-Pearson upper bound at level
  ``failure_probability / ((k - 1) * len(GRID) * (len(GRID) + 1)^(j-1))`` holds for every stage and
  every candidate threshold at once (a union bound over stages, candidates and the earlier stages'
  possible choices: the grid is fixed before looking at the data). Two models: ``delta / 21``;
* each stage takes the lowest candidate whose upper bound fits its budget (lowest = cheapest: the
  most keys accepted without escalation); none fits: the threshold is above 1 (never accept).

Sampled keys get the oracle's answer anyway (its answer was paid for), which only adds agreement.
LOTUS also importance-samples keys by confidence; that helps recall targets, whereas an agreement
bound over the accepted (high-confidence) keys needs those keys, which a uniform sample has at their
natural share, so the sample here is uniform and the weights are all 1 (decision 0033).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

__all__ = ["GRID", "NEVER", "StageChoice", "ThresholdChoice", "choose_thresholds", "clopper_pearson_upper",
           "cascade_answers_index"]

GRID = tuple(round(i / 20, 2) for i in range(21))  # 0.00, 0.05, ..., 1.00: fixed before the data is seen
NEVER = 1.01  # a threshold no confidence reaches: every key escalates past this stage


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (n up to a few thousand)."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(k + 1):
        total += math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)
    return min(1.0, total)


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound of a proportion seen k times in n trials:
    the p with P(Binomial(n, p) <= k) = alpha. Bisection on the exact binomial tail (the beta
    quantile it equals would need scipy, ~40 MB, for this one number)."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):  # 2^-60: far below any difference that matters
        mid = (lo + hi) / 2
        if _binom_cdf(k, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass(frozen=True)
class StageChoice:
    model_index: int
    threshold: float  # NEVER: this model's answers are never accepted
    errors: int  # sample keys accepted at this stage whose answer differs from the oracle's
    accepted: int  # sample keys answered at this stage
    error_upper_bound: float  # Clopper-Pearson bound of this stage's error over the population


@dataclass(frozen=True)
class ThresholdChoice:
    target: float
    failure_probability: float
    sample_size: int
    stages: tuple[StageChoice, ...] = field(default_factory=tuple)

    @property
    def thresholds(self) -> tuple[float, ...]:
        return tuple(s.threshold for s in self.stages)

    @property
    def agreement_lower_bound(self) -> float:
        """With probability >= 1 - failure_probability, the cascade agrees with the oracle at least this much."""
        return max(0.0, 1.0 - sum(s.error_upper_bound for s in self.stages))

    @property
    def measured_agreement(self) -> float:
        """On the sample, the share of keys where the cascade's own answer equals the oracle's."""
        if not self.sample_size:
            return 1.0
        return 1.0 - sum(s.errors for s in self.stages) / self.sample_size

    @property
    def oracle_share(self) -> float:
        """On the sample, the share of keys the oracle answers (the cascade's cost driver)."""
        if not self.sample_size:
            return 1.0
        return 1.0 - sum(s.accepted for s in self.stages) / self.sample_size


def cascade_answers_index(confidences: Sequence[float | None], thresholds: Sequence[float]) -> int:
    """The index of the model that answers: the first cheaper model whose confidence reaches its
    threshold, else the last (the oracle). A missing confidence (None) never reaches a threshold
    above 0: an answer with no confidence is not trusted blindly by a guaranteed cascade."""
    for j, t in enumerate(thresholds):
        c = confidences[j]
        if (0.0 if c is None else c) >= t:
            return j
    return len(thresholds)


def choose_thresholds(sample: Sequence[tuple[Sequence[float | None], Sequence[bool]]], target: float,
                      failure_probability: float, grid: Sequence[float] = GRID) -> ThresholdChoice:
    """``sample``: one entry per sampled key, ``(confidences, agrees)`` with one item per cheaper
    model (``agrees[j]``: model j's answer equals the oracle's; a failed answer is given confidence
    None and agrees False). Returns the thresholds (see the module docstring for the guarantee)."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target_accuracy: {target!r} must be in (0, 1]")
    if not 0.0 < failure_probability < 1.0:
        raise ValueError(f"failure_probability: {failure_probability!r} must be in (0, 1)")
    n = len(sample)
    stages_count = len(sample[0][0]) if sample else 0
    if not stages_count:
        return ThresholdChoice(target, failure_probability, n, ())
    budget = (1.0 - target) / stages_count
    # stage j's candidates are tried for every choice the earlier stages could have made (each of
    # them: a grid value or NEVER), so its union bound covers len(grid) * (len(grid) + 1)^j bounds
    def alpha(j: int) -> float:
        return failure_probability / (stages_count * len(grid) * (len(grid) + 1) ** j)
    reaching = list(range(n))  # sample keys not answered by an earlier stage
    stages = []
    for j in range(stages_count):
        chosen = StageChoice(j, NEVER, 0, 0, 0.0)
        for t in sorted(grid):  # lowest first: the first that fits is the cheapest
            accepted = [i for i in reaching if (sample[i][0][j] or 0.0) >= t]
            errors = sum(1 for i in accepted if not sample[i][1][j])
            if errors > budget * n:  # the bound is above the point estimate: no need to compute it
                continue
            bound = clopper_pearson_upper(errors, n, alpha(j))
            if bound <= budget:
                chosen = StageChoice(j, float(t), errors, len(accepted), bound)
                break
        stages.append(chosen)
        if chosen.threshold <= 1.0:
            reaching = [i for i in reaching if (sample[i][0][j] or 0.0) < chosen.threshold]
    return ThresholdChoice(target, failure_probability, n, tuple(stages))

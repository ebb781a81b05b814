"""Member weights pooled across body parts: roles, the pooled fit with member selection, and part priors.

A generalist serves every part, so how much it is worth is estimated from the
studies of *all* parts, not from one part's 20-30. A specialist serves one
part; the specialists of the different parts play one *role* ("the part's
specialist"), so the pooled fit asks how much a part's own specialist adds to
the generalists, with every part's studies as evidence.

- :func:`member_roles`: a member serving one of several parts is a specialist
  (role ``specialists``); any other member is its own role.
- :func:`role_matrix`: each study's probability per role (the mean of the part's
  members in that role; NaN when the part has none).
- :func:`fit_pooled`: role weights by log loss on all studies (the base-rate
  pseudo-member of :func:`~mura_ens.fitting.weights.fit_weights_loss` included),
  with **backward selection**: among the roles whose weight is below half an
  equal share (``MINOR_SHARE / R``), the one whose removal costs the least
  likelihood is dropped while its likelihood-ratio statistic
  ``2 * (LL_with - LL_without)`` is below :data:`LR_CRITICAL` (2.706: the 5%
  point of the 50:50 mixture of chi-square(0) and chi-square(1) that a weight
  on the boundary follows when the role is useless), then the rest is refitted.
  A useless member thus gets exactly 0 once a few dozen studies say so, where
  the log-loss optimum alone leaves it a sampling-noise weight (~1/sqrt(N)).
- :func:`part_prior`: the pooled role weights spread over one part's members
  (a role's weight split equally among the part's members in it), renormalised.
- :func:`weight_variance` and :func:`between_parts`: the empirical-Bayes pieces
  (how noisy a part's own weights are; how much parts really differ).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .weights import fit_weights, fit_weights_loss

#: The role of members that serve one part (when the fitting set has several parts).
SPECIALISTS = "specialists"
#: Likelihood-ratio statistic below which a role is dropped from the pooled fit.
LR_CRITICAL = 2.706
#: Only a role whose pooled weight is below this share of an equal split (1/R) may be dropped.
MINOR_SHARE = 0.5
#: Bootstrap resamples of a part's studies for the variance of its own weights.
WEIGHT_RESAMPLES = 30


@dataclass(frozen=True)
class Roles:
    """``names`` of the roles and ``of_member[j]``, the role index of member j."""

    names: tuple[str, ...]
    of_member: tuple[int, ...]


@dataclass
class Pooled:
    """The pooled fit: ``weights`` per role (0 for a dropped role) and the selection record."""

    weights: np.ndarray
    dropped: list[dict] = field(default_factory=list)  # {"role", "lr"} in the order they were dropped


def member_roles(part_members: dict[str, list[int]], names: Sequence[str]) -> Roles:
    """Roles of the members given which members serve each part (``""`` = unknown part, ignored here)."""
    known = [p for p in part_members if p]
    serves = {j: [p for p in known if j in part_members[p]] for j in range(len(names))}
    several = len(known) >= 2
    specialists = [j for j in range(len(names)) if several and len(serves[j]) == 1]
    role_names = [names[j] for j in range(len(names)) if j not in specialists]
    if specialists:
        role_names.append(SPECIALISTS)
    index = {name: r for r, name in enumerate(role_names)}
    of_member = tuple(index[SPECIALISTS] if j in specialists else index[names[j]] for j in range(len(names)))
    return Roles(tuple(role_names), of_member)


def role_matrix(P: np.ndarray, roles: Roles) -> np.ndarray:
    """(n, R): each row's mean probability over its present members of each role (NaN where none)."""
    R = len(roles.names)
    of = np.asarray(roles.of_member)
    X = np.full((len(P), R), np.nan)
    for r in range(R):
        cols = P[:, of == r]
        present = ~np.isnan(cols)
        count = present.sum(axis=1)
        total = np.where(present, cols, 0.0).sum(axis=1)
        X[:, r] = np.divide(total, count, out=np.full(len(P), np.nan), where=count > 0)
    return X


def fit_pooled(X: np.ndarray, y: np.ndarray, names: Sequence[str]) -> Pooled:
    """Role weights on all rows of ``X`` with backward likelihood-ratio selection (see the module doc)."""
    R = X.shape[1]
    active = [r for r in range(R) if (~np.isnan(X[:, r])).any()]
    dropped: list[dict] = []
    while True:
        w, total = fit_weights_loss(X[:, active], y)
        if len(active) <= 1:
            break
        costs = {}
        for i, r in enumerate(active):
            if w[i] <= 0:
                costs[r] = 0.0
            elif w[i] < MINOR_SHARE / len(active):
                rest = [a for a in active if a != r]
                costs[r] = 2.0 * (fit_weights_loss(X[:, rest], y)[1] - total)
        if not costs:
            break
        weakest = min(costs, key=lambda r: costs[r])
        if costs[weakest] >= LR_CRITICAL:
            break
        dropped.append({"role": names[weakest], "lr": float(max(costs[weakest], 0.0))})
        active.remove(weakest)
    weights = np.zeros(R)
    weights[active] = w
    return Pooled(weights, dropped)


def part_prior(pooled: np.ndarray, cols: Sequence[int], roles: Roles) -> np.ndarray:
    """The pooled role weights spread over a part's members ``cols``; the plain mean when they leave it nothing."""
    of = [roles.of_member[j] for j in cols]
    counts = {r: of.count(r) for r in set(of)}
    prior = np.array([pooled[r] / counts[r] for r in of], dtype=np.float64)
    if prior.sum() <= 0:
        return np.full(len(cols), 1.0 / len(cols))
    return prior / prior.sum()


def weight_variance(P: np.ndarray, y: np.ndarray, seed: int, n_boot: int = WEIGHT_RESAMPLES) -> float:
    """Sampling variance of a part's own weights: the trace of their covariance over bootstrap resamples."""
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if len(np.unique(y[idx])) == 2:
            draws.append(fit_weights(P[idx], y[idx]))
    if len(draws) < 5:
        return float("inf")
    return float(np.var(np.array(draws), axis=0, ddof=1).sum())


def between_parts(own: Sequence[np.ndarray], priors: Sequence[np.ndarray], variances: Sequence[float]) -> float:
    """tau^2: how far parts' true weights lie from the pooled ones, net of sampling noise (method of moments, >= 0).

    ``mean_p |w_p - prior_p|^2 - mean_p v_p`` over parts with a finite variance, floored at 0; 0 with fewer than 2.
    """
    pairs = [(w, p, v) for w, p, v in zip(own, priors, variances) if np.isfinite(v)]
    if len(pairs) < 2:
        return 0.0
    spread = float(np.mean([np.sum((w - p) ** 2) for w, p, _ in pairs]))
    return max(0.0, spread - float(np.mean([v for _, _, v in pairs])))

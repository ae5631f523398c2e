"""When to stop the active-learning loop: the model's own quality estimate has settled."""

from __future__ import annotations

from collections.abc import Sequence

#: The paper's threshold on the change of mean P-DSC between rounds.
DEFAULT_SIGMA = 0.005


def has_converged(mean_agreement_history: Sequence[float], sigma: float = DEFAULT_SIGMA) -> bool:
    """True once the mean P-DSC (or P-accuracy) of the last round differs from the round before
    by less than ``sigma``; it needs two rounds to say so."""
    if len(mean_agreement_history) < 2:
        return False
    return abs(mean_agreement_history[-1] - mean_agreement_history[-2]) < sigma

"""Query strategies: which ``budget`` slices to label next, over one or several volumes.

Every strategy sees the same inputs (each volume's :class:`SliceScores` and the slices already
labelled in it) and returns :class:`SliceQuery` items, most wanted first. Labelled slices are
never suggested again. The paper's strategy is P-DSC; P-accuracy, entropy, random and
equal-interval are the comparisons of its experiments; P-DSC-spread and disagreement are this
product's variants of P-DSC; foreground-random (random within the predicted organ's extent) is
the baseline of the active-learning literature (nnActive, TMLR 2025). Every model ranks slices:
the scores compare its prediction with its own second opinion (:mod:`asdseg.active.second_opinion`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from asdseg.active.slice_scores import SliceScores
from asdseg.errors import InputError


@dataclass(frozen=True)
class SliceQuery:
    volume: int  #: index into the volumes given to the strategy
    slice: int  #: index along the volume's third array axis
    score: float  #: what it was ranked by (P-DSC, P-accuracy, disagreement, entropy, gap; 0 for random)


Strategy = Callable[[Sequence[SliceScores], Sequence[set[int]], int, np.random.Generator], list[SliceQuery]]


def _unlabelled(scores: Sequence[SliceScores], labelled: Sequence[set[int]]) -> list[tuple[int, int]]:
    return [
        (volume, index)
        for volume, volume_scores in enumerate(scores)
        for index in range(volume_scores.slice_count)
        if index not in labelled[volume]
    ]


def _ranked(scores: Sequence[SliceScores], candidates: list[SliceQuery], highest: bool) -> list[SliceQuery]:
    """``candidates`` best first; on a tie a slice's own score comes before the copies of it
    that the empty slices beyond the organ's ends carry."""

    def key(query: SliceQuery) -> tuple:
        copy = bool(scores[query.volume].beyond_organ_end[query.slice])
        return (-query.score if highest else query.score, copy, query.volume, query.slice)

    return sorted(candidates, key=key)


def _by_measure(measure: str, highest: bool, skip_empty: bool) -> Strategy:
    """Slices ranked by ``measure``, lowest or highest first; with ``skip_empty``, leaving out
    slices where both heads are empty (nothing to disagree about)."""

    def select(scores, labelled, budget, rng) -> list[SliceQuery]:
        candidates = [
            SliceQuery(volume, index, float(getattr(scores[volume], measure)[index]))
            for volume, index in _unlabelled(scores, labelled)
            if not (skip_empty and scores[volume].both_empty[index])
        ]
        return _ranked(scores, candidates, highest)[:budget]

    return select


def _lowest(measure: str) -> Strategy:
    """Slices where the two heads agree least (P-DSC, P-accuracy)."""
    return _by_measure(measure, highest=False, skip_empty=True)


#: The fewest slices between two slices P-DSC-spread picks (or one it picks and a labelled one).
SPREAD_GAP = 3


def lowest_p_dsc_spread(scores, labelled, budget, rng) -> list[SliceQuery]:
    """P-DSC's ranking, skipping any slice closer than :data:`SPREAD_GAP` slices to a slice
    already labelled or picked in its volume; when too few slices are left that far apart, the
    rest of the ranking fills the budget.

    Why: plain P-DSC picks runs of adjacent slices at the organ's two ends (where the heads
    disagree most), and an annotator drawing five neighbouring slices teaches the model little
    more than drawing one of them.
    """
    ranked = _lowest("p_dsc")(scores, labelled, len(_unlabelled(scores, labelled)), rng)
    taken = [set(volume_labelled) for volume_labelled in labelled]
    picked: list[SliceQuery] = []
    for query in ranked:
        if len(picked) == budget:
            break
        if all(abs(query.slice - other) >= SPREAD_GAP for other in taken[query.volume]):
            picked.append(query)
            taken[query.volume].add(query.slice)
    chosen = {(query.volume, query.slice) for query in picked}
    picked += [query for query in ranked if (query.volume, query.slice) not in chosen][: budget - len(picked)]
    return picked


def _random_among(candidates: list[tuple[int, int]], budget: int, rng) -> list[SliceQuery]:
    picks = rng.choice(len(candidates), size=min(budget, len(candidates)), replace=False)
    return [SliceQuery(*candidates[int(pick)], 0.0) for pick in picks]


def random_slices(scores, labelled, budget, rng) -> list[SliceQuery]:
    return _random_among(_unlabelled(scores, labelled), budget, rng)


def foreground_random(scores, labelled, budget, rng) -> list[SliceQuery]:
    """Random slices within the predicted organ's extent (where either prediction sees it, and
    the slices just beyond its ends): the active-learning literature's strong baseline, since
    plain random spends most of its budget on slices without the organ. Falls back to any
    unlabelled slice when the extent is used up."""
    candidates = _unlabelled(scores, labelled)
    inside = [(volume, index) for volume, index in candidates if not scores[volume].both_empty[index]]
    picked = _random_among(inside, budget, rng) if inside else []
    if len(picked) < budget:
        taken = {(query.volume, query.slice) for query in picked}
        rest = [candidate for candidate in candidates if candidate not in taken]
        picked += _random_among(rest, budget - len(picked), rng) if rest else []
    return picked


def equal_interval(scores, labelled, budget, rng) -> list[SliceQuery]:
    """Fill the widest gaps first: repeatedly take the unlabelled slice farthest from every
    labelled (or already chosen) slice of its volume, which halves the labelling interval round
    by round (every 16th slice, then every 8th, ...)."""
    chosen = [set(volume_labelled) for volume_labelled in labelled]
    queries = []
    for _ in range(budget):
        best: tuple[float, int, int] | None = None
        for volume, index in _unlabelled(scores, chosen):
            others = np.fromiter(chosen[volume], dtype=float, count=len(chosen[volume]))
            gap = float(np.abs(others - index).min()) if len(others) else float(scores[volume].slice_count)
            if best is None or gap > best[0]:
                best = (gap, volume, index)
        if best is None:
            break
        queries.append(SliceQuery(best[1], best[2], best[0]))
        chosen[best[1]].add(best[2])
    return queries


#: What the CLI and ActiveAnnotate suggest with unless told otherwise: level with random and
#: equal-interval in the LA study, above plain P-DSC at every budget. (``disagreement`` finds
#: more of the model's wrong voxels, but fine-tuning on its picks fell below random at 10-20 %
#: of slices in all three repeats; see docs/benchmarks.md.)
DEFAULT_STRATEGY = "p-dsc-spread"
STRATEGIES: dict[str, Strategy] = {
    "p-dsc": _lowest("p_dsc"),
    "p-dsc-spread": lowest_p_dsc_spread,
    "p-accuracy": _lowest("p_accuracy"),
    # P-DSC's disagreement in voxels: it points where more of the model's wrong voxels lie,
    # where P-DSC points at the organ's nearly empty ends (benchmarks/active_learning_picks.py).
    "disagreement": _by_measure("disagreement", highest=True, skip_empty=True),
    "entropy": _by_measure("entropy", highest=True, skip_empty=False),
    "random": random_slices,
    "foreground-random": foreground_random,
    "equal-interval": equal_interval,
}


def select_slices(
    strategy: str,
    scores: Sequence[SliceScores],
    labelled: Sequence[set[int]],
    budget: int,
    rng: np.random.Generator | None = None,
) -> list[SliceQuery]:
    """The ``budget`` slices ``strategy`` asks for next (fewer when fewer are left)."""
    if strategy not in STRATEGIES:
        raise InputError(f"unknown query strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}.")
    if budget < 1:
        raise InputError(f"the budget must be at least one slice, got {budget}.")
    if len(scores) != len(labelled):
        raise ValueError("one set of labelled slices per volume is needed")
    return STRATEGIES[strategy](scores, labelled, budget, rng or np.random.default_rng())

"""The fewest sampler steps that reach a target quality (T7, after Benton et al. 2023): an
exponential search and then a bisection over a ladder of step counts, assuming that passing is
monotone in the step count. ``rtkrun search`` (commands/search.py) runs it on the exact
mixture-of-Gaussians score; this module knows nothing of samplers or data."""

from __future__ import annotations

from collections.abc import Callable


def step_ladder(max_steps: int) -> list[int]:
    """Step counts spaced by √2 (rounded, deduplicated) up to ``max_steps``: 1, 2, 3, 4, 6, 8,
    11, 16, 23, 32, 45, 64, 91, 128, … (4096 for ``max_steps=4096``)."""
    ladder, k = set(), 0
    while round(2 ** (k / 2)) <= max_steps:
        ladder.add(round(2 ** (k / 2)))
        k += 1
    return sorted(ladder)


def smallest_passing(passes: Callable[[int], bool], ladder: list[int]) -> tuple[int | None, int]:
    """(the smallest ladder entry that passes, how many entries were tried); (None, tries) if
    none does. Doubles the index until one passes, then bisects between the last failure and it,
    so a pass at index i costs about 2·log2(i) tries."""
    tries, lo, hi = 0, -1, 0  # invariant: ladder[lo] failed (lo = -1: nothing tried yet)
    while True:
        tries += 1
        if passes(ladder[hi]):
            break
        if hi == len(ladder) - 1:
            return None, tries
        lo, hi = hi, min(2 * hi + 1, len(ladder) - 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        tries += 1
        if passes(ladder[mid]):
            hi = mid
        else:
            lo = mid
    return ladder[hi], tries

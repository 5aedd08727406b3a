"""Q3: temporal sparsity — how often, for how long and how clustered entries switch.

An entry *switches* at step ``t`` when its zero decision differs between steps ``t - 1`` and
``t`` and both steps are counted (exist and have finite Jacobians). Runs are maximal stretches of
consecutive counted steps with the same decision; a step that is not counted ends a run.
Runs touching the start or end of such a stretch are *censored* (their true length is unknown);
they are kept and flagged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dynsparse.metrics.sparsity import Masks

DEFAULT_SHUFFLES = 200


def _flat(mask: np.ndarray) -> np.ndarray:
    """``(episode, step, out, in)`` -> ``(episode, step, out * in)``."""
    return mask.reshape(mask.shape[0], mask.shape[1], -1)


def entry_masks(masks: Masks) -> np.ndarray:
    """``(episode, step, entries)`` bool: the zero decisions of ``[J_s | J_a]`` entry by entry
    (J_s entries first, row-major, then J_a's)."""
    return np.concatenate([_flat(masks.J_s), _flat(masks.J_a)], axis=-1)


def entry_names(masks: Masks) -> list[tuple[str, str, str]]:
    """``(matrix, out, in)`` for every column of ``entry_masks``."""
    names = [("J_s", o, i) for o in masks.out for i in masks.state_in]
    return names + [("J_a", o, i) for o in masks.out for i in masks.action_in]


def switches(masks: Masks) -> np.ndarray:
    """``(episode, step, entries)`` bool: entry switches at this step (False at step 0 and where
    this or the previous step is not counted)."""
    z = entry_masks(masks)
    both = masks.counted[:, 1:] & masks.counted[:, :-1]
    sw = np.zeros_like(z)
    sw[:, 1:] = (z[:, 1:] != z[:, :-1]) & both[..., None]
    return sw


def switches_per_step(masks: Masks) -> np.ndarray:
    """``(episode, step)`` int: entries (of J_s and J_a) that switch at each step."""
    return switches(masks).sum(axis=-1)


def run_lengths(masks: Masks) -> dict[str, Any]:
    """Lengths of the runs of consecutive zero and non-zero steps of every entry and episode.

    Entries that never switch within an episode (constant over all its counted steps) are
    excluded from the runs and counted separately.

    Returns:
      ``{"episode", "entry", "zero", "length", "censored"}`` -> 1-D arrays, one element per run
      (``zero`` True for a run of zeros; ``entry`` indexes ``entry_names``), and
      ``"constant": {"zero": int, "nonzero": int}`` (episode, entry) pairs that never switch and are
      always zero / always non-zero, ``"pairs"``: (episode, entry) pairs with a counted step.
    """
    z = entry_masks(masks)  # (E, T, N)
    e_count, t_count, n = z.shape
    # One sequence per (episode, entry): values 0/1 where counted, -1 where not, and a -1
    # separator at the end of each sequence so runs never span two sequences.
    seq = np.full((e_count, n, t_count + 1), -1, np.int8)
    seq[:, :, :t_count] = np.where(masks.counted[:, None, :], z.transpose(0, 2, 1), -1)
    flat = seq.reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [flat.size]])
    values = flat[starts]
    keep = values >= 0
    starts, ends, values = starts[keep], ends[keep], values[keep]
    seq_id = starts // (t_count + 1)
    prev_val = np.where(starts % (t_count + 1) == 0, -1, flat[np.maximum(starts - 1, 0)])
    next_val = flat[np.minimum(ends, flat.size - 1)]
    censored = (prev_val < 0) | (next_val < 0)
    # A (episode, entry) sequence switches iff it has both a zero run and a non-zero run.
    has_zero = np.zeros(e_count * n, bool)
    has_nonzero = np.zeros(e_count * n, bool)
    has_zero[seq_id[values == 1]] = True
    has_nonzero[seq_id[values == 0]] = True
    switching = has_zero & has_nonzero
    sel = switching[seq_id]
    return {
        "episode": (seq_id[sel] // n).astype(np.int64),
        "entry": (seq_id[sel] % n).astype(np.int64),
        "zero": values[sel] == 1,
        "length": (ends - starts)[sel].astype(np.int64),
        "censored": censored[sel],
        "constant": {"zero": int(np.sum(has_zero & ~has_nonzero)), "nonzero": int(np.sum(has_nonzero & ~has_zero))},
        "pairs": int(np.sum(has_zero | has_nonzero)),
    }


def run_summary(runs: dict[str, Any]) -> dict[str, Any]:
    """Mean run lengths (all runs, and uncensored runs only) of zero and non-zero runs, in steps."""

    def stats(sel: np.ndarray) -> dict[str, Any]:
        lengths = runs["length"][sel]
        interior = lengths[~runs["censored"][sel]]
        return {
            "runs": int(lengths.size),
            "mean": float(lengths.mean()) if lengths.size else None,
            "median": float(np.median(lengths)) if lengths.size else None,
            "max": int(lengths.max()) if lengths.size else None,
            "uncensored_runs": int(interior.size),
            "uncensored_mean": float(interior.mean()) if interior.size else None,
        }

    switching_pairs = int(np.unique(runs["episode"] * (runs["entry"].max(initial=0) + 1) + runs["entry"]).size)
    return {
        "zero_runs": stats(runs["zero"]),
        "nonzero_runs": stats(~runs["zero"]),
        "switching_pairs": switching_pairs,
        "constant_pairs": runs["constant"],
        "pairs": runs["pairs"],
    }


def burstiness(gaps: np.ndarray) -> float | None:
    """Goh-Barabasi burstiness ``(sigma - mu) / (sigma + mu)`` of inter-event gaps.

    -1 for perfectly periodic events, about 0 for a Poisson process, towards +1 for events that
    come in bursts. None with fewer than two gaps.
    """
    gaps = np.asarray(gaps, np.float64)
    if gaps.size < 2:
        return None
    mu, sigma = gaps.mean(), gaps.std()
    return float((sigma - mu) / (sigma + mu))


def candidate_steps(counted: np.ndarray) -> np.ndarray:
    """``(episode, step)`` bool: steps at which a switch can be observed (this and the previous
    step counted)."""
    cand = np.zeros_like(counted)
    cand[:, 1:] = counted[:, 1:] & counted[:, :-1]
    return cand


def _pooled_gaps(events: np.ndarray) -> np.ndarray:
    """Gaps (in steps) between consecutive event steps within each episode, pooled.

    Args:
      events: ``(episode, step)`` bool.
    """
    gaps = [np.diff(np.flatnonzero(row)) for row in events]
    return np.concatenate(gaps) if gaps else np.zeros(0, np.int64)


def clustering(event_steps: np.ndarray, counted: np.ndarray, n_shuffles: int = DEFAULT_SHUFFLES, seed: int = 0) -> dict[str, Any]:
    """Do switch events cluster in time? Observed gaps against a shuffled-time baseline.

    The baseline keeps each episode's number of event steps and places them uniformly at random
    among the steps where a switch could be observed. The statistic is the burstiness of the
    pooled inter-event gaps; ``p_value`` is the share of shuffles at least as bursty as observed
    (with the +1 correction), so a small value means the switches cluster.

    Args:
      event_steps: ``(episode, step)`` bool, a step with at least one switch.
      counted: ``(episode, step)`` bool.
      n_shuffles: baseline draws.
      seed: RNG seed of the baseline.

    Returns:
      ``{"event_steps", "candidate_steps", "observed": {"burstiness", "mean_gap", "share_gap_1"},
      "shuffled": {"burstiness_mean", "burstiness_q05", "burstiness_q95", "mean_gap", "share_gap_1"},
      "p_value", "n_shuffles"}``; statistics are None when there are too few events.
    """
    cand = candidate_steps(counted)
    events = event_steps & cand
    gaps = _pooled_gaps(events)
    rng = np.random.default_rng(seed)
    shuffled_b, shuffled_gap, shuffled_g1 = [], [], []
    positions = [np.flatnonzero(row) for row in cand]
    k_per_episode = events.sum(axis=1)
    for _ in range(n_shuffles):
        sim = np.zeros_like(events)
        for e, (pos, k) in enumerate(zip(positions, k_per_episode)):
            if k:
                sim[e, rng.choice(pos, size=int(k), replace=False)] = True
        g = _pooled_gaps(sim)
        b = burstiness(g)
        if b is not None:
            shuffled_b.append(b)
            shuffled_gap.append(g.mean())
            shuffled_g1.append(np.mean(g == 1))
    observed_b = burstiness(gaps)
    p = None
    if observed_b is not None and shuffled_b:
        p = float((1 + np.sum(np.asarray(shuffled_b) >= observed_b)) / (1 + len(shuffled_b)))
    return {
        "event_steps": int(events.sum()),
        "candidate_steps": int(cand.sum()),
        "observed": {
            "burstiness": observed_b,
            "mean_gap": float(gaps.mean()) if gaps.size else None,
            "share_gap_1": float(np.mean(gaps == 1)) if gaps.size else None,
        },
        "shuffled": {
            "burstiness_mean": float(np.mean(shuffled_b)) if shuffled_b else None,
            "burstiness_q05": float(np.quantile(shuffled_b, 0.05)) if shuffled_b else None,
            "burstiness_q95": float(np.quantile(shuffled_b, 0.95)) if shuffled_b else None,
            "mean_gap": float(np.mean(shuffled_gap)) if shuffled_gap else None,
            "share_gap_1": float(np.mean(shuffled_g1)) if shuffled_g1 else None,
        },
        "p_value": p,
        "n_shuffles": int(n_shuffles),
    }

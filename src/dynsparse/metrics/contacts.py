"""Contacts: sparsity by number of active contacts, and whether switches co-occur with contact changes.

A *contact change* at step ``t`` is a change of the contact set between steps ``t - 1`` and ``t``
(both valid): a geom pair starts or stops touching, or the number of active contacts changes
(e.g. a foot going from one to two contact points). The dataset's attrs say how a contact is
counted. Datasets without ``contact_pairs`` fall back to changes of the count alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dynsparse.metrics import local, temporal
from dynsparse.metrics.sparsity import Masks

DEFAULT_WINDOWS = (0, 1, 2, 5)


def sparsity_by_contacts(masks: Masks) -> list[dict[str, Any]]:
    """Per-sample sparsity grouped by the number of active contacts (counted steps only).

    Returns:
      One row per contact count, ascending: ``{"n_contacts", "steps", "share", "J_s_mean",
      "J_a_mean", "both_mean", "both_std"}``.
    """
    sp = local.per_sample_sparsity(masks)
    nc = masks.n_contacts[masks.counted]
    total = int(nc.size)
    rows = []
    for c in np.unique(nc):
        sel = masks.counted & (masks.n_contacts == c)
        row: dict[str, Any] = {"n_contacts": int(c), "steps": int(sel.sum()), "share": float(sel.sum() / total)}
        for k in local.MATRICES:
            row[f"{k}_mean"] = float(sp[k][sel].mean())
        row["both_std"] = float(sp["both"][sel].std())
        rows.append(row)
    return rows


def contact_changes(n_contacts: np.ndarray, valid: np.ndarray, pairs: np.ndarray | None = None) -> np.ndarray:
    """``(episode, step)`` bool: the contact set differs from the previous step's (both valid);
    False at step 0.

    Args:
      n_contacts: ``(episode, step)`` active contacts.
      valid: ``(episode, step)`` bool.
      pairs: ``(episode, step, pair)`` bool geom pairs in contact, or None (count only).
    """
    differs = n_contacts[:, 1:] != n_contacts[:, :-1]
    if pairs is not None:
        differs = differs | (pairs[:, 1:] != pairs[:, :-1]).any(axis=-1)
    change = np.zeros_like(valid)
    change[:, 1:] = differs & valid[:, 1:] & valid[:, :-1]
    return change


def near(events: np.ndarray, k: int) -> np.ndarray:
    """``(episode, step)`` bool: an event lies within ``k`` steps (either side) in the same episode."""
    out = events.copy()
    for d in range(1, k + 1):
        out[:, d:] |= events[:, :-d]
        out[:, :-d] |= events[:, d:]
    return out


def alignment(masks: Masks, windows: tuple[int, ...] = DEFAULT_WINDOWS) -> list[dict[str, Any]]:
    """Share of switch events within ``k`` steps of a contact change, against chance.

    For each window ``k``: ``observed`` is the share of steps with at least one switch that lie
    within ``k`` steps of a contact change; ``entry_weighted`` weights each such step by how many
    entries switch there; ``chance`` is the share of all steps where a switch could be observed
    that lie within ``k`` steps of a contact change (what uniformly placed switches would give).
    ``lift = observed / chance``; ``p_value`` is the one-sided binomial test of ``observed`` >
    ``chance`` (scipy).

    Returns:
      One row per window: ``{"k", "switch_steps", "near_switch_steps", "observed", "entry_weighted",
      "chance", "lift", "p_value", "contact_changes"}``; shares are None when undefined.
    """
    from scipy import stats

    per_step = temporal.switches_per_step(masks)
    cand = temporal.candidate_steps(masks.counted)
    events = (per_step > 0) & cand
    changes = contact_changes(masks.n_contacts, masks.valid, masks.contact_pairs)
    rows = []
    for k in windows:
        nb = near(changes, int(k))
        n_events = int(events.sum())
        n_near = int((events & nb).sum())
        chance = float(nb[cand].mean()) if cand.any() else None
        observed = n_near / n_events if n_events else None
        weight = per_step[events].sum()
        row = {
            "k": int(k),
            "switch_steps": n_events,
            "near_switch_steps": n_near,
            "observed": observed,
            "entry_weighted": float(per_step[events & nb].sum() / weight) if weight else None,
            "chance": chance,
            "lift": observed / chance if observed is not None and chance else None,
            "p_value": float(stats.binomtest(n_near, n_events, chance, alternative="greater").pvalue)
            if n_events and chance is not None and 0 < chance < 1 else None,
            "contact_changes": int(changes.sum()),
        }
        rows.append(row)
    return rows


def switches_by_variable(masks: Masks, top: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """Which variables' rows and columns switch most.

    Returns:
      ``{"rows": [...], "state_columns": [...], "action_columns": [...]}``, each a list of
      ``{"variable", "switches", "share"}`` sorted by switches (descending, ties by name order);
      ``rows`` counts switches in the variable's row of J_s and J_a together, ``share`` is of all
      switch events. ``top`` keeps the first ``top`` of each.
    """
    sw = temporal.switches(masks).sum(axis=(0, 1))  # (entries,)
    n_out, n_s, n_a = len(masks.out), len(masks.state_in), len(masks.action_in)
    js = sw[: n_out * n_s].reshape(n_out, n_s)
    ja = sw[n_out * n_s:].reshape(n_out, n_a)
    total = int(sw.sum())

    def ranked(names: tuple[str, ...], counts: np.ndarray) -> list[dict[str, Any]]:
        order = sorted(range(len(names)), key=lambda i: (-int(counts[i]), i))
        rows = [{"variable": names[i], "switches": int(counts[i]), "share": float(counts[i] / total) if total else None} for i in order]
        return rows[:top] if top else rows

    return {
        "rows": ranked(masks.out, js.sum(axis=1) + ja.sum(axis=1)),
        "state_columns": ranked(masks.state_in, js.sum(axis=0)),
        "action_columns": ranked(masks.action_in, ja.sum(axis=0)),
    }

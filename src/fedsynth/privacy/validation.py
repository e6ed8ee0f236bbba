"""Update validation before aggregation: a bad update is rejected with the client and the
reason, and never reaches the global model.

Checks, in order: missing keys, extra keys, wrong shape, wrong dtype, NaN/Inf, and a norm far
outside the round's distribution (the update's distance from the global weights exceeds
``outlier_factor`` times the median of the *other* updates' distances).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..updates import ClientUpdate, State, update_norm


def check_update(u: ClientUpdate, expected: dict[str, torch.Tensor]) -> str | None:
    keys = set(u.weights)
    missing, extra = set(expected) - keys, keys - set(expected)
    if missing:
        return f"missing key {sorted(missing)[0]!r}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
    if extra:
        return f"unexpected key {sorted(extra)[0]!r}"
    for k, ref in expected.items():
        v = u.weights[k]
        if not isinstance(v, torch.Tensor):
            return f"{k!r} is not a tensor"
        if tuple(v.shape) != tuple(ref.shape):
            return f"{k!r} has shape {tuple(v.shape)}, expected {tuple(ref.shape)}"
        if v.dtype != ref.dtype:
            return f"{k!r} has dtype {v.dtype}, expected {ref.dtype}"
        if v.is_floating_point() and not torch.isfinite(v).all():
            return f"{k!r} contains NaN or Inf"
    return None


def validate_updates(updates: Sequence[ClientUpdate], global_state: State, expected_keys: set[str],
                     outlier_factor: float = 5.0) -> tuple[list[ClientUpdate], list[tuple[str, str]]]:
    """Returns ``(accepted, [(client id, reason), ...])``."""
    expected = {k: global_state[k] for k in expected_keys}
    ok, rejected = [], []
    for u in updates:
        reason = check_update(u, expected)
        (rejected.append((u.client_id, reason)) if reason else ok.append(u))
    if outlier_factor > 0 and len(ok) >= 2:
        norms = {u.client_id: update_norm(u.weights, global_state) for u in ok}
        keep = []
        for u in ok:
            others = sorted(n for cid, n in norms.items() if cid != u.client_id)
            med = others[len(others) // 2] if len(others) % 2 else 0.5 * (others[len(others) // 2 - 1] + others[len(others) // 2])
            if med > 0 and norms[u.client_id] > outlier_factor * med:
                rejected.append((u.client_id, f"update norm {norms[u.client_id]:.3g} is "
                                              f"{norms[u.client_id] / med:.1f}x the median of the others ({med:.3g})"))
            else:
                keep.append(u)
        ok = keep
    return ok, rejected

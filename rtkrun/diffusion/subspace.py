"""The zero-centre-of-mass subspace E(3)-equivariant diffusion lives in (Hoogeboom et al. 2022,
§3.2): positions of a molecule's real atoms with their mean removed. Used both by the molecule
dataset (noise, projections) and by the EGNN (its coordinate update), so it lives below both."""

from __future__ import annotations

import torch


def centre(pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, 3) unweighted mean of the real atoms' positions (``mask``: (B, N) bool)."""
    count = mask.sum(1, keepdim=True).clamp(min=1).to(pos.dtype)
    return (pos * mask[..., None]).sum(1, keepdim=True) / count[..., None]

"""The EGNN: E(3) and permutation equivariance, padding invariance (float64), the dense graph
against the edge-list formulation, and the parameter count at EDM's size."""

from __future__ import annotations

import pytest
import torch

from rtkrun.data.qm9 import BoundDenoiser, MoleculeSpace
from rtkrun.diffusion.schedules import PolynomialSchedule
from rtkrun.models.egnn import EGNN, EGNNConfig

SCHEDULE = PolynomialSchedule()


def _model(**kw) -> EGNN:
    torch.manual_seed(0)
    model = EGNN(EGNNConfig(layers=3, hidden=32, **kw), 6, SCHEDULE).double()
    for p in model.parameters():  # larger than the init, so every path carries signal
        p.data.normal_(0.0, 0.3)
    return model


def _batch(n_max: int = 9, counts=(9, 6, 3, 7)):
    g = torch.Generator().manual_seed(1)
    mask = torch.arange(n_max)[None] < torch.tensor(counts)[:, None]
    space = MoleculeSpace(mask)
    x = space.project(torch.randn(len(counts), n_max, 9, generator=g, dtype=torch.float64))
    z = space.project(torch.randn(len(counts), n_max, 9, generator=g, dtype=torch.float64))
    t = torch.rand(len(counts), generator=g, dtype=torch.float64) * 0.9 + 0.05
    return x, z, t, mask


def _rigid(v: torch.Tensor, q: torch.Tensor, shift: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.cat([(v[..., :3] @ q.T + shift) * mask[..., None], v[..., 3:]], -1)


@pytest.mark.parametrize("estimate", [True, False])
def test_rotation_and_translation_move_positions_and_leave_features(estimate):
    model = _model()
    x, z, t, mask = _batch()
    z = z if estimate else None
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    q[:, 0] *= torch.sign(torch.det(q))  # a proper rotation; reflections are checked below
    shift = torch.tensor([[[1.5, -2.0, 0.7]]], dtype=torch.float64)
    pos, h = model.dynamics(x, t, z, mask)
    moved = _rigid(x, q, shift, mask)
    z_moved = None if z is None else _rigid(z, q, shift, mask)
    pos2, h2 = model.dynamics(moved, t, z_moved, mask)
    assert h.abs().max() > 0.1 and (pos - x[..., :3]).abs().max() > 0.1  # not trivially equivariant
    torch.testing.assert_close(pos2, (pos @ q.T + shift) * mask[..., None], atol=1e-6, rtol=0)
    torch.testing.assert_close(h2, h, atol=1e-6, rtol=0)
    # The denoiser output in the zero-CoM space: rotated with the input, reflections included.
    reflect = q @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    for r in (q, reflect):
        zero = torch.zeros(1, 1, 3, dtype=torch.float64)
        out = model(x, t, z, node_mask=mask)
        out2 = model(_rigid(x, r, zero, mask), t, None if z is None else _rigid(z, r, zero, mask), node_mask=mask)
        torch.testing.assert_close(out2, _rigid(out, r, zero, mask), atol=1e-6, rtol=0)


def test_permuting_atoms_permutes_the_output():
    model = _model()
    x, z, t, mask = _batch()
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(3))
    out = model(x, t, z, node_mask=mask)
    out2 = model(x[:, perm], t, z[:, perm], node_mask=mask[:, perm])
    torch.testing.assert_close(out2, out[:, perm], atol=1e-6, rtol=0)


def test_padding_changes_nothing():
    model = _model()
    x, z, t, mask = _batch(n_max=9)
    pad = lambda v, n: torch.cat([v, v.new_zeros(v.shape[0], n, *v.shape[2:])], 1)  # noqa: E731
    out = model(x, t, z, node_mask=mask)
    out_padded = model(pad(x, 20), t, pad(z, 20), node_mask=pad(mask, 20))
    torch.testing.assert_close(out_padded[:, :9], out, atol=1e-9, rtol=0)
    assert (out_padded[:, 9:] == 0).all()
    # Values left in padded rows by a caller are ignored too.
    junk = x.clone()
    junk[~mask] = 5.0
    torch.testing.assert_close(model(junk, t, z, node_mask=mask), out, atol=1e-9, rtol=0)


def test_output_stays_in_the_zero_com_subspace():
    model = _model()
    x, z, t, mask = _batch()
    out = model(x, t, z, node_mask=mask)
    assert (out[..., :3] * mask[..., None]).sum(1).abs().max() < 1e-9
    assert (out[~mask] == 0).all()


@pytest.mark.parametrize("layout", ["dense", "edges"])
def test_every_graph_layout_computes_the_same_function(layout):
    model = _model()
    x, z, t, mask = _batch()
    estimate_mask = torch.tensor([True, False, True, False])
    pairs = model(x, t, z, node_mask=mask, estimate_mask=estimate_mask)
    model.cfg.graph = layout
    torch.testing.assert_close(model(x, t, z, node_mask=mask, estimate_mask=estimate_mask), pairs, atol=1e-9, rtol=0)
    # A row without an estimate equals the z=None call.
    torch.testing.assert_close(pairs[1], model(x, t, None, node_mask=mask)[1], atol=1e-9, rtol=0)


@pytest.mark.parametrize("layout", ["pairs", "dense", "edges"])
def test_bound_denoiser_does_the_batch_work_once_and_computes_the_same(layout, monkeypatch):
    # Sampling binds the node mask once per batch (trim width, edge list); the calls in the
    # loop then read nothing back from the device, and equal the unbound forward exactly.
    model = _model(graph=layout)
    x, z, t, mask = _batch(n_max=12)  # three padding rows on every molecule: the trim is used
    bound = BoundDenoiser(model, MoleculeSpace(mask))
    reads = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "cpu"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor, name, lambda self, *a, _o=original, _n=name, **k: reads.append(_n) or _o(self, *a, **k)
        )
    outs = [bound(x, t, z), bound(x, t), bound(x, t, z)]
    monkeypatch.undo()
    assert reads == []
    space = MoleculeSpace(mask)
    torch.testing.assert_close(outs[0], space.project(model(x, t, z, node_mask=mask)), atol=0, rtol=0)
    torch.testing.assert_close(outs[1], space.project(model(x, t, None, node_mask=mask)), atol=0, rtol=0)
    assert outs[0].shape == x.shape and (outs[0][:, 9:] == 0).all()


def test_parameter_count_at_edm_size():
    """EDM's 9 × 256 EGNN has 5,339,920 weights, 257 of which produce a time output it drops; ours
    without z has exactly the rest, and z adds its node inputs, edge feature and direction."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(EGNN(EGNNConfig(estimate_input=False), 6, SCHEDULE)) == 5_339_920 - 257
    assert count(EGNN(EGNNConfig(), 6, SCHEDULE)) == 5_348_367

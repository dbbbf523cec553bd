"""``egnn``: the E(3)-equivariant denoiser of EDM for molecules (Hoogeboom et al. 2022, §3 and
App. B; Satorras et al. 2021, eqs. 3–6), reading the DDDM estimate z.

Each of ``layers`` blocks runs ``inv_sublayers`` invariant message-passing layers and then one
equivariant coordinate update, on the fully connected graph of the real atoms:

    m_ij = φ_e(h_i, h_j, e_ij) · sigmoid(φ_att(m_ij)),   h_i ← h_i + φ_h(h_i, Σ_j m_ij / Z),
    x_i  ← x_i + Σ_j (x_i − x_j)/(‖x_i − x_j‖ + c) · tanh(φ_x(h_i, h_j, e_ij)) · r / L,

with Z the aggregation normaliser (1: sum), c = ``norm_constant``, r = ``coords_range`` (Å)
and e_ij = (‖x_i − x_j‖² now, ‖x_i − x_j‖² at the input). The first layer of every pair MLP
is split as W [h_i, h_j, e] = W_i h_i + W_j h_j + W_e e, so its node parts cost O(N) rather
than O(N²), and messages are summed on the (B, N, N) grid (see :class:`Graph` for the three
layouts; ``graph=edges`` is the reference code's gather–concatenate–scatter-add, same weights,
kept for tests and the benchmark).

The estimate z enters without breaking equivariance (docs/science.md, QM9): z's features join the
node features with a has-estimate flag, ‖z_i − z_j‖² joins the edge features, and the
coordinate update also moves along (z_i − z_j)/(‖z_i − z_j‖ + c). The network's output
(position displacement x_L − x_t, new features) goes through EDM's output head, so
x0_hat = c_skip·x_t/α + c_out·out; everything stays in the zero-mean, masked subspace.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rtkrun.diffusion.schedules import VPSchedule
from rtkrun.diffusion.subspace import centre
from rtkrun.models.precond import apply_head, estimate_and_flag, noise_level
from rtkrun.schemas.models import EGNNConfig


class Graph:
    """The fully connected graph of each molecule in a padded batch, in one of three layouts:

    * ``pairs`` (default): messages computed for real pairs only, summed on the dense
      (B, N, N) grid (a copy to unique slots, then a sum: no atomics, deterministic);
    * ``dense``: every (i, j) of the padded grid with a mask: no gathers, static shapes
      (CUDA graphs, ``torch.compile``) at the price of computing padded pairs;
    * ``edges``: the reference formulation: gather [h_i, h_j, e_ij] per edge, one Linear,
      scatter-add (``index_add_``) back to the nodes.
    """

    def __init__(self, node_mask: torch.Tensor, mode: str) -> None:
        b, n = node_mask.shape
        self.mode, self.shape = mode, (b, n)
        eye = torch.eye(n, dtype=torch.bool, device=node_mask.device)
        self.edge_mask = node_mask[:, :, None] & node_mask[:, None, :] & ~eye
        if mode != "dense":
            flat = self.edge_mask.flatten().nonzero().squeeze(1)  # one host sync per forward
            batch, i, j = flat // (n * n), (flat // n) % n, flat % n
            self.flat, self.row, self.col = flat, batch * n + i, batch * n + j

    def pair(self, node_i: torch.Tensor, node_j: torch.Tensor) -> torch.Tensor:
        """node_i[i] + node_j[j] for every pair."""
        if self.mode == "dense":
            return node_i[:, :, None] + node_j[:, None, :]
        return node_i.flatten(0, 1)[self.row] + node_j.flatten(0, 1)[self.col]

    def ends(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_i, h_j) per edge (edge-list layouts)."""
        return h.flatten(0, 1)[self.row], h.flatten(0, 1)[self.col]

    def diff(self, x: torch.Tensor) -> torch.Tensor:
        return self.pair(x, -x)

    def sum_j(self, values: torch.Tensor) -> torch.Tensor:
        """Σ_j values_ij over real pairs, back to (B, N, C)."""
        b, n = self.shape
        if self.mode == "dense":
            return (values * self.edge_mask[..., None].to(values.dtype)).sum(2)
        if self.mode == "edges":
            return values.new_zeros(b * n, values.shape[-1]).index_add_(0, self.row, values).view(b, n, -1)
        grid = values.new_zeros(b * n * n, values.shape[-1]).index_copy_(0, self.flat, values)
        return grid.view(b, n, n, -1).sum(2)


class PairMLP(nn.Module):
    """MLP of (h_i, h_j, e_ij). Its first layer W [h_i, h_j, e] is stored split as
    W_i h_i + W_j h_j + W_e e, so the node parts run once per node, not once per pair; the
    ``edges`` layout applies the same weights the reference way, to the gathered concatenation."""

    def __init__(self, hidden: int, edge_dim: int, out: int, depth: int, last_gain: float | None = None) -> None:
        super().__init__()
        self.w_i = nn.Linear(hidden, hidden)
        self.w_j = nn.Linear(hidden, hidden, bias=False)
        self.w_e = nn.Linear(edge_dim, hidden, bias=False)
        rest: list[nn.Module] = [nn.SiLU()]
        for k in range(depth - 1):
            last = k == depth - 2
            rest.append(nn.Linear(hidden, out if last else hidden, bias=not (last and last_gain is not None)))
            if not last:
                rest.append(nn.SiLU())
        if last_gain is not None:
            nn.init.xavier_uniform_(rest[-1].weight, gain=last_gain)
        self.rest = nn.Sequential(*rest)

    def forward(self, graph: Graph, h: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        if graph.mode == "edges":
            weight = torch.cat([self.w_i.weight, self.w_j.weight, self.w_e.weight], 1)
            first = F.linear(torch.cat([*graph.ends(h), edges], -1), weight, self.w_i.bias)
        else:
            first = graph.pair(self.w_i(h), self.w_j(h)) + self.w_e(edges)
        return self.rest(first)


class InvariantLayer(nn.Module):
    def __init__(self, cfg: EGNNConfig, edge_dim: int) -> None:
        super().__init__()
        self.edge_mlp = nn.Sequential(PairMLP(cfg.hidden, edge_dim, cfg.hidden, depth=2), nn.SiLU())
        self.attention = nn.Linear(cfg.hidden, 1) if cfg.attention else None
        self.node_mlp = nn.Sequential(
            nn.Linear(2 * cfg.hidden, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.hidden)
        )
        self.norm = cfg.aggregation_norm

    def forward(self, graph: Graph, h: torch.Tensor, edges: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        m = self.edge_mlp[1](self.edge_mlp[0](graph, h, edges))
        if self.attention is not None:
            m = m * torch.sigmoid(self.attention(m))
        h = h + self.node_mlp(torch.cat([h, graph.sum_j(m) / self.norm], -1))
        return h * node_mask


class CoordinateUpdate(nn.Module):
    def __init__(self, cfg: EGNNConfig, edge_dim: int, directions: int) -> None:
        super().__init__()
        self.phi = PairMLP(cfg.hidden, edge_dim, directions, depth=3, last_gain=0.001)
        self.scale = cfg.coords_range / cfg.layers
        self.tanh, self.c, self.norm = cfg.tanh, cfg.norm_constant, cfg.aggregation_norm

    def forward(self, graph, h, edges, units: list[torch.Tensor], x: torch.Tensor, node_mask) -> torch.Tensor:
        phi = self.phi(graph, h, edges)
        phi = torch.tanh(phi) * self.scale if self.tanh else phi
        move = sum(unit * phi[..., k : k + 1] for k, unit in enumerate(units))
        return (x + graph.sum_j(move) / self.norm) * node_mask


class EGNN(nn.Module):
    """``forward(x_t, t, z=None, node_mask=...) -> x0_hat`` on (B, N, 3 + F) molecules."""

    accepts_estimate_mask = True

    def __init__(self, cfg: EGNNConfig, n_features: int, schedule: VPSchedule, data_std: float = 1.0) -> None:
        super().__init__()
        self.cfg, self.schedule, self.data_std = cfg, schedule, float(data_std)
        self.n_features = n_features
        node_in = n_features + 1 + (n_features + 1 if cfg.estimate_input else 0)  # h, noise level[, z_h, flag]
        self.edge_dim = 3 if cfg.estimate_input else 2
        self.embed = nn.Linear(node_in, cfg.hidden)
        self.blocks = nn.ModuleList()
        for _ in range(cfg.layers):
            block = nn.Module()
            block.invariant = nn.ModuleList(InvariantLayer(cfg, self.edge_dim) for _ in range(cfg.inv_sublayers))
            block.coords = CoordinateUpdate(cfg, self.edge_dim, 2 if cfg.estimate_input else 1)
            self.blocks.append(block)
        self.out = nn.Linear(cfg.hidden, n_features)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        z: torch.Tensor | None = None,
        node_mask: torch.Tensor | None = None,
        estimate_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if node_mask is None:
            raise ValueError("egnn needs node_mask (B, N) marking real atoms")
        return self.bind(node_mask)(x_t, t, z, estimate_mask)

    def bind(self, node_mask: torch.Tensor, core: Callable | None = None) -> Callable[..., torch.Tensor]:
        """``denoiser(x_t, t, z=None, estimate_mask=None)`` for batches with this node mask, with
        the per-batch work done once: the padding trim and the edge list, the two places that
        read values back from the device. Sampling binds once per batch, so its loop never waits
        on the GPU; ``forward`` binds on every call. ``core`` replaces ``_denoise`` (a compiled
        copy of it)."""
        core = core or self._denoise
        n = node_mask.shape[1]
        # Rows past the largest molecule of the batch are padding on every sample: dropping
        # them shrinks the (B, N, N) pair tensors (QM9 averages 18 of 29 atoms).
        width = int(node_mask.sum(1).max()) if self.cfg.trim_padding else n
        mask = node_mask[:, :width].contiguous()
        graph = Graph(mask, self.cfg.graph)

        def denoise(x_t, t, z=None, estimate_mask=None) -> torch.Tensor:
            if width < n:
                x_t, z = x_t[:, :width], None if z is None else z[:, :width]
            out = core(x_t, t, z, mask, estimate_mask, graph)
            return out if width == n else torch.cat([out, out.new_zeros(out.shape[0], n - width, out.shape[2])], 1)

        return denoise

    def _denoise(self, x_t, t, z, node_mask, estimate_mask, graph: Graph) -> torch.Tensor:
        t = t.to(x_t.dtype).expand(x_t.shape[0]) if t.ndim == 0 else t.to(x_t.dtype)
        x, h = self.dynamics(x_t, t, z, node_mask, estimate_mask, graph)
        mask = node_mask[..., None].to(x_t.dtype)
        move = x - x_t[..., :3]
        move = (move - centre(move, node_mask)) * mask
        alpha, sigma = self.schedule.alpha_sigma(t)
        return apply_head(self.cfg.head, x_t, torch.cat([move, h], -1), alpha, sigma, self.data_std) * mask

    def dynamics(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        z: torch.Tensor | None,
        node_mask: torch.Tensor,
        estimate_mask=None,
        graph: Graph | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(final positions x_L, output features) of the message passing: x_L is E(3)-equivariant
        in (x_t, z) positions, the features invariant."""
        mask = node_mask[..., None].to(x_t.dtype)
        graph = graph or Graph(node_mask, self.cfg.graph)
        pos, feats = x_t[..., :3], x_t[..., 3:]
        level = noise_level(self.schedule, t)[:, None, None].expand(*x_t.shape[:2], 1)
        node = [feats, level]
        d2_input = _squared(graph.diff(pos))
        edges0 = [d2_input]
        units_fixed = []
        if self.cfg.estimate_input:
            z, flag = estimate_and_flag(x_t, z, estimate_mask)
            node += [z[..., 3:], flag[:, None, None].expand(*x_t.shape[:2], 1)]
            dz = graph.diff(z[..., :3])
            dz2 = _squared(dz)
            edges0.append(dz2)
            units_fixed.append(dz / (torch.sqrt(dz2 + 1e-8) + self.cfg.norm_constant))
        h = self.embed(torch.cat(node, -1)) * mask
        x = pos
        for block in self.blocks:
            dx = graph.diff(x)
            d2 = _squared(dx)
            edges = torch.cat([d2, *edges0], -1)
            for layer in block.invariant:
                h = layer(graph, h, edges, mask)
            unit_x = dx / (torch.sqrt(d2 + 1e-8) + self.cfg.norm_constant)
            x = block.coords(graph, h, edges, [unit_x, *units_fixed], x, mask)
        return x, self.out(h) * mask


def _squared(diff: torch.Tensor) -> torch.Tensor:
    return (diff**2).sum(-1, keepdim=True)


def build(cfg: EGNNConfig, dataset, schedule: VPSchedule) -> EGNN:
    return EGNN(cfg, n_features=dataset.sample_shape[1] - 3, schedule=schedule, data_std=dataset.data_std)

"""Schemas of the ``model`` group (implementations: ``rtkrun/models/``), and which datasets each
model serves (checked before any work starts)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rtkrun.errors import ConfigError

HEADS = ("edm", "dddm")  # how a network's output becomes x0_hat (rtkrun/models/precond.py)
EGNN_GRAPHS = ("pairs", "dense", "edges")  # how the EGNN forms its pairs (rtkrun/models/egnn.py, Graph)


@dataclass
class MogOracleConfig:
    name: str = "mog_oracle"


@dataclass
class MogFlowOracleConfig:
    name: str = "mog_flow_oracle"
    ode_steps: int = 200  # Heun steps of the exact PF-ODE per evaluation (float64)
    t_min: float = 1e-4  # the PF-ODE solve stops here


@dataclass
class MogMLPConfig:
    name: str = "mog_mlp"
    hidden: int = 128  # width
    depth: int = 3  # hidden layers
    time_features: int = 16  # Fourier features of the noise level
    head: str = "edm"  # edm: x0 = c_skip·x_t/α + c_out·net (identity as σ → 0) | dddm: x0 = x_t − net

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ConfigError(f"head={self.head!r} is unknown; choose edm or dddm")
        for key in ("hidden", "depth", "time_features"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")


@dataclass
class MogStudentConfig:
    name: str = "mog_student"
    symmetric: bool = True  # K = 2 tied means ±μ (the seed's tanh student)
    init: str = "random"  # random: a random direction of norm init_scale | perturbed: μ* plus such a vector
    init_scale: float = 0.1  # norm of the random initial means (or of the perturbation)
    init_seed: int = 0  # draws the initial means

    def __post_init__(self) -> None:
        if self.init not in ("random", "perturbed"):
            raise ConfigError(f"init={self.init!r} is unknown; choose random or perturbed")


@dataclass
class UNetConfig:
    name: str = "dddm_unet"
    channels: int = 128  # base width
    channel_mult: list[int] = field(default_factory=lambda: [2, 2, 2])  # width per resolution, × channels
    blocks_per_level: int = 4  # residual blocks per resolution
    attention_resolutions: list[int] = field(default_factory=lambda: [16])  # self-attention at these resolutions
    dropout: float = 0.13  # in residual blocks
    head: str = "dddm"  # dddm: x0_hat = x_t − F (the paper) | edm: c_skip·x_t/α + c_out·F
    estimate_input: bool = True  # concatenate z on the channel axis (false: a plain denoiser)
    groups: int = 32  # GroupNorm groups (capped by the channel count)

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ConfigError(f"head={self.head!r} is unknown; choose {' or '.join(HEADS)}")
        if self.channels < 1 or self.blocks_per_level < 1 or self.groups < 1:
            raise ConfigError("channels, blocks_per_level and groups must be >= 1")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ConfigError(f"channel_mult must be a non-empty list of positive integers, got {self.channel_mult}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class EGNNConfig:
    name: str = "egnn"
    layers: int = 9  # equivariant blocks
    hidden: int = 256  # node feature width
    inv_sublayers: int = 1  # GCL sublayers per block
    attention: bool = True  # edge attention (EDM)
    tanh: bool = True  # bound the coordinate update by tanh × coords_range
    coords_range: float = 15.0  # see tanh
    norm_constant: float = 1.0  # added to ‖x_i − x_j‖ in the coordinate update
    aggregation_norm: float = 1.0  # Z: 1 is EDM's sum aggregation
    estimate_input: bool = True  # false: EDM's network exactly (no z)
    head: str = "edm"  # edm: c_skip/c_out preconditioning | dddm: x_t − F
    graph: str = "pairs"  # pairs | dense | edges (the reference formulation); see Graph
    trim_padding: bool = True  # drop padding rows past the batch's largest molecule (one host sync per call)

    def __post_init__(self) -> None:
        for key in ("layers", "hidden", "inv_sublayers"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.coords_range <= 0 or self.norm_constant < 0 or self.aggregation_norm <= 0:
            raise ConfigError("coords_range and aggregation_norm must be > 0 and norm_constant >= 0")
        if self.head not in HEADS:
            raise ConfigError(f"head={self.head!r} is unknown; choose edm or dddm")
        if self.graph not in EGNN_GRAPHS:
            raise ConfigError(f"graph={self.graph!r} is unknown; choose one of {', '.join(EGNN_GRAPHS)}")


MODEL_SCHEMAS = {
    "mog_mlp": MogMLPConfig,
    "mog_oracle": MogOracleConfig,
    "mog_student": MogStudentConfig,
    "mog_flow_oracle": MogFlowOracleConfig,
    "dddm_unet": UNetConfig,
    "egnn": EGNNConfig,
}
MODEL_DATASETS = {  # the datasets each model can serve
    "mog_mlp": {"mog"},
    "mog_oracle": {"mog"},
    "mog_student": {"mog"},
    "mog_flow_oracle": {"mog"},
    "dddm_unet": {"cifar10"},
    "egnn": {"qm9"},
}

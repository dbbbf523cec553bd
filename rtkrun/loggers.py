"""Optional experiment trackers. The run directory is always the source of truth; a tracker
only mirrors ``metrics.jsonl`` records. wandb is imported only when selected, and takes its
mode from ``logger.mode`` or the WANDB_MODE variable (offline/disabled without a network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class NullTracker:
    def log(self, record: dict[str, Any]) -> None:
        pass

    def summary(self, metrics: dict[str, Any]) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker(NullTracker):
    def __init__(self, cfg, run_dir: Path, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError as e:
            from rtkrun.errors import RtkrunError

            raise RtkrunError("logger=wandb needs the wandb package: pip install 'rtkrun[wandb]'") from e
        kwargs = {"mode": cfg.mode} if cfg.mode else {}
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            tags=list(cfg.tags),
            dir=str(run_dir),
            name=run_dir.name,
            config=config,
            resume="allow",
            **kwargs,
        )

    def log(self, record: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in record.items() if k != "step"}, step=record.get("step"))

    def summary(self, metrics: dict[str, Any]) -> None:
        self.run.summary.update(metrics)

    def finish(self) -> None:
        self.run.finish()


def make_tracker(cfg, run_dir: Path, config: dict[str, Any]) -> NullTracker:
    return WandbTracker(cfg, run_dir, config) if cfg.name == "wandb" else NullTracker()

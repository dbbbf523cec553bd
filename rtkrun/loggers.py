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

    def image(self, key: str, path: Path, caption: str = "") -> None:
        pass


RUN_ID_FILE = "wandb_run_id.txt"
WANDB_MISSING = "logger=wandb needs the wandb package: pip install 'rtkrun[wandb]'"


def check_tracker(logger_cfg: Any) -> None:
    """Before anything is written: the tracker a config selects can be imported (found, not loaded)."""
    import importlib.util

    if getattr(logger_cfg, "name", "console") == "wandb" and importlib.util.find_spec("wandb") is None:
        from rtkrun.errors import RtkrunError

        raise RtkrunError(WANDB_MISSING)


class WandbTracker(NullTracker):
    """Mirrors a run into wandb. The wandb run id is kept in the run directory
    (``wandb_run_id.txt``, written atomically before the first record), so a resumed or requeued
    job continues the same wandb run. On compute nodes without a network use
    ``logger.mode=offline`` and upload later with ``wandb sync <run dir>/wandb/offline-run-*``."""

    def __init__(self, cfg, run_dir: Path, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError as e:
            from rtkrun.errors import RtkrunError

            raise RtkrunError(WANDB_MISSING) from e
        from rtkrun.runs import atomic_write_bytes

        kwargs = {"mode": cfg.mode} if cfg.mode else {}
        id_file = run_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else wandb.util.generate_id()
        atomic_write_bytes(id_file, (run_id + "\n").encode())
        self.wandb = wandb
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            tags=list(cfg.tags),
            dir=str(run_dir),
            name=run_dir.name,
            id=run_id,
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

    def image(self, key: str, path: Path, caption: str = "") -> None:
        """A picture the run wrote (sample grid, molecule depictions, a table's figure)."""
        self.run.log({key: self.wandb.Image(str(path), caption=caption)})


def make_tracker(cfg, run_dir: Path, config: dict[str, Any]) -> NullTracker:
    return WandbTracker(cfg, run_dir, config) if cfg.name == "wandb" else NullTracker()


def duration(seconds: float) -> str:
    """4 s, 3m05s, 2h07m, 350d04h: two units at most."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"

"""Run directories: atomic writes, checkpoints, metrics files and resume.

Everything that must survive a crash is written to a temporary file in the same directory,
flushed to disk and renamed over the target (rename is atomic on POSIX), so a reader sees the
old file or the new one, never a torn one.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from rtkrun.errors import RtkrunError

CHECKPOINT_FORMAT = 1


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise RtkrunError(f"cannot write {path}: {e.strerror}; choose a writable hydra.run.dir") from e
    try:
        # mkstemp makes the file private (0600); results are meant to be shared like any file
        # the user writes, so give it the mode the umask allows
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise RtkrunError(f"cannot write {path}: {e.strerror}; the previous file is unchanged") from e


def cache_dir() -> Path:
    """Where derived data is kept between runs (prepared datasets, FID statistics):
    ``$RTKRUN_CACHE``, else ``$XDG_CACHE_HOME/rtkrun``, else ``~/.cache/rtkrun``."""
    default = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "rtkrun"
    return Path(os.environ.get("RTKRUN_CACHE", default)).expanduser()


def _json_safe(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as null so every file stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if torch.is_tensor(value):
        return _json_safe(value.item() if value.numel() == 1 else value.tolist())
    return value


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(_json_safe(obj), indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(_json_safe(record)) + "\n")


def truncate_jsonl(path: str | Path, max_step: int) -> None:
    """Drop periodic records logged after the checkpoint a run resumes from."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= max_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill: drop it
    atomic_write_bytes(path, ("\n".join(kept) + "\n" if kept else "").encode())


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buf)
    atomic_write_bytes(path, buf.getvalue())


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory holding ``checkpoints/last.pt``."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "checkpoints" / "last.pt"
    if not p.is_file():
        raise RtkrunError(f"checkpoint not found: {p}; pass ckpt=<file.pt or run directory of a finished train run>")
    return p


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    p = resolve_checkpoint(path)
    try:
        state = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises many types for a torn or foreign file
        raise RtkrunError(
            f"checkpoint {p} is unreadable ({type(e).__name__}); it is corrupt or not a torch file: "
            "restore it or retrain"
        ) from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise RtkrunError(
            f"checkpoint {p} has format {found!r}, this rtkrun reads format {CHECKPOINT_FORMAT}; "
            "retrain or use the rtkrun version that wrote it"
        )
    return state


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints" / "last.pt"


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest (``md5``, ``sha1``, …) of a file, read in 4 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


_HELD_LOCKS: dict[Path, int] = {}


def lock_run_dir(run_dir: Path) -> None:
    """Hold an exclusive lock on ``run_dir/.rtkrun.lock`` for the rest of this process, so two
    rtkrun processes never write one run directory at once. The kernel drops the lock when the
    process ends, however it ends (SIGKILL included), so a stale lock cannot block a resume.
    Under torchrun only rank 0 takes it (the ranks share the directory by design)."""
    if os.environ.get("RANK", "0") != "0":
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks
        return
    key = Path(run_dir).resolve()
    if key in _HELD_LOCKS:
        return
    key.mkdir(parents=True, exist_ok=True)
    path = key / ".rtkrun.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        owner = path.read_text().strip() or "unknown"
        raise RtkrunError(
            f"{run_dir} is in use by another rtkrun process (pid {owner}); "
            "wait for it to finish or choose another hydra.run.dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _HELD_LOCKS[key] = fd

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
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtkrun.errors import RtkrunError

if TYPE_CHECKING:
    import torch

CHECKPOINT_FORMAT = 1


RUN_DIR_FIX = "choose a writable hydra.run.dir with free space"


def _write_fix(path: Path) -> str:
    """How to fix a failed write: the setting that chose this path."""
    try:
        Path(path).resolve().relative_to(cache_dir().resolve())
        return "set RTKRUN_CACHE to a writable directory"
    except ValueError:
        return RUN_DIR_FIX


def atomic_write_bytes(path: str | Path, data: bytes, fix: str | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers see the old file
    or the new one. A failure (full disk, file-size limit, permissions) stops with one line naming
    the path and ``fix`` (by default the setting that chose the path) and leaves no partial file."""
    path = Path(path)
    fix = fix or _write_fix(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise RtkrunError(f"cannot write {path}: {e.strerror}; {fix}") from e
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
        raise RtkrunError(f"cannot write {path}: {e.strerror}; the previous file is unchanged ({fix})") from e


def atomic_save(path: str | Path, write: Callable[[io.BytesIO], Any], fix: str | None = None) -> None:
    """Atomic write of what ``write(buffer)`` puts into an in-memory buffer: pictures from
    matplotlib or PIL, SDF text, anything a library writes to a file object."""
    buf = io.BytesIO()
    write(buf)
    atomic_write_bytes(path, buf.getvalue(), fix)


def save_figure(fig: Any, path: str | Path, fix: str | None = None, **kwargs: Any) -> None:
    """A matplotlib figure as a PNG, atomically; the figure is closed."""
    import matplotlib.pyplot as plt

    try:
        atomic_save(path, lambda buf: fig.savefig(buf, format="png", **kwargs), fix)
    finally:
        plt.close(fig)


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
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    if torch is not None and torch.is_tensor(value):
        return _json_safe(value.item() if value.numel() == 1 else value.tolist())
    return value


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(_json_safe(obj), indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


class DamagedFile(RtkrunError):
    """A run file that exists but cannot be read as what it should be (torn by a kill, edited)."""


def read_json_object(path: str | Path) -> dict[str, Any] | None:
    """A JSON object file (``metrics.json``, the run record): None where it does not exist;
    :class:`DamagedFile` where it is not valid JSON or not an object."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise DamagedFile(f"{path} is unreadable ({type(e).__name__})") from None
    try:
        value = json.loads(text)
    except ValueError:
        raise DamagedFile(f"{path} is damaged (not valid JSON: torn by a kill or edited)") from None
    if not isinstance(value, dict):
        raise DamagedFile(f"{path} is damaged (holds a JSON {type(value).__name__}, not an object)")
    return value


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(_json_safe(record)) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; a line torn by a kill or not an object is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def truncate_jsonl(path: str | Path, max_step: int) -> None:
    """Drop periodic records logged after the checkpoint a run resumes from (and torn lines)."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for record in read_jsonl(path):
        step = record.get("step", 0)
        if isinstance(step, (int, float)) and step <= max_step:
            kept.append(json.dumps(record))
    atomic_write_bytes(path, ("\n".join(kept) + "\n" if kept else "").encode())


def save_checkpoint(path: str | Path, state: dict[str, Any], *more: str | Path) -> None:
    """``state`` serialised once and written atomically to ``path`` (and to each of ``more``, in
    order: a snapshot and last.pt due at the same step share one serialisation)."""
    import torch

    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buf)
    for target in (path, *more):
        atomic_write_bytes(target, buf.getvalue())


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory holding ``checkpoints/last.pt``."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "checkpoints" / "last.pt"
    if not p.is_file():
        raise RtkrunError(f"checkpoint not found: {p}; pass ckpt=<file.pt or run directory of a finished train run>")
    return p


# What every checkpoint holds, with the type each entry must have (sample, diagnose and resume
# read these; resume also reads the trainer's own entries, see Trainer.load).
CHECKPOINT_ENTRIES = {"step": int, "config": dict, "ema": dict}


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    import torch

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
    for key, kind in CHECKPOINT_ENTRIES.items():
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            found = "missing" if key not in state else f"a {type(value).__name__} where a {kind.__name__} belongs"
            raise RtkrunError(f"checkpoint {p} is damaged: its '{key}' entry is {found}; restore it or retrain")
    for group in ("dataset", "model", "schedule"):
        if not isinstance(state["config"].get(group), dict):
            raise RtkrunError(f"checkpoint {p} is damaged: its config has no '{group}' group; restore it or retrain")
    return state


def checkpoint_step(path: str | Path) -> int | None:
    """The step a checkpoint was saved at, read without loading its tensors (memory-mapped);
    None where the file is unreadable (the full load then says why)."""
    import torch

    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=False, mmap=True)
        step = state.get("step") if isinstance(state, dict) else None
    except Exception:  # a torn or foreign file: the real load reports it
        return None
    return step if isinstance(step, int) else None


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints" / "last.pt"


def snapshot_path(run_dir: str | Path, epoch: int) -> Path:
    """The checkpoint kept after ``epoch`` (``trainer.snapshot_epochs``)."""
    return Path(run_dir) / "checkpoints" / f"epoch-{epoch:06d}.pt"


def step_snapshot_path(run_dir: str | Path, step: int) -> Path:
    """The checkpoint kept at ``step`` (``trainer.snapshot_every``)."""
    return Path(run_dir) / "checkpoints" / f"step-{step:08d}.pt"


def snapshot_paths(run_dir: str | Path) -> dict[int, Path]:
    """Every kept snapshot of a run directory, by epoch."""
    found = sorted((Path(run_dir) / "checkpoints").glob("epoch-*.pt"))
    return {int(p.stem.removeprefix("epoch-")): p for p in found if p.stem.removeprefix("epoch-").isdigit()}


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest (``md5``, ``sha1``, …) of a file, read in 4 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


_HELD_LOCKS: dict[Path, int] = {}


def lock_run_dir(run_dir: Path, rank: int = 0) -> bool:
    """Hold an exclusive lock on ``run_dir/.rtkrun.lock`` for the rest of this process, so two
    rtkrun processes never write one run directory at once. The kernel drops the lock when the
    process ends, however it ends (SIGKILL included), so a stale lock cannot block a resume.
    ``rank`` is this process's rank in a data-parallel group (the ranks share the directory by
    design, rank 0 holds the lock); callers pass the group's real rank, never a guess from the
    environment. Problems with the path itself stop with one line naming ``hydra.run.dir``.
    Returns whether this call took the lock (False: not rank 0, or already held here)."""
    if rank != 0:
        return False
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks
        return False
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    if key in _HELD_LOCKS:
        return False
    path = key / ".rtkrun.lock"
    try:
        if key.exists() and not key.is_dir():
            raise RtkrunError(f"hydra.run.dir={run_dir} is a file, not a directory; choose another hydra.run.dir")
        key.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise RtkrunError(f"cannot use hydra.run.dir={run_dir}: {reason} ({e.filename}); {RUN_DIR_FIX}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        try:
            owner = path.read_text().strip() or "unknown"
        except OSError:
            owner = "unknown"
        raise RtkrunError(
            f"{run_dir} is in use by another rtkrun process (pid {owner}); "
            "wait for it to finish or choose another hydra.run.dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _HELD_LOCKS[key] = fd
    return True


def unlock_run_dir(run_dir: Path) -> None:
    """Release a lock :func:`lock_run_dir` took (a sweep's jobs in one process release theirs as
    each finishes, so a long local sweep does not run out of file descriptors)."""
    fd = _HELD_LOCKS.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock

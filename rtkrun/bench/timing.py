"""Clocks, memory gauges and machine facts shared by the benchmark sections.

Timing is the median of ``repeats`` calls after ``warmup`` calls; on CUDA each call is timed
by events around it (the GPU's own clock) and synchronised, on the CPU by ``perf_counter``.
Peak memory is the CUDA allocator's high-water mark on a GPU and, on the CPU, the growth of
the process's resident-set high-water mark (Linux ``VmHWM``, reset through ``clear_refs`` after
``malloc_trim``) over its value when the gauge started; where that is unsupported it is None.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# Dense bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets.
BF16_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "A100": 312.0}


@dataclass
class Measurement:
    seconds: float  # median seconds per call
    spread: float  # (75th − 25th percentile) / median: how far to trust the median
    repeats: int
    peak_bytes: int | None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Bytes above the starting level at the highest point inside the ``with`` block."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.bytes = device, None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = _reset_rss_peak()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.start
        elif self.start is not None:
            peak = _status_kib("VmHWM")
            self.bytes = None if peak is None else max(0, peak * 1024 - self.start)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_rss_peak() -> int | None:
    """Return freed heap to the system (glibc keeps it, which would hide every later peak), reset
    VmHWM to the current RSS and return that RSS in bytes (None where unsupported)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    rss = _status_kib("VmRSS")
    return None if rss is None else rss * 1024


class Stopwatch:
    """Seconds spent inside the ``with`` block: the GPU's own clock (events, then a wait for
    the end event) on CUDA, ``perf_counter`` on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda, self.seconds = device.type == "cuda", float("nan")

    def __enter__(self) -> Stopwatch:
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            self.end.record()
            self.end.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1e3
        else:
            self.seconds = time.perf_counter() - self.t0


def _time_once(fn: Callable[[], Any], device: torch.device) -> float:
    with Stopwatch(device) as clock:
        fn()
    return clock.seconds


def _summary(times: list[float], peak: int | None) -> Measurement:
    median = statistics.median(times)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [median, median, median]
    return Measurement(median, (q[2] - q[0]) / median if median > 0 else 0.0, len(times), peak)


def measure(fn: Callable[[], Any], device: torch.device, *, warmup: int = 2, repeats: int = 5) -> Measurement:
    """Median time of ``fn()`` over the timed calls, and the peak memory over all calls (the
    first call allocates what later calls find cached)."""
    with PeakMemory(device) as memory:
        for _ in range(warmup):
            fn()
        synchronize(device)
        times = [_time_once(fn, device) for _ in range(repeats)]
    return _summary(times, memory.bytes)


def measure_interleaved(
    fns: list[Callable[[], Any]], device: torch.device, *, warmup: int = 2, repeats: int = 5
) -> list[Measurement]:
    """Like ``measure`` for several functions whose times are compared, called in turn (a, b, a,
    b, …) so that drifts of a shared machine (clock boost, neighbours) hit all of them alike.
    Peak memory is that of the first function."""
    times: list[list[float]] = [[] for _ in fns]
    with PeakMemory(device) as memory:
        for _ in range(warmup):
            fns[0]()
        synchronize(device)
        for _ in range(repeats):
            for k, fn in enumerate(fns):
                times[k].append(_time_once(fn, device))
    return [_summary(t, memory.bytes if k == 0 else None) for k, t in enumerate(times)]


def busy_fraction(intervals: list[tuple[float, float]]) -> float | None:
    """The share of [first start, last end] covered by at least one of the (start, end)
    intervals: how busy a device was, from its kernels' intervals (overlaps counted once)."""
    if not intervals:
        return None
    intervals = sorted(intervals)
    covered, (lo, hi) = 0.0, intervals[0]
    for start, end in intervals[1:]:
        if start > hi:
            covered, lo, hi = covered + hi - lo, start, end
        else:
            hi = max(hi, end)
    covered += hi - lo
    span = max(end for _, end in intervals) - intervals[0][0]
    return covered / span if span > 0 else 1.0


def gpu_idle_fraction(fn: Callable[[], Any], device: torch.device, calls: int = 5) -> float | None:
    """1 − busy share of the GPU over ``calls`` calls of ``fn`` (a training step with its data
    loading), from the kernel intervals the profiler records; None off CUDA."""
    if device.type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        synchronize(device)
    kernels = [(e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA]
    busy = busy_fraction(kernels)
    return None if busy is None else 1.0 - busy


def count_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of one call of ``fn`` (matmuls and convolutions, forward and
    backward, as ``torch.utils.flop_counter`` counts them; elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def peak_tflops(device: torch.device) -> float | None:
    """The device's dense bf16 peak, for MFU; None for CPUs and unknown GPUs."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def machine(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads"
    return {
        "device": name,
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }

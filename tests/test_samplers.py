"""DDPM and DDIM with the exact MoG denoiser: exactness, NFE counting, callbacks and seeds."""

import math

import pytest
import torch

from rtkrun.data.mog import MogConfig, MogDataset
from rtkrun.diffusion.mixture import GaussianMixture
from rtkrun.diffusion.schedules import CosineSchedule, LinearSchedule
from rtkrun.metrics.mog import score_samples
from rtkrun.models.oracle import MogOracle
from rtkrun.samplers import SAMPLERS
from rtkrun.samplers.ddim import ddim
from rtkrun.samplers.ddpm import ddpm
from rtkrun.seeding import SampleNoise, sample_seed, sample_seeds

MIXTURES = {
    2: MogConfig(
        dim=2, n_components=8, layout="ring", radius=2.0, component_std=0.15, weights=[1, 2, 3, 4, 1, 2, 3, 4]
    ),
    16: MogConfig(dim=16, n_components=6, layout="random", radius=4.0, component_std=0.3, weights=[1, 2, 3, 4, 5, 6]),
}


def oracle_samples(sampler, cfg, n, schedule, seed=0, **settings):
    dataset = MogDataset(MogConfig(**{**cfg.__dict__, "train_size": 1}))
    model = MogOracle(dataset.mixture, schedule)
    noise = SampleNoise.for_range(seed, 0, n)
    result = sampler(model, noise.randn(cfg.dim), schedule, generator=noise, **settings)
    return dataset.mixture, result


@pytest.mark.parametrize("dim", [2, pytest.param(16, marks=pytest.mark.slow)])  # d = 16: -m slow (suite time)
@pytest.mark.parametrize(
    "sampler,settings", [(ddpm, {"steps": 1000}), (ddim, {"steps": 100})], ids=["ddpm1000", "ddim100"]
)
def test_oracle_sampling_reaches_true_vs_true_baseline(dim, sampler, settings):
    # Sliced W2 at n = 10⁴ fluctuates by ±30 % between draws, so two noise seeds are averaged
    # and compared with a baseline averaged over five exact draws.
    runs = []
    for seed in (0, 1):
        mixture, result = oracle_samples(sampler, MIXTURES[dim], 10_000, CosineSchedule(), seed=seed, **settings)
        assert result.nfe == settings["steps"]
        runs.append(score_samples(mixture, result.x0, seed=7, w2_max_n=500, mmd_max_n=500))
    mean = {k: sum(r[k] for r in runs) / 2 for k in ("sliced_w2", "mode_tv", "baseline/sliced_w2", "baseline/mode_tv")}
    assert all(r["nonfinite"] == 0 for r in runs)
    assert mean["sliced_w2"] <= 1.5 * mean["baseline/sliced_w2"], runs
    assert mean["mode_tv"] <= 1.5 * mean["baseline/mode_tv"], runs


def test_ddim_one_step_is_exact_for_a_point_mass_and_shrinks_a_gaussian_by_the_closed_form():
    # One DDIM step from t_max lands on E[x0 | x_T]: exact when the data is a single point.
    schedule = LinearSchedule()
    mu = torch.tensor([[1.5, -0.5]], dtype=torch.float64)
    point = MogOracle(GaussianMixture(mu, 0.0), schedule)
    noise = SampleNoise.for_range(0, 0, 1000, dtype=torch.float64)
    out = ddim(point, noise.randn(2), schedule, generator=noise, steps=1).x0
    torch.testing.assert_close(out, mu.expand_as(out), atol=1e-12, rtol=0)
    # For N(μ, s²I) data the one-step output is Gaussian with variance α²s⁴/(α²s² + σ²) < s²
    # (derived): one-step DDIM is exact only in the point-mass limit s → 0.
    s = 1.0
    gauss = MogOracle(GaussianMixture(mu, s), schedule)
    noise = SampleNoise.for_range(0, 0, 100_000, dtype=torch.float64)
    t_max = 0.5
    a, sig = (v.item() for v in schedule.alpha_sigma(torch.tensor(t_max, dtype=torch.float64)))
    x_T = a * mu + (a**2 * s**2 + sig**2) ** 0.5 * noise.randn(2)  # exact x_T at t_max
    out = ddim(gauss, x_T, schedule, generator=noise, steps=1, t_max=t_max).x0
    expected_var = a**2 * s**4 / (a**2 * s**2 + sig**2)
    assert out.var(0).mean().item() == pytest.approx(expected_var, rel=0.015)
    many = ddim(gauss, x_T, schedule, generator=noise, steps=200, t_max=t_max).x0
    assert many.var(0).mean().item() == pytest.approx(s**2, rel=0.02)


@pytest.mark.parametrize("name,settings", [("ddpm", {"steps": 20}), ("ddim", {"steps": 10, "eta": 0.7})])
def test_sample_i_does_not_depend_on_batch_size(name, settings):
    cfg = MIXTURES[2]
    dataset = MogDataset(MogConfig(**{**cfg.__dict__, "train_size": 1}))
    schedule = CosineSchedule()
    model = MogOracle(dataset.mixture, schedule)
    fn = SAMPLERS[name][1]

    def run(start, stop):
        noise = SampleNoise.for_range(3, start, stop)
        return fn(model, noise.randn(2), schedule, generator=noise, **settings).x0

    whole = run(0, 12)
    parts = torch.cat([run(0, 5), run(5, 7), run(7, 12)])
    assert torch.equal(whole, parts)
    assert torch.equal(whole, run(0, 12)), "same seed must give identical samples"
    assert not torch.equal(whole[:6], whole[6:]), "different samples must differ"


def test_nfe_is_counted_and_callback_sees_every_evaluation():
    cfg = MIXTURES[2]
    seen = []
    dataset = MogDataset(MogConfig(**{**cfg.__dict__, "train_size": 1}))
    schedule = CosineSchedule()
    calls = {"n": 0}
    oracle = MogOracle(dataset.mixture, schedule)

    def counted(x, t, z=None):
        calls["n"] += 1
        return oracle(x, t, z)

    noise = SampleNoise.for_range(0, 0, 8)
    result = ddim(counted, noise.randn(2), schedule, generator=noise, steps=13, callback=seen.append)
    assert result.nfe == calls["n"] == 13
    assert [info["step"] for info in seen] == list(range(13))
    assert {"t", "x", "x0_hat", "nfe"} <= set(seen[0])
    assert seen[-1]["nfe"] == 13


def test_noise_streams_are_standard_normal_and_uniform():
    noise = SampleNoise.for_range(0, 0, 4000)
    z = noise.randn(3)
    assert abs(z.mean().item()) < 0.03 and abs(z.std().item() - 1) < 0.03
    u = noise.rand(2)
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01


def test_batch_seeds_equal_numpy_seed_sequence():
    # The vectorised hash against NumPy's own SeedSequence, over small, 32-bit-edge and
    # multi-word seeds and indices; indices >= 2**32 take the scalar path.
    indices = [0, 1, 2, 17, 4095, 65_536, 2**31, 2**32 - 1, 2**32, 2**40 + 3]
    for seed in (0, 1, 7, 2**32 - 1, 2**32 + 5, 2**70 + 3, 2**127 + 9, 2**130):
        assert sample_seeds(seed, indices) == [sample_seed(seed, i) for i in indices], seed


def test_named_streams_keep_the_seeds_old_runs_used():
    """Runs made before the streams had names seeded them with these spawn keys: resuming one
    must draw the same epoch orders, buffers and flips."""
    from rtkrun.seeding import Stream, stream_seed

    old = {Stream.EPOCH_ORDER: 1_000_000, Stream.TRAINING_NOISE: 2_000_000, Stream.DDDM_BUFFER: 3_000_000}
    old |= {Stream.IMAGE_FLIPS: 4_000_000, Stream.DROPOUT: 5_000_000, Stream.FIXED_POINT_PROFILE: 6_000_000}
    old |= {Stream.ONE_STEP_PAIRS: 7_000_000}
    assert set(old) <= set(Stream)  # later streams (PREVIEW) take keys of their own
    for stream, key in old.items():
        assert stream_seed(11, stream, 3) == sample_seed(11, key + 3)
    assert len({stream_seed(11, s) for s in Stream}) == len(Stream)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_stream_is_one_long_draw_whatever_the_request_shapes(dtype):
    # Sample i's k-th scalar is the k-th number of its own generator: requests of any shape,
    # read through growing chunks (multiples of 16), give exactly one long torch.randn of that
    # generator (whose length is a multiple of 16: torch fills a ragged tail another way).
    noise = SampleNoise(11, [3, 400, 9], dtype=dtype)
    shapes = [(2,), (29, 9), (1,), (3, 32, 32), (7,), (1000,), (5,), (1,)]
    drawn = torch.cat([noise.randn(*shape).flatten(1) for shape in shapes], 1)
    for row, index in zip(drawn, [3, 400, 9]):
        g = torch.Generator().manual_seed(sample_seed(11, index))
        long_draw = torch.randn(16 * math.ceil(drawn.shape[1] / 16), generator=g, dtype=dtype)
        assert torch.equal(row, long_draw[: drawn.shape[1]])


# Random123's known-answer vectors (tests/kat_vectors, "philox4x32 10"): counter, key, output
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


def test_philox_matches_random123_known_answers():
    from rtkrun.seeding import philox4x32

    for counter, key, expected in PHILOX_KAT:
        out = philox4x32(tuple(torch.tensor([c], dtype=torch.int64) for c in counter), key)
        assert tuple(int(w) for w in out) == expected


def test_philox_streams_depend_only_on_seed_index_and_position():
    """noise=philox: sample i's k-th normal is f(seed, i, k): any batch split and any request
    shapes give one long stream per sample; other seeds and indices give other streams."""
    from rtkrun.seeding import PhiloxNoise

    whole = PhiloxNoise.for_range(5, 0, 40).randn(3, 7)
    part = PhiloxNoise.for_range(5, 17, 23).randn(3, 7)
    assert torch.equal(part, whole[17:23])
    noise = PhiloxNoise(5, [3, 400, 2**33 + 9])
    shapes = [(2,), (29, 9), (1,), (3,), (7,)]
    drawn = torch.cat([noise.randn(*shape).flatten(1) for shape in shapes], 1)
    assert torch.equal(drawn, PhiloxNoise(5, [3, 400, 2**33 + 9]).randn(drawn.shape[1]))
    assert not torch.equal(drawn[0], drawn[1]) and not torch.equal(PhiloxNoise(6, [3]).randn(9), drawn[:1, :9])
    assert (
        noise.randn(4).dtype == torch.float32
        and PhiloxNoise(5, [1], dtype=torch.float64).randn(2).dtype == torch.float64
    )


def test_philox_normals_and_uniforms_have_their_laws():
    from scipy import stats

    from rtkrun.seeding import PhiloxNoise

    z = PhiloxNoise.for_range(0, 0, 500, dtype=torch.float64).randn(400).flatten().numpy()  # 200,000
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs((z > 3).mean() - stats.norm.sf(3)) < 5e-4  # the tails are there
    u = PhiloxNoise.for_range(1, 0, 200).rand(500).flatten().numpy()
    assert 0 < u.min() and u.max() < 1 and stats.kstest(u, "uniform").pvalue > 1e-3
    pairs = PhiloxNoise.for_range(2, 0, 2000, dtype=torch.float64).randn(2)  # lanes of one block
    assert abs(float(torch.corrcoef(pairs.T)[0, 1])) < 0.05


def test_sampling_with_philox_noise_does_not_depend_on_the_batch_size():
    from rtkrun.sampling import draw_samples
    from rtkrun.schemas.samplers import DDPMConfig

    dataset = MogDataset(MogConfig(train_size=10))
    schedule = CosineSchedule()
    model = MogOracle(dataset.mixture, schedule)
    cfg, cpu = DDPMConfig(steps=10), torch.device("cpu")
    one, info = draw_samples(model, cfg, schedule, dataset, 12, 12, 3, cpu, noise="philox")
    split, _ = draw_samples(model, cfg, schedule, dataset, 12, 5, 3, cpu, noise="philox")
    streams, _ = draw_samples(model, cfg, schedule, dataset, 12, 12, 3, cpu, noise="cpu_streams")
    assert torch.allclose(one, split, atol=1e-6) and info["nfe"] == 10
    assert not torch.allclose(one, streams)  # a different stream, the same law


def test_ddpm_step_is_the_gaussian_posterior():
    # One DDPM step from t to s with a fixed x0_hat, checked against Ho et al. eq. 7 in float64.
    schedule = CosineSchedule()
    x0_hat = torch.tensor([[0.7, -1.3]], dtype=torch.float64)
    constant = lambda x, t, z=None: x0_hat.expand_as(x)  # noqa: E731
    n = 200_000
    noise = SampleNoise.for_range(5, 0, n, dtype=torch.float64)
    x_t = torch.tensor([[0.2, 0.4]], dtype=torch.float64).expand(n, 2)
    seen = []
    ddpm(constant, x_t, schedule, generator=noise, steps=2, t_max=0.6, t_min=0.3, callback=seen.append)
    x_s = seen[0]["x_next"]  # the state after the first step, at s = 0.3
    a_t, s_t = (v.item() for v in schedule.alpha_sigma(torch.tensor(0.6, dtype=torch.float64)))
    a_s, s_s = (v.item() for v in schedule.alpha_sigma(torch.tensor(0.3, dtype=torch.float64)))
    a = a_t / a_s
    b = s_t**2 - a**2 * s_s**2
    mean = (a_s * b / s_t**2) * x0_hat + (a * s_s**2 / s_t**2) * x_t[:1]
    torch.testing.assert_close(x_s.mean(0, keepdim=True), mean, atol=4e-3, rtol=0)
    assert x_s.var(0).mean().item() == pytest.approx(b * s_s**2 / s_t**2, rel=0.01)


HOST_SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy", "nonzero")


def _count_host_syncs(monkeypatch) -> dict[str, int]:
    """Counts calls that make the host wait for the device (on a GPU): reading a value back."""
    counts = {name: 0 for name in HOST_SYNCS}
    for name in HOST_SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


@pytest.mark.parametrize(
    "config",
    [
        {"name": "ddpm"},
        {"name": "ddim"},
        {"name": "pf_ode"},
        {"name": "dddm", "levels": 2},
        {"name": "rtk_mala"},
        {"name": "rtk_mala", "energy": "gauss_legendre"},
        {"name": "rtk_mala", "target": "dddm", "segments": 2},
        {"name": "rtk_uld"},
    ],
)
def test_sampler_loops_never_read_values_back_per_step(config, monkeypatch):
    # No .item()/bool()/.tolist() inside the loop: statistics stay on the device until the end,
    # so a GPU never waits for the host between steps. The count must not grow with the NFE.
    from rtkrun.config import typed_group
    from rtkrun.samplers import settings_for

    dataset = MogDataset(MogConfig())
    schedule = CosineSchedule()
    oracle = MogOracle(dataset.mixture, schedule)
    used = []
    for nfe in (12, 48):
        settings = settings_for(typed_group("sampler", {**config, "nfe": nfe}))
        noise = SampleNoise.for_range(0, 0, 8)
        x_T = noise.randn(2)
        with monkeypatch.context() as patch:
            counts = _count_host_syncs(patch)
            SAMPLERS[config["name"]][1](oracle, x_T, schedule, generator=noise, **settings)
        used.append(sum(counts.values()))
    assert used[0] == used[1] <= 3, used


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["mog", "qm9"])
def test_compiled_network_samples_equal_eager(dataset):
    # `rtkrun sample compile=default`: torch.compile of the MLP, or of the EGNN's per-call core
    # (the mask bound outside the graph); samples equal eager ones to float32 round-off.
    from rtkrun.bench.presets import PRESETS, Parts
    from rtkrun.config import typed_group
    from rtkrun.sampling import draw_samples

    parts = Parts(next(c for c in PRESETS["tiny"] if c.dataset == dataset), torch.device("cpu"))
    sampler = typed_group("sampler", {"name": "dddm", "nfe": 3})
    args = (parts.schedule, parts.dataset, 64, 32, 0, torch.device("cpu"))
    eager, _ = draw_samples(parts.model, sampler, *args)
    compiled, info = draw_samples(parts.model, sampler, *args, compile_mode="default")
    assert info["nfe"] == 3
    torch.testing.assert_close(compiled, eager, atol=2e-5, rtol=0)
    parts.close()

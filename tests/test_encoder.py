"""Tests of the TESSERA-style encoder: sampling, loss, training, inference, quantisation."""

from __future__ import annotations

import time

import numpy as np
import pytest
import rioxarray  # noqa: F401
import torch
import xarray as xr

from fungi_ssl.embeddings.encoder import (
    EncoderConfig,
    TesseraEncoder,
    barlow_twins_loss,
    dequantise,
    pretrain,
)
from fungi_ssl.embeddings.inference import embed_pixels, load_encoder, quantise, save_encoder
from fungi_ssl.embeddings.pixels import (
    S1_BANDS,
    S2_BANDS,
    BandNormaliser,
    PixelTimeSeries,
    sample_timesteps,
)

TINY = EncoderConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, n_timesteps=8,
                     projector_dims=(64, 64))


def make_cube(ny: int = 6, nx: int = 7, t2: int = 20, t1: int = 15, seed: int = 0) -> xr.Dataset:
    """Tiny cube in the exact CONTRIBUTING.md format, with 3 seasonal classes."""
    rng = np.random.default_rng(seed)
    doy2 = np.sort(rng.choice(np.arange(1, 366), t2, replace=False))
    doy1 = np.sort(rng.choice(np.arange(1, 366), t1, replace=False))
    cls = rng.integers(0, 3, (ny, nx))
    base = rng.uniform(500, 3000, (3, 10))
    amp = rng.uniform(0, 800, (3, 10))
    season = np.sin(2 * np.pi * doy2 / 365)[:, None, None, None]
    s2 = base[cls].transpose(2, 0, 1)[None] + amp[cls].transpose(2, 0, 1)[None] * season
    s2 = (s2 + rng.normal(0, 30, s2.shape)).astype(np.float32)
    s1 = (rng.normal(-12, 1, (3, 2))[cls].transpose(2, 0, 1)[None]
          + rng.normal(0, 1, (t1, 2, ny, nx))).astype(np.float32)
    ds = xr.Dataset(
        {
            "s2": (("time_s2", "band_s2", "y", "x"), s2),
            "s2_valid": (("time_s2", "y", "x"), rng.random((t2, ny, nx)) > 0.4),
            "s1": (("time_s1", "band_s1", "y", "x"), s1),
            "s1_valid": (("time_s1", "y", "x"), rng.random((t1, ny, nx)) > 0.05),
        },
        coords={
            "band_s2": list(S2_BANDS), "band_s1": list(S1_BANDS),
            "doy_s2": ("time_s2", doy2), "doy_s1": ("time_s1", doy1),
            "orbit": ("time_s1", np.where(np.arange(t1) % 2, "ascending", "descending")),
            "y": 6_300_000.0 - 10 * np.arange(ny) - 5, "x": 500_000.0 + 10 * np.arange(nx) + 5,
        },
    )
    return ds.rio.write_crs(32630)


def random_pixels(n: int = 256, seed: int = 0, p_valid: float = 0.6) -> PixelTimeSeries:
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 4, n)
    doy2, doy1 = np.arange(30) * 12 + 3, np.arange(20) * 18 + 2
    base = rng.uniform(500, 3000, (4, 10))
    amp = rng.uniform(0, 800, (4, 10))
    s2 = base[cls][:, None] + amp[cls][:, None] * np.sin(2 * np.pi * doy2 / 365)[None, :, None]
    s2 = s2 + rng.normal(0, 30, s2.shape)
    s1 = rng.normal(-12, 2, (4, 2))[cls][:, None] + rng.normal(0, 1, (n, 20, 2))
    return PixelTimeSeries(s2, rng.random((n, 30)) < p_valid, np.tile(doy2, (n, 1)),
                           s1, rng.random((n, 20)) < 0.95, np.tile(doy1, (n, 1)))


# ---------------------------------------------------------------- cube input


def test_from_cube_flattens_row_major():
    cube = make_cube()
    p = PixelTimeSeries.from_cube(cube)
    assert len(p) == 6 * 7 and p.s2.shape == (42, 20, 10) and p.s1.shape == (42, 15, 2)
    # pixel 9 is (y=1, x=2)
    np.testing.assert_array_equal(p.s2[9], cube["s2"].values[:, :, 1, 2])
    np.testing.assert_array_equal(p.s1_valid[9], cube["s1_valid"].values[:, 1, 2])
    np.testing.assert_array_equal(p.s2_doy[9], cube["doy_s2"].values)
    assert len(p[3:10]) == 7


def test_missing_band_raises():
    cube = make_cube().isel(band_s2=[0, 1, 2, 3, 4, 5, 6, 7, 8])
    with pytest.raises(ValueError, match="missing band.*B12"):
        PixelTimeSeries.from_cube(cube)


def test_band_order_raises():
    cube = make_cube()
    swapped = cube.isel(band_s2=[1, 0, 2, 3, 4, 5, 6, 7, 8, 9])
    with pytest.raises(ValueError, match="TESSERA order"):
        PixelTimeSeries.from_cube(swapped)
    with pytest.raises(ValueError, match="TESSERA order"):
        PixelTimeSeries.from_cube(cube.isel(band_s1=[1, 0]))


def test_wrong_dims_raise():
    cube = make_cube()
    bad = cube.assign(s2=cube["s2"].transpose("band_s2", "time_s2", "y", "x"))
    with pytest.raises(ValueError, match="'s2' has dims"):
        PixelTimeSeries.from_cube(bad)
    with pytest.raises(ValueError, match="missing variable"):
        PixelTimeSeries.from_cube(cube.drop_vars("s1_valid"))


def test_normaliser_uses_valid_observations_only():
    p = random_pixels(200)
    s2 = p.s2.copy()
    s2[~p.s2_valid] = 1e6  # cloud-bright junk must not enter the statistics
    q = PixelTimeSeries(s2, p.s2_valid, p.s2_doy, p.s1, p.s1_valid, p.s1_doy)
    norm = BandNormaliser.fit(q)
    np.testing.assert_allclose(norm.s2_mean, p.s2[p.s2_valid].mean(0), rtol=1e-4)
    assert BandNormaliser.from_dict(norm.to_dict()) == norm


# ---------------------------------------------------------------- sampling


def test_sampling_respects_validity_sorted_and_replacement():
    rng = np.random.default_rng(1)
    n, t_all, T = 500, 30, 10
    valid = rng.random((n, t_all)) < rng.uniform(0.05, 0.9, (n, 1))
    valid[0] = False
    valid[1] = False
    valid[1, 7] = True  # exactly one valid date
    values = torch.arange(t_all, dtype=torch.float32).repeat(n, 1)[:, :, None]  # value = time index
    doy = torch.arange(t_all, dtype=torch.float32).repeat(n, 1) * 10
    g = torch.Generator().manual_seed(0)
    s, d, empty = sample_timesteps(values, torch.from_numpy(valid), doy, T, g)
    idx = s[:, :, 0].long().numpy()
    assert bool(empty[0])
    np.testing.assert_array_equal(empty.numpy(), ~valid.any(axis=1))
    np.testing.assert_array_equal(d.numpy(), idx * 10)
    for i in np.flatnonzero(valid.any(axis=1)):
        assert valid[i, idx[i]].all(), "drew an invalid observation"
        assert (np.diff(idx[i]) >= 0).all(), "not sorted in time"
        k = valid[i].sum()
        if k >= T:
            assert len(set(idx[i])) == T, "duplicates although enough valid dates"
        else:
            assert set(idx[i]) <= set(np.flatnonzero(valid[i]))
    assert (idx[1] == 7).all()
    # with replacement: a pixel with 3 valid dates uses all of them over many draws
    v3 = torch.zeros(1, t_all, dtype=torch.bool)
    v3[0, [2, 9, 20]] = True
    seen = set()
    for _ in range(20):
        s3, _, _ = sample_timesteps(values[:1], v3, doy[:1], T, g)
        seen |= set(s3[0, :, 0].long().tolist())
    assert seen == {2, 9, 20}


def test_sampling_is_uniform_over_valid_dates():
    # every valid date of a pixel should be drawn about equally often
    t_all, T = 12, 4
    valid = torch.ones(4000, t_all, dtype=torch.bool)
    values = torch.arange(t_all, dtype=torch.float32).repeat(4000, 1)[:, :, None]
    s, _, _ = sample_timesteps(values, valid, values[:, :, 0], T, torch.Generator().manual_seed(3))
    counts = np.bincount(s[:, :, 0].long().ravel().numpy(), minlength=t_all)
    expected = 4000 * T / t_all
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))


def test_all_cloudy_pixel_is_nan_and_counted():
    p = random_pixels(20)
    s2_valid, s1_valid = p.s2_valid.copy(), p.s1_valid.copy()
    s2_valid[[3, 5]] = False
    s1_valid[[3, 5]] = False
    s2_valid[8] = False  # S2 all cloudy, S1 present: embedded from S1 alone
    q = PixelTimeSeries(p.s2, s2_valid, p.s2_doy, p.s1, s1_valid, p.s1_doy)
    model = TesseraEncoder(TINY)
    emb, flags = embed_pixels(model, q, return_flags=True)
    assert flags.n_nan == 2
    assert np.isnan(emb).all(axis=1).tolist() == [i in (3, 5) for i in range(20)]
    assert np.isfinite(emb[8]).all() and flags.s2_missing[8]
    with pytest.warns(UserWarning, match="2 of 20 pixels"):
        embed_pixels(model, q)


# ---------------------------------------------------------------- loss


def test_barlow_loss_matches_direct_formula():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 5, generator=g), torch.randn(16, 5, generator=g) + 0.5
    lambd = 0.01
    total, on, off = barlow_twins_loss(z1, z2, lambd)
    a = z1.double().numpy()
    b = z2.double().numpy()
    a = (a - a.mean(0)) / np.sqrt(a.var(0) + 1e-5)
    b = (b - b.mean(0)) / np.sqrt(b.var(0) + 1e-5)
    c = np.zeros((5, 5))
    for i in range(5):
        for j in range(5):
            c[i, j] = sum(a[n, i] * b[n, j] for n in range(16)) / 16
    on_ref = sum((1 - c[i, i]) ** 2 for i in range(5))
    off_ref = sum(c[i, j] ** 2 for i in range(5) for j in range(5) if i != j)
    assert float(on) == pytest.approx(on_ref, rel=1e-5)
    assert float(off) == pytest.approx(off_ref, rel=1e-5)
    assert float(total) == pytest.approx(on_ref + lambd * off_ref, rel=1e-5)
    with pytest.raises(ValueError, match="equal"):
        barlow_twins_loss(z1, z2[:, :3])


def test_pretraining_reduces_redundancy_and_loss():
    p = random_pixels(512, seed=2)
    cfg = EncoderConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, n_timesteps=8,
                        projector_dims=(32, 32))
    _, hist = pretrain(p, cfg, steps=40, batch_size=128, seed=0, warmup=4, lr=3e-3,
                       progress=False)
    # the on-diagonal term is won first (views align, which raises the
    # cross-correlations); then the redundancy (off-diagonal) term falls
    peak = hist["off_diag"].iloc[:15].max()
    assert hist["off_diag"].iloc[-8:].mean() < 0.92 * peak
    assert hist["loss"].iloc[-8:].mean() < 0.5 * hist["loss"].iloc[:3].mean()
    assert hist["lr"].max() == pytest.approx(3e-3, rel=1e-6)
    assert hist["lr"].iloc[-1] < 0.05 * 3e-3  # cosine decay to ~0


# ---------------------------------------------------------------- determinism & persistence


def test_same_seed_same_weights_and_embeddings(tmp_path):
    p = random_pixels(128)
    kw = {"steps": 6, "batch_size": 32, "warmup": 2, "progress": False}
    a, ha = pretrain(p, TINY, seed=5, **kw)
    b, hb = pretrain(p, TINY, seed=5, **kw)
    c, _ = pretrain(p, TINY, seed=6, **kw)
    for (name, wa), wb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(wa, wb), name
    assert not torch.equal(a.model.to_embedding.weight, c.model.to_embedding.weight)
    np.testing.assert_array_equal(ha["loss"], hb["loss"])
    ea, eb = embed_pixels(a, p, seed=1), embed_pixels(b, p, seed=1)
    np.testing.assert_array_equal(ea, eb)
    assert not np.allclose(ea, embed_pixels(a, p, seed=2))  # another draw of dates
    # round trip through disk
    loaded = load_encoder(save_encoder(a, tmp_path / "enc.pt"))
    np.testing.assert_array_equal(embed_pixels(loaded, p, seed=1), ea)
    assert loaded.normaliser == a.normaliser


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    p = random_pixels(128)
    kw = {"batch_size": 32, "warmup": 2, "seed": 3, "progress": False, "checkpoint_every": 4}
    full, hist_full = pretrain(p, TINY, steps=10, view_threads=1, **kw)
    # "interrupted" run (views in two threads, the default, drawing a step ahead): same schedule, killed after step 4 (its last checkpoint)
    _partial(p, tmp_path, kw)
    resumed, hist_res = pretrain(p, TINY, steps=10, checkpoint_dir=tmp_path, **kw)
    for wa, wb in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(wa, wb)
    np.testing.assert_allclose(hist_res["loss"], hist_full["loss"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="different parameters"):
        pretrain(p, TINY, steps=10, checkpoint_dir=tmp_path, **{**kw, "seed": 4})


@pytest.mark.parametrize("config", [TINY, EncoderConfig()], ids=["tiny", "book"])
def test_views_in_two_threads_train_the_same_encoder(config, monkeypatch):
    """The two views side by side (VIEW_THREADS) give one thread's weights, bit for bit."""
    import fungi_ssl.embeddings.encoder as enc

    pools = []
    real_pool = enc.ThreadPoolExecutor
    monkeypatch.setattr(enc, "ThreadPoolExecutor", lambda *a, **k: pools.append(1) or real_pool(*a, **k))
    p = random_pixels(256)
    kw = {"steps": 12, "batch_size": 64, "warmup": 3, "seed": 7, "progress": False}
    one, h1 = pretrain(p, config, view_threads=1, **kw)
    assert not pools
    two, h2 = pretrain(p, config, view_threads=2, **kw)
    assert pools == [1]  # the views did run in two threads
    for (name, wa), wb in zip(one.model.state_dict().items(), two.model.state_dict().values()):
        assert torch.equal(wa, wb), name
    np.testing.assert_array_equal(h1["loss"], h2["loss"])
    assert h1["loss"].iloc[-1] != h1["loss"].iloc[0]  # it trained
    with pytest.raises(ValueError, match="view_threads"):
        pretrain(p, config, view_threads=3, **kw)


def _partial(p, ckpt_dir, kw):
    """Run the first 4 of 10 steps and leave the checkpoint, as a killed job would."""
    import fungi_ssl.embeddings.encoder as enc

    class Stop(Exception):
        pass

    real = enc.barlow_twins_loss
    calls = {"n": 0}

    def loss_then_stop(*a, **k):
        calls["n"] += 1
        if calls["n"] > 4:
            raise Stop
        return real(*a, **k)

    enc.barlow_twins_loss = loss_then_stop
    try:
        with pytest.raises(Stop):
            pretrain(p, TINY, steps=10, checkpoint_dir=ckpt_dir, **kw)
    finally:
        enc.barlow_twins_loss = real
    assert (ckpt_dir / "checkpoint.pt").exists()


def test_embedding_independent_of_batching():
    p = random_pixels(300)
    model = TesseraEncoder(TINY)
    whole = embed_pixels(model, p, batch_size=4096, seed=0)
    parts = np.concatenate([
        embed_pixels(model, p[:100], batch_size=37, seed=0, pixel_ids=np.arange(100)),
        embed_pixels(model, p[100:], batch_size=64, seed=0, pixel_ids=np.arange(100, 300)),
    ])
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-5)


def test_averaging_draws_shrinks_the_draw_noise():
    """``n_draws`` averages independent timestep draws: one draw is the default,
    and the spread between two seeds falls about as 1/sqrt(n)."""
    p = random_pixels(400, p_valid=0.7)
    model = TesseraEncoder(TINY)
    one = embed_pixels(model, p, seed=0)
    np.testing.assert_array_equal(embed_pixels(model, p, seed=0, n_draws=1), one)

    def spread(n: int) -> float:
        a = embed_pixels(model, p, seed=0, n_draws=n)
        b = embed_pixels(model, p, seed=1, n_draws=n)
        return float(np.median(np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)))

    s1, s4 = spread(1), spread(4)
    assert s1 > 0.01  # the draw does move the embedding
    assert 0.35 < s4 / s1 < 0.7  # 1/sqrt(4) = 0.5
    # batch-independent, and a no-data pixel stays NaN
    four = embed_pixels(model, p, seed=0, n_draws=4)
    parts = np.concatenate([embed_pixels(model, p[:150], seed=0, n_draws=4, batch_size=41),
                            embed_pixels(model, p[150:], seed=0, n_draws=4, batch_size=64,
                                         pixel_ids=np.arange(150, 400))])
    np.testing.assert_allclose(parts, four, rtol=1e-5, atol=1e-5)
    empty = PixelTimeSeries(p.s2[:2], np.zeros((2, 30), bool), p.s2_doy[:2], p.s1[:2],
                            np.zeros((2, 20), bool), p.s1_doy[:2])
    emb, flags = embed_pixels(model, empty, n_draws=3, return_flags=True)
    assert np.isnan(emb).all() and flags.n_nan == 2
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="n_draws"):
            embed_pixels(model, p[:4], n_draws=bad)


def test_bf16_probe_stays_close_to_fp32():
    """The check behind ``embed_pixels(bf16=...)``: bf16 autocast must keep
    embeddings within cosine 0.99 and relative L2 0.03 of fp32 to be usable.

    On this CPU (avx512_bf16) it passes for the default model; bf16 is kept
    optional (default off) so that embeddings are exactly reproducible.
    """
    p = random_pixels(400)
    model = TesseraEncoder(EncoderConfig())
    e32 = embed_pixels(model, p)
    e16 = embed_pixels(model, p, bf16=True)
    cos = (e32 * e16).sum(1) / np.linalg.norm(e32, axis=1) / np.linalg.norm(e16, axis=1)
    assert cos.min() > 0.99
    assert np.linalg.norm(e16 - e32) / np.linalg.norm(e32) < 0.03


# ---------------------------------------------------------------- quantisation


def test_quantisation_error_on_realistic_embeddings():
    p = random_pixels(600, seed=4)
    trained, _ = pretrain(p, TINY, steps=20, batch_size=128, warmup=2, progress=False)
    emb = embed_pixels(trained, p)
    q, s = quantise(emb)
    assert q.dtype == np.int8 and s.dtype == np.float32 and q.shape == emb.shape
    assert np.abs(q).max() == 127
    rel = np.linalg.norm(dequantise(q, s) - emb, axis=1) / np.linalg.norm(emb, axis=1)
    assert rel.max() <= 0.01
    np.testing.assert_allclose(s, np.abs(emb).max(1) / 127, rtol=1e-6)
    # NaN rows stay missing
    emb[0] = np.nan
    q, s = quantise(emb)
    assert np.isnan(s[0]) and (q[0] == 0).all() and np.isnan(dequantise(q, s)[0]).all()
    assert np.isfinite(dequantise(q, s)[1:]).all()


def test_config_validation_and_sizes():
    with pytest.raises(ValueError, match="divisible"):
        EncoderConfig(d_model=10, n_heads=3)
    v1 = EncoderConfig.tessera_v1()
    assert (v1.d_model, v1.n_layers, v1.n_heads, v1.d_ff, v1.n_timesteps) == (512, 4, 4, 4096, 40)
    n_default = sum(x.numel() for x in TesseraEncoder(EncoderConfig()).parameters())
    assert n_default < 100_000  # sized for ≥ 10k pixels/s on 2 cores


def test_torch_threads_follow_the_free_cores(monkeypatch):
    """Issue 16: a busy core must not hold up the encoder's other thread."""
    import os

    import pytest

    from fungi_ssl.embeddings import encoder as enc

    monkeypatch.delenv(enc.TORCH_THREADS_ENV, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(enc, "FREE_CORES_TTL_S", -1.0)  # measure on every call
    monkeypatch.setattr(enc, "busy_cores", lambda: 1.2)  # one core taken
    assert enc.free_cores() == 1
    monkeypatch.setattr(enc, "busy_cores", lambda: 0.1)  # idle
    assert enc.free_cores() == 2
    monkeypatch.setattr(enc, "busy_cores", lambda: 9.0)  # overloaded: still one
    assert enc.free_cores() == 1
    monkeypatch.setenv(enc.TORCH_THREADS_ENV, "3")
    assert enc.free_cores() == 3
    with enc.torch_threads() as n:
        assert n == 3
    monkeypatch.setenv(enc.TORCH_THREADS_ENV, "many")
    with pytest.raises(ValueError, match="FUNGI_SSL_TORCH_THREADS='many'"):
        enc.free_cores()


def test_free_cores_reuses_a_recent_measurement(monkeypatch):
    """Measuring sleeps 0.25 s: many small embeddings must not pay it each time."""
    import os

    from fungi_ssl.embeddings import encoder as enc

    monkeypatch.delenv(enc.TORCH_THREADS_ENV, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(enc, "_free_cores_seen", {})
    calls = []
    monkeypatch.setattr(enc, "busy_cores", lambda: calls.append(1) or 0.1)
    assert [enc.free_cores() for _ in range(50)] == [2] * 50
    assert len(calls) == 1
    monkeypatch.setattr(enc, "FREE_CORES_TTL_S", -1.0)  # stale: measured again
    enc.free_cores()
    assert len(calls) == 2


def test_busy_cores_sees_other_work_now_not_the_load_average(monkeypatch):
    """A process spinning now counts; without /proc/stat the load average is used."""
    import os
    import subprocess
    import sys

    import pytest

    from fungi_ssl.embeddings import encoder as enc

    if enc._cpu_times() is None:
        pytest.skip("no /proc/stat here")
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<5: pass"])
    try:
        time.sleep(0.5)
        assert enc.busy_cores(1.0) >= 0.6
    finally:
        spin.kill()
        spin.wait()
    monkeypatch.setattr(enc, "_cpu_times", lambda: None)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    assert enc.busy_cores() == 1.5


def test_pretrain_gives_the_same_encoder_whatever_the_free_cores(monkeypatch):
    """Same seed, same encoder: training's threads do not follow the machine's load."""
    from fungi_ssl.embeddings import encoder as enc
    from fungi_ssl.embeddings.pixels import PixelTimeSeries

    monkeypatch.delenv(enc.TORCH_THREADS_ENV, raising=False)
    rng = np.random.default_rng(0)
    n = 1024
    p = PixelTimeSeries(rng.normal(size=(n, 40, 10)), rng.random((n, 40)) > .3,
                        np.tile(np.arange(40) * 9 + 5, (n, 1)), rng.normal(size=(n, 30, 2)),
                        np.ones((n, 30)), np.tile(np.arange(30) * 12 + 3, (n, 1)))
    states = []
    for cores in (1, 2):
        monkeypatch.setattr(enc, "free_cores", lambda cap=2, c=cores: c)
        trained, _ = enc.pretrain(p, enc.EncoderConfig(), steps=2, batch_size=256, warmup=1,
                                  progress=False)
        states.append(trained.model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])

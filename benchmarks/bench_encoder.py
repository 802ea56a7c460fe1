"""Encoder speed and memory: inference throughput, tile-year embedding, peak memory.

Measures, on synthetic inputs with the real shapes (73 S2 dates × 10 bands,
60 S1 dates × 2 bands per pixel-year):

1. inference throughput (pixels/s) of :func:`fungi_ssl.embeddings.inference.embed_pixels`
   at the default size (fp32 and bf16) and at TESSERA v1 size (fewer pixels);
2. wall time to embed one 256 × 256 tile-year cube (dask-backed, lazily
   generated) through :func:`fungi_ssl.embeddings.embed.embed_cube`;
3. peak resident memory of ``embed_cube`` in a fresh subprocess per setting,
   at two chunk sizes and two areas, to show memory follows the chunk, not
   the area.

Throughput is the best of ``--repeats`` runs (wall clock) and also reported as
CPU time; the machine is shared, so wall figures are noisy.

Usage::

    python benchmarks/bench_encoder.py            # full
    python benchmarks/bench_encoder.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

T2, T1 = 73, 60


def synthetic_pixels(n: int, seed: int = 0):
    from fungi_ssl.embeddings.pixels import PixelTimeSeries

    rng = np.random.default_rng(seed)
    doy2, doy1 = np.arange(T2) * 5 + 1, np.arange(T1) * 6 + 1
    return PixelTimeSeries(
        rng.normal(1500, 500, (n, T2, 10)).astype(np.float32), rng.random((n, T2)) > 0.5,
        np.tile(doy2, (n, 1)), rng.normal(-12, 3, (n, T1, 2)).astype(np.float32),
        rng.random((n, T1)) > 0.05, np.tile(doy1, (n, 1)),
    )


def synthetic_cube(side: int, seed: int = 0, block: int = 64):
    """Lazy dask cube in the CONTRIBUTING.md format: nothing is generated until a window is read."""
    import dask.array as da
    import rioxarray  # noqa: F401
    import xarray as xr

    from fungi_ssl.embeddings.pixels import S1_BANDS, S2_BANDS

    rs = da.random.RandomState(seed)
    c2, c1 = (T2, 10, block, block), (T1, 2, block, block)
    ds = xr.Dataset(
        {
            "s2": (("time_s2", "band_s2", "y", "x"),
                   (rs.normal(1500, 500, (T2, 10, side, side), chunks=c2)).astype(np.float32)),
            "s2_valid": (("time_s2", "y", "x"), rs.random_sample((T2, side, side), chunks=(T2, block, block)) > 0.5),
            "s1": (("time_s1", "band_s1", "y", "x"),
                   (rs.normal(-12, 3, (T1, 2, side, side), chunks=c1)).astype(np.float32)),
            "s1_valid": (("time_s1", "y", "x"), rs.random_sample((T1, side, side), chunks=(T1, block, block)) > 0.05),
        },
        coords={
            "band_s2": list(S2_BANDS), "band_s1": list(S1_BANDS),
            "doy_s2": ("time_s2", np.arange(T2) * 5 + 1), "doy_s1": ("time_s1", np.arange(T1) * 6 + 1),
            "y": 6_300_000.0 - 10 * np.arange(side) - 5, "x": 500_000.0 + 10 * np.arange(side) + 5,
        },
    )
    return ds.rio.write_crs(32630)


def default_model(config=None):
    import torch

    from fungi_ssl.embeddings.encoder import EncoderConfig, TesseraEncoder, TrainedEncoder

    torch.manual_seed(0)
    cfg = config or EncoderConfig()
    enc = TesseraEncoder(cfg).eval()
    return TrainedEncoder(enc, cfg, enc.normaliser)


def throughput(config, n: int, repeats: int, bf16: bool, batch_size: int) -> dict:
    from fungi_ssl.embeddings.inference import embed_pixels

    model = default_model(config)
    px = synthetic_pixels(n)
    embed_pixels(model, px[: min(n, 512)], bf16=bf16, batch_size=batch_size)  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        embed_pixels(model, px, bf16=bf16, batch_size=batch_size)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    n_params = sum(p.numel() for p in model.model.parameters())
    return {"n_pixels": n, "params": n_params, "bf16": bf16, "batch_size": batch_size,
            "T": config.n_timesteps if config else model.config.n_timesteps,
            "pixels_per_s_best": n / min(walls), "pixels_per_s_median": n / float(np.median(walls)),
            "cpu_s_per_1e4_pixels": 1e4 * min(cpus) / n}


def tile_time(side: int, chunk: int) -> dict:
    from fungi_ssl.embeddings.embed import embed_cube

    cube = synthetic_cube(side)
    model = default_model()
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        run = embed_cube(cube, model, Path(d) / "e.zarr", chunk=chunk, progress=False)
        wall = time.perf_counter() - t
    return {"side": side, "chunk": chunk, "seconds": wall, "pixels_per_s": side * side / wall,
            "n_nan": run.n_nan}


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _memory_child(side: int, chunk: int) -> None:
    """Run in a fresh subprocess: RSS before and peak RSS during ``embed_cube``.

    ``ru_maxrss`` is not used: after fork/exec on Linux it can carry the
    parent's peak. A thread samples the current RSS every 5 ms instead, and
    ``tracemalloc`` gives the peak of Python/NumPy allocations (window
    arrays, Zarr buffers; torch's own allocator is not traced).
    """
    import threading
    import tracemalloc
    import warnings

    from fungi_ssl.embeddings.embed import embed_cube

    warnings.simplefilter("ignore")
    cube = synthetic_cube(side)
    model = default_model()
    base = _current_rss_mb()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _current_rss_mb())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    tracemalloc.start()
    with tempfile.TemporaryDirectory() as d:
        embed_cube(cube, model, Path(d) / "e.zarr", chunk=chunk, progress=False)
    traced = tracemalloc.get_traced_memory()[1] / 2**20
    stop.set()
    thread.join()
    print(json.dumps({"baseline_mb": base, "peak_mb": max(peak[0], _current_rss_mb()),
                      "tracemalloc_peak_mb": traced}))


def peak_memory(side: int, chunk: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(side), str(chunk)],
        capture_output=True, text=True, check=True,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return {"side": side, "chunk": chunk, **res, "increase_mb": res["peak_mb"] - res["baseline_mb"],
            "cube_mb_if_loaded": side * side * (T2 * 11 + T1 * 3) * 4 / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--n-default", type=int, default=32_768, help="pixels for the default model")
    ap.add_argument("--n-v1", type=int, default=192, help="pixels for the TESSERA v1 size")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tile", type=int, default=256, help="side of the tile-year cube")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "encoder.json")
    ap.add_argument("--memory-child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        _memory_child(*args.memory_child)
        return
    if args.quick:
        args.n_default, args.n_v1, args.repeats, args.tile = 4096, 32, 1, 64

    import torch

    from fungi_ssl.embeddings.encoder import EncoderConfig

    results: dict = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpu_threads": torch.get_num_threads(), "processor": platform.processor()},
        "note": "shared 2-core CPU: wall-clock figures are noisy; best-of-repeats reported",
        "throughput": [], "tile": None, "memory": [],
    }
    rows = []
    for name, cfg, n, bf16 in [
        ("default fp32", EncoderConfig(), args.n_default, False),
        ("default bf16", EncoderConfig(), args.n_default, True),
        ("tessera_v1 fp32", EncoderConfig.tessera_v1(), args.n_v1, False),
        ("tessera_v1 bf16", EncoderConfig.tessera_v1(), args.n_v1, True),
    ]:
        r = throughput(cfg, n, args.repeats if "default" in name else 1, bf16,
                       8192 if "default" in name else 64)
        r["setting"] = name
        results["throughput"].append(r)
        rows.append(f"{name:<18}{r['params']:>12,}{r['pixels_per_s_best']:>14,.0f}"
                    f"{r['pixels_per_s_median']:>14,.0f}{r['cpu_s_per_1e4_pixels']:>12.2f}")
        print(rows[-1], flush=True)

    results["tile"] = tile_time(args.tile, 128 if not args.quick else 32)
    side = args.tile
    for s, c in [(side, side // 4), (side, side), (2 * side, side // 4)]:
        results["memory"].append(peak_memory(s, c))

    print()
    print(f"{'setting':<18}{'params':>12}{'px/s best':>14}{'px/s median':>14}{'cpu s/1e4':>12}")
    print("\n".join(rows))
    t = results["tile"]
    print(f"\n{t['side']}×{t['side']} tile-year via embed_cube (chunk {t['chunk']}): "
          f"{t['seconds']:.1f} s ({t['pixels_per_s']:,.0f} px/s incl. data generation and Zarr)")
    print(f"\n{'area':>8}{'chunk':>8}{'RSS base MB':>14}{'RSS peak MB':>13}{'increase MB':>13}"
          f"{'traced MB':>11}{'cube MB':>10}")
    for m in results["memory"]:
        print(f"{m['side']:>8}{m['chunk']:>8}{m['baseline_mb']:>14.0f}{m['peak_mb']:>13.0f}"
              f"{m['increase_mb']:>13.0f}{m['tracemalloc_peak_mb']:>11.0f}{m['cube_mb_if_loaded']:>10.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

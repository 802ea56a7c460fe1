"""The embedding path against the encoder's own speed, and the simulator's speed.

Measures, in one run on the same machine (issue 20, item 3):

1. **encoder**: pixels/s of :func:`fungi_ssl.embeddings.inference.embed_pixels` on
   synthetic pixels held in memory (the default encoder, fp32, batches of
   8,192), as ``bench_encoder.py`` measures it;
2. **simulator**: pixel-years/s of the simulated Sentinel-2/Sentinel-1 series
   (73 + 60 dates) on
   - chapter 08's park windows: a 72-pixel window (the full book's
     ``PARK_WINDOW_PX``, one 80-pixel chunk by its chunk rule) and a 32-pixel
     one (the replicate worlds' ``REPLICATE_WINDOW_PX``), through
     ``SimulatedStudy.cube_in_memory`` as chapter 08 makes them (one block,
     no dask; the same values as ``cube``), and the 32-pixel one through the
     lazy ``SimulatedStudy.cube`` and ``load`` (``simulate_replicate_cube_lazy``);
   - the 3 × 3 site patches of a study (``site_patch_series``, what
     ``bench_simulate.py`` times), whose scattered 3 × 3 grids cannot share
     the cloud fields' cosines between pixels;
3. **cube embedding**: pixels/s of :func:`fungi_ssl.embeddings.embed.embed_cube` on the
   72-pixel park cube already simulated into memory, and end to end on the
   lazy cube (simulated, then embedded: one window, so nothing overlaps), and
   on a lazy 192 × 192 cube in 64-pixel windows (the windows of
   :func:`fungi_ssl.region.workflow.write_simulated_tiles`), where the next window is
   simulated in a background thread while the encoder embeds this one;
4. **tile embedding**: pixels/s of a 256 × 256 tile-year cube in memory
   embedded by ``embed_cube`` (128-pixel windows) and written in geotessera's
   layout by :func:`fungi_ssl.embeddings.tessera_write.write_tile`.

Every speed is the best of ``--repeats`` wall-clock runs after one untimed
warm-up (the site patches: one run) and is also given per CPU-second of this
process. The machine is shared, so absolute figures
move with its load; the ratios to the encoder measured in the same run are
the robust figures.

Where the time went (issue 20, item 3): embedding a cube already in memory
was never far from the encoder (0.65 of its pixels/s before, in one run).
Chapter 08's 3,700 px/s was the simulator in front of it (7,000–15,000
pixel-years/s on park windows: every date a few dozen NumPy passes over
float64 temporaries, nine splitmix64 rounds per uniform, regional draws hashed
pixel by pixel, cloud fields summed feature by feature) and, for the 32-pixel
replicate cubes, a Zarr store created, written and read back per cube (60–80
ms, as long as embedding the cube). Now the dates' loops and the Fourier sums
are numba kernels with the same floating-point operations in the same order
(``fungi_ssl.simulate.kernels``; the values are pinned bit for bit by
``tests/test_simulate_pinned.py``), throwaway cubes are embedded in memory
(``embed_cube_in_memory``), and the next window or cube is simulated in a
background thread while the encoder embeds this one. What is left: the 3 × 3
site patches cannot share the cloud fields' cosines between pixels, so
``numpy.cos``/``sin`` (about 4,700 per pixel-year) bound them; a single-window
cube cannot overlap its own simulation with its embedding.

A 32-pixel replicate cube spent a third of its time in dask's graph and
xarray's lazy arrays around its one block (40 ms a cube, 25 ms for the block
alone), so chapter 08 now makes its one-block cubes with
``SimulatedStudy.cube_in_memory`` (the same values). Idle machine,
2026-12-06, one run: 31,289 pixel-years/s for the replicate cube (22,115
through the lazy cube in the same run), 39,689 for the park cube; the
encoder 33,487 px/s, the park cube in memory embedded at 0.72 of it, a
simulated region at 0.58, a single simulated park window at 0.45, a tile
at 0.66.

Usage::

    .venv/bin/python benchmarks/bench_embedding_path.py [--repeats 3] [--quick]

Writes ``benchmarks/results/embedding_path.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

#: A Lake District point with woodland (the chapter 08 windows are in UK parks).
PARK_POINT = (-3.08, 54.48)


def timed(fn, repeats: int, warm: bool = True) -> tuple[float, float]:
    """Best wall-clock seconds and the CPU seconds of that run, after an untimed warm-up."""
    if warm:
        fn()
    best = (np.inf, np.inf)
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - t, time.process_time() - c))
    return best


def rate(n: float, wall: float, cpu: float) -> dict:
    return {"n": int(n), "seconds": wall, "per_s": n / wall, "per_cpu_s": n / cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smaller sizes, one repeat")
    ap.add_argument("--out", type=Path,
                    default=REPO / "benchmarks" / "results" / "embedding_path.json")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import torch
    from bench_encoder import default_model, synthetic_cube, synthetic_pixels

    from fungi_ssl.embeddings import tessera_write as tessera
    from fungi_ssl.embeddings.embed import embed_cube
    from fungi_ssl.embeddings.inference import embed_pixels
    from fungi_ssl.simulate import SimulatedStudy, Window

    reps = 1 if args.quick else args.repeats
    n_enc, park, tile, n_samples = ((4096, 32, 64, 300) if args.quick
                                    else (32_768, 72, 256, 2000))
    region_chunk = 32 if args.quick else 64     # region.write_simulated_tiles' windows
    model = default_model()
    out: dict = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                             "numpy": np.__version__, "cpu_threads": torch.get_num_threads()},
                 "note": "shared, loaded 2-core machine: compare the ratios, measured in one run"}

    # 1. the encoder alone
    px = synthetic_pixels(n_enc)
    embed_pixels(model, px[:512])
    out["encoder"] = rate(n_enc, *timed(lambda: embed_pixels(model, px), reps))

    # 2. the simulator
    study = SimulatedStudy()
    chunk = int(np.ceil(park / 16) * 16)            # chapter 08's chunk rule
    big = Window.around(*PARK_POINT, park)
    small = Window.around(*PARK_POINT, 32)
    study.cube(small, 2017, chunks=32).load()       # warm: cloud fields, compiled kernels
    years = iter(range(2018, 2018 + 100))
    cubes = {}

    def simulate(window, ch, key):
        cubes[key] = study.cube(window, next(years) % 8 + 2017, chunks=ch).load()

    def simulate_now(window, key):  # chapter 08's path: one block, no dask
        cubes[key] = study.cube_in_memory(window, next(years) % 8 + 2017)

    out["simulate_park_cube"] = rate(park * park, *timed(lambda: simulate_now(big, "park"), reps))
    out["simulate_replicate_cube"] = rate(32 * 32, *timed(lambda: simulate_now(small, "small"),
                                                           reps))
    out["simulate_replicate_cube_lazy"] = rate(32 * 32, *timed(
        lambda: simulate(small, 32, "lazy"), reps))
    sites = SimulatedStudy(n_samples=n_samples, n_campaigns=max(8, n_samples // 75))
    _ = sites.sites
    n_site_px = 9 * len(sites.sites)
    out["simulate_site_patches"] = rate(n_site_px, *timed(lambda: sites.site_patch_series(k=3), 1,
                                                          warm=False))

    # 3. cube embedding: the park cube in memory, then simulated while embedded
    cube = cubes["park"]
    with tempfile.TemporaryDirectory() as d:
        k = iter(range(1000))
        out["embed_park_cube"] = rate(park * park, *timed(
            lambda: embed_cube(cube, model, Path(d) / f"{next(k)}.zarr", chunk=chunk,
                               progress=False), reps))
        out["simulate_and_embed_park_cube"] = rate(park * park, *timed(
            lambda: embed_cube(study.cube(big, 2019, chunks=chunk), model,
                               Path(d) / f"{next(k)}.zarr", chunk=chunk, progress=False), reps))

        region = Window.around(*PARK_POINT, 3 * region_chunk)
        out["simulate_and_embed_region"] = rate(region.width * region.height, *timed(
            lambda: embed_cube(study.cube(region, 2020, chunks=region_chunk), model,
                               Path(d) / f"{next(k)}.zarr", chunk=region_chunk, progress=False),
            reps))

    # 4. tile embedding: a tile-year in memory, embedded and written as a geotessera tile
    tcube = synthetic_cube(tile).load()
    with tempfile.TemporaryDirectory() as d:
        k = iter(range(1000))

        def embed_tile():
            from affine import Affine

            from fungi_ssl.embeddings.embed import open_embeddings

            run = embed_cube(tcube, model, Path(d) / f"{next(k)}.zarr", chunk=128, progress=False)
            ds = open_embeddings(run.store)
            tessera.write_tile(Path(d) / "tiles", 2024, 0.15, 52.05,
                               np.asarray(ds["embedding"].values, np.int8),
                               np.asarray(ds["scale"].values, np.float32),
                               crs=32631, transform=Affine(10, 0, 300_000, 0, -10, 5_770_000),
                               overwrite=True)

        out["embed_tile"] = rate(tile * tile, *timed(embed_tile, reps))

    enc = out["encoder"]
    for key in ("embed_park_cube", "simulate_and_embed_park_cube", "simulate_and_embed_region",
                "embed_tile"):
        out[key]["ratio_to_encoder"] = out[key]["per_s"] / enc["per_s"]
        out[key]["cpu_ratio_to_encoder"] = out[key]["per_cpu_s"] / enc["per_cpu_s"]
    print(f"{'stage':<32}{'n':>9}{'per s':>12}{'per CPU-s':>12}{'÷ encoder':>11}")
    for key, r in out.items():
        if isinstance(r, dict) and "per_s" in r:
            ratio = f"{r['ratio_to_encoder']:>11.2f}" if "ratio_to_encoder" in r else ""
            print(f"{key:<32}{r['n']:>9,}{r['per_s']:>12,.0f}{r['per_cpu_s']:>12,.0f}{ratio}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

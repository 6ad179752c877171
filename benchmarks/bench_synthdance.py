"""SynthDance speed: frames per second for all six maps, render-only and with PNG writing.

    python benchmarks/bench_synthdance.py [--frames 96] [--repeats 3] [--resolutions 64 128]

Prints one row per resolution: the best and median of ``--repeats`` runs (the CPU may be shared, so the best run is the
fairest estimate of the renderer itself). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from referencelcm.data.synthdance import render_frames, sample_video_spec
from referencelcm.data.synthdance.writer import write_video


def measure(resolution: int, num_frames: int, repeats: int, seed: int) -> tuple[list[float], list[float]]:
    """Frames/second over ``repeats`` videos: (render-only rates, render + PNG write rates)."""
    render_rates, write_rates = [], []
    for repeat in range(repeats):
        spec = sample_video_spec(seed, repeat, num_frames, resolution)
        start = time.perf_counter()
        for _ in render_frames(spec):
            pass
        render_rates.append(num_frames / (time.perf_counter() - start))
        with tempfile.TemporaryDirectory() as directory:
            start = time.perf_counter()
            write_video(spec, Path(directory))
            write_rates.append(num_frames / (time.perf_counter() - start))
    return render_rates, write_rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=96, help="frames per measured video")
    parser.add_argument("--repeats", type=int, default=3, help="videos measured per resolution")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"SynthDance, all six maps, {args.frames} frames x {args.repeats} videos per resolution")
    print(f"{'resolution':>10} | {'render fps best':>15} | {'render fps median':>17} | "
          f"{'+PNG fps best':>13} | {'+PNG fps median':>15}")
    for resolution in args.resolutions:
        render_rates, write_rates = measure(resolution, args.frames, args.repeats, args.seed)
        print(f"{resolution:>10} | {max(render_rates):>15.1f} | {statistics.median(render_rates):>17.1f} | "
              f"{max(write_rates):>13.1f} | {statistics.median(write_rates):>15.1f}")


if __name__ == "__main__":
    main()

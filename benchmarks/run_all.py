"""Run every benchmark in this folder, one after another (``make bench``).

Each ``bench_*.py`` prints its own table and writes JSON to
``benchmarks/results/``. Timings are wall-clock on this machine; run them on
an otherwise idle machine, and compare ratios measured in one run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"== {script.name}", flush=True)
        if subprocess.run([sys.executable, str(script)], check=False).returncode:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

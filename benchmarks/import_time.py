"""Import time of llm_circuit_breaker against tenacity, pybreaker and stamina.

Each figure is the minimum over fresh interpreters of ``import X`` (timed inside the child so
that interpreter start-up is not counted), all measured in the same run. Every module is
measured from its bytecode, as ``pip install`` leaves it: a first import writes the
``__pycache__`` of an editable install even where ``PYTHONDONTWRITEBYTECODE`` is set (without
it, our package would be compiled from source in every child, about 14 ms more, while the
peers' wheels were compiled at install)::

    python benchmarks/import_time.py            # 7 processes each
    python benchmarks/import_time.py --runs 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

MODULES = ("llm_circuit_breaker", "tenacity", "pybreaker", "stamina")
_CHILD = "import time; t = time.perf_counter(); import {0}; print(time.perf_counter() - t)"


def import_seconds(module: str, runs: int) -> float:
    """The fastest of ``runs`` fresh imports of ``module``, from its bytecode."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", f"import {module}"], env=env, check=True)
    best = float("inf")
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", _CHILD.format(module)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        best = min(best, float(out))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    times = {module: import_seconds(module, args.runs) for module in MODULES}
    base = times["tenacity"]
    print("| import | ms | vs tenacity |\n|---|---:|---:|")
    for module, seconds in times.items():
        print(f"| {module} | {seconds * 1000:.1f} | {seconds / base:.2f}x |")


if __name__ == "__main__":
    main()

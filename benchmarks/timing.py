"""Shared by the benchmark scripts (each run as ``python benchmarks/NAME.py``, so this folder is on sys.path)."""
import time


def best(fn, repeat: int):
    """``(fastest seconds of `repeat` calls, the last call's result)``."""
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out

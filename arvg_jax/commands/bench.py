"""`arvg bench`: generation throughput, latency, compile time, memory and GEMMs.

The measurements are family-specific (sampler variants, kernel options); the family that provides
a bench supplies its arguments and runner (`Family.bench_command`). VAR's is documented in
BENCHMARKS.md; the other families' GPU benches come with their speed work.
"""

from __future__ import annotations


def _provider():
    from arvg_jax import families

    benches = [f.bench_command() for f in families.all_families().values()]
    benches = [b for b in benches if b is not None]
    if len(benches) != 1:  # pragma: no cover - a second bench family changes this dispatch
        raise NotImplementedError(f"{len(benches)} families provide a bench; expected one")
    return benches[0]


def add_arguments(parser) -> None:
    _provider().add_arguments(parser)


def run(args) -> int:
    return _provider().run(args)

"""Shared test set-up: float32 parity precision and the reference-fixture directory."""

import os
import pathlib

# The suite is compile-bound on the CPU: LLVM optimization level 1 instead of XLA's default 2
# cuts its wall time by about a quarter (measured 2026-12-07 on 2 cores: var_sampler_test +
# rar_train_test 196 s -> 151 s) and compiles to the same numbers here (the bit-exact goldens,
# tests/goldens_test.py, hold at both levels; level 0 changes float32 logits by ~5e-7 and fails
# them). Set before jax starts its backends; subprocesses inherit it. ARVG_TEST_XLA_OPT=default
# keeps XLA's own level.
if os.environ.get("ARVG_TEST_XLA_OPT", "1") != "default":
    _flag = f"--xla_backend_optimization_level={os.environ.get('ARVG_TEST_XLA_OPT', '1')}"
    if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

import jax
import pytest

# Parity needs exact float32 matmuls: the default TF32/bf16 passes err by ~1e-3.
jax.config.update("jax_default_matmul_precision", "highest")

# Many modules compile the same programs (the reference VAR's sampler, the tiny models' steps),
# each module afresh after `_free_compiled_programs`, and the xdist workers once each. JAX's
# persistent compilation cache lets them reuse one compile: a directory shared by the run's
# processes (ARVG_TEST_JAX_CACHE, set once by the controlling process and inherited by the
# workers; a fresh temporary directory unless given). ARVG_TEST_JAX_CACHE=off compiles everything.
_cache = os.environ.get("ARVG_TEST_JAX_CACHE")
_made_cache = None
if _cache is None:
    import tempfile

    _cache = _made_cache = tempfile.mkdtemp(prefix="arvg-jax-cache-")
    os.environ["ARVG_TEST_JAX_CACHE"] = _cache
if _cache != "off":
    jax.config.update("jax_compilation_cache_dir", _cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def pytest_unconfigure(config):
    if _made_cache is not None:  # only the process that made the directory removes it
        import shutil

        shutil.rmtree(_made_cache, ignore_errors=True)


REPO = pathlib.Path(__file__).resolve().parents[1]


def reference_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("ARVG_REFERENCE_DIR", REPO.parent / "shared" / "reference"))


def require_reference(*parts: str) -> pathlib.Path:
    """Returns the fixture path; skips (or fails under CI=true) when it is absent."""
    path = reference_dir().joinpath(*parts)
    if not path.exists():
        msg = f"reference fixture {path} not found (set ARVG_REFERENCE_DIR)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def reference():
    return require_reference


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drops jax's compiled executables after each test module.

    XLA:CPU maps the code and data of every executable it keeps (about three memory mappings
    per executable). Over the whole suite one process approached Linux's default limit of
    65,530 mappings (20,103 by mid-suite, measured) and XLA segfaulted in a later compile.
    Clearing the caches between modules frees them; a module that needs a program again
    recompiles it.
    """
    yield
    jax.clear_caches()

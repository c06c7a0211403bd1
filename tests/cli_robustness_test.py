"""The `arvg` command line under hostile input, as a user meets it: real subprocesses.

Bad arguments, foreign output folders, unknown image extensions, Ctrl-C / SIGTERM mid-run and
during a save, NaN / Inf appearing at run time, and `arvg inspect` on every format arvg writes.
Each case asserts the exit status, a time bound and the one-line message. Cheap cases share one
interpreter (`_batch`: many `cli.main` calls in one subprocess); the rest run `python -m
arvg_jax.cli` directly. Full quantize / generate runs are marked slow.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_ASSETS = REPO / "arvg_jax" / "assets" / "tiny"
VAR_TEST = ["--model", "var-test", "--random-weights"]
# One signal must end a command this fast (the brief: "within about a second"; slack for a
# loaded 2-core CI machine).
SIGNAL_BOUND_S = 3.0


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    env.pop("CI", None)
    return env


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{err}"
    assert "Traceback" not in err
    return lines[0]


# ---- many cheap cases in one interpreter ---------------------------------------------------------
_DRIVER = r"""
import contextlib, io, json, os, sys, time
os.umask(0o022)
from arvg_jax import cli
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    t = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as e:
            rc = e.code
    results.append({"rc": rc, "out": out.getvalue(), "err": err.getvalue(),
                    "s": time.monotonic() - t})
print(json.dumps(results))
"""


def _python(args, cwd, timeout):
    """(exit status, stdout, stderr) of `python ARGS` with this checkout on the path."""
    proc = subprocess.run(
        [sys.executable, *args],
        check=False,
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout, proc.stderr


def _batch(cases, cwd, timeout=300):
    """Runs `cli.main(argv)` for each argv in one subprocess; returns their results in order."""
    rc, out, err = _python(["-c", _DRIVER, json.dumps(cases)], cwd, timeout)
    assert rc == 0, err[-3000:]
    return json.loads(out.splitlines()[-1])


_GEN = ["generate", *VAR_TEST, "--classes", "1", "--out", "g.png"]
# (argv, words the one-line message must hold): every bad number is refused by argparse, naming
# the flag and the allowed range.
BAD_ARGS = [
    ([*_GEN, "--batch", "0"], ["--batch", "integer >= 1", "'0'"]),
    ([*_GEN, "--batch", "-1"], ["--batch", "integer >= 1"]),
    ([*_GEN, "--cfg", "nan"], ["--cfg", "finite number >= 0", "'nan'"]),
    ([*_GEN, "--cfg", "inf"], ["--cfg", "finite"]),
    ([*_GEN, "--top-p", "2"], ["--top-p", "(0, 1] (par)", "[0, 1] (var)"]),
    ([*_GEN, "--top-k", "-5"], ["--top-k", "integer >= 0"]),
    ([*_GEN, "--top-k", "1.5"], ["--top-k", "integer"]),
    ([*_GEN, "--seed", "-1"], ["--seed", "[0, 4294967295]"]),
    ([*_GEN, "--seed", "4294967296"], ["--seed", "[0, 4294967295]"]),
    ([*_GEN, "--temperature", "-1"], ["--temperature", "> 0 (par)", ">= 0 (mar)"]),
    ([*_GEN, "--randomize-temperature", "-1"], ["--randomize-temperature", "> 0"]),
    ([*_GEN, "--num-iter", "0"], ["--num-iter", "integer >= 1"]),
    ([*_GEN, "--cfg-schedule", "cosine"], ["--cfg-schedule", "one of linear, constant"]),
    ([*_GEN, "--num-sampling-steps", "abc"], ["--num-sampling-steps", "ddimN"]),
    ([*_GEN, "--cfg-interval", "-2"], ["--cfg-interval", ">= -1"]),
    (["quantize", *VAR_TEST, "--calib", "0", "--out", "q"], ["--calib", "integer >= 1"]),
    (["quantize", *VAR_TEST, "--calib-seed", "x", "--out", "q"], ["--calib-seed", "'x'"]),
    (["sample", *VAR_TEST, "--num-images", "0", "--out", "s.npz"], ["--num-images", ">= 1"]),
    (
        ["sample", *VAR_TEST, "--num-images", "4", "--shard-size", "0", "--out", "s.npz"],
        ["--shard-size", ">= 1"],
    ),
    (["demo", "--per-class", "0", "--out", "d"], ["--per-class", ">= 1"]),
    (["evaluate", "--samples", "s.npz", "--inception-batch", "0"], ["--inception-batch", ">= 1"]),
    (["bench", "--repeats", "0"], ["--repeats", ">= 1"]),
    (["bench", "--top-p", "1.5"], ["--top-p", "[0, 1]"]),
    (["bench", "--config-seconds", "0"], ["--config-seconds", "> 0"]),
]


# Outputs arvg must not replace or fill (paths relative to the `hostile` folder).
FOREIGN = [
    (["quantize", *VAR_TEST, "--out", "mine", "--overwrite"], ["mine", ".arvg marker"]),
    (["quantize", *VAR_TEST, "--out", "mine"], ["mine already exists", "--overwrite"]),
    (["quantize", *VAR_TEST, "--out", "notes.txt", "--overwrite"], ["a file", ".arvg"]),
    (["convert", *VAR_TEST, "--out", "mine", "--overwrite"], ["mine", ".arvg marker"]),
    (
        [
            "convert",
            *VAR_TEST,
            "--format",
            "safetensors",
            "--out",
            "foreign.safetensors",
            "--overwrite",
        ],
        ["foreign.safetensors", ".arvg"],
    ),
    (["demo", "--out", "mine"], ["mine", ".arvg marker"]),
    (["generate", *VAR_TEST, "--classes", "1", "--out", "g.xyz"], ["extension", ".jpg"]),
    (["sample", *VAR_TEST, "--num-images", "4", "--out", "s.npz"], ["s.npz.shards", ".arvg"]),
    # A range only PAR has: argparse lets 0 through (VAR's top-p 0 disables its filter).
    (
        [
            "generate",
            "--model",
            "par-test",
            "--random-weights",
            "--classes",
            "1",
            "--top-p",
            "0",
            "--out",
            "g.png",
        ],
        ["--top-p", "(0, 1] for par", "0.0"],
    ),
    # Another family's flag would be ignored: refused, listing the model's own.
    (
        ["generate", "--model", "par-test", "--random-weights", "--classes", "1", "--num-iter", "4"]
        + ["--out", "g.png"],
        ["--num-iter: not a sampling setting of par", "--top-k"],
    ),
]


@pytest.fixture(scope="module")
def cheap(tmp_path_factory):
    """Runs BAD_ARGS and FOREIGN in one interpreter, in a folder of things arvg must not touch.

    Returns:
      (folder, {json argv: result}, wall seconds of the subprocess).
    """
    root = tmp_path_factory.mktemp("hostile")
    (root / "mine").mkdir()
    (root / "mine" / "thesis.tex").write_text("precious")
    (root / "notes.txt").write_text("precious")
    (root / "foreign.safetensors").write_bytes(b"not a checkpoint")
    (root / "s.npz.shards").mkdir()
    (root / "s.npz.shards" / "holiday.jpg").write_bytes(b"precious")
    cases = [argv for argv, _ in BAD_ARGS + FOREIGN]
    start = time.monotonic()
    results = _batch(cases, root)
    return root, dict(zip(map(json.dumps, cases), results)), time.monotonic() - start


def _ids(value):
    return " ".join(value)[-48:] if isinstance(value, list) and value[:1] != ["--"] else None


@pytest.mark.parametrize(
    "argv, words, prefix",
    [(a, w, "argument ") for a, w in BAD_ARGS] + [(a, w, "") for a, w in FOREIGN],
    ids=_ids,
)
def test_refused_with_one_line(cheap, argv, words, prefix):
    """Bad numbers (argparse: "argument --flag: must be <range>, got ..."), foreign outputs, a
    range or flag the model's family does not have: exit 2 and one line naming the problem."""
    _, results, _ = cheap
    r = results[json.dumps(argv)]
    assert r["rc"] == 2, r
    line = _one_line(r["err"])
    assert line.startswith(f"arvg {argv[0]}: {prefix}"), line
    for w in words:
        assert w in line, line


def test_foreign_outputs_untouched_and_nothing_written(cheap):
    root, _, seconds = cheap
    assert (root / "mine" / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in (root / "mine").iterdir()) == ["thesis.tex"]  # no marker
    assert (root / "notes.txt").read_text() == "precious"
    assert (root / "foreign.safetensors").read_bytes() == b"not a checkpoint"
    assert sorted(p.name for p in (root / "s.npz.shards").iterdir()) == ["holiday.jpg"]
    # no g.png, no q/, no temporaries
    assert sorted(p.name for p in root.iterdir()) == [
        "foreign.safetensors",
        "mine",
        "notes.txt",
        "s.npz.shards",
    ]
    assert seconds < 60, seconds


# ---- signals ---------------------------------------------------------------------------------------
def _signal_mid_run(argv, cwd, *, after, sig, timeout=600):
    """Starts `arvg argv`, sends `sig` once its stderr shows `after` (the command has loaded its
    model and is in JAX work: a progress bar's first draw has no newline, so bytes are read as
    they come); returns (exit status, stderr after the signal, seconds from the signal to exit)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "arvg_jax.cli", *argv],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        seen = b""
        while after.encode() not in seen:
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                pytest.fail(f"{argv[0]} ended before {after!r}: {seen.decode()[-2000:]}")
            seen += chunk
        time.sleep(0.5)  # well inside the first jitted call (compiles take seconds on CPU)
        start = time.monotonic()
        proc.send_signal(sig)
        rest = proc.stderr.read().decode()
        rc = proc.wait(timeout=timeout)
        return rc, rest, time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ctrl_c_during_quantize_one_line_130_nothing_written(tmp_path):
    rc, err, seconds = _signal_mid_run(
        ["quantize", "--model", "var-tiny", "--calib", "4", "--out", "q", "--quiet"],
        tmp_path,
        after="calibration sequences",
        sig=signal.SIGINT,
    )
    assert rc == 130, err
    assert _one_line(err) == "arvg quantize: interrupted; nothing written"
    assert seconds < SIGNAL_BOUND_S, seconds
    assert list(tmp_path.iterdir()) == []  # no q/, no temporaries


def test_sigterm_during_generate_one_line_130(tmp_path):
    rc, err, seconds = _signal_mid_run(
        ["generate", "--model", "var-tiny", "--classes", "0,1", "--out", "g.jpg"],
        tmp_path,
        after="image(s)",
        sig=signal.SIGTERM,
    )
    assert rc == 130, err
    assert "Traceback" not in err
    # (a progress bar may have started its line: the message is the one full line after it)
    assert err.strip().splitlines()[-1] == "arvg generate: interrupted; nothing written"
    assert seconds < SIGNAL_BOUND_S, seconds
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, after",
    [
        pytest.param(
            ["convert", *VAR_TEST, "--out", "conv"],
            "convert:",
            id="convert",
            marks=pytest.mark.slow,
        ),
        pytest.param(  # at its first progress bar (calibration candidates)
            ["demo", "--out", "d", "--calib", "2", "--per-class", "1"],
            "%|",
            id="demo",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_ctrl_c_during_convert_and_demo(tmp_path, argv, after):
    rc, err, seconds = _signal_mid_run(argv, tmp_path, after=after, sig=signal.SIGINT)
    assert rc == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"arvg {argv[0]}: interrupted; nothing written"
    assert seconds < SIGNAL_BOUND_S, seconds
    assert list(tmp_path.iterdir()) == []


# A save in flight when the signal comes: `arvg_jax.atomic.write_dir` with a slow writer, under
# the same `interrupt.run` as every command (no JAX needed to exercise the gate).
_SAVE_DRIVER = r"""
import os, sys, time
os.umask(0o022)
from arvg_jax import atomic, interrupt
def slow(tmp):
    (tmp / "params").write_text("half")
    print("saving", file=sys.stderr, flush=True)
    time.sleep(60)
def body():
    interrupt.set_prog("arvg quantize")
    if sys.argv[1] == "during":
        atomic.write_dir("q", slow, overwrite=True)
    else:
        atomic.write_dir("q", lambda tmp: (tmp / "params").write_text("whole"), overwrite=True)
        print("saving done", file=sys.stderr, flush=True)
        time.sleep(60)  # the summary would follow
    return 0
sys.exit(interrupt.run(body, prog="arvg", restore=False))
"""


@pytest.mark.parametrize("when", ["during", "after"])
def test_signal_during_a_save_rolls_back_or_keeps_it_whole(tmp_path, when):
    old = tmp_path / "q"
    old.mkdir()
    (old / ".arvg").write_text("")
    (old / "params").write_text("old")
    proc = subprocess.Popen(
        [sys.executable, "-c", _SAVE_DRIVER, when],
        cwd=tmp_path,
        env=_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert "saving" in proc.stderr.readline()
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(timeout=30) == 130
    assert time.monotonic() - start < SIGNAL_BOUND_S
    line = _one_line(err)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["q"]  # no .tmp-q.* directory, no replaced copy beside it
    if when == "during":
        assert line == "arvg quantize: interrupted while writing q: rolled back; nothing written"
        assert (old / "params").read_text() == "old"
    else:
        assert line == "arvg quantize: interrupted; kept q (complete)"
        assert (old / "params").read_text() == "whole"
        assert (old / ".arvg").is_file()


# ---- what arvg writes: marker, umask, replacement without leftovers, inspect reads it all ------------
def test_converted_outputs_replace_cleanly_follow_umask_and_inspect(tmp_path):
    images = np.zeros((4, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "samples.npz", arr_0=images, arr_1=np.arange(4))
    np.savez(tmp_path / "tokens.npz", tokens=np.zeros((2, 5), np.int32), labels=np.arange(2))
    assets = [str(TINY_ASSETS / f) for f in ("var.npz", "vae.npz", "classifier.npz")]
    convert = ["convert", "--quiet"]
    cases = [
        [*convert, "--model", "var-tiny", "--out", "conv"],
        [*convert, "--ckpt", "conv", "--format", "safetensors", "--out", "c.safetensors"],
        [*convert, "--ckpt", "c.safetensors", "--out", "conv", "--overwrite"],
        [
            *convert,
            "--ckpt",
            "conv",
            "--format",
            "safetensors",
            "--out",
            "c.safetensors",
            "--overwrite",
        ],
        ["inspect", "conv"],
        ["inspect", "c.safetensors"],
        ["inspect", "samples.npz"],
        ["inspect", "tokens.npz"],
        *(["inspect", a] for a in assets),
    ]
    results = _batch(cases, tmp_path)
    for argv, r in zip(cases, results):
        assert r["rc"] == 0, (argv, r["err"][-2000:])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "c.safetensors",
        "conv",
        "samples.npz",
        "tokens.npz",
    ]  # no .tmp-*, no .conv.old-PID
    conv = tmp_path / "conv"
    assert (conv / ".arvg").is_file()
    assert conv.stat().st_mode & 0o777 == 0o755  # umask 022, not mkdtemp's 0700
    assert (conv / "config.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "c.safetensors").stat().st_mode & 0o777 == 0o644
    inspect_out = [r["out"] for r in results[4:]]
    assert "var-tiny" in inspect_out[0]
    assert "params/" in inspect_out[1]
    assert "arr_0  [4, 8, 8, 3]  uint8" in inspect_out[2]
    assert "tokens  [2, 5]  int32" in inspect_out[3]
    assert "blocks_0/attn/qkv/kernel" in inspect_out[4]
    for out in inspect_out[2:]:
        assert out.splitlines()[-1].endswith("MB)")  # the totals line


# ---- NaN / Inf appearing at run time ----------------------------------------------------------------
class _ScaleAdapter:
    """A two-stage model whose layers multiply their input by a number (`params[layer]`): a
    stand-in for a family adapter, so the stage runner's checks run without compiling a model."""

    family = "toy"

    def stages(self):
        from quant._calibrate import Stage

        return (Stage("blocks_0", ("blocks_0/fc1", "blocks_0/fc2")), Stage("head", ("head",)))

    def start(self, params, batch):
        return np.asarray(batch["x"], np.float32)

    def run_stage(self, params, stage, carry, collect="intermediates"):
        got = {}
        for name in stage.layers:
            got[name] = carry  # its input (a fitted quantizer of a NaN input holds NaN too)
            carry = carry * np.float32(params[name])
        return carry, got


@pytest.mark.parametrize(
    "params, x, where",
    [
        ({"blocks_0/fc1": np.inf, "blocks_0/fc2": 1, "head": 1}, 1.0, "layer blocks_0/fc2"),
        ({"blocks_0/fc1": 1, "blocks_0/fc2": 1, "head": np.nan}, 1.0, "output of stage head"),
        ({"blocks_0/fc1": 1, "blocks_0/fc2": 1, "head": 1}, np.nan, "calibration inputs"),
    ],
)
def test_calibration_names_where_nan_appears(params, x, where):
    from quant._calibrate import NonFiniteError, collect, fit_stages

    batch = {"x": np.full((2, 3), x, np.float32)}
    with pytest.raises(NonFiniteError, match=where):
        fit_stages(_ScaleAdapter(), params, batch, progress=False)
    with pytest.raises(NonFiniteError, match=where):
        collect(_ScaleAdapter(), params, batch, lambda n, x, p: None, progress=False)


def test_generate_refuses_nan_images():
    from types import SimpleNamespace

    from arvg_jax.commands import generate

    def fake_generate(params, tok_params, cfg, tok_cfg, labels, keys, /, *, options, **kw):
        images = np.zeros((len(labels), 2, 2, 3), np.float32)
        images[1, 0, 0, 0] = np.inf
        return {"images": images, "tokens": np.zeros((len(labels), 1), np.int32)}

    fam = SimpleNamespace(inference_layout=lambda p: p, generate=fake_generate)
    model = SimpleNamespace(fam=fam, params={}, vae_params={}, cfg=None, vae_cfg=None)
    with pytest.raises(generate.NonFiniteImages, match="images 0-1: .*NaN/Inf"):
        generate.generate_images(model, [0, 1], seed=0, sampling={}, batch=2, progress=False)


# ---- slow: whole runs -------------------------------------------------------------------------------
def _arvg(argv, cwd, timeout=900):
    return _python(["-m", "arvg_jax.cli", *argv], cwd, timeout)


_SLOW_SAVE = r"""
import sys, time
from quant import checkpoint
write = checkpoint.write
def slow_write(*a, **k):
    write(*a, **k)
    print("saving", file=sys.stderr, flush=True)
    time.sleep(120)
checkpoint.write = slow_write
from arvg_jax import cli
sys.argv = ["arvg", *sys.argv[1:]]
sys.exit(cli.main())
"""


@pytest.mark.slow
def test_quantize_then_interrupted_overwrite_and_evaluate(tmp_path):
    argv = ["quantize", *VAR_TEST, "--method", "rtn", "--calib", "2", "--out", "q", "--quiet"]
    rc, _, err = _arvg(argv, tmp_path)
    assert rc == 0, err
    rc, out, err = _arvg(["inspect", "q"], tmp_path)
    assert rc == 0 and "quantized var model" in out, err
    before = (tmp_path / "q" / "arvg.json").read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_SAVE, *argv, "--overwrite"],
        cwd=tmp_path,
        env=_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stderr:
        if "saving" in line:
            break
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 130
    assert time.monotonic() - start < SIGNAL_BOUND_S
    assert (
        _one_line(err) == "arvg quantize: interrupted while writing q: rolled back; nothing written"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]
    assert (tmp_path / "q" / "arvg.json").read_bytes() == before
    # evaluate (float vs quantized) stopped at its first generation
    argv = ["evaluate", *VAR_TEST, "--quantized", "q", "--classes", "1", "--out", "e"]
    rc, err, seconds = _signal_mid_run(argv, tmp_path, after="%|", sig=signal.SIGTERM)
    assert rc == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "arvg evaluate: interrupted; nothing written"
    assert seconds < SIGNAL_BOUND_S, seconds
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


@pytest.mark.slow
def test_generate_writes_the_format_of_the_extension(tmp_path):
    rc, _, err = _arvg(
        ["generate", "--model", "var-tiny", "--classes", "0,1", "--out", "g.jpg"], tmp_path
    )
    assert rc == 0, err
    assert (tmp_path / "g.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG, not PNG bytes
    assert (tmp_path / "g.jpg").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_HOT = r"""
import numpy as np
from arvg_jax import conversion, models
m = models.random_model("var-test")
fc1 = m.params["blocks_0"]["ffn"]["fc1"]
fc1["kernel"] = np.full_like(np.asarray(fc1["kernel"]), 3e38)  # finite, overflows at once
conversion.convert(m, out="hot", progress=False)
"""


@pytest.mark.slow
def test_activations_that_overflow_are_reported_by_layer(tmp_path):
    subprocess.run([sys.executable, "-c", _HOT], check=True, cwd=tmp_path, env=_env(), timeout=600)
    argv = ["quantize", "--ckpt", "hot", "--method", "rtn", "--calib", "2", "--dgc", "none"]
    rc, _, err = _arvg([*argv, "--out", "q", "--quiet"], tmp_path)
    assert rc == 1, err
    line = _one_line(err.split("\n", 1)[1])  # after the "var-test ...: rtn w8a8" line
    assert line.startswith("arvg quantize: calibration: NaN/Inf in the input of layer blocks_0/")
    assert not (tmp_path / "q").exists()

"""`arvg sample`: shards, the ADM npz layout, batch-size independence, Ctrl-C and resuming."""

import os
import signal
import time

import numpy as np
import pytest

from arvg_jax import cli, interrupt, sample_shards
from arvg_jax.metrics import adm_npz

# 12 images in shards of 5 (the last one short), 2 per class: labels 0 0 1 1 ... 5 5.
N, PER_CLASS, SHARD = 12, 2, 5


def _sample(out, batch, *extra):
    argv = ["sample", "--model", "var-test", "--random-weights", "--num-images", str(N)]
    argv += ["--per-class", str(PER_CLASS), "--shard-size", str(SHARD), "--batch", str(batch)]
    return cli.main([*argv, "--seed", "3", "--quiet", "--out", str(out), *extra])


def _load(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module", autouse=True)
def _one_random_model():
    """Builds var-test's random weights once (about 10 s each on CPU), not once per run."""
    import functools

    from arvg_jax import models

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "random_model", functools.cache(models.random_model))
        yield


@pytest.fixture(scope="module")
def baseline_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "samples.npz"
    assert _sample(out, 2) == 0
    return out


@pytest.fixture(scope="module")
def baseline(baseline_file):
    return _load(baseline_file)


def test_adm_layout_and_labels(baseline, tmp_path):
    assert sorted(baseline) == ["arr_0", "arr_1"]
    images, labels = baseline["arr_0"], baseline["arr_1"]
    assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[0] == N
    assert images.shape[-1] == 3
    np.testing.assert_array_equal(labels, np.arange(N) // PER_CLASS)
    assert labels.dtype == np.int64
    assert len(np.unique(images.reshape(N, -1), axis=0)) > 1  # not one image repeated


def test_batch_size_does_not_change_images(baseline, tmp_path):
    out = tmp_path / "b3.npz"
    assert _sample(out, 3) == 0
    got = _load(out)
    for k in baseline:
        np.testing.assert_array_equal(got[k], baseline[k])
    assert not sample_shards.shard_dir(out).exists()  # removed once the file is written
    # The evaluator streams arr_0 straight from the zip member: the file must allow that.
    streamed = np.concatenate(list(adm_npz.iter_batches(out, 5)))
    np.testing.assert_array_equal(streamed, baseline["arr_0"])


def test_ctrl_c_keeps_shards_and_a_rerun_resumes(
    baseline, baseline_file, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "s.npz"
    write = sample_shards.write_shard

    def write_then_interrupt(directory, index, images, labels):
        write(directory, index, images, labels)
        if index == 0:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C after the first shard
            time.sleep(0.5)  # lets the main thread see it before the next batch

    monkeypatch.setattr(sample_shards, "write_shard", write_then_interrupt)
    exits = []
    monkeypatch.setattr(interrupt, "_hard_exit", exits.append)  # not the test process
    start = time.monotonic()
    assert _sample(out, 3) == 130
    assert time.monotonic() - start < 60  # (compiled already: no long wait after Ctrl-C)
    assert "interrupted; 1 of 3 shards kept, rerun to resume" in capsys.readouterr().err
    assert exits == [130]
    assert not out.exists()
    shards = sample_shards.shard_dir(out)
    assert sorted(p.name for p in shards.glob("shard_*")) == ["shard_00000.npz"]
    (shards / ".tmp-shard_00001.npz.x").write_bytes(b"half a shard")  # a kill mid-write
    monkeypatch.setattr(sample_shards, "write_shard", write)
    assert _sample(out, 2) == 0  # another batch size: still the same images
    got = _load(out)
    for k in baseline:
        np.testing.assert_array_equal(got[k], baseline[k])
    assert out.read_bytes() == baseline_file.read_bytes()  # the same file, byte for byte


_KILLED_AFTER_SHARD_0 = r"""
import sys, time
from arvg_jax import cli, sample_shards
write = sample_shards.write_shard
def write_then_hang(directory, index, *a):
    write(directory, index, *a)
    if index == 0:
        time.sleep(600)  # SIGKILLed here: mid-run, no handler runs
sample_shards.write_shard = write_then_hang
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkilled_process_resumes_to_the_same_file(baseline_file, tmp_path):
    """A real `arvg sample` process killed with SIGKILL after its first shard (no cleanup runs):
    the rerun (another batch size) writes an npz byte-identical to an uninterrupted run's."""
    import pathlib
    import subprocess
    import sys

    out = tmp_path / "k.npz"
    argv = ["sample", "--model", "var-test", "--random-weights", "--num-images", str(N)]
    argv += ["--per-class", str(PER_CLASS), "--shard-size", str(SHARD), "--batch", "3"]
    argv += ["--seed", "3", "--quiet", "--out", str(out)]
    repo = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo), JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_AFTER_SHARD_0, *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = sample_shards.shard_dir(out) / "shard_00000.npz"
    try:
        deadline = time.monotonic() + 300
        while not first.exists():
            assert proc.poll() is None, "arvg sample ended before its first shard"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not out.exists()
    assert sorted(p.name for p in first.parent.glob("shard_*")) == ["shard_00000.npz"]
    assert _sample(out, 2) == 0
    assert out.read_bytes() == baseline_file.read_bytes()
    assert not first.parent.exists()


def test_failure_keeps_finished_shards(baseline, tmp_path, monkeypatch):
    out = tmp_path / "f.npz"
    write = sample_shards.write_shard

    def write_then_fail(directory, index, *a):
        if index == 1:
            raise RuntimeError("disk full")
        write(directory, index, *a)

    monkeypatch.setattr(sample_shards, "write_shard", write_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        _sample(out, 2)
    shards = sample_shards.shard_dir(out)
    assert [p.name for p in shards.glob("shard_*")] == ["shard_00000.npz"]
    np.testing.assert_array_equal(_load(shards / "shard_00000.npz")["arr_0"], baseline["arr_0"][:5])


def test_other_settings_refused_on_existing_shards(tmp_path, capsys):
    out = tmp_path / "x.npz"
    shards = sample_shards.shard_dir(out)
    sample_shards.open_run(shards, {"seed": 3, "num_images": N, "shard_size": 7})
    assert _sample(out, 2) == 2
    err = capsys.readouterr().err
    assert "holds shards of another run" in err and "shard_size" in err
    out.write_bytes(b"")
    assert _sample(out, 2) == 2
    assert "exists" in capsys.readouterr().err


def test_sizes_and_labels_helpers():
    assert sample_shards.num_shards(12, 5) == 3
    assert sample_shards.shard_range(2, 12, 5) == (10, 12)
    np.testing.assert_array_equal(sample_shards.labels_for(4, 8, 2, 3), [2, 2, 0, 0])


def test_processes_split_the_shards_and_their_union_is_the_one_process_run(
    baseline, tmp_path, monkeypatch, capsys
):
    """Two processes of a job array (ARVG_PROCESS_INDEX / _COUNT, as `jax.process_index()` /
    `process_count()` under jax.distributed): each writes its own shards; process 0 writes --out
    once all exist, and its rerun skips the finished shards."""
    out = tmp_path / "m.npz"
    shards = sample_shards.shard_dir(out)
    written = []
    write = sample_shards.write_shard

    def record(directory, index, *a):
        written.append(index)
        write(directory, index, *a)

    monkeypatch.setattr(sample_shards, "write_shard", record)
    monkeypatch.setenv("ARVG_PROCESS_COUNT", "2")
    monkeypatch.setenv("ARVG_PROCESS_INDEX", "0")
    assert _sample(out, 2) == 0  # shards 0 and 2; shard 1 is process 1's
    assert written == [0, 2] and not out.exists()
    assert "1 of 3 shards belong to other processes" in capsys.readouterr().err
    monkeypatch.setenv("ARVG_PROCESS_INDEX", "1")
    assert _sample(out, 3) == 0  # another batch size: speed only
    assert written == [0, 2, 1] and not out.exists()
    assert sorted(p.name for p in shards.glob("shard_*")) == [
        f"shard_0000{i}.npz" for i in range(3)
    ]
    monkeypatch.setenv("ARVG_PROCESS_INDEX", "0")
    assert _sample(out, 2) == 0  # restarted: nothing left to generate, joins the shards
    assert written == [0, 2, 1]
    got = _load(out)
    for k in baseline:
        np.testing.assert_array_equal(got[k], baseline[k])

"""Tests for converters.check_finite / find_nonfinite (converters/_finite.py)."""

from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np
import pytest

from converters import (
    CheckpointError,
    NonFinite,
    _finite,
    check_finite,
    find_nonfinite,
    open_state_dict,
)


def test_finite_state_dict_passes(tmp_path):
    sd = {
        "w": np.ones((3, 5), np.float32),
        "b": np.zeros(7, ml_dtypes.bfloat16),
        "idx": np.arange(4),  # ints and bools are never non-finite
        "mask": np.ones(3, bool),
        "empty": np.zeros((0, 3), np.float32),
        "scalar": np.float64(2.0),
    }
    assert check_finite(sd, tmp_path / "a.pth") == []


def test_message_names_file_keys_and_counts(tmp_path):
    w = np.ones((4, 6), np.float32)
    w[1, 2] = w[3, 0] = np.nan
    w[0, 0] = np.inf
    head = np.full(5, -np.inf, np.float16)
    sd = {"ok": np.ones(3, np.float32), "blocks.0.w": w, "head.b": head}
    with pytest.raises(CheckpointError) as e:
        check_finite(sd, tmp_path / "m.pth")
    assert str(e.value) == (
        f"{tmp_path / 'm.pth'}: non-finite values in 2 of 3 tensors: "
        "'blocks.0.w' (2 NaN, 1 +Inf of 24), 'head.b' (5 -Inf of 5); "
        "pass --allow-nonfinite to load it anyway"
    )
    found = check_finite(sd, tmp_path / "m.pth", allow_nonfinite=True)
    assert found == [NonFinite("blocks.0.w", 2, 1, 0, 24), NonFinite("head.b", 0, 0, 5, 5)]


def test_message_stays_short_with_many_bad_tensors(tmp_path):
    sd = {f"t{i}": np.array([np.nan], np.float32) for i in range(50)}
    with pytest.raises(
        CheckpointError,
        match=r"in 50 of 50 tensors: 't0' .*'t2' \(1 NaN of 1\) "
        r"and 47 more; pass",
    ) as e:
        check_finite(sd, "x.pth")
    assert len(str(e.value)) < 200 and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "dtype", [ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, np.float64, np.complex64]
)
def test_dtypes(dtype):
    a = np.array([1.0, np.nan, 2.0, 3.0]).astype(dtype)
    assert find_nonfinite({"a": a}) == [NonFinite("a", 1, 0, 0, 4)]


def test_large_and_strided_arrays_are_checked_in_blocks(monkeypatch):
    monkeypatch.setattr(_finite, "_CHUNK", 16)
    big = np.zeros((10, 10), np.float32)
    big[9, 9] = np.nan
    big[0, 1] = -np.inf
    strided = np.lib.stride_tricks.as_strided(  # a saved expand(): overlapping, read-only
        np.array([np.inf, 1.0], np.float32), (20, 2), (0, 4), writeable=False
    )
    assert find_nonfinite({"big": big, "t": big.T, "strided": strided}) == [
        NonFinite("big", 1, 0, 1, 100),
        NonFinite("t", 1, 0, 1, 100),
        NonFinite("strided", 0, 20, 0, 40),
    ]


def test_attention_masks_may_hold_minus_inf():
    mask = np.triu(np.full((3, 3), -np.inf, np.float32), 1)
    assert find_nonfinite({"attn_bias_for_masking": mask, "blocks.0.attn_mask": mask}) == []
    assert find_nonfinite({"mask": mask}, mask_keys=None) == [NonFinite("mask", 0, 0, 3, 9)]
    mask[0, 0] = np.nan  # NaN is never expected
    assert find_nonfinite({"attn_bias_for_masking": mask}) == [
        NonFinite("attn_bias_for_masking", 1, 0, 0, 9)
    ]
    # Not masks: a learned token or a bias parameter.
    bad = np.array([-np.inf], np.float32)
    assert len(find_nonfinite({"mask_token": bad, "blocks.0.attn.q_bias": bad})) == 2


def test_lazy_tensors_are_read(tmp_path):
    a = np.array([0.0, np.nan], np.float32)
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    text = json.dumps(header).encode()
    path = tmp_path / "a.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + a.tobytes())
    with pytest.raises(CheckpointError, match=r"'a' \(1 NaN of 2\)"):
        check_finite(open_state_dict(path), path)


def test_reference_fixtures_are_finite(reference):
    from converters import load_state_dict

    # var.pth has attn_bias_for_masking (0 / -Inf): the default masks pattern lets it pass.
    fixtures = [
        ("var/var.pth", None),
        ("var/vae.pth", None),
        ("rar/rar.pth", None),
        ("rar/maskgit_vqgan.pth", None),
        ("par/par.pth", "model"),
        ("par/llamagen_vq16.pth", "model"),
        ("mar/mar.pth", "model_ema"),
        ("mar/kl16.ckpt", "model"),
        ("eval/inception.pth", None),
    ]
    for rel, key in fixtures:
        path = reference(*rel.split("/"))
        assert check_finite(load_state_dict(path, key=key), path) == []

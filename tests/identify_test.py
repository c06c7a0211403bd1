"""Tests for converters.identify / mismatch_report (converters/_identify.py, _signatures.py)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from converters import identify, mismatch_report, open_state_dict, read_checkpoint
from converters._identify import _norm
from converters._signatures import SIGNATURES

MANIFESTS = {  # manifest: (family, component, preset)
    "var_d16": ("var", "transformer", "var-d16"),
    "var_d20": ("var", "transformer", "var-d20"),
    "var_d24": ("var", "transformer", "var-d24"),
    "var_d30": ("var", "transformer", "var-d30"),
    "vae_ch160v4096z32": ("var", "tokenizer", "vae_ch160v4096z32"),
    "rar_b": ("rar", "transformer", "rar-b"),
    "rar_l": ("rar", "transformer", "rar-l"),
    "rar_xl": ("rar", "transformer", "rar-xl"),
    "rar_xxl": ("rar", "transformer", "rar-xxl"),
    "maskgit_vqgan": ("rar", "tokenizer", "maskgit-vqgan"),
    "par_xl": ("par", "transformer", "par-xl-4x"),
    "par_xxl": ("par", "transformer", "par-xxl-4x"),
    "par_3b": ("par", "transformer", "par-3b-4x"),
    "par_3b_16x": ("par", "transformer", "par-3b-16x"),
    "llamagen_vq16": ("par", "tokenizer", "vq-16"),
    "mar_base": ("mar", "transformer", "mar-base"),
    "mar_large": ("mar", "transformer", "mar-large"),
    "mar_huge": ("mar", "transformer", "mar-huge"),
    "kl16_vae": ("mar", "tokenizer", "kl16"),
}
FIXTURES = {  # fixture checkpoint: (family, component, wrapper key)
    "var/var.pth": ("var", "transformer", None),
    "var/vae.pth": ("var", "tokenizer", None),
    "rar/rar.pth": ("rar", "transformer", None),
    "rar/maskgit_vqgan.pth": ("rar", "tokenizer", None),
    "par/par.pth": ("par", "transformer", "model"),
    "par/llamagen_vq16.pth": ("par", "tokenizer", "model"),
    "mar/mar.pth": ("mar", "transformer", "model_ema"),
    "mar/kl16.ckpt": ("mar", "tokenizer", "model"),
    "eval/inception.pth": ("eval", "inception", None),
}


def manifest(reference, name):
    path = (
        reference("eval", "inception_manifest.json")
        if name == "inception"
        else reference("manifests", f"{name}.json")
    )
    return json.loads(path.read_text())


def keys_of(man):
    return [k for k in man if not k.startswith("__")]


def matching_signatures(keys):
    normed = {_norm(k) for k in keys}
    return [s for s in SIGNATURES if set(s.keys) <= normed and not normed & set(s.absent)]


@pytest.mark.parametrize("name", list(MANIFESTS))
def test_every_manifest_is_identified_with_its_size(reference, name):
    man = manifest(reference, name)
    got = identify(man)
    assert (got.family, got.component, got.preset) == MANIFESTS[name], got
    assert got.preset in got.hint and got.hint.startswith("this looks like ")
    assert len(matching_signatures(keys_of(man))) == 1
    # Keys alone: the same kind; a preset only where the block counts decide it.
    bare = identify(keys_of(man))
    assert (bare.family, bare.component) == MANIFESTS[name][:2]
    assert bare.preset in (None, MANIFESTS[name][2])


def test_released_sizes_known_from_depth_alone(reference):
    assert identify(keys_of(manifest(reference, "var_d30"))).preset == "var-d30"
    assert identify(keys_of(manifest(reference, "mar_huge"))).preset == "mar-huge"
    # rar-b and rar-l both have 24 blocks: width decides.
    assert identify(keys_of(manifest(reference, "rar_b"))).preset is None


def test_inception_layouts(reference):
    man = manifest(reference, "inception")
    got = identify(man)
    assert (got.family, got.component, got.preset) == ("eval", "inception", "inception-2015-12-05")
    assert "torch-fidelity key order" in got.hint
    # torchvision's Inception3 (pytorch-fid's file) registers each conv before its BN.
    reordered = dict(sorted(man.items(), key=lambda kv: ".bn." in kv[0]))
    assert "pytorch-fid / torchvision key order" in identify(reordered).hint
    imagenet = {**man, "fc.weight": [[1000, 2048], "torch.float32"]}
    assert identify(imagenet).preset is None and "NOT the FID weights" in identify(imagenet).hint
    # pytorch-fid's InceptionV3 module: Sequential blocks, no fc.
    wrapper = ["blocks.0.0.conv.weight", "blocks.0.0.bn.weight"]
    wrapper += ["blocks.3.2.branch_pool.conv.weight"]
    assert (identify(wrapper).family, identify(wrapper).component) == ("eval", "inception")


@pytest.mark.parametrize("rel", list(FIXTURES))
def test_every_fixture_checkpoint_is_identified(reference, rel):
    family, component, key = FIXTURES[rel]
    path = reference(*rel.split("/"))
    tree = read_checkpoint(path, lazy=True)  # wrapper and all
    got = identify(tree)
    assert (got.family, got.component, got.key) == (family, component, key), got
    flat = identify(open_state_dict(path, key=key))
    assert (flat.family, flat.component, flat.preset) == (got.family, got.component, got.preset)
    if key is not None:
        assert f"under key {key!r}" in got.hint
    # Small random-weight configs of the releases: sized, but not a released size (except the
    # tokenizers and Inception whose fixture keeps the release's shapes).
    if got.preset is None:
        assert "not a released size" in got.hint, got.hint
    assert len(matching_signatures(open_state_dict(path, key=key))) == 1


def test_fixture_sizes_come_from_config(reference):
    cfg = json.loads(reference("var", "config.json").read_text())
    got = identify(open_state_dict(reference("var", "var.pth")))
    assert got.facts == {"depth": cfg["depth"], "width": 64 * cfg["depth"]}
    cfg = json.loads(reference("mar", "config.json").read_text())["mar"]
    got = identify(read_checkpoint(reference("mar", "mar.pth"), lazy=True))
    assert got.facts == {"depth": cfg["encoder_depth"], "width": cfg["encoder_embed_dim"]}


def test_prefix_and_unknown():
    sd = {
        f"module.{k}": np.zeros(s)
        for k, s in [
            ("pos_start", (1, 1, 1024)),
            ("lvl_embed.weight", (10, 1024)),
            ("word_embed.weight", (1024, 32)),
        ]
    }
    got = identify(sd)
    assert (got.family, got.prefix) == ("var", "module.")
    assert "prefixed 'module.'" in got.hint
    unknown = identify({"foo.weight": np.zeros(3)})
    assert unknown.family is None and "does not look like" in unknown.hint
    assert identify([]).family is None


def quoted(message):
    return re.findall(r"'[^']*'|\b\w+\.[\d,-]+\.\*", message)


def test_mismatch_report_for_the_wrong_component(reference):
    want, got = manifest(reference, "var_d16"), manifest(reference, "vae_ch160v4096z32")
    message = mismatch_report(want, got)
    assert message.startswith(
        "this looks like a VAR VQVAE tokenizer (vae_ch160v4096z32), not a VAR transformer "
        "(var-d16); pass it as --vae; "
    ), message
    assert "220 of 220 expected keys missing" in message and "324 unexpected" in message
    assert len(quoted(message)) <= 10 and len(message) < 500 and "\n" not in message


def test_mismatch_report_for_the_wrong_size(reference):
    message = mismatch_report(manifest(reference, "var_d16"), manifest(reference, "var_d20"))
    assert message.startswith(
        "this looks like a VAR transformer (var-d20), not a VAR "
        "transformer (var-d16); pass it as --ckpt with --model var-d20; "
    )
    assert "52 unexpected (blocks.16-19.*)" in message  # whole blocks fold into one item
    assert len(quoted(message)) <= 10


def test_mismatch_report_folds_missing_blocks(reference):
    depth = json.loads(reference("var", "config.json").read_text())["depth"]
    full = manifest(reference, "var_d16")
    message = mismatch_report(full, open_state_dict(reference("var", "var.pth")))
    missing = sum(
        1 for k in full if re.match(r"blocks\.(\d+)\.", k) and int(k.split(".")[1]) >= depth
    )
    assert f"{missing} of 220 expected keys missing (blocks.{depth}-15.*)" in message


def test_mismatch_report_small_differences():
    want = {"a.weight": (3, 4), "b.bias": (4,), "c": (1,)}
    assert (
        mismatch_report(
            want, {"a.weight": np.zeros((3, 4)), "b.bias": np.zeros(4), "c": np.zeros(1)}
        )
        == ""
    )
    message = mismatch_report(
        want, {"a.weight": np.zeros((4, 3)), "b.bias": np.zeros(4), "d": np.zeros(2)}
    )
    assert message == (
        "this does not look like any checkpoint arvg knows (VAR, RAR, PAR, MAR, their "
        "tokenizers, Inception); 1 of 3 expected keys missing ('c'); 1 unexpected ('d'); "
        "1 mis-shaped, got vs expected ('a.weight' [4, 3] vs [3, 4])"
    )
    many = mismatch_report({f"k{i}": (1,) for i in range(100)}, {})
    assert many.endswith("100 of 100 expected keys missing ('k0', 'k1', 'k2', 'k3', 'k4', ...)")


def test_mismatch_report_names_a_wrapper_prefix(reference):
    want = manifest(reference, "var_d16")
    message = mismatch_report(want, {f"module.{k}": v for k, v in keys_and_shapes(want).items()})
    assert message.startswith("every key carries the prefix 'module.'")


def keys_and_shapes(man):
    return {k: v for k, v in man.items() if not k.startswith("__")}

"""`arvg convert` / `arvg_jax.conversion`: torch file -> converted checkpoint -> the same model.

The reference VAR (official-code fixture) converted to an orbax directory or a safetensors file
loads into params, logits and greedy tokens bit-identical to converting the torch files directly;
bfloat16 storage loads and runs; quantizing from a converted directory equals quantizing from the
torch file; foreign and truncated checkpoints are refused with one line naming what is wrong.
"""

import json
import shutil

import jax
import numpy as np
import pytest

from arvg_jax import conversion, families, models
from arvg_jax.cli import build_parser, main
from converters import safetensors_reader


def _flat(tree):
    from flax import traverse_util

    return traverse_util.flatten_dict(tree, sep="/")


def _assert_same_tree(a, b):
    fa, fb = _flat(a), _flat(b)
    assert list(fa) == list(fb) or sorted(fa) == sorted(fb)
    for k in fa:
        x, y = np.asarray(fa[k]), np.asarray(fb[k])
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert np.array_equal(x, y), k


@pytest.fixture(scope="module")
def ref():
    from conftest import require_reference

    return require_reference("var")


@pytest.fixture(scope="module")
def direct(ref):
    return models.load_float("var", ref / "var.pth", ref / "vae.pth", ref / "config.json")


@pytest.fixture(scope="module")
def converted(ref, tmp_path_factory):
    """{(fmt, dtype): path} of the reference VAR converted four ways."""
    root = tmp_path_factory.mktemp("conv")
    out = {}
    for fmt in ("orbax", "safetensors"):
        for dtype in ("float32", "bfloat16"):
            path = root / (f"var-{dtype}" + (".safetensors" if fmt == "safetensors" else ""))
            report = conversion.convert(
                "var",
                ref / "var.pth",
                ref / "vae.pth",
                config=ref / "config.json",
                out=path,
                dtype=dtype,
                fmt=fmt,
                progress=False,
            )
            assert report.parts["params"]["source_keys"] > 0
            out[fmt, dtype] = path
    return out


def test_config_records_family_configs_sources_and_dtype(ref, converted):
    doc = json.loads((converted["orbax", "float32"] / "config.json").read_text())
    assert doc["format"] == conversion.FORMAT and doc["family"] == "var"
    assert doc["dtype"] == "float32"
    official = json.loads((ref / "config.json").read_text())
    assert doc["model_config"]["depth"] == official["depth"]
    assert doc["sources"]["ckpt"]["file"] == "var.pth"
    assert doc["sources"]["ckpt"]["sha256"] == conversion.sha256(ref / "var.pth")
    assert doc["sources"]["vae"]["sha256"] == conversion.sha256(ref / "vae.pth")
    assert "arvg_version" in doc
    # The safetensors file carries the same document in its header, read by our reader.
    path = converted["safetensors", "float32"]
    with open(path, "rb") as f:
        entries, meta = safetensors_reader.read_header(f, path.stat().st_size)
    assert meta["format"] == conversion.FORMAT
    assert json.loads(meta["config"])["model_config"] == doc["model_config"]
    assert len(entries) == sum(len(v) for v in doc["arrays"].values())


@pytest.mark.parametrize("fmt", ["orbax", "safetensors"])
def test_float32_params_are_bit_identical(direct, converted, fmt):
    m = models.load_float(None, converted[fmt, "float32"], None)
    assert m.family == "var" and m.cfg == direct.cfg and m.vae_cfg == direct.vae_cfg
    _assert_same_tree(direct.params, m.params)
    _assert_same_tree(direct.vae_params, m.vae_params)


def test_logits_and_greedy_tokens_are_bit_identical(ref, direct, converted):
    io = np.load(ref / "io.npz")
    labels, tokens = io["tf_labels"].astype(np.int32), io["tf_idx"].astype(np.int32)
    loaded = {k: models.load_float(None, p, None) for k, p in converted.items()}
    want = np.asarray(direct.logits(labels, tokens))
    for fmt in ("orbax", "safetensors"):
        got = np.asarray(loaded[fmt, "float32"].logits(labels, tokens))
        assert np.array_equal(want, got), fmt
    # bfloat16 storage: loads as float32 (bf16-rounded values) and runs.
    for fmt in ("orbax", "safetensors"):
        m = loaded[fmt, "bfloat16"]
        flat = _flat(m.params)
        for k, v in _flat(direct.params).items():
            v = np.asarray(v)
            if np.issubdtype(v.dtype, np.floating):
                rounded = v.astype(jax.numpy.bfloat16).astype(np.float32)
                assert flat[k].dtype == np.float32 and np.array_equal(flat[k], rounded), k
        got = np.asarray(m.logits(labels, tokens))
        assert got.shape == want.shape and np.all(np.isfinite(got))
        assert not np.array_equal(got, want)  # rounding happened
    # Greedy CFG generation: same tokens and images.
    a = direct.generate(0, labels[:1], greedy=True)
    b = loaded["orbax", "float32"].generate(0, labels[:1], greedy=True)
    assert np.array_equal(np.asarray(a["tokens"]), np.asarray(b["tokens"]))
    assert np.array_equal(np.asarray(a["images"]), np.asarray(b["images"]))


@pytest.mark.slow  # a second calibration (~30 s)
def test_quantizing_a_converted_directory_equals_quantizing_the_torch_file(
    ref, direct, converted, tmp_path
):
    import quant

    # The CLI's model loading with --ckpt DIR (no --model, no --vae).
    args = build_parser().parse_args(
        ["quantize", "--ckpt", str(converted["orbax", "float32"]), "--out", str(tmp_path / "q")]
    )
    from_dir = models.model_from_args(args)
    io = np.load(ref / "io.npz")
    labels, tokens = io["tf_labels"].astype(np.int32), io["tf_idx"].astype(np.int32)
    out = []
    for m in (direct, from_dir):
        batch = m.calibration_batch(labels, tokens)
        qparams, _ = quant.quantize(m.params, "rtn:w8a8", m.quant_adapter(), batch)
        out.append(qparams)
    qa, qb = (quant._tree.flatten(q) for q in out)
    assert sorted(qa) == sorted(qb)
    n_quant = 0
    for k in qa:
        fa, fb = jax.tree.leaves(qa[k]), jax.tree.leaves(qb[k])
        is_quant = isinstance(qa[k], (quant.QArray, quant.ActQuant))
        n_quant += is_quant
        assert not is_quant or type(qa[k]) is type(qb[k]), k
        assert len(fa) == len(fb), k
        for x, y in zip(fa, fb):
            assert np.array_equal(np.asarray(x), np.asarray(y)), k
    assert n_quant > 0


def _refusal(path, *needles):
    with pytest.raises(conversion.ConvertedCheckpointError) as e:
        models.load_float(None, path, None)
    msg = str(e.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_foreign_and_truncated_checkpoints_are_refused_with_one_line(converted, tmp_path):
    good = converted["orbax", "float32"]
    empty = tmp_path / "empty"
    empty.mkdir()
    _refusal(empty, "no config.json")

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "llama"}))
    _refusal(foreign, "not an arvg-jax converted checkpoint")

    quantized = tmp_path / "quantized"
    quantized.mkdir()
    (quantized / "arvg.json").write_text("{}")
    _refusal(quantized, "--quantized")

    no_tok = tmp_path / "no_tokenizer"
    shutil.copytree(good, no_tok)
    shutil.rmtree(no_tok / "tokenizer")
    _refusal(no_tok, "truncated", "tokenizer/")

    broken = tmp_path / "broken"
    shutil.copytree(good, broken)
    data = sorted(f for f in (broken / "params").rglob("*") if f.is_file() and f.parent.name == "d")
    data[0].unlink()  # an orbax data file
    _refusal(broken, "truncated", "params/", "is missing")

    short = tmp_path / "short"
    shutil.copytree(good, short)
    data = sorted(
        f for f in (short / "tokenizer").rglob("*") if f.is_file() and f.parent.name == "d"
    )
    data[0].write_bytes(data[0].read_bytes()[:10])
    _refusal(short, "truncated", "tokenizer/", "bytes")

    corrupt = tmp_path / "corrupt"  # same sizes, other bytes: orbax's own error, on one line
    shutil.copytree(good, corrupt)
    doc = json.loads((corrupt / "config.json").read_text())
    doc.pop("files")
    (corrupt / "config.json").write_text(json.dumps(doc))
    data = sorted(
        f for f in (corrupt / "params").rglob("*") if f.is_file() and f.parent.name == "d"
    )
    data[0].unlink()
    _refusal(corrupt, "corrupt params/")

    fewer = tmp_path / "fewer"
    shutil.copytree(good, fewer)
    doc = json.loads((fewer / "config.json").read_text())
    doc["arrays"]["params"]["extra/kernel"] = [[3, 5], "float32"]
    (fewer / "config.json").write_text(json.dumps(doc))
    _refusal(fewer, "truncated", "extra/kernel")

    st = converted["safetensors", "float32"]
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    msg = _refusal(cut, "cut.safetensors")
    assert len(msg) < 400


def test_cli_refuses_a_foreign_ckpt_directory_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    rc = main(["generate", "--ckpt", str(bad), "--classes", "1", "--out", str(tmp_path / "g.png")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "no config.json" in err


def test_model_flag_must_agree_with_a_converted_ckpt(converted):
    m = models.load_float("var", converted["orbax", "float32"], None)
    assert m.family == "var"
    with pytest.raises(conversion.ConvertedCheckpointError, match="not --model var-d16"):
        models.load_float("var-d16", converted["orbax", "float32"], None)


# Each family's reference fixture: (transformer file, tokenizer file, --ckpt-key).
FIXTURE_FILES = {
    "var": ("var.pth", "vae.pth", None),
    "rar": ("rar.pth", "maskgit_vqgan.pth", None),
    "par": ("par.pth", "llamagen_vq16.pth", None),
    "mar": ("mar.pth", "kl16.ckpt", "model_ema"),
}


@pytest.mark.parametrize("name", sorted(families.all_families()))
def test_cli_convert_every_family_round_trips(name, tmp_path, capsys):
    """`arvg convert` of each registered family's reference fixture (torch files): the loaded
    params equal the direct conversion's; --out is not replaced without --overwrite; a converted
    directory converts on to a bfloat16 safetensors file."""
    from conftest import require_reference

    assert name in FIXTURE_FILES, f"add {name}'s fixture files to FIXTURE_FILES"
    ref = require_reference(name)
    ckpt, vae, key = FIXTURE_FILES[name]
    out = tmp_path / name
    argv = [
        "convert",
        "--model",
        name,
        "--config",
        str(ref / "config.json"),
        "--ckpt",
        str(ref / ckpt),
        "--vae",
        str(ref / vae),
        "--out",
        str(out),
        "--quiet",
    ]
    argv += ["--ckpt-key", key] if key else []
    assert main(argv) == 0
    report = capsys.readouterr().out
    assert str(out) in report and "bytes on disk" in report and ckpt in report
    m = models.load_float(None, out, None)
    want = models.load_float(name, ref / ckpt, ref / vae, ref / "config.json", key=key)
    assert m.family == name and m.cfg == want.cfg and m.vae_cfg == want.vae_cfg
    _assert_same_tree(want.params, m.params)
    _assert_same_tree(want.vae_params, m.vae_params)
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    st = tmp_path / f"{name}.safetensors"
    argv = [
        "convert",
        "--ckpt",
        str(out),
        "--out",
        str(st),
        "--format",
        "safetensors",
        "--dtype",
        "bfloat16",
        "--quiet",
    ]
    assert main(argv) == 0
    assert models.load_float(None, st, None).cfg == want.cfg


def test_inspect_lists_a_converted_directory(converted, capsys):
    assert main(["inspect", str(converted["orbax", "bfloat16"])]) == 0
    out = capsys.readouterr().out
    assert "converted var model" in out and "stored bfloat16" in out
    assert "params/head/kernel" in out and "sha256" in out

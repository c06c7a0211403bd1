"""arvg_jax.families: the registry finds every family folder; presets and keys per image."""

import ast
import dataclasses
import pathlib
import re

import jax
import numpy as np
import pytest

from arvg_jax import families

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_registry_lists_var_presets_and_the_packaged_tiny_model():
    var = families.get("var")
    presets = var.presets()
    assert {"var-d16", "var-d20", "var-d24", "var-d30", "var-d36", "var-tiny"} <= set(presets)
    assert presets["var-tiny"].packaged and not presets["var-d16"].packaged
    assert "var" in families.model_choices() and "var-d30" in families.model_choices()
    fam, preset = families.preset("var-d30")
    assert fam is var and preset.config().depth == 30
    with pytest.raises(ValueError, match="unknown model 'var-d99'"):
        families.preset("var-d99")
    with pytest.raises(ValueError, match="unknown model family"):
        families.get("nope")


def test_configs_hold_architecture_only():
    """No execution option is a config field of any family (they live in ExecOptions)."""
    from arvg_jax.options import FIELDS

    for fam in families.all_families().values():
        names = {f.name for f in dataclasses.fields(fam.config_cls)}
        assert not names & set(FIELDS), (fam.name, names & set(FIELDS))


def test_image_keys_depend_on_the_index_only():
    k = families.image_keys(5, 0, 6)
    np.testing.assert_array_equal(families.image_keys(5, 2, 3), k[2:5])
    assert k.shape == (6, 2) and len({tuple(np.asarray(r)) for r in k}) == 6
    np.testing.assert_array_equal(k[3], jax.random.fold_in(jax.random.PRNGKey(5), 3))


def test_sampling_arguments_have_official_defaults():
    args = families.get("var").sampling_arguments()
    assert {a.name: a.default for a in args} == {
        "cfg": 1.5,
        "top_k": 900,
        "top_p": 0.96,
        "greedy": False,
    }
    assert families.sampling_arguments()["top_k"].flag == "--top-k"


def _imports(path: pathlib.Path) -> list[str]:
    """Every module a file imports (from its syntax tree: docstring examples do not count)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def test_no_module_outside_a_family_folder_imports_one():
    """Adding a family is one folder: the rest of the house reaches families via the registry.
    (Converters are per-family modules by the package layout: `converters/<family>.py`.)"""
    offenders = []
    for root in ("arvg_jax", "quant"):
        for path in (REPO / root).rglob("*.py"):
            rel = path.relative_to(REPO).as_posix()
            if rel.startswith("arvg_jax/families/"):
                continue
            for mod in _imports(path):
                family_module = re.match(r"arvg_jax\.families\.\w+", mod) and mod.count(".") >= 2
                if family_module and mod.split(".")[2] in families.all_families():
                    offenders.append(f"{rel}: {mod}")
    assert not offenders, offenders


def test_quant_imports_no_model_code():
    bad = [
        p.relative_to(REPO).as_posix()
        for p in (REPO / "quant").rglob("*.py")
        if any(m == "arvg_jax" or m.startswith("arvg_jax.") for m in _imports(p))
    ]
    assert not bad, bad


def test_wrong_file_for_the_model_is_named_short(reference):
    """The tokenizer passed as --ckpt: one short line saying what the file looks like."""
    from arvg_jax.models import load_float
    from converters import ConversionError

    d = reference("var")
    with pytest.raises(ConversionError) as e:
        load_float("var", d / "vae.pth", d / "vae.pth", d / "config.json")
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 900, len(msg)
    assert "VQVAE" in msg and "--vae" in msg and "vae.pth: does not fit the transformer" in msg


def test_nonfinite_weights_are_refused_unless_allowed(reference, tmp_path):
    from _torch_writer import tensor, write_zip

    import converters
    from arvg_jax.models import load_float

    d = reference("var")
    sd = converters.load_state_dict(d / "var.pth")
    name = next(k for k, v in sd.items() if np.asarray(v).dtype == np.float32 and v.size > 1)
    poisoned = {k: np.array(v) for k, v in sd.items()}
    poisoned[name].flat[0] = np.nan
    bad = tmp_path / "var.pth"  # the same checkpoint with one NaN, in the torch.save layout
    write_zip(bad, {k: tensor(v) for k, v in poisoned.items()})
    with pytest.raises(converters.CheckpointError, match=name):
        load_float("var", bad, d / "vae.pth", d / "config.json")
    m = load_float("var", bad, d / "vae.pth", d / "config.json", allow_nonfinite=True)
    assert m.family == "var"

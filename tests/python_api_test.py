"""README's "Python API" examples run as written (public names only, var-test random weights)."""

import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _section_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    start = text.index("## Python API")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], re.DOTALL)


def test_examples_use_public_names_only():
    blocks = _section_blocks()
    assert len(blocks) >= 3
    for block in blocks:
        assert not re.search(r"\b(import|from)\s+\S*\._", block), block
        assert not re.search(r"\.\_[a-z]", block), block


def test_readme_python_api_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in _section_blocks():
        exec(compile(block, "README.md (Python API)", "exec"), namespace)  # noqa: S102 (the README examples)
    assert (tmp_path / "converted" / "var-test" / "config.json").is_file()
    assert namespace["chosen"].shape == (3,)


@pytest.mark.parametrize("name", ["load", "convert", "families", "ExecOptions", "Model"])
def test_arvg_jax_exports(name):
    import arvg_jax

    assert name in arvg_jax.__all__ and getattr(arvg_jax, name) is not None


def test_quant_exports_have_docstring_examples():
    import quant

    for name in ("quantize", "rtn", "smoothquant", "ptq4arvg", "gps", "stwq", "dgc"):
        fn = getattr(quant, name)
        assert name in quant.__all__ and "Example::" in (fn.__doc__ or ""), name

"""README's two set-up commands are exactly the ones CI runs."""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]


def _blocks(text):
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, re.DOTALL)]


def test_readme_setup_commands_are_what_ci_runs():
    blocks = _blocks((REPO / "README.md").read_text())
    install, tests = blocks[0], blocks[1]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert install in ci, install
    assert tests in ci, tests
    assert "arvg demo" in install

import pytest

from arvg_jax.progress import Progress, track


def test_bar_counts_and_prints_rate(capsys):
    bar = Progress(3, "calib", width=7)
    for name in ("a", "b", "c"):
        bar.update(postfix=name)
    bar.close()
    bar.close()  # idempotent
    out = capsys.readouterr()
    assert out.out == ""  # bars never go to stdout
    last = out.err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("calib:") and "3/3" in last and last.endswith(", c]")
    assert "it/s" in last or "s/it" in last  # the rate
    assert "|" + "█" * 7 + "|" in last or "|" + "#" * 7 + "|" in last  # a full bar, 7 wide
    assert bar.n == 3


def test_disabled_bar_is_silent_but_counts(capsys):
    bar = Progress(4, "x", enabled=False)
    bar.update(2)
    bar.update(5)  # clamps at total
    bar.close()
    assert bar.n == 4 and bar.total == 4
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("total", [0, -3])
def test_empty_total_shows_one_step(capsys, total):
    bar = Progress(total, "none", enabled=False)
    assert bar.total == 1


def test_track_yields_items_and_finishes(capsys):
    assert list(track(iter("abcd"), "t", total=4)) == list("abcd")
    assert list(track([1, 2], enabled=False)) == [1, 2]
    assert "4/4" in capsys.readouterr().err

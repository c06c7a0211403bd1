"""quant.coverage: rules are data, first match wins, and a silent no-match is an error."""

import pytest

from quant.coverage import Coverage, FoldRule, QuantRule

LAYERS = ("embed", "b_0/qkv", "b_0/proj", "b_1/qkv", "b_1/proj", "head")
RULES = (
    QuantRule(path=r"embed", kind="embed", keep_float=True),
    QuantRule(
        path=r"(?P<b>b_\d+)/qkv",
        kind="qkv",
        groups="scale",
        smooth=True,
        fold=FoldRule(norm=r"\g<b>/ada", scale=2, shift=4),
        sink_excluded=True,
    ),
    QuantRule(path=r"b_\d+/.*", kind="other", groups="sink"),
    QuantRule(path=r"head", kind="head"),
)


def test_first_match_wins_and_folds_resolve():
    cov = Coverage(RULES, LAYERS, width=7)
    assert cov.quantized() == LAYERS[1:]
    assert cov.smoothed() == ("b_0/qkv", "b_1/qkv")
    assert cov["b_1/proj"].rule.kind == "other" and cov["b_1/qkv"].rule.kind == "qkv"
    fold = cov["b_1/qkv"].fold
    assert fold.norm_layer == "b_1/ada"
    assert (fold.scale_cols, fold.shift_cols) == (slice(14, 21), slice(28, 35))


def test_unmatched_layers_and_unused_rules_are_errors():
    with pytest.raises(ValueError, match=r"no quantization rule covers layers \['extra'\]"):
        Coverage(RULES, (*LAYERS, "extra"), width=7)
    with pytest.raises(ValueError, match=r"rules that match no layer: \['head'\]"):
        Coverage(RULES, LAYERS[:-1], width=7)
    with pytest.raises(ValueError, match="needs a fold target"):
        QuantRule(path="x", kind="x", smooth=True)


def test_var_rules_reproduce_the_official_coverage():
    from arvg_jax import families
    from arvg_jax.families.var.config import VARConfig

    adapter = families.get("var").quant_adapter(VARConfig.tiny())
    c = VARConfig.tiny().embed_dim
    assert "word_embed" not in adapter.quantized_layers()
    assert adapter.gps_layers() == (
        "blocks_0/attn/qkv",
        "blocks_0/ffn/fc1",
        "blocks_1/attn/qkv",
        "blocks_1/ffn/fc1",
        "head",
    )
    assert adapter.stwq_granularity("blocks_1/ffn/fc2") == "sink"
    assert adapter.fold_target("blocks_1/ffn/fc1").scale_cols == slice(3 * c, 4 * c)
    assert adapter.fold_target("head").norm_layer == "head_nm/ada_lin"


def test_input_sharing_layers_become_fold_siblings():
    layers = ("n_0/w1", "n_0/w3", "n_0/w2")
    rules = (
        QuantRule(
            path=r"(?P<b>n_\d+)/w1",
            kind="w1",
            smooth=True,
            fold=FoldRule(norm=r"\g<b>/ffn_norm", kind="norm_bias"),
        ),
        QuantRule(path=r"(?P<b>n_\d+)/w3", kind="w3", share_input_with=r"\g<b>/w1"),
        QuantRule(path=r"n_\d+/w2", kind="w2"),
    )
    cov = Coverage(rules, layers, width=5)
    fold = cov["n_0/w1"].fold
    assert (fold.norm_layer, fold.kind, fold.siblings) == ("n_0/ffn_norm", "norm_bias", ("n_0/w3",))
    assert cov["n_0/w3"].shares_input_of == "n_0/w1"
    bad = (rules[0], QuantRule(path=r"n_\d+/w3", kind="w3", share_input_with="n_0/w2"), rules[2])
    with pytest.raises(ValueError, match="which has no fold"):
        Coverage(bad, layers, width=5)

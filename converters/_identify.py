"""Guesses what a checkpoint is from its key names and shapes, and explains key mismatches.

`identify` matches the keys against `converters._signatures.SIGNATURES` (after stripping a common
wrapper prefix such as DDP's `module.`, and descending into wrapper dicts such as
`{"model": ..., "model_ema": ...}`), then sizes the match from its shapes and block counts.
`mismatch_report` turns a failed key comparison into one short line that starts with that guess.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

from converters._signatures import SIGNATURES, Signature

_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)")  # a block index: "blocks.12.w" -> 12
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "net.", "generator.", "vae.")


@dataclasses.dataclass(frozen=True)
class Identification:
    """What a checkpoint looks like.

    Attributes:
        family: "var", "rar", "par", "mar", "llamagen", "eval", or None when unknown.
        component: "transformer", "tokenizer", "inception", or None when unknown.
        preset: The released size it matches ("var-d16", "rar-b", "par-3b-16x", "mar-base",
            "vae_ch160v4096z32", "maskgit-vqgan", "vq-16", "kl16", "inception-2015-12-05"), or
            None (another size, or shapes were not given).
        hint: One sentence for a message ("this looks like a VAR VQVAE tokenizer
            (vae_ch160v4096z32); pass it as --vae").
        description: The noun phrase of the hint ("a VAR VQVAE tokenizer (vae_ch160v4096z32)").
        facts: The size facts found (e.g. {"depth": 16, "width": 1024}).
        key: The wrapper entry holding the weights (e.g. "model_ema"), or None.
        prefix: A prefix every key carried and that was stripped to match (e.g. "module.").
    """

    family: str | None
    component: str | None
    preset: str | None
    hint: str
    description: str = "an unrecognised checkpoint"
    facts: dict[str, int] = dataclasses.field(default_factory=dict)
    key: str | None = None
    prefix: str = ""


_UNKNOWN = Identification(
    None,
    None,
    None,
    "this does not look like any checkpoint arvg knows (VAR, RAR, PAR, MAR, their tokenizers, "
    "Inception)",
)


def _shape_of(value: Any) -> tuple[int, ...] | None:
    """The shape of an array, a `LazyTensor`, a shape, or a manifest entry `[shape, dtype]`."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        return tuple(shape)
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], (list, tuple)):
            value = value[0]
        if all(isinstance(d, int) for d in value):
            return tuple(value)
    return None


def _as_shapes(keys_or_state_dict: Any) -> dict[str, tuple[int, ...] | None]:
    if isinstance(keys_or_state_dict, Mapping):
        return {
            k: _shape_of(v)
            for k, v in keys_or_state_dict.items()
            if isinstance(k, str) and not k.startswith("__")  # manifests' "__wrapper__"
        }
    return {k: None for k in keys_or_state_dict}


def _norm(key: str) -> str:
    return _INDEX.sub("*", key)


def _facts(sig: Signature, shapes: dict[str, tuple[int, ...] | None]) -> dict[str, int]:
    facts = {}
    for fact in sig.facts:
        if len(fact) == 2:  # (name, stack): 1 + the largest index under `stack.`
            name, stack = fact
            index = re.compile(rf"{re.escape(stack)}\.(\d+)\.")
            found = [int(m.group(1)) for k in shapes if (m := index.match(k))]
            if found:
                facts[name] = max(found) + 1
        else:
            name, key, axis = fact
            shape = shapes.get(key)
            if shape is not None and len(shape) > axis:
                facts[name] = shape[axis]
    return facts


def _preset(sig: Signature, facts: dict[str, int]) -> str | None:
    """The one preset consistent with the facts (every fact the preset names that was found)."""
    fits = [
        name
        for name, want in sig.presets.items()
        if all(facts.get(k, v) == v for k, v in want.items()) and facts.keys() & want.keys()
    ]
    return fits[0] if len(fits) == 1 else None


def _match(shapes: dict[str, tuple[int, ...] | None]) -> Identification | None:
    normed = {_norm(k) for k in shapes}
    for sig in SIGNATURES:
        if not set(sig.keys) <= normed or normed & set(sig.absent):
            continue
        facts = _facts(sig, shapes)
        preset = _preset(sig, facts)
        if preset is not None:
            description = f"{sig.what} ({preset})"
        elif facts:
            sizes = ", ".join(f"{k} {v}" for k, v in facts.items())
            other = ", not a released size" if sig.presets and len(facts) == len(sig.facts) else ""
            description = f"{sig.what} ({sizes}{other})"
        else:
            description = sig.what
        if sig.component == "inception":
            description += _inception_layout(list(shapes), facts)
        model = sig.component == "transformer" and preset is not None
        use = sig.use + (f" with --model {preset}" if model else "")
        hint = f"this looks like {description}; {use}"
        return Identification(sig.family, sig.component, preset, hint, description, facts)
    return None


def _inception_layout(keys: list[str], facts: dict[str, int]) -> str:
    """torch-fidelity's converter writes each BN before its conv; torchvision's Inception3
    (pytorch-fid's pt_inception-2015-12-05 file) registers the conv first."""
    if facts.get("classes") == 1000:
        return ", torchvision's ImageNet classifier, NOT the FID weights"
    try:
        bn_first = keys.index("Conv2d_1a_3x3.bn.weight") < keys.index("Conv2d_1a_3x3.conv.weight")
    except ValueError:
        return ""
    return ", torch-fidelity key order" if bn_first else ", pytorch-fid / torchvision key order"


def _strip_prefix(shapes: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    for prefix in _WRAPPER_PREFIXES:
        if shapes and all(k.startswith(prefix) for k in shapes):
            return prefix, {k[len(prefix) :]: v for k, v in shapes.items()}
    return None


def _identify_flat(shapes: dict[str, Any], prefix: str = "") -> Identification | None:
    if (found := _match(shapes)) is not None:
        if not prefix:
            return found
        hint = found.hint.replace("; ", f" with every key prefixed {prefix!r}; ", 1)
        return dataclasses.replace(found, hint=hint, prefix=prefix)
    if (stripped := _strip_prefix(shapes)) is not None and len(prefix) < 40:
        return _identify_flat(stripped[1], prefix + stripped[0])
    return None


def identify(keys_or_state_dict: Mapping[str, Any] | Iterable[str]) -> Identification:
    """Guesses what a checkpoint is from its keys (and shapes, where given).

    Args:
        keys_or_state_dict: A state dict (name -> array or `LazyTensor`), a key/shape manifest
            (name -> shape or [shape, dtype]), a wrapped checkpoint tree as
            `read_checkpoint(path, lazy=True)` returns it (`{"model": sd, "model_ema": sd,
            ...}`), or just the key names (then sizes come from block counts alone).

    Returns:
        The identification; `family` is None when nothing matches.
    """
    if isinstance(keys_or_state_dict, Mapping):
        subs = {k: v for k, v in keys_or_state_dict.items() if isinstance(v, Mapping)}
        # A wrapper: prefer EMA weights, as `load_state_dict`'s hint does (MAR: model_ema).
        for key in sorted(subs, key=lambda k: "ema" not in str(k)):
            found = _identify_flat(_as_shapes(subs[key]))
            if found is not None:
                hint = found.hint.replace("; ", f" under key {key!r}; ", 1)
                return dataclasses.replace(found, hint=hint, key=key)
    return _identify_flat(_as_shapes(keys_or_state_dict)) or _UNKNOWN


# --------------------------------------------------------------------------- mismatches


def _summarise(keys: list[str], side: Iterable[str]) -> list[str]:
    """`keys` for a message, whole blocks folded: "blocks.2-15.*" when every key that `side`
    has under blocks 2 to 15 is in `keys` (a depth mismatch), other keys quoted one by one."""
    chosen = set(keys)
    block = re.compile(r"(.*?)\.(\d+)\.")
    members: dict[tuple[str, int], list[str]] = {}
    for k in side:
        if m := block.match(k):
            members.setdefault((m.group(1), int(m.group(2))), []).append(k)
    whole = {b for b, ks in members.items() if all(k in chosen for k in ks)}
    items, folded = [], set()
    for k in keys:
        m = block.match(k)
        b = (m.group(1), int(m.group(2))) if m else None
        if b not in whole:
            items.append(repr(k))
        elif b[0] not in folded:
            folded.add(b[0])
            idx = sorted(i for s, i in whole if s == b[0])
            runs, start = [], idx[0]
            for prev, cur in zip(idx, idx[1:] + [None]):
                if cur != prev + 1:
                    runs.append(f"{start}" if start == prev else f"{start}-{prev}")
                    start = cur
            items.append(f"{b[0]}.{','.join(runs)}.*")
    return items


def _quote(items: list[str], shown: int) -> str:
    """ " (a, b, ...)" naming the first `shown` items; "" when none is shown."""
    if not shown:
        return ""
    more = ", ..." if len(items) > shown else ""
    return f" ({', '.join(items[:shown])}{more})"


def _dims(shape: tuple[int, ...] | None) -> str:
    return "?" if shape is None else f"[{', '.join(map(str, shape))}]"


def mismatch_report(
    expected_keys: Mapping[str, Any] | Iterable[str],
    got_keys: Mapping[str, Any] | Iterable[str],
    *,
    limit: int = 10,
) -> str:
    """One short line on why a checkpoint does not fit a model: first what the checkpoint looks
    like (when that differs from what the model expects), then counts and at most `limit` keys.

    Args:
        expected_keys: The official keys the model needs (names, or name -> shape).
        got_keys: What the checkpoint holds (names, or name -> array / `LazyTensor` / shape).
        limit: How many keys to name in all (missing, unexpected and mis-shaped ones share it;
            a run of whole blocks, "blocks.16-19.*", counts as one).

    Returns:
        E.g. "this looks like a VAR VQVAE tokenizer (vae_ch160v4096z32), not a VAR transformer
        (var-d16); pass it as --vae; 220 of 220 expected keys missing ('pos_start', ...); 324
        unexpected ('encoder.conv_in.weight', ...)". Empty when the keys and shapes agree.
    """
    want, got = _as_shapes(expected_keys), _as_shapes(got_keys)
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    misshaped = [
        k for k in want if k in got and None not in (want[k], got[k]) and want[k] != got[k]
    ]
    if not (missing or unexpected or misshaped):
        return ""
    parts = []
    have, need = identify(got_keys), identify(expected_keys)
    if have.family is None:
        parts.append(have.hint)
    elif have.prefix and not need.prefix:
        parts.append(
            f"every key carries the prefix {have.prefix!r} (a DDP or torch.compile wrapper?); "
            "strip it"
        )
    elif (have.family, have.component, have.preset) != (need.family, need.component, need.preset):
        use = have.hint.split("; ", 1)[1]
        parts.append(f"this looks like {have.description}, not {need.description}; {use}")
    missing_items, unexpected_items = _summarise(missing, want), _summarise(unexpected, got)
    # Share the key budget: each list gets a fair share (mis-shaped entries are long, so at most
    # 3 of them, and at most 5 of the others), unused shares pass on.
    lists, caps = [missing_items, unexpected_items, misshaped], [5, 5, 3]
    wanted = [min(len(ks), cap) for ks, cap in zip(lists, caps)]
    shown, budget = [0, 0, 0], limit
    while budget > 0 and shown != wanted:
        for i in range(3):
            if budget > 0 and shown[i] < wanted[i]:
                shown[i] += 1
                budget -= 1
    if missing:
        parts.append(
            f"{len(missing)} of {len(want)} expected keys missing{_quote(missing_items, shown[0])}"
        )
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected{_quote(unexpected_items, shown[1])}")
    if misshaped:
        detail = [f"{k!r} {_dims(got[k])} vs {_dims(want[k])}" for k in misshaped]
        parts.append(f"{len(misshaped)} mis-shaped, got vs expected{_quote(detail, shown[2])}")
    return "; ".join(parts)

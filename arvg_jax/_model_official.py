"""Official checkpoints into params: reading the state dict and converting it tensor by tensor.

An official transformer or tokenizer file (`.pth`, `.bin`, `.safetensors`, possibly wrapped in
`{"model": ..., "model_ema": ...}`) is opened lazily (`converters.StreamedStateDict`) and handed to
the family's converter, which reads, checks (finite) and frees one tensor at a time, so the peak
host memory is about one copy of the params. A file that does not fit the model is refused with a
short message naming what it looks like (`converters.identify`).

Why a module of its own: this is the only part of loading that reads official (torch-format)
checkpoint files, used by `arvg_jax.models.load_float` and by `arvg convert`
(`arvg_jax.conversion`). Import these names from `arvg_jax.models`, which re-exports them.
"""

from __future__ import annotations

from arvg_jax.families import Family


def _convert(convert, path, state_dict, cfg, what: str, model: str):
    """`convert(state_dict, cfg)`, with a short, useful message when the file does not fit: what
    the file looks like (`converters.identify`) and the start of the converter's key report."""
    from converters import ConversionError, identify

    try:
        return convert(state_dict, cfg)
    except ConversionError as e:
        found = identify(state_dict)
        detail = " ".join(str(e).split())
        if len(detail) > 400:
            detail = detail[:400] + " …"
        raise ConversionError(
            f"{path}: does not fit the {what} of --model {model}: {found.hint}; {detail}"
        ) from None


def read_state_dict(path, key: str | None, default_keys: tuple[str, ...], *, stream: bool = False):
    """The state dict of `path`: entry `key`, or for a wrapped file without one the first of the
    family's official entries that it holds (e.g. MAR's "model_ema").

    `stream=True` reads no tensor yet: a `converters.StreamedStateDict` (shapes only; each tensor
    is read, checked finite and released as a converter takes it; see `convert_file`)."""
    import sys

    from converters import CheckpointError, load_state_dict, open_state_dict

    read = open_state_dict if stream else load_state_dict
    if key is not None or not default_keys:
        return read(path, key=key)
    try:
        return read(path)
    except CheckpointError as e:
        if "wrapped checkpoint" not in str(e):
            raise
        for k in default_keys:
            try:
                sd = read(path, key=k)
            except CheckpointError:
                continue
            print(
                f"{path}: reading entry {k!r} (the official choice; --ckpt-key picks another)",
                file=sys.stderr,
            )
            return sd
        raise


def convert_file(
    convert,
    path,
    cfg,
    *,
    key: str | None,
    default_keys: tuple[str, ...],
    what: str,
    model: str,
    allow_nonfinite: bool = False,
) -> tuple[dict, int]:
    """Converts one official checkpoint file tensor by tensor; returns (params, keys in the file).

    Peak host memory is the converted params plus about one tensor: the file is opened lazily
    (`converters.StreamedStateDict`), each tensor read, checked for NaN / Inf (unless
    `allow_nonfinite`) and freed as its leaf is made. Refusals are those of reading the whole file
    first: `CheckpointError` (unreadable, non-finite) or `ConversionError` (does not fit).
    """
    from converters import StreamedStateDict

    lazy = read_state_dict(path, key, default_keys, stream=True)
    sd = StreamedStateDict(lazy, path, allow_nonfinite=allow_nonfinite)
    params = _convert(convert, path, sd, cfg, what, model)
    sd.finish()
    return params, len(sd)


def convert_transformer(fam: Family, ckpt, cfg, model: str, key=None, allow_nonfinite=False):
    """(params, keys in the file) of an official transformer checkpoint (`convert_file`)."""
    return convert_file(
        fam.convert,
        ckpt,
        cfg,
        key=key,
        default_keys=fam.checkpoint_keys,
        what="transformer (--ckpt)",
        model=model,
        allow_nonfinite=allow_nonfinite,
    )


def convert_tokenizer(fam: Family, vae, tok_cfg, model: str, allow_nonfinite=False):
    """(params, keys in the file) of an official tokenizer checkpoint (`convert_file`)."""
    return convert_file(
        fam.convert_tokenizer,
        vae,
        tok_cfg,
        key=None,
        default_keys=fam.tokenizer_checkpoint_keys,
        what="tokenizer (--vae)",
        model=model,
        allow_nonfinite=allow_nonfinite,
    )

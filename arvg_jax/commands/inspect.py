"""`arvg inspect FILE [--key KEY]`: list a checkpoint's tensors without reading their data.

Prints one aligned `key  [shape]  dtype` line per tensor (wrapped checkpoints as
`model_ema/blocks.0.attn.proj.weight`), the non-tensor entries, the wrapper structure and the
totals. A refused file prints its one-line error on stderr and exits 2. A directory is a quantized
checkpoint written by `arvg quantize` (`quant.checkpoint.describe` lists it) or a converted one
written by `arvg convert` (`arvg_jax.conversion.describe`). A `.npz` file (the packaged tiny
models' params, `arvg sample` batches and shards, `--save-tokens` files) is listed from its .npy
headers, never loading an array.

    python -m arvg_jax.cli inspect ../shared/reference/mar/mar.pth --key model_ema
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import zipfile
from typing import Any

_MAX_ENTRIES = 1_000_000  # a pickle can share containers so that paths multiply; stop listing
_KEY_WIDTH = 80  # longest key the columns are aligned to


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        metavar="FILE",
        help=".pth/.pt/.bin/.ckpt/.safetensors/.npz file, or a quantized or converted directory",
    )
    parser.add_argument("--key", help="list only the state dict under this key (e.g. model_ema)")


@dataclasses.dataclass(frozen=True)
class _NpyEntry:
    """An array of a .npz file, described by its header."""

    shape: tuple[int, ...]
    dtype: Any

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


def _is_npz(path: str) -> bool:
    """A zip whose members are all .npy arrays (torch zips hold data.pkl and raw records)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return bool(names) and all(n.endswith(".npy") for n in names)


def _read_npz(path: str) -> dict[str, _NpyEntry]:
    """{key: entry} from the .npy headers of an .npz (numpy caps the header size)."""
    import numpy as np

    fmt = np.lib.format
    readers = {1: fmt.read_array_header_1_0, 2: fmt.read_array_header_2_0}
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                with zf.open(name) as f:
                    major, minor = fmt.read_magic(f)
                    if major not in readers:
                        raise ValueError(f"{name}: .npy format version {major}.{minor}")
                    shape, _, dtype = readers[major](f)
                out[name[: -len(".npy")]] = _NpyEntry(tuple(shape), dtype)
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"unreadable .npz: {e}") from None
    return out


def _one_line(text: object) -> str:
    return " ".join(str(text).splitlines())


def _printable(text: str) -> str:
    """Keys come from the file: escape control characters so they cannot drive the terminal."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _flatten(tree: Any) -> list[tuple[str, Any]]:
    """`(path, leaf)` pairs in file order; dict keys and list indices joined with '/'."""
    out: list[tuple[str, Any]] = []
    stack: list[tuple[str, Any]] = [("", tree)]
    while stack:
        path, node = stack.pop()
        if len(out) + len(stack) > _MAX_ENTRIES:
            raise ValueError(f"more than {_MAX_ENTRIES} entries; not listing")
        if isinstance(node, dict) and node:
            items = [(_printable(str(k)), v) for k, v in node.items()]
        elif isinstance(node, (list, tuple)) and node:
            items = [(str(i), v) for i, v in enumerate(node)]
        else:
            out.append((path or "(root)", node))  # e.g. torch.save(tensor)
            continue
        stack.extend((f"{path}/{k}" if path else k, v) for k, v in reversed(items))
    return out


def _describe_value(value: Any) -> str:
    """Bounded one-line repr of a non-tensor leaf (only empty containers are leaves)."""
    text = _printable(repr(value))
    return text if len(text) <= 80 else text[:77] + "..."


def _describe_dir(path: str, key: str | None) -> int:
    if key is not None:
        print(f"{path}: --key applies to checkpoint files, not directories", file=sys.stderr)
        return 2
    import pathlib

    if (
        not (pathlib.Path(path) / "arvg.json").is_file()
        and (pathlib.Path(path) / "config.json").is_file()
    ):
        from arvg_jax.conversion import describe as describe_converted

        try:
            print(describe_converted(path))
        except (OSError, ValueError) as e:
            print(f"{path}: {_one_line(e)}", file=sys.stderr)
            return 2
        return 0
    try:
        from quant.checkpoint import describe
    except ImportError as e:
        print(f"{path}: cannot describe a quantized directory ({_one_line(e)})", file=sys.stderr)
        return 2
    try:
        print(describe(path))
    except (OSError, ValueError) as e:
        print(f"{path}: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace) -> int:
    import os

    if os.path.isdir(args.file):
        return _describe_dir(args.file, args.key)

    from converters import CheckpointError, LazyTensor, open_state_dict, read_checkpoint

    try:
        if _is_npz(args.file):
            tree = _read_npz(args.file)
            if args.key is not None:
                tree = {args.key: tree[args.key]} if args.key in tree else {}
                if not tree:
                    raise ValueError(f"no array {args.key!r} in this .npz")
        elif args.key is not None:
            tree = {args.key: open_state_dict(args.file, key=args.key)}
        else:
            tree = read_checkpoint(args.file, lazy=True)
        entries = _flatten(tree)
    except CheckpointError as e:
        print(e, file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"{args.file}: {_one_line(e)}", file=sys.stderr)
        return 2

    tensors = [(k, v) for k, v in entries if isinstance(v, (LazyTensor, _NpyEntry))]
    others = [(k, v) for k, v in entries if not isinstance(v, (LazyTensor, _NpyEntry))]
    shapes = ["[" + ", ".join(map(str, t.shape)) + "]" for _, t in tensors]
    key_width = min(_KEY_WIDTH, max((len(k) for k, _ in entries), default=0))
    shape_width = max(map(len, shapes), default=0)
    lines = [
        f"{k:<{key_width}}  {s:<{shape_width}}  {t.dtype}" for (k, t), s in zip(tensors, shapes)
    ]
    lines += [f"{k:<{key_width}}  = {_describe_value(v)}" for k, v in others]

    groups: dict[str, list[Any]] = {}
    for k, t in tensors:
        if "/" in k and not isinstance(t, _NpyEntry):  # npz keys are paths, not wrappers
            groups.setdefault(k.split("/", 1)[0], []).append(t)
    if groups:
        parts = [
            f"{g} ({len(ts)} tensors, {sum(t.size for t in ts):,} parameters)"
            for g, ts in groups.items()
        ]
        lines.append("wrapper: " + ", ".join(parts))
    params = sum(t.size for _, t in tensors)
    megabytes = sum(t.nbytes for _, t in tensors) / 1e6
    lines.append(f"{len(tensors)} tensors, {params:,} parameters ({megabytes:,.1f} MB)")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0

"""Ctrl-C and SIGTERM for every command: one line, exit status 130, within about a second.

JAX cannot cancel a computation in flight, and its runtime threads make the usual
KeyboardInterrupt path slow (a traceback printed from deep inside a jitted call, seconds to unwind)
and sometimes fatal (a crash while the interpreter tears the runtime down). So `run` executes a
command in a worker thread while the main thread only waits; a signal reaches the waiting main
thread at once, which then

1. asks the worker to stop (`stop_requested()`; `arvg sample` finishes the batch in flight during
   a short grace period, `set_grace`),
2. closes the output gate: a write that has not committed can no longer commit (`commit` raises
   `Interrupted` in the worker) and a commit in progress (a rename or two) completes first,
3. deletes the temporaries of writes in progress (`staged`): a half-written output never remains,
4. prints one line, "arvg CMD: interrupted; nothing written" (or what was kept, or what was rolled
   back) and ends the process with `os._exit(130)`, skipping the runtime teardown.

`arvg_jax.atomic` routes every output file and directory through `staged` / `commit`, so commands
need no code of their own. Outside `run` (library use) every function here is a no-op.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator

EXIT_CODE = 130  # 128 + SIGINT, the shell convention (also used for SIGTERM here)
SIGNALS = (signal.SIGINT, signal.SIGTERM)
_POLL_S = 0.1  # how often the waiting main thread wakes (a signal also wakes it)


class Interrupted(Exception):
    """Raised in the worker when it tries to commit an output after a signal."""


class _Signal(BaseException):
    """Raised by the signal handler in the waiting main thread."""


@dataclasses.dataclass
class _Staged:
    path: pathlib.Path  # a temporary file or directory
    target: str  # the output it becomes
    trash: bool = False  # a replaced output being deleted (its commit already happened)


@dataclasses.dataclass
class _State:
    prog: str
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    gate: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    closed: bool = False
    staged: dict[int, _Staged] = dataclasses.field(default_factory=dict)
    kept: list[str] = dataclasses.field(default_factory=list)
    report: Callable[[], str] | None = None
    grace_s: float = 0.0


_state: _State | None = None  # the run in progress
_local = threading.local()  # its worker's own binding: an abandoned worker keeps a closed gate


def _current() -> _State | None:
    return getattr(_local, "state", None) or _state


def _hard_exit(code: int) -> None:
    """Ends the process at once (tests replace it)."""
    os._exit(code)


# ---- what commands and writers call ---------------------------------------------------------------
def stop_requested() -> bool:
    """True once a signal asked the running command to stop (check between units of work)."""
    state = _current()
    return state is not None and state.stop.is_set()


def check() -> None:
    """Raises `Interrupted` if a signal asked the command to stop (a safe point)."""
    if stop_requested():
        raise Interrupted("interrupted")


def set_prog(prog: str) -> None:
    """The name the interrupt line starts with ("arvg quantize")."""
    state = _current()
    if state is not None:
        state.prog = prog


def set_grace(seconds: float) -> None:
    """How long the worker may go on after a signal (e.g. to finish the batch in flight)."""
    state = _current()
    if state is not None:
        state.grace_s = seconds


def set_report(report: Callable[[], str]) -> None:
    """Replaces the default interrupt line (after the program name), e.g. "interrupted; 3 of 50
    shards kept, rerun to resume"; called after the grace period."""
    state = _current()
    if state is not None:
        state.report = report


@contextlib.contextmanager
def staged(path: str | os.PathLike, target: str | os.PathLike, *, trash: bool = False):
    """Marks `path` (a temporary file or directory) for deletion if a signal comes before the
    block ends; the block deletes or renames it itself otherwise."""
    state = _current()
    if state is None:
        yield
        return
    token = object()
    state.staged[id(token)] = _Staged(pathlib.Path(path), str(target), trash)
    try:
        yield
    finally:
        state.staged.pop(id(token), None)


@contextlib.contextmanager
def commit(target: str | os.PathLike) -> Iterator[None]:
    """The block that makes `target` visible (a rename): it runs whole before a signal's cleanup,
    or not at all (raises `Interrupted` once a signal closed the gate)."""
    state = _current()
    if state is None:
        yield
        return
    with state.gate:
        if state.closed:
            raise Interrupted(f"interrupted before {target} was written")
        yield
        state.kept.append(str(target))


# ---- the runner ------------------------------------------------------------------------------------
def _remove(path: pathlib.Path) -> None:
    """Deletes a file or tree; retries briefly, as the abandoned worker may still be writing."""
    for _ in range(3):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                path.unlink()
        if not os.path.lexists(path):
            return
        threading.Event().wait(0.02)


def _bars_open() -> bool:
    """True while a tqdm progress bar is drawn (its line has no newline yet)."""
    tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)
    return bool(getattr(tqdm, "_instances", None))


def _finish(state: _State) -> str:
    """Steps 2-3 of the module docstring; returns the interrupt line."""
    with state.gate:  # waits for a commit in progress, then no commit can start
        state.closed = True
    staged = list(state.staged.values())  # one step under the GIL: the worker may still run
    rolled = sorted({s.target for s in staged if not s.trash})
    for s in staged:
        _remove(s.path)
    if state.report is not None:
        return f"{state.prog}: {state.report()}"
    if rolled:
        what = ", ".join(rolled)
        done = "; kept " + ", ".join(state.kept) if state.kept else "; nothing written"
        return f"{state.prog}: interrupted while writing {what}: rolled back{done}"
    if state.kept:
        return f"{state.prog}: interrupted; kept {', '.join(state.kept)} (complete)"
    return f"{state.prog}: interrupted; nothing written"


def run(body: Callable[[], int], *, prog: str = "arvg", restore: bool = True) -> int:
    """Runs `body()` in a worker thread; SIGINT / SIGTERM end it as the module docstring says.

    Args:
      body: the command; its return value (or exception, SystemExit included) is passed on.
      prog: the start of the interrupt line ("arvg quantize"; `set_prog` changes it).
      restore: put the previous signal handlers back afterwards (in-process callers); False
        leaves SIGINT / SIGTERM ignored, for a process that only exits after the command.

    Returns:
      body's return value, or `EXIT_CODE` after a signal (once `_hard_exit` returned, in tests).
    """
    global _state
    if threading.current_thread() is not threading.main_thread() or _state is not None:
        return body()  # signals are delivered to the main thread only; nested runs share one

    def on_signal(signum, frame):
        raise _Signal(signum)

    state = _State(prog)
    outcome: dict[str, object] = {}

    def work():
        _local.state = state
        try:
            outcome["value"] = body()
        except BaseException as e:  # noqa: BLE001 (re-raised in the main thread)
            outcome["error"] = e

    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _state = state
    try:
        try:
            for s in SIGNALS:
                signal.signal(s, on_signal)
            worker = threading.Thread(target=work, name="arvg-command", daemon=True)
            worker.start()
            while worker.is_alive():
                worker.join(_POLL_S)
            for s in SIGNALS:  # done: a late signal must not interrupt the return
                signal.signal(s, signal.SIG_IGN)
        except _Signal:
            for s in SIGNALS:  # a second Ctrl-C must not interrupt the cleanup
                signal.signal(s, signal.SIG_IGN)
            state.stop.set()
            if state.grace_s > 0:
                worker.join(state.grace_s)
            line = _finish(state)
            if _bars_open():
                line = "\n" + line  # below the progress bar's unfinished line
            print(line, file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            _hard_exit(EXIT_CODE)
            return EXIT_CODE
    finally:
        _state = None
        if restore:
            for s, handler in previous.items():
                signal.signal(s, handler)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]

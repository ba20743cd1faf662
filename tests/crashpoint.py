"""Run the ``edgeslim`` command and SIGKILL it at one write point (for test_fault_injection.py).

    python tests/crashpoint.py POINT -- EDGESLIM-ARGS...

POINT is one of

``step:N``
    at the N-th optimiser step (``Trainer._optimise``): killed mid-training.
``before:REL:N``
    at the N-th atomic rename (``os.replace``) onto ``RUN_DIR/REL``, after cutting the
    temp file to half its size: killed mid-write, a half-written temp file is left.
``after:REL:N``
    just after the N-th rename onto ``RUN_DIR/REL``: that file is complete, nothing
    written after it is.
``hold:REL:N``
    at the N-th rename onto ``RUN_DIR/REL``: print ``holding`` and wait for a line on
    stdin (the test kills the process meanwhile).

``RUN_DIR`` is the ``--out`` argument. The hooks live here, in a test-only wrapper:
the library has no crash switch of its own.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _on_replace(mode: str, target: str, nth: int) -> None:
    real, seen = os.replace, [0]

    def replace(src, dst, *args, **kwargs):  # type: ignore[no-untyped-def]
        if os.path.abspath(dst) != target:
            return real(src, dst, *args, **kwargs)
        seen[0] += 1
        if seen[0] != nth:
            return real(src, dst, *args, **kwargs)
        if mode == "before":
            os.truncate(src, os.path.getsize(src) // 2)
            _die()
        if mode == "hold":
            print("holding", flush=True)
            sys.stdin.readline()
        result = real(src, dst, *args, **kwargs)
        if mode == "after":
            _die()
        return result

    os.replace = replace


def _on_step(nth: int) -> None:
    from edgeslim.train.engine import Trainer

    real, seen = Trainer._optimise, [0]

    def optimise(self, loss):  # type: ignore[no-untyped-def]
        seen[0] += 1
        if seen[0] == nth:
            _die()
        return real(self, loss)

    Trainer._optimise = optimise


def main() -> int:
    point, args = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
    run_dir = Path(args[args.index("--out") + 1])
    mode, _, rest = point.partition(":")
    if mode == "step":
        _on_step(int(rest))
    else:
        rel, _, nth = rest.rpartition(":")
        _on_replace(mode, os.path.abspath(run_dir / rel), int(nth))
    from edgeslim.cli import main as edgeslim

    return edgeslim(args)


if __name__ == "__main__":
    sys.exit(main())

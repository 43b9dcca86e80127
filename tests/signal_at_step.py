"""Test hook: `transferlab ARGS...` that sends itself a signal just before its STEP-th training batch.

    python tests/signal_at_step.py SIGNAL STEP ARGS...     (SIGNAL: KILL or INT; STEP counts from 1)

The kill-and-resume and Ctrl-C tests use it to interrupt a run at a chosen point (mid-epoch, after a
checkpoint, before any) every time, instead of at a moment that a busy machine may turn into "the run
had already finished". Batches are counted over the whole run, across phases; nothing in transferlab
knows about this hook.
"""
from __future__ import annotations

import os
import signal
import sys


def main(argv: list[str]) -> int:
    sig, step, args = getattr(signal, f"SIG{argv[0]}"), int(argv[1]), argv[2:]
    from transferlab.cli.main import main as cli
    from transferlab.training.loop import Loop

    backward, seen = Loop.backward, [0]

    def counted(self, *a, **kw):
        seen[0] += 1
        if seen[0] == step:
            os.kill(os.getpid(), sig)  # SIGKILL ends here; SIGINT raises KeyboardInterrupt at once
        return backward(self, *a, **kw)

    Loop.backward = counted
    return cli(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

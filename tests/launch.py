"""The ``accelerate launch`` command line the multi-process CPU tests use (one definition for all of them)."""
from __future__ import annotations

import sys


def accelerate_cli(num_processes: int, *cli_args: str) -> list[str]:
    """``python -m accelerate.commands.launch`` running ``tunelens <cli_args>`` in ``num_processes`` CPU processes.

    ``--cpu`` alone starts one process; ``--multi_gpu`` with ``--num_processes`` is what spawns several on CPU.
    """
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "-m", "tunelens.cli.main", *cli_args]

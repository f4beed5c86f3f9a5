"""How a run was launched, said in its first log line: the process count, and a launch that got fewer
processes than it asked for.

``accelerate launch --num_processes 2 --cpu`` (accelerate 1.16) starts ONE process and exits 0: without
``--multi_gpu`` its simple launcher runs the script once, with ``MASTER_ADDR`` set but no ``WORLD_SIZE``, and
that process then does the whole merge alone. No variable names the count asked for; only the launcher's
command line does, which :func:`launched_for` reads with accelerate's own parser (docs/processes.md).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .progress import log

if TYPE_CHECKING:
    import accelerate

#: the variables a launcher names the world size in: torchrun (also under ``accelerate launch --multi_gpu``),
#: and the MPI implementations accelerate reads for multi-CPU runs
WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def announce_processes(state: "accelerate.PartialState") -> None:
    """Log the run's process count (the first line of every merge), and warn in one line when the launcher
    asked for more processes than there are."""
    log.info("%s", describe_processes(state))
    wanted = launched_for()
    if wanted is not None and wanted > state.num_processes:
        log.warning("launched for %d processes, but this process runs alone: it does the whole merge by itself "
                    "(accelerate launch --cpu starts one process; on CPUs launch with torchrun --standalone "
                    "--nproc_per_node %d, see docs/processes.md)", wanted, wanted)


def describe_processes(state: "accelerate.PartialState") -> str:
    """``version 0.1.0 on 1 process (cpu)``, or ``version 0.1.0 on 2 processes (rank 0 of 2, gloo, cpu)``."""
    from hf_grasp import __version__

    n = state.num_processes
    if n == 1:
        return f"version {__version__} on 1 process ({state.device})"
    where = f"rank {state.process_index} of {n}, {state.backend}, {state.device}"
    return f"version {__version__} on {n} processes ({where})"


def launched_for() -> int | None:
    """How many processes the launcher that started this one was asked for; None when no launcher says."""
    for var in WORLD_SIZE_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    if "ACCELERATE_USE_CPU" in os.environ:  # set by accelerate's simple launcher, which names no count
        return _accelerate_launch_count()
    return None


def _accelerate_launch_count() -> int | None:
    """The process count of the ``accelerate launch`` command that is this process's parent: its
    ``--num_processes``, else its config file's (as accelerate itself reads them)."""
    import psutil
    from accelerate.commands.config import default_config_file, load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    try:
        argv = psutil.Process().parent().cmdline()
    except (psutil.Error, AttributeError):  # AttributeError: no parent
        return None
    # `accelerate launch ARGS` or `python -m accelerate.commands.launch ARGS`
    start = next((i + 1 for i, a in enumerate(argv) if a == "launch" or a.endswith("accelerate.commands.launch")),
                 None)
    if start is None:
        return None
    try:
        args, _ = launch_command_parser().parse_known_args(argv[start:])
        if args.num_processes is not None:
            return args.num_processes
        # accelerate reads its default config file only without --cpu
        if args.config_file or (os.path.isfile(default_config_file) and not args.cpu):
            return load_config_from_file(args.config_file).num_processes
    except (SystemExit, OSError, ValueError, TypeError):  # argparse exits on what it cannot parse
        return None
    return None

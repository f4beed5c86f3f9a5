"""The hf-grasp Space: a Gradio page that runs a merge and shows what moved and how well it did.

``hf-grasp space`` serves it on 127.0.0.1; ``spaces/hf-grasp/app.py`` (the
folder deployed as a Hugging Face Space) calls the same :func:`launch`. The page
is built in :mod:`.ui`, runs merges through :mod:`.session` (``GraspMerger``,
nothing else) and shows them with :mod:`.results`; :mod:`.builtin` makes the
built-in benchmarks' sources once.

gradio comes with the ``space`` extra (``pip install 'hf-grasp[space]'``): it is
imported only when the page is built, so ``hf-grasp --help`` never loads it.
"""

from __future__ import annotations

import argparse
import os
import threading
from pathlib import Path

from ...runtime.errors import GraspError

#: environment variable naming the directory for the built-in sources and the sessions' runs
HOME_ENV = "HF_GRASP_SPACE_HOME"


def default_home() -> Path:
    """``$HF_GRASP_SPACE_HOME``, else ``$HF_HOME/hf-grasp-space`` (the HF cache's own root)."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "hf-grasp-space"


def build(home: str | Path | None = None, *, allow_local_paths: bool = False):
    """The page as a ``gr.Blocks``, with its queue set (one merge at a time; others wait their turn).

    ``allow_local_paths``: the page takes paths on this machine's disk as sources and dataset (off: Hub ids
    and the built-in benchmarks only, as a public page must)."""
    from ...runtime.extras import require

    for extra in ("space", "bench"):  # the page, and the built-in digits-eras sources it offers
        require(extra, "the Space")
    from .ui import build_demo

    demo = build_demo(Path(home) if home else default_home(), allow_local_paths=allow_local_paths)
    return demo.queue(default_concurrency_limit=1)


def launch(host: str | None = None, port: int | None = None, *, share: bool = False,
           home: str | Path | None = None, prewarm: bool = True, allow_local_paths: bool = False) -> None:
    """Serve the page (blocking). ``host``/``port`` None: gradio's own choice (``GRADIO_SERVER_NAME``, which
    a Space sets, else 127.0.0.1; ``GRADIO_SERVER_PORT``, else 7860 or the next free port).

    ``prewarm`` starts making the built-in sources at once, in the background,
    so that the first visitor's merge does not wait for them. ``allow_local_paths``: see :func:`build` (the
    exported Space's ``app.py`` leaves it off). At shutdown (Ctrl-C, SIGTERM) the page is closed, which removes
    its run directories.
    """
    home = Path(home) if home else default_home()
    demo = build(home, allow_local_paths=allow_local_paths)
    # the training stack, imported here, in one thread: two threads importing transformers at once can see it
    # half-initialised (a missing attribute in whichever thread came second). pyplot too: gradio calls
    # matplotlib.use("agg") around every event, which imports pyplot, while a run's worker thread draws the
    # heatmap (seen under load: "partially initialized module 'matplotlib.pyplot'", the run lost at saving)
    import matplotlib.pyplot  # noqa: F401

    from hf_grasp import merger  # noqa: F401
    from ..bench import make_sources  # noqa: F401

    if "OMP_NUM_THREADS" not in os.environ:
        # one torch thread unless told otherwise: the page's small models gain little from a second one, and the
        # web server and other visitors' calls share the CPUs; there, spinning OpenMP threads made a default run
        # about 3x slower (measured: 8 s with one thread, 19-27 s with two, on 2 busy cores)
        import torch

        torch.set_num_threads(1)

    if prewarm:
        threading.Thread(target=_prewarm, args=(home,), name="hf-grasp-space-prewarm", daemon=True).start()
    # run_history=False: gradio would otherwise keep every call's inputs in the browser, the push token included
    from .ui import CSS

    _interrupt_on_sigterm()
    try:
        demo.launch(server_name=host, server_port=port, share=share, run_history=False, css=CSS)
    finally:
        demo.close()  # gradio's wait ends on Ctrl-C having stopped the server only; this also removes the runs


def _interrupt_on_sigterm() -> None:
    """SIGTERM (how a Space, a container or a service manager stops the page) as Ctrl-C: gradio's wait then
    stops the server and returns, and the page is closed, where the default action would end the process on
    the spot and leave its run directories behind."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: whoever runs the page there handles its signals
        pass


def _prewarm(home: Path) -> None:
    """Make the built-in sources in the background, the default benchmark's first; on failure, one warning per
    benchmark (its first merge tries again)."""
    from ...runtime.progress import log
    from .builtin import BENCHMARKS, ensure_sources

    for benchmark in BENCHMARKS:
        try:
            ensure_sources(home, benchmark)
        except Exception as e:  # noqa: BLE001 - a background thread has nobody else to tell
            log.warning("making the built-in %s sources failed (%s: %s); its first merge will try again",
                        benchmark, type(e).__name__, e)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="Address to serve on (default: 127.0.0.1, this machine only).")
    p.add_argument("--port", type=int, default=None,
                   help="Port (default: GRADIO_SERVER_PORT, else 7860 or the next free one).")
    p.add_argument("--share", action="store_true",
                   help="Also open a temporary public link through gradio's share servers (off by default).")
    p.add_argument("--home", type=Path, default=None,
                   help=f"Directory for the built-in sources and the visitors' runs (default: {HOME_ENV}, "
                        "else HF_HOME/hf-grasp-space).")
    p.add_argument("--allow-local-paths", action="store_true",
                   help="Take paths on this machine's disk as sources, base and dataset (off by default: Hub ids "
                        "and the built-in benchmarks only; never on a public page, whose visitors would read the "
                        "server's files).")

    from .export import add_export_arguments

    add_export_arguments(p)


def run_from_args(args: argparse.Namespace) -> None:
    if args.export is None:
        given = [flag for flag, value in (("--wheel", args.wheel), ("--overwrite", args.overwrite),
                                          ("--hardware", args.hardware != "cpu-basic")) if value]
        if given:
            raise GraspError(f"{', '.join(given)} only apply with --export DIR")
        launch(args.host, args.port, share=args.share, home=args.home, allow_local_paths=args.allow_local_paths)
        return
    if args.allow_local_paths:
        # an exported Space is public: its app.py never takes local paths, so the flag would be silently lost
        raise GraspError("--allow-local-paths applies to the served page only, never with --export DIR")
    from .export import export_space

    out = export_space(args.export, wheel=args.wheel, hardware=args.hardware, overwrite=args.overwrite)
    print(f"Space folder written to {out}: upload it as a Space repo (e.g. `hf upload ORG/NAME {args.export} . "
          "--repo-type space`)")

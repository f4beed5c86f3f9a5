"""``hf-grasp space --export DIR``: a Space folder that builds as it is.

A Space installs ``requirements.txt`` alone, before the rest of the folder is
copied in, so that file cannot name a wheel inside the folder. The folder
therefore carries hf-grasp unpacked from its wheel beside ``app.py`` (the
package, its ``.dist-info`` with the entry points, and the wheel's ``.data``
with the recipes: Python puts ``app.py``'s folder first on ``sys.path``), and
``requirements.txt`` lists hf-grasp's own dependencies, read from the wheel's
metadata with its ``space`` extra, so the two cannot drift apart. On CPU
hardware, torch comes from PyTorch's CPU-only index (the default Linux wheel
brings several GB of CUDA libraries a CPU Space never uses).
"""

from __future__ import annotations

import argparse
import email
import subprocess
import sys
import tempfile
import zipfile
from importlib import resources
from pathlib import Path

from packaging.requirements import Requirement

from ...runtime.errors import GraspError, first_line, flag

#: PyTorch's index of CPU-only builds (torch, torchvision), for Spaces without a GPU
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: Spaces' free hardware; the ``cpu-*`` ones get the CPU-only torch
CPU_HARDWARE = ("cpu-basic", "cpu-upgrade")
HARDWARE = (*CPU_HARDWARE, "t4-small", "t4-medium", "l4x1", "a10g-small", "a10g-large", "a100-large")
#: the extra whose closure the Space needs (the page, the built-in benchmark, every method)
SPACE_EXTRA = "space"
DIST = "hf-grasp"


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--export`` flags of ``hf-grasp space``."""
    g = p.add_argument_group("export (write a Space folder instead of serving)")
    g.add_argument("--export", type=Path, metavar="DIR",
                   help="Write a folder that deploys as a Hugging Face Space as it is (app.py, README.md with the "
                        "Space's YAML, requirements.txt, hf-grasp unpacked from its wheel), then exit.")
    g.add_argument("--wheel", type=Path, metavar="PATH",
                   help="The hf-grasp wheel to put in the Space (default: built from this source checkout).")
    g.add_argument("--hardware", choices=HARDWARE, default="cpu-basic",
                   help="The Space's suggested_hardware (default: cpu-basic); CPU hardware gets a CPU-only torch.")
    g.add_argument("--overwrite", action="store_true", help="Replace --export DIR if it exists.")


def export_space(folder: str | Path, *, wheel: str | Path | None = None, hardware: str = "cpu-basic",
                 overwrite: bool = False) -> Path:
    """Write the Space folder ``folder`` and return its path.

    ``wheel``: an hf-grasp wheel; None builds one from the source checkout this
    package was imported from (``pip wheel``). The folder appears whole or not at
    all: it is written beside ``folder`` and renamed into place.
    """
    from ...runtime.workspace import claim_output, staged

    if hardware not in HARDWARE:
        raise GraspError(f"{flag('hardware', hardware)} is not one of {', '.join(HARDWARE)}")
    with claim_output(folder, overwrite=overwrite) as out, tempfile.TemporaryDirectory() as scratch:
        whl = Path(wheel) if wheel else build_wheel(Path(scratch))
        if not whl.is_file() or not zipfile.is_zipfile(whl):
            raise GraspError(f"{flag('wheel', whl)}: not a wheel file")
        with staged(out) as tmp:
            metadata = _unpack(whl, tmp)
            version = metadata["Version"]
            requirements = space_requirements(metadata)
            (tmp / "requirements.txt").write_text(_requirements_txt(version, requirements, hardware))
            (tmp / "app.py").write_text(_template("app.py"))
            _card(version, requirements, hardware).save(tmp / "README.md")
    return out


def build_wheel(into: Path) -> Path:
    """A wheel of the source checkout this package was imported from, built by ``pip wheel`` into ``into``."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "pyproject.toml").is_file():
        raise GraspError("hf-grasp was not imported from a source checkout, so there is no wheel to build: pass "
                         "--wheel PATH (e.g. from `pip download hf-grasp --no-deps`)")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(into), str(root)],
                          capture_output=True, text=True)
    built = sorted(into.glob("hf_grasp-*.whl"))
    if proc.returncode != 0 or not built:
        raise GraspError(f"building hf-grasp's wheel from {root} failed: "
                         f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no wheel written']}")
    return built[-1]


def _unpack(whl: Path, into: Path) -> email.message.Message:
    """Extract the wheel into ``into`` (refusing a member that would land outside it); its METADATA."""
    try:
        with zipfile.ZipFile(whl) as z:
            root = into.resolve()
            for name in z.namelist():
                if not (root / name).resolve().is_relative_to(root):
                    raise GraspError(f"{flag('wheel', whl)}: member {name!r} would be written outside the folder")
            (meta_name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
            z.extractall(into)
            metadata = email.message_from_bytes(z.read(meta_name))
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise GraspError(f"{flag('wheel', whl)}: cannot be read as a wheel ({first_line(e)})") from None
    if metadata["Name"] != DIST:
        raise GraspError(f"{flag('wheel', whl)} is a wheel of {metadata['Name']!r}, not of {DIST}")
    return metadata


def space_requirements(metadata: email.message.Message, extra: str = SPACE_EXTRA) -> list[Requirement]:
    """hf-grasp's dependencies with ``extra`` and the extras it names (``hf-grasp[bench,peft]``), from the
    wheel's ``Requires-Dist``; hf-grasp itself left out (the folder carries it)."""
    declared = [Requirement(r) for r in metadata.get_all("Requires-Dist") or ()]
    wanted, seen, out = [extra], set(), []
    while wanted:
        current = wanted.pop()
        seen.add(current)
        env = {"extra": current}
        for req in declared:
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            if req.marker is None and current != extra:
                continue  # the core dependencies are added once, with the first extra
            if req.name == DIST:
                wanted += [e for e in req.extras if e not in seen]
                continue
            plain = Requirement(str(req))
            plain.marker = None
            if str(plain) not in map(str, out):
                out.append(plain)
    return out


def _requirements_txt(version: str, requirements: list[Requirement], hardware: str) -> str:
    lines = [f"# hf-grasp {version}'s dependencies (with its '{SPACE_EXTRA}' extra), written by `hf-grasp space "
             "--export`;", "# hf-grasp itself is unpacked beside app.py (a Space installs this file before it "
             "copies the folder)."]
    if hardware in CPU_HARDWARE:
        lines += ["# CPU hardware: torch and torchvision from PyTorch's CPU-only builds (no CUDA libraries)",
                  f"--extra-index-url {TORCH_CPU_INDEX}"]
    return "\n".join(lines + [str(r) for r in requirements]) + "\n"


def _template(name: str) -> str:
    return resources.files(__package__).joinpath("template", name).read_text(encoding="utf-8")


def _card(version: str, requirements: list[Requirement], hardware: str):
    """The Space's README.md: Spaces' YAML (what the Hub reads to build and list it) over the page's text."""
    from huggingface_hub import SpaceCard, SpaceCardData

    gradio = next((r for r in requirements if r.name == "gradio"), None)
    pins = [s.version for s in (gradio.specifier if gradio else ()) if s.operator == "=="]
    if not pins:
        raise GraspError("the wheel's space extra does not pin gradio exactly, which a Space's sdk_version needs")
    data = SpaceCardData(
        title="hf-grasp model merging", sdk="gradio", sdk_version=pins[0], python_version="3.11", app_file="app.py",
        license="apache-2.0", models=["microsoft/resnet-18"], datasets=["ylecun/mnist"],
        tags=["model-merging", "grasp", "image-classification", "transformers", "timm"],
        emoji="🧬", colorFrom="indigo", colorTo="yellow", pinned=False,
        short_description="Merge fine-tuned image or text classifiers with GRASP", suggested_hardware=hardware)
    torch_note = " (torch from PyTorch's CPU-only builds)" if hardware in CPU_HARDWARE else ""
    body = _template("README.md").format(version=version, torch_note=torch_note)
    return SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{body}")

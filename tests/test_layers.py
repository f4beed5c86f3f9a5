"""The package's stages import only the stages before them (import-linter's layers contract in pyproject.toml).

A newcomer reads hf_grasp/ as the data flow (docs/layout.md); this keeps it that way: an import from a later
stage into an earlier one, or a circle between stages, fails here with the offending line.
"""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_stages_import_only_earlier_stages():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint, "import-linter is in the test extra: pip install -e '.[test]'"
    proc = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def test_every_module_sits_in_a_stage():
    """No module at the top of hf_grasp/ escapes the contract, except the public API and the orchestrator."""
    top = sorted(p.name for p in (ROOT / "hf_grasp").iterdir() if p.suffix == ".py")
    assert top == ["__init__.py", "merger.py"]


def test_every_public_name_resolves():
    """``from hf_grasp import X`` for every name of ``__all__`` (they are imported lazily, by module path)."""
    import hf_grasp

    for name in hf_grasp.__all__:
        assert getattr(hf_grasp, name) is not None, name

"""Every source is checked before the first training step: a later source's NaN is refused before anything trains."""

from __future__ import annotations

import shutil

from safetensors.torch import load_file, save_file

from conftest import _run_main


def test_later_source_nan_refused_before_training(tmp_path, checkpoints):
    good = checkpoints("resnet", 2)
    bad = tmp_path / "bad"
    shutil.copytree(good[1], bad)
    state = load_file(bad / "model.safetensors")
    name = [k for k, v in state.items() if v.is_floating_point()][-1]  # the last tensor: streamed last
    state[name][0] = float("nan")
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    code, out, err = _run_main(["merge", "--target", "digits-eras", "--sources", str(good[0]), str(bad),
                                "--output", str(tmp_path / "merged"), "--initial-epochs", "1",
                                "--finetune-epochs", "0", "--no-eval-sources"])
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1, err
    assert f"source '{bad}': tensor '{name}' has 1 NaN" in errors[0]
    assert "epoch" not in out + err  # refused before the initial fine-tune trained a step
    assert not (tmp_path / "merged").exists()

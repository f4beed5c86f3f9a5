"""The merged model's license: ``--license`` (a Hub license id, or ``other`` with a name and a link), else the one
every source's model card states; in the card's YAML (validated by the test hub server as the Hub validates
licenses) and text, in the report, and kept when a saved merge is made again or continued.

Merges are 0-epoch merges of two small ResNet checkpoints (copied, with a model card of the test's choosing),
run in this process through the CLI's ``main``.
"""

from __future__ import annotations

import json
import shutil

import pytest
from huggingface_hub import HfApi, ModelCard, ModelCardData, constants

from conftest import merge_fails
from hf_grasp import GraspMerger
from hf_grasp.apps.cli import main
from hf_grasp.plan.licenses import HUB_LICENSES, License

NO_WORK = ["--initial-epochs", "0", "--finetune-epochs", "0", "--no-eval-sources", "--no-eval-steps"]
OTHER = ["--license", "other", "--license-name", "my-model-license", "--license-link", "https://example.com/LICENSE"]


def _sources(checkpoints, tmp_path, *licenses: str | None) -> list[str]:
    """One copy of a small checkpoint per license, with a model card stating it (None: no README.md)."""
    out = []
    for i, (lic, ckpt) in enumerate(zip(licenses, checkpoints("resnet", len(licenses)))):
        d = tmp_path / "sources" / f"src{i}"
        shutil.copytree(ckpt, d)
        if lic is not None:
            ModelCard(f"---\n{ModelCardData(license=lic).to_yaml()}\n---\n# src{i}\n").save(d / "README.md")
        out.append(str(d))
    return out


def _merge(capsys, sources: list[str], out, *flags: str) -> list[str]:
    """``hf-grasp merge`` in this process; returns its ``hf-grasp: warning:`` lines."""
    capsys.readouterr()
    code = main(["merge", "--target", "digits-eras", "--sources", *sources, "--output", str(out), *NO_WORK, *flags])
    err = capsys.readouterr().err
    assert code == 0, err
    return [line for line in err.splitlines() if line.startswith("hf-grasp: warning:")]


@pytest.fixture
def validating_hub(hub_server, monkeypatch):
    """``ModelCard.validate`` in this process asks the test hub server."""
    monkeypatch.setattr(constants, "ENDPOINT", hub_server.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return hub_server


def test_the_list_is_the_hubs():
    assert len(HUB_LICENSES) == len(set(HUB_LICENSES)) and HUB_LICENSES[:2] == ("apache-2.0", "mit")
    assert {"cc-by-4.0", "openrail++", "llama3.1", "unknown", "other"} <= set(HUB_LICENSES)


@pytest.mark.parametrize("flags, expected", [
    (["--license", "mit"], License("mit")),
    (OTHER, License("other", "my-model-license", "https://example.com/LICENSE")),
], ids=["mit", "other"])
def test_given_license_is_in_the_card_validates_and_is_kept_by_from(flags, expected, checkpoints, tmp_path, capsys,
                                                                    validating_hub):
    out = tmp_path / "merged"
    warnings = _merge(capsys, _sources(checkpoints, tmp_path, None, None), out, *flags)
    assert warnings == []  # given: the sources' (missing) cards do not matter

    card = ModelCard.load(out / "README.md")
    assert (card.data.license, card.data.license_name, card.data.license_link) == \
        (expected.id, expected.name, expected.link)
    assert "the license given for this merge" in card.text
    card.validate(repo_type="model")  # the hub server accepts it
    report = json.loads((out / "grasp_report.json").read_text())
    assert report["license"] == {"id": expected.id, "name": expected.name, "link": expected.link}
    assert report["license_origin"] == "given" and [s["license"] for s in report["sources"]] == [None, None]

    # --from: the saved options carry it
    again = GraspMerger.from_pretrained(str(out))
    assert again.options.license == expected.id and again.license.license == expected
    assert again.license.origin == "given"


def test_the_hub_server_refuses_what_the_hub_refuses(validating_hub):
    bad = ModelCard(f"---\n{ModelCardData(license='apache2').to_yaml()}\n---\n")
    with pytest.raises(ValueError, match='"license" must be one of \\[apache-2.0, mit, '):
        bad.validate(repo_type="model")
    with pytest.raises(ValueError, match='"license_link" is required when "license" is "other"'):
        ModelCard(f"---\n{ModelCardData(license='other', license_name='x').to_yaml()}\n---\n").validate()
    # a commit holding that README.md is refused before anything is uploaded, as the Hub refuses it
    api = HfApi(endpoint=validating_hub.endpoint, token="x")
    api.create_repo("me/carded")
    with pytest.raises(ValueError, match='Invalid metadata in README.md.\n- "license" must be one of'):
        api.upload_file(path_or_fileobj=str(bad).encode(), path_in_repo="README.md", repo_id="me/carded")
    assert not validating_hub.commits()


def test_sources_common_license_is_the_default_and_a_continuation_keeps_it(checkpoints, tmp_path, capsys):
    out = tmp_path / "merged"
    sources = _sources(checkpoints, tmp_path, "apache-2.0", "apache-2.0")
    assert _merge(capsys, sources, out) == []

    card = ModelCard.load(out / "README.md")
    assert card.data.license == "apache-2.0" and card.data.license_name is None
    assert "`apache-2.0`: the license every source's model card states" in card.text
    report = json.loads((out / "grasp_report.json").read_text())
    assert report["license_origin"] == "sources"
    assert [s["license"]["id"] for s in report["sources"]] == ["apache-2.0", "apache-2.0"]

    # --init the saved merge, with one more source: its card and the new source's agree
    more = _sources(checkpoints, tmp_path / "more", "apache-2.0")
    continued = GraspMerger.from_pretrained(more, init=str(out), initial_epochs=0, finetune_epochs=0)
    assert continued.earlier is not None  # a continuation, not just an initial model
    assert continued.license.license == License("apache-2.0") and continued.license.origin == "sources"


def test_sources_that_disagree_give_no_license_and_one_warning(checkpoints, tmp_path, capsys):
    out = tmp_path / "merged"
    a, b, c = sources = _sources(checkpoints, tmp_path, "mit", "apache-2.0", None)
    warnings = _merge(capsys, sources, out)

    assert len(warnings) == 1, warnings
    [line] = warnings
    assert f"{a}: mit" in line and f"{b}: apache-2.0" in line and f"{c}: none" in line
    assert "pass --license" in line
    card = ModelCard.load(out / "README.md")
    assert card.data.license is None and "license" not in card.data.to_dict()
    assert "None stated: the sources' model cards do not all state the same license" in card.text
    report = json.loads((out / "grasp_report.json").read_text())
    assert report["license"] is None and report["license_origin"] is None


@pytest.mark.parametrize("flags, culprit", [
    (["--license", "apache2"], "did you mean apache-2.0"),
    (["--license", "cc-by-4"], "did you mean cc-by-4.0 or"),
    (["--license", "other", "--license-name", "x"], "needs --license-link"),
    (["--license", "other"], "needs --license-name and --license-link"),
    (["--license", "mit", "--license-link", "https://example.com"], "license_link='https://example.com'"),
])
def test_bad_license_is_one_error_line_and_nothing_written(flags, culprit, checkpoints, tmp_path):
    line = merge_fails(tmp_path, checkpoints("resnet", 2), *flags)
    assert culprit in line and "license" in line


def test_a_hub_sources_card_is_read_from_the_files_it_brought(checkpoints, tmp_path, monkeypatch):
    """A source by repo id (from the HF cache, offline): its README.md comes with its config, and with it its
    license, ``other`` with its name and link included."""
    from hf_grasp.apps.bench.hub_cache import publish_to_cache
    from hf_grasp.inputs.sources import resolve

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    [folder] = _sources(checkpoints, tmp_path, None)
    ModelCard(f"---\n{ModelCardData(license='other', license_name='acme', license_link='LICENSE').to_yaml()}"
              "\n---\n").save(f"{folder}/README.md")
    publish_to_cache(folder, "org/carded")
    source = resolve("org/carded")
    assert source.commit is not None and source.license == License("other", "acme", "LICENSE")
    assert source.describe()["license"] == {"id": "other", "name": "acme", "link": "LICENSE"}

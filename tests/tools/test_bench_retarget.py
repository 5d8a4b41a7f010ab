"""tools/bench/retarget.py: targets added to a result from its own figures (everything else kept byte for byte), and
the committed results of semantic_mri, paired_petct and latent_ct carry exactly the list their figures give."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.bench.harness import RESULTS_DIR, TARGETS_HEADING, targets_markdown
from tools.bench.retarget import RETARGETABLE, retarget

RESULTS = {
    "overhead": {"overhead": 0.0625, "iterations": [4, 4]},
    "samplers": [
        {"sampler": "ddpm, paper", "steps": 250, "dice_mean": 0.875, "n": 4},
        {"sampler": "respaced", "steps": 25, "dice_mean": 0.8125, "n": 4},
    ],
}


MARKDOWN = "# semantic_mri benchmark\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"


def _write(folder: Path, results: dict = RESULTS, markdown: str = MARKDOWN) -> tuple[Path, Path]:
    json_path, markdown_path = folder / "semantic_mri.json", folder / "semantic_mri.md"
    json_path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    markdown_path.write_text(markdown, encoding="utf-8")
    return json_path, markdown_path


def test_retarget_adds_targets_and_keeps_the_rest(tmp_path: Path) -> None:
    json_path, markdown_path = _write(tmp_path)
    before = json_path.read_text(encoding="utf-8")
    targets = retarget("semantic_mri", tmp_path, date="2026-12-02")
    assert [t["met"] for t in targets] == [True, True, False]  # overhead, paper Dice, fast sampler 0.0625 below
    written = json.loads(json_path.read_text(encoding="utf-8"))
    assert written.pop("targets") == targets
    assert json.dumps(written, indent=2) == before
    markdown = markdown_path.read_text(encoding="utf-8")
    assert markdown.startswith(MARKDOWN + "\n" + TARGETS_HEADING)
    assert targets_markdown(targets) in markdown
    note = "computed from the committed figures on 2026-12-02 without a rerun (`python -m tools.bench.retarget "
    assert markdown.endswith(note + "semantic_mri`, with the bench's own targets function).\n")


def test_retarget_refreshes_its_section(tmp_path: Path) -> None:
    json_path, markdown_path = _write(tmp_path)
    retarget("semantic_mri", tmp_path, date="2026-12-02")
    once = json_path.read_text(encoding="utf-8"), markdown_path.read_text(encoding="utf-8")
    retarget("semantic_mri", tmp_path, date="2026-12-02")
    assert (json_path.read_text(encoding="utf-8"), markdown_path.read_text(encoding="utf-8")) == once
    changed = {**RESULTS, "overhead": {"overhead": 0.25, "iterations": [4, 4]}}
    json_path.write_text(json.dumps({**changed, "targets": []}, indent=2), encoding="utf-8")
    (overhead, *_) = retarget("semantic_mri", tmp_path, date="2026-12-03")
    assert overhead["value"] == 0.25 and not overhead["met"]
    markdown = markdown_path.read_text(encoding="utf-8")
    assert markdown.count(TARGETS_HEADING) == 1 and "| 0.250 |" in markdown and "2026-12-03" in markdown
    assert "2026-12-02" not in markdown


def test_retarget_unknown_benchmark(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no targets function for benchmark 'swin_ddpm'; available: .*latent_ct"):
        retarget("swin_ddpm", tmp_path)


def test_retarget_needs_the_markdown(tmp_path: Path) -> None:
    json_path, markdown_path = _write(tmp_path)
    markdown_path.unlink()
    with pytest.raises(FileNotFoundError, match="benchmark 'semantic_mri': no markdown"):
        retarget("semantic_mri", tmp_path)
    assert json.loads(json_path.read_text(encoding="utf-8")) == RESULTS  # nothing written


def test_retarget_refuses_two_target_sections(tmp_path: Path) -> None:
    section = f"\n{TARGETS_HEADING}\n\n| x |\n"
    _write(tmp_path, markdown=MARKDOWN + section + section)
    with pytest.raises(ValueError, match="expected at most one '## Targets' section, found 2"):
        retarget("semantic_mri", tmp_path)


def test_retarget_refuses_a_json_list(tmp_path: Path) -> None:
    json_path, _ = _write(tmp_path)
    json_path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="benchmark 'semantic_mri': .* holds a JSON list, not an object"):
        retarget("semantic_mri", tmp_path)


@pytest.mark.parametrize("name", sorted(RETARGETABLE))
def test_committed_targets_match_the_committed_figures(name: str) -> None:
    committed = json.loads((RESULTS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    targets = committed["targets"]
    assert isinstance(targets, list) and targets
    for entry in targets:
        assert list(entry) == ["name", "value", "target", "met"]
        assert isinstance(entry["name"], str) and isinstance(entry["target"], str)
        assert isinstance(entry["value"], float) and isinstance(entry["met"], bool)
    targets_of, not_measured_of = RETARGETABLE[name]
    figures = {key: value for key, value in committed.items() if key != "targets"}
    assert json.loads(json.dumps(targets_of(figures))) == targets
    markdown = (RESULTS_DIR / f"{name}.md").read_text(encoding="utf-8")
    assert targets_markdown(targets, not_measured_of(figures)) in markdown

"""Tests of the classification task of common.workflows.utility (paper 003's downstream experiment): arms, the
stratified real set, labels from provenance records, the held-out checks, and a tiny experiment end to end."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from monai.networks.nets import ResNet

from common.metrics.classification import tune_threshold
from common.workflows.utility import (
    ClassificationUtility,
    case_label,
    classification_items,
    stratified_draw,
    utility_arms,
    validation_split,
)


def spot_item(case_id: str, positive: bool, seed: int, size: int = 16) -> dict:
    """A noisy 2D image; a positive one has a bright spot at a seeded place."""
    generator = torch.Generator().manual_seed(seed)
    image = 0.2 * torch.randn(1, size, size, generator=generator)
    if positive:
        top, left = (int(v) for v in torch.randint(2, size - 6, (2,), generator=generator))
        image[0, top : top + 4, left : left + 4] += 1.5
    return {"image": image, "label": torch.tensor(int(positive)), "case_id": case_id}


def cases(prefix: str, n: int, every: int = 5) -> list[dict]:
    """``n`` cases, every ``every``-th positive (``cancer`` flag as in a dataset.json)."""
    return [{"case_id": f"{prefix}{i:02d}", "image": f"/data/{prefix}{i:02d}.nii.gz", "cancer": int(i % every == 0)}
            for i in range(n)]  # fmt: skip


def load(cases_: list[dict]) -> list[dict]:
    return [spot_item(c["case_id"], bool(c["cancer"]), sum(map(ord, c["case_id"]))) for c in cases_]


class FakeSampling:
    """Stands in for the guided sampler: 'writes' 3 samples for each of 4 references, every other one positive."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir

    def run(self) -> list[dict]:
        return [{"case_id": f"tr{m:02d}_sample{i:03d}", "cancer": (m + i) % 2} for m in range(4) for i in range(3)]


def experiment(out: Path, **options) -> ClassificationUtility:
    settings = {
        "output_dir": str(out),
        "train_cases": cases("tr", 20),
        "test_cases": cases("te", 10),
        "shifted_test_cases": cases("sh", 10),
        "generator_cases": cases("tr", 20),
        "seed_cases": cases("tr", 4),
        "held_out_from": {"pathology_patches": [{"case_id": "patch_000", "image": "/data/patch_000.nii.gz"}]},
        "real_items": load,
        "synthetic_items": load,
        "sampling": FakeSampling(out / "synthetic"),
        "network": partial(
            ResNet,
            block="basic",
            layers=[1, 1, 1, 1],
            block_inplanes=[4, 4, 8, 8],
            spatial_dims=2,
            n_input_channels=1,
            conv1_t_size=3,
            num_classes=2,
        ),  # fmt: skip
        "optimizer": partial(torch.optim.Adam, lr=1e-2),
        "loss": torch.nn.CrossEntropyLoss(),
        "real_count": 10,
        "positive_fraction": 0.2,
        "synthetic_multiples": [1],
        "seeds": [0, 1],
        "iterations": 2,
        "batch_size": 4,
        "resamples": 20,
    }
    return ClassificationUtility(**{**settings, **options})


def test_arms_without_augmentation_or_synthetic_only_arms() -> None:
    names = [arm.name for arm in utility_arms(50, [1, 2], augmented=False, synthetic_only=False)]
    assert names == ["real", "real+syn50", "real+syn100", "real_all", "ceiling"]


def test_stratified_draw_keeps_the_share_of_positives() -> None:
    drawn = stratified_draw(cases("tr", 40), 20, 0.1, seed=0)
    assert len(drawn) == 20 and sum(c["cancer"] for c in drawn) == 2
    assert stratified_draw(cases("tr", 40), 20, 0.1, seed=0) == drawn
    with pytest.raises(ValueError, match=r"20 cases with 10 positive\(s\) asked for, the training pool has 8 positive"):
        stratified_draw(cases("tr", 40), 20, 0.5, seed=0)


def test_case_label_from_the_provenance_record_or_the_case(tmp_path: Path) -> None:
    record = tmp_path / "s.json"
    record.write_text(json.dumps({"cancer": 1}))
    assert case_label({"case_id": "s", "provenance": str(record), "cancer": 0}) == 1  # the record wins
    assert case_label({"case_id": "r", "cancer": False}) == 0
    with pytest.raises(ValueError, match="case 'r': expected a 0/1 'cancer' flag"):
        case_label({"case_id": "r"})
    record.write_text("{")
    with pytest.raises(ValueError, match="case 's': provenance record '.*s.json' is unreadable"):
        case_label({"case_id": "s", "provenance": str(record)})


def test_classification_items_check_the_flag_against_the_lesion_mask() -> None:
    def transform(case: dict) -> dict:
        return {"image": torch.zeros(1, 4, 4), "label": torch.ones(1, 4, 4) * case["lesion"]}

    items = classification_items([{"case_id": "a", "cancer": 1, "lesion": 1}], transform, lesion_key="label")
    assert items[0]["label"].dtype == torch.int64 and int(items[0]["label"]) == 1
    assert items[0]["image"].shape == (1, 4, 4)
    with pytest.raises(ValueError, match="case 'b': its 'cancer' flag is 1 but its lesion mask .* is empty"):
        classification_items([{"case_id": "b", "cancer": 1, "lesion": 0}], transform, lesion_key="label")


def test_a_shifted_test_set_must_be_held_out_too(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\['tr01'\] are also generator training cases"):
        experiment(tmp_path, shifted_test_cases=[cases("tr", 2)[1]])
    patch = [{"case_id": "te03", "image": "/data/other.nii.gz"}]
    with pytest.raises(ValueError, match=r"\['te03'\] are also pathology patches"):
        experiment(tmp_path, held_out_from={"pathology_patches": patch})


def test_classification_experiment_writes_its_report(tmp_path: Path) -> None:
    results = experiment(tmp_path).run()
    assert list(results["arms"]) == ["real", "real+syn10", "real_all", "ceiling"]
    assert results["cases"]["scarce_real_positives"] == 2 and results["cases"]["test_positives"] == 2
    auc = results["arms"]["real+syn10"]["metrics"]["auc"]
    assert auc["n"] == 10 and len(auc["per_seed"]) == 2 and auc["mean"] is not None
    assert set(results["arms"]["real"]["metrics_shifted"]) == {"auc", "f1", "f1_fixed"}
    comparison = results["comparisons"]["vs real (test)"]["real+syn10"]["auc"]
    assert comparison["difference"] == pytest.approx(auc["mean"] - results["arms"]["real"]["metrics"]["auc"]["mean"])
    assert set(results["comparisons"]) == {"vs real (test)", "vs real (shifted)"}
    assert results["sanity"]["ratio"] is not None
    report = (tmp_path / "report.md").read_text()
    assert "## held-out test set" in report and "## shifted test set (10 images)" in report
    assert "| real+syn10 | 7 (+ 3) | 10 |" in report  # 3 of the 10 real images validate, 7 train
    assert (tmp_path / "utility_auc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = json.loads((tmp_path / "runs" / "real__seed0.json").read_text())
    assert set(run["cases"]) == {c["case_id"] for c in cases("te", 10) + cases("sh", 10)}  # both test sets scored
    assert experiment(tmp_path / "again").run()["arms"]["real"]["metrics"] == results["arms"]["real"]["metrics"]


def test_validation_split_is_stratified_seeded_and_refuses_a_lone_class() -> None:
    pool = cases("tr", 20)  # 4 positive, 16 negative
    kept, held = validation_split(pool, 0.2, seed=0)
    assert sum(c["cancer"] for c in held) == 1 and len(held) == 4  # max(1, round(0.8)) + round(3.2)
    assert {c["case_id"] for c in kept} | {c["case_id"] for c in held} == {c["case_id"] for c in pool}
    assert [c["case_id"] for c in kept] == [c["case_id"] for c in pool if c not in held]  # order kept
    assert validation_split(pool, 0.2, seed=0) == (kept, held) and validation_split(pool, 0.2, seed=1) != (kept, held)
    with pytest.raises(ValueError, match=r"the scarce images hold 1 positive case\(s\); a validation split"):
        validation_split(cases("tr", 5), 0.2, seed=0, pool="scarce")
    with pytest.raises(ValueError, match=r"config key 'validation_fraction': expected a share in \(0, 1\), got 1"):
        validation_split(pool, 1.0, seed=0)


def test_tuned_threshold_comes_from_the_training_side_never_the_test_labels(tmp_path: Path) -> None:
    results = experiment(tmp_path, seeds=[0], sanity=False).run()
    real, mixed = (json.loads((tmp_path / "runs" / f"{a}__seed0.json").read_text()) for a in ("real", "real+syn10"))
    held = real["settings"]["validation_cases"]
    assert held == mixed["settings"]["validation_cases"] == results["cases"]["validation"]["scarce"] and len(held) == 3
    assert not set(held) & set(real["settings"]["training_cases"]) and not set(held) & set(results["cases"]["test"])
    assert [c for c in mixed["settings"]["training_cases"] if "_sample" not in c] == real["settings"]["training_cases"]
    scores = list(real["validation"].values())
    expected = tune_threshold([v["label"] for v in scores], [v["probability"] for v in scores]).threshold
    assert results["arms"]["real"]["f1_thresholds"]["per_seed"] == [expected]
    assert results["arms"]["real"]["f1_thresholds"]["rule"] == "tuned"
    # shuffle the test labels in the cached runs: the thresholds stay, the test figures follow the new labels
    for path in (tmp_path / "runs").glob("*.json"):
        run = json.loads(path.read_text())
        test_ids = sorted(c for c in run["cases"] if c.startswith("te"))
        labels = [run["cases"][c]["label"] for c in test_ids]
        for case, label in zip(test_ids, labels[3:] + labels[:3]):
            run["cases"][case]["label"] = label
        path.write_text(json.dumps(run))
    shuffled = experiment(tmp_path, seeds=[0], sanity=False).run()
    for arm in ("real", "real+syn10"):
        assert shuffled["arms"][arm]["f1_thresholds"] == results["arms"][arm]["f1_thresholds"]
    assert shuffled["arms"]["real"]["metrics"]["auc"] != results["arms"]["real"]["metrics"]["auc"]
    report = (tmp_path / "report.md").read_text()
    assert "F1 (tuned) [95 % CI]" in report and "F1 at 0.5 [95 % CI]" in report and "F1 threshold per seed" in report
    assert "a threshold chosen per arm and seed where it maximises F1 on a validation split" in report
    assert "never on test labels" in report


def test_a_fixed_f1_threshold_holds_nothing_out(tmp_path: Path) -> None:
    results = experiment(tmp_path, seeds=[0], sanity=False, synthetic_multiples=[], f1_threshold=0.3).run()
    arm = results["arms"]["real"]
    assert set(arm["metrics"]) == {"auc", "f1"} and arm["f1_thresholds"] == {"rule": "fixed", "per_seed": [0.3]}
    assert arm["real_cases"] == 10 and arm["validation_cases"] == 0 and results["cases"]["validation"] == {}
    run = json.loads((tmp_path / "runs" / "real__seed0.json").read_text())
    assert "validation" not in run and "validation_cases" not in run["settings"]
    assert "F1: positive at probability >= 0.3 (fixed)." in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"f1_threshold": "best"},
            r"config key 'f1_threshold': expected 'tuned' or a probability in \(0, 1\), got 'best'",
        ),
        ({"f1_threshold": 1.0}, "config key 'f1_threshold'"),
        ({"fixed_threshold": 0.0}, r"config key 'fixed_threshold': expected a probability in \(0, 1\), got 0.0"),
        ({"positive_fraction": 0.1}, r"the scarce real training images hold 1 positive case\(s\)"),
        ({"synthetic_only_arms": True}, r"config key 'f1_threshold': 'tuned' holds out real .* \['syn10'\]"),
    ],
)
def test_bad_threshold_settings_name_the_key(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        experiment(tmp_path, **options)

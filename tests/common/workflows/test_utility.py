"""Tests of common.workflows.utility: arms, the held-out check, ordering, and a tiny 2D experiment end to end."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.losses import DiceCELoss, DiceLoss
from monai.networks.nets import UNet
from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd, RandGaussianNoised

from common.metrics.statistics import ratio_of_means_ci
from common.workflows.utility import (
    UtilityExperiment,
    check_held_out,
    describe_module,
    describe_transform,
    round_robin,
    utility_arms,
    utility_test_cases,
)


def square_item(case_id: str, seed: int, size: int = 16) -> dict:
    """A 2D image with a bright square (the target) at a seeded place, and its mask."""
    generator = torch.Generator().manual_seed(seed)
    top, left = (int(v) for v in torch.randint(2, size - 7, (2,), generator=generator))
    label = torch.zeros(1, size, size)
    label[0, top : top + 5, left : left + 5] = 1
    image = label * 1.5 - 0.5 + 0.1 * torch.randn(1, size, size, generator=generator)
    return {"image": image, "label": label, "case_id": case_id}


def cases(prefix: str, n: int) -> list[dict]:
    return [{"case_id": f"{prefix}{i:02d}", "image": f"/data/{prefix}{i:02d}.nii.gz"} for i in range(n)]


def load(cases_: list[dict]) -> list[dict]:
    return [square_item(c["case_id"], sum(map(ord, c["case_id"]))) for c in cases_]


class FakeSampling:
    """Stands in for a bundle's sampling workflow: 'writes' 3 samples for each of 2 masks."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.calls = 0

    def run(self) -> list[dict]:
        self.calls += 1
        return [{"case_id": f"tr{m:02d}_sample{i:03d}"} for m in range(2) for i in range(3)]


def experiment(out: Path, **options) -> UtilityExperiment:
    settings = {
        "output_dir": str(out),
        "train_cases": cases("tr", 4),
        "test_cases": cases("te", 3),
        "generator_cases": cases("tr", 4),
        "seed_cases": cases("tr", 2),
        "real_items": load,
        "synthetic_items": load,
        "sampling": FakeSampling(out / "synthetic"),
        "network": partial(
            UNet, spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=0
        ),
        "optimizer": partial(torch.optim.Adam, lr=1e-2),
        "loss": DiceCELoss(to_onehot_y=True, softmax=True),
        "augmentation": Compose([RandFlipd(["image", "label"], prob=0.5), RandGaussianNoised("image", prob=0.5)]),
        "real_count": 2,
        "synthetic_multiples": [1, 2],
        "seeds": [0, 1],
        "iterations": 3,
        "batch_size": 2,
        "min_test_cases": 3,
    }
    return UtilityExperiment(**{**settings, **options})


def test_utility_arms() -> None:
    names = [arm.name for arm in utility_arms(4, [1, 4])]
    assert names == [
        "real", "real+aug", "syn4", "real+syn4", "real+syn4+aug", "syn16", "real+syn16", "real+syn16+aug",
        "real_all", "ceiling",
    ]  # fmt: skip
    assert [arm.name for arm in utility_arms(2, [], sanity=False)] == ["real", "real+aug"]


@pytest.mark.parametrize("count, multiples, key", [(0, [1], "real_count"), (2, [0], "synthetic_multiples")])
def test_utility_arms_rejects(count: int, multiples: list[int], key: str) -> None:
    with pytest.raises(ValueError, match=f"config key '{key}'"):
        utility_arms(count, multiples)


def test_check_held_out_names_the_shared_cases() -> None:
    check_held_out(cases("te", 2), generator_training_cases=cases("tr", 3))
    with pytest.raises(ValueError, match=r"case\(s\) \['te01'\] are also generator training cases"):
        check_held_out(cases("te", 2), generator_training_cases=[*cases("tr", 3), {"case_id": "te01"}])
    renamed = [{"case_id": "copy", "image": "/data/te00.nii.gz"}]
    with pytest.raises(ValueError, match=r"\['te00'\] are also seeding cases"):
        check_held_out(cases("te", 2), seeding_cases=renamed)
    with pytest.raises(ValueError, match="config key 'test_cases'"):
        check_held_out([], seeding_cases=renamed)
    tagged = [{**case, "view": "CC", "lesion": "none"} for case in cases("te", 2)]
    check_held_out(tagged, generator_training_cases=[{**case, "view": "CC"} for case in cases("tr", 2)])  # metadata


def test_experiment_refuses_a_test_case_the_generator_saw(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\['te00', 'te01'\] are also generator training cases"):
        experiment(tmp_path, generator_cases=cases("tr", 4) + cases("te", 2))


def test_the_harness_ratio_has_a_paired_bootstrap_interval(tmp_path: Path) -> None:
    """real_all / ceiling Dice with its interval over test cases, from the same per-case scores as the table."""
    results = experiment(tmp_path, synthetic_multiples=[], seeds=[0], min_test_cases=2).run()
    sanity = results["sanity"]
    per_case = {arm: results["arms"][arm]["per_case"] for arm in ("real_all", "ceiling")}
    expected = ratio_of_means_ci(*({c: v["dice"] for c, v in per_case[arm].items()} for arm in per_case), 2)
    assert sanity["ratio"] == pytest.approx(expected["ratio"])
    assert (sanity["ci_low"], sanity["ci_high"]) == (expected["ci_low"], expected["ci_high"])
    assert sanity["ci_low"] <= sanity["ratio"] <= sanity["ci_high"]
    report = (tmp_path / "report.md").read_text()
    interval = f"[{sanity['ci_low']:.3f}, {sanity['ci_high']:.3f}]"
    assert f"(95 % paired-bootstrap interval over test cases {interval})" in report


def test_round_robin_spreads_the_first_samples_over_the_masks() -> None:
    entries = [{"case_id": f"{m}_sample{i:03d}"} for m in ("b", "a") for i in range(2)]
    assert [e["case_id"] for e in round_robin(entries)] == ["a_sample000", "b_sample000", "a_sample001", "b_sample001"]


def test_experiment_writes_the_report_and_says_when_cases_are_too_few(tmp_path: Path) -> None:
    results = experiment(tmp_path, min_test_cases=4).run()
    assert set(results["arms"]) == {
        "real", "real+aug", "syn2", "real+syn2", "real+syn2+aug", "syn4", "real+syn4", "real+syn4+aug", "real_all",
        "ceiling",
    }  # fmt: skip
    assert results["arms"]["real+syn4"]["real_cases"] == 2 and results["arms"]["real+syn4"]["synthetic"] == 4
    assert results["arms"]["real"]["metrics"]["dice"]["n"] == 3
    assert len(results["arms"]["real"]["seed_means"]["dice"]) == 2
    comparison = results["comparisons"]["vs real"]["real+syn4"]
    assert comparison["p"] is None and "fewer than the 4 needed" in comparison["note"]
    assert results["anova"]["p"] is None and results["comparisons_count"] == 14  # 7 arms against each of 2 baselines
    assert results["sanity"]["ratio"] is not None and results["sanity"]["ci_low"] is None
    report = (tmp_path / "report.md").read_text()
    assert "| real+syn4+aug | 2 | 4 | yes |" in report and "no p (too few cases)" in report
    assert "(no interval: 3 paired test case(s), fewer than the 4 needed for an interval)" in report
    assert json.loads((tmp_path / "report.json").read_text())["cases"]["test"] == ["te00", "te01", "te02"]
    assert (tmp_path / "utility_dice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((tmp_path / "runs").glob("*.json"))) == 20


def test_p_values_with_enough_cases(tmp_path: Path) -> None:
    results = experiment(tmp_path, test_cases=cases("te", 5), synthetic_multiples=[1], seeds=[0], sanity=False).run()
    comparison = results["comparisons"]["vs real+aug"]["real+syn2"]
    assert comparison["n"] == 5
    assert comparison["p"] is not None or "same" in comparison["note"]
    assert "sanity" not in results and results["anova"]["groups"] == sorted(
        ["real", "real+aug", "syn2", "real+syn2", "real+syn2+aug"]
    )


def scores(results: dict) -> dict:
    """Every arm's numbers but its training time."""
    return {name: {k: v for k, v in arm.items() if k != "seconds"} for name, arm in results["arms"].items()}


def test_same_seed_same_numbers(tmp_path: Path) -> None:
    first = experiment(tmp_path / "a", synthetic_multiples=[1], seeds=[3], sanity=False).run()
    second = experiment(tmp_path / "b", synthetic_multiples=[1], seeds=[3], sanity=False).run()
    assert scores(first) == scores(second)
    other = experiment(tmp_path / "c", synthetic_multiples=[1], seeds=[4], sanity=False).run()
    assert other["arms"]["real+aug"]["per_case"] != first["arms"]["real+aug"]["per_case"]


def test_a_rerun_resumes_from_the_cached_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    partial_run = experiment(tmp_path, time_limit_minutes=0.0).run()
    assert partial_run == {"complete": False, "runs_done": 1, "runs_total": 20}
    assert not (tmp_path / "report.json").exists() and len(list((tmp_path / "runs").glob("*.json"))) == 1
    done = experiment(tmp_path).run()
    monkeypatch.setattr(UtilityExperiment, "train", lambda *args: pytest.fail("a cached run was trained again"))
    assert experiment(tmp_path).run() == done


def test_cached_runs_of_other_settings_are_refused_or_overwritten(tmp_path: Path) -> None:
    experiment(tmp_path, synthetic_multiples=[], seeds=[0], sanity=False).run()
    with pytest.raises(
        FileExistsError, match=r"'real__seed0.json' holds a run made with other settings \(\['iterations'\]\)"
    ):
        experiment(tmp_path, synthetic_multiples=[], seeds=[0], sanity=False, iterations=4).run()
    results = experiment(tmp_path, synthetic_multiples=[], seeds=[0], sanity=False, iterations=4, overwrite=True).run()
    assert results["settings"]["iterations"] == 4


def test_a_run_of_another_optimizer_loss_or_inferer_is_not_reused(tmp_path: Path) -> None:
    """The optimizer's values, the loss and the inferer's window blending change every figure: part of a run's
    settings, so a cached run of other ones is refused (a cached run is reused only when made the same way)."""
    options = {"synthetic_multiples": [], "seeds": [0], "sanity": False}
    window = {"roi_size": (8, 8), "sw_batch_size": 4, "overlap": 0.5}
    experiment(tmp_path, inferer=SlidingWindowInferer(**window), **options).run()
    changes = {
        "optimizer": {"optimizer": partial(torch.optim.Adam, lr=1e-3)},
        "loss": {"loss": DiceLoss(to_onehot_y=True, softmax=True)},
        "inferer": {"inferer": SlidingWindowInferer(**window, mode="gaussian")},
    }
    same_class = {  # the same loss class with another option: seen too (not only the class name)
        "include_background": DiceCELoss(to_onehot_y=True, softmax=True, include_background=False),
        "lambda_ce": DiceCELoss(to_onehot_y=True, softmax=True, lambda_ce=0.5),
        "weight": DiceCELoss(to_onehot_y=True, softmax=True, weight=torch.tensor([1.0, 3.0])),
    }
    for option, loss in same_class.items():
        changes[f"loss ({option})"] = {"loss": loss}
    for name, change in changes.items():
        key = name.split()[0]
        with pytest.raises(FileExistsError, match=rf"other settings \(\['{key}'\]\)"):
            experiment(tmp_path, **{"inferer": SlidingWindowInferer(**window), **options, **change}).run()
    same = experiment(tmp_path, inferer=SlidingWindowInferer(**window), **options)
    run = json.loads((tmp_path / "runs" / "real__seed0.json").read_text())["settings"]
    assert (
        same.settings(same.arms[0], load(same.scarce_cases))["optimizer"]
        == run["optimizer"]
        == ["Adam", {"lr": "0.01"}]
    )
    assert run["loss"][0] == "DiceCELoss" and run["loss"][1]["dice"][1]["include_background"] is True


@pytest.mark.parametrize(
    "options, message",
    [
        ({"real_count": 5}, "config key 'real_count': 5 scarce real cases asked for, but only 4"),
        ({"sampling": None}, "config keys 'sampling', 'synthetic_items'"),
        ({"seeds": []}, "config key 'seeds'"),
        ({"iterations": 0}, "config keys 'iterations', 'batch_size'"),
    ],
)
def test_experiment_rejects_bad_settings(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        experiment(tmp_path, **options)


def test_too_few_synthetic_pairs_names_num_samples(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config key 'num_samples': the sampler wrote 6 synthetic pair"):
        experiment(tmp_path, synthetic_multiples=[4]).run()


def test_utility_test_cases_needs_a_test_dir_with_real_data() -> None:
    with pytest.raises(ValueError, match="config key 'test_dir'"):
        utility_test_cases(None, ["t1c"])


def test_describe_module_is_plain_json_the_same_in_every_process() -> None:
    """A loss is recorded by its options, buffers and submodules, as JSON without memory addresses."""
    weighted = DiceCELoss(to_onehot_y=True, softmax=True, weight=torch.tensor([1.0, 3.0]), lambda_dice=0.5)
    described = describe_module(weighted)
    assert (
        json.loads(json.dumps(described))
        == described
        == describe_module(DiceCELoss(to_onehot_y=True, softmax=True, weight=torch.tensor([1.0, 3.0]), lambda_dice=0.5))
    )
    name, options = described
    assert name == "DiceCELoss" and options["lambda_dice"] == 0.5 and options["lambda_ce"] == 1.0
    assert options["dice"][1]["class_weight"] == [1.0, 3.0] and options["dice"][1]["to_onehot_y"] is True
    assert options["cross_entropy"][1]["weight"] == [1.0, 3.0]
    assert "0x" not in json.dumps(described)
    assert describe_module(torch.nn.functional.cross_entropy) == "cross_entropy"


def test_describe_transform_is_the_same_after_use() -> None:
    augmentation = Compose([RandFlipd(["image", "label"], prob=0.5), RandGaussianNoised("image", prob=0.25)])
    before = describe_transform(augmentation)
    augmentation(square_item("x", 0))
    assert (
        describe_transform(augmentation)
        == before
        == ["Compose", ["RandFlipd(prob=0.5)", "RandGaussianNoised(prob=0.25)"]]
    )


def test_the_real_all_network_is_kept_as_a_feature_network(tmp_path: Path) -> None:
    """feature_network_file: the real_all arm's network of the first seed, a plain state dict; a cached run whose
    file is gone is trained again to the same weights; without the sanity arms it is a config error."""
    file = tmp_path / "feature_network.pt"
    options = {"synthetic_multiples": [], "seeds": [2, 3], "augmented_arms": False, "feature_network_file": str(file)}
    experiment(tmp_path / "out", **options).run()
    weights = torch.load(file, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    network = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=0)
    network.load_state_dict(weights)
    file.unlink()
    experiment(tmp_path / "out", **options).run()  # cached runs, file missing: the real_all run of seed 2 again
    again = torch.load(file, weights_only=True)
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    with pytest.raises(ValueError, match="config key 'feature_network_file'.*sanity"):
        experiment(tmp_path / "other", **{**options, "sanity": False})


def test_training_sampling_draws_patches_in_every_arm_and_defines_the_runs(tmp_path: Path) -> None:
    """training_sampling (e.g. patches around and away from the target) applies to every training item of every arm,
    before the augmentation; the test images are scored whole through the given inferer."""
    seen: list[tuple[int, ...]] = []

    class Recording(RandCropByPosNegLabeld):
        def __call__(self, data, *args, **kwargs):
            patches = super().__call__(data, *args, **kwargs)
            seen.extend(tuple(p["image"].shape) for p in patches)
            return patches

    crop = Recording(["image", "label"], "label", spatial_size=(8, 8), pos=1, neg=1, num_samples=2)
    inferer = SlidingWindowInferer(roi_size=(8, 8), sw_batch_size=4, overlap=0.5)
    options = {"synthetic_multiples": [1], "seeds": [0], "sanity": False}
    results = experiment(tmp_path / "a", training_sampling=crop, inferer=inferer, **options).run()
    assert set(seen) == {(1, 8, 8)} and len(seen) >= 5 * 3 * 2  # 5 arms x 3 steps, 2 patches per item
    assert len(results["arms"]["real"]["per_case"]) == 3  # whole 16 x 16 test images scored, one figure per case
    run = json.loads((tmp_path / "a" / "runs" / "real__seed0.json").read_text())["settings"]
    assert run["training_sampling"] == ["Recording", [8, 8]]
    assert run["inferer"] == [
        "SlidingWindowInferer",
        {"roi_size": [8, 8], "overlap": 0.5, "mode": "constant", "sigma_scale": 0.125},
    ]
    whole = experiment(tmp_path / "b", **options)
    assert "training_sampling" not in whole.settings(whole.arms[0], load(cases("tr", 2)))  # runs without it: as before

"""The distribution metrics of every bundle's evaluate.yaml: the paper's network is never replaced silently."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from bundle_helpers import REPO_ROOT, config_parser, error_chain


@pytest.mark.parametrize(
    "bundle, entry, metric",
    [
        ("semantic_mri", "models/resnet_50_23dataset.pth", "3D-FID (paper)"),
        ("paired_petct", "models/inception-2015-12-05.pt", "FID / IS (paper)"),
    ],
)
def test_paper_metric_without_its_weight_file_is_refused(tmp_path: Path, bundle: str, entry: str, metric: str) -> None:
    """fid_network: paper without the file: an error naming the config key, the large_files.yml name and the metric."""
    parser = config_parser(bundle, ("evaluate",), bundle_root=str(tmp_path), fid_network="paper")
    with pytest.raises(RuntimeError) as error:
        parser.get_parsed_content("distribution")
    chain = error_chain(error.value)
    assert "config key 'fid_paper_weights'" in chain and f"'{entry}'" in chain
    assert f"'{metric}' cannot be reported" in chain
    assert entry in (REPO_ROOT / "bundles" / bundle / "large_files.yml").read_text()  # named there, with its source
    assert parser.get_parsed_content("fid_paper_weights").endswith(entry)


@pytest.mark.parametrize("bundle", ["semantic_mri", "paired_petct", "latent_ct"])
def test_distribution_metrics_are_on_by_default(bundle: str) -> None:
    config = yaml.safe_load((REPO_ROOT / "bundles" / bundle / "configs" / "evaluate.yaml").read_text())
    assert config["distribution_metrics"] is True and config["distribution"]["_target_"].endswith("DistributionMetrics")
    assert "@distribution" in config["evaluation"]["distribution"]

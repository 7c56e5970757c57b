"""Every shipped profile prints, and dry-runs against a small dataset."""

from __future__ import annotations

import pytest

from iddm_cli.config.loader import available_profiles
from tests.conftest import make_dataset

SHIPPED = ["demo", "cifar10", "landscape", "ci-smoke"]


def test_the_four_profiles_ship():
    assert set(SHIPPED) <= set(available_profiles())


@pytest.mark.parametrize("name", SHIPPED)
def test_print_config(invoke, name):
    result = invoke("dm", "train", "--profile", name, "--print-config")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# resolved by iddm")
    assert "[data]" in result.output and "[train]" in result.output


@pytest.mark.parametrize("name", SHIPPED)
def test_dry_run(invoke, name, tmp_path):
    data = make_dataset(tmp_path / "data", ["a", "b"], per_class=3)
    result = invoke("dm", "train", "--profile", name, "--dataset-path", data, "--result-path", tmp_path / "out",
                    "--dry-run")
    assert result.exit_code == 0, result.output
    assert "parameters" in result.output and "dry run: nothing was written" in result.output
    assert not (tmp_path / "out").exists()


def test_demo_dry_run_uses_the_embedded_dataset(invoke, tmp_path):
    result = invoke("dm", "train", "--profile", "demo", "--result-path", tmp_path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "1200 images" in result.output and "conditional, 10 classes, gray" in result.output

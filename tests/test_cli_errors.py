"""User mistakes: one clear line, the right exit code, no traceback (unless --debug)."""

from __future__ import annotations

import pytest

from iddm_cli.errors import DataError
from tests.conftest import TINY, make_dataset


def assert_clean_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in " ".join(result.output.split()), result.output


def test_missing_dataset_is_a_data_error(invoke, tmp_path):
    result = invoke("dm", "train", "--dataset-path", tmp_path / "nope", "--result-path", tmp_path, *TINY)
    assert_clean_error(result, 3, "does not exist")


def test_unset_dataset_path_is_a_usage_error(invoke, tmp_path):
    result = invoke("dm", "train", "--result-path", tmp_path, *TINY)
    assert_clean_error(result, 2, "data.dataset_path is not set")


def test_conditional_on_a_flat_folder(invoke, flat_gray, tmp_path):
    result = invoke("dm", "train", "--dataset-path", flat_gray, "--conditional", "--result-path", tmp_path, *TINY)
    assert_clean_error(result, 3, "--conditional needs one subfolder per class")


def test_empty_folder_and_empty_class(invoke, tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke("dm", "train", "--dataset-path", tmp_path / "empty", "--result-path", tmp_path, *TINY)
    assert_clean_error(result, 3, "no images")
    data = make_dataset(tmp_path / "d", ["a", "b"])
    (data / "c").mkdir()
    result = invoke("dm", "train", "--dataset-path", data, "--result-path", tmp_path, *TINY)
    assert_clean_error(result, 3, "has no images", "/c")


def test_unreadable_image_is_skipped_or_refused_with_strict_data(invoke, tmp_path):
    data = make_dataset(tmp_path / "d", None)
    (data / "broken.png").write_bytes(b"not a png")
    result = invoke("dm", "train", "--dataset-path", data, "--result-path", tmp_path, *TINY)
    assert result.exit_code == 0, result.output
    assert "skipped, cannot be read as an image" in result.output and "broken.png" in result.output
    result = invoke("dm", "train", "--dataset-path", data, "--result-path", tmp_path, "--strict-data", *TINY)
    assert_clean_error(result, 3, "cannot be read as images", "broken.png", "iddm dataset check")


def test_bad_values(invoke, cond_data, tmp_path):
    result = invoke("dm", "train", "--dataset-path", cond_data, "--image-size", "abc", *TINY[2:])
    assert_clean_error(result, 2, "--image-size: data.image_size = 'abc'")
    result = invoke("dm", "train", "--network", "resnet")
    assert_clean_error(result, 2, "resnet")
    result = invoke("dm", "train", "--profile", "cifar11")
    assert_clean_error(result, 2, "unknown profile 'cifar11': did you mean 'cifar10'")
    result = invoke("dm", "train", "--set", "batchsize=3")
    assert_clean_error(result, 2, "did you mean [data] batch_size?")


def test_num_classes_mismatch(invoke, cond_data, tmp_path):
    result = invoke("dm", "train", "--dataset-path", cond_data, "--num-classes", "10", "--result-path", tmp_path,
                    *TINY)
    assert_clean_error(result, 3, "data.num_classes is 10", "3 class folders")


def test_later_release_features_are_refused(invoke, cond_data):
    result = invoke("dm", "train", "--dataset-path", cond_data, "--latent")
    assert_clean_error(result, 2, "model.latent")


def test_debug_shows_the_traceback(runner, tmp_path, monkeypatch):
    from iddm_cli.cli.app import app

    result = runner.invoke(app, ["dm", "train", "--dataset-path", str(tmp_path / "x"), "--debug", *TINY])
    assert isinstance(result.exception, DataError)
    monkeypatch.setenv("IDDM_DEBUG", "1")
    result = runner.invoke(app, ["dm", "train", "--dataset-path", str(tmp_path / "x"), *TINY])
    assert isinstance(result.exception, DataError)


@pytest.mark.parametrize("flag", ["--batch_size", "--batch-size", "-b"])
def test_iddm_underscore_spellings(invoke, flag):
    result = invoke("dm", "train", flag, "5", "--print-config")
    assert result.exit_code == 0
    assert "batch_size = 5" in result.output


def test_print_config_prints_only_settings_that_run(invoke):
    refused = invoke("dm", "train", "--image-size", "7", "--print-config")
    assert refused.exit_code == 2 and "7x7 is not divisible by 8" in refused.output and "[data]" not in refused.output
    # a profile to be completed on the command line: the autoencoder's dataset paths may still be missing
    vae = invoke("vae", "train", "--print-config")
    assert vae.exit_code == 0 and 'kind = "vae"' in vae.output


def test_iddm_command_line_parses(invoke, cond_data, tmp_path):
    """IDDM's documented command line, with `python train.py` replaced by `iddm dm train`."""
    result = invoke("dm", "train", "--sample", "ddpm", "--conditional", "--run_name", "df", "--epochs", "300",
                    "--batch_size", "16", "--image_size", "64", "--dataset_path", cond_data,
                    "--result_path", tmp_path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "conditional, 3 classes" in result.output
    assert "300 epochs" in result.output


def test_boolean_flags_can_be_switched_off(invoke):
    result = invoke("dm", "train", "--profile", "cifar10", "--no-conditional", "--no-vis", "--print-config")
    assert "conditional = false" in result.output and "vis = false" in result.output
    result = invoke("dm", "train", "--profile", "cifar10", "--no_conditional", "--print-config")
    assert "conditional = false" in result.output


@pytest.mark.parametrize("args,message", [
    (["smaple"], "error: No such command 'smaple'. Did you mean 'sample'? (see: iddm --help)"),
    (["dm", "trian"], "error: No such command 'trian'. Did you mean 'train'? (see: iddm dm --help)"),
    (["--bogus"], "error: No such option: --bogus (see: iddm --help)"),
])
def test_an_unknown_command_or_group_option_is_one_line(invoke, args, message):
    result = invoke(*args)
    assert result.exit_code == 2 and result.output.strip().splitlines() == [message], result.output


def test_a_bare_group_still_shows_its_help(invoke):
    result = invoke("dm")
    assert "Usage: iddm dm" in result.output and "train" in result.output and "error:" not in result.output

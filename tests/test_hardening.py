"""Every ordinary mistake and fault: one line, the right exit code, no traceback, nothing written outside the
result path, no checkpoint lost."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from iddm_cli.api import DMTrainer
from iddm_cli.core import checkpoint as ckpt
from iddm_cli.core.reporting import SilentReporter
from iddm_cli.core.rundir import RunLock
from iddm_cli.errors import ConfigError
from tests.conftest import TINY, make_dataset

SMALL = {"image_size": 8, "base_channels": 4, "noise_steps": 20, "batch_size": 4, "augment": "resize",
         "log_every": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 2-epoch run with an interval checkpoint per epoch, copied by each test that changes it."""
    root = tmp_path_factory.mktemp("trained")
    data = make_dataset(root / "data", ["a", "b"])
    result = DMTrainer(dataset_path=str(data), result_path=str(root / "runs"), run_name="run", epochs=2,
                       save_model_interval=True, save_model_interval_epochs=1, reporter=SilentReporter(),
                       **SMALL).train()
    return result.run_dir


def tree(root: Path, skip: Path) -> set[Path]:
    return {p for p in root.rglob("*") if skip not in p.parents and p != skip}


# ----------------------------------------------------------------------------------------------- the table
def _latin1(t: Path) -> list[str]:
    (t / "p.toml").write_bytes("# caf\xe9\n[optim]\nlr = 1e-3\n".encode("latin-1"))
    return ["--profile", str(t / "p.toml")]


def _toml(text: str):
    def make(t: Path) -> list[str]:
        (t / "p.toml").write_text(text, encoding="utf-8")
        return ["--profile", str(t / "p.toml")]
    return make


def _file(name: str, content: bytes):
    def make(t: Path) -> list[str]:
        (t / name).write_bytes(content)
        return []
    return make


def _code_pickle(t: Path) -> list[str]:
    torch.save({"format": "iddm", "x": argparse.Namespace(a=1)}, t / "code.pt")  # loading it would run code
    return ["--pretrain", "--pretrain-path", str(t / "code.pt")]


def _layout(kind: str):
    def make(t: Path) -> list[str]:
        data = t / "layout"
        if kind == "empty-class":
            make_dataset(data, ["a", "b"])
            (data / "c").mkdir()
        elif kind == "one-of-two-empty":
            make_dataset(data, ["a"])
            (data / "b").mkdir()
        elif kind == "empty":
            data.mkdir()
        elif kind == "no-images":
            data.mkdir()
            (data / "notes.txt").write_text("hello")
        elif kind == "file":
            data.write_text("not a folder")
        elif kind == "flat":
            make_dataset(data, None)
        return ["--dataset-path", str(data)]
    return make


def _result_is_file(t: Path) -> list[str]:
    (t / "out").rmdir()
    (t / "out").write_text("a file")
    return []


TRAIN_CASES = [  # (id, extra args or a function making files and returning args, exit code, fragment)
    ("lr-nan", ["--lr", "nan"], 2, "optim.lr = nan: expected a finite number"),
    ("lr-inf", ["--lr", "inf"], 2, "expected a finite number"),
    ("lr-too-big", ["--lr", "1000"], 2, "expected a value <= 10"),
    ("set-ema-nan", ["--set", "ema_decay=nan"], 2, "optim.ema_decay = nan"),
    ("set-cfg-dropout-nan", ["--set", "cfg_dropout=nan"], 2, "diffusion.cfg_dropout = nan"),
    ("set-lr-inf", ["--set", "lr=inf"], 2, "optim.lr = inf"),
    ("set-batch-huge", ["--set", "batch_size=9223372036854775807"], 2, "expected a value <= 65536"),
    ("set-noise-steps-float", ["--set", "noise_steps=1e12"], 2, "expected an integer"),
    ("noise-steps-huge", ["--noise-steps", "1000000"], 2, "expected a value <= 100000"),
    ("image-size-huge", ["--image-size", "100000"], 2, "at most 4096 px"),
    ("image-size-zero", ["--image-size", "0"], 2, "expected a positive size"),
    ("image-size-word", ["--image-size", "big"], 2, "data.image_size = 'big'"),
    ("base-channels-huge", ["--base-channels", "100000"], 2, "expected a value <= 1024"),
    ("epochs-zero", ["--epochs", "0"], 2, "train.epochs = 0"),
    ("workers-huge", ["--num-workers", "100000"], 2, "expected a value <= 256"),
    ("seed-negative", ["--seed", "-1"], 2, "expected a value >= 0"),
    ("devices-zero", ["--devices", "0"], 2, "a number of processes from 1"),
    ("device-tpu", ["--device", "tpu"], 2, "expected auto, cpu, cuda or cuda:N"),
    ("cfg-dropout-above-one", ["--cfg-dropout", "1.5"], 2, "expected a value <= 1"),
    ("network-unknown", ["--network", "resnet"], 2, "Invalid value for '--network'"),
    ("flag-unknown", ["--learning-rate", "1"], 2, "No such option: --learning-rate"),
    ("set-key-unknown", ["--set", "nosuch=1"], 2, "unknown key 'nosuch'"),
    ("run-name-dotdot", ["--run-name", "../escape"], 2, "expected one folder name (it has a path separator)"),
    ("run-name-absolute", ["--run-name", "/tmp/abs"], 2, "it has a path separator"),
    ("run-name-nested", ["--run-name", "a/b"], 2, "it has a path separator"),
    ("run-name-empty", ["--run-name", ""], 2, "it is empty"),
    ("run-name-dot", ["--run-name", "."], 2, "is not a folder of its own"),
    ("run-name-parent", ["--run-name", ".."], 2, "is not a folder of its own"),
    ("profile-not-utf8", _latin1, 2, "not UTF-8 text"),
    ("profile-bad-toml", _toml("[optim]\nlr = \n"), 2, "invalid TOML"),
    ("profile-unknown-section", _toml("[optimiser]\nlr = 1e-3\n"), 2, "unknown section 'optimiser'"),
    ("profile-extends-itself", _toml('extends = "p.toml"\n'), 2, "'extends' forms a cycle"),
    ("profile-missing", ["--profile", "nowhere.toml"], 2, "does not exist"),
    ("profile-unknown-name", ["--profile", "demoo"], 2, "did you mean 'demo'?"),
    ("dataset-missing", ["--dataset-path", "/nonexistent/data"], 3, "does not exist"),
    ("dataset-is-a-file", _layout("file"), 3, "is not a folder"),
    ("dataset-empty", _layout("empty"), 3, "no images"),
    ("dataset-only-text", _layout("no-images"), 3, "no images"),
    ("dataset-empty-class", _layout("empty-class"), 3, "has no images"),
    ("dataset-one-of-two-classes-empty", _layout("one-of-two-empty"), 3, "has no images"),
    ("conditional-on-flat", [*[], "--conditional"], 3, "--conditional needs one subfolder per class"),
    ("num-classes-mismatch", ["--num-classes", "5"], 3, "data.num_classes is 5"),
    ("pretrain-missing", ["--pretrain", "--pretrain-path", "/nonexistent/w.pt"], 2, "does not exist"),
    ("pretrain-garbage", lambda t: [*_file("g.pt", b"garbage")(t), "--pretrain", "--pretrain-path", str(t / "g.pt")],
     2, "not a PyTorch checkpoint"),
    ("pretrain-runs-code", _code_pickle, 2, "could run code"),
    ("pretrain-without-path", ["--pretrain"], 2, "needs --pretrain-path"),
    ("result-path-is-a-file", _result_is_file, 2, "is not a folder"),
    ("force-without-resume", ["--force"], 2, "--force only applies together with --resume"),
    ("num-vis-zero", ["--num-vis", "0"], 2, "--num-vis: vis.num_vis: 0: expected -1 (8 images) or 1 or more"),
]


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize("case", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_bad_training_input(invoke, tmp_path, case, dry_run):
    _, extra, code, fragment = case
    data = make_dataset(tmp_path / "data", None if case[0] == "conditional-on-flat" else ["a", "b"])
    (tmp_path / "out").mkdir()
    extra = extra(tmp_path) if callable(extra) else extra
    before = tree(tmp_path, tmp_path / "out")
    args = ["dm", "train", "--dataset-path", data, "--result-path", tmp_path / "out", *TINY, *extra]
    result = invoke(*args, *(["--dry-run"] if dry_run else []))
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.output
    assert tree(tmp_path, tmp_path / "out") == before  # nothing written outside the result path
    out = tmp_path / "out"
    assert not out.is_dir() or not any(out.iterdir())  # and a failed start leaves nothing behind in it


def _resume_case(name: str):
    """Break a copy of the trained run in one way; returns (args after `iddm resume RUN`, exit code, fragment)."""
    def edit_config(run: Path, old: str, new: str) -> None:
        text = (run / "config.toml").read_text()
        assert old in text
        (run / "config.toml").write_text(text.replace(old, new))

    def make(run: Path) -> tuple[list[str], int, str]:
        if name == "truncated-config":
            (run / "config.toml").write_text((run / "config.toml").read_text()[:200] + "\n[mod")
            return [], 2, "config.toml: unreadable"
        if name == "edited-network":
            edit_config(run, "base_channels = 4", "base_channels = 8")
            return [], 2, "model.base_channels (4 in ckpt_last.pt, 8 in config.toml)"
        if name == "edited-epochs":
            edit_config(run, "epochs = 2", "epochs = 5")
            return [], 2, "train.epochs (2 in ckpt_last.pt, 5 in config.toml)"
        if name == "config-not-utf8":
            (run / "config.toml").write_bytes(b"\xff\xfe broken")
            return [], 2, "config.toml: unreadable"
        if name == "not-a-run":
            (run / "config.toml").unlink()
            return [], 2, "is not a run directory"
        if name == "changed-lr":
            return ["--lr", "0.1", "--epochs", "3"], 2, "optim.lr cannot change when resuming"
        if name == "nothing-left":
            return [], 2, "nothing is left to train"
        if name == "start-epoch-missing":
            return ["--start-epoch", "7", "--epochs", "9"], 2, "ckpt_007.pt"
        if name == "no-readable-state":
            for p in run.glob("ckpt_*.pt"):
                p.write_bytes(b"garbage")
            return ["--epochs", "3"], 2, "holds no readable training state"
        if name == "num-vis-zero":  # refused on resume too, not only when a run starts
            return ["--num-vis", "0", "--epochs", "3"], 2, "num_vis = 0: expected -1 (8 images) or 1 or more"
        if name == "no-checkpoint":  # a run that stopped before its first epoch ended
            for p in run.glob("ckpt_*.pt"):
                p.unlink()
            return [], 2, f"before its first epoch ended (the end of its train.log says why), so there is nothing " \
                f"to continue; a new run with its settings (in a new folder beside it): iddm dm train --profile " \
                f"{run / 'config.toml'}"
        if name == "start-epoch-newer-states":
            return ["--start-epoch", "1", "--epochs", "3"], 2, "newer states exist (ckpt_002.pt, ckpt_last.pt)"
        raise AssertionError(name)
    return make


RESUME_CASES = ["truncated-config", "edited-network", "edited-epochs", "config-not-utf8", "not-a-run", "changed-lr",
                "nothing-left", "start-epoch-missing", "no-readable-state", "no-checkpoint", "num-vis-zero",
                "start-epoch-newer-states"]


@pytest.mark.parametrize("name", RESUME_CASES)
def test_bad_run_directories(invoke, tmp_path, trained, name):
    run = tmp_path / "out" / "run"
    shutil.copytree(trained, run)
    extra, code, fragment = _resume_case(name)(run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = invoke("resume", run, *extra)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.output
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # the run is untouched


def test_resume_passes_over_a_state_whose_weights_do_not_fit(invoke, tmp_path, trained):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    state = ckpt.load_checkpoint(run / "ckpt_last.pt")
    state["model"].popitem()  # a file edited by hand: its weights no longer fit the network it names
    torch.save(state, run / "ckpt_last.pt")
    result = invoke("resume", run, "--epochs", "3", "--dry-run")
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and "skipped ckpt_last.pt" in text and "do not fit each other" in text, text
    assert "ckpt_002.pt" in text  # the newest intact state


def test_train_log_says_why_any_error_stopped_the_run(invoke, tmp_path, monkeypatch, cond_data):
    def boom(self, epoch, position):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr("iddm_cli.train.engine.Session.run_epoch", boom)
    with pytest.raises(RuntimeError, match="simulated"):  # not a user mistake: its traceback stays
        invoke("dm", "train", "--dataset-path", cond_data, "--result-path", tmp_path, *TINY)
    last = (tmp_path / "df" / "train.log").read_text().splitlines()[-1]
    assert last.endswith("stopped: RuntimeError: out of memory (simulated)")


def _out_with_files(t: Path) -> list[str]:
    (t / "out" / "full").mkdir()
    (t / "out" / "full" / "x").write_text("x")
    return ["--out", str(t / "out" / "full")]


def _out_is_file(t: Path) -> list[str]:
    (t / "out" / "f").write_text("x")
    return ["--out", str(t / "out" / "f")]


SAMPLE_CASES = [
    ("out-not-empty", _out_with_files, 2, "already holds files"),
    ("out-is-a-file", _out_is_file, 2, "is a file"),
    ("num-zero", lambda t: ["--num", "0"], 2, "--num 0: expected a value >= 1"),
    ("eta-nan", lambda t: ["--eta", "nan"], 2, "expected a finite number"),
    ("sampler-unknown", lambda t: ["--sampler", "euler"], 2, "Invalid value for '--sampler'"),
    ("batch-huge", lambda t: ["--batch-size", "10000000"], 2, "expected a value <= 65536"),
    ("eta-without-ddim", lambda t: ["--sampler", "ddpm", "--eta", "0.5"], 2, "--eta: ddpm has no such setting"),
]


def test_a_checkpoint_without_ema_weights_samples_its_raw_ones_and_says_so(invoke, tmp_path, trained):
    data = ckpt.load_checkpoint(trained / "ckpt_last.pt")
    data["ema"] = None
    torch.save(data, tmp_path / "no-ema.pt")
    result = invoke("sample", tmp_path / "no-ema.pt", "--steps", "2", "--num", "1", "--out", tmp_path / "s")
    assert result.exit_code == 0 and "holds no EMA weights, so its raw weights sample" in " ".join(
        result.output.split())
    missing = invoke("resume", tmp_path / "nowhere")
    assert missing.exit_code == 2 and "nowhere does not exist: give the run directory" in missing.output


@pytest.mark.parametrize("edit,fragment", [
    (lambda c: c["network"].update(name="bogus"), "network 'bogus' is not one this iddm knows"),
    (lambda c: c.pop("model"), "is damaged: its 'model' entry is missing"),
    (lambda c: c["network"].pop("kwargs"), "is damaged: its 'network.kwargs' entry is missing"),
    (lambda c: c["network"].update(name=["unet"]), "is damaged: its 'network.name' entry is missing"),
    (lambda c: c.pop("data"), "is damaged: its 'data' entry is missing"),
    (lambda c: c["network"]["kwargs"].update(depth=3), "its weights and its network description do not fit"),
    (lambda c: c["model"].popitem(), "its weights and its network description do not fit"),
], ids=["unknown-network", "no-model", "no-kwargs", "name-not-text", "no-data", "unknown-kwarg", "weights-missing"])
def test_an_edited_checkpoint_is_refused_in_one_line(invoke, tmp_path, trained, edit, fragment):
    data = ckpt.load_checkpoint(trained / "ckpt_last.pt")
    edit(data)
    torch.save(data, tmp_path / "edited.pt")
    result = invoke("sample", tmp_path / "edited.pt", "--steps", "2", "--no-ema", "--out", tmp_path / "s")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and fragment in lines[0], result.output
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("case", SAMPLE_CASES, ids=[c[0] for c in SAMPLE_CASES])
def test_bad_sample_requests(invoke, tmp_path, trained, case):
    _, make, code, fragment = case
    (tmp_path / "out").mkdir()
    extra = make(tmp_path)
    before = tree(tmp_path, tmp_path / "nothing")
    result = invoke("sample", trained, "--steps", "2", *extra)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and fragment in lines[0], result.output
    assert tree(tmp_path, tmp_path / "nothing") == before
    assert not (trained / "samples").exists()


def test_sample_out_dot_is_checked_before_sampling(invoke, tmp_path, trained, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    result = invoke("sample", trained, "--out", ".", "--steps", "2")
    assert result.exit_code == 2 and "already holds files" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    result = invoke("sample", trained, "--out", ".", "--steps", "2", "--num", "1")
    assert result.exit_code == 0, result.output
    assert (empty / "manifest.json").exists() and sorted(tmp_path.iterdir()) == [empty, tmp_path / "keep.txt"]


def test_sample_disk_full_while_writing_is_one_line_and_exit_4(invoke, tmp_path, trained, monkeypatch):
    from PIL import Image

    real_save, calls = Image.Image.save, {"n": 0}

    def filling(self, fp, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", filling)
    result = invoke("sample", trained, "--out", tmp_path / "s", "--steps", "2", "--num", "2")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 4 and lines == [f"error: cannot write {tmp_path / 's'}: disk full (ENOSPC); "
                                               f"{tmp_path / 's'} may hold some of the images: remove it, or give "
                                               "another --out"], lines


@pytest.mark.parametrize("args,fragment", [(["--image-size", "0"], "--image-size '0'"),
                                           (["--kind", "lmdb"], "Invalid value for '--kind'")])
def test_bad_dataset_check_flags(invoke, cond_data, args, fragment):
    result = invoke("dataset", "check", cond_data, *args)
    assert result.exit_code == 2 and fragment in result.output and len(result.output.strip().splitlines()) == 1


def test_check_and_training_agree_on_one_empty_class_of_two(invoke, tmp_path):
    data = make_dataset(tmp_path / "d", ["a"])
    (data / "b").mkdir()
    checked = invoke("dataset", "check", data, "--json")
    assert checked.exit_code == 3 and '"layout": "conditional"' in checked.output and "empty-class" in checked.output
    trained = invoke("dm", "train", "--dataset-path", data, "--result-path", tmp_path / "out", *TINY)
    assert trained.exit_code == 3 and "class folder" in trained.output and "/b has no images" in trained.output


def test_a_dangling_link_is_reported_by_training_as_by_check(invoke, tmp_path):
    data = make_dataset(tmp_path / "d", ["a", "b"])
    (data / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    assert invoke("dataset", "check", data).exit_code == 3
    planned = invoke("dm", "train", "--dataset-path", data, "--result-path", tmp_path / "out", *TINY, "--dry-run")
    assert planned.exit_code == 0 and f"skipped, cannot be read as an image: {data / 'a' / 'gone.png'}" in \
        " ".join(planned.output.split()), planned.output
    strict = invoke("dm", "train", "--dataset-path", data, "--result-path", tmp_path / "out", *TINY, "--strict-data")
    assert strict.exit_code == 3 and "1 file(s) cannot be read as images" in strict.output


def test_a_run_inside_its_dataset_folder_is_refused(invoke, tmp_path):
    from tests.test_vae import TINY_VAE, vae_folders

    data = make_dataset(tmp_path / "d", None)
    train, val = vae_folders(tmp_path / "ae")
    before = {p for p in tmp_path.rglob("*")}
    result = invoke("dm", "train", "--dataset-path", data, "--result-path", data / "results", *TINY)
    assert result.exit_code == 2 and f"inside data.dataset_path ({data}), whose images it trains on" in \
        " ".join(result.output.split()), result.output
    assert set(tmp_path.rglob("*")) == before
    # a conditional dataset that holds an earlier run's folder: refused as such, not taken for a class without images
    (data / "a").mkdir()
    (data / "b").mkdir()
    for name in ("a", "b"):
        (data / name / "x.png").write_bytes((next(data.glob("*.png"))).read_bytes())
    (data / "results" / "old").mkdir(parents=True)
    before = {p for p in tmp_path.rglob("*")}
    result = invoke("dm", "train", "--dataset-path", data, "--result-path", data / "results", *TINY)
    assert result.exit_code == 2 and "inside data.dataset_path" in result.output, result.output
    result = invoke("vae", "train", "--train-dataset-path", train, "--val-dataset-path", val, "--result-path", val,
                    *TINY_VAE)
    assert result.exit_code == 2 and f"inside data.val_dataset_path ({val}), whose images it validates on" in \
        " ".join(result.output.split()), result.output
    assert set(tmp_path.rglob("*")) == before


def test_a_class_of_unreadable_files_is_refused_by_training_as_by_check(invoke, tmp_path):
    data = make_dataset(tmp_path / "d", ["a"])
    (data / "b").mkdir()
    (data / "b" / "fake.png").write_text("not an image")
    (data / "b" / "zero.png").write_bytes(b"")
    assert invoke("dataset", "check", data).exit_code == 3
    trained = invoke("dm", "train", "--dataset-path", data, "--result-path", tmp_path / "out", *TINY)
    assert trained.exit_code == 3 and "/b has no readable images" in trained.output, trained.output
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- faults
def test_disk_full_during_a_save_keeps_the_previous_checkpoint(invoke, cond_data, tmp_path, monkeypatch):
    saves = {"n": 0}
    real_write = ckpt._Recorder.write

    def failing(self, data):
        if self.fh.name.endswith(f"-{os.getpid()}") and ".ckpt_last.pt" in self.fh.name and saves["n"] >= 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    real_save = ckpt.save_checkpoint

    def counting(path, payload):
        real_save(path, payload)
        saves["n"] += 1

    monkeypatch.setattr(ckpt._Recorder, "write", failing)
    monkeypatch.setattr(ckpt, "save_checkpoint", counting)
    result = invoke("dm", "train", "--dataset-path", cond_data, "--result-path", tmp_path, *TINY, "--epochs", "3")
    last = tmp_path / "df" / "ckpt_last.pt"
    assert result.exit_code == 4, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert lines == [f"error: cannot write {last}: disk full (ENOSPC); the previous checkpoint is kept"]
    assert "Traceback" not in result.output
    assert ckpt.load_checkpoint(last)["progress"]["epoch"] == 1  # the state after epoch 1, whole
    assert not list(last.parent.glob(".ckpt_*tmp*"))  # the failed temporary file is gone


def test_permission_error_is_a_storage_error(tmp_path):
    def refuse(fh):
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(Exception) as info:
        ckpt.atomic_write(tmp_path / "x.pt", refuse)
    assert info.value.exit_code == 4 and "permission denied (EACCES)" in str(info.value)


KILL_DURING_SAVE = """
import sys, time
from pathlib import Path
import torch
from iddm_cli.core import checkpoint as ckpt
real = ckpt._Recorder.write
def slow(self, data):
    out = real(self, data)
    print("writing", flush=True)
    time.sleep(60)  # killed here, mid-file
    return out
ckpt._Recorder.write = slow
payload = ckpt.load_checkpoint(sys.argv[1])
ckpt.save_checkpoint(Path(sys.argv[1]), payload)
"""


def test_sigkill_during_a_save_keeps_the_checkpoint_and_the_next_start_cleans_up(invoke, tmp_path, trained):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    last = run / "ckpt_last.pt"
    original = last.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_SAVE, str(last)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()  # SIGKILL: no handler, no cleanup
    proc.wait(timeout=30)
    temps = list(run.glob(".ckpt_last.pt.tmp-*"))
    assert len(temps) == 1 and last.read_bytes() == original
    assert ckpt.load_checkpoint(last)["progress"]["epoch"] == 2
    result = invoke("resume", run, "--epochs", "3")
    assert result.exit_code == 0, result.output
    assert not list(run.glob(".ckpt_*tmp*"))
    assert f"removed {temps[0].name}, left by a save that was killed" in (run / "train.log").read_text()


def test_a_ctrl_c_during_a_save_waits_for_the_file(tmp_path):
    caught = []
    with pytest.raises(KeyboardInterrupt):
        with ckpt.signals_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            caught.append("still saving")  # the signal waited
    assert caught == ["still saving"]


# ----------------------------------------------------------------------------------------------- run directories
def test_stray_checkpoint_names_are_ignored(invoke, tmp_path, trained):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "ckpt_001_old.pt").write_bytes(b"someone's backup")
    (run / "ckpt_best.pt").write_bytes(b"not ours")
    result = invoke("resume", run, "--epochs", "4", "--keep-last", "1")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in run.glob("ckpt_*.pt")) == ["ckpt_001_old.pt", "ckpt_004.pt", "ckpt_best.pt",
                                                             "ckpt_last.pt"]


def test_config_toml_is_written_once(invoke, tmp_path, trained):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    record = (run / "config.toml").read_bytes()
    assert invoke("resume", run, "--epochs", "3").exit_code == 0
    assert (run / "config.toml").read_bytes() == record
    assert ckpt.load_checkpoint(run / "ckpt_last.pt")["config"]["train"]["epochs"] == 3
    assert invoke("resume", run, "--epochs", "4").exit_code == 0  # the record still matches the creation config


def test_start_epoch_with_newer_states_moves_them_aside_with_force(invoke, tmp_path, trained):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    newer = {name: (run / name).read_bytes() for name in ("ckpt_002.pt", "ckpt_last.pt")}
    refused = invoke("resume", run, "--start-epoch", "1", "--epochs", "2", "--dry-run")
    assert refused.exit_code == 2 and "add --force" in " ".join(refused.output.split()).lower()
    result = invoke("resume", run, "--start-epoch", "1", "--epochs", "2", "--force")
    assert result.exit_code == 0, result.output
    (aside,) = run.glob("superseded-*")
    assert {p.name: p.read_bytes() for p in aside.iterdir()} == newer  # moved, not deleted
    assert ckpt.load_checkpoint(run / "ckpt_last.pt")["progress"]["epoch"] == 2
    assert (run / "ckpt_002.pt").read_bytes() != newer["ckpt_002.pt"]  # trained again from epoch 1


def test_the_run_lock_refuses_a_second_process_and_is_taken_over_when_it_dies(invoke, tmp_path):
    data = make_dataset(tmp_path / "d", ["a", "b"], per_class=12)
    proc = subprocess.Popen([sys.executable, "-m", "iddm_cli", "dm", "train", "--dataset-path", str(data),
                             "--result-path", str(tmp_path / "out"), "--run-name", "r", *TINY, "--epochs", "500",
                             "--batch-size", "2"], stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if "epoch 2/500 step 1/" in line:  # epoch 1 is saved, training goes on
                break
        run = tmp_path / "out" / "r"
        result = invoke("resume", run, "--epochs", "600")
        assert result.exit_code == 2, result.output
        assert f"is in use: process {proc.pid} on " in result.output
        with pytest.raises(ConfigError, match="is in use"):
            RunLock(run).acquire()
    finally:
        proc.kill()  # dies holding the lock
        proc.wait(timeout=30)
    done = ckpt.load_checkpoint(run / "ckpt_last.pt")["progress"]["epoch"]
    result = invoke("resume", run, "--epochs", str(done + 1))
    assert result.exit_code == 0, result.output  # the dead process's lock is taken over


def test_ctrl_c_to_the_whole_process_group_with_dataloader_workers(tmp_path):
    data = make_dataset(tmp_path / "d", ["a", "b"], per_class=12)
    proc = subprocess.Popen([sys.executable, "-m", "iddm_cli", "dm", "train", "--dataset-path", str(data),
                             "--result-path", str(tmp_path / "out"), "--run-name", "r", *TINY, "--epochs", "50",
                             "--batch-size", "2", "--num-workers", "2"],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    for line in proc.stderr:
        if "epoch 2/50 step 3/" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the main process and both workers get it
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest
    assert "Traceback" not in rest and "resume with: iddm resume" in " ".join(rest.split())
    state = ckpt.load_checkpoint(tmp_path / "out" / "r" / "ckpt_last.pt")["progress"]
    assert state["step"] >= 12 + 3  # saved where the signal stopped it

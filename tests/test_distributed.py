"""Multi-process training on CPU: two gloo processes, self-launched by iddm or started by torchrun.

These are real runs of a tiny model (the DDP code path CI can cover); a GPU adds only NCCL and device placement.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iddm_cli.api import DMTrainer
from iddm_cli.core.checkpoint import load_checkpoint
from iddm_cli.core.reporting import SilentReporter
from iddm_cli.data.folder import EpochSampler
from iddm_cli.errors import ConfigError, Interrupted
from tests.conftest import make_dataset
from tests.test_dataset_check import truncated_jpeg
from tests.test_resume import InterruptAt

TINY_DDP = ["--image-size", "8", "--base-channels", "4", "--noise-steps", "20", "--batch-size", "4", "--log-every", "1",
            "--device", "cpu"]


def iddm(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iddm_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(run_dir / "ckpt_last.pt")
    return {**{f"model.{k}": v for k, v in ckpt["model"].items()}, **{f"ema.{k}": v for k, v in ckpt["ema"].items()}}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = tensors(a), tensors(b)
    assert wa.keys() == wb.keys()
    differing = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differing, differing[:3]


class Recorder(SilentReporter):
    def __init__(self):
        self.calls = []

    def info(self, message):
        self.calls.append(("info", (message,)))

    def start_epoch(self, epoch, epochs, steps):
        self.calls.append(("start_epoch", (epoch, epochs, steps)))

    def step(self, done, loss):
        self.calls.append(("step", (done, loss)))

    def status(self, line):
        self.calls.append(("status", (line,)))

    def end_epoch(self, epoch, summary):
        self.calls.append(("end_epoch", (epoch, summary)))

    def close(self):
        self.calls.append(("close", ()))


# ----------------------------------------------------------------------------------------------- real runs
def test_two_processes_self_launched_and_under_torchrun_train_the_same_run(tmp_path):
    data = make_dataset(tmp_path / "d", ["a", "b", "c"], per_class=7)  # 22 files: the shards need padding
    (data / "b" / "cut.jpg").write_bytes(truncated_jpeg())  # fails to decode: replaced, on whichever rank reads it
    common = ["dm", "train", "--dataset-path", data, "--result-path", tmp_path / "out", *TINY_DDP, "--epochs", "2",
              "--vis", "--num-vis", "3", "--vis-steps", "3"]
    result = iddm(*common, "--nproc", "2", "--run-name", "self")
    assert result.returncode == 0, result.stderr
    assert "starting 2 worker processes (gloo" in result.stderr
    assert "batch 4 per process x 2 = 8 global" in result.stderr and "done: 6 steps" in result.stderr
    run = tmp_path / "out" / "self"
    log = (run / "train.log").read_text()
    assert log.count("epoch 1/2 done") == 1 and log.count("data:") == 1  # one writer
    checks = re.findall(r"ddp check: parameters and EMA identical on all 2 ranks", log)
    assert len(checks) == 2  # after the start and at the end; a difference would have failed the run
    assert len(list((run / "tensorboard").iterdir())) == 1
    assert re.search(r"skipped a file that failed to decode.*cut\.jpg", log)
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["event"] == "train"] == list(range(1, 7))  # ceil(ceil(22 / 2) / 4) x 2
    progress = load_checkpoint(run / "ckpt_last.pt")["progress"]
    assert (progress["epoch"], progress["step"], progress["world_size"]) == (2, 6, 2)
    assert sorted(p.name for p in (run / "vis").iterdir()) == ["ema_001.png", "ema_002.png"]
    assert json.loads((run / "cli.json").read_text())["argv"][1:3] == ["dm", "train"]

    # torchrun starts the processes; iddm joins its group instead of launching, and computes the same run
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "iddm_cli", *map(str, common), "--run-name", "torchrun"]
    result = subprocess.run(torchrun, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "starting 2 worker processes" not in result.stderr and result.stderr.count("done: 6 steps") == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["self", "torchrun"]
    assert_same_weights(run, tmp_path / "out" / "torchrun")


def test_a_max_time_run_agrees_on_one_length_across_processes(tmp_path):
    data = make_dataset(tmp_path / "d", ["a", "b", "c"], per_class=6)
    result = iddm("dm", "train", "--dataset-path", data, "--result-path", tmp_path, *TINY_DDP, "--max-time", "15s",
                  "--nproc", "2", "--vis", "--num-vis", "2", "--vis-steps", "3", "--run-name", "timed")
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "timed" / "train.log").read_text()
    assert log.count("so the run takes") == 1  # rank 0's measurement, sent to the other rank
    assert len(re.findall(r"ddp check: parameters and EMA identical on all 2 ranks", log)) == 2
    progress = load_checkpoint(tmp_path / "timed" / "ckpt_last.pt")["progress"]
    assert progress["step"] == progress["total_steps"] > 13
    assert (tmp_path / "timed" / "vis" / f"ema_{progress['epoch']:03d}.png").is_file()  # the final preview


def test_a_failing_worker_ends_the_job_with_its_own_error(tmp_path):
    data = make_dataset(tmp_path / "d", ["a", "b"], per_class=8)
    (data / "a" / "cut.jpg").write_bytes(truncated_jpeg())  # the header reads; decoding fails in one rank
    result = iddm("dm", "train", "--dataset-path", data, "--result-path", tmp_path, *TINY_DDP, "--epochs", "3",
                  "--nproc", "2", "--strict-data")
    assert result.returncode == 3, result.stderr
    assert re.search(r"error: rank [01]: cannot decode \S*cut\.jpg", result.stderr), result.stderr
    assert "the other worker processes were stopped" in result.stderr
    assert "Traceback" not in result.stderr and "lost contact" not in result.stderr


def _child_with_rank(parent: int, rank: int) -> int:
    for task in Path(f"/proc/{parent}/task").iterdir():
        for pid in (task / "children").read_text().split():
            if f"RANK={rank}\0".encode() in Path(f"/proc/{pid}/environ").read_bytes():
                return int(pid)
    raise AssertionError(f"no worker with RANK={rank}")


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(), reason="Linux /proc")
def test_a_killed_worker_stops_the_others_and_keeps_the_checkpoint(tmp_path):
    data = make_dataset(tmp_path / "d", ["a", "b"], per_class=8)
    proc = subprocess.Popen([sys.executable, "-m", "iddm_cli", "dm", "train", "--dataset-path", str(data),
                             "--result-path", str(tmp_path), *TINY_DDP, "--epochs", "500", "--nproc", "2"],
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "epoch 2/500 step 1/" in line:  # one epoch saved
            break
    os.kill(_child_with_rank(proc.pid, 1), signal.SIGKILL)  # as the kernel's OOM killer would
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 1, rest
    assert "rank 1 was killed by SIGKILL (out of memory?); the other worker processes were stopped" in rest
    assert load_checkpoint(tmp_path / "df" / "ckpt_last.pt")["progress"]["epoch"] >= 1


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(), reason="Linux /proc")
def test_a_torchrun_restart_continues_the_run_it_started(tmp_path):
    data = make_dataset(tmp_path / "d", ["a", "b", "c"], per_class=6)
    settings = {"dataset_path": str(data), "result_path": str(tmp_path / "out"), "image_size": 8, "base_channels": 4,
                "noise_steps": 20, "epochs": 3, "batch_size": 2, "log_every": 1, "device": "cpu"}
    whole = DMTrainer(run_name="whole", devices=2, reporter=SilentReporter(), **settings).train()
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "--max-restarts", "1", "-m", "iddm_cli", "dm", "train", *flags, "--run-name", "elastic"],
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "epoch 2/3 step 2/" in line:  # epoch 1 is saved
            break
    os.kill(_child_with_rank(proc.pid, 1), signal.SIGKILL)  # torchrun restarts every worker
    rest = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, rest
    run = tmp_path / "out" / "elastic"
    assert f"torchrun restart 1: continuing {run} from its last checkpoint" in rest
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["elastic", "whole"]  # no elastic-2
    assert_same_weights(whole.run_dir, run)  # continued from the state after epoch 1: the same computation


def test_ddp_resume_is_exact_and_may_change_the_number_of_processes(tmp_path):
    data = make_dataset(tmp_path / "d", ["a", "b", "c"], per_class=6)
    settings = {"dataset_path": str(data), "result_path": str(tmp_path), "image_size": 8, "base_channels": 4,
                "noise_steps": 20, "epochs": 3, "batch_size": 2, "log_every": 1, "device": "cpu",
                "lr_func": "warmup_cosine", "warmup_epochs": 0.5, "lr": 2e-3}
    recorder = Recorder()
    whole = DMTrainer(run_name="whole", devices=2, reporter=recorder, **settings).train()  # the API launches
    assert whole.steps == 15 and whole.run_dir == tmp_path / "whole"
    # rank 0's reports reach the caller's reporter through the launcher, nothing else prints them
    kinds = [name for name, _ in recorder.calls]
    assert kinds.count("end_epoch") == 3 and kinds.count("step") == 15 and kinds[-1] == "close"
    infos = [args[0] for name, args in recorder.calls if name == "info"]
    assert infos[0].startswith("starting 2 worker processes") and any(i.startswith("run dir:") for i in infos)
    assert sum(name == "status" for name in kinds) == 15  # --log-every 1

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    proc = subprocess.Popen([sys.executable, "-m", "iddm_cli", "dm", "train", *flags, "--run-name", "cut",
                             "--nproc", "2"], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "epoch 2/3 step 2/" in line:
            break
    proc.send_signal(signal.SIGINT)  # Ctrl-C reaches the launcher, which passes it on
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, rest
    assert "resume with: iddm resume" in " ".join(rest.split())
    cut = tmp_path / "cut"
    saved = load_checkpoint(cut / "ckpt_last.pt")["progress"]
    assert saved["world_size"] == 2 and saved["epoch"] == 1 and saved["position"] > 0
    shutil.copytree(cut, tmp_path / "cut-on-one")

    result = iddm("resume", cut)
    assert result.returncode == 0, result.stderr
    assert "note: the run was saved" not in result.stderr
    assert_same_weights(whole.run_dir, cut)  # bit-identical to the run that was never interrupted

    result = iddm("resume", tmp_path / "cut-on-one", "--devices", "1")
    assert result.returncode == 0, result.stderr
    assert "saved by 2 process(es) and continues on 1: the data order from here on differs" in result.stderr
    progress = load_checkpoint(tmp_path / "cut-on-one" / "ckpt_last.pt")["progress"]
    assert (progress["epoch"], progress["world_size"]) == (3, 1)

    with pytest.raises(Interrupted):  # and the other way: one process, continued on two
        DMTrainer(run_name="single", reporter=InterruptAt(1, 2), **settings).train()
    result = iddm("resume", tmp_path / "single", "--nproc", "2")
    assert result.returncode == 0, result.stderr
    assert "saved by 1 process(es) and continues on 2" in result.stderr
    progress = load_checkpoint(tmp_path / "single" / "ckpt_last.pt")["progress"]
    assert (progress["epoch"], progress["world_size"]) == (3, 2)


# ----------------------------------------------------------------------------------------------- pieces
def test_pretrained_weights_reach_every_rank(tmp_path):
    from iddm_cli.train.distributed import digest

    data = make_dataset(tmp_path / "d", ["a", "b"], per_class=4)
    first = DMTrainer(dataset_path=str(data), result_path=str(tmp_path), run_name="first", reporter=SilentReporter(),
                      image_size=8, base_channels=4, noise_steps=20, epochs=1, batch_size=4).train()
    result = iddm("dm", "train", "--dataset-path", data, "--result-path", tmp_path, *TINY_DDP, "--epochs", "1",
                  "--nproc", "2", "--pretrain", "--pretrain-path", first.checkpoint, "--run-name", "tuned")
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "tuned" / "train.log").read_text()
    start = re.search(r"ddp check: parameters and EMA identical on all 2 ranks \(parameters sha256 (\w+)", log)
    ema = load_checkpoint(first.checkpoint)["ema"]  # rank 0 loaded these; rank 1 had its own initial weights
    assert start and start.group(1) == digest(ema.values())[:12]


def test_a_file_that_fails_to_decode_is_replaced_by_the_next_image(tmp_path):
    from iddm_cli.data.folder import ImageFolderDataset, collate, scan_dataset

    data = make_dataset(tmp_path / "d", ["a", "b"], per_class=2)
    (data / "a" / "cut.jpg").write_bytes(truncated_jpeg())  # the last file of class a; the header reads
    info = scan_dataset(str(data), "auto", 0, False)
    bad = [i for i, (path, _) in enumerate(info.samples) if path.name == "cut.jpg"][0]
    ds = ImageFolderDataset(info, "resize", (8, 8), seed=0)  # resize only: no random part
    x, label, failed = ds[(0, bad)]
    assert failed == [str(info.samples[bad][0])]
    assert label == info.samples[bad + 1][1] == 1 and torch.equal(x, ds[(0, bad + 1)][0])  # class b's first image
    batch, labels, failed = collate([ds[(0, i)] for i in range(len(ds))])
    assert batch.shape == (5, 3, 8, 8) and len(labels) == 5 and len(failed) == 1  # the batch keeps its size


def test_rank_zero_plans_from_the_launchers_scan_without_scanning_again(tmp_path, monkeypatch):
    from iddm_cli.config import resolve
    from iddm_cli.data import folder
    from iddm_cli.train import plan as plan_module
    from iddm_cli.train.job import Job, prepare

    data = make_dataset(tmp_path / "d", ["a", "b"], per_class=3)
    info = folder.scan_dataset(str(data))
    assert folder.DatasetInfo.from_json(json.loads(json.dumps(info.to_json()))) == info  # survives the job file
    config = resolve(flags={"dataset_path": str(data), "result_path": str(tmp_path), "image_size": 8,
                            "base_channels": 4}).config
    job = Job("new", config=config.to_dict(), data=info.to_json())

    def no_scan(*args, **kwargs):
        raise AssertionError("scanned again")

    monkeypatch.setattr(plan_module, "scan_dataset", no_scan)
    plan, state, _ = prepare(job)
    assert plan.data == info and state is None


def test_dry_run_plans_several_processes_without_starting_them(invoke, cond_data, tmp_path):
    result = invoke("dm", "train", "--dataset-path", cond_data, "--result-path", tmp_path, *TINY_DDP, "--epochs",
                    "1", "--nproc", "3", "--dry-run")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "3 processes, cpu (fp32), DDP over gloo" in text and "batch 4 per process x 3 = 12 global" in text
    assert "starting" not in text and not (tmp_path / "df").exists()


def test_epoch_sampler_shards_cover_the_epoch_once_per_rank():
    n, world = 21, 4
    shards = []
    for rank in range(world):
        sampler = EpochSampler(n, seed=5, rank=rank, world=world)
        sampler.set_epoch(3)
        shards.append([i for _, i in sampler])
    assert all(len(s) == 6 for s in shards)  # ceil(21 / 4), padded by wrapping
    assert set().union(*map(set, shards)) == set(range(n))
    assert sum(map(len, shards)) - n == 3  # exactly the padding repeats
    one = EpochSampler(n, seed=5)
    one.set_epoch(3)
    assert [i for _, i in one][:world] == [s[0] for s in shards]  # rank r takes every world-th item from r
    again = EpochSampler(n, seed=5, rank=1, world=world)
    again.set_epoch(3, start=4)
    assert [i for _, i in again] == shards[1][4:] and len(again) == 2
    again.set_epoch(4)
    assert [i for _, i in again] != shards[1]  # set_epoch changes the order


def test_world_from_env_and_device_layouts(monkeypatch):
    from iddm_cli.config import resolve
    from iddm_cli.core import devices
    from iddm_cli.core.devices import World, world_from_env

    assert world_from_env({}) is None
    w = world_from_env({"RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8"})
    assert (w.rank, w.local_rank, w.size, w.local_size, w.launched, w.is_main) == (5, 1, 16, 8, True, False)
    with pytest.raises(ConfigError, match="RANK=3 is outside WORLD_SIZE=2"):
        world_from_env({"RANK": "3", "WORLD_SIZE": "2"})

    def layout(gpus: int, world: World | None = None, **flags):
        monkeypatch.setattr(devices, "visible_gpus", lambda: gpus)
        got = devices.plan_layout(resolve(flags=flags).config, world)
        return got.kind, got.nproc, got.index

    assert layout(0) == ("cpu", 1, None)
    assert layout(0, devices="3") == ("cpu", 3, None)
    assert layout(4) == ("cuda", 4, None)  # every visible GPU by default
    assert layout(4, devices="1") == ("cuda", 1, 0)  # multi-GPU turned off
    assert layout(4, device="cuda:3") == ("cuda", 1, 3)
    assert layout(4, use_gpu=2) == ("cuda", 1, 2)  # IDDM's --use_gpu
    assert layout(4, distributed=True, world_size=2) == ("cuda", 2, None)  # IDDM's --distributed --world_size
    assert layout(4, distributed=True) == ("cuda", 4, None)
    assert layout(0, use_gpu=1) == ("cpu", 1, None)  # with a note
    assert layout(8, World(9, 1, 16, 8, True), devices="2") == ("cuda", 8, None)  # torchrun's size wins
    for gpus, flags, message in [(2, {"devices": "4"}, "device.devices = 4, but this machine shows 2 GPU"),
                                 (2, {"device": "cuda:2"}, "valid: 0..1"),
                                 (0, {"device": "cuda"}, "no CUDA GPU is visible")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            layout(gpus, **flags)
    assert layout(4, World(0, 0, 2, 2, True))[:2] == ("cuda", 2)
    assert layout(1, World(3, 3, 8, 8, True)) == ("cuda", 8, 0)  # Slurm binds one GPU to each task
    assert devices.Layout("cuda", 2, None).device(World(1, 1, 2, 2, True)) == torch.device("cuda", 1)


def test_the_launcher_reports_the_first_real_failure(tmp_path):
    from iddm_cli.train.launch import WorkerFailed, _raise_for

    def error(rank, code, t, problem, peer_lost=False):
        (tmp_path / f"error-{rank}.json").write_text(json.dumps(
            {"rank": rank, "code": code, "time": t, "problems": [problem], "peer_lost": peer_lost,
             "all_ranks": False}))

    error(0, 1, 100.0, "lost contact with the other processes", peer_lost=True)  # rank 0 noticed first...
    error(1, 3, 100.5, "cannot decode x.png")  # ...but rank 1's own error is the cause
    with pytest.raises(WorkerFailed) as err:
        _raise_for([(100.2, 0, 1), (100.6, 1, 3), (105.0, 2, -9)], tmp_path)
    assert err.value.exit_code == 3 and err.value.problems[0] == "rank 1: cannot decode x.png"
    _raise_for([(1.0, 0, 0), (1.0, 1, 0)], tmp_path)  # all succeeded: nothing to raise
    error(0, 2, 200.0, "cannot write ckpt_last.pt")  # rank 0's own failure while the others were interrupted
    error(1, 130, 199.0, "interrupted by SIGINT")
    with pytest.raises(WorkerFailed) as err:
        _raise_for([(199.1, 1, 130), (200.1, 0, 2)], tmp_path)
    assert err.value.exit_code == 2 and "cannot write ckpt_last.pt" in err.value.problems[0]
    for f in tmp_path.iterdir():
        f.unlink()
    with pytest.raises(WorkerFailed, match="rank 1 was killed by SIGKILL"):
        _raise_for([(1.0, 1, -9), (2.0, 0, -9)], tmp_path)
    error(0, 1, 300.0, "lost contact with the other processes during a training step: NCCL error", peer_lost=True)
    with pytest.raises(WorkerFailed, match="rank 0: lost contact"):  # rank 1 was killed by the launcher itself
        _raise_for([(300.1, 0, 1), (306.0, 1, -9)], tmp_path, killed={1})


def test_a_node_without_the_run_directory_needs_the_device_to_resume(tmp_path):
    from iddm_cli.train.job import Job
    from iddm_cli.train.worker import _device_settings

    with pytest.raises(ConfigError, match="cannot read .*config.toml; give the run's --device"):
        _device_settings(Job("resume", run_dir=str(tmp_path / "elsewhere")))
    config = _device_settings(Job("resume", run_dir=str(tmp_path / "elsewhere"), overrides={"device": "cpu"}))
    assert config.device.device == "cpu"


def test_a_signal_before_training_ends_a_worker_quietly(tmp_path, monkeypatch):
    from iddm_cli.train.worker import main

    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "IDDM_ERROR_FILE": str(tmp_path / "e.json")}.items():
        monkeypatch.setenv(name, value)
    before = signal.getsignal(signal.SIGTERM)
    assert main([str(tmp_path / "job.json")], early_signals=[signal.SIGTERM]) == 143  # caught while importing torch
    record = json.loads((tmp_path / "e.json").read_text())
    assert record["code"] == 143 and record["problems"][0].startswith("stopped by SIGTERM while starting")
    assert signal.getsignal(signal.SIGTERM) is before


def test_rank_prefix_under_torchrun(invoke, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = invoke("dm", "train", "--devices", "0")
    assert result.exit_code == 2 and "error: rank 1: --devices" in " ".join(result.output.split())


def _consistency_worker(rank: int, store_path: str, out: str) -> None:
    import torch.distributed as tdist

    from iddm_cli.core.devices import World
    from iddm_cli.errors import TrainingError
    from iddm_cli.train.distributed import check_consistency

    tdist.init_process_group("gloo", store=tdist.FileStore(store_path, 2), rank=rank, world_size=2)
    lines = []
    for differ in (False, True):
        weights = [torch.ones(3) * (rank + 1 if differ else 1)]
        try:
            lines.append(check_consistency(World(rank, rank, 2, 2, True), {"parameters": weights,
                                                                          "EMA": [torch.zeros(2)]}))
        except TrainingError as err:
            lines.append(err.problems[0])
    Path(f"{out}-{rank}").write_text(json.dumps(lines))
    tdist.destroy_process_group()


def test_consistency_check_catches_ranks_that_drift_apart(tmp_path):
    out = str(tmp_path / "lines")
    torch.multiprocessing.spawn(_consistency_worker, args=(str(tmp_path / "store"), out), nprocs=2)
    same, different = json.loads(Path(f"{out}-0").read_text())
    assert json.loads(Path(f"{out}-1").read_text()) == [same, different]  # every rank reaches the same verdict
    assert same.startswith("ddp check: parameters and EMA identical on all 2 ranks")
    assert different.startswith("DDP consistency check failed: parameters differ between the 2 processes")


def test_two_launches_at_once_on_one_host_do_not_collide(tmp_path):
    """Two self-launched runs on one host at once: each gets its own port and its own run directory."""
    data = make_dataset(tmp_path / "d", ["a", "b"], per_class=4)
    cmd = [sys.executable, "-m", "iddm_cli", "dm", "train", "--dataset-path", str(data), "--result-path",
           str(tmp_path), *TINY_DDP, "--epochs", "1", "--nproc", "2"]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    ports = {re.search(r"rendezvous 127\.0\.0\.1:(\d+)", o).group(1) for o in outputs}
    assert len(ports) == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "d") == ["df", "df-2"]

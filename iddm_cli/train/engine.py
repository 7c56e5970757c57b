"""The training engine of every trainer: :func:`train` runs a plan from :mod:`iddm_cli.train.plan`, for a new run
or continuing a saved state. What is learned (a diffusion model in pixel or latent space, or an autoencoder) is the
plan's task (:mod:`iddm_cli.train.tasks`); the step, the optimizer, the data order, DDP, signals, checkpoints and
the run directory are the same for all.
Durations are counted in optimizer steps; every step draws its randomness from a generator seeded by
(seed, rank, step), and every epoch's data order from (seed, epoch), so a run is a pure function of its config.

Under DDP (a :class:`~iddm_cli.train.distributed.World` from a launcher) every rank runs this same loop on its shard
of the data; rank 0 alone writes the run directory, and every collective is entered by all ranks at the same point:
the per-step agreement on loss and stop signals, checkpoints (skipped-file lists), and the tasks' own: the latent
scale sent by rank 0, the autoencoder's validation sums and the sharded previews.
"""

from __future__ import annotations

import getpass
import io
import math
import os
import random
import re
import signal
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from iddm_cli.core import checkpoint as ckpt
from iddm_cli.core.devices import SINGLE, World, use_device
from iddm_cli.core.reporting import Reporter, SilentReporter
from iddm_cli.core.rundir import NullLogger, RunLock, RunLogger, supersede, write_run_files
from iddm_cli.data.folder import EpochSampler, collate
from iddm_cli.errors import IddmError, Interrupted, TrainingError, first_line
from iddm_cli.train import distributed as dist
from iddm_cli.train.ema import make_ema
from iddm_cli.train.objectives import LR_FUNCS, make_optimizer
from iddm_cli.train.plan import Plan, plan_training
from iddm_cli.train.signals import ignore_ctrl_c, stop_on_signals
from iddm_cli.train.tasks import TASKS

__all__ = ["Plan", "TrainResult", "plan_training", "train"]  # re-exported for callers


# ----------------------------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float
    checkpoint: Path
    previews: list[Path]
    skipped_steps: int


def step_generator(seed: int, step: int, device: torch.device, rank: int = 0) -> torch.Generator:
    """The generator of one step's noise, timesteps and label dropout; each rank draws its own."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step + rank * 0x9E3779B97F4A7C15) % 2**63)


WARM_STEPS = 3  # --max-time: steps left out of the speed measurement (allocation, caches, DataLoader start)
MEASURED_STEPS = 10  # --max-time: steps timed to fix the run's length
BUDGET_RESERVE = 0.02  # --max-time: the share of the budget kept back for the estimates' errors
SHOW_EVERY_S = 1.0  # the progress display's loss is read from the device at most this often
UNPLANNED = 2**62  # the schedule's length before a --max-time run has fixed it: its start, as if endless

def use_compile_cache(run_dir: Path) -> str | None:
    """Send --compile's generated code to RUN/compile-cache, unless the user set TORCHINDUCTOR_CACHE_DIR to a folder
    of their own (importing torchvision already sets it to torch's default, /tmp/torchinductor_USER, which is not
    the user's choice). Returns the variable's value before, which Session.close puts back."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:  # torch's default_cache_dir()
        user = re.sub(r'[\\/:*?"<>|]', "_", getpass.getuser())
    except (KeyError, OSError):
        user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
    default = Path(tempfile.gettempdir()) / f"torchinductor_{user}"
    if current and os.path.abspath(current) != str(default.absolute()):
        return current
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str((run_dir / "compile-cache").absolute())
    return current


class Session:
    """The state of one training run: model, EMA, optimizer, data, logs, and the per-step update; ``task`` is what
    is learned. ``state``: the training state a resumed run continues from."""

    def __init__(self, plan: Plan, reporter: Reporter, logger: RunLogger | NullLogger, world: World = SINGLE,
                 state: dict[str, Any] | None = None):
        c = plan.config
        self.plan, self.c, self.reporter, self.logger, self.world = plan, c, reporter, logger, world
        self.device = plan.device
        use_device(self.device)
        layout = torch.channels_last if c.optim.channels_last else torch.preserve_format
        self.model = plan.model.to(self.device, memory_format=layout).train()  # the EMA copies the layout
        self.net = self.model  # what the step calls: the DDP wrapper under a process group
        if world.launched:  # every parameter is used every step, so no find_unused_parameters
            self.net = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type ==
                                               "cuda" else None, gradient_as_bucket_view=True)
        self.ema = make_ema(self.model, c)
        self.optimizer = make_optimizer(c.optim.optim, self.model.parameters(), c.optim.lr)
        self.scaler = torch.amp.GradScaler("cuda") if plan.use_scaler else None
        self.lr_func = LR_FUNCS[c.optim.lr_func]
        self.warmup = round(c.optim.warmup_epochs * plan.steps_per_epoch)
        self.notes: list[str] = []  # what the task found out while starting (the measured latent scale)
        self.previews: list[Path] = []
        self.task = TASKS[plan.kind](self, state)
        dataset = self.task.dataset()
        self.sampler = EpochSampler(len(dataset), c.train.seed, world.rank, world.size)
        if plan.loader_workers and getattr(dataset, "cache_enabled", False):  # one RAM cache, shared by the workers
            start = time.perf_counter()
            dataset.fill_cache()
            logger.log(f"decoded {len(dataset)} images into the RAM cache in {time.perf_counter() - start:.1f} s, "
                       f"before starting {plan.loader_workers} data loader workers")
        self.loader = DataLoader(
            dataset, batch_size=c.data.batch_size, sampler=self.sampler, num_workers=plan.loader_workers,
            collate_fn=collate, worker_init_fn=ignore_ctrl_c,
            pin_memory=self.device.type == "cuda", persistent_workers=plan.loader_workers > 0, drop_last=False)
        self.step = 0
        self.skipped = 0
        # what the steps leave on the device, read back by settle() every --log-every steps and at epoch ends and
        # saves (a read makes the host wait for the device): sums since the last read of [loss of applied steps,
        # applied steps, skipped steps]; the current run of non-finite steps and the longest since the last read;
        # the last step's [loss, gradient norm]
        self._sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        self._run = torch.zeros((), device=self.device)
        self._longest = torch.zeros((), device=self.device)
        self._last = torch.full((2,), float("nan"), device=self.device)
        self._settled_step = 0  # the step of the last settle()
        self._window = [0.0, 0]  # loss sum and applied steps since the last status line
        self._epoch_loss = [0.0, 0]  # the same since the epoch began
        self._resumed_loss: dict[str, list[float]] = {}  # both, as a mid-epoch checkpoint left them
        self._shown_loss, self._shown_at = float("nan"), 0.0  # the progress display's loss, and when it was read
        self._last_grad = float("nan")  # the last step's gradient norm, as settle() read it
        self.batch_images = 0  # images of the current step, all ranks together
        self.stop_signal: int | None = None  # set by the SIGINT/SIGTERM handler
        self.agreed_stop: int | None = None  # the signal every rank acts on, agreed after each step
        self.bad_files: set[str] = set()  # files that failed to decode; replaced, never a crash
        # the run's length in steps: --epochs or --kimg; a --max-time run fixes it after measuring (or resumes it)
        self.total = plan.total_steps
        self.by_steps = bool(c.train.kimg or c.train.max_time)  # the run ends at a step count, not an epoch count
        if c.optim.compile:  # last, so that a failure above leaves TORCHINDUCTOR_CACHE_DIR as it was; the step's
            # forward and backward are compiled, the weights, EMA and checkpoints stay the plain module's
            self.cache_env_before = use_compile_cache(plan.run_dir)
            self.net = torch.compile(self.net)
        self.started = time.monotonic()  # --max-time counts from here
        self.first_step = 0  # the step this process started (or resumed) at
        self._durations: list[float] = []  # --max-time: seconds of each step, epoch ends left out
        self._prev_end: float | None = None  # when the previous step of this epoch ended

    # the run's length ----------------------------------------------------------------------------------------
    def finished(self) -> bool:
        """The step budget of a --kimg or --max-time run is spent (it may end inside an epoch). Runs of --epochs end
        by the epoch count alone: their step count is in the units of the process count that made each step."""
        return self.by_steps and self.total is not None and self.step >= self.total

    def last_epoch(self, done: int) -> bool:
        """Whether ``done`` completed epochs end the run: the final preview and evaluation are due."""
        return self.finished() if self.by_steps else done >= self.c.train.epochs

    def epochs_label(self) -> int | str:
        """The epoch count for progress lines: --epochs, or the epochs a step budget spans ('?' until fixed)."""
        if not self.by_steps:
            return self.c.train.epochs
        return str(math.ceil(self.total / self.plan.steps_per_epoch)) if self.total is not None else "?"

    def _plan_length(self, epoch: int, batch: int) -> None:
        """--max-time: time MEASURED_STEPS steps (their median) after WARM_STEPS (from one step's end to the next
        inside an epoch, so no epoch end is in it), then fix the step count so that the steps, every epoch end to
        come (checkpoint, preview, evaluation, validation: each estimated from a timed pass) and the final one fit in
        what is left of the budget. Every rank counts the same steps, so all get here at the same step; rank 0
        decides."""
        if len(self._durations) != WARM_STEPS + MEASURED_STEPS:
            return
        total, lines = None, []
        if self.world.is_main:
            # the median: a few steps slowed by another process for a moment do not shorten the whole run
            per_step = max(1e-9, statistics.median(self._durations[WARM_STEPS:]))
            end_cost, save = self.task.end_cost(), self._save_seconds(epoch, batch + 1)
            left = self.plan.budget_s * (1 - BUDGET_RESERVE) - (time.monotonic() - self.started)
            spe, pos = self.plan.steps_per_epoch, epoch * self.plan.steps_per_epoch + batch + 1

            def seconds(total: int) -> float:  # from now to the end of a run of ``total`` steps
                last = math.ceil((pos + total - self.step) / spe)
                return (total - self.step) * per_step + (last - epoch) * save + end_cost(epoch + 1, last)

            lo, hi = self.step, self.step + max(0, math.floor(left / per_step))
            while lo < hi:  # the longest run that fits; seconds() grows with the step count
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if seconds(mid) <= left else (lo, mid - 1)
            total = lo
            ends = seconds(total) - (total - self.step) * per_step
            lines.append(f"--max-time {self.c.train.max_time}: {per_step * 1000:.0f} ms per step and {ends:.1f} s of "
                         f"epoch ends, so the run takes {total} steps ({total / spe:.2f} epochs); the learning-rate "
                         "schedule follows that count")
            if seconds(total) > left:
                used = time.monotonic() - self.started
                lines.append(f"warning: --max-time {self.c.train.max_time} is too short: {used:.1f} s went to the "
                             f"first {self.step - self.first_step} steps and {ends:.1f} s are still needed for the "
                             "last epoch end (checkpoint, preview, evaluation); the run ends now and overruns it")
        if self.world.launched:
            total = dist.broadcast_object(total, self.world, "the --max-time plan")
        self.total = total
        for line in lines:
            self.logger.log(line)
            self.reporter.info(line)

    def _save_seconds(self, epochs_done: int, position: int) -> float:
        """Seconds to serialise this run's checkpoint (written to memory), times 1.5 for the disk."""
        start = time.perf_counter()
        torch.save(self.checkpoint_payload(epochs_done, position), io.BytesIO())
        return 1.5 * (time.perf_counter() - start)

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.plan.amp_dtype or torch.float32,
                              enabled=self.plan.amp_dtype is not None)

    def close(self) -> None:
        """End the DataLoader's worker processes now: persistent workers otherwise live as long as this object,
        which an exception's traceback can keep alive until the interpreter exits."""
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader._iterator = None
        if self.c.optim.compile:  # later compilations in this process are not this run's
            if self.cache_env_before is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = self.cache_env_before

    # one optimizer step, in numbered phases ---------------------------------------------------------------------
    def train_step(self, x0: torch.Tensor, y: torch.Tensor, sched_step: int) -> None:
        """One optimizer step, with no copy from the device to the host: its loss, gradient norm and whether it was
        skipped for a non-finite value stay on the device until :meth:`settle` reads them. ``sched_step``: the
        position in the learning-rate schedule (epoch * steps_per_epoch + batch). Phases 1-5 are one process's
        computation; the agreement between ranks sits between them and the update."""
        loss, grad_norm = self.compute_gradients(x0, y, sched_step)
        loss = loss.detach().float()
        if self.world.launched:  # the loss averaged over ranks, on the device (the gradients already agree)
            loss = dist.all_reduce_sum(loss.reshape(1)).reshape(()) / self.world.size
        self._agree_stop()
        self.apply_update(loss, grad_norm.detach().float())

    def compute_gradients(self, x0: torch.Tensor, y: torch.Tensor,
                          sched_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Phases 1-5: (loss, gradient norm) as device tensors; the learning rate is set on the optimizer."""
        c = self.c

        # 1. this step's own generator (seed, rank, step): every random draw of the step comes from it; the images
        # of the step, all ranks together (every rank takes a batch of the same size), for the EMA's half-life
        g = step_generator(c.train.seed, self.step, self.device, self.world.rank)
        self.batch_images = x0.shape[0] * self.world.size

        # 2. learning rate, per step (not per epoch; the first step already trains). A --max-time run's first
        # steps, before its length is fixed, take the schedule's start (as if the run were endless)
        lr = c.optim.lr * self.lr_func(sched_step, self.total if self.total is not None else UNPLANNED, self.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

        # 3. forward and loss, the task's: noise, v or x0 prediction (diffusion) or reconstruction (autoencoder);
        # under DDP the task calls self.net, the wrapper that averages the gradients in backward
        loss = self.task.loss(x0, y, g)

        # 4. backward (scaled under fp16, then unscaled so that clipping sees true gradients)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()

        # 5. clip the gradient norm
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.optim.max_grad_norm or float("inf"))
        self.step += 1
        return loss, grad_norm

    def apply_update(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Phases 6-7, on the device, on values every rank agrees on (the loss averaged over ranks, the norm of the
        averaged gradients)."""
        # 6. guard: a non-finite loss or gradient skips the step, decided on the device: the fused optimizer's
        # found_inf (as GradScaler sets it) leaves weights, moments and step counts as they were, and the EMA
        # averages in with weight 0. settle() counts skips and stops a run with too many in a row
        applied = torch.isfinite(loss) & torch.isfinite(grad_norm)
        skipped = (~applied).double()
        self._sums += torch.stack([torch.where(applied, loss.double(), 0.0), applied.double(), skipped])
        self._run.add_(1).mul_(skipped)  # the run of non-finite steps: +1, or back to 0
        torch.maximum(self._longest, self._run, out=self._longest)
        self._last.copy_(torch.stack([loss, grad_norm]))

        # 7. optimizer step (on gradients unscaled already under fp16: the scaler's own found_inf, non-finite
        # gradients, is part of this one), then the EMA of the weights
        self.optimizer.found_inf, self.optimizer.grad_scale = skipped.float(), None
        self.optimizer.step()
        del self.optimizer.found_inf, self.optimizer.grad_scale
        if self.scaler is not None:
            self.scaler.update()
        self.ema.update(self.model, self.batch_images, applied)

    def settle(self) -> None:
        """Read what the steps since the last read left on the device (one copy to the host): count the skipped
        steps, log them, and stop the run after --max-nonfinite non-finite steps in a row. Every rank calls it at
        the same steps (the values agree), so all stop together. What it reads changes no later computation, so
        when it is called does not matter to the results."""
        loss, applied, skipped, longest, self._last_grad = torch.cat(
            [self._sums, torch.stack([self._longest, self._last[1]]).double()]).tolist()
        self._sums.zero_()
        self._longest.copy_(self._run)
        first, self._settled_step = self._settled_step + 1, self.step
        for acc in (self._window, self._epoch_loss):
            acc[0] += loss
            acc[1] += int(applied)
        if skipped:
            self.skipped += int(skipped)
            where = f"step {self.step}" if first == self.step else f"steps {first}-{self.step}"
            self.logger.log(f"{where}: {int(skipped)} step(s) skipped for a non-finite loss or gradient "
                            f"({self.skipped} so far)")
        if longest >= self.c.train.max_nonfinite:
            raise TrainingError(
                f"step {self.step}: the loss or gradients were non-finite for {int(longest)} steps in a row, so "
                f"training stopped; the last good checkpoint is {self.plan.run_dir / 'ckpt_last.pt'} (try a lower "
                "--lr, or train without --amp)", all_ranks=True)

    def shown_loss(self) -> float:
        """The last step's loss for the progress display, read from the device at most once a second."""
        now = time.monotonic()
        if now - self._shown_at >= SHOW_EVERY_S:
            self._shown_loss, self._shown_at = self._last[0].item(), now
        return self._shown_loss

    def _agree_stop(self) -> None:
        """The stop signal every rank acts on: under DDP one all-reduce of two flags a step, on the CPU (over gloo,
        so the GPU's queue is not waited for)."""
        local = self.stop_signal
        if not self.world.launched:
            self.agreed_stop = local
            return
        flags = dist.all_reduce_sum(torch.tensor([local == signal.SIGINT, local == signal.SIGTERM],
                                                 dtype=torch.float32))
        n_int, n_term = flags.tolist()
        self.agreed_stop = signal.SIGTERM if n_term else signal.SIGINT if n_int else None

    def stop_requested(self) -> int | None:
        """At an epoch end: the signal all ranks stop on, or None (a collective under DDP)."""
        self._agree_stop()
        return self.agreed_stop

    # one epoch ----------------------------------------------------------------------------------------------
    def run_epoch(self, epoch: int, start: int = 0) -> float:
        """Train one epoch from batch ``start`` (non-zero when a run resumes mid-epoch)."""
        c, spe = self.c, self.plan.steps_per_epoch
        self.sampler.set_epoch(epoch, start * c.data.batch_size)  # data order: a function of (seed, epoch)
        steps = spe if not self.by_steps or self.total is None else min(spe, self.total - epoch * spe)
        self.reporter.start_epoch(epoch, self.epochs_label(), steps)
        if spe > 1:  # the first step of an epoch follows the last one's epoch end: not timed (unless nothing else is)
            self._prev_end = None
        # a resumed epoch carries on from its checkpoint's sums, so its mean and status lines are the whole run's
        carried = self._resumed_loss if start else {}
        self._epoch_loss, self._window = list(carried.get("epoch", [0.0, 0])), list(carried.get("window", [0.0, 0]))
        self._resumed_loss = {}
        t0, images = time.perf_counter(), 0
        for i, (x0, y, bad) in enumerate(self.loader, start=start):
            for path in sorted(set(bad) - self.bad_files):
                self.bad_files.add(path)
                self.logger.log(f"skipped a file that failed to decode: {path}")
                self.reporter.info(f"warning: skipped a file that failed to decode (the next image took its "
                                   f"place): {path}")
            self.train_step(x0, y, epoch * spe + i)
            if self.total is None:  # --max-time, measuring: each step timed on the host, so the device waited for
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                now = time.monotonic()
                if self._prev_end is not None:
                    self._durations.append(now - self._prev_end)
                self._prev_end = now
                self._plan_length(epoch, i)
            images += x0.shape[0]
            self.reporter.step(i + 1, self.shown_loss() if self.world.is_main else float("nan"))
            if self.step % c.train.log_every == 0 or i + 1 == spe or self.finished():
                self.settle()
                elapsed = time.perf_counter() - t0
                self._log_status(epoch, i + 1, images * self.world.size / max(elapsed, 1e-9))
                t0, images = time.perf_counter(), 0
            if not self.world.launched:  # a single process acts on its own flag at once
                self.agreed_stop = self.stop_signal
            if self.agreed_stop is not None and i + 1 < spe and not self.finished():  # Ctrl-C: save, leave mid-epoch
                self.save(epoch, position=i + 1)
                self.stop_requested()  # a collective: no rank leaves before rank 0 has written the checkpoint
                raise Interrupted(self.agreed_stop, self.plan.run_dir)
            if self.finished():  # the step budget ends inside this epoch: the epoch end comes now
                break
        self.settle()
        total, n = self._epoch_loss
        return total / n if n else float("nan")

    def _log_status(self, epoch: int, done: int, ips: float) -> None:
        (total, n), self._window = self._window, [0.0, 0]
        loss = total / n if n else float("nan")
        grad = self._last_grad  # the last step's, as settle() read it
        lr = self.optimizer.param_groups[0]["lr"]
        line = (f"epoch {epoch + 1}/{self.epochs_label()} step {done}/{self.plan.steps_per_epoch} "
                f"(total {self.step}) loss {loss:.4f} lr {lr:.2e} grad {grad:.3f} {ips:.1f} img/s")
        self.logger.log(line)
        self.logger.metrics({"event": "train", "step": self.step, "epoch": epoch + 1, "loss": loss, "lr": lr,
                             "grad_norm": grad, "images_per_s": ips, "skipped_steps": self.skipped})
        self.reporter.status(line)

    # end of epoch: checkpoints and previews -----------------------------------------------------------------
    def checkpoint_payload(self, epochs_done: int, position: int = 0) -> dict[str, Any]:
        p, data = self.plan, self.plan.data
        return {
            "format": ckpt.FORMAT, "format_version": ckpt.BASE_FORMAT_VERSION, "kind": p.kind,
            "config": self.c.to_dict(),
            "created_config": self.plan.created_config or self.c.to_dict(),  # what config.toml must match
            "network": p.network,
            "data": {"image_size": list(p.image_size), "channels": data.channels, "conditional": data.conditional,
                     "class_names": data.class_names, "class_counts": data.class_counts, "images": len(data.samples)},
            **self.task.payload(),
            "versions": ckpt.versions(),
            "progress": {"epoch": epochs_done, "step": self.step, "total_steps": self.total,
                         "skipped_steps": self.skipped,
                         "skipped_files": sorted(self.bad_files), "position": position,
                         "world_size": self.world.size,
                         **({"loss_sums": {"epoch": self._epoch_loss, "window": self._window}} if position else {})},
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "ema_updates": self.ema.updates,
            "ema_images": self.ema.images,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def save(self, epochs_done: int, position: int = 0) -> Path:
        """ckpt_last.pt (and, at an epoch end, the interval checkpoint). ``position``: batches into the next epoch.
        Every rank calls it (the skipped-file lists are gathered); rank 0 writes. The task's own copies of the state
        (an autoencoder's ckpt_best.pt) are written first, so that ckpt_last.pt never records a best state that
        was not saved."""
        s, run_dir = self.c.save, self.plan.run_dir
        last = run_dir / "ckpt_last.pt"
        self.settle()  # the counts the checkpoint records (and no save after --max-nonfinite was reached)
        if self.world.launched:
            seen = set().union(*dist.all_gather_object(sorted(self.bad_files), self.world))
            for path in sorted(seen - self.bad_files):
                self.logger.log(f"skipped a file that failed to decode (on another rank): {path}")
            self.bad_files |= seen
        if not self.world.is_main:
            return last
        payload = self.checkpoint_payload(epochs_done, position)
        for copy in self.task.copies(position):
            ckpt.save_checkpoint(copy, payload)
        ckpt.save_checkpoint(last, payload)
        if position == 0 and s.save_model_interval and epochs_done > s.start_model_interval \
                and epochs_done % s.save_model_interval_epochs == 0:
            kept = run_dir / f"ckpt_{epochs_done:03d}.pt"
            ckpt.copy_checkpoint(last, kept)
            if s.keep_last:  # the oldest go; never the one just written, even if newer numbers were left behind
                older = [path for _, path in ckpt.numbered_checkpoints(run_dir) if path != kept]
                for old in older[:max(0, len(older) + 1 - s.keep_last)]:
                    old.unlink()
        return last

    def restore(self, state: dict[str, Any]) -> tuple[int, int, str | None]:
        """Load a training state; returns (epoch to continue, batch position in it, note)."""
        self.model.load_state_dict(ckpt.strip_prefix(state["model"]))
        # ema_images: stored since the EMA half-life; before it, every update was one global batch
        images = state.get("ema_images", state["ema_updates"] * self.c.data.batch_size * state["progress"].get(
            "world_size", self.world.size))
        self.ema.load_state_dict(ckpt.strip_prefix(state["ema"]), state["ema_updates"], images)
        optimizer = state["optimizer"]  # saved before the step needed fused kernels: it would load as not fused
        self.optimizer.load_state_dict({**optimizer, "param_groups": [
            {**group, "fused": True, "foreach": None} for group in optimizer["param_groups"]]})
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        progress = state["progress"]
        self.step, self.skipped = progress["step"], progress["skipped_steps"]
        self._settled_step = self.step
        if self.by_steps and progress.get("total_steps") is not None:  # the length it was given or measured
            self.total = progress["total_steps"]
        self.bad_files = set(progress.get("skipped_files", []))
        self._resumed_loss = progress.get("loss_sums", {})
        rng = state.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if rng.get("python"):
            random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in rng["python"]))
        if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
        position, saved_world, note = progress.get("position", 0), progress.get("world_size", 1), None
        if saved_world != self.world.size:  # same samples seen, counted in this world's batches
            position = min(self.plan.steps_per_epoch, position * saved_world // self.world.size)
            note = (f"note: the run was saved by {saved_world} process(es) and continues on {self.world.size}: the "
                    "data order from here on differs from a run that was never interrupted")
        return progress["epoch"], position, note


@contextmanager
def open_session(plan: Plan) -> Iterator[Session]:
    """A silent session in the plan's new run folder whose steps the caller drives (benchmarks, tests); closed,
    with its log, when the block ends."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    logger = RunLogger(plan.run_dir)
    session = Session(plan, SilentReporter(), logger)
    try:
        yield session
    finally:
        session.close()
        logger.close()


def _open_run(plan: Plan, state: dict[str, Any] | None, provenance: dict[str, Any] | None,
              reporter: Reporter) -> tuple[RunLock, RunLogger]:
    """Rank 0: claim (a new run) and lock the run directory, write its record files, clean up after killed saves,
    move superseded states aside. Returns the lock and the logger."""
    run_dir = plan.run_dir if state is not None or plan.claimed else plan.claim()
    lock = RunLock(run_dir).acquire()  # before anything is written: one process trains in a run
    data = plan.data
    classes = {"conditional": data.conditional, "class_names": data.class_names, "class_counts": data.class_counts,
               "images": len(data.samples)}
    write_run_files(run_dir, plan.config, classes, provenance, state is not None)
    logger = RunLogger(run_dir)
    if lock.note:  # a file system without locks
        logger.log(lock.note)
        reporter.info(lock.note)
    for tmp in ckpt.remove_stale_temps(run_dir):
        logger.log(f"removed {tmp.name}, left by a save that was killed")
    if plan.superseded:
        logger.log(f"moved {', '.join(p.name for p in plan.superseded)} to {supersede(run_dir, plan.superseded)}")
    return lock, logger


def train(plan: Plan, reporter: Reporter | None = None, provenance: dict[str, Any] | None = None,
          state: dict[str, Any] | None = None, world: World = SINGLE) -> TrainResult:
    """Run the whole training, or continue it from a saved ``state`` in the same run directory. Under DDP every
    rank calls this with its ``world``; rank 0 alone creates and writes the run directory."""
    c = plan.config
    lock, logger = None, NullLogger()  # type: tuple[RunLock | None, RunLogger | NullLogger]
    reporter = (reporter or Reporter()) if world.is_main else SilentReporter()
    restore_signals = lambda: None  # noqa: E731
    session: Session | None = None
    try:
        if world.is_main:
            lock, logger = _open_run(plan, state, provenance, reporter)
        run_dir = plan.run_dir
        for line in plan.describe():
            logger.log(line)
            reporter.info(line)
        session = Session(plan, reporter, logger, world, state)
        for line in session.notes:
            logger.log(line)
            reporter.info(line)
        start_epoch, position = 0, 0
        if state is not None:
            start_epoch, position, note = session.restore(state)
            for line in filter(None, [note, f"resumed at epoch {start_epoch + 1}, batch {position} "
                                            f"(step {session.step})"]):
                logger.log(line)
                reporter.info(line)
        elif c.train.pretrain and world.launched:  # rank 0 loaded the file while planning; it sends the weights
            dist.broadcast_tensors(session.model.state_dict().values())
            session.ema = make_ema(session.model, c)
        if world.launched:
            logger.log(dist.check_consistency(world, _weights(session)))
        restore_signals = stop_on_signals(session)
        last, mean_loss = run_dir / "ckpt_last.pt", float("nan")
        session.first_step = session.step
        epoch = start_epoch
        while not session.finished() and (session.by_steps or epoch < c.train.epochs):
            mean_loss = session.run_epoch(epoch, position if epoch == start_epoch else 0)
            done = epoch + 1  # a step budget's last, partial epoch counts as done
            summary = {"event": "epoch", "step": session.step, "epoch": done, "loss": mean_loss,
                       "skipped_steps": session.skipped, "skipped_files": len(session.bad_files)}
            summary.update(session.task.before_save(done))  # validation, which the checkpoint records
            last = session.save(done)
            summary.update(session.task.after_save(done, last))  # previews, the best checkpoint
            logger.metrics(summary)
            logger.log(f"epoch {done}/{session.epochs_label()} done: mean loss {mean_loss:.4f}"
                       + session.task.describe_epoch())
            reporter.end_epoch(epoch, summary)
            if session.stop_requested() is not None:
                raise Interrupted(session.agreed_stop, run_dir)
            epoch = done
        if world.launched:
            logger.log(dist.check_consistency(world, _weights(session)))
        logger.log(f"finished: {session.step} steps, checkpoint {last}")
        return TrainResult(run_dir, session.step, mean_loss, last, session.previews, session.skipped)
    except Interrupted as err:
        logger.log(err.problems[0])
        raise
    except OSError as err:  # the log, a preview grid, a rotation: the disk failed outside a checkpoint write
        if err.errno not in ckpt.STORAGE_ERRNOS:
            _log_failure(logger, [_described(err)])
            raise
        failure = ckpt.storage_error(err, Path(err.filename) if err.filename else plan.run_dir)
        _log_failure(logger, failure.problems)
        raise failure from None
    except IddmError as err:  # a file under --strict-data, a checkpoint that could not be written, a NaN loss
        _log_failure(logger, err.problems)
        raise
    except Exception as err:  # out of memory, a lost peer, a bug: the log says so before the traceback does
        _log_failure(logger, [_described(err)])
        raise
    finally:
        restore_signals()
        with suppress(OSError):  # a full disk must not hide the error that stopped the run
            logger.close()
        reporter.close()
        if lock is not None:
            lock.release()
        if session is not None:
            session.close()


def _described(err: BaseException) -> str:
    """An unexpected error in one line for train.log (its traceback goes to the console)."""
    return f"{type(err).__name__}: {first_line(err)}"


def _log_failure(logger: RunLogger | NullLogger, problems: list[str]) -> None:
    """train.log says why the run stopped, as the console did (unless the disk that holds it is what failed)."""
    with suppress(OSError):
        for line in problems:
            logger.log(f"stopped: {line}")


def _weights(session: Session) -> dict[str, Any]:
    return {"parameters": list(session.model.parameters()), "EMA": list(session.ema.model.state_dict().values())}

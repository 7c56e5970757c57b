"""What a training run learns, beside how the engine runs it: the diffusion model (in pixel or latent space) and the
autoencoder. A task gives the engine its dataset, the loss of one batch, its entries of the checkpoint, and what
happens at an epoch's end (previews; validation and the best checkpoint). The engine (:mod:`iddm_cli.train.engine`)
owns everything else: the step, the optimizer, the data order, DDP, signals, checkpoints and the run directory.

Every random draw of a step comes from the step's generator ``g`` (seed, rank, step), so tasks keep runs exact.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

from iddm_cli.core import checkpoint as ckpt
from iddm_cli.core.images import save_grid
from iddm_cli.data.folder import ImageFolderDataset, collate
from iddm_cli.diffusion.registry import SAMPLERS
from iddm_cli.diffusion.samplers import timesteps
from iddm_cli.diffusion.schedule import Diffusion
from iddm_cli.metrics.image import PSNR_CAP, psnr, ssim
from iddm_cli.nets.autoencoder import vae_loss
from iddm_cli.train import distributed as dist
from iddm_cli.train.objectives import LOSSES
from iddm_cli.train.preview import PREVIEW_BATCH, PREVIEW_SAMPLER, sharded_sample

if TYPE_CHECKING:
    from iddm_cli.train.engine import Session

ENCODE_BATCH = 64
SCALE_IMAGES = 512  # images the latent scale is measured on when latents are not cached


def same_record(stored: tuple[Any, ...] | None, metric: tuple[str, str, str]) -> bool:
    """Whether an evaluation ``metric`` (fid name, reference, sampler-steps) continues the ``stored`` best-FID record.
    A record stored as (fid name, reference) predates the sampler-steps key; its evaluations were DDIM, so it is
    continued rather than dropped, and its ckpt_best_fid.pt is not replaced by a worse one."""
    if stored is not None and len(stored) == 2:
        return tuple(stored) == metric[:2]
    return stored == metric


@torch.no_grad()
def forward_seconds(forward: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call of ``forward`` (a no-grad network pass; the second of two, so that allocation is not
    counted): the unit of the end-of-epoch cost estimates of a --max-time run."""
    for _ in range(2):
        start = time.perf_counter()
        forward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return time.perf_counter() - start


class DiffusionTask:
    """Noise (Ho et al. 2020), v or x0 prediction on images in [-1, 1], or on the scaled latents of a frozen
    autoencoder.

    Latent diffusion (Rombach et al. 2022): the encoder runs without gradients; each step draws a latent from the
    posterior N(mean, std^2) and multiplies it by ``scale``, measured at the start of the run on the training data
    so that the scaled latents have unit variance (instead of one constant for every autoencoder), and stored. The
    largest magnitude of those scaled latents is stored too, as the range samplers clip x0 predictions to, as they
    clip images to [-1, 1]: unclipped, eps errors at high noise levels are amplified and samples drift off the data
    (on the latent demo their standard deviation came out 6.0 instead of 1.0)."""

    def __init__(self, session: Session, state: dict[str, Any] | None):
        self.s = session
        plan, c = session.plan, session.c
        self.diffusion = Diffusion(c.diffusion.noise_schedule, c.diffusion.noise_steps, c.diffusion.prediction)
        self.min_snr_gamma = c.diffusion.min_snr_gamma
        # per-sample losses when they are weighted; else the loss module's own mean (bit for bit as before)
        self.loss_fn = LOSSES[c.optim.loss](reduction="none") if self.min_snr_gamma else LOSSES[c.optim.loss]()
        self.codec = plan.codec.to(session.device) if plan.codec is not None else None
        self.cache: tuple[torch.Tensor, torch.Tensor] | None = None  # posterior (mean, std) of every image
        evaluated = (state or {}).get("eval") or {}
        self.best_fid, self.best_fid_epoch = evaluated.get("best_fid", math.inf), evaluated.get("best_epoch", 0)
        self.reference_key = session.c.eval.eval_ref or session.c.data.dataset_path
        # (fid name, reference, sampler-steps) of the record: another of any of them starts a new record
        self.best_metric = tuple(evaluated.get("metric") or ()) or None
        self.fid_improved = False
        self.last_fid: tuple[str, float] | None = None  # (metric, value) of this epoch's evaluation
        self.inception: Any = None  # rank 0's network and reference, loaded at the first evaluation
        self.reference: Any = None
        self.scale, self.clip = 1.0, 1.0
        if self.codec is None:
            return
        if c.model.cache_latents:
            self.cache = self._encode(range(len(plan.data.samples)))
        stored = (state or {}).get("latent")
        self.scale, self.clip = (stored["scale"], stored.get("clip")) if stored else self._measure_scale()
        session.notes.append(f"latent scale {self.scale:.5g}, range +-{self.clip:.3g}" + (
            " (from the checkpoint)" if stored else " (measured: unit variance on the training data)"))

    # data --------------------------------------------------------------------------------------------------
    def dataset(self) -> Dataset:
        plan, c = self.s.plan, self.s.c
        if self.cache is not None:
            return LatentDataset(*self.cache, [label for _, label in plan.data.samples])
        return ImageFolderDataset(plan.data, c.data.augment, plan.image_size, c.data.strict_data, c.train.seed)

    def _encode(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior (mean, std) of these training images, resized without augmentation."""
        plan, c = self.s.plan, self.s.c
        images = ImageFolderDataset(plan.data, "resize", plan.image_size, c.data.strict_data, c.train.seed)
        loader = DataLoader(torch.utils.data.Subset(images, indices), batch_size=ENCODE_BATCH, collate_fn=collate)
        means, stds = [], []
        for x, _, _ in loader:
            mean, std = self.codec.encode(x.to(self.s.device))
            means.append(mean.cpu())
            stds.append(std.cpu())
        return torch.cat(means), torch.cat(stds)

    def _measure_scale(self) -> tuple[float, float]:
        """1 / std of posterior samples of the training latents (the cached ones, else SCALE_IMAGES images drawn
        from every class by the seed); rank 0's value is every rank's."""
        if self.cache is not None:
            posterior = self.cache
        else:
            n, seed = len(self.s.plan.data.samples), self.s.c.train.seed
            drawn = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:SCALE_IMAGES]
            posterior = self._encode(sorted(drawn.tolist()))
        measured = latent_scale(*posterior, self.s.c.train.seed)
        if self.s.world.launched:
            measured = dist.broadcast_object(measured, self.s.world, "measuring the latent scale")
        return measured

    # one batch ---------------------------------------------------------------------------------------------
    def loss(self, x0: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        s, c, device = self.s, self.s.c, self.s.device
        x0 = x0.to(device, non_blocking=True)  # (B, C, H, W) images in [-1, 1], or cached (mean, std) pairs
        if self.codec is not None:
            x0 = self._latents(x0, g)  # (B, latent C, H/f, W/f), unit variance
        b = x0.shape[0]
        t = torch.randint(0, self.diffusion.T, (b,), device=device, generator=g)  # (B,)
        noise = torch.randn(x0.shape, device=device, generator=g)
        labels = None
        if s.plan.data.conditional:  # per-sample dropout to the null class (classifier-free guidance)
            labels = y.to(device, non_blocking=True)  # (B,)
            drop = torch.rand(b, device=device, generator=g) < c.diffusion.cfg_dropout
            labels = torch.where(drop, torch.full_like(labels, len(s.plan.data.class_names)), labels)
        x_t = self.diffusion.q_sample(x0, t, noise)
        with s.autocast():  # predict noise, v or x0 (under DDP, s.net averages the gradients in backward)
            pred = s.net(x_t, t, labels)
        loss = self.loss_fn(pred.float(), self.diffusion.target(x0, t, noise))
        if not self.min_snr_gamma:
            return loss
        return (loss.flatten(1).mean(1) * self.diffusion.min_snr_weight(t, self.min_snr_gamma)).mean()

    def _latents(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.cache is not None:
            mean, std = x.chunk(2, dim=1)
        else:
            mean, std = self.codec.encode(x)
        return (mean + std * torch.randn(mean.shape, device=mean.device, generator=g)) * self.scale

    # checkpoints and previews -----------------------------------------------------------------------------
    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"diffusion": self.diffusion.describe(),
                               # an iddm that knows only noise prediction must refuse a v or x0 network
                               **({"format_version": ckpt.V_X0_FORMAT_VERSION}
                                  if self.diffusion.prediction != "epsilon" else {}),
                               "eval": {"best_fid": self.best_fid, "best_epoch": self.best_fid_epoch,
                                        "metric": list(self.best_metric) if self.best_metric else None}}
        if self.codec is not None:
            out["latent"] = {"scale": self.scale, "clip": self.clip, "autoencoder": self.codec.record,
                             "shape": list(self.s.plan.sample_shape)}
        return out

    def before_save(self, done: int) -> dict[str, Any]:
        """FID and KID of eval_num samples from the EMA weights, every eval_interval epochs and after the last: every
        rank samples its share of each chunk (as for previews), rank 0 scores it. The reference is the training
        images (or eval_ref) at the training size."""
        c, s = self.s.c, self.s
        self.fid_improved, self.last_fid = False, None
        if not c.eval.eval_interval or (done % c.eval.eval_interval and not s.last_epoch(done)):
            return {}
        from iddm_cli.evaluation import DRAW_CHUNK, metric_name, scores

        data, n = s.plan.data, c.eval.eval_num
        labels = torch.arange(n, device=s.device) % len(data.class_names) if data.conditional else None
        g = torch.Generator().manual_seed(c.train.seed + 1)  # the same noise every time: epochs compare
        features = []
        for lo in range(0, n, DRAW_CHUNK):
            hi = min(n, lo + DRAW_CHUNK)
            noise = torch.randn(hi - lo, *s.plan.sample_shape, generator=g).to(s.device)
            images = self.generate(noise, labels[lo:hi] if labels is not None else None, c.eval.eval_steps)
            if images is not None:  # rank 0
                features.append(self._scorer()[0]((images + 1) / 2))
        if not features:
            return {}
        result = scores(torch.cat(features), self._scorer()[1], None, [], 100, 1000)
        fid_name = metric_name("fid", n)
        metric = (fid_name, self.reference_key, f"{PREVIEW_SAMPLER}-{c.eval.eval_steps}")
        if not same_record(self.best_metric, metric):  # another count, reference, sampler or steps: a new record
            self.best_fid, self.best_fid_epoch = math.inf, 0
        self.best_metric = metric
        self.fid_improved = result.fid < self.best_fid
        if self.fid_improved:
            self.best_fid, self.best_fid_epoch = result.fid, done
        self.last_fid = (fid_name, result.fid)
        return {fid_name: result.fid, metric_name("kid", n): result.kid, "fid_improved": self.fid_improved}

    def _scorer(self) -> tuple[Any, Any]:
        """Rank 0's network and reference, loaded at the first evaluation (the checks ran when the run was planned)."""
        if self.inception is None:
            from iddm_cli.evaluation import reference
            from iddm_cli.metrics.fid import InceptionFeatures

            c = self.s.c
            self.inception = InceptionFeatures(self.s.device)
            self.reference = reference(c.eval.eval_ref or c.data.dataset_path, self.inception,
                                       size=self.s.plan.image_size, key="eval.eval_ref")
            self.s.logger.log(f"evaluation reference: {self.reference.source}")
        return self.inception, self.reference

    def copies(self, position: int) -> list[Path]:
        """ckpt_best_fid.pt, when this epoch's FID is the best so far (written before ckpt_last.pt)."""
        return [self.s.plan.run_dir / "ckpt_best_fid.pt"] if self.fid_improved and position == 0 else []

    def describe_epoch(self) -> str:
        if self.last_fid is None:
            return ""
        best = " (best)" if self.fid_improved else f" (best {self.best_fid:.2f} at epoch {self.best_fid_epoch})"
        return f", {self.last_fid[0]} {self.last_fid[1]:.2f}{best}"

    def after_save(self, done: int, last: Path) -> dict[str, Any]:
        c = self.s.c
        if not (c.vis.vis and (done % c.vis.vis_interval == 0 or self.s.last_epoch(done))):
            return {}
        path = self.preview(done)
        return {"preview": str(path.relative_to(self.s.plan.run_dir))} if path is not None else {}

    def end_cost(self) -> Callable[[int, int], float]:
        """``cost(first, last)``: seconds this rank will spend on the epoch ends first..last (last: the run's) after
        their checkpoints: previews and the sampling of evaluations (FID scoring itself is not in it), from timed
        forward passes of the batches they will use."""
        s, c = self.s, self.s.c
        if not (c.vis.vis or c.eval.eval_interval):
            return lambda first, last: 0.0
        data, world = s.plan.data, s.world
        guided = data.conditional and c.diffusion.cfg_scale != 1.0
        timed: dict[int, float] = {}

        def call(batch: int) -> float:  # one network call on ``batch`` images, guidance included
            if batch not in timed:
                rows = batch * (2 if guided else 1)
                x, t = torch.zeros(rows, *s.plan.sample_shape, device=s.device), torch.zeros(rows, device=s.device)
                y = torch.zeros(rows, dtype=torch.long, device=s.device) if data.conditional else None
                timed[batch] = forward_seconds(lambda: s.ema.model(x, t, y), s.device)
            return timed[batch]

        def sampling(n: int, steps: int) -> float:  # DDIM on this rank's share of n images, batch by batch
            share = math.ceil(n / world.size)
            calls = SAMPLERS[PREVIEW_SAMPLER].nfe(len(timesteps(self.diffusion, steps)))
            full, rest = divmod(share, PREVIEW_BATCH)
            return calls * (full * (call(PREVIEW_BATCH) if full else 0.0) + (call(rest) if rest else 0.0))

        preview = sampling(self.preview_count(), c.vis.vis_steps) if c.vis.vis else 0.0
        evaluation = sampling(c.eval.eval_num, c.eval.eval_steps) if c.eval.eval_interval else 0.0

        def due(first: int, last: int, interval: int) -> int:  # multiples of interval in first..last, and last
            return last // interval - (first - 1) // interval + (1 if last % interval else 0)

        def cost(first: int, last: int) -> float:
            if last < first:
                return 0.0
            return (preview * due(first, last, c.vis.vis_interval) if c.vis.vis else 0.0) + \
                (evaluation * due(first, last, c.eval.eval_interval) if c.eval.eval_interval else 0.0)

        return cost

    def preview_count(self) -> int:
        """Images in a preview grid: num_vis (8 by default) per class, or in total when unconditional."""
        per = self.s.c.vis.num_vis if self.s.c.vis.num_vis > 0 else 8
        return per * len(self.s.plan.data.class_names) if self.s.plan.data.conditional else per

    def preview(self, epochs_done: int) -> Path | None:
        """A grid from the EMA weights, always from the same noise. Under DDP each rank samples its share of the
        grid and rank 0 gathers and writes it, so no rank waits long for another. Returns the file on rank 0."""
        s, c, data = self.s, self.s.c, self.s.plan.data
        n = self.preview_count()
        labels = None
        if data.conditional:
            labels = torch.arange(len(data.class_names), device=s.device).repeat_interleave(n // len(data.class_names))
        g = torch.Generator().manual_seed(c.train.seed)  # the same noise every time: progress is comparable
        images = self.generate(torch.randn(n, *s.plan.sample_shape, generator=g).to(s.device), labels,
                               c.vis.vis_steps)
        if images is None:
            return None
        rows = len(data.class_names) if data.conditional else max(1, round(math.sqrt(n)))
        path = s.plan.run_dir / "vis" / f"ema_{epochs_done:03d}.{c.vis.image_format}"
        save_grid(images, path, rows, data.class_names or None, c.vis.image_format)
        s.previews.append(path)
        return path

    def generate(self, noise: torch.Tensor, labels: torch.Tensor | None, steps: int) -> torch.Tensor | None:
        """Deterministic DDIM images in [-1, 1] from the EMA weights (decoded, for a latent model),
        sharded over the ranks; returned on rank 0, None elsewhere."""
        s = self.s
        out = sharded_sample(s.ema.model, self.diffusion, noise, labels, s.world, steps=steps,
                             cfg_scale=s.c.diffusion.cfg_scale, clip=self.clip)
        if out is None or self.codec is None:
            return out
        return torch.cat([self.codec.decode(z / self.scale) for z in out.split(ENCODE_BATCH)])


def latent_scale(mean: torch.Tensor, std: torch.Tensor, seed: int) -> tuple[float, float]:
    """(scale, range): the factor that gives posterior samples z = mean + std * noise unit variance, 1 / std(z),
    with the noise drawn from ``seed``; and the largest |z| * scale, the data range of the scaled latents."""
    z = (mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed))).double()
    scale = float(1.0 / z.std())
    return scale, float(z.abs().max() * scale)


class LatentDataset(Dataset):
    """Cached posteriors: item i is (mean and std stacked on the channel axis, label, [])."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, labels: list[int]):
        self.pairs, self.labels = torch.cat([mean, std], dim=1), labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, list[str]]:
        index = key[1] if isinstance(key, tuple) else key
        return self.pairs[index], self.labels[index], []


class AutoencoderTask:
    """Reconstruction with a KL-regularised latent (IDDM's MSEKLLoss). Every epoch the validation images are
    reconstructed from their posterior mean by the EMA weights: PSNR (peak 1 on [0, 1] images) and SSIM choose
    ``ckpt_best.pt``, and a grid shows ``num_vis`` originals, spread evenly over the set, above their
    reconstructions."""

    def __init__(self, session: Session, state: dict[str, Any] | None):
        self.s = session
        plan, c = session.plan, session.c
        self.val = ImageFolderDataset(plan.val, "resize", plan.image_size, c.data.strict_data, c.train.seed)
        validation = (state or {}).get("validation") or {}
        self.best_psnr = validation.get("best_psnr", -math.inf)
        self.best_epoch = validation.get("best_epoch", 0)
        self.metrics: dict[str, float] = validation.get("last", {})
        self.improved = False

    def dataset(self) -> Dataset:
        plan, c = self.s.plan, self.s.c
        return ImageFolderDataset(plan.data, c.data.augment, plan.image_size, c.data.strict_data, c.train.seed)

    def loss(self, x0: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        s = self.s
        x0 = x0.to(s.device, non_blocking=True)  # (B, C, H, W) in [-1, 1]
        with s.autocast():
            recon, mean, logvar = s.net(x0, generator=g)
        return vae_loss(recon.float(), x0, mean.float(), logvar.float(), s.c.optim.kl_weight)[0]

    def end_cost(self) -> Callable[[int, int], float]:
        """``cost(first, last)``: seconds of this rank's validation and reconstruction grid at the epoch ends
        first..last, from timed forward passes of the batches validation uses."""
        s = self.s
        share = math.ceil(len(self.val) / s.world.size)
        shape = (s.plan.data.channels, *s.plan.image_size)
        full, rest = divmod(share, ENCODE_BATCH)
        seconds = 0.0
        for batch, times in ((ENCODE_BATCH, full), (rest, 1), (min(s.c.vis.num_vis, len(self.val)), 1)):
            if batch > 0 and times > 0:  # full validation batches, the last one, the reconstruction grid
                x = torch.zeros(batch, *shape, device=s.device)
                seconds += times * forward_seconds(lambda x=x: s.ema.model(x, sample=False), s.device)
        return lambda first, last: max(0, last - first + 1) * seconds

    @torch.no_grad()
    def before_save(self, done: int) -> dict[str, Any]:
        """Validation, every rank on its share of the images (a collective under DDP), in evaluation mode."""
        s = self.s
        model = s.ema.model
        indices = range(s.world.rank, len(self.val), s.world.size)
        sums = torch.zeros(4, dtype=torch.float64, device=s.device)  # PSNR, SSIM, MSE, count
        for lo in range(0, len(indices), ENCODE_BATCH):
            x = torch.stack([self.val[i][0] for i in indices[lo:lo + ENCODE_BATCH]]).to(s.device)
            recon = model(x, sample=False)[0].float().clamp(-1, 1)
            a, b = (x + 1) / 2, (recon + 1) / 2
            sums += torch.stack([psnr(a, b).clamp(max=PSNR_CAP).sum(), ssim(a, b).sum(),
                                 ((a - b) ** 2).flatten(1).mean(1).double().sum(),
                                 torch.tensor(float(len(x)), dtype=torch.float64, device=s.device)])
        if s.world.launched:
            sums = dist.all_reduce_sum(sums, "validation")
        total_psnr, total_ssim, total_mse, n = sums.tolist()
        self.metrics = {"val_psnr": total_psnr / n, "val_ssim": total_ssim / n, "val_mse": total_mse / n}
        self.improved = self.metrics["val_psnr"] > self.best_psnr
        if self.improved:
            self.best_psnr, self.best_epoch = self.metrics["val_psnr"], done
        return {**self.metrics, "best": self.improved}

    def payload(self) -> dict[str, Any]:
        c = self.s.c
        return {"autoencoder": {"latent_channels": c.model.latent_channels, "downsample": c.model.downsample,
                                "kl_weight": c.optim.kl_weight},
                "validation": {"best_psnr": self.best_psnr, "best_epoch": self.best_epoch, "last": self.metrics}}

    def copies(self, position: int) -> list[Path]:
        """ckpt_best.pt, when this epoch's validation PSNR is the best so far (written before ckpt_last.pt)."""
        return [self.s.plan.run_dir / "ckpt_best.pt"] if self.improved and position == 0 else []

    @torch.no_grad()
    def after_save(self, done: int, last: Path) -> dict[str, Any]:
        s, c = self.s, self.s.c
        if not s.world.is_main:
            return {}
        n, last = min(c.vis.num_vis, len(self.val)), len(self.val) - 1
        spread = [round(i * last / max(1, n - 1)) for i in range(n)]  # the set's folders are in order: span them
        x = torch.stack([self.val[i][0] for i in spread]).to(s.device)
        recon = s.ema.model(x, sample=False)[0].float().clamp(-1, 1)
        path = s.plan.run_dir / "vis" / f"recon_{done:03d}.{c.vis.image_format}"
        save_grid(torch.cat([x, recon]), path, 2, ["original", "recon"], c.vis.image_format)
        s.previews.append(path)
        return {"reconstructions": str(path.relative_to(s.plan.run_dir))}

    def describe_epoch(self) -> str:
        m = self.metrics
        best = " (best)" if self.improved else f" (best {self.best_psnr:.2f} dB at epoch {self.best_epoch})"
        return f", val PSNR {m['val_psnr']:.2f} dB, SSIM {m['val_ssim']:.4f}{best}"


TASKS = {"dm": DiffusionTask, "vae": AutoencoderTask}

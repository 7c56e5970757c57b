"""``iddm sample``: images from a checkpoint with any sampler."""

from __future__ import annotations

from typing import Optional

import typer

from iddm_cli.cli.common import err_console, report_errors


def sample_command(
    checkpoint: Optional[str] = typer.Argument(None, metavar="CKPT", show_default=False,
                                               help="Checkpoint file, or a run directory (its ckpt_last.pt)."),
    weight_path: Optional[str] = typer.Option(None, "--weight-path", help="Same as CKPT (IDDM's flag)."),
    sampler: Optional[str] = typer.Option(None, "--sampler", "--sample", "-s",
                                          help="ddpm, ddim, plms, dpm2, dpmpp, dpmpp2m or dpmpp3m "
                                               "(default: the one recorded in the checkpoint)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps (default: the sampler's: ddpm 1000, "
                                        "ddim/plms 100, dpm2/dpmpp3m 50, dpmpp/dpmpp2m 20)."),
    eta: Optional[float] = typer.Option(None, "--eta", help="DDIM noise: 0 deterministic (default), 1 DDPM-like."),
    num: int = typer.Option(8, "--num", "--num-images", "-n",
                            help="Images per selected class (conditional) or in total (unconditional)."),
    class_name: Optional[list[str]] = typer.Option(None, "--class-name", help="A class to sample (repeatable; "
                                                   "default: all)."),
    class_id: Optional[list[int]] = typer.Option(None, "--class-id", help="A class index (repeatable)."),
    cfg_scale: Optional[float] = typer.Option(None, "--cfg-scale", help="Guidance scale; 1 = none (default: the "
                                              "checkpoint's). Conditional models only."),
    seed: int = typer.Option(0, "--seed", help="The same seed gives the same images, whatever --batch-size."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Images per network batch."),
    out: Optional[str] = typer.Option(None, "--out", "--result-path", "-o",
                                      help="Output folder (default: RUN/samples/<sampler>-<steps>steps-seed<seed>; "
                                           "an existing one gets a -2, -3, ... suffix)."),
    grid: bool = typer.Option(True, "--grid/--no-grid", help="Also write grid.<format>."),
    image_format: str = typer.Option("png", "--image-format", help="png, jpg, jpeg, webp or tif."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    use_gpu: Optional[int] = typer.Option(None, "--use-gpu", help="IDDM's GPU index: same as --device cuda:N."),
    ema: bool = typer.Option(True, "--ema/--no-ema", "--use-ema",
                             help="Use the EMA weights (default) or the raw ones."),
    debug: Optional[bool] = typer.Option(None, "--debug", help="Show tracebacks (also IDDM_DEBUG=1)."),
) -> None:
    """Generate images from a trained checkpoint. Network, schedule, size, channels and classes come from it."""

    def run() -> None:
        from iddm_cli.errors import ConfigError

        ckpt = checkpoint or weight_path
        if not ckpt:
            raise ConfigError("give a checkpoint: iddm sample RUN_DIR or iddm sample path/to/ckpt_last.pt")
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from iddm_cli.sampling import SampleRequest, generate

        req = SampleRequest(ckpt, sampler, steps, eta, num, class_name or [], class_id or [], cfg_scale, seed,
                            batch_size, out, grid, image_format, f"cuda:{use_gpu}" if use_gpu is not None else device,
                            ema)
        with Progress(TextColumn("sampling"), BarColumn(), MofNCompleteColumn(), TextColumn("network calls"),
                      TimeRemainingColumn(), console=err_console, disable=not err_console.is_terminal) as bar:
            task = bar.add_task("sample", total=None)
            result = generate(req, lambda done, total: bar.update(task, completed=done, total=total))
        err_console.print(f"{len(result.files)} images in {result.out_dir}", markup=False, highlight=False)
        if result.grid:
            err_console.print(f"grid: {result.grid}", markup=False, highlight=False)

    report_errors(run, debug)

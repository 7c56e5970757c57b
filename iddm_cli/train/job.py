"""What the training processes are asked to do (:class:`Job`, plain data that travels to worker processes as
JSON), and :func:`prepare`, which turns a job into a checked plan without writing anything."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from iddm_cli.config import config_from_dict
from iddm_cli.core.devices import World
from iddm_cli.data.folder import DatasetInfo
from iddm_cli.train.plan import Plan, plan_training
from iddm_cli.train.resume import plan_resume


@dataclass
class Job:
    """What the training processes are asked to do, as plain data (it travels to the workers as JSON)."""

    kind: str  # "new" | "resume"
    config: dict[str, Any] | None = None  # new: the resolved config
    run_dir: str | None = None  # resume: the run to continue
    overrides: dict[str, Any] = field(default_factory=dict)  # resume: flag values given with it
    start_epoch: int = -1  # resume: -1 = the newest state
    provenance: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] | None = None  # the launcher's dataset scan (DatasetInfo.to_json), so rank 0 need not redo it
    force: bool = False  # resume: --start-epoch may move newer states aside
    reporter: str = "plain"  # how rank 0 reports: forward (to iddm's launcher), plain (stderr) or silent


def prepare(job: Job, world: World | None = None) -> tuple[Plan, dict[str, Any] | None, list[str]]:
    """(plan, training state or None, notes): everything checked, nothing written."""
    data = DatasetInfo.from_json(job.data) if job.data is not None else None
    if job.kind == "resume":
        assert job.run_dir is not None
        return plan_resume(job.run_dir, job.overrides, job.start_epoch, world, data, job.force)
    assert job.config is not None
    config = config_from_dict(job.config, "the resolved configuration")
    plan = plan_training(config, world=world, data=data)
    if config.train.pretrain:  # read now, so that a missing or unfit file fails before anything is written
        plan.load_pretrained()
    return plan, None, []

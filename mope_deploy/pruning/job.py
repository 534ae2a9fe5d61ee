"""``mope prune`` as one library call: score tables + a target (or a saved plan) -> a physically smaller model
directory (``config.json``, ``model.safetensors``, ``plan.json``), written under the output policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import Output
from ..importance.table import ScoreTable
from ..models.io import model_dir_owner
from .plan import PlanError, PruningPlan, Target


@dataclass(frozen=True)
class PruneJob:
    """A teacher spec, where the student goes, and either ``plan_file`` or ``target`` + ``scores``."""

    model: str
    out: Path
    target: Target | None = None
    scores: tuple[Path, ...] = ()
    plan_file: Path | None = None
    groups: int = 32                  # FFN neuron groups of a magnitude table computed here
    force: bool = False
    output: Output = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "output", Output(self.out, model_dir_owner(["plan.json"]), self.force))


def check_prune(job: PruneJob) -> dict[str, ScoreTable]:
    """Every refusal before the model is loaded; returns the score tables by method."""
    job.output.check()
    if job.plan_file is not None:
        return {}
    if job.target is None:
        raise PlanError("give a pruning target (--width/--depth/--params) or --plan")
    job.target.check()
    tables: dict[str, ScoreTable] = {}
    for path in job.scores:
        t = ScoreTable.load(path)
        tables.setdefault(t.method, t)
    for m in job.target.required_tables():
        if m not in tables and m != "magnitude":
            hint = " (or use --depth-method every-other/top/bottom)" if m == job.target.depth_method else ""
            raise PlanError(f"no {m} score table given: run `mope importance {job.model} --data SPEC --method {m} "
                            f"--out {m}.json` and pass --scores {m}.json{hint}")
    return tables


def run_prune(job: PruneJob):
    """Plan, slice and save; returns ``(teacher, student)``."""
    from ..importance import magnitude_table
    from ..models import load, save_model
    from .apply import apply_plan
    from .plan import plan_for

    tables = check_prune(job)
    teacher = load(job.model).eval()
    if job.plan_file is not None:
        plan = PruningPlan.load(job.plan_file)
    else:
        if "magnitude" in job.target.required_tables() and "magnitude" not in tables:
            tables["magnitude"] = magnitude_table(teacher, job.target.towers(), job.groups)  # weights alone
        plan = plan_for(teacher.config, job.target, tables, teacher=job.model)
    student = apply_plan(teacher, plan)
    save_model(student, job.out, extra_files={"plan.json": plan.to_json()}, force=job.force)
    return teacher, student

"""`mope compress`: the paper's two pipelines (Alg. 2), resumable stage by stage.

- **pre-training stage** (both towers): score every head / neuron group / block of the teacher, prune width
  and depth at once, distil.
- **fine-tuning stage** (one tower, the other frozen): score width, prune width, distil; score the blocks of
  the width-pruned student, prune depth, distil again.

Every stage writes its result into the output directory and records itself in ``state.json``; a rerun with
the same directory skips finished stages and the trainer resumes from its last checkpoint, so an interrupted
run loses at most ``checkpoint_every`` steps.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from ..atomic import atomic_write_text
from ..data.datasets import DatasetError, RetrievalDataset, load_dataset
from ..data.sampling import dataset_pairs
from ..distill.kd import DistillationLoss, KDWeights, block_map, hidden_forward
from ..distill.losses import ContrastiveLoss
from ..distill.trainer import BEST, DataFn, Trainer, TrainConfig, clip_forward, pil_batches, synthetic_batches
from ..errors import MopeError
from ..eval.retrieval import encode_inputs, evaluate
from ..importance import ScoreTable, score
from ..models import (ModelFileError, ModelNotFoundError, SlimCLIP, load, load_config, load_model, model_stats,
                      save_model)
from ..models.io import WEIGHTS_FILE, replace_model_files
from ..progress import progress_bar
from ..pruning.apply import apply_plan
from ..pruning.compose import compose_plans, merge_tower
from ..pruning.plan import PruningPlan, Target, plan_for
from ..vocab import TOWERS
from .recipe import Recipe, TrainSpec
from .runs import RunState, clear_run

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
REPORT = "report.json"
EVAL_KEYS = ("tr1", "tr5", "tr10", "ir1", "ir5", "ir10", "recall_mean")


class CompressError(MopeError, ValueError):
    """A run directory or recipe that this pipeline cannot continue with."""


class Pipeline:
    """One `mope compress` run: a recipe, an output directory, and the stages between them."""

    def __init__(self, recipe: Recipe, out: str | Path, progress: bool = True, log: Callable[[str], None] = print,
                 restart: bool = False):
        self.recipe, self.out, self.progress, self.log = recipe, Path(out), progress, log
        self.restart = restart
        self.state = RunState.open(self.out, recipe, restart=restart, log=log)  # refusals before any write
        self._datasets: dict[str, RetrievalDataset] = {}

    def preflight(self) -> None:
        """Every path the recipe names (data sets, image root, teacher, its checkpoint), checked before the first
        stage runs: a missing test set must not be found only after hours of distillation."""
        r, d = self.recipe, self.recipe.data
        if d.image_root is not None and not Path(d.image_root).is_dir():
            raise CompressError(f"data.image_root: {d.image_root} is not a folder; fix the recipe")
        for which in ("train", "val", "test"):
            spec = getattr(d, which)
            if which == "train" and spec.split(":")[0] == "synthetic":
                continue                    # generated on the fly while training
            try:
                self.dataset(which)         # loaded (and cached) now: format, columns and images are checked
            except DatasetError as e:
                raise CompressError(f"data.{which} ({spec}): {e}") from None
        try:
            load_config(r.teacher)
        except (ModelNotFoundError, ModelFileError, FileNotFoundError) as e:
            raise CompressError(f"teacher ({r.teacher}): {e}") from None
        pre = r.pretrained
        if pre and ("/" in pre or os.sep in pre or Path(pre).suffix in CHECKPOINT_SUFFIXES) and not Path(pre).is_file():
            raise CompressError(f"pretrained: the teacher checkpoint {pre} is not a file; fix the recipe")

    # ----------------------------------------------------------------------------------- data and I/O
    def dataset(self, which: str) -> RetrievalDataset:
        if which not in self._datasets:
            d = self.recipe.data
            spec, split = getattr(d, which), getattr(d, f"{which}_split")
            ds = load_dataset(spec, split=split, image_root=d.image_root)
            if which == "val" and d.val_max_images:
                ds = ds.head(d.val_max_images)
            self._datasets[which] = ds
        return self._datasets[which]

    def _stage(self, name: str, fn: Callable[[], Any], load_fn: Callable[[], Any]) -> Any:
        if name in self.state.done:
            self.log(f"stage {name}: already done, reusing its result")
            return load_fn()
        self.log(f"stage {name}: running")
        t0 = time.perf_counter()
        result = fn()
        self.state.finish(name, time.perf_counter() - t0)
        return result

    def _save_model(self, model: SlimCLIP, name: str) -> Path:
        return save_model(model, self.out / "stages" / name)

    def _load_model(self, name: str) -> SlimCLIP:
        return load_model(self.out / "stages" / name).float()

    # ---------------------------------------------------------------------------------------- stages
    def _score(self, model: SlimCLIP, towers: tuple[str, ...], method: str, name: str) -> ScoreTable:
        path = self.out / f"scores_{name}.json"

        def run() -> ScoreTable:
            p = self.recipe.prune
            if method == "magnitude":
                table = score(model, method="magnitude", towers=towers, n_groups=p.neuron_groups)
            else:
                images, tokens, txt2img = encode_inputs(model, self.dataset("val"), progress=self.progress)
                kwargs = {"metric": p.metric, "dataset": self.recipe.data.val} if method == "mope" else {}
                with progress_bar(self.progress) as bar:
                    task = bar.add_task(f"{method} scores ({', '.join(towers)})", total=None)
                    if method == "mope":
                        kwargs["progress"] = lambda done, total: bar.update(task, completed=done, total=total)
                    table = score(model, images, tokens, txt2img, method=method, towers=towers,
                                  n_groups=p.neuron_groups, **kwargs)
            table.save(path)
            return table

        return self._stage(f"score-{name}", run, lambda: ScoreTable.load(path))

    def _tables(self, model: SlimCLIP, towers: tuple[str, ...], targets: list[Target], name: str
                ) -> dict[str, ScoreTable]:
        """The score tables ``targets`` need, each scored once: the recipe's width method as ``name``, another
        block-ranking method as ``name-depth``."""
        methods = list(dict.fromkeys(m for t in targets for m in t.required_tables()))
        return {m: self._score(model, towers, m, name if m == self.recipe.prune.method or len(methods) == 1
                               else f"{name}-depth") for m in methods}

    def _prune(self, model: SlimCLIP, target: Target, tables: dict[str, ScoreTable], name: str
               ) -> tuple[SlimCLIP, PruningPlan]:
        plan_path = self.out / f"plan_{name}.json"

        def run() -> PruningPlan:
            plan = plan_for(model.config, target, tables, teacher=self.recipe.teacher)
            plan.save(plan_path)
            return plan

        plan = self._stage(f"prune-{name}", run, lambda: PruningPlan.load(plan_path))
        return apply_plan(model, plan), plan

    def _train_config(self, spec: TrainSpec, name: str) -> TrainConfig:
        steps_per_epoch = spec.steps_per_epoch
        if steps_per_epoch is None:
            n = len(self.dataset("train").captions)
            steps_per_epoch = max(1, n // (spec.batch_size * spec.grad_accum))
        steps = spec.epochs * steps_per_epoch
        return TrainConfig(steps=steps, lr=spec.lr, weight_decay=spec.weight_decay, betas=tuple(spec.betas),
                           warmup_steps=int(round(spec.warmup * steps)), grad_accum=spec.grad_accum,
                           grad_clip=spec.clip_grad, checkpoint_every=spec.checkpoint_every,
                           eval_every=steps_per_epoch if spec.eval_every_epoch else 0, seed=spec.seed,
                           log_every=max(1, min(10, steps_per_epoch)),
                           out_dir=str(self.out / "stages" / f"train-{name}"))

    def _data(self, student: SlimCLIP, spec: TrainSpec) -> DataFn:
        d = self.recipe.data
        if d.train.split(":")[0] == "synthetic":
            return synthetic_batches(student, spec.batch_size, seed=spec.seed)
        ds = self.dataset("train")
        return pil_batches(dataset_pairs(ds, spec.seed), student.preprocess, student.tokenizer, spec.batch_size)

    def _distill(self, student: SlimCLIP, teacher: SlimCLIP, towers: tuple[str, ...], spec: TrainSpec,
                 name: str) -> SlimCLIP:
        self._check_sparsity(student.config)  # an n:m that cannot fit the student fails before training

        def run() -> SlimCLIP:
            frozen = [t for t in TOWERS if t not in towers]
            for t in frozen:  # fine-tuning stage: the other encoder stays exactly the teacher's
                student.tower(t).requires_grad_(False)
            k = self.recipe.distill
            if k.enabled:
                weights = KDWeights(itc=k.itc, alpha=k.alpha, beta=k.beta, gamma=k.gamma)
                mapping = block_map(student.config, teacher.config) if k.gamma > 0 else None
                loss, kd_teacher = DistillationLoss(weights, mapping, towers), teacher
            else:
                loss, kd_teacher = ContrastiveLoss(), None
            val = self.dataset("val")
            trainer = Trainer(student, self._train_config(spec, name), self._data(student, spec), loss=loss,
                              teacher=kd_teacher, forward=hidden_forward if k.enabled and k.gamma > 0 else
                              clip_forward,
                              eval_fn=lambda m: evaluate(m, val, progress=False), progress=self.progress)
            trainer.train(resume=True)
            best = Path(trainer.config.out_dir) / BEST
            if (best / WEIGHTS_FILE).is_file():  # the weights that scored best on val during training
                student.load_state_dict(load_model(best).state_dict())
            for t in frozen:
                student.tower(t).requires_grad_(True)
            self._save_model(student, f"student-{name}")
            self._copy_metrics(trainer, name)
            return student

        return self._stage(f"distill-{name}", run, lambda: self._load_model(f"student-{name}"))

    def _copy_metrics(self, trainer: Trainer, name: str) -> None:
        src = Path(trainer.config.out_dir) / "metrics.jsonl"
        if src.is_file():
            with open(self.out / "metrics.jsonl", "a") as f:
                for line in src.read_text().splitlines():
                    f.write(json.dumps({"stage": name, **json.loads(line)}) + "\n")

    # ------------------------------------------------------------------------------------------ runs
    def run(self) -> dict[str, Any]:
        """Run (or resume) the recipe's pipeline; returns the report (also written to ``report.json``)."""
        r = self.recipe
        self.preflight()
        if self.restart:
            kept = clear_run(self.out)
            if kept:
                self.log(f"--restart: kept {', '.join(kept)} in {self.out} (not written by mope compress)")
        self.out.mkdir(parents=True, exist_ok=True)
        teacher = load(r.teacher, pretrained=r.pretrained).eval()
        towers = tuple(r.towers)
        if r.stage == "pretraining":
            student, plan = self._pretraining(teacher, towers)
        else:
            student, plan = self._finetuning(teacher, towers[0])
        dense = None
        if r.sparsity is not None:  # weight sparsity on top of MoPE (mope_deploy.sparsity)
            dense, student = student, self._sparsify(student)
        return self._finish(teacher, student, plan, dense)

    def _check_sparsity(self, config) -> None:
        """The sparsity stage against the student's architecture, before any training is spent on it."""
        if self.recipe.sparsity is not None:
            from ..sparsity import SparsityError

            try:
                self.recipe.sparsity.spec().resolved(config)
            except SparsityError as e:
                raise CompressError(f"recipe sparsity stage: {e}") from None

    def _sparsify(self, student: SlimCLIP) -> SlimCLIP:
        """Sparsify the distilled student on ``data.train`` calibration pairs; recover with SparseLoRA if asked
        (one call: :func:`mope_deploy.sparsity.run`, the same as ``mope sparsify``)."""
        from ..sparsity import RecoverSpec, SparsifyJob, run as run_sparsity

        sp = self.recipe.sparsity
        self._check_sparsity(student.config)
        seed = self.recipe.train.seed
        rspec = None if sp.recover is None else RecoverSpec(
            rank=sp.lora_rank, kd=sp.kd, steps=sp.recover_steps, batch_size=sp.recover_batch, lr=sp.lr, seed=seed)
        name = "sparse" if rspec is None else "sparse-recovered"

        def run_stage() -> SlimCLIP:
            data = None if rspec is None else self._data(student, TrainSpec(batch_size=sp.recover_batch, seed=seed))
            result = run_sparsity(SparsifyJob(model=student, spec=sp.spec(), data=self.dataset("train"), recover=rspec,
                                              train_data=data, work_dir=self.out / "stages" / "train-sparselora",
                                              keep_work_dir=True, distributed=False, progress=self.progress))
            self._save_model(result.model, name)
            return result.model

        return self._stage("sparsify", run_stage, lambda: self._load_model(name))

    def _target(self, tower: str, width: bool, depth: bool) -> Target:
        return recipe_target(self.recipe, tower, width, depth)

    def _pretraining(self, teacher: SlimCLIP, towers: tuple[str, ...]) -> tuple[SlimCLIP, PruningPlan]:
        tables = self._tables(teacher, towers, [self._target(t, True, True) for t in towers], "teacher")
        plan_path = self.out / "plan_teacher.json"

        def make() -> PruningPlan:
            plan = pretraining_plan(self.recipe, teacher.config, tables)
            plan.save(plan_path)
            return plan

        plan = self._stage("prune-teacher", make, lambda: PruningPlan.load(plan_path))
        student = apply_plan(teacher, plan)
        student = self._distill(student, teacher, towers, self.recipe.train, "pretraining")
        return student, plan

    def _finetuning(self, teacher: SlimCLIP, tower: str) -> tuple[SlimCLIP, PruningPlan]:
        p, r = self.recipe.prune, self.recipe
        tt = getattr(p, tower)
        if not (tt.width or tt.depth):
            raise CompressError(f"prune.{tower} sets neither width nor depth: nothing to compress")
        if p.order == "joint" or not (tt.width and tt.depth):
            return self._one_shot(teacher, tower, r.train, "width-depth" if tt.width and tt.depth else
                                  ("width" if tt.width else "depth"))
        steps = ("width", "depth") if p.order == "width-first" else ("depth", "width")
        student, plan = teacher, None
        for i, step in enumerate(steps):
            spec = r.train if i == 0 else (r.depth_train or r.train)
            target = self._target(tower, width=step == "width", depth=step == "depth")
            tables = {m: self._score(student, (tower,), m, step) for m in target.required_tables()}
            pruned, step_plan = self._prune(student, target, tables, step)
            plan = step_plan if plan is None else compose_plans(plan, step_plan)
            student = self._distill(pruned, teacher, (tower,), spec, step)
        return student, plan

    def _one_shot(self, teacher: SlimCLIP, tower: str, spec: TrainSpec, name: str) -> tuple[SlimCLIP, PruningPlan]:
        """Score the teacher once, prune width and/or depth together, distil once."""
        target = self._target(tower, width=True, depth=True)
        tables = self._tables(teacher, (tower,), [target], "teacher")
        student, plan = self._prune(teacher, target, tables, name)
        return self._distill(student, teacher, (tower,), spec, name), plan

    def _finish(self, teacher: SlimCLIP, student: SlimCLIP, plan: PruningPlan,
                dense_student: SlimCLIP | None = None) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            test = self.dataset("test")
            report = {"recipe": self.recipe.name, "teacher": _summary(teacher, evaluate(teacher, test,
                                                                                      progress=self.progress)),
                      "student": _summary(student, evaluate(student, test, progress=self.progress)),
                      "test_data": f"{self.recipe.data.test}:{self.recipe.data.test_split}",
                      "plan_hash": plan.hash()}
            if self.recipe.prune.latency is not None:  # the planner's prediction (mope plan / resolve_recipe)
                report["latency"] = self.recipe.prune.latency.model_dump(exclude_none=True)
            if dense_student is not None:  # the sparsity stage: the student before it, and what it did
                from ..sparsity import sparsity_report

                report["student_dense"] = _summary(dense_student, evaluate(dense_student, test,
                                                                           progress=self.progress))
                rep = sparsity_report(student)
                report["sparsity"] = {"pattern": rep["pattern"], "sparsity": rep["sparsity"],
                                      "towers": {t: {k: v for k, v in rep["towers"][t].items() if k != "zeros"}
                                                 for t in TOWERS}, **student.config.sparsity}
            plan.save(self.out / "plan.json")
            replace_model_files(student, self.out)
            report["stages"] = {**self.state.done}
            atomic_write_text(self.out / REPORT, json.dumps(report, indent=1))
            return report

        report = self._stage("report", run, lambda: json.loads((self.out / REPORT).read_text()))
        report["stages"] = dict(self.state.done)
        atomic_write_text(self.out / REPORT, json.dumps(report, indent=1))
        return report


def recipe_target(recipe: Recipe, tower: str, width: bool = True, depth: bool = True) -> Target:
    """The recipe's width and/or depth target for one tower."""
    p = recipe.prune
    t = getattr(p, tower)
    return Target(tower=tower, width=t.width if width else None, depth=t.depth if depth else None,
                  depth_method=p.depth_method, allocation=p.allocation, mlp_ratio=t.mlp_ratio, method=p.method)


def pretraining_plan(recipe: Recipe, config, tables: dict[str, ScoreTable]) -> PruningPlan:
    """Width and depth of every pruned tower at once (one plan per tower, since widths may differ, merged);
    ``tables``: score tables by method (see :meth:`Target.required_tables`)."""
    plan = None
    for t in recipe.towers:
        tp = plan_for(config, recipe_target(recipe, t), tables, teacher=recipe.teacher)
        plan = tp if plan is None else merge_tower(plan, tp, t)
    return plan


def _summary(model: SlimCLIP, metrics: dict[str, Any]) -> dict[str, Any]:
    s = model_stats(model.config)
    return {"params": s["params"], "params_total": s["params_total"], "gflops": s["gflops"],
            "towers": {t: {k: s[t][k] for k in ("params", "params_total", "gflops", "depth")} for t in TOWERS},
            **{k: metrics[k] for k in EVAL_KEYS}, "n_images": metrics.get("n_images"),
            "n_captions": metrics.get("n_captions")}


def compress(recipe: Recipe, out: str | Path, progress: bool = True, log: Callable[[str], None] = print,
             restart: bool = False) -> dict[str, Any]:
    """Run a compression recipe into ``out`` (resuming if ``out`` holds an interrupted run of it).

    ``out`` must be absent, empty or a mope run folder (:func:`.runs.check_run_dir`); ``restart`` first deletes
    what an earlier run wrote there (:func:`.runs.clear_run`), after every path of the recipe was checked."""
    recipe.require_concrete()  # a latency budget is resolved above compress (mope_deploy.planning)
    return Pipeline(recipe, out, progress=progress, log=log, restart=restart).run()

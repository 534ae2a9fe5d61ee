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
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch.nn.functional as F

from ..data.datasets import RetrievalDataset, load_dataset
from ..eval.retrieval import encode_inputs, evaluate
from ..importance import ScoreTable, score
from ..atomic import atomic_write_text
from ..models import SlimCLIP, load, load_model, model_stats, save_model
from ..models.io import CONFIG_FILE, WEIGHTS_FILE
from ..progress import progress_bar
from ..pruning.apply import apply_plan
from ..pruning.plan import PruningPlan, Target, TowerPlan, make_plan
from .kd import DistillationLoss, KDWeights, block_map
from .losses import ContrastiveLoss, Outputs
from .recipe import Recipe, TrainSpec
from .trainer import BEST, Batch, DataFn, Trainer, TrainConfig, pil_batches, synthetic_batches

STATE = "state.json"
REPORT = "report.json"
EVAL_KEYS = ("tr1", "tr5", "tr10", "ir1", "ir5", "ir10", "recall_mean")


@dataclass
class RunState:
    """Which stages are finished and how long each took (``state.json``)."""

    path: Path
    done: dict[str, float] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, out: Path, recipe: Recipe) -> "RunState":
        path = out / STATE
        if path.is_file():
            data = json.loads(path.read_text())
            if data["recipe"] != recipe.model_dump(mode="json"):
                raise ValueError(f"{out} holds a run of a different recipe ({data['recipe'].get('name')!r}); "
                                 "use a new --out, or delete the directory to start over")
            return cls(path, data["done"], data["recipe"])
        return cls(path, {}, recipe.model_dump(mode="json"))

    def finish(self, stage: str, seconds: float) -> None:
        self.done[stage] = round(seconds, 2)
        atomic_write_text(self.path, json.dumps({"recipe": self.recipe, "done": self.done}, indent=1))


def hidden_forward(model: SlimCLIP, batch: Batch) -> Outputs:
    """Forward pass that also returns every block's hidden states (for L_hidn)."""
    img, hv = model.visual(batch["images"], return_hidden=True)
    txt, ht = model.text(batch["tokens"], return_hidden=True)
    return Outputs(image=F.normalize(img, dim=-1), text=F.normalize(txt, dim=-1), logit_scale=model.logit_scale.exp(),
                   extra={"hidden": {"vision": hv, "text": ht}})


def dataset_pairs(dataset: RetrievalDataset, seed: int) -> Callable[[int], Iterator[tuple[Any, str]]]:
    """``start -> (image, caption)`` over every caption, reshuffled each epoch by ``seed``; restartable anywhere."""
    n = len(dataset.captions)

    def pairs(start: int) -> Iterator[tuple[Any, str]]:
        i = start
        while True:
            epoch, pos = divmod(i, n)
            order = list(range(n))
            random.Random(seed * 100003 + epoch).shuffle(order)
            for c in order[pos:]:
                yield dataset.images[dataset.txt2img[c]], dataset.captions[c]
            i = (epoch + 1) * n

    return pairs


def first_images(ds: RetrievalDataset, k: int) -> RetrievalDataset:
    """The first ``k`` images of ``ds`` with all their captions (a smaller validation set for scoring)."""
    caps = [c for c, i in enumerate(ds.txt2img) if i < k]
    return RetrievalDataset(name=f"{ds.name}[:{k}]", images=ds.images[:k], captions=[ds.captions[c] for c in caps],
                            txt2img=[ds.txt2img[c] for c in caps], report=ds.report,
                            image_names=ds.image_names[:k] if ds.image_names else None)


class Pipeline:
    """One `mope compress` run: a recipe, an output directory, and the stages between them."""

    def __init__(self, recipe: Recipe, out: str | Path, progress: bool = True, log: Callable[[str], None] = print):
        self.recipe, self.out, self.progress, self.log = recipe, Path(out), progress, log
        self.out.mkdir(parents=True, exist_ok=True)
        self.state = RunState.open(self.out, recipe)
        self._datasets: dict[str, RetrievalDataset] = {}

    # ----------------------------------------------------------------------------------- data and I/O
    def dataset(self, which: str) -> RetrievalDataset:
        if which not in self._datasets:
            d = self.recipe.data
            spec, split = getattr(d, which), getattr(d, f"{which}_split")
            ds = load_dataset(spec, split=split, image_root=d.image_root)
            if which == "val" and d.val_max_images and len(ds.images) > d.val_max_images:
                ds = first_images(ds, d.val_max_images)
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

    def _prune(self, model: SlimCLIP, target: Target, width_table: ScoreTable | None,
               depth_table: ScoreTable | None, name: str) -> tuple[SlimCLIP, PruningPlan]:
        plan_path = self.out / f"plan_{name}.json"

        def run() -> PruningPlan:
            plan = make_plan(model.config, target, width_table, depth_table, teacher=self.recipe.teacher)
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
        def run() -> SlimCLIP:
            frozen = [t for t in ("vision", "text") if t not in towers]
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
                              _plain_forward,
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
        teacher = load(r.teacher, pretrained=r.pretrained).eval()
        towers = tuple(r.towers)
        if r.stage == "pretraining":
            student, plan = self._pretraining(teacher, towers)
        else:
            student, plan = self._finetuning(teacher, towers[0])
        return self._finish(teacher, student, plan)

    def _target(self, tower: str, width: bool, depth: bool) -> Target:
        return recipe_target(self.recipe, tower, width, depth)

    def _pretraining(self, teacher: SlimCLIP, towers: tuple[str, ...]) -> tuple[SlimCLIP, PruningPlan]:
        p = self.recipe.prune
        width_table = self._score(teacher, towers, p.method, "teacher")
        depth_table = width_table
        if p.depth_method in ("mope", "gradient") and p.depth_method != p.method:
            depth_table = self._score(teacher, towers, p.depth_method, "teacher-depth")
        plan_path = self.out / "plan_teacher.json"

        def make() -> PruningPlan:
            plan = pretraining_plan(self.recipe, teacher.config, width_table, depth_table)
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
            raise ValueError(f"prune.{tower} sets neither width nor depth: nothing to compress")
        if p.order == "joint" or not (tt.width and tt.depth):
            return self._one_shot(teacher, tower, r.train, "width-depth" if tt.width and tt.depth else
                                  ("width" if tt.width else "depth"))
        steps = ("width", "depth") if p.order == "width-first" else ("depth", "width")
        student, plan = teacher, None
        for i, step in enumerate(steps):
            spec = r.train if i == 0 else (r.depth_train or r.train)
            table = self._score(student, (tower,), p.method if step == "width" else p.depth_method, step) \
                if step == "width" or p.depth_method in ("mope", "gradient") else None
            target = self._target(tower, width=step == "width", depth=step == "depth")
            pruned, step_plan = self._prune(student, target, table if step == "width" else None,
                                            table if step == "depth" else None, step)
            plan = step_plan if plan is None else compose_plans(plan, step_plan)
            student = self._distill(pruned, teacher, (tower,), spec, step)
        return student, plan

    def _one_shot(self, teacher: SlimCLIP, tower: str, spec: TrainSpec, name: str) -> tuple[SlimCLIP, PruningPlan]:
        """Score the teacher once, prune width and/or depth together, distil once."""
        p = self.recipe.prune
        tt = getattr(p, tower)
        width_table = self._score(teacher, (tower,), p.method, "teacher") if tt.width else None
        depth_table = None
        if tt.depth and p.depth_method in ("mope", "gradient"):
            depth_table = width_table if (width_table is not None and p.depth_method == p.method) else \
                self._score(teacher, (tower,), p.depth_method, "teacher-depth")
        student, plan = self._prune(teacher, self._target(tower, width=True, depth=True), width_table, depth_table,
                                    name)
        return self._distill(student, teacher, (tower,), spec, name), plan

    def _finish(self, teacher: SlimCLIP, student: SlimCLIP, plan: PruningPlan) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            test = self.dataset("test")
            report = {"recipe": self.recipe.name, "teacher": _summary(teacher, evaluate(teacher, test,
                                                                                      progress=self.progress)),
                      "student": _summary(student, evaluate(student, test, progress=self.progress)),
                      "test_data": f"{self.recipe.data.test}:{self.recipe.data.test_split}",
                      "plan_hash": plan.hash()}
            plan.save(self.out / "plan.json")
            _write_model_files(student, self.out)
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
                  depth_method=p.depth_method, allocation=p.allocation, mlp_ratio=t.mlp_ratio)


def pretraining_plan(recipe: Recipe, config, width_table: ScoreTable | None,
                     depth_table: ScoreTable | None) -> PruningPlan:
    """Width and depth of every pruned tower at once (one plan per tower, since widths may differ, merged)."""
    plan = None
    for t in recipe.towers:
        tp = make_plan(config, recipe_target(recipe, t), width_table, depth_table, teacher=recipe.teacher)
        plan = tp if plan is None else _merge(plan, tp, t)
    return plan


def compose_plans(first: PruningPlan, second: PruningPlan) -> PruningPlan:
    """The plan on ``first``'s teacher equivalent to applying ``first`` and then ``second`` (made on its result)."""
    towers = {}
    for name in ("vision", "text"):
        a, b = first.tower(name), second.tower(name)
        towers[name] = TowerPlan(blocks=[a.blocks[i] for i in b.blocks],
                                 heads=[[a.heads[i][h] for h in hs] for i, hs in zip(b.blocks, b.heads)],
                                 neurons=[[a.neurons[i][n] for n in ns] for i, ns in zip(b.blocks, b.neurons)])
    return PruningPlan(teacher_arch_hash=first.teacher_arch_hash, teacher=first.teacher,
                       info={"steps": [first.info, second.info]}, **towers)


def _plain_forward(model: SlimCLIP, batch: Batch) -> Outputs:
    img, txt, scale = model(batch["images"], batch["tokens"])[:3]
    return Outputs(image=img, text=txt, logit_scale=scale)


def _merge(plan: PruningPlan, other: PruningPlan, tower: str) -> PruningPlan:
    setattr(plan, tower, other.tower(tower))
    plan.info = {**plan.info, tower: other.info}
    return plan


def _summary(model: SlimCLIP, metrics: dict[str, Any]) -> dict[str, Any]:
    s = model_stats(model.config)
    return {"params": s["params"], "params_total": s["params_total"], "gflops": s["gflops"],
            "towers": {t: {k: s[t][k] for k in ("params", "params_total", "gflops", "depth")} for t in
                       ("vision", "text")},
            **{k: metrics[k] for k in EVAL_KEYS}, "n_images": metrics.get("n_images"),
            "n_captions": metrics.get("n_captions")}


def _write_model_files(model: SlimCLIP, out: Path) -> None:
    """Put config.json + model.safetensors into an existing run directory, each file replaced atomically."""
    tmp = out / ".model-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        os.replace(tmp / name, out / name)
    shutil.rmtree(tmp, ignore_errors=True)


def compress(recipe: Recipe, out: str | Path, progress: bool = True, log: Callable[[str], None] = print
             ) -> dict[str, Any]:
    """Run a compression recipe into ``out`` (resuming if ``out`` holds an interrupted run of it)."""
    return Pipeline(recipe, out, progress=progress, log=log).run()

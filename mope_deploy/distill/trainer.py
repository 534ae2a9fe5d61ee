"""The one training loop: contrastive pre-training now, knowledge distillation through the same loop later.

>>> trainer = Trainer(model, TrainConfig(steps=1000, out_dir="runs/x"), data=synthetic_batches(model, 128))
>>> trainer.train()                       # resumes from runs/x/last.pt when it exists

What varies between uses is plugged in, not forked: the ``loss`` (``(student, batch, teacher) -> (loss,
logs)``, see :mod:`~mope_deploy.distill.losses`), an optional frozen ``teacher`` whose outputs reach the loss,
the ``forward`` that turns a model and a batch into :class:`Outputs` (override to return hidden states), and
``eval_fn`` run every ``eval_every`` steps. The data is a function ``start -> iterator of batches`` that can
restart at any micro-batch index, which is what makes resuming exact.

Checkpoints (``last.pt``) hold model, optimizer, scheduler, RNG states and step; they are written to a
temporary file and ``os.replace``-d into place, and read back with ``torch.load(weights_only=True)``.
Metrics go to ``metrics.jsonl`` (one JSON object per logged step; lines past a resumed step are dropped).
With ``eval_every`` and ``best_metric``, the weights with the best evaluation so far are kept in ``best/``
(a model directory).

Under ``torchrun`` (the caller joins the process group, e.g. :func:`mope_deploy.distributed.init_from_env`)
every rank draws the same global batch and trains on its own rows; image and text embeddings (student and
teacher) are all-gathered with their gradient path so contrastive terms see the whole global batch, and
gradients are averaged over ranks before clipping: the update equals a one-process run on the global batch.
Rank 0 alone writes checkpoints, metrics and evaluations. On CUDA, ``amp`` runs the forward in bfloat16.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from .. import distributed as D
from ..atomic import atomic_file, atomic_write_text
from ..progress import progress_bar
from ..errors import MopeError
from .losses import ContrastiveLoss, Loss, Outputs


class TrainError(MopeError, ValueError):
    """Training settings, data or a checkpoint that a run cannot use (names the problem and the fix)."""


Batch = dict[str, Any]
DataFn = Callable[[int], Iterable[Batch]]
CHECKPOINT = "last.pt"
BEST = "best"
METRICS = "metrics.jsonl"


@dataclass
class TrainConfig:
    """Optimisation settings (plain data; saved in every checkpoint and checked on resume)."""

    steps: int
    lr: float = 5e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0        # cosine decays to lr * min_lr_ratio
    grad_accum: int = 1              # micro-batches per optimizer step
    grad_clip: float | None = 1.0    # max global grad norm; None: no clipping
    max_logit_scale: float = 100.0   # CLIP clamps exp(logit_scale) here
    log_every: int = 10
    checkpoint_every: int = 100
    eval_every: int = 0              # 0: no periodic evaluation
    best_metric: str | None = "recall_mean"  # eval key whose best value keeps weights in out_dir/best
    amp: bool = True                 # bfloat16 autocast on CUDA (ignored on CPU)
    seed: int = 0
    out_dir: str | None = None       # None: no checkpoints or metrics files

    def validate(self) -> "TrainConfig":
        if self.steps <= 0:
            raise TrainError(f"steps must be positive, got {self.steps}")
        if self.lr <= 0:
            raise TrainError(f"lr must be positive, got {self.lr}")
        if self.grad_accum < 1:
            raise TrainError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise TrainError(f"warmup_steps must be in [0, steps={self.steps}], got {self.warmup_steps}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise TrainError(f"grad_clip must be positive or None, got {self.grad_clip}")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def cosine_with_warmup(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warm-up from ~0 to 1 over ``warmup`` steps, then cosine down to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only; biases, LayerNorms and the temperature are not decayed (as open_clip does)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def clip_forward(model: nn.Module, batch: Batch) -> Outputs:
    """Default forward: normalised image and text embeddings and ``exp(logit_scale)``."""
    out = model(batch["images"], batch["tokens"])
    return Outputs(image=out[0], text=out[1], logit_scale=out[2])


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))


class Trainer:
    """Optimises ``model`` on ``data`` with ``loss``; see the module docstring for the pluggable parts."""

    def __init__(self, model: nn.Module, config: TrainConfig, data: DataFn, loss: Loss | None = None,
                 teacher: nn.Module | None = None, forward: Callable[[nn.Module, Batch], Outputs] = clip_forward,
                 eval_fn: Callable[[nn.Module], dict[str, float]] | None = None, progress: bool = True,
                 device: str | torch.device = "cpu"):
        self.config = config.validate()
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.teacher = teacher.to(self.device).eval().requires_grad_(False) if teacher is not None else None
        self.data, self.loss, self.forward = data, loss or ContrastiveLoss(), forward
        self.eval_fn, self.progress = eval_fn, progress
        self.optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr,
                                           betas=tuple(config.betas), eps=config.eps)
        c = config
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cosine_with_warmup(s, c.warmup_steps, c.steps, c.min_lr_ratio))
        self.step = 0
        self.best: float | None = None
        self._samples_seen = 0
        self.out_dir = Path(config.out_dir) if config.out_dir else None
        self.rank, self.world = D.rank_world()
        self.master = self.rank == 0

    # ------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": _rng_state(), "config": self.config.to_dict(),
                "best": self.best}

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write the full training state atomically (temp file in the same folder, then ``os.replace``)."""
        path = Path(path) if path else self._require_out() / CHECKPOINT
        with atomic_file(path) as f:
            torch.save(self.state_dict(), f)
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` (weights only: nothing is unpickled)."""
        path = Path(path)
        redo = f"delete {path} to restart this training run from its first step"
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except pickle.UnpicklingError:
            # torch's own message is a page long and suggests weights_only=False, which we never do
            raise TrainError(f"checkpoint {path} was refused: it holds Python objects other than tensors and plain "
                             f"data, and mope never unpickles code (torch.load weights_only=True); it was not "
                             f"written by mope. {redo}") from None
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise TrainError(f"checkpoint {path} is corrupt or truncated ({str(e).splitlines()[0][:200]}); "
                             f"{redo}") from None
        keys = ("step", "model", "optimizer", "scheduler", "rng", "config")
        if not isinstance(state, dict) or any(k not in state for k in keys) or not isinstance(state["config"], dict):
            raise TrainError(f"checkpoint {path} is not a training checkpoint written by mope (expected the keys "
                             f"{', '.join(keys)}); {redo}")
        saved = state["config"]
        for key in ("steps", "lr", "grad_accum", "warmup_steps", "seed"):
            if saved.get(key) != getattr(self.config, key):
                raise TrainError(f"checkpoint {path} was made with {key}={saved.get(key)!r} but this run has "
                                 f"{key}={getattr(self.config, key)!r}; use the same settings or a new out_dir")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise TrainError(f"checkpoint {path} does not fit this model ({str(e).splitlines()[0][:200]}); "
                             f"{redo}") from None
        _set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.best = state.get("best")

    def _require_out(self) -> Path:
        if self.out_dir is None:
            raise TrainError("TrainConfig.out_dir is not set: checkpoints need a folder")
        return self.out_dir

    def _log(self, record: dict[str, Any]) -> None:
        if self.out_dir is not None and self.master:
            with open(self.out_dir / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _trim_metrics(self) -> None:
        """After a resume, drop records logged after the checkpoint (they will be logged again)."""
        path = self.out_dir / METRICS if self.out_dir else None
        if path is None or not path.is_file():
            return
        keep = [ln for ln in path.read_text().splitlines() if _logged_step(ln) <= self.step]
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))

    # ---------------------------------------------------------------------------------------- training
    def train(self, resume: bool = True) -> dict[str, float]:
        """Run to ``config.steps`` (continuing from ``out_dir/last.pt`` if ``resume``); return the last logs."""
        c = self.config
        ckpt = self.out_dir / CHECKPOINT if self.out_dir is not None else None
        if ckpt is not None and resume and ckpt.is_file():
            self.load_checkpoint(ckpt)
        elif self.step == 0:
            torch.manual_seed(c.seed)
            random.seed(c.seed)
        if self.out_dir is not None and self.master:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._trim_metrics()
        batches: Iterator[Batch] = iter(self.data(self.step * c.grad_accum))
        self.model.train()
        logs: dict[str, float] = {}
        t0, self._samples_seen = time.time(), 0
        with progress_bar(self.progress and self.master, info=True) as bar:
            task = bar.add_task("train", total=c.steps, completed=self.step, info="")
            while self.step < c.steps:
                logs = self._train_step(batches)
                self.step += 1
                if self.step % c.log_every == 0 or self.step == c.steps:
                    logs.update(step=self.step,
                                samples_per_s=self._samples_seen / max(1e-9, time.time() - t0))
                    self._log(logs)
                if c.eval_every and self.eval_fn is not None and (self.step % c.eval_every == 0 or self.step == c.steps):
                    logs.update(self._evaluate())
                if self.out_dir is not None and (self.step % c.checkpoint_every == 0 or self.step == c.steps):
                    if self.master:
                        self.save_checkpoint()
                    D.barrier()
                bar.update(task, completed=self.step,
                           info=f"loss {logs.get('loss', float('nan')):.3f} lr {self.scheduler.get_last_lr()[0]:.2e}")
        self.model.eval()
        D.barrier()  # no rank leaves (and tears the group down) while another still writes its last checkpoint
        return logs

    def _train_step(self, batches: Iterator[Batch]) -> dict[str, float]:
        c = self.config
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for _ in range(c.grad_accum):
            try:
                batch = next(batches)
            except StopIteration:
                raise TrainError(f"the data ran out at step {self.step}; give an endless stream or fewer steps") from None
            if self.world > 1:
                rows = D.shard(len(batch["tokens"]))
                batch = {k: v[rows] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            with self._autocast():
                student = _gathered(self.forward(self.model, batch))
                teacher = None
                if self.teacher is not None:
                    with torch.no_grad():
                        teacher = _gathered(self.forward(self.teacher, batch))
                loss, parts = self.loss(student, batch, teacher)
            (loss / c.grad_accum).backward()
            self._samples_seen += len(batch["tokens"]) * self.world
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v / c.grad_accum
        sums["lr"] = self.optimizer.param_groups[0]["lr"]  # the rate this step used
        D.average_gradients([p for p in self.model.parameters() if p.requires_grad])
        if c.grad_clip is not None:
            sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        scale = getattr(self.model, "logit_scale", None)
        if scale is not None:
            with torch.no_grad():
                scale.clamp_(0, math.log(c.max_logit_scale))
            sums["temperature"] = float(1 / scale.detach().exp())
        return sums

    def _autocast(self):
        import contextlib

        if self.config.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _evaluate(self) -> dict[str, float]:
        """Evaluate on rank 0 (others wait); keep the best weights by ``config.best_metric``."""
        result: dict[str, float] = {}
        if self.master:
            self.model.eval()
            try:
                result = {f"eval_{k}": float(v) for k, v in self.eval_fn(self.model).items()
                          if isinstance(v, (int, float))}
            finally:
                self.model.train()
            self._log({"step": self.step, **result})
            key = f"eval_{self.config.best_metric}" if self.config.best_metric else None
            if key in result and (self.best is None or result[key] > self.best):
                self.best = result[key]
                if self.out_dir is not None and hasattr(self.model, "config"):
                    from ..models.io import save_model

                    save_model(self.model, self.out_dir / BEST)
        D.barrier()
        return result


def _logged_step(line: str) -> float:
    """Step of a metrics.jsonl line; a line cut short by a kill counts as past any checkpoint (dropped)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def _gathered(out: Outputs) -> Outputs:
    """The global batch's embeddings on every rank (a no-op in one process); hidden states stay local."""
    if D.rank_world()[1] == 1:
        return out
    return Outputs(image=D.all_gather_with_grad(out.image), text=D.all_gather_with_grad(out.text),
                   logit_scale=out.logit_scale, extra=out.extra)


def pil_batches(pairs: Callable[[int], Iterator[tuple[Any, str]]], preprocess: Callable, tokenizer: Callable,
                batch_size: int) -> DataFn:
    """Turn ``start_sample -> iterator of (PIL image, caption)`` into the trainer's ``start_batch -> batches``."""
    if batch_size < 2:
        raise TrainError(f"contrastive training needs batch_size >= 2, got {batch_size}")

    def data(start: int) -> Iterator[Batch]:
        it = pairs(start * batch_size)
        while True:
            chunk = [next(it) for _ in range(batch_size)]
            yield {"images": torch.stack([preprocess(im) for im, _ in chunk]),
                   "tokens": tokenizer([t for _, t in chunk])}

    return data


def synthetic_batches(model: nn.Module, batch_size: int, seed: int = 0) -> DataFn:
    """The synthetic training stream (:mod:`mope_deploy.data.synthetic`) as batches for ``model``."""
    from ..data.synthetic import stream

    size = model.config.vision.image_size
    return pil_batches(lambda start: stream(seed, start=start, size=size), model.preprocess, model.tokenizer,
                       batch_size)

"""Train the embedded demo teacher on the synthetic scenes and save it to ``mope_deploy/assets/demo``.

A tool, not part of the library (it uses the trainer, pruning and evaluation, which the data stage must not
import): it lives beside the other scripts that produced a shipped measurement.

    python benchmarks/train_demo.py                  # the shipped teacher (about 25 min on 2 CPU cores)
    python benchmarks/train_demo.py --steps 20 --out /tmp/demo   # a quick smoke run
    python benchmarks/train_demo.py --measure-only --flickr /work/shared/data/flickr8k-500   # + real photos

Training checkpoints go to ``--run-dir`` (default ``runs/demo-teacher``) and an interrupted run resumes
from there. The saved folder gets a README.md with the command and the measured recall.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from mope_deploy.models import CLIPConfig, SlimCLIP, TextConfig, VisionConfig, uniform_blocks
from mope_deploy.models.io import save_model
from mope_deploy.models.registry import DEMO_DIR
from mope_deploy.vocab import TOWERS

BPE_FILE = "bpe_10k.txt.gz"           # the first 10,000 merges of open_clip's BPE vocabulary
VOCAB_SIZE = 512 + 10_000 + 2         # byte tokens (x2 with </w>) + merges + <start_of_text>, <end_of_text>


def demo_config() -> CLIPConfig:
    """The demo teacher's architecture: ViT 6x(4 heads x 32, FFN 512) width 128 at 64 px / patch 16; text 4 blocks."""
    ctx = 32
    vision = VisionConfig(width=128, head_dim=32, blocks=uniform_blocks(6, 4, 512), image_size=64, patch_size=16)
    text = TextConfig(width=128, head_dim=32, blocks=uniform_blocks(4, 4, 512), context_length=ctx,
                      vocab_size=VOCAB_SIZE, eos_id=VOCAB_SIZE - 1)
    return CLIPConfig(
        embed_dim=128, vision=vision, text=text,
        preprocess={"size": 64, "mean": [0.48145466, 0.4578275, 0.40821073],
                    "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic", "resize_mode": "shortest"},
        tokenizer={"type": "bpe", "bpe_file": BPE_FILE, "context_length": ctx},
        provenance={"source": "benchmarks/train_demo.py", "data": "synthetic"},
    ).validate()


def magnitude_student(model: SlimCLIP, keep: float = 0.5) -> SlimCLIP:
    """``model`` made ``1/keep``-times narrower without retraining: in every block the heads and FFN neurons
    with the largest weight magnitude (L1) are kept. The check that the demo task is hard enough."""
    from mope_deploy.importance.baselines import magnitude_scores
    from mope_deploy.pruning.apply import apply_plan
    from mope_deploy.pruning.plan import PruningPlan, TowerPlan

    def top(scores: list[float]) -> list[int]:
        k = max(1, round(len(scores) * keep))
        return sorted(sorted(range(len(scores)), key=lambda i: -scores[i])[:k])

    towers = {}
    for tower in TOWERS:
        sc = magnitude_scores(model, tower)
        towers[tower] = TowerPlan(blocks=list(range(len(sc["head"]))), heads=[top(h) for h in sc["head"]],
                                  neurons=[top(n) for n in sc["neuron"]])
    plan = PruningPlan(teacher_arch_hash=model.config.arch_hash(), info={"method": "magnitude", "keep": keep},
                       **towers)
    return apply_plan(model, plan).eval()


def measure(model: SlimCLIP, flickr: Path | None = None) -> dict:
    """Recall of ``model`` and of its 2x-narrower magnitude student on the synthetic val/test splits (and on
    flickr8k-500 when given)."""
    from mope_deploy.eval.retrieval import evaluate
    from mope_deploy.data.datasets import load_dataset, load_synthetic

    student = magnitude_student(model)
    out: dict = {"teacher": {}, "student_2x_magnitude": {}}
    for split in ("val", "test"):
        ds = load_synthetic(split)
        out["teacher"][f"synthetic:{split}"] = evaluate(model, ds, progress=False)
        out["student_2x_magnitude"][f"synthetic:{split}"] = evaluate(student, ds, progress=False)
    if flickr is not None and flickr.is_dir():
        out["teacher"]["flickr8k-500"] = evaluate(model, load_dataset(flickr), progress=False)
    return out


def main(argv: list[str] | None = None) -> dict:
    from mope_deploy.distill.trainer import TrainConfig, Trainer, synthetic_batches
    from mope_deploy.eval.retrieval import evaluate
    from mope_deploy.models.registry import load

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    # One thread: on a shared machine, extra threads wait on each other (10x slower measured under load).
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=200, help="recall on 100 val images every N steps")
    ap.add_argument("--run-dir", default="runs/demo-teacher")
    ap.add_argument("--out", default=str(DEMO_DIR))
    ap.add_argument("--flickr", default=None, help="a Flickr-style captions folder for a real-photo check "
                    "(skipped when not given)")
    ap.add_argument("--measure-only", action="store_true", help="only re-measure the model saved in --out")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    flickr = Path(args.flickr) if args.flickr else None

    if args.measure_only:
        results = measure(load(args.out), flickr)
        print(json.dumps(_table(results), indent=2))
        return results

    torch.manual_seed(args.seed)
    model = SlimCLIP(demo_config())
    cfg = TrainConfig(steps=args.steps, lr=args.lr, warmup_steps=args.warmup, weight_decay=0.1, seed=args.seed,
                      log_every=10, checkpoint_every=100, eval_every=args.eval_every, out_dir=args.run_dir)
    val = load_synthetic("val", n_images=100)
    t0 = time.time()
    logs = Trainer(model, cfg, synthetic_batches(model, args.batch_size, seed=args.seed),
                   eval_fn=lambda m: evaluate(m, val, progress=False)).train()
    minutes = (time.time() - t0) / 60
    results = measure(model, flickr)
    command = "python benchmarks/train_demo.py " + " ".join(argv if argv is not None else sys.argv[1:])
    model.config.provenance.update(command=command.strip(), steps=args.steps, batch_size=args.batch_size,
                                   final_loss=round(logs.get("loss", float("nan")), 4))
    readme = _readme(command.strip(), results, minutes)
    save_model(model, args.out, extra_files={"README.md": readme, "metrics.json": json.dumps(results, indent=2)})
    print(readme)
    return results


def _table(results: dict) -> dict:
    keys = ("tr1", "tr5", "tr10", "ir1", "ir5", "ir10", "recall_mean")
    return {who: {data: {k: round(r[k], 1) for k in keys} for data, r in by.items()} for who, by in results.items()}


def _readme(command: str, results: dict, minutes: float) -> str:
    keys = ("tr1", "tr5", "tr10", "ir1", "ir5", "ir10", "recall_mean")
    names = {"teacher": "demo teacher", "student_2x_magnitude": "2x-narrower magnitude student, no retraining"}
    rows = "\n".join(
        f"| {names[who]} | {data} | {r['n_images']} | {r['n_captions']} | " + " | ".join(f"{r[k]:.1f}" for k in keys) + " |"
        for who, by in results.items() for data, r in by.items())
    return f"""# The demo teacher

A small CLIP trained from scratch by mope-deploy's own contrastive loop on the synthetic scenes
(`mope_deploy.data.synthetic`). Addressed as `demo`: `mope eval demo --data synthetic`,
`mope_deploy.load("demo")`.

- Vision: ViT, 6 blocks x 4 heads x 32 (width 128, FFN 512), 64 px images, patch 16 (17 tokens).
- Text: 4 blocks x 4 heads x 32 (width 128, FFN 512), context 32, BPE vocabulary of {VOCAB_SIZE} tokens
  (`mope_deploy/assets/{BPE_FILE}`: the first 10,000 merges of open_clip's vocabulary).
- Embedding 128. Trained in {minutes:.0f} min on one {platform.machine()} CPU thread (a shared machine).

Reproduce (from the repository root; deterministic given the seed, one thread and the same library versions):

```
{command}
```

Re-measure the shipped model: `python benchmarks/train_demo.py --measure-only`.

Retrieval (percent). The synthetic val/test images all contain a colour-shape pair never seen in training and
come in families of 4 minimal pairs; chance R@1 is 0.2% on test (500 images), 0.4% on val (250).
The student keeps, in every block, the 2 of 4 heads and 256 of 512 FFN neurons with the largest weights.

| model | data | images | captions | TR@1 | TR@5 | TR@10 | IR@1 | IR@5 | IR@10 | Recall Mean |
|---|---|---|---|---|---|---|---|---|---|---|
{rows}
"""


if __name__ == "__main__":
    main()

"""Sharded scoring under torchrun (2 CPU processes, gloo) gives the single-process table exactly."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import torch

from mope_deploy.importance import ScoreTable, score
from mope_deploy.models import SlimCLIP
from mope_deploy.models.tiny import tiny_config

HERE = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent("""
    import json, sys, torch
    sys.path.insert(0, {here!r})
    from test_importance import make_inputs
    from mope_deploy import distributed as D
    from mope_deploy.importance import score
    from mope_deploy.models import SlimCLIP
    from mope_deploy.models.tiny import tiny_config

    torch.set_num_threads(1)
    rank, world = D.init_from_env()
    torch.manual_seed(0)
    model = SlimCLIP(tiny_config(depth=3)).eval()
    images, tokens, t2i = make_inputs()
    seen = []
    table = score(model, images, tokens, t2i, n_groups=4, batch_size=8, probe_batch=3,
                  progress=lambda done, total: seen.append((done, total)))
    shares = D.gather_objects(seen[-1][1] if seen else 0)
    if rank == 0:
        table.meta["shares"] = shares
        table.save(sys.argv[1])
    D.destroy()
""")


def test_two_ranks_give_the_single_process_table(tmp_path, torchrun):
    out = tmp_path / "scores.json"
    torchrun(SCRIPT.format(here=str(HERE)), str(out))
    dist_table = ScoreTable.load(out)

    torch.manual_seed(0)
    model = SlimCLIP(tiny_config(depth=3)).eval()
    sys.path.insert(0, str(HERE))
    from test_importance import make_inputs

    images, tokens, t2i = make_inputs()
    single = score(model, images, tokens, t2i, n_groups=4, batch_size=8, probe_batch=3)
    assert dist_table.towers == single.towers
    assert dist_table.full_metric == single.full_metric
    assert dist_table.model_hash == single.model_hash
    assert dist_table.meta["world_size"] == 2
    # both ranks did part of the work, and together all of it
    shares = dist_table.meta["shares"]
    assert len(shares) == 2 and all(s > 0 for s in shares) and sum(shares) == single.meta["probes"]
    assert dist_table.meta["probes"] == single.meta["probes"]
    json.loads(out.read_text())  # plain JSON

"""ECoFLaP's scores under torchrun (2 CPU processes, gloo) equal the single-process scores."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mope_deploy.models import SlimCLIP
from mope_deploy.models.tiny import tiny_config
from mope_deploy.sparsity import first_order_scores, zeroth_order_scores

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sparsity_helpers import make_calib  # noqa: E402

HERE = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent("""
    import json, sys, torch
    sys.path.insert(0, {here!r})
    from sparsity_helpers import make_calib
    from mope_deploy import distributed as D
    from mope_deploy.models import SlimCLIP
    from mope_deploy.models.tiny import tiny_config
    from mope_deploy.sparsity import first_order_scores, zeroth_order_scores

    torch.set_num_threads(1)
    rank, world = D.init_from_env()
    torch.manual_seed(0)
    model = SlimCLIP(tiny_config()).eval()
    calib = make_calib(n=20)
    done = []
    z = zeroth_order_scores(model, calib, batch_size=4, seed=2, advance=done.append)
    f = first_order_scores(model, calib, batch_size=4)
    shares = D.gather_objects(len(done))
    if rank == 0:
        json.dump({{"z": {{"|".join(map(str, k)): v for k, v in z.items()}},
                   "f": {{"|".join(map(str, k)): v for k, v in f.items()}}, "shares": shares}}, open(sys.argv[1], "w"))
    D.destroy()
""")


@pytest.mark.slow
def test_two_ranks_give_the_single_process_scores(tmp_path, torchrun):
    out = tmp_path / "scores.json"
    torchrun(SCRIPT.format(here=str(HERE)), str(out))
    got = json.loads(out.read_text())
    torch.manual_seed(0)
    model = SlimCLIP(tiny_config()).eval()
    calib = make_calib(n=20)
    z = zeroth_order_scores(model, calib, batch_size=4, seed=2)
    f = first_order_scores(model, calib, batch_size=4)
    assert got["shares"] == [3, 2]  # 5 batches dealt out to 2 ranks
    for name, ref in (("z", z), ("f", f)):
        assert set(got[name]) == {"|".join(map(str, k)) for k in ref}
        for k, v in ref.items():
            assert got[name]["|".join(map(str, k))] == pytest.approx(v, rel=1e-5)

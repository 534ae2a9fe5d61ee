"""Weight sparsity for SlimCLIP (teacher or MoPE-pruned student): magnitude, Wanda, SparseGPT and ECoFLaP
(unstructured and n:m), and SparseLoRA recovery through the project trainer.

    from mope_deploy.sparsity import SparsifySpec, sparsify, calibration_from_dataset
    calib = calibration_from_dataset(model, dataset, n_samples=128)
    report = sparsify(model, SparsifySpec(method="sparsegpt", pattern="2:4"), calib)
    result = run(SparsifyJob(model="demo", spec=..., data="synthetic", recover=RecoverSpec(), out=Path("D")))

A sparse model is a normal model directory: the zeros are in the weights (the mask is ``weight != 0``) and
``config.sparsity`` records the method, pattern and per-block ratios. Unstructured and 2:4 sparsity do not
make dense CPU kernels faster; 2:4 pays off with TensorRT's sparse-weights flag on sparse-tensor-core GPUs.
"""

from .calibration import Calibration, blockwise, calibration_from_dataset
from .ecoflap import allocate_keep, allocate_nm, block_scores, first_order_scores, uniform_nm, zeroth_order_scores
from .layers import LINEARS, TOWERS, block_linears, masks_of, prunable, sparsity_report, weight_name
from .patterns import Pattern, SparsityError, detect_pattern, is_nm, layer_mask, nm_mask, parse_pattern, row_mask
from .prune import METHODS, SparsifySpec, sparsify
from .sparsegpt import sparsegpt_prune
from .sparselora import RecoverSpec, SparseLoRALinear, SparseLoRALoss, attach, dense_path, merge, recover
from .job import SparsifyJob, SparsifyResult, run

__all__ = [
    "Calibration", "blockwise", "calibration_from_dataset", "allocate_keep", "allocate_nm", "block_scores",
    "first_order_scores", "uniform_nm", "zeroth_order_scores", "LINEARS", "TOWERS", "block_linears", "masks_of", "prunable",
    "sparsity_report", "weight_name", "Pattern", "SparsityError", "detect_pattern", "is_nm", "layer_mask",
    "nm_mask", "parse_pattern", "row_mask", "METHODS", "SparsifySpec", "sparsify", "sparsegpt_prune", "RecoverSpec",
    "SparseLoRALinear", "SparseLoRALoss", "attach", "dense_path", "merge", "recover", "SparsifyJob",
    "SparsifyResult", "run",
]

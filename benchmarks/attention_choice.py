"""One-off measurement behind SlimCLIP's attention implementation: SDPA vs explicit matmuls.

Run: .venv/bin/python benchmarks/attention_choice.py  (parity vs open_clip and latency, side by side)
"""

import logging
import time

import open_clip
import torch

from mope_deploy import from_open_clip
from mope_deploy.models import slim_clip

logging.disable(logging.WARNING)


def explicit(self, x, attn_mask=None, head_mask=None):
    B, N, _ = x.shape
    q, k, v = self.qkv(x).view(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    a = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)
    if attn_mask is not None:
        a = a + attn_mask
    o = a.softmax(-1) @ v
    return self.out_proj(o.transpose(1, 2).reshape(B, N, self.heads * self.head_dim))


def main(name="ViT-B-16", batch=8, iters=5):
    torch.manual_seed(0)
    ref = open_clip.create_model(name).eval()
    model = from_open_clip(ref, name=name)
    x, t = torch.randn(batch, 3, 224, 224), torch.randint(1, 49407, (batch, 77))
    with torch.no_grad():
        want_i, want_t = ref.encode_image(x), ref.encode_text(t)
    sdpa = slim_clip.Attention.forward
    for label, fwd in (("sdpa", sdpa), ("explicit", explicit)):
        slim_clip.Attention.forward = fwd
        with torch.inference_mode():
            di = (model.encode_image(x) - want_i).abs().max().item()
            dt = (model.encode_text(t) - want_t).abs().max().item()
            model.encode_image(x)
            times = []
            for _ in range(iters):
                t0 = time.perf_counter()
                model.encode_image(x)
                model.encode_text(t)
                times.append(time.perf_counter() - t0)
        print(f"{label:9s} parity image {di:.2e} text {dt:.2e}  median {sorted(times)[iters // 2] * 1e3:.1f} ms")
    slim_clip.Attention.forward = sdpa


if __name__ == "__main__":
    main()

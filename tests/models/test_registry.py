"""Loading by name: open_clip names, NAME:PRETRAINED, local open_clip checkpoints, model dirs."""

from __future__ import annotations

import open_clip
import pytest
import torch

from mope_deploy.models import ModelNotFoundError, load, load_teacher
from mope_deploy.models.registry import split_spec


def test_local_open_clip_checkpoint(tmp_path):
    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-32").eval()
    ckpt = tmp_path / "epoch_1.pt"
    # open_clip's training checkpoint layout: {"epoch", "state_dict" with "module." prefixes}
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, ckpt)
    teacher = load_teacher("ViT-B-32", pretrained=str(ckpt))
    assert torch.equal(teacher.visual.proj, ref.visual.proj)
    slim = load("ViT-B-32", pretrained=str(ckpt))
    assert slim.config.provenance["pretrained"] == str(ckpt)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (slim.encode_image(x) - ref.encode_image(x)).abs().max() < 1e-5
    assert load(f"ViT-B-32:{ckpt}").config.provenance["pretrained"] == str(ckpt)


def test_spec_forms_and_errors(tmp_path):
    assert split_spec("ViT-L-14:openai") == ("ViT-L-14", "openai")
    assert split_spec("runs/x:y") == ("runs/x:y", None)
    with pytest.raises(ModelNotFoundError, match="not found.*demo.*open_clip"):
        load("no-such-model")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_teacher("ViT-B-32", pretrained=str(tmp_path / "missing.pt"))


def test_tokenizer_and_preprocess_travel_with_the_model(tiny_model):
    tok = tiny_model.tokenizer(["a red square", "two blue circles"])
    assert tok.shape == (2, tiny_model.config.text.context_length) and tok.dtype == torch.long
    from PIL import Image
    img = tiny_model.preprocess(Image.new("RGB", (50, 40), (255, 0, 0)))
    assert img.shape == (3, 32, 32)
    assert tiny_model.encode_text(tok).shape == (2, 32)

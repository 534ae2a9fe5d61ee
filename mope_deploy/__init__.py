"""mope-deploy: compress CLIP with MoPE-CLIP and deploy the result.

    import mope_deploy as md
    teacher = md.load("demo")                      # or "ViT-L-14:openai", or a saved directory
    print(md.model_stats(teacher.config)["params"])
    md.save_model(teacher, "out/teacher")          # config.json + model.safetensors
"""

from .models import (CLIPConfig, Masks, SlimCLIP, from_open_clip, load, load_config, load_model, load_teacher,
                     model_stats, save_model)

__version__ = "0.1.0"
__all__ = ["CLIPConfig", "Masks", "SlimCLIP", "from_open_clip", "load", "load_config", "load_model",
           "load_teacher", "model_stats", "save_model", "__version__"]

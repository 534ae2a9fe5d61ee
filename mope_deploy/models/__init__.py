"""Models: configs, SlimCLIP, open_clip conversion, model files, counting, and the name registry."""

from .config import BlockConfig, CLIPConfig, ConfigError, TextConfig, TowerConfig, VisionConfig, uniform_blocks
from .convert import UnsupportedModelError, from_open_clip
from .counting import model_stats, tower_stats
from .io import ModelFileError, load_model, save_model
from .registry import ModelNotFoundError, load, load_config, load_teacher
from .slim_clip import Masks, SlimCLIP

__all__ = [
    "BlockConfig", "CLIPConfig", "ConfigError", "TextConfig", "TowerConfig", "VisionConfig", "uniform_blocks",
    "UnsupportedModelError", "from_open_clip", "model_stats", "tower_stats", "ModelFileError", "load_model",
    "save_model", "ModelNotFoundError", "load", "load_config", "load_teacher", "Masks", "SlimCLIP",
]

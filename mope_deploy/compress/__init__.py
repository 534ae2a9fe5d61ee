"""``mope compress``: a recipe (validated YAML) driven end to end - data, importance scores, pruning plan,
distillation, report - resumable stage by stage. Orchestration only: each stage's work lives in its own
package (data, importance, pruning, distill, eval).

    from mope_deploy.compress import load_recipe, compress
    report = compress(load_recipe("demo"), "runs/demo")
"""

from .pipeline import CompressError, Pipeline, compress, pretraining_plan, recipe_target
from .recipe import Recipe, RecipeError, load_recipe, parse_recipe, recipe_names

__all__ = ["CompressError", "Pipeline", "compress", "pretraining_plan", "recipe_target", "Recipe",
           "RecipeError", "load_recipe", "parse_recipe", "recipe_names"]

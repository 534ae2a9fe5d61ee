"""distill stage: training losses (:mod:`.losses`), knowledge distillation (:mod:`.kd`) and the one training
loop (:mod:`.trainer`). Recipes and the compress pipeline live in :mod:`mope_deploy.compress`."""

"""Training: recipes, the loop, optimizers and schedules, distillation, checkpoints, evaluation."""
from .checkpoint import load_model
from .distill import LogitsKD, Teacher, kl_div, soft_cross_entropy
from .evaluate import confusion_text, evaluate
from .loop import TrainingDiverged, train
from .optim import build_optimizer, lr_at, param_groups
from .recipe import DEFAULTS, apply_overrides, list_recipes, load_recipe

__all__ = ["DEFAULTS", "LogitsKD", "Teacher", "TrainingDiverged", "apply_overrides", "build_optimizer",
           "confusion_text", "evaluate", "kl_div", "list_recipes", "load_model", "load_recipe", "lr_at",
           "param_groups", "soft_cross_entropy", "train"]

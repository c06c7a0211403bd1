"""Training of the tiny shapes models (VQVAE tokenizer, VAR, classifier) with optax under jit."""

from arvg_jax.families.var.train._tiny import (
    TinyRecipe,
    reevaluate_tiny,
    train_tiny,
)
from arvg_jax.families.var.train._var import (
    init_var_params,
    init_var_state,
    var_eval_loss,
    var_inputs,
    var_loss,
    var_train_step,
)
from arvg_jax.families.var.train._vqvae import (
    VQLossConfig,
    decode_unclamped,
    init_vqvae_state,
    quantize_multiscale,
    reconstruct,
    tokenize,
    vqvae_loss,
    vqvae_train_step,
)
from arvg_jax.train._classifier import classifier_train_step, init_classifier_state
from arvg_jax.train._common import StageHParams, lr_schedule, make_optimizer
from arvg_jax.train.evaluation import evaluate_generation

__all__ = [
    "StageHParams",
    "TinyRecipe",
    "VQLossConfig",
    "classifier_train_step",
    "decode_unclamped",
    "evaluate_generation",
    "init_classifier_state",
    "init_var_params",
    "init_var_state",
    "init_vqvae_state",
    "lr_schedule",
    "make_optimizer",
    "quantize_multiscale",
    "reconstruct",
    "reevaluate_tiny",
    "tokenize",
    "train_tiny",
    "var_eval_loss",
    "var_inputs",
    "var_loss",
    "var_train_step",
    "vqvae_loss",
    "vqvae_train_step",
]

"""The ADM evaluator (openai/guided-diffusion evaluations/evaluator.py) in JAX: Inception-v3
features, FID / sFID, Inception Score and improved precision / recall."""

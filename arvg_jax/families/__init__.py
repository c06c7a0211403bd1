"""Model families (one sub-package each: config, model, sampler, reference check)."""

"""Model families (one subpackage each): config, model, sampler, reference check."""

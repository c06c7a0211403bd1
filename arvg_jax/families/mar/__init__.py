"""MAR (LTH14/mar): masked AR with continuous tokens and a diffusion head.

Modules: `config` (MARConfig), `model` (encoder-decoder), `diffloss` (head, schedule, p_sample
loop), `sampler` (sample_tokens), `reference` (fixture check).
"""

# Not registered yet: the registry entry comes with its Family class.
FAMILY = None

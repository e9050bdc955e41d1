"""rzero-jax: R-Zero in JAX. Device code: models, sampling, rl. Host code: grading, rzero, evaluation."""

"""Benchmark evaluation: loaders (one adapter per public schema), answers (boxed answer ->
verdict), scoring (accuracy, 95% CI, the paper's aggregates, tables), checkpoints (any
checkpoint -> cfg, params, tokenizer) and runner (generation, outputs, comparisons).
`launch/evaluate.py` is the command line."""

"""Evaluation of a (pruned) model: perplexity over fixed windows and zero-shot tasks through
lm-evaluation-harness on packaged data."""

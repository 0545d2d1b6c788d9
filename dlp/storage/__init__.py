"""Models, checkpoints and files: loading a model, the embedded model and pinned assets, exported folders and
archives, the hub, caches, locks and atomic writes."""

"""Text corpora (with provenance) and the papers' calibration sampling."""

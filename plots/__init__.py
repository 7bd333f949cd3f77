"""Pictures of recorded runs: attention heatmaps and the logit lens."""

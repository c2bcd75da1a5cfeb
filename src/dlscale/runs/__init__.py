"""What a run leaves on disk: its directory (directory, claim), atomic files (files), the
metrics log (metrics_log), every JSON result by kind (results) and checkpoints
(checkpoint, safe_load)."""

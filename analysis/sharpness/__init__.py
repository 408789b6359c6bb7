"""Loss-landscape sharpness of a sweep's checkpoints: `python -m analysis.sharpness results_dir=DIR sweep=NAME`."""

"""Loss-landscape sharpness of a sweep's checkpoints: `python -m analysis.sharpness results_dir=DIR sweep=NAME`.

The measurement primitives (λmax, tr(H), adaptive sharpness, 1D/2D curves, interpolation) are model-agnostic and live
in :mod:`analysis.landscape`. This package applies them to the QA checkpoints of a sweep, one module per job:

    options   the CLI keys (SharpnessConfig), parse_args, help_text, SharpnessError, the rho and alpha grids
    plan      the completed runs of a sweep (find_runs), what each one gets (plan_runs) and the cost model
    qa        checkpoints, the fixed data subsets and the measurements of one model
    measure   the measurement loop over a sweep (measure_sweep)
    tables    per-arm summaries, paired differences, Kendall's tau against the generalisation gap
    figures   the five figures
    section   sharpness.md, the report's section
    outputs   the csv files, and write_outputs for everything
    cli       main
"""

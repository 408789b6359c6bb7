"""`main` of `python -m analysis.sharpness` (the Makefile's sharpness and report targets call it)."""

#     python -m analysis.sharpness results_dir=DIR sweep=NAME [key=value ...]      (`help` lists the keys)
#
# measures every completed run of DIR/runs/NAME/ on one fixed, seeded data subset (analysis.sharpness.qa: data,
# checkpoints, the measurements of one model) and writes into `out` (default experiments.rundir.report_dir:
# DIR/report/ for the default sweep, DIR/report-NAME/ for any other):
#
#     sharpness.csv           one row per run: run_id, arm, k, seed, every measure, pass counts
#     sharpness_curves.csv    the 1D curves, 2D surfaces and interpolation curves behind the figures (long format)
#     sharpness_timing.csv    wall time and passes per model and per interpolation pair (the only clock-dependent file)
#     figures/sharpness_*.png λmax / trace per arm × k, adaptive sharpness against ρ, 1D curves, 2D contours,
#                             interpolation curves
#     sharpness.md            the report's section (analysis.report includes it)
#
# It never writes into a run directory. Bad arguments and a sweep without completed runs are one-line errors, exit 2.

import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from analysis.sharpness.options import SharpnessError, help_text, parse_args
from experiments.allocator import keep_large_blocks_on_heap
from experiments.rundir import report_dir


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(help_text())
        return 0
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")  # checkpoints and data are local: a hub look-up would only hang
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    keep_large_blocks_on_heap()  # the gradients of the HVPs and ascent steps, as in training (spawned workers inherit
    # the environment, not mallopt: _init_worker applies it again)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        opts = parse_args(argv)
        # Imported here, not at the top: huggingface_hub and datasets read the *_OFFLINE variables set above when
        # they are first imported (measure and outputs import transformers and datasets through qa), and `help` and
        # argument errors answer without the seconds that torch and transformers take to import.
        from analysis.sharpness.measure import measure_sweep
        from analysis.sharpness.outputs import write_outputs

        result = measure_sweep(opts)
        if result.get("dry_run"):
            return 0
        t0 = time.perf_counter()
        out_dir = Path(opts.out) if opts.out else report_dir(opts.results_dir, opts.sweep)
        written = write_outputs(result, out_dir)
    except SharpnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    totals, n = result["totals"], len(result["rows"])
    total_s = result["measure_s"] + time.perf_counter() - t0
    print(
        f"total: {n} models + {len(result['interp'])} interpolation pairs, {totals}, "
        f"{total_s:.0f}s wall ({total_s / max(1, n):.1f}s per model; estimated {result['estimate']:.0f}s)"
    )
    for name in ("csv", "md"):
        print(f"wrote {written[name]}")
    print(f"wrote {sum(1 for k in written if k.startswith('figure:'))} figures to {out_dir / 'figures'}")
    return 0

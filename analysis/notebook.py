"""Execute the analysis notebook headless and write a copy with its outputs (`make notebook`).

    python -m analysis.notebook [results_dir=results] [sweep=ablation] [out=<results_dir>/notebooks/<sweep>.ipynb]

The notebook (analysis/notebooks/report.ipynb, stored without outputs) reads the sweep's run directories when they
exist and the report's CSVs otherwise, so this works on a fresh clone with only the committed report. The kernel is
this interpreter (the venv's ipykernel, registered for the run in a temporary JUPYTER_PATH), so nothing has to be
installed for Jupyter beforehand. The executed copy opens in Jupyter, VS Code or any notebook viewer. Exit status 2
with one line for bad arguments or a cell that fails.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from unittest import mock

NOTEBOOK = Path(__file__).resolve().parent / "notebooks" / "report.ipynb"
USAGE = "usage: python -m analysis.notebook [results_dir=results] [sweep=ablation] [out=FILE.ipynb]"
KERNEL = "sam-accum-venv"


def execute(results_dir: str | Path, sweep: str, out: str | Path, timeout: int = 600):
    """Run every cell of the notebook against `results_dir`/`sweep` and write the executed copy to `out`.
    Returns the executed nbformat notebook; raises nbclient's CellExecutionError when a cell fails."""
    import nbformat
    from nbclient import NotebookClient

    results_dir = Path(results_dir).resolve()
    with tempfile.TemporaryDirectory(prefix="sam-nb-") as tmp:
        spec = Path(tmp) / "kernels" / KERNEL
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(
            json.dumps(
                {
                    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    "display_name": KERNEL,
                    "language": "python",
                }
            )
        )
        # the kernel inherits these; the caller's environment is as it was afterwards
        with mock.patch.dict(
            os.environ,
            {
                "JUPYTER_PATH": tmp,
                "SAM_RESULTS_DIR": str(results_dir),
                "SAM_SWEEP": str(sweep),
                "PYDEVD_DISABLE_FILE_VALIDATION": "1",
            },
        ):
            nb = nbformat.read(NOTEBOOK, as_version=4)
            NotebookClient(
                nb, kernel_name=KERNEL, timeout=timeout, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
            ).execute()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    return nb


def main(argv: Sequence[str] | None = None) -> int:
    from nbclient.exceptions import CellExecutionError

    from analysis.report import ReportError, parse_args

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    try:
        args = parse_args(argv, USAGE)  # the report's keys: results_dir, sweep, out (here the executed copy)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args["out"] or Path(args["results_dir"]) / "notebooks" / f"{args['sweep']}.ipynb"
    try:
        execute(args["results_dir"], args["sweep"], out)
    except CellExecutionError as err:
        print(f"error: a notebook cell failed: {str(err).strip().splitlines()[-1][:300]}", file=sys.stderr)
        return 2
    print(f"wrote {out} (executed; open it in Jupyter or VS Code)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

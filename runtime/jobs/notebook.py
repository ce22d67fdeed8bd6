"""Run a notebook as a batch job: `python -m runtime.jobs.notebook IN.ipynb OUT.ipynb [-p NAME VALUE]...`

- The cell tagged `parameters` (papermill's convention) is rewritten: its defaults, then
  assignments of the `-p` values (Python literals where they parse, strings otherwise); it is
  tagged `injected-parameters` too.
- Cells run in a real ipykernel (nbclient) with KERNEL_EXT_NONINTERACTIVE=1, so widgets print
  text; each cell's output is printed as it finishes, which makes it the job's log.
- The executed notebook, outputs included, is written to OUT whether or not a cell failed.
- A failing cell fails the run (exit 1), and `failure.txt` next to OUT names it.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
from typing import Any

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def inject_parameters(nb: Any, params: list[tuple[str, str]]) -> str:
    """Replace the `parameters` cell's code; returns a note for the log."""
    import nbformat
    for name, _ in params:
        if not name.isidentifier():
            raise SystemExit(f"-p {name!r}: a parameter name must be a Python identifier.")
    source = "# Parameters injected by `runtime job submit -p`\n" + "".join(
        f"{name} = {parse_value(value)!r}\n" for name, value in params)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            # The defaults stay, so a parameter left out keeps its value (as with papermill).
            cell.source = cell.source.rstrip() + "\n\n" + source
            cell.metadata["tags"] = [*cell.metadata["tags"], "injected-parameters"]
            return "replaced the cell tagged 'parameters'"
    if not params:
        return ""
    nb.cells.insert(0, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    return "no cell is tagged 'parameters': inserted the values as a new first cell"


def output_text(output: Any) -> str:
    kind = output.get("output_type")
    if kind == "stream":
        return output.get("text", "")
    if kind in ("execute_result", "display_data"):
        data = output.get("data", {})
        text = data.get("text/plain", "")
        return text + ("\n" if text and not text.endswith("\n") else "")
    if kind == "error":
        return ANSI.sub("", "\n".join(output.get("traceback", []))) + "\n"
    return ""


def _open_output(path: str) -> Any:
    """A file this runner writes: as a job's (in RUNTIME_JOB_DIR, in the session directory) it is
    the cluster user's only, 0600; else as open(path, "w") makes it."""
    job_dir = os.environ.get("RUNTIME_JOB_DIR")
    if job_dir and os.path.dirname(os.path.abspath(path)) == os.path.abspath(job_dir):
        from .._core.private_files import open_private
        return open_private(path, "w", encoding="utf-8")
    return open(path, "w", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    p = argparse.ArgumentParser(prog="python -m runtime.jobs.notebook")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    p.add_argument("--timeout", type=float, default=None, help="seconds per cell (default: none)")
    args = p.parse_args(argv)
    os.environ["KERNEL_EXT_NONINTERACTIVE"] = "1"  # the kernel inherits it: widgets print text
    os.environ["JPY_SESSION_NAME"] = os.path.abspath(args.input)  # as Jupyter sets it: cell tags name the notebook
    nb = nbformat.read(args.input, as_version=4)
    note = inject_parameters(nb, [tuple(x) for x in args.parameter])
    if note:
        print(f"[notebook] parameters: {note}", flush=True)
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]

    def on_cell_executed(cell: Any, cell_index: int, execute_reply: Any) -> None:
        n = code_cells.index(cell_index) + 1 if cell_index in code_cells else cell_index
        print(f"[notebook] cell {n} (In[{cell.get('execution_count')}]):", flush=True)
        for out in cell.get("outputs", []):
            sys.stdout.write(output_text(out))
        sys.stdout.flush()

    client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                            resources={"metadata": {"path": os.getcwd()}}, on_cell_executed=on_cell_executed)
    failure_file = os.path.join(os.path.dirname(os.path.abspath(args.output)), "failure.txt")
    try:
        client.execute()
        code = 0
    except CellExecutionError as e:
        index = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"
                      and any(o.get("output_type") == "error" for o in c.get("outputs", []))), None)
        n = code_cells.index(index) + 1 if index in code_cells else "?"
        first = next((line for line in ANSI.sub("", str(e)).splitlines() if line.strip()), "")
        err = next((o for o in nb.cells[index].outputs if o.get("output_type") == "error"), {}) if index is not None else {}
        message = (f"cell {n} (In[{nb.cells[index].get('execution_count') if index is not None else '?'}]) failed: "
                   f"{err.get('ename', 'Error')}: {err.get('evalue', first)}")
        with _open_output(failure_file) as f:
            f.write(message + "\n")
        print(f"[notebook] {message}", flush=True)
        code = 1
    finally:
        with _open_output(args.output) as f:
            nbformat.write(nb, f)
    print(f"[notebook] executed notebook written to {args.output}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

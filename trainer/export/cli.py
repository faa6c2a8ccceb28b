"""``clipa export RUN_DIR --format open_clip --out DIR``: a trained run as a model folder another library loads
(registered in ``trainer.cli.REGISTRARS``; JAX is imported inside the command body only)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from planner.errors import ClipaError

FORMATS = ("open_clip",)


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_cmd(
        run_dir: Annotated[Path, typer.Argument(help="a run directory, its checkpoints folder, or one step")],
        out: Annotated[Path, typer.Option("--out", help="folder to write the model into (created)")],
        fmt: Annotated[str, typer.Option("--format", help="target format: open_clip")] = "open_clip",
        image_res: Annotated[Optional[int], typer.Option(
            "--image-res", help="export resolution (learned position embeddings are resampled); default: the "
                                "checkpoint's")] = None,
        json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    ) -> None:
        """Export the latest finished checkpoint as an open_clip model folder (config, safetensors weights,
        tokenizer, README with the load snippet). Architectures open_clip cannot compute exactly are refused."""
        if fmt not in FORMATS:
            raise ClipaError("format", f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")
        if out.exists() and not out.is_dir():
            raise ClipaError("out", f"{out} exists and is not a folder")
        from trainer.export.open_clip import export_run

        summary = export_run(run_dir, out, image_res=image_res)
        if json_out:
            sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        else:
            sys.stdout.write(f"exported {summary['variant']} (step {summary['global_step']}, {summary['image_res']} "
                             f"px, {summary['text_len']} text tokens) to {summary['out']}; see its README.md\n")

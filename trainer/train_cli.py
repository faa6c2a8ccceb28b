"""``clipa train`` and ``clipa eval``: the trainer's commands (registered in ``trainer.cli.REGISTRARS``).

* ``clipa train SPEC [--run-dir DIR] [--synthetic]`` runs or resumes a spec (``trainer.loop.train``). The run
  directory defaults to ``runs/<run_id>`` under the project root (``CLIPA_HOME``). Compiled programs are cached in
  ``RUN_DIR/jax_cache`` (unless ``JAX_COMPILATION_CACHE_DIR`` is set), so a resumed run does not compile again.
  At the end it writes ``RUN_DIR/train_summary.json`` (steps, final loss, cost meter) and, with ``eval_data`` in the
  spec, evaluates the final model zero-shot into ``RUN_DIR/eval.json`` (``multihost_eval.evaluate_at_end``: in a
  multi-process run, process 0 evaluates on one of its devices while the others wait for it). File names in the run
  directory are ``trainer.run_layout``'s.
  Exit codes: 0 done; 2 bad input (one line, as every command); 3 non-finite loss/gradient (the last good
  checkpoint is kept); 128 + signal number after SIGTERM/SIGINT (a checkpoint was saved; rerun to resume).
* ``clipa eval CHECKPOINT_OR_RUN_DIR --data DIR`` zero-shot evaluates a checkpoint with
  ``trainer.data.zeroshot`` (the input-pipeline side), giving it the ``trainer.embed`` callables.

JAX is imported inside the command bodies only, so ``clipa plan`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from trainer.run_layout import COMPILE_CACHE_DIR, SPEC_FILE, SUMMARY_FILE, default_run_dir, local_run_dir, run_dir_of

EXIT_NON_FINITE = 3


def _enable_compile_cache(run_dir: Path) -> None:
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return  # JAX reads it itself
    import jax

    jax.config.update("jax_compilation_cache_dir", str(run_dir / COMPILE_CACHE_DIR))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        spec: Annotated[Path, typer.Argument(help="run spec file (YAML or JSON)")],
        run_dir: Annotated[Optional[str], typer.Option("--run-dir", help="checkpoints, metrics and the spec go "
                                                       "here; rerunning with the same directory resumes")] = None,
        synthetic: Annotated[bool, typer.Option("--synthetic", help="train on deterministic synthetic batches "
                                                "(no data needed)")] = False,
        progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show the progress bar")] = True,
        json_out: Annotated[bool, typer.Option("--json", help="print a JSON summary at the end")] = False,
        evaluate: Annotated[bool, typer.Option("--eval/--no-eval", help="zero-shot evaluate at the end when the spec "
                                               "has eval_data (written to RUN_DIR/eval.json)")] = True,
    ) -> None:
        """Train (or resume) a run spec on every device JAX sees: one CPU, a GPU, or a multi-host TPU slice.

        With eval_data in the spec the final model is evaluated zero-shot at the end (by process 0 of a
        multi-host run, into RUN_DIR/eval.json)."""
        from planner.spec import load_spec

        s = load_spec(spec)
        from trainer.mesh import maybe_initialize_distributed

        maybe_initialize_distributed()  # before anything starts a JAX backend
        from trainer.loop import TrainingInterrupted, train

        rd = local_run_dir(run_dir if run_dir is not None else default_run_dir(s))
        _enable_compile_cache(rd)
        from trainer.synthetic import make_synthetic_source
        from trainer.telemetry import NonFiniteError

        try:
            result = train(s, rd, make_synthetic_source if synthetic else None, progress=progress)
        except NonFiniteError as e:
            sys.stderr.write(f"error: {e}\n")
            raise typer.Exit(EXIT_NON_FINITE) from None
        except TrainingInterrupted as e:
            sys.stderr.write(f"{e}\n")
            raise typer.Exit(128 + e.signum) from None
        summary = {
            "run_id": s.run_id,
            "run_dir": str(rd),
            "global_step": result.global_step,
            "final_loss": result.final_loss,
            "cost": result.cost,
        }
        import jax

        if jax.process_index() == 0:  # what the run measured, for those who see only the top-level files (TPU)
            from planner.store import atomic_write_text

            atomic_write_text(rd / SUMMARY_FILE, json.dumps(summary, indent=2, default=float) + "\n")
        if evaluate and s.eval_data:
            from trainer.multihost_eval import SUMMARY_KEYS, EvalFailedElsewhere, evaluate_at_end

            try:  # every process takes part; process 0 evaluates and writes eval.json (multi-host: see its docstring)
                ev = evaluate_at_end(s, rd, result.cfg, result.params)
            except EvalFailedElsewhere as e:
                sys.stderr.write(f"error: {e}\n")
                raise typer.Exit(1) from None
            summary["eval"] = {k: ev[k] for k in SUMMARY_KEYS if k in ev}
            if not json_out and jax.process_index() == 0:
                per = "".join(f", {a} {100 * v:.2f}%" for a, v in (ev.get("attributes") or {}).items())
                sys.stdout.write(f"zero-shot on {s.eval_data}: top-1 {100 * ev['top1']:.2f}%, "
                                 f"top-5 {100 * ev.get('top5', 0.0):.2f}%{per} ({ev.get('n', 0)} samples)\n")
        if json_out:
            sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        else:
            loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
            sys.stdout.write(f"done: run {s.run_id}, {result.global_step} steps, final loss {loss}, "
                             f"${result.cost['usd']:.4f} at {s.hardware}/{s.pricing}; {rd}\n")

    @app.command("eval")
    def eval_cmd(
        checkpoint: Annotated[Path, typer.Argument(help="a run directory, its checkpoints folder, or one step")],
        data: Annotated[Path, typer.Option("--data", help="zero-shot evaluation data (folder or shards)")],
        json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    ) -> None:
        """Zero-shot evaluation of a trained checkpoint (classification from class names and prompt templates)."""
        from trainer.checkpoint import load_trained
        from trainer.data.zeroshot import evaluate
        from trainer.embed import embed_images, embed_texts

        tm = load_trained(checkpoint)
        rd = run_dir_of(checkpoint)
        spec = None
        if rd is not None:
            from planner.spec import load_spec

            spec = load_spec(rd / SPEC_FILE)
        result = evaluate(
            str(data), lambda images: embed_images(tm, images), lambda tokens: embed_texts(tm, tokens),
            image_res=tm.cfg.image_res, text_len=spec.stages[-1].text_len if spec else None,
            tokenizer=spec.tokenizer if spec else None, spec=spec,
        )
        if json_out:
            sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
        else:
            for k, v in result.items():
                sys.stdout.write(f"{k}: {v}\n")

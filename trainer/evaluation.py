"""A run's final zero-shot evaluation, cached in the run folder (``RUN_DIR/eval.json``).

``evaluate_run`` evaluates the run's final model (given, or loaded from its last checkpoint) on the spec's
``eval_data`` at the last stage's resolution and text length, through ``trainer.data.zeroshot.evaluate`` with the
model's batched embedding functions (``trainer.embed``), and writes the result atomically; a later call for the same
run returns the cached result without touching the model. ``trainer.multihost_eval`` runs it at the end of a
multi-host ``clipa train``; ``trainer.closed_loop`` records what it returns.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from planner.spec import RunSpec
from planner.store import atomic_write_text
from trainer.run_layout import EVAL_FILE, read_run_file


def evaluate_run(spec: RunSpec, run_dir: Path, trained: Any | None = None, limit: int | None = None) -> dict[str, Any]:
    """Zero-shot top-1/top-5 (and retrieval) of the run's final model on ``spec.eval_data``; cached in eval.json."""
    # a torn file from an old crash reads as none: evaluate again (writes are atomic now)
    if (cached := read_run_file(run_dir, EVAL_FILE, (spec.run_id, spec.legacy_run_id))) is not None:
        return cached
    from trainer.data.zeroshot import evaluate
    from trainer.embed import embed_images, embed_texts

    if trained is None:
        from trainer.checkpoint import load_trained

        trained = load_trained(run_dir)
    final = spec.stages[-1]
    ev = evaluate(
        spec.eval_data, lambda x: embed_images(trained, x), lambda t: embed_texts(trained, t),
        image_res=final.image_res, text_len=final.text_len, tokenizer=spec.tokenizer, spec=spec, limit=limit,
    )
    ev = {"run_id": spec.run_id, **ev}
    atomic_write_text(run_dir / EVAL_FILE, json.dumps(ev, indent=2, default=float) + "\n")
    return ev


"""``clipa data ...``: generate the synth dataset, train a tokenizer on a dataset's captions, check a dataset.

Registered through ``trainer.cli.REGISTRARS``; command bodies import the data modules lazily so that ``clipa --help``
and the planner's commands stay fast. Bad input raises ``ClipaError`` (one-line error, exit code 2).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

data_app = typer.Typer(
    name="data",
    help="Datasets: generate the synthetic captioned-image set, train a tokenizer, check shards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _err(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


@data_app.command("synth")
def synth_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder (train/, eval/, tokenizer.json, ...)")],
    samples: Annotated[int, typer.Option("--samples", "-n", help="training samples")] = 20_000,
    resolution: Annotated[int, typer.Option("--resolution", "-r", help="image side in pixels")] = 64,
    seed: Annotated[int, typer.Option("--seed", help="random seed (output is byte-identical for a seed)")] = 0,
    eval_samples: Annotated[int, typer.Option("--eval-samples", help="held-out evaluation samples")] = 2_000,
    shard_size: Annotated[int, typer.Option("--shard-size", help="samples per tar shard")] = 1_000,
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="BPE vocabulary size (an upper bound)")] = 1_024,
    workers: Annotated[int, typer.Option("--workers", help="processes drawing shards in parallel")] = 1,
    json_out: Annotated[bool, typer.Option("--json", help="print dataset.json as one JSON object")] = False,
) -> None:
    """Generate the synthetic captioned-image dataset (webdataset shards) with a held-out split, classes,
    prompt templates and a tokenizer trained on its captions."""
    from planner.errors import ClipaError
    from trainer.data.synth import write_synth

    if workers < 1:
        raise ClipaError("workers", "must be at least 1")
    t0 = time.perf_counter()
    info = write_synth(out, samples=samples, resolution=resolution, seed=seed, eval_samples=eval_samples,
                       shard_size=shard_size, vocab_size=vocab_size, workers=workers)
    info["seconds"] = round(time.perf_counter() - t0, 2)
    info["out"] = str(out)
    if json_out:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
    else:
        sys.stdout.write(
            f"wrote {samples} train + {eval_samples} eval samples at {resolution}px to {out} in {info['seconds']} s\n"
            f"  classes: {info['classes']} ({out}/classes.txt), fine classes: {info['classes_fine']}, "
            f"tokenizer: {out}/tokenizer.json (vocab {info['vocab_size']})\n"
        )


TOKENIZER_SAMPLE = 200_000  # captions: enough for an 8k-49k BPE vocabulary, read from the first shards only


@data_app.command("tokenizer")
def tokenizer_cmd(
    data: Annotated[str, typer.Option("--data", "-d", help="dataset: shard folder, brace pattern or bucket URL")],
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="BPE vocabulary size")] = 8_192,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="output file (default: DATA/tokenizer.json)")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="train on the first this many captions (a sample: web-scale data need not be read whole)")] = TOKENIZER_SAMPLE,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Train a CLIP-convention byte-level BPE tokenizer (lower-cased, <pad>=0, start/end at the top ids) on a
    dataset's captions."""
    from planner.errors import ClipaError
    from trainer.data.tokenizer import captions_from_shards, tokenizer_info, train_tokenizer

    if out is None:
        p = Path(data)
        if not p.is_dir():
            raise ClipaError("out", "give --out when --data is not a local folder")
        out = p / "tokenizer.json"
    t0 = time.perf_counter()
    counted = {"n": 0}
    seen: dict[str, int] = {}

    def captions():
        for c in captions_from_shards(data, limit, seen):
            counted["n"] += 1
            yield c

    tok = train_tokenizer(captions(), vocab_size=vocab_size)
    if counted["n"] == 0:
        raise ClipaError("data", f"no captions found in {data}")
    tok.save(out)
    info = tokenizer_info(tok) | {"path": str(out), "captions": counted["n"], "shards_read": seen.get("shards", 0),
                                  "shards": seen.get("of", 0), "seconds": round(time.perf_counter() - t0, 2)}
    if json_out:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
    else:
        sys.stdout.write(f"trained on {info['captions']} captions read from {info['shards_read']} of "
                         f"{info['shards']} shards: {out} (vocab {info['vocab_size']})\n")


@data_app.command("check")
def check_cmd(
    data: Annotated[str, typer.Option("--data", "-d", help="dataset: shard folder, brace pattern or bucket URL")],
    samples: Annotated[int, typer.Option("--samples", "-n", help="samples to read through the pipeline")] = 1_000,
    resolution: Annotated[int, typer.Option("--resolution", "-r", help="image side")] = 64,
    text_len: Annotated[int, typer.Option("--text-len", help="tokens per caption")] = 32,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="tokenizer.json (default: beside data)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Read samples through the training pipeline and report throughput and what was skipped or converted."""
    from trainer.data.pipeline import TrainSource
    from trainer.data.reader import list_shards
    from trainer.data.tokenizer import find_tokenizer, load_tokenizer

    urls = list_shards(data)
    tok = load_tokenizer(find_tokenizer(tokenizer, data))
    batch = min(64, max(1, samples))
    t0 = time.perf_counter()
    with TrainSource(urls, tok, batch, resolution, text_len, "truncate", seed=0, shuffle_buffer=min(1000, samples),
                     ) as src:
        done = 0
        while done < samples:
            src.next_batch()
            done += batch
        stats = src.stats()
    secs = time.perf_counter() - t0
    info = {"shards": len(urls), "samples": done, "seconds": round(secs, 2),
            "samples_per_s": round(done / secs, 1), "stats": stats}
    if json_out:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
    else:
        sys.stdout.write(f"{len(urls)} shards; read {done} samples in {secs:.1f} s ({done / secs:.0f}/s)\n")
        for k, v in sorted(stats.items()):
            if k != "last_problems":
                sys.stdout.write(f"  {k}: {v}\n")
        for msg in stats.get("last_problems", []):
            sys.stdout.write(f"  problem: {msg}\n")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")

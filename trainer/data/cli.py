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
    classes: Annotated[str, typer.Option("--classes", help="zero-shot classes: coarse (64: colour shape) or fine "
                                         "(256: texture colour shape)")] = "coarse",
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
                       shard_size=shard_size, vocab_size=vocab_size, workers=workers, classes=classes)
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
    folder: Annotated[Optional[str], typer.Argument(
        help="dataset folder (train/, eval/, classes.txt, tokenizer.json): print what the pilot will use")] = None,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="dataset: shard folder, brace pattern or bucket URL")] = None,
    samples: Annotated[int, typer.Option("--samples", "-n", help="samples to read through the pipeline")] = 1_000,
    resolution: Annotated[Optional[int], typer.Option("--resolution", "-r", help="image side (default: the folder's native resolution, else 64)")] = None,
    text_len: Annotated[int, typer.Option("--text-len", help="tokens per caption")] = 32,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="tokenizer.json (default: beside data)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """What a local dataset folder holds as the pilot will use it (classes, native resolution, eval size, caption
    lengths; measured once, cached in DIR/profile.json), then samples read through the training pipeline with
    throughput and what was skipped or converted."""
    from planner.errors import ClipaError
    from trainer.data.pipeline import TrainSource
    from trainer.data.reader import list_shards
    from trainer.data.tokenizer import find_tokenizer, load_tokenizer

    if folder is not None and data is not None and folder != data:
        raise ClipaError("data", "give the dataset once: DIR or --data DIR")
    data = folder or data
    if not data:
        raise ClipaError("data", "no dataset given (clipa data check DIR)")
    profile = None
    if Path(data).is_dir() and (Path(data) / "eval").is_dir():  # a dataset folder, not just a shard folder
        profile, note = _profile(Path(data), json_out)
    res = resolution or (profile["resolution"] if profile else 64)
    urls = list_shards(data)
    tok = load_tokenizer(find_tokenizer(tokenizer, data))
    batch = min(64, max(1, samples))
    t0 = time.perf_counter()
    with TrainSource(urls, tok, batch, res, text_len, "truncate", seed=0, shuffle_buffer=min(1000, samples),
                     ) as src:
        done = 0
        while done < samples:
            src.next_batch()
            done += batch
        stats = src.stats()
    secs = time.perf_counter() - t0
    info = {"shards": len(urls), "samples": done, "resolution": res, "seconds": round(secs, 2),
            "samples_per_s": round(done / secs, 1), "stats": stats}
    if profile is not None:
        info = {"profile": profile, "profile_note": note, **info}
    if json_out:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
    else:
        sys.stdout.write(f"{len(urls)} shards; read {done} samples at {res} px in {secs:.1f} s ({done / secs:.0f}/s)\n")
        for k, v in sorted(stats.items()):
            if k != "last_problems":
                sys.stdout.write(f"  {k}: {v}\n")
        for msg in stats.get("last_problems", []):
            sys.stdout.write(f"  problem: {msg}\n")


def _profile(folder: Path, quiet: bool) -> tuple[dict, str | None]:
    """The folder's profile (measured and cached when missing or stale), printed as what the pilot will use."""
    from planner.data_profile import profile_dict
    from planner.search import cpu_space
    from trainer.data.profile import ensure_profile

    prof, note = ensure_profile(folder)
    if not quiet:
        if note:
            _err(note)
        space = cpu_space(prof.resolution)
        cap = prof.caption_tokens
        lines = [
            f"{folder}: what the pilot will use",
            f"  classes: {prof.n_classes} ({prof.sources['n_classes']}): chance {100.0 / prof.n_classes:.2f}%",
            f"  native resolution: {prof.resolution} px ({prof.sources['resolution']}; shorter sides "
            f"{prof.image_sides.min:g}-{prof.image_sides.max:g} px)",
            f"  eval size: {prof.eval_size} images ({prof.sources['eval_size']})",
            (f"  caption tokens (incl. start/end): median {cap.median:g}, mean {cap.mean:.1f}, p10 {cap.p10:g}, "
             f"p90 {cap.p90:g}, max {cap.max:g} ({cap.n} captions)" if cap else
             f"  caption tokens: {prof.sources.get('caption_tokens', 'not measured')}"),
            f"  pilot on a CPU profile: pre-training at {'/'.join(map(str, space.pretrain_res[8]))} px, fine-tunes at "
            f"{space.full_res} px, text {'/'.join(map(str, space.text_lens))} tokens",
        ]
        if cap and cap.p90 < max(space.text_lens):
            lines.append(f"  note: 90% of captions fit in {cap.p90:g} tokens; longer text lengths mostly pad")
        sys.stdout.write("\n".join(lines) + "\n")
    return profile_dict(prof), note


def _measure(folder: Path):
    from trainer.data.profile import ensure_profile

    return ensure_profile(folder)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
    # `clipa plan --data DIR` measures a folder without a profile through this (the planner never imports us)
    from planner.data_profile import set_measurer

    set_measurer(_measure)

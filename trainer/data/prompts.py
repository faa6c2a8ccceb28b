"""Zero-shot prompts: the package's ImageNet-1k class names (OpenAI CLIP's curated names, standard index order) and
80 CLIP prompt templates (``trainer/assets``), and the readers of a dataset's own ``classes.txt``/``templates.txt``.

Read by the evaluation source (``trainer.data.pipeline.EvalSource``, which finds them beside the data) and by the
zero-shot classifier (``trainer.data.zeroshot``); neither owns them, so neither imports the other for them.
"""

from __future__ import annotations

from pathlib import Path

from planner.errors import ClipaError


def _asset_lines(name: str) -> list[str]:
    # located beside the package rather than through importlib.resources: under pytest the top-level name
    # "trainer" can also match tests/trainer, which turns it into a multi-path package that resources rejects
    text = (Path(__file__).resolve().parent.parent / "assets" / name).read_text(encoding="utf-8")
    return [ln.rstrip("\n") for ln in text.splitlines() if ln.strip()]


def imagenet_classnames() -> list[str]:
    """The 1000 ImageNet-1k class names (OpenAI CLIP's), in class-index order."""
    return _asset_lines("imagenet_classes.txt")


def openai_templates() -> list[str]:
    """The 80 CLIP ImageNet prompt templates, each with one ``{}`` for the class name."""
    return _asset_lines("clip_templates.txt")


def _read_text(path: str | Path) -> str:
    """A local file's text, or a bucket object's (``gs://...``, through fsspec)."""
    from trainer.data.reader import open_binary

    with open_binary(str(path).removeprefix("file://")) as f:
        return f.read().decode("utf-8")


def load_classnames(path: str | Path) -> list[str]:
    lines = [ln.strip() for ln in _read_text(path).splitlines()]
    names = [ln for ln in lines if ln]
    if not names:
        raise ClipaError("classes", f"{path} lists no class names")
    return names


def load_templates(path: str | Path) -> list[str]:
    lines = [ln.strip() for ln in _read_text(path).splitlines()]
    templates = [ln for ln in lines if ln]
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise ClipaError("templates", f"{path}: every template needs exactly one '{{}}' (bad: {bad[:2]})")
    return templates

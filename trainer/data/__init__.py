"""The input side of training and evaluation: shard reader, image decode/augment, tokenizer, text token reduction,
the generated ("synth") dataset and zero-shot evaluation.

Modules (all importable without JAX):
- ``reader``: webdataset tar shards -> raw samples; host/worker split, seeded shuffle buffer, exact resume state.
- ``images``: decoding with a reduced-size fast path, random-resized crop, direct resize, mode conversions.
- ``pipeline``: ``make_train_source(spec, stage_index, process_index, process_count)`` and the eval sources.
- ``tokenizer``: CLIP-convention BPE on the ``tokenizers`` library; training one on a dataset's captions.
- ``text_reduction``: truncate / random / block / syntax reduction of captions to N tokens.
- ``postag``: the offline part-of-speech tagger the syntax reduction uses.
- ``synth``: the procedurally drawn captioned image dataset.
- ``zeroshot``: zero-shot classification and image-text retrieval from embedding callables.
- ``profile``: a dataset folder's measured profile (classes, native resolution, eval size, caption lengths).
- ``cli``: ``clipa data synth|tokenizer|check``.
"""

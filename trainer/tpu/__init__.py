"""Cloud TPU execution: provision a slice through the Cloud TPU API, run the trainer on every host, survive
preemption by requeueing and resuming, account for the cost, and clean up.

Modules: ``options`` (what to launch), ``names`` (validation of every name used in resources, paths, commands),
``api`` (the narrow interface to ``google.cloud.tpu_v2`` and the exact requests), ``workers`` (how commands reach the
hosts: gcloud ssh, or local processes), ``launcher`` (``run_on_tpu``, ``dry_run``), ``outcome`` (cost and attempts),
``accounting`` (a run's launch records and what they cost), ``redact`` (no credentials in outputs), ``cli`` (``clipa
tpu ...``). The fake of the API that the tests run against is ``tests/tpu/fake_server.py``; the commands reach it (or
an emulator) through ``CLIPA_TPU_ENDPOINT`` and run workers as local processes under ``CLIPA_TPU_LOCAL_WORKERS``.
Importing this package imports no cloud library; those load inside the calls that need them.
"""

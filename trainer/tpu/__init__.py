"""Cloud TPU execution: provision a slice through the Cloud TPU API, run the trainer on every host, survive
preemption by requeueing and resuming, account for the cost, and clean up.

Modules: ``options`` (what to launch), ``names`` (validation of every name used in resources, paths, commands),
``api`` (the narrow interface to ``google.cloud.tpu_v2`` and the exact requests), ``workers`` (how commands reach
the hosts: gcloud ssh, or local processes), ``launcher`` (``run_on_tpu``, ``dry_run``), ``outcome`` (cost and
attempts), ``redact`` (no credentials in outputs), ``fake_server`` (a local fake of the API for tests), ``cli``
(``clipa tpu ...``). Importing this package imports no cloud library; those load inside the calls that need them.
"""

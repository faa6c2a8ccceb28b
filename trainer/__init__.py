"""JAX/Flax trainer for run specs: models, token reduction, input pipeline, train loop, checkpoints, evaluation,
and the Cloud TPU launcher. Imports the spec contract from ``planner``; the planner never imports this package."""

"""Run specs on a SLURM cluster: one ``sbatch`` job per attempt, one task per GPU (``srun``), JAX's own SLURM
cluster detection joining the tasks into one multi-controller job, resubmission after preemption or node failure,
and a record whose cost covers every attempt. See README.md, section "GPU cluster"."""

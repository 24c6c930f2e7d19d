"""Running the EA-Adam plan: stages and their files, executors (Slurm sbatch arrays, local, debug), Slurm dependency
chaining and job-state queries (DESIGN.md §3).

This package file stays light on purpose: importing ``easlurm.orchestrate.slurm_state`` must not pull in torch.
"""

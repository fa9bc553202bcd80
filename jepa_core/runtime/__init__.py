"""Running a recipe: building its components, the generic training loop, data, checkpoints,
run directories, launch (one process, local processes, torchrun, SLURM) and sharding.

Imports the kernel (`jepa_core.*`), never a plugin; torch is imported here."""

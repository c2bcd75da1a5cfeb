"""Running on several processes: which launcher started us (env), the process group
(process_group), DDP/FSDP wrapping (parallel), this node's workers through torchrun's
elastic agent (elastic), and scripts and command lines for schedulers (slurm, mpi)."""

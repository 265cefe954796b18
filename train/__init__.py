"""gangrun's training program: the same DDP loop under torchrun, Slurm, Kubernetes or one process."""

__version__ = "0.1.0"

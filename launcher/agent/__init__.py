"""The node agent every engine starts (`python -P -m launcher.agent` + its own flags + torchrun's argv).

torchrun for one node, plus what torchrun lacks: the first failed worker's own exit code (torchrun
exits 1 for any failure), 75 ("requeue me") honoured whether the workers stop on their own or on
the agent's SIGTERM, Slurm's notice signal outlived, a hang watchdog with every rank's stack, and
the shipped program run so that nothing in the working directory can shadow it.
"""

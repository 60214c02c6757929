"""Several processes: ranks, their shares of a step, collectives (`distributed`) and FSDP sharding (`fsdp`).
Imports nothing else from poise."""

"""Files in and out: checkpoints, the metrics writer, plots, the Hugging Face Hub cache, the environment record.
Imports from config, algo and parallel only."""

"""Files in and out: the typed config and its YAML/CLI loading and validation, checkpoints, the metrics writer,
plots. Imports from algo and parallel only."""

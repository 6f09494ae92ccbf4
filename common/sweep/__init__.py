"""The pieces of evaluate_corruptions.py's sweep, by topic: ``images`` (each image under each condition),
``condition_stats`` (what a model accumulates over a condition, and its files), ``temperature`` (the fit before
the sweep), ``run_folder`` (the --out folder: identity, resume, saving) and ``shards`` (--shard, --merge)."""

"""The topics of analyze_logits.py, one module each; analyze_logits.py runs them in order and writes the files.

    conditions.py          the benchmark's conditions, means over them, and ``Findings`` (notes, gaps, arrays)
    inputs.py              reading a results folder: metrics.jsonl rows, run.json, logits/ and confusion/ files
    robustness.py          mIoU aggregates: mPC, rPC, the mean over severities 0-5, CD / rCD, the worst case
    structure.py           logit structure: per-condition entries, explained variance (PCA), clean matrices
    bootstrap.py           image resampling weights, paired percentile intervals, the mIoU bootstrap
    calibration_summary.py ECE / NLL / Brier and every calibration reading: summaries and their bootstrap
    tables.py              tables.md and the summary printed at the end

The schema of what they compute is docs/outputs.md; the formulas are docs/protocol.md.
"""

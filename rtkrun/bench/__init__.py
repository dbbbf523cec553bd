"""``rtkrun bench``: time the hot paths against a reference measured in the same run.

Sections (each a module): ``training`` (steps/s, samples/s, FLOP/s and MFU, data share),
``sampling`` (time per NFE of every sampler over one bare network call), ``diagnostics``
(matrix-free chain vs the exact float64 chain, in forward-pass equivalents), ``egnn`` (the
three graph layouts against the edge-list reference) and ``precision`` (bf16 and
``torch.compile`` against fp32 eager). ``timing`` holds the clock, the memory gauge and the
machine description they share; ``presets`` says which models and batch sizes a preset uses.
"""

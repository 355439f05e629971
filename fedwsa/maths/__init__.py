"""Pure tensor maths on stacked client weights: layer scopes, the WSA KL term, scope fusion,
weighted averaging and centred low-rank aggregation (no Flower, no files)."""

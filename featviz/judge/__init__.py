"""Judge: how far to trust a map.

``metrics`` (average drop, deletion/insertion, ROAD) with ``imputation`` (ROAD's solve),
``randomize`` (the sanity check's cascade), ``similarity`` (Spearman, SSIM) and ``tables``
(score's and sanity's summaries). A new metric is one function in ``metrics``, its column
in ``METRICS`` (and ``LOWER_IS_BETTER`` when lower is better), and its call in the score job's
``_score_maps``.
"""

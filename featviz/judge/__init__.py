"""Judge: how far to trust a map.

``metrics`` (average drop, deletion/insertion, ROAD) with ``imputation`` (ROAD's solve),
``randomize`` (the sanity check's cascade), ``similarity`` (Spearman, SSIM) and ``tables``
(score's and sanity's summaries). A new metric is one function and one registry row in
``metrics``.
"""

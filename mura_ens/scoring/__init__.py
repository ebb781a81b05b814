"""Scoring with ONNX Runtime (never TensorFlow): models, batch runner, ensembles, backends.

Modules, in the order data flows through them:

- :mod:`.models`    find ``*.onnx`` files, read their metadata, validate the input -> ``ModelSpec``
- :mod:`.sessions`  execution providers, ``SessionOptions``, one cached session per model per process
- :mod:`.runner`    the unit of work: a batch of whole studies -> one row per image (``score_batch``)
- :mod:`.backends`  how batches reach the runner (``local``: decode threads overlapping inference)
- :mod:`.journal`   the ``--resume`` journal of finished batches and the run fingerprint
- :mod:`.ensemble`  per-model study probabilities, ``body_part`` / ``mean`` ensembles, study statuses
- :mod:`.progress`  the terminal progress bar
- :mod:`.score`     ``score()``: the whole run, writing images.csv, studies.csv, metrics.json, report.html

Nothing is imported here, so ``import mura_ens.scoring`` stays free.
"""

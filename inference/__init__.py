"""Rendering lens blur from the command line's options: what ``inference_hf.py`` and ``app.py`` share.

Modules (import them by path; this package re-exports nothing, so importing one stays cheap):

- :mod:`inference.renderers`: ``RENDERERS``, the ``--renderer`` registry of builders ``(args, device) -> render``
  (classical, bokehdiff, gaussian, identity) and ``with_upsample``.
- :mod:`inference.options`: ``inference_hf.py``'s parser, its validation and its notes on flags without effect.
- :mod:`inference.batch`: a run over many inputs: which inputs, where the outputs go, the manifest, the loop.
- :mod:`inference.shard`: one run over several processes and its resume: per-rank manifests, the settings
  check, the merge into ``run_config.json`` (the ranks themselves: :mod:`data.ranks`).
"""

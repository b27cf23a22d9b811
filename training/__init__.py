"""Training machinery for ``train_lora_otf.py``: configuration, models and the step, checkpoints, validation.

Modules (import them by path; this package re-exports nothing so importing one stays cheap):

- :mod:`training.config`: argparse + YAML presets (``configs/train_default.yaml`` holds every default; unknown
  keys fail), validation of flag combinations, the resolved config written to ``output_dir``.
- :mod:`training.checkpoint`: accelerate ``save_state`` / ``load_state`` hooks, atomic checkpoint folders,
  rolling limit, ``latest`` discovery, the self-describing metadata JSON and the inference export.
- :mod:`training.resume`: what a resume is refused for before anything loads (settings the restored optimiser
  and LR-schedule state fix, newer checkpoints of the branch an older one's resume would abandon).
- :mod:`training.data`: the resumable, rank-sharded sample stream and the fixed held-out validation set.
- :mod:`training.loop`: ``build_models``, ``build_optimizers``, ``train_step``, the PISA hardness schedule,
  the non-finite-loss guard and ``validate``.
- :mod:`training.tracking`: validation grids as ``validation/step-<step>.png`` and in TensorBoard / wandb.
- :mod:`training.plots`: the run's curves as ``training_curves.png`` (``python -m scripts.plot_run RUN_DIR``).
- :mod:`training.model_card`: the run's ``README.md`` (``python -m training.model_card RUN_DIR``).
- :mod:`training.publish`: ``--push_to_hub``, checked before training and uploaded at the end.
"""

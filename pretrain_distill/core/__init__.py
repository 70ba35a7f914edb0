"""Shared infrastructure of both stages (distillation and fine-tuning); it imports nothing else of the
project, and everything else may import it.

- :mod:`.errors`, :mod:`.overrides`, :mod:`.config_loading`, :mod:`.command_line` -- YAML configs with
  ``key=value`` overrides, validated into dataclasses; the console commands' one style and one way of failing.
- :mod:`.run_identity` -- the resume rule: what may change when a run is continued.
- :mod:`.checkpoint_trust` -- ``COMPLETE`` markers with sizes and checksums, verified before a resume.
- :mod:`.files` -- atomic writes of files and directories; :mod:`.seeds` -- seed derivation.
- :mod:`.distributed` -- rank, world size and rendezvous from any launcher; collectives.
- :mod:`.lr_schedule` -- linear warmup + linear decay; :mod:`.metrics_log` -- JSONL, TensorBoard, W&B, MLflow.
- :mod:`.assets` -- the embedded real teacher and texts; :mod:`.console` -- what libraries may print.
"""

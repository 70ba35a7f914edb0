"""The downstream stage: fine-tuning on GLUE / XNLI / custom tasks, task-specific distillation
(vanilla KD, PKD, RAIL-KD, ILD-RTC) and paper-style reports.

Library: ``finetune_config`` (schema) -> ``tasks`` (data) -> ``tokenization`` -> ``modeling``
(classifiers) -> ``kd_losses`` / ``objectives`` -> ``hf_trainer`` (training on ``transformers.Trainer``)
-> ``jobs`` (run directories; ``model_card``) -> ``report``; ``metrics`` (official task metrics).
Commands: ``commands/`` (``finetune train | distill | sweep | report``), ``cli`` (the entry point).

Public API: ``finetune.metrics.metric_values``, ``finetune.tasks.load_task_data`` / ``TASKS``,
``finetune.finetune_config.FinetuneConfig``, ``finetune.jobs.run``, ``finetune.objectives.TaskDistiller``,
``finetune.report.write_report``. Importing the package itself loads nothing heavy (fast ``--help``).
"""

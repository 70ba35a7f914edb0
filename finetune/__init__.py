"""The downstream stage: fine-tuning on GLUE / XNLI / custom tasks, task-specific distillation
(vanilla KD, PKD, RAIL-KD, ILD-RTC) and paper-style reports.

Modules: ``config`` (schema) -> ``tasks`` (data) -> ``data`` (tokenisation) -> ``modeling`` (classifiers)
-> ``kd_losses`` / ``kd`` (objectives) -> ``loop`` (training on ``transformers.Trainer``) -> ``run`` (run
directories, ``card`` their model cards) -> ``report``.

Public API: ``finetune.metrics.compute_metrics``, ``finetune.tasks.load_task_data`` / ``TASKS``,
``finetune.config.FinetuneConfig``, ``finetune.run.run``, ``finetune.kd.TaskDistiller``,
``finetune.report.write_report``. Importing the package itself loads nothing heavy (fast ``--help``).
"""

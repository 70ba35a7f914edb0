"""The model card (``README.md``) written into a run's saved ``model/``: base model, task, metrics,
seed, selection and the command that made it. Local paths (the model, the teacher, the command's files)
are named by their last component (:mod:`pretrain_distill.core.public_paths`) unless ``full_paths``."""

from __future__ import annotations

from pretrain_distill.core.public_paths import public_name, public_text


def model_card(metrics: dict, labels: tuple[str, ...], full_paths: bool = False) -> str:
    """Markdown with a Hugging Face metadata header, from a run's ``metrics.json`` content."""
    name, text = (str, str) if full_paths else (public_name, public_text)
    model, method = name(metrics["model"]), metrics["method"]
    kind = (
        "fine-tuned"
        if method == "finetune"
        else f"task-distilled ({method}) from `{name(metrics['teacher'])}`"
    )
    rows = [
        f"| {split} | {metric} | {value:.4f} |"
        for split, values in metrics["eval"].items()
        for metric, value in values.items()
    ]
    rows += [
        f"| {name} (out of domain) | accuracy | {v['accuracy']:.4f} |" for name, v in metrics["ood"].items()
    ]
    lines = [
        "---",
        f"base_model: {model}",
        "pipeline_tag: text-classification",
        "tags: [text-classification, finetune]",
        "---",
        f"# {metrics['run_name']} on {metrics['task']}",
        "",
        f"`{model}` {kind} on the task `{metrics['task']}`.",
        "",
        f"- labels (id order): {', '.join(labels) if labels else 'regression (one score)'}",
        f"- seed: {metrics['seed']}; training examples: {metrics['train_examples']}; "
        f"optimizer steps: {metrics['steps']} on {metrics['world_size']} process(es)",
        f"- kept: the {'best evaluation on the selection split' if metrics['select'] == 'best' else 'last state'}"
        f" (epoch {metrics['selected_epoch']:g}, step {metrics['selected_step']})",
        "",
        "| split | metric | value |",
        "|---|---|---|",
        *rows,
        "",
        "Command:",
        "",
        "```",
        text(metrics["command"]),
        "```",
        "",
    ]
    return "\n".join(lines)

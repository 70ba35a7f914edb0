"""Task-agnostic distillation of Transformer encoders.

Data flow: corpus -> ``data.prepare`` (shards) -> ``data.stream`` (batches) -> ``models`` (teacher and
student taps) -> ``objectives`` (losses) -> ``engine`` (DeepSpeed training, checkpoints) -> ``export``.
"""

__version__ = "0.1.0"

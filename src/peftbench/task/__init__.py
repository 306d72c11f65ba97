"""What a task is and how its outputs are scored: task presets, the metric registry and its scorers."""

"""Fine-tuning methods: the registry (one entry per method), peft-config builders, optimizers, and applying a method to
a loaded model.
"""

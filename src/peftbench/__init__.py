"""peftbench: compare full fine-tuning and PEFT methods on the same model, data and budget."""

__version__ = "0.1.0"

"""peftbench: compare full fine-tuning and PEFT methods on the same model, data and budget."""

__version__ = "0.1.0"


def load_results(paths):
    """Every run under the given `peftbench run` output directories as a pandas DataFrame (one row per model x method
    x seed, references included; the columns of results.csv). Needs pandas."""
    from peftbench.report.export import load_results as load  # heavy imports only when asked

    return load(paths)

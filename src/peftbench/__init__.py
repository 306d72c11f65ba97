"""peftbench: compare full fine-tuning and PEFT methods on the same model, data and budget.

The public surface is `peftbench.run(...)` (what `peftbench run` does, returning the results) and
`peftbench.load_results(...)` (finished runs as a pandas DataFrame) and `peftbench.load_verdicts(...)` (the verdict
as data); see peftbench.api.
"""

__version__ = "0.1.0"
__all__ = ["Results", "load_results", "load_verdicts", "run"]


def __getattr__(name: str):
    # The API loads the model libraries: only when it is used, so that `import peftbench` stays light.
    if name in __all__:
        from peftbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'peftbench' has no attribute {name!r}")

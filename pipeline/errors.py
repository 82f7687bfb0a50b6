"""The one exception family the stages turn into a clear message and a non-zero exit.

Anything else escaping a stage is a bug and keeps its traceback.
"""


class PipelineError(Exception):
    """Bad input or environment: the message names the file, key or value and what was expected."""

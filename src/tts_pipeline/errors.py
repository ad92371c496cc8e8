"""User-facing errors: the CLI prints them as one clear line (no traceback) and exits 1."""


class PipelineError(RuntimeError):
    """A problem the user can fix (bad input, missing file, network refusal), with the file named."""

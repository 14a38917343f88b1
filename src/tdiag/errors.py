"""The one error type for problems a user can cause and fix.

`tdiag` prints such an error as one line (`tdiag: error: ...`) and exits with code 2;
anything else is a bug and keeps its traceback. Subclasses say where the problem lies:
`config.ConfigError` (params.yaml and overrides), `data.corpora.FetchError`,
`data.wmt14.SGMLError`, `report.collect.UnfinishedStudy`.
"""


class UserError(ValueError):
    """A problem with the user's input (configuration, data files, downloads), in one line.

    A ValueError, as ConfigError always was, so code that catches ValueError around a
    call keeps catching the same errors.
    """

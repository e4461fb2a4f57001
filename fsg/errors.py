"""The one exception type for mistakes a user can make (bad path, bad recipe, wrong checkpoint...).

The CLI turns a `UserError` into one line on stderr and exit code 2; everything else is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix; its message is one self-contained line."""


EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 3      # training stopped by a signal or --time-budget after writing a checkpoint
EXIT_NONFINITE = 4      # training stopped on a non-finite loss; the last good checkpoint is kept

"""Errors caused by what the user gave us (paths, values, files), reported as one paragraph without a traceback."""


class UserError(Exception):
    """A problem the user can fix; the message names the path or value and says how to fix it."""


class DataError(UserError):
    """The dataset is missing, laid out wrongly, unreadable or inconsistent."""


class ConfigError(UserError):
    """A command-line flag or configuration value is out of range or unknown."""


class CheckpointError(UserError):
    """A checkpoint is missing, unreadable, unsafe or belongs to another model."""

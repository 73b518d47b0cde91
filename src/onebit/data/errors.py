"""The one exception type the data package raises for problems with the user's data."""


class DataError(ValueError):
    """Data is missing, laid out wrongly, unreadable or fails verification.

    The message always says which file or folder is at fault and, where it
    helps, what was expected instead.
    """

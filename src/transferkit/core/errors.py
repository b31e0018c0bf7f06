"""User-facing errors: each one is a single readable line that says what to do."""


class TransferkitError(Exception):
    """A problem the user can fix; the CLI prints it as one line and exits non-zero."""


class WeightsNotFoundError(TransferkitError):
    """No pretrained weights could be found for a backbone."""


class ImageError(TransferkitError):
    """A file that cannot be used as an image (missing, corrupt, not an image, too large)."""

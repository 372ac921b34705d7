"""One exception hierarchy, so callers (operators, CLI, API) can tell *whose* fault a failure is.

Every message names the thing that is wrong and, where there is one, the fix.
"""


class AstridError(Exception):
    """Base class for all errors raised by the AstrID core."""


class ConfigError(AstridError, ValueError):
    """A configuration value (usually an ``ASTRID_*`` environment variable) is invalid."""


class ObservationError(AstridError):
    """One observation cannot be processed (bad file, bad WCS, ...): fail *it*, not the run."""


class FitsError(ObservationError):
    """A FITS file is missing, truncated, not an image, too large, or mismatched."""


class StorageError(ObservationError):
    """A URI is outside the configured storage root, or cannot be reached."""


class SubtractionError(ObservationError):
    """A science/reference pair cannot give an honest difference image: reject the pair rather than
    write a garbage difference (see :mod:`astrid.imaging.subtraction`)."""


class NoOverlapError(SubtractionError):
    """The reference covers too little (or none) of the science frame."""


class AlignmentError(SubtractionError):
    """The reference cannot be registered on the science frame (a WCS that disagrees with the stars,
    no WCS and no common star pattern)."""


class KernelFitError(SubtractionError):
    """The PSF-matching kernel cannot be fitted (too few usable stars) or leaves star residuals far
    above the noise."""


class ModelError(AstridError):
    """Model weights are missing, corrupt or do not match their card: fail the task so it retries."""


class CatalogError(AstridError):
    """The observation catalog refused an operation (e.g. a lease held by another run)."""


class IngestError(AstridError):
    """An observation offered for ingestion was refused; nothing was registered.

    ``field`` names the input at fault (``science``, ``reference``, ``difference``, ``id``,
    ``meta``, ...) so the API can answer 4xx naming it and the CLI can name the option;
    ``conflict`` says the input is fine but clashes with what is registered (HTTP 409).
    """

    def __init__(self, message: str, field: str | None = None, *, conflict: bool = False) -> None:
        super().__init__(message)
        self.field, self.conflict = field, conflict


class ModelReferenceError(ModelError, ValueError):
    """A model reference is not a registry name/alias/version nor a model directory under the
    configured model roots. A ``ValueError`` too, so request validation turns it into a 4xx."""


class UsageError(AstridError, ValueError):
    """A command-line argument cannot be used as given (e.g. an ``--output`` that would replace an
    input): the CLI prints it as one line and exits 2."""

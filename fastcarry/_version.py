"""fastcarry's version, apart from the package root so that modules below it can read it."""

__version__ = "0.1.0"

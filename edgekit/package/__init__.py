"""Mobile bundles: ``edgekit package`` writes one (:func:`package`), ``edgekit package verify`` checks one
(:func:`verify`); :mod:`edgekit.package.reference` is the plain-Python loop an app mirrors, and
:mod:`edgekit.package.vectors` writes the test vectors the apps' unit tests read."""

from __future__ import annotations

from edgekit.package.verify import verify
from edgekit.package.writer import package

__all__ = ["package", "verify"]

"""Jane Austen's six novels, read from Debian's ``r-cran-janeaustenr`` package without R.

The package stores each novel as a character vector inside ``data/Rdata.rdb``: a sequence of
zlib-compressed objects in R's XDR serialization, indexed by ``data/Rdata.rdx`` (a gzipped
serialized list of (offset, length) pairs). No Python library reads R's lazy-load databases
(``rdata`` reads .rda/.rds files only), so the small subset of the format these two files use is
decoded here by hand.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

DEBIAN_DIR = Path("/usr/lib/R/site-library/janeaustenr/data")
NOVELS = ("emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility")
HELD_OUT = "persuasion"

_NILVALUE, _SYMSXP, _LISTSXP, _CHARSXP, _LGLSXP, _INTSXP, _REALSXP, _STRSXP, _VECSXP = (
    254, 1, 2, 9, 10, 13, 14, 16, 19)


class _Reader:
    """Just enough of R's XDR unserializer for character vectors, integer vectors and lists."""

    def __init__(self, data: bytes) -> None:
        if data[:2] != b"X\n":
            raise ValueError("not an R XDR serialization")
        self.d, self.i = data, 2
        version = self.int()
        self.int(), self.int()  # writer R version, minimal reader version
        if version == 3:
            n = self.int()
            self.i += n  # native encoding name
        self.symbols: list[str] = []

    def int(self) -> int:
        (v,) = struct.unpack_from(">i", self.d, self.i)
        self.i += 4
        return v

    def item(self):
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind == _NILVALUE:
            return None
        if kind == 255:  # REFSXP: reference to an earlier symbol
            return self.symbols[(flags >> 8) - 1]
        if kind == _SYMSXP:
            name = self.item()
            self.symbols.append(name)
            return name
        if kind == _CHARSXP:
            n = self.int()
            if n == -1:
                return None
            s = self.d[self.i:self.i + n].decode("utf-8", errors="replace")
            self.i += n
            return s
        if kind == _LISTSXP:  # pairlist: attributes
            out = {}
            while kind == _LISTSXP:
                if has_attr:
                    self.item()
                tag = self.item() if has_tag else None
                out[tag] = self.item()
                flags = self.int()
                kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
            return out
        if kind in (_INTSXP, _LGLSXP):
            n = self.int()
            value = list(struct.unpack_from(f">{n}i", self.d, self.i))
            self.i += 4 * n
        elif kind == _REALSXP:
            n = self.int()
            value = list(struct.unpack_from(f">{n}d", self.d, self.i))
            self.i += 8 * n
        elif kind in (_STRSXP, _VECSXP):
            n = self.int()
            value = [self.item() for _ in range(n)]
        else:
            raise ValueError(f"R object type {kind} is not supported by this reader")
        if has_attr:
            attrs = self.item()
            if isinstance(attrs, dict) and "names" in attrs:
                value = dict(zip(attrs["names"], value, strict=True))
        return value


def read_novels(data_dir: Path = DEBIAN_DIR) -> dict[str, str]:
    """Return {novel name: full text}, lines joined with newlines, for all six novels.

    Raises FileNotFoundError with the install command when the Debian package is absent.
    """
    rdx, rdb = data_dir / "Rdata.rdx", data_dir / "Rdata.rdb"
    if not rdb.exists():
        raise FileNotFoundError(
            f"{rdb} not found: install Debian's package with `apt-get install r-cran-janeaustenr` "
            "(or pass the directory holding Rdata.rdb/Rdata.rdx)")
    index = _Reader(gzip.decompress(rdx.read_bytes())).item()
    blob = rdb.read_bytes()
    out = {}
    for name, (offset, length) in index["variables"].items():
        chunk = blob[offset:offset + length]
        lines = _Reader(zlib.decompress(chunk[4:])).item()
        out[name] = "\n".join(line or "" for line in lines)
    return out


def paragraphs(text: str) -> list[str]:
    """Unwrap the package's hard-wrapped lines: one string per paragraph, inner spaces kept."""
    out, current = [], []
    for line in text.split("\n"):
        if line.strip():
            current.append(line.strip())
        elif current:
            out.append(" ".join(current))
            current = []
    if current:
        out.append(" ".join(current))
    return out


def split_corpus(data_dir: Path = DEBIAN_DIR) -> tuple[dict[str, list[str]], list[str]]:
    """({novel: paragraphs} for the five training novels, paragraphs of held-out *Persuasion*)."""
    novels = {name: paragraphs(text) for name, text in read_novels(data_dir).items()}
    held_out = novels.pop(HELD_OUT)
    return novels, held_out

"""Face banks: photographic faces of nobody in particular, for the `bank` operator to put in place of real ones.

Two sources, one format (store.py): composites of k ≥ 8 real people from a folder of faces the user may use
(composite.py), and synthetic people rendered by MobileStyleGAN (stylegan.py, optional dependency
`openvino`, non-commercial weights). `load_bank` opens a bank only after checking every hash.
"""

from anonymizer.bank.store import Bank, BankError, load_bank

__all__ = ["Bank", "BankError", "build_from_folder", "build_from_stylegan", "default_size", "load_bank"]

# A bank's size when the builder is not told: composites, and StyleGAN's virtual people. 256 people (about 85 a
# skin-tone band) halve how often two photos of one person show one bank person against 128, and let the
# guard's pose target keep pose without linking more (docs/benchmarks.md, "As `realistic` runs it").
DEFAULT_SIZES = {"folder": 64, "stylegan": 256}


def default_size(source: str) -> int:
    """Faces (a folder) or virtual people ("stylegan") a bank built from `source` gets by default."""
    return DEFAULT_SIZES["stylegan" if source == "stylegan" else "folder"]


def build_from_folder(*args, **kwargs):
    """See anonymizer.bank.composite.build_from_folder."""
    from anonymizer.bank.composite import build_from_folder as build

    return build(*args, **kwargs)


def build_from_stylegan(*args, **kwargs):
    """See anonymizer.bank.stylegan.build_from_stylegan (needs openvino)."""
    from anonymizer.bank.stylegan import build_from_stylegan as build

    return build(*args, **kwargs)

"""The training corpus reader: R's lazy-load database decoded without R (needs Debian's r-cran-janeaustenr)."""

import pytest

from edgekit.models import austen, tiny_path


@pytest.fixture(scope="module")
def corpus():
    if not (austen.DEBIAN_DIR / "Rdata.rdb").exists():
        pytest.skip("Debian package r-cran-janeaustenr is not installed (apt-get install r-cran-janeaustenr)")
    return austen.split_corpus()


def test_six_novels_and_the_held_out_text_is_the_shipped_one(corpus):
    train, held_out = corpus
    assert sorted(train) == ["emma", "mansfieldpark", "northangerabbey", "prideprejudice", "sensesensibility"]
    assert any(p.startswith("It is a truth universally acknowledged") for p in train["prideprejudice"][:10])
    shipped = (tiny_path() / "persuasion.txt").read_text(encoding="utf-8")
    assert shipped == "\n\n".join(held_out) + "\n"


def test_missing_package_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install r-cran-janeaustenr"):
        austen.read_novels(tmp_path)

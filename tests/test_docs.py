"""The README's support matrix is the one the tables generate (run `invoke docs` after changing a table)."""

from builders.docs import END, START, support_matrix
from helpers import ROOT


def test_readme_support_matrix_is_generated_from_the_tables():
    text = (ROOT / "README.md").read_text()
    block = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert block == support_matrix(), "README support matrix is stale: run `invoke docs`"

"""Documents as blocks and their renderers (reslab.document), and the noise-aware
comparison and number formats every report shares (reslab.stats)."""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path

import pytest

from reslab.document import (
    Bullets,
    Figure,
    Heading,
    Paragraph,
    Table,
    csv_records,
    csv_table,
    html_page,
    markdown,
    markdown_table,
    terminal,
    terminal_table,
)
from reslab.stats import Difference, binomial_standard_error, compare, percent, plus_minus

TABLE = Table(["model", "error (%)", "note"], [["resnet20", "8.75", "He et al."], ["plain20", "9.50", ""]],
              align=["left", "right", "left"])
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


# ---------------------------------------------------------------- one table in each format


def test_a_table_in_markdown_carries_its_alignment():
    assert markdown_table(TABLE) == ("| model | error (%) | note |\n"
                                     "|---|---:|---|\n"
                                     "| resnet20 | 8.75 | He et al. |\n"
                                     "| plain20 | 9.50 |  |")


def test_a_table_without_alignment_has_its_names_left_and_numbers_right():
    table = Table(["model", "depth", "error (%)"], [["resnet20", "20", "8.75"]])
    assert markdown_table(table).splitlines()[1] == "|---|---:|---:|"


def test_a_table_in_html_styles_only_the_columns_the_style_sheet_aligns_otherwise():
    page = html_page([TABLE], "t")
    assert ("<table><thead><tr><th>model</th><th>error (%)</th><th>note</th></tr></thead><tbody>"
            "<tr><td>resnet20</td><td>8.75</td><td style='text-align:left'>He et al.</td></tr>") in page


def test_a_table_in_csv_reads_back_as_its_cells():
    assert list(csv.reader(io.StringIO(csv_table(TABLE)))) == [list(TABLE.headers), *map(list, TABLE.rows)]


def test_a_table_in_the_terminal_has_aligned_columns():
    assert terminal_table(TABLE, indent="  ").splitlines() == ["  model    error (%) note",
                                                               "  resnet20      8.75 He et al.",
                                                               "  plain20       9.50"]


def test_terminal_columns_are_at_least_as_wide_as_asked():
    table = Table(["class", "F1"], [["cat", "0.5000"]])
    assert terminal_table(table, widths=[8, 9]) == "class           F1\ncat         0.5000"


def test_a_table_given_the_wrong_number_of_alignments_is_refused():
    with pytest.raises(ValueError, match="3 columns given 2 alignments"):
        markdown_table(Table(["a", "b", "c"], [], align=["left", "right"]))


def test_records_in_csv_keep_their_values_and_leave_out_other_keys():
    text = csv_records([{"run": "a", "seeds": [0, 1], "error": 0.0875, "paper": None, "extra": 1}],
                       ["run", "seeds", "error", "paper"])
    assert text.splitlines() == ["run,seeds,error,paper", "a,0 1,0.0875,"]


# ---------------------------------------------------------------- whole documents


def test_a_document_in_markdown_links_its_figures_relative_to_its_folder(tmp_path):
    blocks = [Heading("Study"), Paragraph("Two nets."), Heading("Results", 2), Bullets(["one", "two"]), TABLE,
              Figure(tmp_path / "figures" / "error.png", "Error against depth")]
    text = markdown(blocks, tmp_path)
    assert text.startswith("# Study\n\nTwo nets.\n\n## Results\n\n- one\n- two\n\n| model |")
    assert text.endswith("\n\n![Error against depth](figures/error.png)\n")


def test_html_escapes_every_text_and_embeds_figures(tmp_path):
    figure = tmp_path / "f.png"
    figure.write_bytes(PNG)
    evil = "<script>alert('x')</script> & \"q\""
    page = html_page([Heading(evil), Paragraph(evil), Bullets([evil]), Table([evil], [[evil]]), Figure(figure, evil)],
                     title=evil)
    assert "<script>" not in page and "alert('x')" not in page
    assert page.count("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;q&quot;") == 8  # and title, alt
    assert f"src='data:image/png;base64,{base64.b64encode(PNG).decode()}'" in page


def test_a_document_in_the_terminal_separates_its_blocks_by_a_blank_line():
    text = terminal([Heading("Study"), Paragraph("Two nets."), Bullets(["one"]),
                     Figure(Path("figures/e.png"), "Error")])
    assert text == "Study\n=====\n\nTwo nets.\n\n- one\n\n[figure] Error: figures/e.png"


# ---------------------------------------------------------------- noise-aware comparisons


def net(mean: float, std: float = 0.0) -> dict:
    return {"error_mean": mean, "error_std": std}


def test_a_difference_inside_the_seeds_spread_is_within_noise():
    verdict = compare(net(0.10, 0.02), net(0.13, 0.02), "error", tolerance=0.005)  # 3 points apart, spread 4
    assert verdict is Difference.WITHIN_NOISE and str(verdict) == "within noise"


def test_a_difference_beyond_the_spread_is_higher_or_lower():
    assert compare(net(0.15, 0.01), net(0.10, 0.01), "error", 0.005) is Difference.HIGHER
    assert compare(net(0.10, 0.01), net(0.15, 0.01), "error", 0.005) is Difference.LOWER
    assert Difference.HIGHER == 1 and Difference.LOWER == -1  # statements count them as numbers


def test_the_tolerance_and_the_standard_error_widen_the_noise():
    assert compare(net(0.11), net(0.10), "error", tolerance=0.02) is Difference.WITHIN_NOISE
    standard_error = binomial_standard_error(0.11, 359, 0.10, 359)  # 4 images in 359: not a finding
    assert compare(net(0.11), net(0.10), "error", 0.005, standard_error) is Difference.WITHIN_NOISE
    assert compare(net(0.11), net(0.10), "error", 0.005) is Difference.HIGHER


def test_a_figure_not_recorded_is_no_comparison():
    assert compare(net(0.10), {"error_mean": None, "error_std": None}, "error", 0.005) is None
    assert binomial_standard_error(0.1, None, 0.2, 100) is None


def test_numbers_are_written_as_the_papers_print_them():
    assert percent(0.0661) == "6.61%" and percent(None) == "n/a"
    assert plus_minus(0.0661, 0.0016, 5, ".2f", 100) == "6.61 ± 0.16"
    assert plus_minus(0.0661, 0.0016, 1, ".2f", 100) == "6.61"  # one seed: no spread to show
    assert plus_minus(None, None, 3) == "–"

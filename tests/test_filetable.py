"""The compact file list of an image folder behaves as the list of (path, label) it holds."""

from __future__ import annotations

from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jepa_image.filetable import FileTable

ROOT = Path("/data/imagenet/train")
# path parts with spaces, accents, other scripts and a lone surrogate (an undecodable byte
# in a file name, as os.walk gives it)
PART = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
               min_size=1, max_size=12) | st.just("caf\udce9")
GROUPS = st.lists(st.tuples(st.integers(-1, 5), st.lists(st.lists(PART, min_size=1,
                                                                  max_size=3), max_size=6)),
                  max_size=5)


def listed(groups):
    return [(ROOT.joinpath(*parts), label) for label, files in groups for parts in files]


def table_of(groups, chunk=3):
    table = FileTable.build(ROOT, ((label, [ROOT.joinpath(*p) for p in files])
                                   for label, files in groups))
    table.CHUNK = chunk  # several gathers even for small tables
    return table


@settings(max_examples=60, deadline=None)
@given(groups=GROUPS, data=st.data())
def test_a_table_holds_the_files_and_labels_it_was_built_from(groups, data):
    expected = listed(groups)
    table = table_of(groups)
    assert len(table) == len(expected) and list(table) == expected
    assert [table[i] for i in range(-len(expected), 0)] == expected
    keep = torch.tensor(data.draw(st.lists(st.booleans(), min_size=len(expected),
                                           max_size=len(expected))), dtype=torch.bool)
    picked = table.select(keep)
    picked.CHUNK = 2
    assert list(picked) == [f for f, k in zip(expected, keep.tolist(), strict=True) if k]
    assert list(picked.select(~torch.zeros(len(picked), dtype=torch.bool))) == list(picked)
    n = data.draw(st.integers(0, len(expected) + 2))
    assert list(table.head(n)) == expected[:n]
    if expected:
        rows = torch.tensor(data.draw(st.lists(st.integers(0, len(expected) - 1),
                                               max_size=8)), dtype=torch.int64)
        assert list(table.rows(rows)) == [expected[i] for i in rows.tolist()]


def test_out_of_range_is_an_index_error():
    table = table_of([(0, [["a.jpg"], ["b.jpg"]])])
    for bad in (2, -3):
        try:
            table[bad]
        except IndexError:
            continue
        raise AssertionError(f"table[{bad}] did not raise")


def test_a_table_costs_its_path_bytes_plus_a_few_per_image():
    names = [[f"n{c:08d}", f"n{c:08d}_{i}.JPEG"] for c in range(10) for i in range(1000)]
    table = FileTable.build(ROOT, [(0, [ROOT.joinpath(*p) for p in names])])
    path_bytes = sum(len("/".join(p)) for p in names)
    held = sum(t.numel() * t.element_size() for t in (table.blob, table.offsets, table.labels))
    assert held <= path_bytes + 13 * len(names)

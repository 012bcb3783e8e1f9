"""Property tests of the two parsers that take people's input: the judgment ranking and the import readers.

Whatever they are given, they answer with a clean result or their own error type, never a crash.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annotate.services import JudgmentError, ranking_normalise
from pool.readers import ImportSourceError, Record, Skip, records_read, source_resolve

CAPTION_IDS = [11, 12, 13, 14]
# JSON-like values, the shapes a client can send in place of a ranking.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=25,
)


@st.composite
def valid_rankings(draw):
    order = draw(st.permutations(CAPTION_IDS))
    cuts = sorted(draw(st.sets(st.integers(1, len(order) - 1))))
    bounds = [0, *cuts, len(order)]
    return [list(order[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]


@given(valid_rankings())
def test_every_valid_ranking_is_accepted_unchanged(ranking):
    assert ranking_normalise(ranking, caption_ids=CAPTION_IDS) == ranking


@given(valid_rankings())
def test_ids_sent_as_strings_are_accepted(ranking):
    as_strings = [[str(cid) for cid in tier] for tier in ranking]
    assert ranking_normalise(as_strings, caption_ids=CAPTION_IDS) == ranking


@given(json_values)
@settings(max_examples=300)
def test_any_input_is_a_valid_ranking_or_a_judgment_error(value):
    try:
        tiers = ranking_normalise(value, caption_ids=CAPTION_IDS)
    except JudgmentError as exc:
        assert exc.text  # worded for the annotator, never empty
        return
    flat = [cid for tier in tiers for cid in tier]
    assert sorted(flat) == CAPTION_IDS and all(tier for tier in tiers)


@given(valid_rankings(), st.data())
def test_a_caption_dropped_or_repeated_is_refused(ranking, data):
    tier = data.draw(st.integers(0, len(ranking) - 1))
    repeated = [list(t) for t in ranking] + [[ranking[tier][0]]]
    with pytest.raises(JudgmentError):
        ranking_normalise(repeated, caption_ids=CAPTION_IDS)
    dropped = [t for i, t in enumerate(ranking) if i != tier]
    with pytest.raises(JudgmentError):
        ranking_normalise(dropped, caption_ids=CAPTION_IDS)


# --- import readers --------------------------------------------------------------------------------

line_values = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda image, caption: json.dumps({"image": image, "caption": caption}),
        st.one_of(st.text(max_size=20), st.sampled_from(["a.jpg", "../../etc/passwd", "/etc/hostname", ""])),
        st.one_of(st.text(max_size=30), st.none(), st.integers(), st.lists(st.text(max_size=5), max_size=3)),
    ),
    st.builds(json.dumps, json_values),
)


def _read_all(path: Path, root: Path) -> list:
    try:
        src = source_resolve(str(path), root=str(root))
        return list(records_read(src))
    except ImportSourceError as exc:
        assert str(exc)
        return []


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(line_values, max_size=8), st.binary(max_size=30))
def test_jsonl_reader_yields_records_or_skips_for_any_file(lines, junk):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        path = root / "pairs.jsonl"
        path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + b"\n" + junk)
        for item in _read_all(path, root):
            assert isinstance(item, Record | Skip)
            if isinstance(item, Record) and item.path is not None:
                # A path taken from a table is either inside the root already or carries the root the
                # image loader enforces before it opens anything.
                inside = Path(item.path).resolve().is_relative_to(root.resolve())
                assert inside or (item.root is not None and Path(item.root).resolve() == root.resolve())


csv_cells = st.text(alphabet=string.printable + "é\u202e\x00", max_size=15)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(csv_cells, min_size=1, max_size=4), min_size=1, max_size=6))
def test_csv_reader_yields_records_or_skips_for_any_file(rows):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        path = root / "pairs.csv"
        path.write_text("\n".join(",".join(row) for row in rows), encoding="utf-8", errors="surrogatepass")
        for item in _read_all(path, root):
            assert isinstance(item, Record | Skip)

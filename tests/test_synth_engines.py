"""Every synthetic engine: its records load through the processor and the training encoder with the rendered frame
as the model's frame and matching vision-token counts; the same seed writes byte-identical files; the held-out
split draws other seeds and other media."""

import pytest

from qwen25vl.data.synth import write_dataset
from qwen25vl.data.synth.verify import file_digests, tiny_processor, verify_split

SMALL = {"grounding": {"size": 224}, "ocr": {"size": 224}, "charts": {"size": 224}, "documents": {"size": 336}, "video": {"size": 112, "max_seconds": 4},
         "agent": {"size": 336}}


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    return tiny_processor(tmp_path_factory.mktemp("tok"))


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_engine_records_load_and_repeat_byte_for_byte(kind, tools, tmp_path):
    processor, encoder = tools
    manifest = write_dataset(kind, tmp_path / "a", train=4, heldout=2, seed=5, progress=False, **SMALL[kind])
    for split in ("train", "heldout"):
        assert verify_split(tmp_path / "a", processor, split, encoder=encoder) == []
    again = write_dataset(kind, tmp_path / "b", train=4, heldout=2, seed=5, progress=False, **SMALL[kind])
    digests = file_digests(tmp_path / "a")
    assert again == manifest and file_digests(tmp_path / "b") == digests
    train, held = manifest["splits"]["train"]["seed_range"], manifest["splits"]["heldout"]["seed_range"]
    assert train[1] <= held[0]
    media = [{v for k, v in digests.items() if k.startswith(f"media/{split}/")} for split in ("train", "heldout")]
    assert media[0] and media[1] and not media[0] & media[1]

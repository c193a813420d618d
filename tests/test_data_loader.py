import json

import pytest

from qwen25vl.data.encoding import Encoder
from qwen25vl.data.loader import PackLoader
from qwen25vl.data.records import iter_records
from qwen25vl.data.toy import toy_records, write_image
from qwen25vl.errors import InputError
from qwen25vl.testing.checkpoint import make_tiny_checkpoint


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny-model training: see conftest.one_thread


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loader")
    encoder = Encoder.from_pretrained(make_tiny_checkpoint(folder / "ckpt"))
    good = toy_records(folder, 12)
    import random

    write_image(folder / "wide.png", 100, 60, random.Random(1))
    (folder / "broken.png").write_bytes(b"not an image")
    image = lambda name: {"type": "image", "image": name}  # noqa: E731
    bad = [
        {"messages": [{"role": "user", "content": [image("missing.png")]}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": [image("broken.png")]}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": [image("wide.png")]},
                      {"role": "assistant", "content": json.dumps({"bbox_2d": [0, 0, 150, 10]})}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
        {"messages": [{"role": "user", "content": "a <|image_pad|> in text"}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": [image("wide.png"), {"type": "text", "text": "w " * 600}]},
                      {"role": "assistant", "content": "x"}]},
    ]
    path = folder / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good + bad) + "{broken json\n")
    return encoder, path


def test_bad_records_are_skipped_and_counted(setup):
    encoder, path = setup
    loader = PackLoader(list(iter_records(path)), encoder, budget=512, packs_per_step=1)
    assert len(loader.records) == 12
    assert dict(loader.skipped) == {"missing or undecodable media": 2, "box out of frame": 1, "empty answer": 1,
                                    "image-token mismatch": 1, "over-long": 1, "bad JSON": 1}


def test_plan_is_deterministic_balanced_and_resumable(setup):
    encoder, path = setup
    records = list(iter_records(path))
    one = PackLoader(records, encoder, budget=512, packs_per_step=2, seed=3)
    assert one.packs(0) == one.packs(0) and one.packs(0) != one.packs(1)
    per_epoch = one.steps_per_epoch()
    assert per_epoch >= 2
    steps = [s for _, s in zip(range(per_epoch + 1), one)]
    assert [(s.epoch, s.index) for s in steps[-2:]] == [(0, per_epoch - 1), (1, 0)]
    assert all(len(s.micro_batches) == 2 and sum(b.num_targets for b in s.micro_batches) == s.global_targets
               for s in steps)
    # two ranks: each gets half the packs and the same global counts; the longer pack goes to rank 0
    ranks = [PackLoader(records, encoder, budget=512, packs_per_step=2, world_size=2, rank=r, seed=3)
             for r in range(2)]
    first = [next(iter(r)) for r in ranks]
    assert [len(s.micro_batches) for s in first] == [1, 1]
    assert first[0].global_targets == first[1].global_targets == steps[0].global_targets
    assert sum(b.num_targets for s in first for b in s.micro_batches) == steps[0].global_targets
    loads = [sum(b.num_tokens for b in s.micro_batches) for s in first]
    assert loads[0] >= loads[1] and sorted(loads) == sorted(b.num_tokens for b in steps[0].micro_batches)
    # resume: a fresh loader at the saved position yields the same next step
    again = PackLoader(records, encoder, budget=512, packs_per_step=2, seed=3)
    again.load_state_dict({"epoch": 0, "step": 1, "packs_per_step": 2})
    nxt = next(iter(again))
    assert [b.input_ids.tolist() for b in nxt.micro_batches] == [b.input_ids.tolist() for b in steps[1].micro_batches]
    with pytest.raises(InputError, match="same global batch"):
        again.load_state_dict({"epoch": 0, "step": 1, "packs_per_step": 8})
    with pytest.raises(InputError, match="multiple of the world size"):
        PackLoader(records, encoder, budget=512, packs_per_step=3, world_size=2)


def test_deal_balances_tokens_over_ranks(setup):
    encoder, path = setup
    loader = PackLoader(list(iter_records(path)), encoder, budget=512, packs_per_step=2, world_size=2)
    loader.lengths, loader.packs_per_step = [3, 5, 4, 3, 5, 4], 6
    ranks = loader.deal([[i] for i in range(6)])
    assert [len(r) for r in ranks] == [3, 3]
    assert [sum(loader.lengths[p[0]] for p in r) for r in ranks] == [12, 12]
    assert ranks[0][0] == [1]  # longest first, ties to the lower rank

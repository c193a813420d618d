import json
import random

import pytest
import torch
import torch.nn.functional as F

from qwen25vl.data.encoding import IGNORE, Encoder, rescale_coordinates
from qwen25vl.data.packing import collate_pack, first_fit_decreasing, fit_to_budget
from qwen25vl.data.records import parse_record, read_records
from qwen25vl.data.toy import write_image, write_toy_dataset
from qwen25vl.errors import InputError
from qwen25vl.model.vlm import Qwen25VL
from qwen25vl.positions import mrope_position_ids
from qwen25vl.processing.image import ResizeInfo
from qwen25vl.testing.checkpoint import init_random_weights, make_tiny_checkpoint, tiny_config
from qwen25vl.train.forward import PackedLoss


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny-model training: see conftest.one_thread


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    checkpoint = make_tiny_checkpoint(folder / "ckpt")
    records = list(read_records(write_toy_dataset(folder / "toy", 6)))
    encoder = Encoder.from_pretrained(checkpoint)
    return encoder, records, [encoder(r) for r in records], folder


def small_model(seed=0):
    # gain 1 (not the checkpoint helper's 2) keeps activations moderate, so fp32 sums in different orders agree
    model = Qwen25VL(tiny_config())
    init_random_weights(model, seed, embed_std=1.0, gain=1.0)
    return model


def test_ffd_places_each_item_once_within_budget_longest_first():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(200)]
    bins = first_fit_decreasing(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(200))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    firsts = [lengths[b[0]] for b in bins]
    assert firsts == sorted(firsts, reverse=True)  # bins are opened in decreasing order of length
    # first fit: replaying the placements longest first, each item went to the first bin with room at that time
    owner = {i: b for b, items in enumerate(bins) for i in items}
    room: list[int] = []
    for i in sorted(range(200), key=lambda i: (-lengths[i], i)):
        fits = [b for b, free in enumerate(room) if free >= lengths[i]]
        expected = fits[0] if fits else len(room)
        assert owner[i] == expected
        if expected == len(room):
            room.append(128)
        room[expected] -= lengths[i]
    assert len(bins) <= (11 * -(-sum(lengths) // 128)) // 9 + 1  # FFD's bound against the volume lower bound
    assert first_fit_decreasing(lengths, 128) == bins


def test_ffd_known_case_and_errors():
    assert first_fit_decreasing([5, 4, 3, 3, 2, 2, 1], 10) == [[0, 1, 6], [2, 3, 4, 5]]
    assert first_fit_decreasing([6, 6, 4, 4], 10) == [[0, 2], [1, 3]]
    with pytest.raises(InputError, match="item 1 has 11 tokens"):
        first_fit_decreasing([3, 11], 10)


def test_pack_positions_are_each_samples_own(tiny):
    encoder, _, samples, _ = tiny
    cfg = encoder.config
    batch = collate_pack(samples)
    bounds = batch.cu_seqlens.tolist()
    assert bounds == [0] + torch.tensor([s.length for s in samples]).cumsum(0).tolist()
    for s, a, b in zip(samples, bounds[:-1], bounds[1:]):
        alone, _ = mrope_position_ids(
            s.input_ids[None], image_grid_thw=s.image_grid_thw, video_grid_thw=s.video_grid_thw,
            second_per_grid_ts=s.second_per_grid_ts, image_token_id=cfg.image_token_id,
            video_token_id=cfg.video_token_id, tokens_per_second=cfg.vision.tokens_per_second)
        assert torch.equal(batch.position_ids[:, 0, a:b], alone[:, 0])
        assert int(batch.position_ids[0, 0, a]) == 0
        assert int(batch.labels[0, b - 1]) == IGNORE  # no target across the boundary
    videos = [s for s in samples if s.video_grid_thw is not None]
    assert sorted(float(s.second_per_grid_ts) for s in videos) == [0.5, 4.0]  # 4 fps and 0.5 fps
    slow = next(s for s in videos if float(s.second_per_grid_ts) == 4.0)
    pads = slow.input_ids == cfg.video_token_id
    assert slow.position_ids[0, pads].unique().numel() == 2  # two frame groups 8 ids (4 s * 2) apart
    assert int(slow.position_ids[0, pads].max() - slow.position_ids[0, pads].min()) == 8


def test_packed_loss_and_gradients_equal_one_by_one(tiny):
    _, _, samples, _ = tiny
    assert any(s.image_grid_thw is not None and len(s.image_grid_thw) == 2 for s in samples)
    model = small_model()
    packed = PackedLoss(model)(collate_pack(samples))
    packed.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    total = 0.0
    for s in samples:
        out = model(s.input_ids[None], pixel_values=s.pixel_values, image_grid_thw=s.image_grid_thw,
                    pixel_values_videos=s.pixel_values_videos, video_grid_thw=s.video_grid_thw,
                    second_per_grid_ts=s.second_per_grid_ts)
        assert torch.equal(out.position_ids[:, 0], s.position_ids)
        loss = F.cross_entropy(out.logits[0], s.labels, ignore_index=IGNORE, reduction="sum")
        loss.backward()
        total += loss.item()
    n = sum(s.num_targets for s in samples)
    assert abs(packed.item() - total) / n < 1e-5  # token-weighted mean loss
    for name, p in model.named_parameters():
        scale = p.grad.abs().max()
        assert scale > 0, name
        assert (grads[name] - p.grad).abs().max() <= 1e-5 * scale, name


def test_pack_without_images_still_runs_the_tower(tiny):
    _, _, samples, _ = tiny
    text_only = [s for s in samples if s.image_grid_thw is None and s.video_grid_thw is None]
    model = small_model()
    PackedLoss(model)(collate_pack(text_only)).backward()
    grad = model.visual.blocks[0].attn.qkv.weight.grad
    assert grad is not None and float(grad.abs().max()) == 0.0  # took part, contributed nothing


def test_over_long_rule(tiny):
    _, _, samples, _ = tiny
    text = next(s for s in samples if s.vision_end == 0)
    cut = fit_to_budget(text, text.length - 3)
    assert cut.length == text.length - 3 and torch.equal(cut.position_ids, text.position_ids[:, :-3])
    assert fit_to_budget(text, text.length) is text
    image = next(s for s in samples if s.image_grid_thw is not None)
    assert image.vision_end > 0
    with pytest.raises(InputError, match="over-long"):
        fit_to_budget(image, image.vision_end - 1)  # through the vision block
    first_target = int(torch.nonzero(text.labels != IGNORE)[0])
    with pytest.raises(InputError, match="over-long"):
        fit_to_budget(text, first_target)  # no answer left


def test_grounding_rescaled_to_resized_frame():
    resize = ResizeInfo(original_size=(100, 60), resized_size=(112, 56))
    out = rescale_coordinates('[{"bbox_2d": [10, 10, 90, 50], "label": "a"}, {"point_2d": [50.0, 30]}]', resize)
    assert out == '[{"bbox_2d": [11, 9, 101, 47], "label": "a"}, {"point_2d": [56, 28]}]'
    with pytest.raises(InputError, match="outside the 100x60 image"):
        rescale_coordinates('{"bbox_2d": [10, 10, 120, 50]}', resize, "r")


def test_encoder_rescales_answers_after_their_image(tiny):
    encoder, _, _, folder = tiny
    write_image(folder / "g" / "w.png", 100, 60, random.Random(0))
    answer = json.dumps([{"bbox_2d": [10, 10, 90, 50], "label": "cat"}])
    record = parse_record({"messages": [
        {"role": "user", "content": [{"type": "image", "image": "w.png"}, {"type": "text", "text": "cat?"}]},
        {"role": "assistant", "content": answer}]}, root=folder / "g")
    sample = encoder(record)
    assert tuple(sample.image_grid_thw[0].tolist()) == (1, 4, 8)  # 56 x 112
    targets = sample.labels[sample.labels != IGNORE].tolist()
    assert "[11, 9, 101, 47]" in encoder.tokenizer.decode(targets)
    record.messages[1]["content"] = json.dumps([{"bbox_2d": [10, 10, 101, 50]}])
    with pytest.raises(InputError, match="outside"):
        encoder(record)


def test_missing_media_names_the_record(tiny):
    encoder, _, _, folder = tiny
    record = parse_record({"messages": [
        {"role": "user", "content": [{"type": "image", "image": "nope.png"}]},
        {"role": "assistant", "content": "x"}]}, root=folder, where="t.jsonl:9")
    with pytest.raises(InputError, match="t.jsonl:9.*content\\[0\\]"):
        encoder(record)


def test_per_item_pixel_budget_wins_over_the_default(tiny):
    encoder, _, _, folder = tiny
    write_image(folder / "g" / "big.png", 224, 224, random.Random(2))
    part = {"type": "image", "image": "big.png"}
    make = lambda p: parse_record({"messages": [{"role": "user", "content": [p]},  # noqa: E731
                                                {"role": "assistant", "content": "x"}]}, root=folder / "g")
    small = Encoder(encoder.tokenizer, encoder.config, encoder.image_config, max_pixels=112 * 112)
    assert small(make(part)).image_grid_thw.tolist() == [[1, 8, 8]]
    assert small(make({**part, "max_pixels": 224 * 224})).image_grid_thw.tolist() == [[1, 16, 16]]
    assert encoder(make({**part, "max_pixels": 56 * 56})).image_grid_thw.tolist() == [[1, 4, 4]]


def test_collate_rejects_an_empty_pack():
    with pytest.raises(InputError, match="empty pack"):
        collate_pack([])


def test_labels_are_the_next_token_where_the_template_trains(tiny):
    from qwen25vl.processing.chat_template import render

    encoder, records, samples, _ = tiny
    text = next(i for i, s in enumerate(samples) if s.vision_end == 0)
    rendered = render(records[text].messages, tokenizer=encoder.tokenizer)
    ids, mask = torch.tensor(rendered.input_ids), torch.tensor(rendered.loss_mask, dtype=torch.bool)
    sample = samples[text]
    assert torch.equal(sample.input_ids, ids)
    trained = torch.nonzero(sample.labels != IGNORE).flatten()
    assert torch.equal(trained + 1, torch.nonzero(mask).flatten())  # position i is trained on token i + 1
    assert torch.equal(sample.labels[trained], ids[trained + 1])
    cfg = encoder.config
    for s in samples:
        if s.vision_end:
            assert int(s.input_ids[s.vision_end - 1]) == cfg.vision_end_token_id
            assert not bool(((s.input_ids[s.vision_end:] == cfg.image_token_id)
                             | (s.input_ids[s.vision_end:] == cfg.video_token_id)).any())

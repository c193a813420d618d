import os

import pytest
import torch

# Two cores are shared by everything in CI: a fixed, small thread count keeps timings sane and results stable.
torch.set_num_threads(int(os.environ.get("QWEN25VL_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: a tiny model's small ops run several times faster on one thread than on two
    when the other core is busy (shared CI); training tests opt in with `pytestmark`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_run(tmp_path):
    """(a small random Qwen2.5-VL in fp32, its tokenizer folder, a 112 px grounding dataset): the tiny recipe's
    tests train it for a few steps."""
    from qwen25vl.config import Qwen25VLConfig, TextConfig, VisionConfig
    from qwen25vl.data.synth import write_dataset
    from qwen25vl.model.vlm import Qwen25VL
    from qwen25vl.testing.checkpoint import init_random_weights
    from qwen25vl.testing.tokenizer import write_preprocessor_config, write_tiny_tokenizer

    data = tmp_path / "data"
    write_dataset("grounding", data, train=6, heldout=12, seed=1, progress=False, size=112, max_objects=2)
    base = tmp_path / "base"
    write_tiny_tokenizer(base)
    write_preprocessor_config(base)
    text = TextConfig(vocab_size=544, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, mrope_section=(2, 3, 3), tie_word_embeddings=True)
    vision = VisionConfig(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, fullatt_block_indexes=(1,),
                          out_hidden_size=32)
    config = Qwen25VLConfig(text=text, vision=vision, image_token_id=524, video_token_id=525,
                            vision_start_token_id=521, vision_end_token_id=522, bos_token_id=512, eos_token_id=514)
    torch.manual_seed(0)
    vlm = Qwen25VL(config)
    if any(p.is_meta for p in vlm.parameters()):
        vlm = vlm.to_empty(device="cpu")
    init_random_weights(vlm, 0, embed_std=1.0, gain=1.0)
    return vlm.float(), base, data

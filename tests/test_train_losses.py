import pytest
import torch
import torch.nn.functional as F

from qwen25vl.train.losses import IGNORE, chunked_cross_entropy, full_cross_entropy, token_mean


def _inputs(rows=37, width=16, vocab=50, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, width, generator=gen, requires_grad=True)
    weight = torch.randn(vocab, width, generator=gen, requires_grad=True)
    labels = torch.randint(0, vocab, (rows,), generator=gen)
    labels[torch.rand(rows, generator=gen) < 0.4] = IGNORE
    return hidden, weight, labels


@pytest.mark.parametrize("chunk", [5, 1024])
def test_chunked_equals_full_loss_and_gradients(chunk):
    hidden, weight, labels = _inputs()
    full = full_cross_entropy(hidden, weight, labels)
    gh, gw = torch.autograd.grad(full * 0.3, (hidden, weight))
    chunked = chunked_cross_entropy(hidden, weight, labels, chunk=chunk)
    ch, cw = torch.autograd.grad(chunked * 0.3, (hidden, weight))
    assert torch.allclose(chunked, full, rtol=1e-6, atol=1e-6)
    assert torch.allclose(ch, gh, atol=1e-6) and torch.allclose(cw, gw, atol=1e-6)
    assert bool((ch[labels == IGNORE] == 0).all()) and float(ch.abs().max()) > 0.01


def test_chunked_gradient_reaches_hidden_only_when_weight_frozen():
    hidden, weight, labels = _inputs()
    weight = weight.detach()
    loss = chunked_cross_entropy(hidden, weight, labels, chunk=8)
    (g,) = torch.autograd.grad(loss, hidden)
    assert torch.allclose(g, torch.autograd.grad(full_cross_entropy(hidden, weight, labels), hidden)[0], atol=1e-6)


def test_global_token_mean_over_two_micro_batches():
    # micro-batch A: 2 targets with losses, B: 5 targets; the step loss is the mean over all 7 tokens
    a, b = _inputs(rows=6, seed=1), _inputs(rows=12, seed=2)
    na, nb = int((a[2] != IGNORE).sum()), int((b[2] != IGNORE).sum())
    assert na != nb
    token_losses = torch.cat([
        F.cross_entropy(x[0] @ x[1].T, x[2], ignore_index=IGNORE, reduction="none")[x[2] != IGNORE] for x in (a, b)])
    by_hand = token_losses.sum() / (na + nb)
    shares = [token_mean(chunked_cross_entropy(*x), na + nb) for x in (a, b)]
    assert torch.allclose(shares[0] + shares[1], by_hand, rtol=1e-6)
    mean_of_means = (token_losses[:na].mean() + token_losses[na:].mean()) / 2
    assert not torch.allclose(by_hand, mean_of_means, rtol=1e-3)
    # two ranks holding one micro-batch each, with the same head: averaging their gradients (what data-parallel
    # reduction does) of the world-size-scaled shares gives the gradient of the global mean
    weight = a[1].detach().clone().requires_grad_(True)
    ranks = [torch.autograd.grad(token_mean(chunked_cross_entropy(x[0], weight, x[2]), na + nb, 2), weight)[0]
             for x in (a, b)]
    whole = torch.autograd.grad(full_cross_entropy(torch.cat([a[0], b[0]]), weight, torch.cat([a[2], b[2]]))
                                / (na + nb), weight)[0]
    assert torch.allclose((ranks[0] + ranks[1]) / 2, whole, atol=1e-6)
    with pytest.raises(ValueError):
        token_mean(torch.tensor(1.0), 0)

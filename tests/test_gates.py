"""N:M Gumbel gates: candidate rows, group parsing, sampling, straight-through gradients, EMA, schedules."""
import math

import pytest
import torch

from tinyfusion.diffusion import create_objective
from tinyfusion.models.dit import DiT
from tinyfusion.models.gates import NMGates, candidate_matrix, parse_groups, tau_schedule


def tiny_dit(depth=4, seed=0):
    """A small DiT whose blocks and head are not the zero-initialised identities of a fresh DiT."""
    torch.manual_seed(seed)
    m = DiT(input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=depth, num_heads=2, num_classes=10)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "adaLN_modulation" in name or "final_layer.linear" in name:
                p.normal_(0, 0.1)
    return m


def test_candidate_matrix_is_the_papers():
    assert candidate_matrix(2, 3).tolist() == [[1, 1, 0], [1, 0, 1], [0, 1, 1]]
    assert candidate_matrix(1, 2).tolist() == [[1, 0], [0, 1]]
    for n, m in [(2, 4), (7, 14), (3, 4)]:
        c = candidate_matrix(n, m)
        assert c.shape == (math.comb(m, n), m)
        assert (c.sum(1) == n).all()
        assert len({tuple(r) for r in c.tolist()}) == len(c)


def test_parse_groups():
    assert parse_groups("1:2", 28) == [(1, 2)] * 14
    assert parse_groups(" 7:14 ", 28) == [(7, 14)] * 2
    assert parse_groups([[2, 4], [3, 4]], 8) == [(2, 4), (3, 4)]
    assert parse_groups([(1, 2)] * 14, 28) == [(1, 2)] * 14
    assert parse_groups("[[2, 4], [3, 4]]", 8) == [(2, 4), (3, 4)]
    with pytest.raises(ValueError, match="cover 8 layers but the model has 28"):
        parse_groups([[2, 4], [3, 4]], 28)
    with pytest.raises(ValueError, match="not a multiple of 3"):
        parse_groups("1:3", 28)
    with pytest.raises(ValueError, match="need N <= M"):
        parse_groups("3:2", 28)
    with pytest.raises(ValueError, match="N and M must be >= 1"):
        parse_groups([[0, 2], [1, 2]], 4)
    with pytest.raises(ValueError, match="not of the form"):
        parse_groups("half", 28)


def test_samples_are_hard_rows_with_the_right_frequencies():
    gates = NMGates(depth=6, groups="1:3")
    target = torch.tensor([0.6, 0.3, 0.1])
    with torch.no_grad():  # probs = softmax(scale * logits)
        gates.logits[0].copy_(target.log() / gates.scale)
    for k, p in enumerate(gates.probs()):
        if k == 0:
            assert torch.allclose(p, target, atol=1e-5)
    n = 20000
    mask = gates.sample(n, tau=0.7, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (n, 6) and mask.requires_grad
    assert set(mask.detach().unique().tolist()) <= {0.0, 1.0}
    assert (mask[:, :3].sum(1) == 1).all() and (mask[:, 3:].sum(1) == 1).all()
    freq = mask[:, :3].detach().mean(0)
    # hard Gumbel-softmax samples are exact categorical draws whatever tau is
    sd = (target * (1 - target) / n).sqrt()
    assert ((freq - target).abs() < 4 * sd).all(), (freq, target)
    chi2 = float((n * (freq - target) ** 2 / target).sum())
    assert chi2 < 13.8  # chi-square, 2 dof, p = 0.001
    # the untouched block has equal logits: uniform
    assert ((mask[:, 3:].detach().mean(0) - 1 / 3).abs() < 0.02).all()


def test_mask_rows_are_candidate_rows():
    gates = NMGates(depth=8, groups=[[2, 4], [3, 4]])
    mask = gates.sample(64, tau=1.0).detach()
    rows1 = {tuple(r) for r in candidate_matrix(2, 4).float().tolist()}
    rows2 = {tuple(r) for r in candidate_matrix(3, 4).float().tolist()}
    assert all(tuple(r) in rows1 for r in mask[:, :4].tolist())
    assert all(tuple(r) in rows2 for r in mask[:, 4:].tolist())
    soft = gates.sample(8, tau=1.0, hard=False)
    assert torch.allclose(soft[:, :4].sum(1), torch.full((8,), 2.0), atol=1e-5)


def _loss(model, gates, x, t, y, noise, mask):
    d = create_objective()
    return d.training_losses(model, x, t, dict(y=y, mask=mask), noise=noise)["loss"].mean()


def test_straight_through_gradients_pass_through_dropped_layers():
    model = tiny_dit(depth=4).eval()  # eval: no random label dropout between the two gradient passes
    gates = NMGates(depth=4, groups="1:2")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 1, 8, 8, generator=g), torch.randint(10, (6,), generator=g)
    t, noise = torch.randint(1000, (6,), generator=g), torch.randn(6, 1, 8, 8, generator=g)

    def grads(mdl):
        gates.zero_grad()
        mdl.zero_grad()
        mask = gates.sample(6, tau=1.0, generator=torch.Generator().manual_seed(3))
        mask.retain_grad()
        _loss(mdl, gates, x, t, y, noise, mask).backward()
        return mask, [lg.grad.clone() for lg in gates.logits]

    mask, logit_grads = grads(model)
    hard = mask.detach()
    assert all(gr.abs().sum() > 0 for gr in logit_grads)          # every block's logits learn
    dropped = (hard == 0).nonzero()
    assert len(dropped) > 0
    s, i = dropped[0].tolist()
    assert mask.grad[s, i] != 0  # the gradient reaches the mask of a dropped layer through its output
    # a layer dropped for some samples and kept for others still receives weight gradients
    mixed = [j for j in range(4) if 0 < hard[:, j].sum() < 6]
    assert mixed
    for j in mixed:
        assert model.blocks[j].mlp.fc1.weight.grad.abs().sum() > 0
    # changing a dropped layer changes the logits' gradient but not the forward output
    other = tiny_dit(depth=4).eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in other.blocks[i].parameters():
            p.add_(0.5 * torch.randn_like(p))
    only_drops_i = torch.ones(4)
    only_drops_i[i] = 0
    with torch.no_grad():
        same = torch.allclose(model(x, t, y, mask=only_drops_i), other(x, t, y, mask=only_drops_i))
    assert same
    _, other_grads = grads(other)
    assert not torch.allclose(other_grads[i // 2], logit_grads[i // 2])


def test_tau_schedule_and_ema():
    assert tau_schedule(0, 100) == pytest.approx(4.0)
    assert tau_schedule(99, 100) == pytest.approx(0.1)
    assert tau_schedule(200, 100) == pytest.approx(0.1)
    taus = [tau_schedule(s, 50, 2.0, 0.5) for s in range(50)]
    assert taus[0] == 2.0 and taus[-1] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(taus, taus[1:]))

    gates = NMGates(depth=4, groups="1:2")
    assert torch.equal(gates.ema_logits(0), gates.logits[0].detach())
    with torch.no_grad():
        gates.logits[0].copy_(torch.tensor([0.5, -0.5]))
    before = (gates.ema_logits(0) - gates.logits[0]).abs().sum()
    gates.update_ema(0.9)
    after = (gates.ema_logits(0) - gates.logits[0]).abs().sum()
    assert after < before
    assert torch.allclose(gates.ema_logits(0), 0.9 * torch.tensor([0.02, 0.02]) + 0.1 * torch.tensor([0.5, -0.5]))


def test_decision_history_and_state():
    gates = NMGates(depth=8, groups="2:4")
    with torch.no_grad():
        gates.logits[0].zero_()
        gates.logits[0][candidate_matrix(2, 4).tolist().index([0, 1, 0, 1])] = 0.1
        gates.logits[1].zero_()
        gates.logits[1][candidate_matrix(2, 4).tolist().index([1, 0, 0, 1])] = 0.1
    kept, conf = gates.decision(use_ema=False)
    assert kept == [1, 3, 4, 7]
    assert len(conf) == 2 and all(c > 0.99 for c in conf)
    # the EMA has not moved yet: ties resolve to the first row
    assert gates.decision(use_ema=True)[0] == [0, 1, 4, 5]
    entry = gates.record(5, tau=1.5)
    assert gates.history[-1] is entry and entry["step"] == 5 and entry["tau"] == 1.5
    assert len(entry["probs"]) == 2 and len(entry["probs"][0]) == 6
    assert abs(sum(entry["probs"][0]) - 1) < 1e-6
    assert len(entry["layer_probs"]) == 8 and abs(sum(entry["layer_probs"]) - 4) < 1e-5
    assert entry["layer_probs"][1] > 0.99 and entry["layer_probs"][0] < 0.01
    big = NMGates(depth=28, groups="7:14").record(0)
    assert big["probs"] is None and len(big["layer_probs"]) == 28
    clone = NMGates(depth=8, groups="2:4")
    clone.load_state_dict(gates.state_dict())
    assert clone.decision(use_ema=False) == gates.decision(use_ema=False)
    assert gates.n_keep == 4

"""BinaryViT: BiFC and binary attention against closed forms, Table 4 counts, Table 3 switches."""
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import onebit
from onebit.analysis import PAPER_VIT_FLOPS, capability, complexity
from onebit.binarize import LearnedStep
from onebit.layers.attention import BinaryAttention
from onebit.layers.bifc import BiFC, FeatureResidual
from onebit.models.binaryvit import BinaryViT, Block, PatchMerge, PoolBranches



def bn_eval(x, n):
    """An eval BatchNorm over the last (feature) dimension, written out."""
    return (x - n.running_mean) / torch.sqrt(n.running_var + n.eps) * n.weight + n.bias


def bn_train(x, n):
    """A training-mode BatchNorm over the last dimension, written out: the batch statistics over all
    tokens (biased variance) normalise, the running statistics play no part."""
    flat = x.reshape(-1, x.shape[-1])
    return (x - flat.mean(0)) / torch.sqrt(flat.var(0, unbiased=False) + n.eps) * n.weight + n.bias


def sgn(x):
    return torch.where(x >= 0, 1.0, -1.0)


def sgn_st(x):
    """sgn(x) forward; backward the default estimator (clipped STE, c = 1): g * 1{|x| <= 1}.  The
    straight-through term x * mask - (x * mask).detach() is exactly 0 forward, mask backward."""
    through = x * (x.abs() <= 1.0)
    return sgn(x).detach() + (through - through.detach())


def rprelu(x, r):
    """RPReLU written out (ReActNet Eq. 4): x - gamma, slope * (x - gamma) below 0, then + zeta."""
    y = x - r.shift_in
    return torch.where(y >= 0, y, r.slope * y) + r.shift_out


def bifc_ref(f, x, bn):
    """BiFC (Eq. 1-3, equal widths) written out with straight-through signs; ``bn``: bn_eval or bn_train."""
    w = f.linear.weight.detach()
    wb = sgn(w - w.mean(1, keepdim=True)) * w.abs().mean(1, keepdim=True)
    return rprelu(bn(sgn_st(x + f.linear.input_binarizer.shift.bias) @ wb.T, f.norm) + x, f.act)


def attention_ref(att, h, bn):
    """Binary MHA (Eq. 6-8, R = 1) written out with straight-through signs and a straight-through
    Eq. 8 quantizer whose backward is 1{0 <= A / alpha_P <= 1}."""
    b, n, c = h.shape
    d = c // att.heads
    q, k, v = (bifc_ref(f, h, bn) for f in (att.q, att.k, att.v))
    qb, kb, vb = (sgn_st(t + s.shift.bias).view(b, n, att.heads, d).transpose(1, 2)
                  for t, s in ((q, att.sign_q), (k, att.sign_k), (v, att.sign_v)))
    a = torch.softmax(qb @ kb.transpose(-2, -1) / math.sqrt(d), -1)
    s = att.prob.step.detach()
    through = a * ((a / s >= 0) & (a / s <= 1))
    p = (s * (a / s).clamp(0, 1).round()).detach() + (through - through.detach())
    ctx = (p @ vb).transpose(1, 2).reshape(b, n, c)
    return bifc_ref(att.proj, rprelu(bn(ctx, att.norm) + q + k + v, att.act), bn)


def test_feature_residual_modes():
    x = torch.arange(12.0).view(1, 2, 6)
    assert torch.equal(FeatureResidual(6, 6)(x), x)
    assert torch.equal(FeatureResidual(6, 18)(x), torch.cat([x, x, x], -1))
    avg = FeatureResidual(6, 3)(x)  # in = 2 x out: mean of the two consecutive groups of 3
    assert torch.allclose(avg, (x[..., :3] + x[..., 3:]) / 2)
    with pytest.raises(ValueError, match="in=6, out=4"):
        FeatureResidual(6, 4)


def test_bifc_closed_form():
    torch.manual_seed(0)
    f = BiFC(8, 16).eval()
    with torch.no_grad():
        f.linear.input_binarizer.shift.bias.uniform_(-0.2, 0.2)
        f.norm.running_mean.uniform_(-1, 1)
        f.norm.running_var.uniform_(0.5, 2)
        f.act.slope.uniform_(0.1, 0.4)
    x = torch.randn(2, 5, 8)
    w = f.linear.weight.detach()
    wb = sgn(w - w.mean(1, keepdim=True)) * w.abs().mean(1, keepdim=True)  # Eq. 1
    y = F.linear(sgn(x + f.linear.input_binarizer.shift.bias), wb)
    y = F.batch_norm(y.reshape(-1, 16), f.norm.running_mean, f.norm.running_var, f.norm.weight, f.norm.bias,
                     eps=f.norm.eps).reshape(2, 5, 16) + torch.cat([x, x], -1)        # Eq. 2-3
    y = F.prelu(y.reshape(-1, 16), f.act.slope).reshape(2, 5, 16)
    assert torch.allclose(f(x), y, atol=1e-5)


@pytest.mark.parametrize("alpha_grad", ["lsq", "bit"])
def test_attention_probabilities_are_zero_or_alpha_and_the_step_gradient(alpha_grad):
    """Inside attention, P is 0 or alpha_P (both occur at this alpha_P), and alpha_P's gradient is
    LSQ's closed form over the (batch, heads, N, M) softmax: sum g * (round(q) - q | 1 | 0) with
    q = A / alpha_P, scaled by 1 / sqrt(heads * N * M) for "lsq" and unscaled for "bit".  The
    quantizer passes g * 1{0 <= q <= 1} to its input, and the gradient into the attention input h
    is autograd's through attention_ref (training-mode BN, clipped-STE signs at |x| <= 1)."""
    torch.manual_seed(0)
    att = BinaryAttention(16, 2, alpha_grad=alpha_grad)
    with torch.no_grad():
        att.prob.step.fill_(0.12)  # softmax over 9 keys: values on both sides of alpha/2 and above alpha
        for m in att.modules():
            if isinstance(m, onebit.binarize.LearnableBias):
                m.bias.uniform_(-0.3, 0.3)
            elif isinstance(m, onebit.binarize.RPReLU):
                m.shift_in.uniform_(-0.3, 0.3), m.slope.uniform_(0.1, 0.4), m.shift_out.uniform_(-0.3, 0.3)
            elif isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 2), m.bias.uniform_(-1, 1)
    seen = {}

    def hook(m, i, o):
        seen["a"] = i[0].detach()
        i[0].register_hook(lambda g: seen.setdefault("g_in", g))
        o.register_hook(lambda g: seen.setdefault("g", g))
        seen["p"] = o

    att.prob.register_forward_hook(hook)
    h = torch.randn(2, 9, 16, requires_grad=True)
    out = att(h, (3, 3))
    alpha, p = att.prob.step.item(), seen["p"]
    assert torch.all((p == 0) | ((p - alpha).abs() < 1e-7))
    assert (p == 0).any() and (p > 0).any() and (seen["a"] > alpha).any()
    g_out = torch.randn_like(out)
    (out * g_out).sum().backward()
    q = seen["a"] / alpha
    dstep = torch.where((q >= 0) & (q <= 1), q.round() - q, torch.where(q > 1, 1.0, 0.0))
    scale = 1 / math.sqrt(q[0].numel()) if alpha_grad == "lsq" else 1.0
    expect = (seen["g"] * dstep).sum() * scale
    assert att.prob.step.grad.item() == pytest.approx(expect.item(), rel=1e-5, abs=1e-8)
    # (a) the quantizer's input gradient: the incoming one where 0 <= A / alpha_P <= 1, else 0
    assert torch.equal(seen["g_in"], seen["g"] * ((q >= 0) & (q <= 1)))
    # (b) h's gradient: autograd through the independent forward
    h2 = h.detach().requires_grad_()
    ref = attention_ref(att, h2, bn_train)
    assert torch.allclose(ref, out, atol=1e-5)
    (grad_ref,) = torch.autograd.grad(ref, h2, g_out)
    assert grad_ref.abs().max() > 0.1 and torch.allclose(h.grad, grad_ref, rtol=1e-5, atol=1e-5)
    assert att.sign_q.shift.bias.grad is not None


@pytest.mark.parametrize("grad", ["lsq", "bit"])
def test_learned_step_with_three_levels(grad):
    """LearnedStep with Q_p = 3, s = 0.5 on a batch of two samples of 5: y = s round(clamp(x / s, 0, 3));
    x's gradient g * 1{0 <= x / s <= 3}; s's gradient LSQ's sum g * (round(q) - q inside, Q_p above,
    0 below), times 1 / sqrt(N Q_p) with N = 5 the elements of one sample ("lsq"), or 1 ("bit")."""
    row = [-0.1, 0.2, 0.7, 1.4, 2.0]  # q = x / s = -0.2, 0.4, 1.4, 2.8, 4.0: below, inside x3, above
    x = torch.tensor([row, [v / 2 for v in row]], requires_grad=True)
    g = torch.tensor([[0.3, -1.2, 0.7, 2.0, -0.5], [1.1, 0.4, -0.9, 0.6, 1.5]])
    lsq = LearnedStep(0.5, levels=3, grad=grad)
    y = lsq(x)
    assert y[0].tolist() == [0.0, 0.0, 0.5, 1.5, 1.5]
    assert torch.equal(y, 0.5 * torch.round(torch.clamp(x.detach() / 0.5, 0, 3)))
    y.backward(g)
    assert torch.equal(x.grad, g * torch.tensor([[0.0, 1, 1, 1, 0], [0, 1, 1, 1, 1]]))
    dstep = 0.0
    for xs, gs in zip(x.tolist(), g.tolist()):
        for v, gv in zip(xs, gs):
            q = v / 0.5
            dstep += gv * ((round(q) - q) if 0 <= q <= 3 else (3.0 if q > 3 else 0.0))
    scale = 1 / math.sqrt(5 * 3) if grad == "lsq" else 1.0
    assert lsq.step.grad.item() == pytest.approx(dstep * scale, rel=1e-5)


@pytest.mark.parametrize("raw", [0.0, -0.003])
def test_learned_step_floors_a_non_positive_step(raw):
    """A step the optimizer pushed to 0 or below is used as MIN_STEP = 1e-5 in the forward pass (the
    authors' floor), and its gradient, computed at 1e-5, still reaches the raw parameter: here every
    q = x / 1e-5 but the last is above Q_p = 1, so y = 1e-5 where x > 0, and d step = sum of g over
    those entries, plus (round(q) - q) g = 0.3 g for the last, inside at q = 0.7 (bit: no scale).
    Without the floor a negative step zeroes every output and its gradient."""
    from onebit.binarize.scaling import MIN_STEP
    lsq = LearnedStep(0.005, levels=1, grad="bit")
    with torch.no_grad():
        lsq.step.fill_(raw)
    x = torch.tensor([[0.02, 0.0, 0.3, 0.1, 0.7e-5]])
    g = torch.tensor([[1.0, 5.0, -0.25, 2.0, 4.0]])
    y = lsq(x)
    assert MIN_STEP == 1e-5
    assert torch.allclose(y, torch.tensor([[1e-5, 0.0, 1e-5, 1e-5, 1e-5]]), rtol=0, atol=1e-12)
    y.backward(g)
    assert lsq.step.grad.item() == pytest.approx(1.0 - 0.25 + 2.0 + 0.3 * 4.0, rel=1e-5)
    assert lsq.effective_step().item() == pytest.approx(1e-5)


def randomise_shifts(att):
    """Distinct RSign shifts for Q, K and V (three draws of uniform(-0.3, 0.3)) and a random RPReLU."""
    with torch.no_grad():
        for i, s in enumerate((att.sign_q, att.sign_k, att.sign_v)):
            gen = torch.Generator().manual_seed(10 + i)
            s.shift.bias.copy_(torch.empty(att.dim).uniform_(-0.3, 0.3, generator=gen))
        att.act.shift_in.uniform_(-0.3, 0.3), att.act.slope.uniform_(0.1, 0.4), att.act.shift_out.uniform_(-0.3, 0.3)


@pytest.mark.parametrize("alpha_grad", ["lsq", "bit"])
def test_attend_sums_codes_exactly_with_the_plain_products_gradients(alpha_grad):
    """attend takes P V as alpha_P ((P / alpha_P) V): the same values as float64's exact product, and
    the gradients of the plain float32 P V (into the scores and alpha_P) to rounding."""
    torch.manual_seed(2)
    att = BinaryAttention(32, 2, alpha_grad=alpha_grad)
    with torch.no_grad():
        att.prob.step.fill_(0.03)
    scores = (torch.randint(-16, 17, (2, 2, 40, 40)) * 2).float().requires_grad_()  # Q K^T: even integers
    vb = torch.where(torch.rand(2, 2, 40, 16) < 0.5, -1.0, 1.0)
    att.probs = lambda a: att.prob(torch.softmax(a / 4.0, dim=-1))  # attend on given scores
    ident = torch.eye(40).expand(2, 2, 40, 40)  # qb = ident with kb = scores^T: qb kb^T = scores
    out = att.attend(ident, scores.transpose(-2, -1), vb)
    p = att.prob(torch.softmax(scores / 4.0, dim=-1))
    assert (p > 0).any() and (p == 0).any()
    assert torch.equal(out, (p.double() @ vb.double()).float())
    g = torch.randn_like(out)
    ours = torch.autograd.grad((out * g).sum(), (scores, att.prob.step))
    plain = torch.autograd.grad(((p @ vb) * g).sum(), (scores, att.prob.step))
    for a, b in zip(ours, plain):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_attention_compiles_without_graph_breaks():
    """The exact P V path (binary_probs: an exact type check on the quantizer) traces in one graph, as
    the compiled BinaryViT recipes need; with Bi-SR-MHA too."""
    import torch._dynamo as dynamo
    torch.manual_seed(0)
    for sr in (1, 2):
        att = BinaryAttention(16, 2, sr_ratio=sr)
        assert att.binary_probs
        assert dynamo.explain(att)(torch.randn(2, 16, 16), (4, 4)).graph_break_count == 0


def test_attention_products_closed_form():
    """Eq. 6-8 and the head's RPReLU(BN(P sgn(V + b_v)) + Q + K + V) written out, with a distinct
    random RSign shift on each of Q, K, V and a random RPReLU (gamma, slope, zeta)."""
    torch.manual_seed(1)
    att = BinaryAttention(8, 2, alpha_grad="bit").eval()
    n = att.norm
    with torch.no_grad():
        att.prob.step.fill_(0.3)  # over 4 keys: some probabilities round to 0, some to alpha, some clip
        n.running_mean.uniform_(-1, 1), n.running_var.uniform_(0.5, 3), n.weight.uniform_(0.5, 2)
        n.bias.uniform_(-1, 1)
    randomise_shifts(att)
    h = torch.randn(3, 4, 8)
    q, k, v = att.q(h), att.k(h), att.v(h)
    qb, kb, vb = (sgn(t + s.shift.bias).view(3, 4, 2, 4).transpose(1, 2)
                  for t, s in ((q, att.sign_q), (k, att.sign_k), (v, att.sign_v)))
    a = torch.softmax(qb @ kb.transpose(-2, -1) / math.sqrt(4), -1)                       # Eq. 6-7
    s = att.prob.step.item()
    p = s * (a / s).clamp(0, 1).round()                                                   # Eq. 8
    assert (p == 0).any() and (p == s).any() and (a > s).any()  # every branch of Eq. 8 taken
    for t, m in ((q, att.sign_q), (k, att.sign_k), (v, att.sign_v)):  # each shift flips some sign
        assert (sgn(t + m.shift.bias) != sgn(t)).any()
    ctx = (p @ vb).transpose(1, 2).reshape(3, 4, 8)
    ctx = bn_eval(ctx, n)
    expect = att.proj(rprelu(ctx + q + k + v, att.act))
    with torch.no_grad():
        assert torch.allclose(att(h, (2, 2)), expect, atol=1e-5)


@pytest.mark.parametrize("cls", [0, 1])
def test_spatial_reduction_attention_closed_form(cls):
    """Bi-SR-MHA (Eq. 14-15) on a 4x4 token grid with R = 2, written out token by token: K and V
    from BiFC_R of the 2x2 block means; the resized K and V give token (i, j) the values of block
    (i // 2, j // 2).  Distinct random RSign shifts on Q, K, V, random RPReLU and BN statistics.
    With a cls token before the grid, it is one more key and value, not pooled and not resized."""
    torch.manual_seed(3)
    att = BinaryAttention(8, 2, sr_ratio=2, alpha_grad="bit").eval()
    n = att.norm
    with torch.no_grad():
        att.prob.step.fill_(0.3)
        n.running_mean.uniform_(-1, 1), n.running_var.uniform_(0.5, 3), n.weight.uniform_(0.5, 2)
        n.bias.uniform_(-1, 1)
    randomise_shifts(att)
    n_tok, n_key = 16 + cls, 4 + cls
    h = torch.randn(1, n_tok, 8)
    block = lambda i, j: cls + (i // 2) * 2 + j // 2  # noqa: E731
    means = h[:, :n_key].clone()  # the cls token (when there is one) as it is, then the block means
    means[:, cls:] = 0
    for t in range(16):
        means[0, block(t // 4, t % 4)] += h[0, cls + t] / 4
    kv = att.reduce(means)                                                               # Eq. 14
    q, k, v = att.q(h), att.k(kv), att.v(kv)
    qb = sgn(q + att.sign_q.shift.bias).view(1, n_tok, 2, 4).transpose(1, 2)
    kb = sgn(k + att.sign_k.shift.bias).view(1, n_key, 2, 4).transpose(1, 2)
    vb = sgn(v + att.sign_v.shift.bias).view(1, n_key, 2, 4).transpose(1, 2)
    for t, m in ((q, att.sign_q), (k, att.sign_k), (v, att.sign_v)):  # each shift flips some sign
        assert (sgn(t + m.shift.bias) != sgn(t)).any()
    a = torch.softmax(qb @ kb.transpose(-2, -1) / math.sqrt(4), -1)
    s = att.prob.step.item()
    ctx = (s * (a / s).clamp(0, 1).round() @ vb).transpose(1, 2).reshape(1, n_tok, 8)
    ctx = bn_eval(ctx, n)
    up = torch.tensor([0] * cls + [block(t // 4, t % 4) for t in range(16)])          # Eq. 15
    expect = att.proj(rprelu(ctx + q + k[:, up] + v[:, up], att.act))
    with torch.no_grad():
        assert torch.allclose(att(h, (4, 4)), expect, atol=1e-5)


def test_pool_branches_closed_form():
    """The four average pools (1x3, 3x1, 1x5, 5x1, zero padding counted) of an all-ones 5x5 grid:
    at (i, j) r3(j) + r3(i) + r5(j) + r5(i), with r3 = 2/3 on the border and 1 inside, r5 = 3/5,
    4/5, 1, 4/5, 3/5 along a row."""
    r3, r5 = [2 / 3, 1, 1, 1, 2 / 3], [3 / 5, 4 / 5, 1, 4 / 5, 3 / 5]
    expect = torch.tensor([[r3[j] + r3[i] + r5[j] + r5[i] for j in range(5)] for i in range(5)])
    branches = PoolBranches(3)
    with torch.no_grad():
        for s in branches.scales:
            s.alpha.fill_(1.0)
    out = branches(torch.ones(2, 25, 3), (5, 5))
    assert torch.allclose(out, expect.view(1, 25, 1).expand(2, 25, 3), atol=1e-6)
    # a cls token before the grid is not pooled: its branch output is 0, the grid's is as without it
    out = branches(torch.cat([torch.full((2, 1, 3), 7.0), torch.ones(2, 25, 3)], 1), (5, 5))
    assert out.shape == (2, 26, 3) and torch.equal(out[:, 0], torch.zeros(2, 3))
    assert torch.allclose(out[:, 1:], expect.view(1, 25, 1).expand(2, 25, 3), atol=1e-6)


def test_block_affine_with_pool_branches_closed_form():
    """Block with the affine residual scale (Eq. 12-13) and the pooling branches, composed by hand
    from its parts: h1 = h + a1 * attn(BN1 h) + b1; y = BN2 h1;
    out = h1 + a2 * ffn(y) + b2 + sum_k (a_k * pool_k(y) + b_k)."""
    torch.manual_seed(0)
    blk = Block(8, 2, 2, pool_branches=True, residual_scale="affine").eval()
    with torch.no_grad():
        for m in blk.modules():
            if hasattr(m, "alpha") and hasattr(m, "beta"):
                m.alpha.uniform_(-1, 1), m.beta.uniform_(-1, 1)
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    h = torch.randn(2, 16, 8)

    ls = lambda x, m: m.alpha * x + m.beta  # noqa: E731
    h1 = h + ls(blk.attn(bn_eval(h, blk.norm1), (4, 4)), blk.scale1)
    y = bn_eval(h1, blk.norm2)
    g = y.transpose(1, 2).reshape(2, 8, 4, 4)
    pools = sum(ls(F.avg_pool2d(g, k, 1, (k[0] // 2, k[1] // 2)).flatten(2).transpose(1, 2), s)
                for k, s in zip(((1, 3), (3, 1), (1, 5), (5, 1)), blk.pools.scales))
    expect = h1 + ls(blk.ffn(y), blk.scale2) + pools
    with torch.no_grad():
        assert torch.allclose(blk(h, (4, 4)), expect, atol=1e-5)


@pytest.mark.parametrize("binary", [True, False])
def test_patch_merge_closed_form(binary):
    """Patch merging as the authors' code (reference.md section 7), composed by hand: x = BN0(h);
    binary: RPReLU(BN(conv(x)) + [avgpool2x2(x)] * 2) + pos; real (BinaryViT*): BN(conv(x)) + pos."""
    torch.manual_seed(0)
    m = PatchMerge(4, 8, 4, binary).eval()
    with torch.no_grad():
        for bn in (m.norm0, m.norm):
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
        if binary:
            m.act.slope.uniform_(0, 1), m.act.shift_in.uniform_(-0.5, 0.5), m.act.shift_out.uniform_(-0.5, 0.5)
    h = torch.randn(2, 16, 4)
    x = bn_eval(h, m.norm0).transpose(1, 2).reshape(2, 4, 4, 4)
    main = bn_eval(m.conv(x).flatten(2).transpose(1, 2), m.norm)
    if binary:
        pooled = F.avg_pool2d(x, 2).flatten(2).transpose(1, 2)
        expect = rprelu(main + torch.cat([pooled, pooled], -1), m.act) + m.pos_embed
    else:
        expect = main + m.pos_embed
    with torch.no_grad():
        out, grid = m(h, (4, 4))
    assert grid == (2, 2) and torch.allclose(out, expect, atol=1e-5)
    with pytest.raises(ValueError, match=r"next stage's width \(12\) must be a multiple of this one's \(8\)"):
        PatchMerge(8, 12, 4, True)


def test_pyramid_stem_has_a_batchnorm_and_each_stage_a_position_embedding():
    """The authors' pyramid: patch embedding -> BN -> + position embedding, and a new position
    embedding after every merge; the one-stage models keep the DeiT stem (no BN)."""
    m = onebit.create_model("binaryvit_cifar")
    assert type(m.embed_norm).__name__ == "TokenBatchNorm"
    assert [tuple(g.pos_embed.shape) for g in m.merges] == [(1, 64, 96), (1, 16, 192), (1, 4, 384)]
    assert type(onebit.create_model("binaryvit_cifar_affine").embed_norm).__name__ == "Identity"


def test_layer_scale_initial_values():
    """Eq. 12-13's initial values (the authors' code): alpha = ls_init (default 0.1) on both main
    branches, alpha = 0 on each of the four pool branches, beta = 0 everywhere; the models pass
    ls_init through to every block."""
    for kw, init in (({}, 0.1), ({"ls_init": 0.25}, 0.25)):
        blk = Block(8, 2, 2, pool_branches=True, residual_scale="affine", **kw)
        scales = [blk.scale1, blk.scale2, *blk.pools.scales]
        assert len(scales) == 6 and all(type(m).__name__ == "LayerScale" for m in scales)
        for m in scales[:2]:
            assert torch.equal(m.alpha, torch.full((8,), init)) and torch.equal(m.beta, torch.zeros(8))
        for m in scales[2:]:
            assert torch.equal(m.alpha, torch.zeros(8)) and torch.equal(m.beta, torch.zeros(8))
    model = onebit.create_model("binaryvit_cifar_affine", ls_init=0.3)
    for blk in model.stages[0]:
        assert torch.equal(blk.scale1.alpha, torch.full((128,), 0.3))
        assert all(torch.equal(m.alpha, torch.zeros(128)) for m in blk.pools.scales)


def test_spatial_reduction_attention_shapes_and_errors():
    att = BinaryAttention(16, 2, sr_ratio=2)
    assert att(torch.randn(2, 16, 16), (4, 4)).shape == (2, 16, 16)
    with pytest.raises(ValueError, match="heads=3 must divide the width dim=16"):
        BinaryAttention(16, 3)
    with pytest.raises(ValueError, match=r"R=3 does not divide the 4x4 token grid"):
        BinaryViT(img_size=32, patch_size=4, embed_dims=(8, 16), depths=(1, 1), heads=(1, 1), mlp_ratios=(2, 2),
                  sr_ratios=(1, 3), pool="gap", num_classes=3)
    with pytest.raises(ValueError, match="heads=5 must divide the width 16"):
        BinaryViT(img_size=32, patch_size=4, embed_dims=(16,), depths=(1,), heads=(5,), mlp_ratios=(2,),
                  sr_ratios=(1,))
    with pytest.raises(ValueError, match="stage 3 gets a 3x3 grid"):
        BinaryViT(img_size=24, patch_size=4, embed_dims=(8, 8, 8), depths=(1, 1, 1), heads=(1, 1, 1),
                  mlp_ratios=(2, 2, 2), sr_ratios=(1, 1, 1), pool="gap")
    with pytest.raises(ValueError, match="a cls token needs one stage"):
        onebit.create_model("binaryvit_cifar", pool="cls")
    for key, bad in (("heads", (0,)), ("sr_ratios", (0,)), ("depths", (-1,)), ("mlp_ratios", (1.5,))):
        with pytest.raises(ValueError, match=rf"{key} must be positive integers, got \({re.escape(str(bad[0]))},\)"):
            onebit.create_model("binaryvit_cifar_gap", **{key: bad})
    with pytest.raises(ValueError, match="spatial reduction R=3 does not divide the token grid 8x8"):
        BinaryAttention(16, 2, sr_ratio=3)(torch.randn(2, 64, 16), (8, 8))  # the layer alone checks it too
    with pytest.raises(ValueError, match="unknown weight scale 'row'"):
        onebit.create_model("binaryvit_cifar_gap", weight_scale="row")


def test_every_addition_is_a_switch_of_its_own():
    """(b) and Bi-SR-MHA with the baseline's cls token (the token left out of their pooling), and
    weight_scale="tensor" (Eq. 1's scalar alpha) in every BiFC: build, forward and backward."""
    torch.manual_seed(0)
    m = onebit.create_model("binaryvit_cifar_baseline", pool_branches=True, sr_ratios=(2,), weight_scale="tensor")
    keys = []
    att = m.stages[0][0].attn
    real = att.attend
    att.attend = lambda qb, kb, vb: keys.append(kb.shape[2]) or real(qb, kb, vb)
    out = m(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 10) and keys[-1] == 4 * 4 + 1  # the 8x8 grid pooled by 2, and the cls token
    bifcs = [mod for mod in m.modules() if isinstance(mod, BiFC)]
    assert bifcs and all(mod.linear.scale == "tensor" for mod in bifcs)
    assert all(p.grad is not None for p in m.stages[0][0].pools.parameters())
    with pytest.raises(ValueError, match="merge='real' sets the patch merging between stages, but this model has one"):
        onebit.create_model("binaryvit_cifar_gap", merge="real")


@pytest.mark.parametrize("name, sr, n, keys", [("binaryvit_cifar_gap", 1, 64, 64), ("binaryvit_cifar_gap", 2, 64, 16),
                                              ("binaryvit_cifar_baseline", 1, 65, 65),
                                              ("binaryvit_cifar_baseline", 2, 65, 17)])
@pytest.mark.parametrize("binary", [True, False])
def test_attention_products_count_two_n_m_c(name, sr, n, keys, binary):
    """Q K^T and P V: 2 N M C multiply-adds per layer on the 8x8 grid of width C = 128 (N queries;
    M keys: the grid pooled by R, plus the unpooled cls token), BOPs when binary, FLOPs in the fp twin."""
    m = onebit.create_model(name, binary=binary, sr_ratios=(sr,))
    att = m.stages[0][0].attn
    seen = []
    real = att.attend
    att.attend = lambda qb, kb, vb: seen.append((qb.shape[2], kb.shape[2])) or real(qb, kb, vb)
    row = next(r for r in complexity(m, (3, 32, 32)).layers if r["name"] == "stages.0.0.attn")
    assert seen[0] == (n, keys)  # what the layer really computes
    products = 2 * n * keys * 128
    assert (row["bops"], row["flops"]) == ((products, 0) if binary else (0, products))


def readme_complexity_row(label: str) -> dict:
    """The "ours" cell of README.md's complexity table row ``| label | ...``: {key: (mantissa text, power of 10)}."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    cell = next(line.split("|")[2] for line in readme.splitlines() if line.startswith(f"| {label} |"))
    got = {k.lower(): (m, int(e)) for k, m, e in re.findall(r"\b(BOPs|FLOPs|OPs) ([0-9.]+)e([0-9])", cell)}
    got.update({"params": (m, 6) for m in re.findall(r"([0-9.]+) M params", cell)})
    return got


def test_table4_parameters_and_operations():
    # Table 4: binaryvit 22.6 M, BOPs 3.83e9, FLOPs 0.19e8, OPs 0.79e8 (paper FLOP convention);
    # BinaryViT* BOPs 3.75e9, FLOPs 0.95e8, OPs 1.54e8; baseline DeiT-S 22.1 M, 4.51e9 / 0.57e8 / 1.29e8.
    # The bar: params and BOPs within 2%, FLOPs and OPs within 3%.
    def close(v, ref, tol):
        return abs(v - ref) / ref <= tol

    for name, label, params, bops, flops, ops in (
            ("binaryvit", "BinaryViT", 22.6e6, 3.83e9, 0.19e8, 0.79e8),
            ("binaryvit_star", "BinaryViT\\* (real merging)", 22.6e6, 3.75e9, 0.95e8, 1.54e8),
            ("binary_deit_s", "binary DeiT-S", 22.1e6, 4.51e9, 0.57e8, 1.29e8)):
        r = complexity(onebit.create_model(name), (3, 224, 224), counters=PAPER_VIT_FLOPS).total
        assert close(r["params"], params, 0.02), (name, r["params"])
        assert close(r["bops"], bops, 0.02), (name, r["bops"])
        assert close(r["flops"], flops, 0.03), (name, r["flops"])
        assert close(r["ops"], ops, 0.03), (name, r["ops"])
        # README's complexity table prints these counts: it must say what the code counts, at its precision
        readme = readme_complexity_row(label)
        assert set(readme) >= {"bops", "flops", "ops"}, (label, readme)
        for key, (mantissa, power) in readme.items():
            decimals = len(mantissa.split(".")[1])
            assert round(r[key] / 10 ** power, decimals) == float(mantissa), (name, key, r[key], mantissa)
    # the authors' code builds BinaryViT with exactly this many parameters (README, docs/binaryvit.md)
    assert sum(p.numel() for p in onebit.create_model("binaryvit").parameters()) == 22_491_771
    plain = complexity(onebit.create_model("binaryvit"), (3, 224, 224)).total
    assert round(plain["flops"] / 1e8, 3) == 0.101  # without the convention: only the stem and the classifier


@pytest.mark.parametrize("name", ["binaryvit", "binaryvit_star", "binary_deit_s"])
def test_imagenet_models_forward_and_backward(name):
    """The ImageNet-size models train: a batch of 2 at 224x224, every trainable parameter gets a finite gradient."""
    torch.manual_seed(0)
    model = onebit.create_model(name).train()
    logits = model(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, model.num_classes) and model.num_classes == 1000
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


def test_deit_capability_by_the_appendix():
    m = onebit.create_model("binary_deit_s")
    assert capability(m)["total"] == 155_568
    assert capability(m, omit_attention=True)["total"] == 153_216


def test_table3_rows_differ_by_one_switch():
    rows = ["binaryvit_cifar_baseline", "binaryvit_cifar_gap", "binaryvit_cifar_pool", "binaryvit_cifar_affine",
            "binaryvit_cifar"]
    ms = [onebit.create_model(n) for n in rows]
    assert ms[0].pool == "cls" and ms[1].pool == "gap"
    assert ms[1].stages[0][0].pools is None and ms[2].stages[0][0].pools is not None
    assert type(ms[2].stages[0][0].scale1).__name__ == "Identity"
    assert type(ms[3].stages[0][0].scale1).__name__ == "LayerScale"
    assert len(ms[3].stages) == 1 and len(ms[4].stages) == 4
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for i, m in enumerate(ms):  # the head reads the final BN's cls token (Eq. 10) or token mean (Eq. 11)
        seen = {}
        m.norm.register_forward_hook(lambda mod, inp, out: seen.update(normed=out))  # hooks return None
        m.head.register_forward_pre_hook(lambda mod, inp: seen.update(read=inp[0]))
        m.stages[0][0].register_forward_pre_hook(lambda mod, inp: seen.update(h0=inp[0]))
        with torch.no_grad():
            y = m(x)
        normed, read = seen["normed"], seen["read"]
        assert y.shape == (2, 10) and torch.equal(y, m.head(read))
        if i == 0:
            assert normed.shape == (2, 65, 128) and torch.equal(read, normed[:, 0])  # cls token first
            assert torch.equal(seen["h0"][:, 0], (m.cls_token[0, 0] + m.pos_embed[0, 0]).expand(2, 128))
        else:
            assert normed.shape[1] == (64 if i < 4 else 4) and torch.allclose(read, normed.mean(1), atol=1e-6)
            assert not torch.allclose(read, normed[:, 0], atol=1e-3)
    # parameter counts quoted in the README's Table 3 section: 1.25-1.26 M for the four one-stage rows
    counts = [round(sum(p.numel() for p in m.parameters()) / 1e6, 2) for m in ms]
    assert set(counts[:4]) <= {1.25, 1.26} and counts[4] == 6.36


@pytest.mark.parametrize("kind", ["post_norm", "sandwich"])
def test_residual_scale_alternatives(kind):
    """Sec. 3.3's alternatives to the affine scale, in eval mode with random BN statistics:
    res-post-norm  h1 = h + BN_a(attn(h)),      out = h1 + BN_f(ffn(h1))       (BN after each branch);
    sandwich       h1 = h + BN_a(attn(BN1 h)),  out = h1 + BN_f(ffn(BN2 h1))   (BN before and after)."""
    torch.manual_seed(4)
    blk = Block(16, 2, 2, residual_scale=kind).eval()
    with torch.no_grad():
        for m in blk.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 2), m.bias.uniform_(-1, 1)
    h = torch.randn(2, 4, 16)
    post_a, post_f = blk.scale1, blk.scale2  # the norms after the branches
    with torch.no_grad():
        if kind == "post_norm":
            h1 = h + bn_eval(blk.attn(h, (2, 2)), post_a)
            expect = h1 + bn_eval(blk.ffn(h1), post_f)
        else:
            h1 = h + bn_eval(blk.attn(bn_eval(h, blk.norm1), (2, 2)), post_a)
            expect = h1 + bn_eval(blk.ffn(bn_eval(h1, blk.norm2)), post_f)
        out = blk(h, (2, 2))
    assert out.shape == (2, 4, 16) and torch.allclose(out, expect, atol=1e-5)


def test_alpha_init_per_layer_keys():
    """alpha_init="keys": 1 / M with M the keys each attention actually sees (read by a hook on a
    forward pass): binaryvit_cifar has 16x16 tokens reduced by R = 4 (16 keys), 8x8 by 2 (16), 4x4
    (16), 2x2 (4); the flat baseline 8x8 tokens + cls (65), the flat gap row 64."""
    def steps_and_keys(name):
        model = onebit.create_model(name, alpha_init="keys").eval()
        layers = [a for a in model.modules() if isinstance(a, BinaryAttention)]
        keys = {}
        for i, a in enumerate(layers):
            a.prob.register_forward_hook(lambda m, args, out, i=i: keys.__setitem__(i, args[0].shape[-1]))
        with torch.no_grad():
            model(torch.randn(2, 3, 32, 32))
        return [a.prob.step.item() for a in layers], [keys[i] for i in range(len(layers))]
    for name, want in (("binaryvit_cifar", [16] * 8 + [4] * 2), ("binaryvit_cifar_baseline", [65] * 6),
                       ("binaryvit_cifar_gap", [64] * 6)):
        steps, keys = steps_and_keys(name)
        assert keys == want and steps == pytest.approx([1 / k for k in keys])
    assert [a.prob.step.item() for a in onebit.create_model("binaryvit_cifar").modules()
            if isinstance(a, BinaryAttention)] == pytest.approx([0.005] * 10)
    for bad in (0, -1.0, "tokens"):
        with pytest.raises(ValueError, match="alpha_init must be a positive number or 'keys'"):
            onebit.create_model("binaryvit_cifar", alpha_init=bad)
"""The model on its own: masks, positions, norms, loss, init, parameter and FLOP counts, config checks."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from tests.workloads.tiny_models import VOCAB, tiny, tiny_model, tokens
from workloads.errors import UserInputError
from workloads.model import (
    GPT,
    MLP_KINDS,
    NORM_KINDS,
    POSITION_KINDS,
    ModelConfig,
    RMSNorm,
    ScalarHeadModel,
    alibi_slopes,
    apply_rope,
    count_parameters,
    forward_flops_per_token,
    matmul_parameters,
    token_logprobs,
    training_flops_per_token,
)

# Three packed documents of lengths 5, 7 and 4.
SEGMENTS = torch.tensor([[0] * 5 + [1] * 7 + [2] * 4] * 2)  # (B=2, T=16)


DOC1 = slice(5, 12)


TWO_DOCUMENTS = torch.tensor([[0] * 6 + [1] * 10] * 2)  # (B=2, T=16)


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def assert_differs(a: torch.Tensor, b: torch.Tensor) -> None:
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("segmented", [False, True])
@pytest.mark.parametrize("position", POSITION_KINDS)
def test_future_tokens_never_change_earlier_logits(position, segmented):
    model = tiny_model(position=position)
    segment_ids = SEGMENTS if segmented else None
    x = tokens((2, 16))
    before = model(x, segment_ids=segment_ids)
    for t in (3, 9, 15):
        changed = x.clone()
        changed[:, t] = (changed[:, t] + 1) % VOCAB
        after = model(changed, segment_ids=segment_ids)
        assert_same(after[:, :t], before[:, :t])
        assert_differs(after[:, t], before[:, t])


@pytest.mark.parametrize("position", POSITION_KINDS)
def test_tokens_never_attend_across_documents(position):
    model = tiny_model(position=position)
    x = tokens((2, 16))
    before = model(x, segment_ids=SEGMENTS)
    changed = x.clone()
    changed[:, DOC1] = (changed[:, DOC1] + 1) % VOCAB
    after = model(changed, segment_ids=SEGMENTS)
    assert_same(after[:, :5], before[:, :5])
    assert_same(after[:, 12:], before[:, 12:])  # document 2 comes later, yet sees none of document 1
    assert_differs(after[:, DOC1], before[:, DOC1])


@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_relative_positions_give_a_document_the_same_logits_packed_or_alone(position):
    model = tiny_model(position=position)
    x = tokens((2, 16))
    packed = model(x, segment_ids=SEGMENTS)[:, DOC1]
    alone = model(x[:, DOC1])
    assert_same(packed, alone)


def test_learned_positions_stay_absolute_within_a_pack():
    # The documented choice: positions do not restart at document starts.
    model = tiny_model(position="learned")
    x = tokens((2, 16))
    assert_differs(model(x, segment_ids=SEGMENTS)[:, DOC1], model(x[:, DOC1]))


@pytest.mark.parametrize("position", POSITION_KINDS)
def test_a_single_document_mask_matches_plain_causal_attention(position):
    model = tiny_model(position=position)
    x = tokens((2, 16))
    assert_same(model(x, segment_ids=torch.zeros_like(x)), model(x))


@pytest.mark.parametrize("position", POSITION_KINDS)
def test_causal_attention_mask_attends_across_documents(position):
    x, y = tokens((2, 16)), tokens((2, 16), seed=2)
    one_document = torch.zeros_like(x)
    causal = tiny_model(position=position, attention_mask="causal")
    document = tiny_model(position=position)  # the default, with the same weights
    assert_same(causal(x, y, segment_ids=TWO_DOCUMENTS), document(x, y, segment_ids=one_document))
    assert_differs(document(x, y, segment_ids=TWO_DOCUMENTS), document(x, y, segment_ids=one_document))


@pytest.mark.parametrize("position", ["rope", "learned"])
def test_causal_attention_mask_leaves_sdpa_unmasked(position):
    # No mask reaches SDPA (it runs with is_causal), which is what lets it pick a flash kernel.
    attn_bias, _ = tiny_model(position=position, attention_mask="causal").attention_inputs(
        TWO_DOCUMENTS, 16, torch.float32
    )
    assert attn_bias is None


def test_attention_mask_changes_no_weights_and_no_counts():
    causal, document = tiny_model(attention_mask="causal"), tiny_model()
    causal.load_state_dict(document.state_dict())  # strict: checkpoints load under either setting
    assert count_parameters(causal.cfg) == count_parameters(document.cfg)
    assert training_flops_per_token(causal.cfg, 16) == training_flops_per_token(document.cfg, 16)


def test_alibi_slopes_follow_the_paper():
    assert alibi_slopes(8) == [2.0**-i for i in range(1, 9)]
    # 6 heads: the 4-head sequence, then every other slope of the 8-head sequence.
    assert alibi_slopes(6) == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]


def test_alibi_bias_is_minus_slope_times_distance_and_masked_across_documents():
    model = tiny_model(position="alibi")
    segment_ids = torch.tensor([[0, 0, 0, 1, 1]])
    bias, rope = model.attention_inputs(segment_ids, 5, torch.float32)
    assert rope is None and bias.shape == (1, 4, 5, 5)
    slope = alibi_slopes(4)[1]
    assert bias[0, 1, 2, 0] == -2 * slope and bias[0, 1, 2, 2] == 0
    assert bias[0, 1, 4, 3] == -slope
    assert bias[0, 1, 0, 1] == float("-inf")  # future
    assert bias[0, 1, 3, 2] == float("-inf")  # earlier document


def reference_attention(q, k, v, segment_ids):
    """Softmax attention written out: query i sees key j iff j <= i and both lie in one document."""
    T = q.shape[2]
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = (j <= i) & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])  # (B, 1, T, T)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, T, T)
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


@pytest.mark.parametrize(
    "segment_ids",
    [
        SEGMENTS,  # every row holds three documents
        torch.tensor([[0] * 16, [0] * 3 + [1] * 13]),  # one row of one document, one of two
        torch.tensor([[4] * 16, [0] * 16]),  # one document per row: plain causal attention
    ],
)
def test_document_masked_attention_matches_the_written_out_reference(segment_ids):
    model = tiny_model()  # rope, per-document mask
    attention = model.blocks[0].attn
    x = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(3))
    attn_bias, rope = model.attention_inputs(segment_ids, 16, x.dtype)
    B, T, hd = 2, 16, attention.head_dim
    q, k, v = attention.qkv(x).view(B, T, 3 * attention.n_heads, hd).split(attention.n_heads, dim=2)
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    expected = reference_attention(*(t.transpose(1, 2) for t in (q, k, v)), segment_ids)  # (B, H, T, head_dim)
    expected = attention.proj(expected.transpose(1, 2).reshape(B, T, 32))
    torch.testing.assert_close(attention(x, attn_bias, rope), expected, atol=1e-5, rtol=1e-5)


def test_the_document_mask_is_additive_and_left_out_when_each_row_is_one_document():
    model = tiny_model()
    bias, _ = model.attention_inputs(torch.tensor([[0] * 3 + [1] * 2]), 5, torch.bfloat16)
    assert bias.dtype == torch.bfloat16 and bias.shape == (1, 1, 5, 5)
    allowed = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]).bool()
    assert torch.equal(bias[0, 0] == 0, allowed) and bias[0, 0][~allowed].eq(float("-inf")).all()
    assert model.attention_inputs(torch.tensor([[0] * 5, [2] * 5]), 5, torch.float32)[0] is None  # SDPA's is_causal


def test_rope_rotates_channel_pairs_and_its_gradient_rotates_back():
    x = torch.randn(2, 7, 3, 8, dtype=torch.float64, requires_grad=True)  # (B, T, H, head_dim)
    angles = torch.randn(7, 4, dtype=torch.float64)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.detach().chunk(2, dim=-1)
    c, s = cos[:, None], sin[:, None]
    expected = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
    torch.testing.assert_close(apply_rope(x, cos, sin), expected, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, cos, sin), (x,))
    rows = torch.randn(2, 7, 4, dtype=torch.float64)  # (B, T, head_dim/2): each row its own positions
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, rows.cos(), rows.sin()), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_matches_torchs_forward_and_backward(dtype):
    torch.manual_seed(0)
    ours, theirs = RMSNorm(16, eps=1e-5), torch.nn.RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
    theirs.load_state_dict(ours.state_dict())  # the same state dict: checkpoints load either way
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    x = torch.randn(3, 5, 16, dtype=dtype, requires_grad=True)
    grad = torch.randn_like(x)
    outputs, grads = [], []
    for norm in (ours, theirs):
        out = norm(x)
        out.backward(grad)
        outputs.append(out)
        grads.append((x.grad, norm.weight.grad))
        x.grad = None
    assert outputs[0].dtype == dtype
    tolerance = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.02, rtol=0.02)
    torch.testing.assert_close(outputs[0], outputs[1], **tolerance)
    torch.testing.assert_close(grads[0], grads[1], **tolerance)
    x64, weight = (
        torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True),
        torch.nn.Parameter(torch.rand(8, dtype=torch.float64)),
    )
    norm = RMSNorm(8, eps=1e-5).double()
    norm.weight = weight
    assert torch.autograd.gradcheck(lambda t, w: norm(t), (x64, weight))


def test_pipeline_pieces_compose_to_forward():
    model = tiny_model(position="alibi", tie_embeddings=False)
    x = tokens((2, 16))
    h = model.embed_tokens(x)
    attn_bias, rope = model.attention_inputs(SEGMENTS, 16, h.dtype)
    for block in model.blocks:
        h = block(h, attn_bias, rope)
    assert torch.equal(model.head(h), model(x, segment_ids=SEGMENTS))


def test_sequences_longer_than_max_seq_len_are_refused():
    with pytest.raises(ValueError, match="max_seq_len=24"):
        tiny_model()(tokens((1, 25)))


def test_loss_is_cross_entropy_of_the_logits_with_mean_and_sum():
    model = tiny_model()
    x, y = tokens((2, 16)), tokens((2, 16), seed=2)
    expected = F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))
    assert_same(model(x, y), expected)
    assert_same(model(x, y, reduction="sum"), expected * 32)
    y[:, :8] = -100  # ignored targets (e.g. SFT prompts) count neither in the sum nor the mean
    assert_same(model(x, y, reduction="sum"), model(x, y) * 16)


@pytest.mark.parametrize("position,mlp,norm", list(itertools.product(POSITION_KINDS, MLP_KINDS, NORM_KINDS)))
def test_every_variant_trains_on_a_fixed_batch(position, mlp, norm):
    model = tiny_model(position=position, mlp=mlp, norm=norm).train()
    batch = tokens((4, 17))
    x, y = batch[:, :-1], batch[:, 1:]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    losses = []
    for _ in range(40):
        loss = model(x, y, segment_ids=SEGMENTS.repeat(2, 1))
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(VOCAB), rel=0.1)
    assert losses[-1] < 0.5 * losses[0]


def test_init_is_deterministic_given_the_seed():
    a, b, c = tiny_model(seed=3), tiny_model(seed=3), tiny_model(seed=4)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.embed.tokens.weight, c.embed.tokens.weight)


@pytest.mark.parametrize("mlp,down", [("swiglu", "w2"), ("gelu", "proj")])
def test_residual_projections_get_gpt2_scaled_init(mlp, down):
    torch.manual_seed(0)
    model = GPT(ModelConfig(mlp=mlp))  # d_model 256: enough weights for a 5% std estimate
    block = model.blocks[0]
    scaled = 0.02 / math.sqrt(2 * 4)
    assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.embed.tokens.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.attn.proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert getattr(block.mlp, down).weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert torch.equal(block.norm1.weight, torch.ones(256))


def test_tied_embeddings_share_one_weight():
    tied, untied = tiny_model(), tiny_model(tie_embeddings=False)
    assert tied.lm_head.weight is tied.embed.tokens.weight
    assert untied.lm_head.weight is not untied.embed.tokens.weight


def test_auto_ffn_hidden():
    assert ModelConfig().resolved_ffn_hidden == 704  # 8/3 * 256 = 682.7, up to a multiple of 64
    assert ModelConfig(mlp="gelu").resolved_ffn_hidden == 1024
    assert tiny().resolved_ffn_hidden == 128  # 8/3 * 32 = 85.3
    assert tiny(ffn_hidden=100).resolved_ffn_hidden == 100


@pytest.mark.parametrize(
    "position,mlp,norm,tie,ffn_hidden,n_heads",
    list(itertools.product(POSITION_KINDS, MLP_KINDS, NORM_KINDS, [True, False], [0, 48], [2]))
    + [("rope", "swiglu", "rmsnorm", True, 0, 8), ("alibi", "gelu", "layernorm", False, 0, 1)],
)
def test_count_parameters_matches_the_module(position, mlp, norm, tie, ffn_hidden, n_heads):
    cfg = tiny(position=position, mlp=mlp, norm=norm, tie_embeddings=tie, ffn_hidden=ffn_hidden, n_heads=n_heads)
    assert count_parameters(cfg) == sum(p.numel() for p in GPT(cfg).parameters())


def test_count_parameters_by_hand():
    cfg = ModelConfig(
        vocab_size=100,
        d_model=32,
        n_layers=2,
        n_heads=4,
        max_seq_len=16,
        mlp="swiglu",
        position="learned",
        tie_embeddings=False,
    )
    token_embedding = 100 * 32
    positions = 16 * 32
    block = 2 * 32 + 32 * 96 + 32 * 32 + 3 * 32 * 128  # norms, qkv, out-proj, swiglu (hidden 128)
    final_norm = 32
    head = 32 * 100
    assert count_parameters(cfg) == token_embedding + positions + 2 * block + final_norm + head == 39840
    assert count_parameters(dataclasses.replace(cfg, tie_embeddings=True, position="rope")) == 39840 - 512 - 3200


def test_flops_per_token_by_hand_for_nanogpt_baby_gpt():
    cfg = ModelConfig(vocab_size=65, d_model=128, n_layers=4, n_heads=4, max_seq_len=64, mlp="gelu", position="learned")
    per_block = 4 * 128 * 128 + 2 * 128 * 512  # qkv + out-proj, fc + proj
    head = 65 * 128  # counted although tied: the head matmul is real work
    assert matmul_parameters(cfg) == 4 * per_block + head == 794752
    attention = 12 * 4 * 128 * 64
    assert training_flops_per_token(cfg, 64) == 6 * 794752 + attention == 5161728
    assert forward_flops_per_token(cfg, 64) == 5161728 // 3
    assert matmul_parameters(dataclasses.replace(cfg, tie_embeddings=False)) == 794752


def test_defaults_are_valid():
    ModelConfig().validate()
    tiny(position="learned", d_model=12, n_heads=4).validate()  # odd head dims are fine without rope


@pytest.mark.parametrize(
    "overrides,field",
    [
        (dict(vocab_size=0), "vocab_size"),
        (dict(d_model=-8), "d_model"),
        (dict(d_model=256.0), "d_model"),
        (dict(n_layers=True), "n_layers"),
        (dict(n_heads=0), "n_heads"),
        (dict(max_seq_len=0), "max_seq_len"),
        (dict(ffn_hidden=-1), "ffn_hidden"),
        (dict(mlp="relu"), "mlp"),
        (dict(norm="batchnorm"), "norm"),
        (dict(position="sinusoidal"), "position"),
        (dict(d_model=12, n_heads=4), "position"),  # rope on a head dim of 3
        (dict(rope_theta=0.0), "rope_theta"),
        (dict(norm_eps=0.0), "norm_eps"),
        (dict(dropout=1.0), "dropout"),
        (dict(dropout=-0.1), "dropout"),
        (dict(init_std=-0.02), "init_std"),
        (dict(attention_mask="none"), "attention_mask"),
    ],
)
def test_bad_values_name_the_field(overrides, field):
    cfg = dataclasses.replace(ModelConfig(), **overrides)
    with pytest.raises(UserInputError) as error:
        cfg.validate()
    message = str(error.value)
    assert message.startswith(f"model.{field}: ") and "\n" not in message
    with pytest.raises(UserInputError):
        GPT(cfg)


def test_heads_that_do_not_divide_the_width_are_reported_with_both_numbers():
    with pytest.raises(UserInputError, match=r"^model.n_heads: 6 does not divide model.d_model=256$"):
        ModelConfig(n_heads=6).validate()


def test_a_scalar_head_reads_the_last_real_token_whatever_follows():
    torch.manual_seed(0)
    model = ScalarHeadModel(GPT(ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, max_seq_len=12))).eval()
    ids = torch.randint(2, 32, (1, 6))
    padded = torch.cat((ids, torch.zeros(1, 4, dtype=torch.long)), dim=1)
    assert torch.allclose(model(ids, torch.tensor([5])), model(padded, torch.tensor([5])), atol=1e-6)


def test_token_logprobs_pick_the_targets_and_skip_ignored_positions():
    logits = torch.randn(2, 3, 7)
    targets = torch.tensor([[1, -100, 3], [0, 6, -100]])
    picked = token_logprobs(logits, targets)
    expected = torch.log_softmax(logits, -1)
    assert picked[0, 0] == expected[0, 0, 1] and picked[0, 1] == 0 and picked[1, 1] == expected[1, 1, 6]

"""FLOP and parameter counting (benchmarks/flops.py) against hand counts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from conftest import make_batch, make_srt, srt_defaults
from recbole.model.sequential_recommender.bert4rec import BERT4Rec
from recbole.model.sequential_recommender.sasrec import SASRec
from torch.utils.flop_counter import FlopCounterMode

from recbole_srt.analysis.flops import CPU_ATTENTION_FORMULAS, forward_macs, training_step_flops
from recbole_srt.model.params import count_params
from recbole_srt.trainer import training_targets

N_ITEMS, FEAT, D, INNER, B, L = 20, 8, 16, 32, 4, 6


def mm(m: int, n: int, k: int) -> int:
    return 2 * m * n * k


def hand_count_one_layer_srt(batch: dict) -> int:
    """Matmul FLOPs of one CE training step of a one-layer SRT (last-position targets).

    Forward: each product ``[m, k] @ [k, n]`` is ``2 m n k``. Backward: 2x forward (input and
    weight gradients) where the input requires grad, 1x (weight gradient only) for the item tower,
    whose input is the frozen feature buffer; fused attention backward is 5 products (torch's
    convention: the scores ``QK^T`` are recomputed), i.e. 2.5x its forward.
    """
    tokens = B * L
    tower_seq = mm(N_ITEMS, D, FEAT)  # CE: the inputs are looked up in a full-catalog tower pass ...
    tower_catalog = mm(N_ITEMS, D, FEAT)  # ... and the candidates project the catalog again
    qkv, out = mm(tokens, 3 * D, D), mm(tokens, D, D)
    ffn = mm(tokens, INNER, D) + mm(tokens, D, INNER)
    attention = 2 * mm(B * L, L, D)  # QK^T and AV, all heads, full L x L square
    logits = mm(B, N_ITEMS, D)  # one target per sequence
    forward = tower_seq + tower_catalog + qkv + out + ffn + attention + logits
    backward = tower_seq + tower_catalog + 2 * (qkv + out + ffn + logits) + attention * 5 // 2
    return forward + backward


def test_measured_flops_match_the_hand_count_on_a_one_layer_srt():
    model = make_srt(
        N_ITEMS, FEAT, n_layers=1, hidden_size=D, inner_size=INNER, n_heads=2, projection="linear"
    )
    batch = make_batch(N_ITEMS, batch_size=B, max_len=L)
    # Tolerance 0: FlopCounterMode and the hand count both count exactly the matrix products
    # (2 m n k each) and nothing element-wise, so they must agree to the FLOP.
    assert training_step_flops(model, batch) == hand_count_one_layer_srt(batch)


def test_cpu_flash_attention_is_counted():
    q, k, v = (torch.randn(2, 2, 8, 4, requires_grad=True) for _ in range(3))
    with FlopCounterMode(display=False) as plain:
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FORMULAS) as ours:
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
    forward = 2 * mm(2 * 2 * 8, 8, 4)
    assert plain.get_total_flops() == 0  # torch 2.13 has no formula for the CPU kernel
    assert ours.get_total_flops() == forward + forward * 5 // 2


def test_measuring_leaves_the_model_and_rng_untouched():
    model = make_srt(N_ITEMS, FEAT, loss_type="SSM")
    batch = make_batch(N_ITEMS)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    training_step_flops(model, batch)
    after_measure = torch.rand(1)
    torch.manual_seed(3)
    assert torch.equal(after_measure, torch.rand(1))
    assert all(p.grad is None for p in model.parameters())
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, before[name])


def test_counting_macs_leaves_no_buffer_in_the_model():
    """thop registers counters on every module and removes only its leaves': none may stay, or every
    checkpoint of a measured run carries them (and its weights no longer fit an SRT model)."""
    model = make_srt(N_ITEMS, FEAT)
    keys = set(model.state_dict())
    forward_macs(model, make_batch(N_ITEMS))
    assert set(model.state_dict()) == keys


def test_flops_grow_with_depth_and_the_logit_matmul_with_the_catalog():
    batch = make_batch(N_ITEMS)
    one, two = (
        training_step_flops(make_srt(N_ITEMS, FEAT, n_layers=n, projection="linear"), batch) for n in (1, 2)
    )
    bigger_catalog = training_step_flops(make_srt(2 * N_ITEMS, FEAT, n_layers=1, projection="linear"), batch)
    assert two > one
    # Catalog doubles: the two linear tower passes over the catalog (inputs and candidates; fwd +
    # weight grad each) and the logits (fwd + 2 grads) grow.
    assert bigger_catalog - one == 2 * 2 * mm(N_ITEMS, D, FEAT) + 3 * mm(B, N_ITEMS, D)


def _recbole_config(**overrides) -> dict:
    return {
        **srt_defaults(),
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "LIST_SUFFIX": "_list",
        "ITEM_LIST_LENGTH_FIELD": "item_length",
        "NEG_PREFIX": "neg_",
        "MAX_ITEM_LIST_LENGTH": L,
        "device": torch.device("cpu"),
        "hidden_size": D,
        "inner_size": INNER,
        "n_heads": 2,
        "n_layers": 2,
        "hidden_dropout_prob": 0.1,
        "attn_dropout_prob": 0.1,
        "mask_ratio": 0.2,
        "MASK_INDEX": "MASK_INDEX",  # set by RecBole's mask_itemseq transform in a real run
        "MASK_ITEM_SEQ": "Mask_item_id_list",
        "POS_ITEMS": "Pos_item_id",
        "NEG_ITEMS": "Neg_item_id",
        **overrides,
    }


class _Items:
    def num(self, field: str) -> int:
        return N_ITEMS


def test_param_rules_agree_across_models():
    srt = make_srt(N_ITEMS, FEAT, n_layers=2, hidden_size=D, inner_size=INNER)
    sasrec = SASRec(_recbole_config(), _Items())
    bert = BERT4Rec(_recbole_config(), _Items())
    block = (3 * D * D + 3 * D) + (D * D + D) + (D * INNER + INNER + INNER * D + D) + 2 * 2 * D
    counts = {name: count_params(m) for name, m in (("SRT", srt), ("SASRec", sasrec), ("BERT4Rec", bert))}
    assert {c.non_embedding for c in counts.values()} == {2 * block}
    assert counts["SRT"].catalog == 0
    assert counts["SRT"].trainable == sum(p.numel() for p in srt.parameters())
    assert counts["SASRec"].catalog == N_ITEMS * D
    assert counts["BERT4Rec"].catalog == (N_ITEMS + 1) * D + N_ITEMS  # + mask token row, output bias


def test_training_targets_per_model():
    batch = make_batch(N_ITEMS, batch_size=5)
    assert int(training_targets(make_srt(N_ITEMS), batch)) == 5
    every = make_srt(N_ITEMS, train_all_positions=True)
    assert int(training_targets(every, batch)) == int(batch["item_length"].sum())
    bert = BERT4Rec(_recbole_config(), _Items())
    masked = {"MASK_INDEX": torch.tensor([[0, 0, 3], [0, 2, 5]])}
    assert int(training_targets(bert, masked)) == 3


def test_forward_macs_follow_the_references_thop_convention():
    """thop counts a layer's multiply-accumulates (Linear: in x out per row), not functional matmuls."""

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 3)

        def calculate_loss(self, batch):
            return (self.layer(batch["x"]) @ batch["w"]).sum()  # the functional matmul is not counted

    batch = {"x": torch.randn(5, 4), "w": torch.randn(3, 2)}
    assert forward_macs(Toy(), batch) == 5 * 4 * 3
    srt = make_srt(N_ITEMS, FEAT, n_layers=2, hidden_size=D, inner_size=INNER)
    assert 0 < forward_macs(srt, make_batch(N_ITEMS)) < training_step_flops(srt, make_batch(N_ITEMS)) / 2


def test_paper_n_is_every_parameter_but_the_item_side_tables():
    sasrec = SASRec(_recbole_config(), _Items())
    counts = count_params(sasrec)
    assert counts.paper == sum(
        p.numel() for n, p in sasrec.named_parameters() if not n.startswith("item_embedding")
    )
    srt = make_srt(N_ITEMS, FEAT)
    assert srt.num_params().paper == srt.num_params().trainable

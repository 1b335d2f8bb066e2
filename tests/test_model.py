"""SRT model: shapes, losses, catalog-independent size, causality, padding, AMP."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_batch, make_srt, srt_test_config

N_ITEMS = 20


@pytest.mark.parametrize("loss_type", ["CE", "SSM", "BPR"])
@pytest.mark.parametrize("all_positions", [False, True])
def test_loss_is_finite_scalar_and_trains_only_the_model(loss_type, all_positions):
    model = make_srt(N_ITEMS, loss_type=loss_type, train_all_positions=all_positions)
    loss = model.calculate_loss(make_batch(N_ITEMS))
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert model.item_tower.output_layer.weight.grad is not None
    assert all(p.grad is not None for p in model.blocks.parameters())
    assert not model.item_features.requires_grad


def test_predict_and_full_sort_predict_shapes_and_padding():
    model = make_srt(N_ITEMS).eval()
    batch = make_batch(N_ITEMS, batch_size=3)
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        single = model.predict(batch)
    assert scores.shape == (3, N_ITEMS)
    assert torch.isneginf(scores[:, 0]).all() and torch.isfinite(scores[:, 1:]).all()
    # predict scores the same (sequence, item) pairs that full_sort_predict ranks
    torch.testing.assert_close(single, scores.gather(1, batch["item_id"].unsqueeze(1)).squeeze(1))


def test_cosine_similarity_scores_are_cosines_over_temperature():
    model = make_srt(N_ITEMS, similarity="cosine", temperature=0.05).eval()
    batch = make_batch(N_ITEMS, batch_size=3)
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        hidden = model.gather_indexes(model(batch["item_id_list"]), batch["item_length"] - 1)
        items = model.all_item_embeddings()
        expected = F.cosine_similarity(hidden.unsqueeze(1), items.unsqueeze(0), dim=-1) / 0.05
        single = model.predict(batch)
    torch.testing.assert_close(scores[:, 1:], expected[:, 1:])
    assert scores[:, 1:].abs().max() <= 1 / 0.05 + 1e-4
    torch.testing.assert_close(single, scores.gather(1, batch["item_id"].unsqueeze(1)).squeeze(1))


@pytest.mark.parametrize("loss_type", ["CE", "SSM"])
def test_cosine_loss_uses_the_scores_it_ranks_with(loss_type):
    """Training logits equal full_sort_predict's scores (CE over the catalog, SSM before logQ)."""
    plain_ce = {"negatives_from_training_items": False}  # every item a candidate, as in ranking
    model = make_srt(N_ITEMS, similarity="cosine", loss_type=loss_type, neg_sample_num=7, **plain_ce).eval()
    batch = make_batch(N_ITEMS)
    torch.manual_seed(1)
    loss = model.calculate_loss(batch)
    scores = model.full_sort_predict(batch)  # [B, N], last positions = the training targets here
    targets = batch["item_id"]
    if loss_type == "CE":
        expected = F.cross_entropy(scores, targets)
    else:
        torch.manual_seed(1)
        negatives = torch.multinomial(model.sampling_weight, 7, replacement=True)
        logits = scores - model.log_q
        neg = logits[:, negatives].masked_fill(negatives.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
        expected = F.cross_entropy(
            torch.cat([logits.gather(1, targets.unsqueeze(1)), neg], 1), torch.zeros_like(targets)
        )
    torch.testing.assert_close(loss, expected)


def test_trainable_parameters_do_not_grow_with_the_catalog():
    def trainable(model):
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    small, large = make_srt(1_001), make_srt(1_000_001)
    assert trainable(small) == trainable(large)
    assert small.item_features.shape[0] == 1_001 and large.item_features.shape[0] == 1_000_001


def test_no_item_table_in_state_dict_or_optimizer():
    n_items = 997  # a size no layer width shares
    model = make_srt(n_items, projection="mlp")
    state = model.state_dict()
    assert "item_features" not in state and not any("embedding" in k and "position" not in k for k in state)
    assert all(n_items not in tensor.shape for tensor in state.values())
    assert all(param is not model.item_features for param in model.parameters())


def test_position_t_never_sees_later_items():
    model = make_srt(N_ITEMS).eval()
    seq = torch.tensor([[3, 4, 5, 6, 7, 8]])
    changed = seq.clone()
    changed[0, 4:] = torch.tensor([9, 10])
    with torch.no_grad():
        before, after = model(seq), model(changed)
    torch.testing.assert_close(before[:, :4], after[:, :4])
    assert not torch.allclose(before[:, 4:], after[:, 4:])


def test_all_positions_targets_are_the_next_items():
    model = make_srt(N_ITEMS, train_all_positions=True)
    batch = {
        "item_id_list": torch.tensor([[5, 6, 7, 0, 0, 0]]),
        "item_length": torch.tensor([3]),
        "item_id": torch.tensor([8]),
    }
    hidden, targets = model._targets(batch)
    assert targets.tolist() == [6, 7, 8] and hidden.shape == (3, 16)


def test_sampled_softmax_matches_hand_computation_with_logq():
    # eval (no dropout): the same RNG draws below; dot: the hand computation is for plain logits
    model = make_srt(N_ITEMS, loss_type="SSM", neg_sample_num=7, similarity="dot").eval()
    plain = make_srt(N_ITEMS, loss_type="SSM", negatives_from_training_items=False)
    q_plain = plain.sampling_weight / plain.sampling_weight.sum()
    torch.testing.assert_close(plain.log_q[1:], q_plain.log()[1:])  # log q is the sampling distribution's
    batch = make_batch(N_ITEMS)
    torch.manual_seed(123)
    loss = model.calculate_loss(batch)

    torch.manual_seed(123)
    negatives = torch.multinomial(model.sampling_weight, 7, replacement=True)
    hidden, targets = model._targets(batch)
    items = model.item_tower(model.item_features)
    q = model.sampling_weight / model.sampling_weight.sum()
    assert (q[targets] > 0).all()  # targets seen in training: their log q is the sampling one
    logits = hidden @ items.T - q.log()  # logQ-corrected logit of every item, [M, N]
    pos = logits.gather(1, targets.unsqueeze(1))
    neg = logits[:, negatives].masked_fill(negatives.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    expected = F.cross_entropy(torch.cat([pos, neg], 1), torch.zeros_like(targets))
    torch.testing.assert_close(loss, expected)


def test_negatives_equal_to_the_positive_are_masked():
    # A one-item catalog: every sampled negative is the positive, so only the positive logit remains.
    model = make_srt(2, loss_type="SSM", neg_sample_num=4)
    batch = {
        "item_id_list": torch.tensor([[1, 1, 0, 0, 0, 0]]),
        "item_length": torch.tensor([2]),
        "item_id": torch.tensor([1]),
    }
    assert model.calculate_loss(batch).item() == pytest.approx(0.0, abs=1e-6)


def test_popularity_sampling_never_draws_padding():
    model = make_srt(N_ITEMS)
    assert model.sampling_weight[0] == 0
    draws = torch.multinomial(model.sampling_weight, 10_000, replacement=True)
    assert draws.min() >= 1


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("projection", ["linear", "mlp"])
def test_architectures_fit_a_batch(norm_first, projection):
    model = make_srt(
        N_ITEMS,
        norm_first=norm_first,
        projection=projection,
        n_layers=2,
        hidden_dropout_prob=0.0,
        projection_dropout=0.0,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = make_batch(N_ITEMS, batch_size=8)
    first = model.calculate_loss(batch)
    for _ in range(20):
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()
    assert model.calculate_loss(batch) < 0.9 * first


@pytest.mark.parametrize("loss_type", ["CE", "SSM", "BPR"])
def test_bf16_autocast_on_cpu(loss_type):
    model = make_srt(N_ITEMS, loss_type=loss_type, train_all_positions=True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = model.calculate_loss(make_batch(N_ITEMS))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(model.item_tower.output_layer.weight.grad).all()


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(ValueError, match="loss_type"):
        make_srt(N_ITEMS, loss_type="NCE")
    with pytest.raises(ValueError, match="train_neg_sample_args"):
        make_srt(N_ITEMS, train_neg_sample_args={"distribution": "uniform", "sample_num": 1})
    with pytest.raises(ValueError, match="n_heads"):
        make_srt(N_ITEMS, hidden_size=10, n_heads=3)
    with pytest.raises(ValueError, match="projection"):
        make_srt(N_ITEMS, projection="conv")
    with pytest.raises(ValueError, match="similarity"):
        make_srt(N_ITEMS, similarity="euclidean")


def test_tower_standardizes_with_training_statistics_that_travel_with_the_weights():
    model = make_srt(N_ITEMS, standardize_item_features=True)
    real = model.item_features[1:]
    standardized = (real - model.item_tower.feature_mean) / model.item_tower.feature_std
    torch.testing.assert_close(standardized.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(standardized.std(0, correction=0), torch.ones(8), atol=1e-4, rtol=0)
    assert {"item_tower.feature_mean", "item_tower.feature_std"} <= set(model.state_dict())

    other_catalog = make_srt(N_ITEMS + 7, seed=1, standardize_item_features=True)
    other_catalog.load_state_dict(model.state_dict())  # no per-item tensor: any catalog accepts it
    torch.testing.assert_close(other_catalog.item_tower.feature_mean, model.item_tower.feature_mean)


@pytest.mark.parametrize("projection", ["linear", "mlp"])
@pytest.mark.parametrize("hidden_size", [16, 256])
def test_initial_loss_is_near_uniform_for_any_width(projection, hidden_size):
    """Untrained logits are small: full cross-entropy starts near log(#items), whatever the width."""
    n_items = 200
    model = make_srt(
        n_items,
        feature_size=384,
        hidden_size=hidden_size,
        n_heads=4,
        projection=projection,
        standardize_item_features=True,
        similarity="dot",  # cosine logits are bounded by 1 / temperature whatever the init
        negatives_from_training_items=False,  # every item competes: log(#items)
    ).eval()
    with torch.no_grad():
        loss = model.calculate_loss(make_batch(n_items, batch_size=64))
    # SASRec-scale logits (std ~ initializer_range * sqrt(d)) stay within 0.3 nats (old init: 99.9 at d=256)
    assert loss.item() == pytest.approx(math.log(n_items - 1), abs=0.3)


def test_ddp_does_not_broadcast_the_frozen_catalog(tmp_path):
    """RecBole's DDP trainer calls DDP's forward every step; only small, trainable-side buffers sync."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1
    )
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(make_srt(N_ITEMS, standardize_item_features=True))
        assert set(ddp.named_module_buffers) == {"item_tower.feature_mean", "item_tower.feature_std"}
    finally:
        torch.distributed.destroy_process_group()


def test_catalog_vectors_are_computed_once_per_evaluation_and_never_stale():
    model = make_srt(N_ITEMS).eval()
    batch = make_batch(N_ITEMS, batch_size=3)
    calls = []
    model.item_tower.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    with torch.no_grad():
        first = model.full_sort_predict(batch)
        n_after_first = calls.count(N_ITEMS)
        again = model.full_sort_predict(batch)
    assert n_after_first == 1 and calls.count(N_ITEMS) == 1  # the second call reused the catalog
    torch.testing.assert_close(first, again)

    with torch.no_grad():  # a weight change (optimizer step, load_state_dict) invalidates the cache
        model.item_tower.output_layer.weight.mul_(2.0)
        changed = model.full_sort_predict(batch)
    assert calls.count(N_ITEMS) == 2 and not torch.allclose(first[:, 1:], changed[:, 1:])
    fresh = make_srt(N_ITEMS).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.full_sort_predict(batch), changed)
    model.train()  # training always recomputes, with gradients
    scores = model.full_sort_predict(batch)
    assert scores.requires_grad


def test_the_model_counts_its_own_parameters():
    model = make_srt(N_ITEMS, n_layers=2)
    counts = model.num_params()
    assert counts.trainable == sum(p.numel() for p in model.parameters())
    assert counts.non_embedding == sum(
        p.numel() for n, p in model.named_parameters() if n.startswith("blocks.")
    )
    assert counts.catalog == 0
    assert make_srt(10 * N_ITEMS, n_layers=2).num_params() == counts  # independent of the catalog


def test_sequence_modules_are_everything_but_the_item_tower():
    model = make_srt(N_ITEMS)
    prefixes = {name.split(".")[0] + "." for name, _ in model.named_parameters()}
    assert prefixes - {"item_tower."} == set(model.SEQUENCE_MODULES)


def test_built_from_a_feature_matrix_alone_samples_uniformly():
    model = make_srt(N_ITEMS)
    config = srt_test_config(loss_type="SSM")
    bare = type(model)(config, item_features=model.item_features)
    assert bare.n_items == N_ITEMS and bare.sampling_weight[0] == 0
    assert torch.all(bare.sampling_weight[1:] == 1)


def test_per_example_negatives_match_hand_computation_exclude_the_positive_and_carry_logq():
    model = make_srt(N_ITEMS, loss_type="SSM", neg_sample_num=7, similarity="dot", negatives="example").eval()
    batch = make_batch(N_ITEMS, batch_size=6)
    torch.manual_seed(5)
    loss = model.calculate_loss(batch)

    torch.manual_seed(5)
    hidden, targets = model._targets(batch)
    negatives = torch.multinomial(model.sampling_weight, len(targets) * 7, replacement=True).view(-1, 7)
    assert (negatives == targets.unsqueeze(1)).any(), "the draw should hit a positive for this test"
    items = model.item_tower(model.item_features)
    logits = hidden @ items.T - model.log_q  # equal to the sampling log q for the seen items drawn here
    pos = logits.gather(1, targets.unsqueeze(1))
    neg = logits.gather(1, negatives).masked_fill(negatives == targets.unsqueeze(1), float("-inf"))
    torch.testing.assert_close(loss, F.cross_entropy(torch.cat([pos, neg], 1), torch.zeros_like(targets)))


@pytest.mark.parametrize("loss_type", ["SSM", "BPR"])
def test_per_example_negatives_train(loss_type):
    model = make_srt(N_ITEMS, loss_type=loss_type, negatives="example")
    loss = model.calculate_loss(make_batch(N_ITEMS))
    loss.backward()
    assert torch.isfinite(loss) and model.item_tower.output_layer.weight.grad is not None


def test_layer_wise_dropout_from_a_list_or_a_linear_rule():
    model = make_srt(N_ITEMS, n_layers=3, hidden_dropout_prob={"first": 0.5, "last": 0.1})
    rates = [block.ffn[-1].p for block in model.blocks]
    assert rates == pytest.approx([0.5, 0.3, 0.1]) and model.input_dropout.p == pytest.approx(0.5)
    listed = make_srt(N_ITEMS, n_layers=2, hidden_dropout_prob=[0.2, 0.4], attn_dropout_prob=[0.1, 0.0])
    assert [b.attn.attn_dropout for b in listed.blocks] == [0.1, 0.0]
    with pytest.raises(ValueError, match="need 3 values"):
        make_srt(N_ITEMS, n_layers=3, hidden_dropout_prob=[0.1, 0.2])


def test_items_never_seen_in_training_are_no_training_candidates_when_asked():
    counts = torch.tensor([0, 3, 0, 2, 1, 0])  # items 2 and 5 never occur in training
    features = torch.randn(6, 8)
    config = srt_test_config(negatives_from_training_items=True, loss_type="SSM", neg_sample_num=50)
    model = type(make_srt(6))(config, item_features=features, item_counts=counts)
    assert model.seen.tolist() == [False, True, False, True, True, False]
    drawn = torch.multinomial(model.sampling_weight, 1000, replacement=True)
    assert set(drawn.tolist()) <= {1, 3, 4}
    ce = type(make_srt(6))({**config, "loss_type": "CE"}, item_features=features, item_counts=counts)
    batch = {"item_id_list": torch.tensor([[1, 3, 0, 0, 0, 0]]), "item_length": torch.tensor([2]),
             "item_id": torch.tensor([4])}  # fmt: skip
    ce.eval()  # no dropout: the hand computation sees the same vectors
    hidden, targets = ce._targets(batch, ce.all_item_embeddings())
    logits = ce._query(hidden) @ ce._key(ce.all_item_embeddings()).T
    expected = F.cross_entropy(logits[:, [1, 3, 4]], torch.tensor([2]))  # only seen items compete
    torch.testing.assert_close(ce.calculate_loss(batch), expected)
    with torch.no_grad():  # ranking still scores every item: unseen ones are recommendable
        assert torch.isfinite(ce.full_sort_predict(batch)[0, 1:]).all()


@pytest.mark.parametrize("loss_type", ["CE", "SSM", "BPR"])
def test_a_target_missing_from_the_training_counts_keeps_the_loss_finite(loss_type):
    """Fine-tuning batches may hold items the counts never saw: the target still competes."""
    counts = torch.tensor([0, 3, 0, 2, 1, 0])
    config = srt_test_config(negatives_from_training_items=True, loss_type=loss_type, neg_sample_num=5)
    model = type(make_srt(6))(config, item_features=torch.randn(6, 8), item_counts=counts).eval()
    batch = {"item_id_list": torch.tensor([[1, 3, 0, 0, 0, 0]]), "item_length": torch.tensor([2]),
             "item_id": torch.tensor([5])}  # fmt: skip
    hidden, _ = model._targets(batch, model.all_item_embeddings())
    loss = model.calculate_loss(batch)
    assert torch.isfinite(loss) and model.sampling_weight[5] == 0  # never drawn as a negative
    torch.testing.assert_close(model.log_q[5], (1 / model.sampling_weight.sum()).log())  # count 0 + 1
    if loss_type == "CE":  # the seen items and the target compete, item 2 does not
        logits = model._query(hidden) @ model._key(model.all_item_embeddings()).T
        torch.testing.assert_close(loss, F.cross_entropy(logits[:, [1, 3, 4, 5]], torch.tensor([3])))


def test_an_item_id_table_is_added_for_items_seen_in_training_and_counted_as_catalog():
    counts = torch.tensor([0, 3, 0, 2, 1, 0])  # items 2 and 5 never occur in training
    features = torch.randn(6, 8)
    config = srt_test_config(item_id_embedding="add")
    model = type(make_srt(6))(config, item_features=features, item_counts=counts).eval()
    text_only = type(model)(srt_test_config(), item_features=features, item_counts=counts).eval()
    assert model.num_params().catalog == 6 * 16 and text_only.num_params().catalog == 0
    assert model.num_params().trainable == text_only.num_params().trainable + 6 * 16
    assert model.num_params().non_embedding == text_only.num_params().non_embedding
    with torch.no_grad():
        model.item_id_embedding.weight.normal_()  # IDs far from zero, so any use of them shows
        tower = model.item_tower(features)
        vectors = model.all_item_embeddings()
        torch.testing.assert_close(vectors[[0, 2, 5]], tower[[0, 2, 5]])  # padding and unseen: text alone
        torch.testing.assert_close(
            vectors[[1, 3, 4]], tower[[1, 3, 4]] + model.item_id_embedding.weight[[1, 3, 4]]
        )
        torch.testing.assert_close(
            model.item_embedding(torch.tensor([[4, 2], [1, 0]])), vectors[torch.tensor([[4, 2], [1, 0]])]
        )
        batch = make_batch(6, batch_size=3)
        first = model.full_sort_predict(batch)
        model.item_id_embedding.weight.mul_(2.0)  # the cached catalog follows the ID table too
        assert not torch.allclose(model.full_sort_predict(batch)[:, 1:], first[:, 1:])
    model.train()
    loss = model.calculate_loss(make_batch(6, batch_size=3))
    loss.backward()
    grad = model.item_id_embedding.weight.grad
    assert grad[[0, 2, 5]].abs().sum() == 0 and grad[[1, 3, 4]].abs().sum() > 0


def test_weights_move_to_another_catalog_without_the_item_id_table():
    source = make_srt(N_ITEMS, item_id_embedding="add")  # the same catalog size: a table would fit
    target = make_srt(N_ITEMS, seed=1, item_id_embedding="add")
    assert target.load_transferred(source.state_dict())
    assert not target.item_id_embedding.weight.any()  # the target's own table, at zero: text alone at first
    assert source.item_id_embedding.weight[1:].abs().sum() > 0
    torch.testing.assert_close(target.blocks[0].ffn[0].weight, source.blocks[0].ffn[0].weight)
    target.eval()
    with torch.no_grad():
        torch.testing.assert_close(target.all_item_embeddings(), target.item_tower(target.item_features))
    text_only = make_srt(2 * N_ITEMS, seed=1)
    assert text_only.load_transferred(source.state_dict())  # a text-only target drops the table
    assert not target.load_transferred(text_only.state_dict())  # and gets a new one from a text-only source

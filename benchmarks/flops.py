"""What a training run costs: parameter counts and measured training FLOPs.

Parameters (:func:`count_params`), by parameter name, for the models a sweep trains:

* ``trainable``: every parameter with ``requires_grad`` (SRT's frozen item features are a buffer,
  not a parameter, so they are never counted);
* ``non_embedding``: the transformer blocks only, i.e. the parameters under ``blocks.`` (SRT) or
  ``trm_encoder.`` (SASRec, BERT4Rec): attention, feed-forward and the blocks' LayerNorms. Excluded
  are item embeddings, SRT's item tower (projection), position embeddings, the LayerNorm on the
  embeddings, SRT's final LayerNorm and BERT4Rec's output head. This is the ``N`` of the scaling
  laws; it is the same for all three models at the same ``(n_layers, hidden_size, inner_size)``;
* ``catalog``: parameters whose size grows with the number of items: the item embedding table
  (SASRec, BERT4Rec) and BERT4Rec's per-item output bias. 0 for SRT.

FLOPs (:func:`training_step_flops`) are measured, not modelled: ``torch.utils.flop_counter.FlopCounterMode``
around ``loss = model.calculate_loss(batch); loss.backward()`` on a real batch. It counts
matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm``, convolutions, fused attention) as ``2 m n k``
and ignores element-wise work (LayerNorm, GELU, softmax, bias adds, the optimizer). torch does not
register a formula for the CPU flash-attention kernels that ``scaled_dot_product_attention`` runs on
CPU, so :data:`CPU_ATTENTION_FORMULAS` adds them with torch's own convention for the GPU kernels:
forward ``QK^T`` + ``AV`` over the full ``L x L`` square (no causal discount), backward 5 products
(the scores are recomputed). Hand-written attention (SASRec, BERT4Rec) is counted as its ``matmul``\\ s.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Parameter-name prefixes of the transformer stack and of the catalog-sized tables, per model.
TRANSFORMER_PREFIXES: dict[str, tuple[str, ...]] = {
    "SRT": ("blocks.",),
    "SASRec": ("trm_encoder.",),
    "BERT4Rec": ("trm_encoder.",),
}
CATALOG_PREFIXES: dict[str, tuple[str, ...]] = {
    "SRT": (),
    "SASRec": ("item_embedding.",),
    "BERT4Rec": ("item_embedding.", "output_bias"),
}


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of one model (see the module docstring for the rules)."""

    trainable: int
    non_embedding: int
    catalog: int


def count_params(model: nn.Module, model_name: str) -> ParamCounts:
    """Trainable, transformer-only and catalog-sized parameter counts of ``model``."""
    if model_name not in TRANSFORMER_PREFIXES:
        raise KeyError(
            f"no parameter-counting rule for model {model_name!r}; known: {sorted(TRANSFORMER_PREFIXES)}"
        )
    trainable = non_embedding = catalog = 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        trainable += param.numel()
        if name.startswith(TRANSFORMER_PREFIXES[model_name]):
            non_embedding += param.numel()
        if name.startswith(CATALOG_PREFIXES[model_name]):
            catalog += param.numel()
    return ParamCounts(trainable, non_embedding, catalog)


def _attention_forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """``QK^T`` and ``AV`` of fused attention; shapes ``[B, H, L, D]``."""
    b, h, s_q, d_q = query
    s_k, d_v = key[2], value[3]
    return 2 * b * h * s_q * s_k * d_q + 2 * b * h * s_q * s_k * d_v


def _attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    """Recompute ``QK^T``, then ``dP = dO V^T``, ``dV = P^T dO``, ``dQ = dS K``, ``dK = dS^T Q``."""
    b, h, s_q, d_q = query
    s_k, d_v = key[2], value[3]
    return 3 * (2 * b * h * s_q * s_k * d_q) + 2 * (2 * b * h * s_q * s_k * d_v)


def _cpu_attention_formulas() -> dict:
    formulas = {}
    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", _attention_forward),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _attention_backward),
    ):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            formulas[op] = formula
    return formulas


CPU_ATTENTION_FORMULAS = _cpu_attention_formulas()


def training_step_flops(model: nn.Module, interaction, enable_amp: bool = False) -> int:
    """FLOPs of one training step's forward and backward on ``interaction`` (a real batch).

    The model is put in training mode; gradients are cleared afterwards and the torch RNG state
    (dropout, SRT's negative sampling) is restored, so measuring does not change the run.
    """
    device = next(model.parameters()).device
    model.train()
    rng_devices = [device] if device.type == "cuda" else []
    with (
        torch.random.fork_rng(devices=rng_devices),
        FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FORMULAS) as counter,
    ):
        autocast = torch.autocast(device_type=device.type) if enable_amp else contextlib.nullcontext()
        with autocast:
            loss = model.calculate_loss(interaction)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def training_targets(model: nn.Module, interaction) -> torch.Tensor:
    """Number of next-item targets the training loss is computed on in ``interaction`` (0-dim tensor).

    SRT with ``train_all_positions``: every real position; BERT4Rec: the masked positions its loss
    counts (``MASK_INDEX > 0``, as in RecBole's loss); otherwise one target per sequence.
    """
    if getattr(model, "train_all_positions", False):
        return interaction[model.ITEM_SEQ_LEN].sum()
    if hasattr(model, "MASK_INDEX"):
        return (interaction[model.MASK_INDEX] > 0).sum()
    return torch.tensor(interaction[model.ITEM_SEQ].shape[0])

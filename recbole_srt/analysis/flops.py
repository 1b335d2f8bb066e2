"""What a training run costs in FLOPs, measured on real batches (parameters: :mod:`recbole_srt.model.params`).

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

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


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


CPU_ATTENTION_FORMULAS = {
    getattr(torch.ops.aten, name): formula
    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", _attention_forward),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _attention_backward),
    )
    if hasattr(torch.ops.aten, name)
}


def training_step_flops(model: nn.Module, interaction, enable_amp: bool = False) -> int:
    """FLOPs of one training step's forward and backward on ``interaction`` (a real batch).

    The model is put in training mode; gradients are cleared afterwards and the torch RNG state
    (dropout, SRT's negative sampling) is restored, so measuring does not change the run.
    """
    device = next(model.parameters()).device
    model.train()
    with (
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FORMULAS) as counter,
    ):
        with torch.autocast(device_type=device.type, enabled=enable_amp):
            loss = model.calculate_loss(interaction)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def forward_macs(model: nn.Module, interaction) -> int:
    """Multiply-accumulates of one forward ``calculate_loss`` on ``interaction``, as the SRT reference
    counts them: ``thop`` hooks on the model's layers (``nn.Linear``, norms, ...), so functional
    attention matmuls and the loss's own products are not counted."""
    from thop import profile

    class Loss(nn.Module):
        def __init__(self, model: nn.Module):
            super().__init__()
            self.model = model

        def forward(self, batch):
            return self.model.calculate_loss(batch)

    device = next(model.parameters()).device
    with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        macs, _ = profile(Loss(model), inputs=(interaction,), verbose=False)
    for module in model.modules():  # thop removes its counters from the layers it hooks, not the others
        for counter in ("total_ops", "total_params"):
            module._buffers.pop(counter, None)
    model.train()
    return int(macs)


def epoch_costs(model: nn.Module, train_data, enable_amp: bool, seed: int) -> tuple[int, int]:
    """Training FLOPs (forward + backward, :func:`training_step_flops`) and forward MACs
    (:func:`forward_macs`) of one epoch, measured on real batches.

    An epoch is ``n_full`` full batches plus one partial batch of the remaining sequences; each
    kind is measured once on sequences drawn at random from the training set, through the
    dataloader's own collation (BERT4Rec's masking included). Batch-to-batch differences (SRT's
    distinct items, BERT4Rec's masked count) are not averaged out.
    """
    n_rows, batch_size = len(train_data._dataset), train_data.step
    n_full, rest = divmod(n_rows, batch_size)
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device

    def measure(size: int) -> tuple[int, int]:
        batch = train_data.collate_fn(rng.choice(n_rows, size, replace=False).tolist()).to(device)
        return training_step_flops(model, batch, enable_amp), forward_macs(model, batch)

    full, partial = measure(batch_size) if n_full else (0, 0), measure(rest) if rest else (0, 0)
    return n_full * full[0] + partial[0], n_full * full[1] + partial[1]

"""Parameter counts shared by every model a benchmark trains (SRT counts itself with the same rules)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# Where RecBole's SASRec and BERT4Rec keep their transformer blocks.
RECBOLE_TRANSFORMER = "trm_encoder."


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of a sequential recommender.

    * ``trainable``: every parameter with ``requires_grad`` (SRT's frozen features are a buffer);
    * ``non_embedding``: the transformer blocks only (attention, feed-forward, their LayerNorms), the
      ``N`` of the scaling laws, equal for SRT, SASRec and BERT4Rec at equal width and depth;
    * ``catalog``: parameters that grow with the number of items; 0 for SRT without item IDs;
    * :attr:`paper`: the SRT paper's ``N``, every trainable parameter except the item-side tables
      (for SRT the item tower's projection counts, as the reference's ``Linear(2E -> d)`` does).
    """

    trainable: int
    non_embedding: int
    catalog: int

    @property
    def paper(self) -> int:
        return self.trainable - self.catalog


def catalog_params(model: nn.Module, n_items: int) -> int:
    """Parameters with one row (or entry) per item: ID tables and per-item biases.

    A parameter counts when one of its dimensions is ``n_items`` or ``n_items + 1`` (BERT4Rec adds a
    mask token) and it belongs to an ``nn.Embedding`` or to the model itself (BERT4Rec's output bias);
    layer weights that merely happen to share the size are not counted.
    """
    sizes = {n_items, n_items + 1}
    tables = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding) and m.num_embeddings in sizes
    )
    own = sum(p.numel() for p in model.parameters(recurse=False) if sizes & set(p.shape))
    return tables + own


def count_params(model: nn.Module) -> ParamCounts:
    """The model's own count (``model.num_params()``), else RecBole's layout (SASRec, BERT4Rec)."""
    if hasattr(model, "num_params"):
        return model.num_params()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    blocks = sum(p.numel() for name, p in model.named_parameters() if name.startswith(RECBOLE_TRANSFORMER))
    if not blocks:
        raise KeyError(
            f"{type(model).__name__} has no {RECBOLE_TRANSFORMER!r} blocks to count as non-embedding"
        )
    return ParamCounts(trainable, non_embedding=blocks, catalog=catalog_params(model, model.n_items))

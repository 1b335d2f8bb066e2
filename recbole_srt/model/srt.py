"""SRT: the Scalable Recommendation Transformer (Zivic, Vazquez, Sánchez, SIGIR '24).

A SASRec-style causal transformer for next-item prediction whose item ID embedding table is
replaced by a frozen item feature matrix (text embeddings) and a trainable projection, so that
the number of trainable parameters does not depend on the catalog size and items never seen in
training can be scored from their text.

Shapes: B batch, L = MAX_ITEM_LIST_LENGTH, d = hidden_size, F = feature dim, N = n_items
(including padding id 0), K = neg_sample_num, M = number of training targets in a batch.

    item_features  [N, F]   frozen buffer (row 0 = padding, zeros)
    item tower     [*, F] -> [*, d]        Linear, or Linear-GELU-LayerNorm-Dropout-Linear
    item IDs       [*] -> [*, d]                      optional (item_id_embedding: add), added to the
                                                      tower's vector for items seen in training
    sequence       [B, L] ids -> tower + positions -> n_layers causal blocks -> [B, L, d]
    scores         [B, d] @ [N, d]^T -> [B, N]   (dot product, or cosine / temperature)

RecBole pads sequences on the right, so a causal mask alone keeps every real position from
seeing padding.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from recbole_srt.features import load_item_features
from recbole_srt.model.params import ParamCounts

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "swish": nn.SiLU}
# The allowed values of each setting with a fixed set of them.
CHOICES = {
    "loss_type": ("CE", "SSM", "BPR"),
    "similarity": ("dot", "cosine"),
    "projection": ("linear", "mlp"),
    "negatives": ("batch", "example"),
    "hidden_act": tuple(ACTIVATIONS),
    "item_id_embedding": ("none", "add"),
}
# The optional item-ID table's weight: it belongs to one catalog, so it never moves to another.
ITEM_ID_TABLE = "item_id_embedding.weight"
# Dropouts given per block (a number, a list or {first, last}): see per_block.
PER_BLOCK_KEYS = ("hidden_dropout_prob", "attn_dropout_prob")


def per_block(value, n_layers: int) -> list[float]:
    """A dropout for each of ``n_layers`` blocks from a number, a list of ``n_layers`` numbers, or
    ``{first: p0, last: p1}`` (linear from the first block to the last; Zhang et al.'s layer-wise
    adaptive dropout puts the higher rate on the lower blocks)."""
    if isinstance(value, dict):
        if set(value) != {"first", "last"}:
            raise ValueError(f"a per-block dropout rule is {{first: p, last: p}}, got {value}")
        step = (value["last"] - value["first"]) / max(1, n_layers - 1)
        values = [value["first"] + i * step for i in range(n_layers)]
    elif isinstance(value, list | tuple):
        values = list(value)
    else:
        values = [value] * n_layers
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if len(values) != n_layers or not numbers or not all(0 <= v < 1 for v in values):
        raise ValueError(f"dropout {value!r}: need {n_layers} values in [0, 1)")
    return [float(v) for v in values]


def check_config(config) -> None:
    """Refuse settings SRT cannot build, before any data is loaded or encoded."""
    for key, allowed in CHOICES.items():
        if config[key] not in allowed:
            raise ValueError(f"SRT {key} must be one of {allowed}, got {config[key]!r}")
    if not isinstance(config["text_encoder"], str):
        raise ValueError(f"SRT text_encoder must be a model name or folder, got {config['text_encoder']!r}")
    fields = config["text_fields"]
    if fields is not None and not (isinstance(fields, list) and all(isinstance(f, str) for f in fields)):
        raise ValueError(f"SRT text_fields must be a list of .item field names ([title]), got {fields!r}")
    for key in ("n_layers", "n_heads", "hidden_size", "inner_size", "MAX_ITEM_LIST_LENGTH"):
        if config[key] < 1:
            raise ValueError(f"SRT {key} must be at least 1, got {config[key]}")
    if config["hidden_size"] % config["n_heads"]:
        raise ValueError(
            f"hidden_size {config['hidden_size']} is not a multiple of n_heads {config['n_heads']}"
        )
    negatives = config["train_neg_sample_args"]
    if not isinstance(negatives, dict) or negatives.get("distribution") != "none":
        raise ValueError(
            "SRT samples its own negatives (neg_sample_num); set train_neg_sample_args: ~ "
            f"(got {config['train_neg_sample_args']})"
        )
    for key in PER_BLOCK_KEYS:
        try:
            per_block(config[key], config["n_layers"])
        except ValueError as error:
            raise ValueError(f"SRT {key}: {error}") from None


class ItemTower(nn.Module):
    """Frozen item features ``[*, F]`` -> standardise -> trainable projection -> ``[*, d]``.

    ``feature_mean``/``feature_std`` (``[F]``) are fixed at construction (from the training catalog,
    or 0/1) and saved with the weights, so a new catalog is projected exactly as training saw it.
    """

    def __init__(self, feature_size: int, hidden_size: int, projection: str, inner_size: int, dropout: float):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(feature_size))
        self.register_buffer("feature_std", torch.ones(feature_size))
        if projection == "linear":
            self.net = nn.Linear(feature_size, hidden_size)
        elif projection == "mlp":
            self.net = nn.Sequential(
                nn.Linear(feature_size, inner_size),
                nn.GELU(),
                nn.LayerNorm(inner_size),
                nn.Dropout(dropout),
                nn.Linear(inner_size, hidden_size),
            )
        else:
            raise ValueError(f"projection must be 'linear' or 'mlp', got {projection!r}")

    @property
    def output_layer(self) -> nn.Linear:
        return self.net if isinstance(self.net, nn.Linear) else self.net[-1]

    def standardize_over(self, features: torch.Tensor) -> None:
        """Centre and scale each feature dimension by its statistics over ``features`` ``[n, F]``."""
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0, correction=0) + 1e-6)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features - self.feature_mean) / self.feature_std)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention ``[B, L, d] -> [B, L, d]`` with SDPA."""

    def __init__(self, hidden_size: int, n_heads: int, attn_dropout: float, dropout: float):
        super().__init__()
        if hidden_size % n_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of n_heads {n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = attn_dropout
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.view(B, L, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.attn_dropout if self.training else 0.0
        )
        return self.dropout(self.out(y.transpose(1, 2).reshape(B, L, d)))


class Block(nn.Module):
    """Transformer block: attention + feed-forward, LayerNorm before (pre-LN) or after (post-LN)."""

    def __init__(self, hidden_size, n_heads, inner_size, attn_dropout, dropout, act, eps, norm_first):
        super().__init__()
        self.norm_first = norm_first
        self.attn = CausalSelfAttention(hidden_size, n_heads, attn_dropout, dropout)
        self.ffn = nn.Sequential(
            nn.Linear(hidden_size, inner_size),
            ACTIVATIONS[act](),
            nn.Linear(inner_size, hidden_size),
            nn.Dropout(dropout),
        )
        self.norm1 = nn.LayerNorm(hidden_size, eps=eps)
        self.norm2 = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.attn(self.norm1(x))
            return x + self.ffn(self.norm2(x))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.ffn(x))


class SRT(SequentialRecommender):
    """SASRec-style causal transformer over frozen item text features (no item ID embeddings).

    Every item-side parameter lives in :class:`ItemTower`, applied to the same frozen features
    for sequence inputs and for candidates, so the trainable parameter count is independent
    of the catalog. ``item_id_embedding: add`` adds a trainable ``[N, d]`` ID table (UniSRec's
    transductive mode): catalog parameters again, counted apart (:meth:`num_params`), and used
    only for items of the training split; every other item is its text alone.
    """

    # Negatives for SSM and BPR are drawn by the model itself (popularity, with logQ correction),
    # so RecBole's train_neg_sample_args must stay None for every loss_type.
    input_type = InputType.POINTWISE
    # Parameter-name prefixes of everything but the item side (the tower and the optional ID table).
    SEQUENCE_MODULES = ("position_embedding.", "input_norm.", "blocks.", "final_norm.")

    def __init__(
        self,
        config,
        dataset=None,
        item_features: torch.Tensor | None = None,
        item_counts: torch.Tensor | None = None,
    ):
        """Build SRT over a RecBole ``dataset``, or over a feature matrix alone.

        Args:
            config: RecBole ``Config`` (or a dict with the same keys).
            dataset: the training dataset; gives the item features (unless ``item_features``) and the
                training counts that popularity sampling uses (unless ``item_counts``).
            item_features: ``[N, F]`` frozen features, row ``i`` = internal item id ``i`` (row 0 padding).
            item_counts: ``[N]`` training occurrences per item; ``None`` without a dataset = uniform.
        """
        check_config(config)  # before any expensive step (encoding the catalog)
        if item_features is None:
            item_features = load_item_features(config, dataset)
        if dataset is None:  # SequentialRecommender only asks a dataset for the number of item ids
            dataset = SimpleNamespace(num=lambda field: item_features.shape[0])
        super().__init__(config, dataset)
        self.loss_type, self.negatives = config["loss_type"], config["negatives"]
        self.hidden_size = config["hidden_size"]
        # whole-sequence rows (SRTDataset) are trained at every position
        self.train_all_positions = config["train_all_positions"] or config["train_rows"] == "sequences"
        self.neg_sample_num = config["neg_sample_num"]
        self.similarity, self.temperature = config["similarity"], config["temperature"]

        if item_features.shape[0] != self.n_items:
            raise ValueError(f"item_features has {item_features.shape[0]} rows for {self.n_items} item ids")
        inter = getattr(dataset, "inter_feat", None)
        if item_counts is None:
            item_counts = torch.zeros(self.n_items, dtype=torch.long)
            if inter is not None:
                item_counts = torch.bincount(torch.as_tensor(inter[self.ITEM_ID]), minlength=self.n_items)
        # Items of the training split (targets or inputs). With negatives_from_training_items, the others
        # are never a training candidate (CE logit -inf, never sampled), so the text region of items the
        # model has never seen is not pushed down as "never recommend" at every step.
        seen = item_counts > 0
        if inter is not None and self.ITEM_SEQ in inter:
            seen[torch.as_tensor(inter[self.ITEM_SEQ]).flatten()] = True
        seen[0] = False
        # nothing seen (built from features alone): every item stays a candidate. A model built on the
        # meta device (a checkpoint's shape) has no values to ask; its loaded weights do not depend on it.
        self.seen_only = bool(config["negatives_from_training_items"]) and (seen.is_meta or bool(seen.any()))
        weight = (item_counts + 1).float()
        if self.seen_only:
            weight[~seen] = 0.0
        weight[0] = 0.0  # never sample padding
        # log q of every item as if it were sampled at weight count + 1: finite for a target that is
        # never drawn as a negative, identical to the sampling distribution for the items that are.
        log_q = torch.log((item_counts + 1).float() / weight.sum())
        frozen = dict(item_features=item_features.float(), seen=seen, sampling_weight=weight, log_q=log_q)
        for name, tensor in frozen.items():
            self.register_buffer(name, tensor, persistent=False)
        # These buffers are identical on every rank. RecBole's DDP trainer runs DDP's forward every
        # step, which would otherwise broadcast the whole [N, F] feature matrix from rank 0 each time.
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, list(frozen))
        self._catalog_cache: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

        eps = config["layer_norm_eps"]
        dropouts, attn_dropouts = (per_block(config[key], config["n_layers"]) for key in PER_BLOCK_KEYS)
        self.item_tower = ItemTower(
            item_features.shape[1],
            self.hidden_size,
            config["projection"],
            config["projection_inner_size"],
            config["projection_dropout"],
        )
        if config["standardize_item_features"]:
            self.item_tower.standardize_over(self.item_features[1:])
        self.use_item_ids = config["item_id_embedding"] != "none"
        if self.use_item_ids:
            self.item_id_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.input_norm = nn.LayerNorm(self.hidden_size, eps=eps)
        self.input_dropout = nn.Dropout(dropouts[0])
        self.blocks = nn.ModuleList(
            Block(
                self.hidden_size,
                config["n_heads"],
                config["inner_size"],
                attn_dropout,
                dropout,
                config["hidden_act"],
                eps,
                config["norm_first"],
            )
            for dropout, attn_dropout in zip(dropouts, attn_dropouts, strict=True)
        )
        self.final_norm = nn.LayerNorm(self.hidden_size, eps=eps) if config["norm_first"] else nn.Identity()
        self.initializer_range = config["initializer_range"]
        self.apply(self._init_weights)
        # Item vectors start at the scale of SASRec's ID embeddings (std = initializer_range) for
        # any feature or hidden size, so initial logits stay small and the softmax unsaturated.
        output_layer = self.item_tower.output_layer
        nn.init.normal_(output_layer.weight, std=self.initializer_range / math.sqrt(output_layer.in_features))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=self.initializer_range)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _with_ids(self, vectors: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        """Tower vectors ``[n, d]`` of ``item_ids`` ``[n]`` plus their ID rows, for items seen in training."""
        if not self.use_item_ids:
            return vectors
        rows = torch.where(self.seen[item_ids].unsqueeze(-1), self.item_id_embedding(item_ids), 0.0)
        return vectors + rows.to(vectors.dtype)

    def item_embedding(self, item_ids: torch.Tensor) -> torch.Tensor:
        """``[*]`` item ids -> ``[*, d]`` through the item tower, each distinct item projected once."""
        distinct, index = torch.unique(item_ids, return_inverse=True)
        return self._with_ids(self.item_tower(self.item_features[distinct]), distinct)[index]

    def all_item_embeddings(self) -> torch.Tensor:
        """``[N, d]``: the whole catalog through the item tower (row 0 = padding)."""
        every = torch.arange(len(self.item_features), device=self.item_features.device)
        return self._with_ids(self.item_tower(self.item_features), every)

    def item_side_tensors(self) -> list[torch.Tensor]:
        """Every tensor an item's vector depends on: the features, the tower and the ID table."""
        modules = [self.item_tower, *([self.item_id_embedding] if self.use_item_ids else [])]
        return [self.item_features, self.seen, *(t for m in modules for t in (*m.parameters(), *m.buffers()))]

    def _catalog(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``[N, d]`` catalog embeddings and the same vectors as scored (:meth:`_key`).

        Outside training (eval mode, no grad) they are computed once and cached under the versions of
        the feature buffer and of every item-side tensor: an optimizer step, ``load_state_dict`` or
        a new feature matrix changes one of them, so the cache is never stale.
        """
        if self.training or torch.is_grad_enabled():
            embeddings = self.all_item_embeddings()
            return embeddings, self._key(embeddings)
        version = tuple((id(t), t._version, t.device) for t in self.item_side_tensors())
        if self._catalog_cache is None or self._catalog_cache[0] != version:
            embeddings = self.all_item_embeddings()
            self._catalog_cache = (version, (embeddings, self._key(embeddings)))
        return self._catalog_cache[1]

    def load_transferred(self, state_dict: dict) -> bool:
        """Load weights trained on another catalog: all but its item-ID table. This model's own table, if it
        has one, starts at zero, so that before training every item is its text alone. Whether a table
        was left behind."""
        own = {ITEM_ID_TABLE: torch.zeros_like(self.item_id_embedding.weight)} if self.use_item_ids else {}
        self.load_state_dict({**{k: v for k, v in state_dict.items() if k != ITEM_ID_TABLE}, **own})
        return ITEM_ID_TABLE in state_dict

    def num_params(self) -> ParamCounts:
        """Parameter counts, as nanoGPT's ``get_num_params``: see :class:`ParamCounts`."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        blocks = sum(p.numel() for p in self.blocks.parameters())
        catalog = self.item_id_embedding.weight.numel() if self.use_item_ids else 0  # one row per item
        return ParamCounts(trainable, non_embedding=blocks, catalog=catalog)

    def forward(self, item_seq: torch.Tensor, catalog: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L]`` item ids (right-padded with 0) -> ``[B, L, d]`` hidden state at every position.

        ``catalog``: the ``[N, d]`` catalog embeddings when the caller has them already (full
        cross-entropy, full ranking): the inputs are then looked up instead of projected again.
        """
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        items = catalog[item_seq] if catalog is not None else self.item_embedding(item_seq)
        x = items + self.position_embedding(positions)
        x = self.input_dropout(self.input_norm(x))
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)

    def _query(self, hidden: torch.Tensor) -> torch.Tensor:
        """Sequence states ``[*, d]`` as they enter the dot product with :meth:`_key` item vectors."""
        return F.normalize(hidden, dim=-1) / self.temperature if self.similarity == "cosine" else hidden

    def _key(self, items: torch.Tensor) -> torch.Tensor:
        """Item vectors ``[*, d]`` as they are scored: unit length for cosine similarity."""
        return F.normalize(items, dim=-1) if self.similarity == "cosine" else items

    def _targets(self, interaction, catalog: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states ``[M, d]`` and their next-item targets ``[M]`` for the training loss."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        pos_items = interaction[self.POS_ITEM_ID]
        hidden = self.forward(item_seq, catalog)
        if not self.train_all_positions:
            return self.gather_indexes(hidden, item_seq_len - 1), pos_items
        # Position t predicts item t+1; the last real position predicts the interaction's target.
        targets = torch.cat([item_seq[:, 1:], torch.zeros_like(item_seq[:, :1])], dim=1)
        targets = targets.scatter(1, (item_seq_len - 1).unsqueeze(1), pos_items.unsqueeze(1))
        real = torch.arange(item_seq.shape[1], device=item_seq.device) < item_seq_len.unsqueeze(1)
        return hidden[real], targets[real]

    def calculate_loss(self, interaction) -> torch.Tensor:
        if self.loss_type == "CE":
            # Inputs and candidates each project the whole catalog (fixed shapes; in training each
            # pass draws its own tower dropout, as separate lookups would).
            hidden, targets = self._targets(interaction, self.all_item_embeddings())  # [M, d], [M]
            logits = self._query(hidden) @ self._key(self.all_item_embeddings()).T  # [M, N]
            if self.seen_only:  # a batch's own targets are training items even if the counts missed them
                logits = logits.masked_fill(~self.seen.index_fill(0, targets, True), float("-inf"))
            logits[:, 0] = float("-inf")
            return F.cross_entropy(logits.float(), targets)

        hidden, targets = self._targets(interaction)  # [M, d], [M]
        query = self._query(hidden)

        pos_logits = (query * self._key(self.item_embedding(targets))).sum(-1, keepdim=True)  # [M, 1]
        neg_logits, neg_log_q, is_positive = self._negative_logits(query, targets)  # [M, K] each
        if self.loss_type == "SSM":
            # logQ correction: subtract the log sampling probability from every sampled logit.
            pos_logits = pos_logits - self.log_q[targets].unsqueeze(1)
            neg_logits = (neg_logits - neg_log_q).masked_fill(is_positive, float("-inf"))
            logits = torch.cat([pos_logits, neg_logits], dim=1).float()
            return F.cross_entropy(logits, torch.zeros_like(targets))
        pair_loss = -F.logsigmoid((pos_logits - neg_logits).float())  # BPR, [M, K]
        keep = ~is_positive
        return (pair_loss * keep).sum() / keep.sum().clamp(min=1)

    def _negative_logits(self, query: torch.Tensor, targets: torch.Tensor):
        """Popularity-sampled negatives for ``query`` ``[M, d]``: their logits, log sampling
        probabilities and where they equal the target, each ``[M, K]`` (broadcast for shared ones).

        ``negatives: batch`` draws ``K`` items shared by the batch (one ``[M, d] @ [d, K]``);
        ``negatives: example`` draws ``K`` for every target (``M * K`` items through the tower).
        """
        K = self.neg_sample_num
        if self.negatives == "batch":
            negatives = torch.multinomial(self.sampling_weight, K, replacement=True)  # [K]
            logits = query @ self._key(self.item_embedding(negatives)).T
            return logits, self.log_q[negatives].unsqueeze(0), negatives.unsqueeze(0) == targets.unsqueeze(1)
        negatives = torch.multinomial(self.sampling_weight, len(targets) * K, replacement=True)
        negatives = negatives.view(len(targets), K)  # [M, K]
        logits = (query.unsqueeze(1) * self._key(self.item_embedding(negatives))).sum(-1)
        return logits, self.log_q[negatives], negatives == targets.unsqueeze(1)

    def _last_query(self, interaction, catalog: torch.Tensor | None = None) -> torch.Tensor:
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        return self._query(self.gather_indexes(self.forward(item_seq, catalog), item_seq_len - 1))  # [B, d]

    @staticmethod
    def _finite(scores: torch.Tensor) -> torch.Tensor:
        """``scores``, checked: NaN or Inf ranks nothing, so no result is made of it (a ``ValueError``)."""
        bad = ~torch.isfinite(scores)
        if bad.any():
            raise ValueError(
                f"SRT's scores are NaN or Inf for {int(bad.sum())} of {bad.numel()} (sequence, item) pairs: "
                "its weights or settings (e.g. temperature) overflow; no ranking is made of them"
            )
        return scores

    def predict(self, interaction) -> torch.Tensor:
        """Score of each row's candidate ``interaction[ITEM_ID]`` -> ``[B]``."""
        items = self._key(self.item_embedding(interaction[self.ITEM_ID]))
        return self._finite((self._last_query(interaction) * items).sum(-1))

    def full_sort_predict(self, interaction) -> torch.Tensor:
        """Scores over the whole catalog -> ``[B, N]``; padding id 0 scores ``-inf``."""
        catalog, keys = self._catalog()
        scores = self._last_query(interaction, catalog) @ keys.T
        self._finite(scores[:, 1:])
        scores[:, 0] = float("-inf")
        return scores

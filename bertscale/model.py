"""BERT (Devlin et al. 2018) for pretraining, with HuggingFace's names and state_dict keys.

Read top to bottom: config, embeddings, self-attention, layer, encoder, pooler, heads, models.
Shapes: B batch, T sequence length, H hidden size, N real (non-pad) tokens in the batch,
M masked positions, V vocabulary, nh heads, hd head size.

Three things make training fast without changing a single state_dict key:
- unpadding: when a batch has padding, every position-wise op (embeddings, LayerNorms, dense
  layers, FFN) runs on the N real tokens only, as an (N, H) matrix. Attention runs on them too,
  as FlashAttention over variable-length sequences (``varlen_attention``) on a CUDA GPU in
  bf16/fp16; elsewhere tokens are scattered back to (B, T) around attention, which runs as
  ``scaled_dot_product_attention`` with a padding mask. The indices (``UnpadIndices``) come from
  the data loader, computed on the host, so a training step reads nothing back from the GPU;
- the MLM head (H x V decoder, the largest matmul of a small BERT) runs only at masked positions;
- query/key/value are one stacked (3H, H) parameter and one matmul; state dicts still hold
  HuggingFace's separate query/key/value (hooks split on save and fuse on load, ``hf_state_dict``
  for dicts in parameter names such as DeepSpeed's ZeRO files).
``config.unpad=False`` keeps the plain padded path; the tests assert both give the same outputs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from bertscale.config import in_range
from bertscale.errors import ConfigError
from bertscale.masking import IGNORE_INDEX  # label of positions the MLM loss skips

ACT2FN: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,  # exact erf GELU, as BERT and HuggingFace's "gelu"
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}

# Parameters shared with another one (key -> the key it is tied to), as HuggingFace's _tied_weights_keys.
# Writers may drop these keys (safetensors refuses shared tensors); readers restore them.
TIED_WEIGHTS = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}


@dataclass
class BertConfig:
    """Model shape; field names and defaults (BERT-base) are HuggingFace's ``BertConfig``."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    # ours, not in HuggingFace's config.json
    gradient_checkpointing: bool = False  # recompute each layer in backward: less memory, ~1/3 more compute
    unpad: bool = True  # run position-wise ops on real tokens only (see module docstring)

    RANGES: ClassVar[
        dict[str, str]
    ] = {  # checked here (transformers' config.json too) and by bertscale.config at load
        **dict.fromkeys(
            ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"),
            "[1, inf)",
        ),
        **dict.fromkeys(("max_position_embeddings", "type_vocab_size"), "[1, inf)"),
        **dict.fromkeys(("hidden_dropout_prob", "attention_probs_dropout_prob"), "[0, 1)"),
        "initializer_range": "[0, inf)",
        "layer_norm_eps": "(0, inf)",
        "pad_token_id": "[0, inf)",
    }

    def __post_init__(self) -> None:
        for name, interval in self.RANGES.items():
            if not in_range(getattr(self, name), interval):
                raise ValueError(f"{name} must be in {interval}, got {getattr(self, name)!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {sorted(ACT2FN)}")

    def to_hf_dict(self) -> dict[str, Any]:
        """A transformers ``config.json`` for ``BertForPreTraining``."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in HF_FIELDS}
        return {
            "architectures": ["BertForPreTraining"],
            "model_type": "bert",
            **fields,
            "position_embedding_type": "absolute",
            "tie_word_embeddings": True,
        }

    @classmethod
    def from_hf_dict(cls, hf: Mapping[str, Any], source: str = "config.json", **ours: Any) -> BertConfig:
        """Read a transformers BERT ``config.json`` dict; ``ours`` sets our own options (e.g. unpad)."""
        if hf.get("model_type", "bert") != "bert":
            raise ConfigError(f"{source}: model_type is {hf['model_type']!r}, expected 'bert'")
        unsupported = {
            "is_decoder": False,
            "add_cross_attention": False,
            "position_embedding_type": "absolute",
            "tie_word_embeddings": True,
        }
        for key, expected in unsupported.items():
            if hf.get(key, expected) != expected:
                raise ConfigError(f"{source}: {key}={hf[key]!r} is not supported (only {expected!r})")
        values = {key: hf[key] for key in HF_FIELDS if key in hf}
        try:
            return cls(**values, **ours)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{source}: {err}") from None


HF_FIELDS = tuple(
    f.name for f in dataclasses.fields(BertConfig) if f.name not in ("gradient_checkpointing", "unpad")
)


# --- padding ---------------------------------------------------------------------------------


@dataclass
class UnpadIndices:
    """Where the real tokens of a padded (B, T) batch are, and which of them the outputs read.

    Built once per batch by :meth:`build`: on the host by the pretraining collate
    (``bertscale.pretrain.data.collate``, batch key ``unpad_indices``), so that a training step on a
    GPU never waits for the device to answer a question about the batch; or by the model itself when
    it is called HF-style with only an ``attention_mask`` (that path syncs, as HuggingFace's does).
    """

    indices: torch.Tensor  # (N,) int64 positions of the real tokens in the flattened (B*T) grid, ascending
    cu_seqlens: torch.Tensor  # (B+1,) int32: row b's tokens are indices[cu_seqlens[b]:cu_seqlens[b+1]]
    max_seqlen: int  # longest row, in real tokens
    batch_size: int
    seq_len: int
    has_padding: bool  # False: every position is real (no mask is needed)
    # with an output_mask (e.g. the masked-LM positions): the rows the last layer and the heads read
    output_rows: torch.Tensor | None = None  # (K',) rows in (N, ...) of output_mask tokens + first tokens
    masked_rows: torch.Tensor | None = None  # (K,) places in output_rows of the output_mask tokens
    first_rows: torch.Tensor | None = None  # (B,) places in output_rows of each row's first token ([CLS])
    masked_positions: torch.Tensor | None = None  # (K,) flat (B*T) positions of the output_mask tokens

    @classmethod
    def build(cls, attention_mask: torch.Tensor, output_mask: torch.Tensor | None = None) -> UnpadIndices:
        """From a (B, T) attention mask (1 = real) and an optional (B, T) bool mask of wanted outputs.

        Reads values (nonzero, max, any): cheap on CPU tensors, a host sync on a GPU.
        """
        B, T = attention_mask.shape
        real = attention_mask.bool().flatten()  # (B*T,)
        indices = torch.nonzero(real, as_tuple=True)[0]
        lengths = real.view(B, T).sum(1, dtype=torch.int32)
        cu_seqlens = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
        out = cls(indices, cu_seqlens, int(lengths.max()) if B else 0, B, T, len(indices) < B * T)
        if output_mask is None:
            return out
        keep = output_mask.flatten().clone()
        keep[::T] = True  # the first token of each row feeds the pooler
        if bool((keep & ~real).any()):
            raise ValueError("output positions must be real tokens (attention_mask 1), not padding")
        positions = torch.nonzero(keep, as_tuple=True)[0]  # (K',) flat (b, t) order
        out.output_rows = (real.cumsum(0) - 1)[positions]  # a real token's row = real tokens before it
        out.masked_rows = torch.nonzero(output_mask.flatten()[positions], as_tuple=True)[0]
        out.first_rows = torch.nonzero(positions % T == 0, as_tuple=True)[0]
        out.masked_positions = positions[out.masked_rows]
        return out

    def without_outputs(self) -> UnpadIndices:
        none = dict.fromkeys(("output_rows", "masked_rows", "first_rows", "masked_positions"))
        return dataclasses.replace(self, **none)

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> UnpadIndices:
        tensors = {
            f.name: fn(value)
            for f in dataclasses.fields(self)
            if isinstance(value := getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **tensors)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> UnpadIndices:
        """As ``Tensor.to``: the training loops move batches with ``v.to(device)`` for every key."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> UnpadIndices:  # DataLoader(pin_memory=True) calls it
        return self._map(torch.Tensor.pin_memory)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(0, 1).index_select(0, self.indices)  # (B, T, ...) -> (N, ...)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        grid = x.new_zeros(self.batch_size * self.seq_len, *x.shape[1:])
        grid = grid.index_copy(0, self.indices, x)  # out of place, so autograd flows back to x
        return grid.view(self.batch_size, self.seq_len, *x.shape[1:])  # (N, ...) -> (B, T, ...), 0 at pads


# --- modules ---------------------------------------------------------------------------------


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        # ids are (B, T) or, unpadded, (N,); the sum order is HuggingFace's, for bitwise parity
        embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(position_ids)  # (..., H)
        return self.dropout(self.LayerNorm(embeddings))


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        # query, key and value stacked (3H, H): one matmul, no per-forward concatenation. State dicts
        # still hold HuggingFace's query/key/value (the hooks below split and fuse them).
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.register_state_dict_post_hook(_split_qkv_hook)
        self.register_load_state_dict_pre_hook(_fuse_qkv_hook)

    def forward(
        self, hidden_states: torch.Tensor, attn_mask: torch.Tensor | None, padding: UnpadIndices | None
    ) -> torch.Tensor:
        # hidden_states: (B, T, H), or (N, H) when unpadded
        qkv = self.qkv(hidden_states)  # (..., 3H)
        dropout_p = self.dropout.p if self.training else 0.0
        if padding is not None and varlen_attention_supported(qkv, self.attention_head_size):
            # each sequence's real tokens attend to each other: no padding, no mask (which would rule
            # out FlashAttention), no scatter to (B, T) and back
            q, k, v = qkv.view(-1, 3, self.num_attention_heads, self.attention_head_size).unbind(1)  # (N, nh, hd)
            context = varlen_attention(q, k, v, padding.cu_seqlens, padding.max_seqlen, dropout_p)
            return context.flatten(1)  # (N, H)
        if padding is not None:
            qkv = padding.pad(qkv)  # (B, T, 3H)
        B, T, _ = qkv.shape
        q, k, v = qkv.view(B, T, 3, self.num_attention_heads, self.attention_head_size).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p
        )  # (B, nh, T, hd)
        context = context.transpose(1, 2).reshape(B, T, -1)  # (B, T, H)
        return padding.unpad(context) if padding is not None else context


@functools.cache
def _flash_capable(device_index: int | None) -> bool:
    return torch.backends.cuda.is_flash_attention_available() and torch.cuda.get_device_capability(
        device_index
    ) >= (8, 0)  # FlashAttention 2 needs Ampere or later


def varlen_attention_supported(x: torch.Tensor, head_size: int) -> bool:
    """Whether :func:`varlen_attention` runs on ``x``'s device and dtype: FlashAttention on a CUDA
    GPU of compute capability >= 8.0, bf16/fp16, head size a multiple of 8 up to 256, and not turned
    off (``torch.backends.cuda.enable_flash_sdp(False)`` or an ``sdpa_kernel`` without FLASH).
    Elsewhere (CPU, fp32) attention runs as SDPA over the padded batch. Reads no tensor values."""
    return (
        x.is_cuda
        and x.dtype in (torch.bfloat16, torch.float16)
        and head_size % 8 == 0
        and head_size <= 256
        and torch.backends.cuda.flash_sdp_enabled()
        and _flash_capable(x.device.index)
    )


def varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, dropout_p: float
) -> torch.Tensor:
    """Bidirectional attention within each packed sequence: q, k, v (N, nh, hd) -> (N, nh, hd).

    Sequence b is rows ``cu_seqlens[b]:cu_seqlens[b+1]`` (int32, on the device). This is the kernel
    behind ``torch.nn.attention.varlen.varlen_attn`` (torch 2.13), called directly because that
    wrapper fixes dropout at 0 and BERT trains with attention dropout; the op has its own backward.
    """
    out, *_ = torch.ops.aten._flash_attention_forward(
        q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p, False, False
    )  # (output, logsumexp, rng_state, unused, debug mask); is_causal False, no debug mask
    return out


QKV = ("query", "key", "value")  # HuggingFace's modules, in the order qkv stacks them


def _split_qkv(prefix: str, weight: torch.Tensor, bias: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """HuggingFace's ``{prefix}query.weight`` ... ``{prefix}value.bias`` of a stacked (3H, H) qkv.

    ``tensor_split``: a ZeRO-3 partitioned parameter is an empty placeholder, split into three empties.
    """
    parts = {"weight": weight.tensor_split(3), "bias": bias.tensor_split(3) if bias is not None else ()}
    return {
        f"{prefix}{name}.{kind}": chunks[i] if isinstance(weight, nn.Parameter) else chunks[i].clone()
        for i, name in enumerate(QKV)
        for kind, chunks in parts.items()
        if chunks  # a clone: safetensors refuses tensors that share memory
    }


def hf_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` in HuggingFace's keys, key order kept: ``*.qkv.weight/bias`` (our parameter names,
    as ``named_parameters`` and DeepSpeed's ZeRO files give them) become query/key/value; other keys
    (already HuggingFace's) pass unchanged. ``Module.state_dict()`` needs none of this (its hook does it)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("qkv.weight"):
            prefix = key.removesuffix("qkv.weight")
            out.update(_split_qkv(prefix, value, state_dict.get(f"{prefix}qkv.bias")))
        elif not key.endswith("qkv.bias"):
            out[key] = value
    return out


def _split_qkv_hook(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    # qkv's two keys are the last ones this module added (dropout has none): popping and appending
    # keeps HuggingFace's key order
    weight = state_dict.pop(f"{prefix}qkv.weight")
    bias = state_dict.pop(f"{prefix}qkv.bias", None)
    state_dict.update(_split_qkv(prefix, weight, bias))


def _fuse_qkv_hook(
    module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
    missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
) -> None:  # fmt: skip
    """HuggingFace's (and our checkpoints') query/key/value -> the stacked qkv, before loading."""
    for kind in ("weight", "bias"):
        keys = [f"{prefix}{name}.{kind}" for name in QKV]
        present = [key for key in keys if key in state_dict]
        if len(present) == len(keys):
            state_dict[f"{prefix}qkv.{kind}"] = torch.cat([state_dict.pop(key) for key in keys])
        elif present:  # a partial set would load as nothing under strict=False: refuse it
            error_msgs.append(f"{prefix}: {', '.join(present)} without the rest of query/key/value.{kind}")


class BertSelfOutput(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(self.dense(hidden_states))
        return self.LayerNorm(hidden_states + input_tensor)  # post-LN residual, as in BERT


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attn_mask: torch.Tensor | None,
        padding: UnpadIndices | None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        context = self.self(hidden_states, attn_mask, padding)  # every token is a key and a value
        if rows is not None:  # only these rows are read after this layer: the rest of it skips the others
            context, hidden_states = (
                x.flatten(0, -2).index_select(0, rows) for x in (context, hidden_states)
            )
        return self.output(context, hidden_states)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))  # (..., I)


class BertOutput(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(self.dense(hidden_states))  # (..., H)
        return self.LayerNorm(hidden_states + input_tensor)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attn_mask: torch.Tensor | None,
        padding: UnpadIndices | None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        attention_output = self.attention(hidden_states, attn_mask, padding, rows)  # (K, H) if rows
        return self.output(self.intermediate(attention_output), attention_output)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.gradient_checkpointing = config.gradient_checkpointing
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attn_mask: torch.Tensor | None,
        padding: UnpadIndices | None,
        last_layer_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``last_layer_rows``: flat rows of ``hidden_states`` whose output is wanted; the last layer's
        output projection and FFN then run on those rows only, and (K, H) is returned."""
        for i, layer in enumerate(self.layer):
            rows = last_layer_rows if i == len(self.layer) - 1 else None
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # keep only each layer's input; its activations are recomputed in backward
                hidden_states = checkpoint(
                    layer, hidden_states, attn_mask, padding, rows, use_reentrant=False
                )
            else:
                hidden_states = layer(hidden_states, attn_mask, padding, rows)
        return hidden_states


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))  # (B, H) from the [CLS] token


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class BertLMPredictionHead(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        # decoder.weight is tied to the word embeddings by the model; decoder.bias IS self.bias
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states))  # (..., V)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)

    def forward(
        self, sequence_output: torch.Tensor, pooled_output: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predictions(sequence_output), self.seq_relationship(pooled_output)


# --- models ----------------------------------------------------------------------------------


def init_weights(module: nn.Module, std: float) -> None:
    """HuggingFace's BertPreTrainedModel.init_weights: N(0, std) weights, zero biases, unit norms."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, BertLMPredictionHead):
        nn.init.zeros_(module.bias)


@dataclass
class BertModelOutput:
    """HuggingFace's BaseModelOutputWithPooling names, plus the rows ``output_mask`` asked for.

    Unpacks as ``sequence_output, pooled_output = bert(...)`` (HF's tuple form), where
    sequence_output is ``last_hidden_state``, or ``masked_hidden_state`` when output_mask was given.
    """

    last_hidden_state: torch.Tensor | None = None  # (B, T, H); None when output_mask was given
    pooler_output: torch.Tensor | None = None  # (B, H); None without a pooler
    masked_hidden_state: torch.Tensor | None = None  # (K, H) = last_hidden_state[output_mask]

    def __iter__(self) -> Iterator[torch.Tensor | None]:
        yield self.last_hidden_state if self.masked_hidden_state is None else self.masked_hidden_state
        yield self.pooler_output

    def __getitem__(self, index: int) -> torch.Tensor | None:
        return tuple(self)[index]


class BertModel(nn.Module):
    def __init__(self, config: BertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.apply(lambda m: init_weights(m, config.initializer_range))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_mask: torch.Tensor | None = None,
        unpad_indices: UnpadIndices | None = None,
    ) -> BertModelOutput:
        """``last_hidden_state`` (B, T, H) and ``pooler_output`` (B, H).

        With ``config.unpad`` and padding in ``attention_mask``, last_hidden_state is 0 at padded
        positions (HuggingFace computes values there that no loss or head should read).
        ``output_mask`` (B, T) bool: ``masked_hidden_state`` = last_hidden_state[output_mask] (K, H)
        instead of last_hidden_state, computed cheaply: the last layer runs its output projection
        and FFN only at those positions and [CLS].
        ``unpad_indices``: :class:`UnpadIndices` of this batch, built on the host (the pretraining
        collate does); the model then reads nothing back from the device. It replaces
        ``output_mask``: its output rows, if it has them, select the outputs.
        """
        B, T = input_ids.shape
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
        if unpad_indices is None:  # HF-style call: find the real tokens here (reads the mask back)
            mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            unpad_indices = UnpadIndices.build(mask, output_mask)
        elif attention_mask is None:
            raise ValueError("unpad_indices needs the attention_mask it was built from")

        attn_mask = padding = None
        if unpad_indices.has_padding:
            attn_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): True = may be attended to
            if self.config.unpad:
                padding = unpad_indices
        if padding is not None:  # every position-wise op below runs on (N, H)
            input_ids, token_type_ids, position_ids = (
                padding.unpad(t) for t in (input_ids, token_type_ids, position_ids)
            )

        hidden_states = self.embeddings(input_ids, token_type_ids, position_ids)  # (B, T, H) or (N, H)
        if unpad_indices.output_rows is None:
            hidden_states = self.encoder(hidden_states, attn_mask, padding)
            sequence_output = (
                padding.pad(hidden_states) if padding is not None else hidden_states
            )  # (B, T, H)
            pooled_output = self.pooler(sequence_output) if self.pooler is not None else None  # (B, H)
            return BertModelOutput(last_hidden_state=sequence_output, pooler_output=pooled_output)

        rows = unpad_indices.output_rows  # (K',) rows of the (N, H) layout
        if padding is None:  # the (B*T, H) layout: rows are flat positions
            rows = unpad_indices.indices.index_select(0, rows)
        hidden_states = self.encoder(hidden_states, attn_mask, padding, last_layer_rows=rows)  # (K', H)
        sequence_output = hidden_states.index_select(0, unpad_indices.masked_rows)  # (K, H)
        first_tokens = hidden_states.index_select(0, unpad_indices.first_rows)[:, None]  # (B, 1, H)
        pooled_output = self.pooler(first_tokens) if self.pooler is not None else None  # reads [:, 0]
        return BertModelOutput(pooler_output=pooled_output, masked_hidden_state=sequence_output)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        return _count_parameters(self, exclude_embeddings)


@dataclass
class BertForPreTrainingOutput:
    loss: torch.Tensor | None = None  # mlm_loss + nsp_loss, of the parts whose labels were given
    mlm_loss: torch.Tensor | None = None
    nsp_loss: torch.Tensor | None = None
    prediction_logits: torch.Tensor | None = None  # (M, V) at masked positions if labels, else (B, T, V)
    seq_relationship_logits: torch.Tensor | None = None  # (B, 2)
    masked_lm_labels: torch.Tensor | None = None  # (M,) targets of prediction_logits rows, if labels


class BertForPreTraining(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config)
        self.cls.apply(lambda m: init_weights(m, config.initializer_range))
        # tie after init, so the decoder's own init does not overwrite the embeddings' zero pad row
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        next_sentence_label: torch.Tensor | None = None,
        unpad_indices: UnpadIndices | None = None,
    ) -> BertForPreTrainingOutput:
        """``labels`` (B, T): target id at masked positions, -100 elsewhere (HuggingFace style).

        ``unpad_indices``: built on the host with ``output_mask = labels != -100`` (the pretraining
        collate's), so that the step reads nothing back from the device.
        """
        if labels is None:
            if unpad_indices is not None:
                unpad_indices = unpad_indices.without_outputs()
            encoded = self.bert(input_ids, attention_mask, token_type_ids, unpad_indices=unpad_indices)
            out = BertForPreTrainingOutput(
                prediction_logits=self.cls.predictions(encoded.last_hidden_state)
            )  # (B, T, V)
        else:
            if unpad_indices is None or unpad_indices.masked_positions is None:
                mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
                unpad_indices = UnpadIndices.build(mask, labels != IGNORE_INDEX)
                attention_mask = mask
            # the last layer and the MLM head run at the masked ~15% of tokens only
            encoded = self.bert(input_ids, attention_mask, token_type_ids, unpad_indices=unpad_indices)
            out = BertForPreTrainingOutput(
                prediction_logits=self.cls.predictions(encoded.masked_hidden_state)
            )  # (M, V)
            out.masked_lm_labels = labels.flatten().index_select(0, unpad_indices.masked_positions)  # (M,)
            out.mlm_loss = _cross_entropy(out.prediction_logits, out.masked_lm_labels)
        out.seq_relationship_logits = self.cls.seq_relationship(encoded.pooler_output)
        if next_sentence_label is not None:
            out.nsp_loss = _cross_entropy(out.seq_relationship_logits, next_sentence_label.view(-1))

        parts = [loss for loss in (out.mlm_loss, out.nsp_loss) if loss is not None]
        out.loss = sum(parts[1:], parts[0]) if parts else None
        return out

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        return _count_parameters(self, exclude_embeddings)

    def flops_per_token(self, seq_len: int, mlm_fraction: float = 0.15) -> float:
        return training_flops_per_token(self.config, seq_len, mlm_fraction)


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # at least fp32: a bf16 log-softmax over the vocabulary loses the loss's precision
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), labels)


def _count_parameters(model: nn.Module, exclude_embeddings: bool) -> int:
    # parameters() yields a tied tensor once, so the decoder weight is not counted twice
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if not (exclude_embeddings and id(p) in embeddings))


def training_flops_per_token(config: BertConfig, seq_len: int, mlm_fraction: float = 0.15) -> float:
    """Model FLOPs of one training step (forward + backward = 3x forward, 2 FLOPs per MAC) per token.

    Counts the work the pretraining losses need, which is what BertForPreTraining does: every layer's
    matmuls and attention over ``seq_len`` keys, except that the last layer's output projection and
    FFN are needed only at the masked tokens and [CLS]; the MLM head at the ``mlm_fraction`` of
    tokens that are masked; the pooler + NSP head once per sequence. Embedding lookups, norms and
    activations are ignored (< 1%), and so is recomputation by gradient checkpointing, as usual for MFU.
    """
    H, I, V, L = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers  # noqa: E741
    attention = 3 * H * H + 2 * seq_len * H  # q, k, v projections; QK^T and attn @ V
    rest = H * H + 2 * H * I  # output projection, FFN
    last_layer = attention + (mlm_fraction + 1 / seq_len) * rest
    mlm_head = mlm_fraction * (H * H + H * V)  # transform, decoder
    nsp_head = (H * H + 2 * H) / seq_len  # pooler, seq_relationship
    return 6.0 * ((L - 1) * (attention + rest) + last_layer + mlm_head + nsp_head)

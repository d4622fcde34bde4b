"""bertscale.model against transformers' BERT: same keys, same numbers, same gradients.

Parity runs in float64 so that "equal" can mean 1e-10, not "close in float32"; one float32 test
checks the HuggingFace default (sdpa) attention that benchmarks/train.py compares against.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
import torch.nn.functional as F
import transformers
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import bertscale.model as model_module
from bertscale.errors import ConfigError
from bertscale.model import (
    IGNORE_INDEX,
    TIED_WEIGHTS,
    BertConfig,
    BertForPreTraining,
    BertLayer,
    BertModel,
    UnpadIndices,
    hf_state_dict,
    training_flops_per_token,
)

TINY = dict(
    vocab_size=99,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=64,
)
EXACT = dict(atol=1e-10, rtol=1e-10)  # float64


def hf_model(attn: str = "eager", cls=transformers.BertForPreTraining, **kwargs):
    torch.manual_seed(0)
    config = transformers.BertConfig(**TINY, attn_implementation=attn)
    return cls(config, **kwargs).eval()


def ours_from(hf, unpad: bool = True, cls=BertForPreTraining, **kwargs):
    config = BertConfig.from_hf_dict(hf.config.to_dict(), unpad=unpad)
    model = cls(config, **kwargs).eval().to(next(hf.parameters()).dtype)
    model.load_state_dict(hf.state_dict(), strict=True)
    return model


def make_batch(B: int = 4, T: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded pairs: rows of length T, 11, 6 and 3; token types; ~15% masked; NSP labels."""
    g = torch.Generator().manual_seed(seed)
    lengths = [T, 11, 6, 3][:B]
    input_ids = torch.randint(5, TINY["vocab_size"], (B, T), generator=g)
    attention_mask = torch.zeros(B, T, dtype=torch.long)
    token_type_ids = torch.zeros(B, T, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX)
    for i, n in enumerate(lengths):
        attention_mask[i, :n] = 1
        input_ids[i, n:] = 0
        token_type_ids[i, n // 2 : n] = 1
        masked = 1 + torch.randperm(n - 1, generator=g)[: max(1, round(0.15 * n))]
        labels[i, masked] = input_ids[i, masked]
        input_ids[i, masked] = 4  # [MASK]
    return dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        labels=labels,
        next_sentence_label=torch.randint(0, 2, (B,), generator=g),
    )


@pytest.fixture(scope="module")
def hf64():
    return hf_model().double()


def test_state_dict_keys_are_huggingface_keys(hf64):
    ours = ours_from(hf64)
    assert list(ours.state_dict()) == list(hf64.state_dict())
    for key, value in hf64.state_dict().items():
        assert ours.state_dict()[key].shape == value.shape, key


def test_fused_qkv_is_one_parameter_saved_as_huggingface_query_key_value(hf64):
    ours = ours_from(hf64)
    H = TINY["hidden_size"]
    names = [name for name, _ in ours.named_parameters() if ".attention.self." in name]
    assert names[:2] == [f"bert.encoder.layer.0.attention.self.qkv.{kind}" for kind in ("weight", "bias")]
    assert ours.bert.encoder.layer[0].attention.self.qkv.weight.shape == (3 * H, H)
    state, hf_state = ours.state_dict(), hf64.state_dict()
    for i, name in enumerate(("query", "key", "value")):
        for kind in ("weight", "bias"):
            key = f"bert.encoder.layer.1.attention.self.{name}.{kind}"
            assert torch.equal(state[key], hf_state[key]), key
            assert torch.equal(state[key], getattr(ours.bert.encoder.layer[1].attention.self.qkv, kind)[i * H : (i + 1) * H])
    # saved tensors own their memory (safetensors refuses tensors that share it)
    weights = [state[f"bert.encoder.layer.0.attention.self.{n}.weight"] for n in ("query", "key", "value")]
    assert len({w.untyped_storage().data_ptr() for w in weights}) == 3
    # parameter-named dicts (DeepSpeed's ZeRO files, consolidation) map to the same keys, in order
    named = {name: p.detach() for name, p in ours.named_parameters(remove_duplicate=False)}
    mapped = hf_state_dict(named)
    assert list(mapped) == list(state)
    for key, value in mapped.items():
        assert torch.equal(value, state[key]), key
    assert hf_state_dict(hf_state).keys() == hf_state.keys()  # HuggingFace keys pass unchanged


def test_a_partial_query_key_value_set_is_refused(hf64):
    state = hf64.state_dict()
    del state["bert.encoder.layer.0.attention.self.key.weight"]
    model = ours_from(hf64)
    with pytest.raises(RuntimeError, match=r"self\.query\.weight, .*self\.value\.weight without the rest"):
        model.load_state_dict(state, strict=False)


@pytest.mark.parametrize("unpad", [False, True], ids=["padded", "unpadded"])
def test_outputs_equal_huggingface_with_padding_and_token_types(hf64, unpad):
    ours = ours_from(hf64, unpad=unpad)
    batch = make_batch()
    real = batch["attention_mask"].bool()
    masked = batch["labels"] != IGNORE_INDEX
    assert not real.all() and batch["token_type_ids"].any()  # the batch exercises padding and types
    with torch.no_grad():
        ref = hf64(**batch)
        ref_base = hf64.bert(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        sequence_output, pooled_output = ours.bert(
            batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
        )
        full = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        out = ours(**batch)

    if unpad:  # HuggingFace's values at pad positions are never read; ours are 0 there
        torch.testing.assert_close(sequence_output[real], ref_base.last_hidden_state[real], **EXACT)
        assert sequence_output[~real].abs().max() == 0
        torch.testing.assert_close(full.prediction_logits[real], ref.prediction_logits[real], **EXACT)
    else:
        torch.testing.assert_close(sequence_output, ref_base.last_hidden_state, **EXACT)
        torch.testing.assert_close(full.prediction_logits, ref.prediction_logits, **EXACT)
    torch.testing.assert_close(pooled_output, ref_base.pooler_output, **EXACT)
    torch.testing.assert_close(full.seq_relationship_logits, ref.seq_relationship_logits, **EXACT)
    assert full.loss is None and full.masked_lm_labels is None

    # with labels the MLM head runs at masked positions only: (M, V), rows in (b, t) order
    assert out.prediction_logits.shape == (int(masked.sum()), TINY["vocab_size"])
    torch.testing.assert_close(out.prediction_logits, ref.prediction_logits[masked], **EXACT)
    assert torch.equal(out.masked_lm_labels, batch["labels"][masked])
    torch.testing.assert_close(out.seq_relationship_logits, ref.seq_relationship_logits, **EXACT)
    mlm = torch.nn.functional.cross_entropy(
        ref.prediction_logits.view(-1, TINY["vocab_size"]), batch["labels"].view(-1)
    )
    nsp = torch.nn.functional.cross_entropy(ref.seq_relationship_logits, batch["next_sentence_label"])
    torch.testing.assert_close(out.mlm_loss, mlm, **EXACT)
    torch.testing.assert_close(out.nsp_loss, nsp, **EXACT)
    torch.testing.assert_close(out.loss, ref.loss, **EXACT)


def test_gradients_equal_huggingface(hf64):
    hf = hf_model().double()
    ours = ours_from(hf)
    batch = make_batch()
    hf(**batch).loss.backward()
    ours(**batch).loss.backward()
    hf_grads = dict(hf.named_parameters())
    # the tied decoder weight appears once, as the embedding; the fused qkv's rows as query/key/value
    grads = hf_state_dict({name: param.grad for name, param in ours.named_parameters()})
    assert len(grads) == len(hf_grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, hf_grads[name].grad, **EXACT, msg=name)


def test_float32_equals_huggingface_default_sdpa_attention():
    hf = hf_model(attn="sdpa")
    assert hf.config._attn_implementation == "sdpa"
    ours = ours_from(hf)
    batch = make_batch()
    with torch.no_grad():
        ref, out = hf(**batch), ours(**batch)
    masked = batch["labels"] != IGNORE_INDEX
    torch.testing.assert_close(out.prediction_logits, ref.prediction_logits[masked], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-6)


def test_bert_model_without_pooler_equals_huggingface():
    hf = hf_model(cls=transformers.BertModel, add_pooling_layer=False).double()
    ours = ours_from(hf, cls=BertModel, add_pooling_layer=False)
    assert list(ours.state_dict()) == list(hf.state_dict())
    batch = make_batch()
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        ref = hf(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).last_hidden_state
        sequence_output, pooled_output = ours(
            batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
        )
    assert pooled_output is None
    torch.testing.assert_close(sequence_output[real], ref[real], **EXACT)


def test_unpadded_path_equals_padded_path_outputs_and_gradients(hf64):
    padded, unpadded = ours_from(hf64, unpad=False), ours_from(hf64, unpad=True)
    batch = make_batch()
    out_p, out_u = padded(**batch), unpadded(**batch)
    torch.testing.assert_close(out_u.prediction_logits, out_p.prediction_logits, **EXACT)
    torch.testing.assert_close(out_u.seq_relationship_logits, out_p.seq_relationship_logits, **EXACT)
    out_p.loss.backward()
    out_u.loss.backward()
    grads_p = dict(padded.named_parameters())
    for name, param in unpadded.named_parameters():
        torch.testing.assert_close(param.grad, grads_p[name].grad, **EXACT, msg=name)


@pytest.mark.parametrize("unpad", [False, True], ids=["padded", "unpadded"])
@pytest.mark.parametrize("with_padding", [False, True], ids=["full-rows", "padded-rows"])
def test_output_mask_returns_those_rows_of_the_full_output(hf64, unpad, with_padding):
    """output_mask skips the last layer's FFN elsewhere; the rows it returns are unchanged."""
    model = ours_from(hf64, unpad=unpad)
    batch = make_batch()
    attention_mask = batch["attention_mask"] if with_padding else None
    output_mask = batch["labels"] != IGNORE_INDEX
    output_mask[0, -1] = True  # a last position, and [CLS] of row 1 (pooled anyway)
    output_mask[1, 0] = True
    with torch.no_grad():
        full, pooled = model.bert(batch["input_ids"], attention_mask, batch["token_type_ids"])
        rows, pooled_rows = model.bert(
            batch["input_ids"], attention_mask, batch["token_type_ids"], output_mask=output_mask
        )
    torch.testing.assert_close(rows, full[output_mask], **EXACT)
    torch.testing.assert_close(pooled_rows, pooled, **EXACT)


def test_output_mask_at_padding_is_refused(hf64):
    model = ours_from(hf64, unpad=True)
    batch = make_batch()
    output_mask = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
    output_mask[3, 10] = True  # row 3 has 3 real tokens
    with pytest.raises(ValueError, match="must be real tokens"):
        model.bert(batch["input_ids"], batch["attention_mask"], output_mask=output_mask)


def test_batch_without_padding_takes_the_same_route():
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(**TINY)).eval()
    ids = torch.randint(5, 99, (2, 8))
    with torch.no_grad():
        a = model.bert(ids)[0]
        b = model.bert(ids, torch.ones_like(ids))[0]
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_unpad_indices_describe_the_batch():
    batch = make_batch()  # rows of 16, 11, 6 and 3 real tokens, T = 16
    masked = batch["labels"] != IGNORE_INDEX
    u = UnpadIndices.build(batch["attention_mask"], masked)
    assert u.has_padding and (u.batch_size, u.seq_len, u.max_seqlen) == (4, 16, 16)
    assert u.cu_seqlens.tolist() == [0, 16, 27, 33, 36] and u.cu_seqlens.dtype == torch.int32
    assert torch.equal(u.indices, torch.nonzero(batch["attention_mask"].flatten()).squeeze(1))
    kept = masked.clone()
    kept[:, 0] = True
    assert torch.equal(u.indices[u.output_rows], torch.nonzero(kept.flatten()).squeeze(1))
    assert torch.equal(u.masked_positions, torch.nonzero(masked.flatten()).squeeze(1))
    assert torch.equal(u.indices[u.output_rows[u.first_rows]], torch.arange(4) * 16)
    full = UnpadIndices.build(torch.ones(2, 5, dtype=torch.long))
    assert not full.has_padding and full.cu_seqlens.tolist() == [0, 5, 10] and full.output_rows is None


@pytest.mark.parametrize("unpad", [False, True], ids=["padded", "unpadded"])
def test_host_built_unpad_indices_give_the_same_outputs_and_gradients(hf64, unpad):
    """What the collate passes (indices built ahead, on the host) changes no number."""
    batch = make_batch()
    given = UnpadIndices.build(batch["attention_mask"], batch["labels"] != IGNORE_INDEX)
    models = [ours_from(hf64, unpad=unpad) for _ in range(2)]
    outs = [models[0](**batch), models[1](**batch, unpad_indices=given)]
    for name in ("prediction_logits", "seq_relationship_logits", "masked_lm_labels", "loss"):
        torch.testing.assert_close(getattr(outs[1], name), getattr(outs[0], name), atol=0, rtol=0, msg=name)
    for out in outs:
        out.loss.backward()
    grads = dict(models[0].named_parameters())
    for name, param in models[1].named_parameters():
        torch.testing.assert_close(param.grad, grads[name].grad, atol=0, rtol=0, msg=name)
    with torch.no_grad():  # without labels, the same unpadding and the full (B, T, V) logits
        plain = models[0](batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        ahead = models[1](batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], unpad_indices=given)
    torch.testing.assert_close(ahead.prediction_logits, plain.prediction_logits, atol=0, rtol=0)


@pytest.mark.parametrize("unpad", [False, True], ids=["padded", "unpadded"])
def test_a_training_step_with_host_built_indices_reads_nothing_back(unpad):
    """On the meta device every value-dependent op (nonzero, .item(), bool(), boolean indexing) raises:
    a forward + backward that completes there has no device->host sync on a GPU either."""
    batch = make_batch()
    batch["unpad_indices"] = UnpadIndices.build(batch["attention_mask"], batch["labels"] != IGNORE_INDEX)
    model = BertForPreTraining(BertConfig(**TINY, unpad=unpad)).train().to("meta")
    meta = {key: value.to("meta") for key, value in batch.items()}
    out = model(**meta)
    out.loss.backward()
    assert out.prediction_logits.shape == (int((batch["labels"] != IGNORE_INDEX).sum()), TINY["vocab_size"])
    assert model.bert.embeddings.word_embeddings.weight.grad is not None
    del meta["unpad_indices"]
    with pytest.raises(NotImplementedError):  # the HF-style call finds the real tokens itself
        model(**meta)


def reference_varlen_attention(q, k, v, cu_seqlens, max_seqlen, dropout_p):
    """What FlashAttention's varlen kernel computes, one sequence at a time with plain SDPA."""
    assert dropout_p == 0 and max_seqlen == int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    bounds = cu_seqlens.tolist()
    return torch.cat([
        F.scaled_dot_product_attention(*(x[a:b].transpose(0, 1) for x in (q, k, v))).transpose(0, 1)
        for a, b in itertools.pairwise(bounds)
    ])  # fmt: skip


def test_cpu_and_float32_take_the_sdpa_fallback(hf64, monkeypatch):
    for device, dtype in (("cpu", torch.bfloat16), ("cpu", torch.float32), ("meta", torch.float16)):
        assert not model_module.varlen_attention_supported(torch.zeros(1, device=device, dtype=dtype), 16)

    def refuse(*args):
        raise AssertionError("varlen attention called on CPU")

    monkeypatch.setattr(model_module, "varlen_attention", refuse)
    batch = make_batch()
    with torch.no_grad():
        out, ref = ours_from(hf64)(**batch), hf64(**batch)
    torch.testing.assert_close(out.seq_relationship_logits, ref.seq_relationship_logits, **EXACT)


def test_varlen_path_equals_huggingface_outputs_and_gradients(monkeypatch):
    """The CUDA path's layout (qkv split per token, sequences from cu_seqlens, no mask, no pad/unpad),
    run on CPU with a reference kernel in place of FlashAttention (which has no CPU kernel)."""
    calls = []

    def kernel(*args):
        calls.append(args[3])
        return reference_varlen_attention(*args)

    monkeypatch.setattr(model_module, "varlen_attention_supported", lambda x, head_size: True)
    monkeypatch.setattr(model_module, "varlen_attention", kernel)
    hf = hf_model().double()
    ours = ours_from(hf)
    batch = make_batch()
    out, ref = ours(**batch), hf(**batch)
    assert len(calls) == TINY["num_hidden_layers"] and calls[0].tolist() == [0, 16, 27, 33, 36]
    masked = batch["labels"] != IGNORE_INDEX
    torch.testing.assert_close(out.prediction_logits, ref.prediction_logits[masked], **EXACT)
    torch.testing.assert_close(out.seq_relationship_logits, ref.seq_relationship_logits, **EXACT)
    torch.testing.assert_close(out.loss, ref.loss, **EXACT)
    out.loss.backward()
    ref.loss.backward()
    hf_grads = dict(hf.named_parameters())
    for name, grad in hf_state_dict({n: p.grad for n, p in ours.named_parameters()}).items():
        torch.testing.assert_close(grad, hf_grads[name].grad, **EXACT, msg=name)


def test_varlen_kernel_call_and_backward_on_meta(monkeypatch):
    """The real FlashAttention op (torch.ops.aten._flash_attention_forward) as the model calls it, bf16,
    attention dropout on, shapes and autograd checked by its meta kernels (no GPU here)."""
    calls = []
    real = model_module.varlen_attention

    def counting(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(model_module, "varlen_attention_supported", lambda x, head_size: True)
    monkeypatch.setattr(model_module, "varlen_attention", counting)
    batch = make_batch()
    batch["unpad_indices"] = UnpadIndices.build(batch["attention_mask"], batch["labels"] != IGNORE_INDEX)
    config = BertConfig(**TINY, attention_probs_dropout_prob=0.1)
    model = BertForPreTraining(config).train().to("meta", torch.bfloat16)
    out = model(**{key: value.to("meta") for key, value in batch.items()})
    out.loss.backward()
    N, head_size = int(batch["attention_mask"].sum()), TINY["hidden_size"] // TINY["num_attention_heads"]
    assert len(calls) == TINY["num_hidden_layers"]
    q, k, v, cu_seqlens, max_seqlen, dropout_p = calls[0]
    assert q.shape == k.shape == v.shape == (N, TINY["num_attention_heads"], head_size) and q.stride(-1) == 1
    assert cu_seqlens.dtype == torch.int32 and max_seqlen == 16 and dropout_p == 0.1
    assert model.bert.encoder.layer[0].attention.self.qkv.weight.grad.shape == (3 * TINY["hidden_size"], TINY["hidden_size"])


def test_gradient_checkpointing_gives_equal_gradients_and_recomputes(monkeypatch):
    torch.manual_seed(0)
    plain = BertForPreTraining(BertConfig(**TINY)).train()  # dropout on: checkpoint must replay its RNG
    ckpt = BertForPreTraining(BertConfig(**TINY, gradient_checkpointing=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    layer_forward = BertLayer.forward

    def counting_forward(self, *args):
        calls.append(self)
        return layer_forward(self, *args)

    monkeypatch.setattr(BertLayer, "forward", counting_forward)
    batch = make_batch()
    losses, layer_calls = [], []
    for model in (plain, ckpt):
        torch.manual_seed(1)
        calls.clear()
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.detach())
        layer_calls.append(len(calls))
    torch.testing.assert_close(losses[1], losses[0], atol=0, rtol=0)
    grads = dict(plain.named_parameters())
    for name, param in ckpt.named_parameters():
        torch.testing.assert_close(param.grad, grads[name].grad, atol=1e-6, rtol=1e-5, msg=name)
    layers = TINY["num_hidden_layers"]
    assert layer_calls == [layers, 2 * layers]  # with checkpointing each layer ran again in backward


def test_decoder_weight_is_tied_to_word_embeddings():
    model = BertForPreTraining(BertConfig(**TINY))
    decoder = model.cls.predictions.decoder
    assert decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert decoder.bias is model.cls.predictions.bias
    n_unique = sum(p.numel() for p in model.parameters())
    n_keys = sum(v.numel() for k, v in model.state_dict().items() if k not in TIED_WEIGHTS)
    assert model.num_parameters() == n_unique == n_keys
    # still one tensor after loading weights and after an optimizer step
    model.load_state_dict(BertForPreTraining(BertConfig(**TINY)).state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(**make_batch()).loss.backward()
    optimizer.step()
    assert decoder.weight is model.bert.embeddings.word_embeddings.weight
    torch.testing.assert_close(decoder.weight, model.state_dict()["bert.embeddings.word_embeddings.weight"])


def test_init_weights_like_huggingface():
    config = BertConfig(
        vocab_size=2000,
        hidden_size=128,
        num_attention_heads=4,
        num_hidden_layers=2,
        intermediate_size=512,
        initializer_range=0.05,
    )
    torch.manual_seed(0)
    model = BertForPreTraining(config)
    emb = model.bert.embeddings.word_embeddings.weight
    assert emb[config.pad_token_id].abs().max() == 0  # tying did not overwrite the pad row
    for name, param in model.named_parameters():
        if name.endswith("LayerNorm.weight"):
            assert torch.all(param == 1), name
        elif name.endswith("bias"):
            assert torch.all(param == 0), name
        elif param.numel() >= 16_000:  # enough samples for the std to be within 3%
            values = param.detach().flatten()
            if name == "bert.embeddings.word_embeddings.weight":
                values = param.detach()[1:].flatten()
            assert abs(values.mean().item()) < 3 * 0.05 / values.numel() ** 0.5, name
            assert values.std().item() == pytest.approx(0.05, rel=0.03), name


def test_config_round_trips_through_transformers():
    config = BertConfig(**TINY, hidden_act="gelu_new", layer_norm_eps=1e-7, gradient_checkpointing=True)
    hf = transformers.BertConfig(**config.to_hf_dict())
    for field in dataclasses.fields(BertConfig):
        if field.name not in ("gradient_checkpointing", "unpad"):
            assert getattr(hf, field.name) == getattr(config, field.name), field.name
    back = BertConfig.from_hf_dict(hf.to_dict(), gradient_checkpointing=True)
    assert back == config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "roberta"}, "model_type is 'roberta'"),
        ({"is_decoder": True}, "is_decoder=True is not supported"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ({"num_attention_heads": 5}, "not a multiple of num_attention_heads"),
        ({"hidden_act": "mish"}, "hidden_act 'mish'"),
    ],
)
def test_config_from_bad_hf_dict_names_the_file_and_problem(change, message):
    hf = {**BertConfig(**TINY).to_hf_dict(), **change}
    with pytest.raises(ConfigError, match=message) as err:
        BertConfig.from_hf_dict(hf, source="ckpt/config.json")
    assert str(err.value).startswith("ckpt/config.json: ")


def test_flops_per_token_matches_counted_matmuls():
    """The MFU formula against torch's FLOP counter on a real forward + backward (no padding)."""
    config = BertConfig(
        **{**TINY, "vocab_size": 1000}, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    model = BertForPreTraining(config)
    B, T = 4, 32
    input_ids = torch.randint(5, 1000, (B, T))
    labels = torch.full((B, T), IGNORE_INDEX)
    labels[:, 1::4] = input_ids[:, 1::4]  # 25% masked, [CLS] not among them
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):  # the counter has no formula for the CPU flash kernel
        model(input_ids, labels=labels, next_sentence_label=torch.zeros(B, dtype=torch.long)).loss.backward()
    counted = counter.get_total_flops() / (B * T)
    assert training_flops_per_token(config, T, mlm_fraction=0.25) == pytest.approx(counted, rel=1e-3)
    assert model.flops_per_token(T, 0.25) == training_flops_per_token(config, T, 0.25)

"""Log-prob helpers (spec §0.3): masking, the shift, fp32, and the label-only LM head against full logits."""
import math

import pytest
import torch

from alignkit.models.logps import IGNORE, forward_token_logps, sequence_logps, supports_label_only_head, token_logps


def test_token_logps_by_hand():
    # vocab 2, logits uniform at position 0 -> log(0.5); position 1 logits [0, log 3] -> p(1) = 0.75
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)], [5.0, 5.0]]])
    labels = torch.tensor([[IGNORE, 0, 1]])
    lp, mask = token_logps(logits, labels)
    assert mask.tolist() == [[True, True]]
    assert lp[0, 0].item() == pytest.approx(math.log(0.5))
    assert lp[0, 1].item() == pytest.approx(math.log(0.75))
    seq, n = sequence_logps(logits, labels)
    assert seq.item() == pytest.approx(math.log(0.5) + math.log(0.75)) and n.item() == 2


def test_masked_positions_are_zero_and_ignored():
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, IGNORE], [IGNORE, 1, 2, 3, 4]])
    lp, mask = token_logps(logits, labels)
    assert (lp[~mask] == 0).all()
    assert mask.sum().item() == 6


def test_bf16_logits_are_upcast():
    logits = torch.randn(1, 4, 11).to(torch.bfloat16)
    lp, _ = token_logps(logits, torch.tensor([[IGNORE, 1, 2, 3]]))
    assert lp.dtype == torch.float32


def test_label_only_head_matches_full_logits(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    assert supports_label_only_head(model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (3, 12), generator=g)
    attention = torch.ones_like(ids)
    attention[1, 9:] = 0
    labels = ids.clone()
    labels[:, :4] = IGNORE
    labels[1, 9:] = IGNORE
    with torch.no_grad():
        fast, fast_mask = forward_token_logps(model, ids, attention, labels)
        full, full_mask = token_logps(model(input_ids=ids, attention_mask=attention).logits, labels)
    assert torch.equal(fast_mask, full_mask)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)


def test_label_only_head_gradients_match(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :3] = IGNORE
    grads = []
    for fast in (True, False):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        if fast:
            lp, _ = forward_token_logps(model, ids, torch.ones_like(ids), labels)
        else:
            lp, _ = token_logps(model(input_ids=ids).logits, labels)
        lp.sum().backward()
        grads.append(model.get_output_embeddings().weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_shared_prompt_logps_equal_full_sequences(tiny_model_dir):
    """Completions scored on a shared prompt's KV cache == each prompt + completion scored in full (values and the
    log-distributions), for prompts of different lengths and 1-3 completions each."""
    from transformers import AutoModelForCausalLM

    from alignkit.models.logps import shared_prompt_token_logps

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(5, 1000, (n,), generator=g).tolist() for n in (7, 3, 11)]
    owner = [0, 0, 1, 2, 2, 2]
    completions = [torch.randint(5, 1000, (n,), generator=g).tolist() for n in (4, 2, 5, 1, 3, 6)]
    with torch.no_grad():
        lp, mask, vocab = shared_prompt_token_logps(model, prompts, completions, owner, pad_token_id=0,
                                                    return_vocab=True)
    assert mask.sum(-1).tolist() == [len(c) for c in completions]
    offset = 0
    for k, c in enumerate(completions):
        ids = torch.tensor([prompts[owner[k]] + c])
        labels = ids.clone()
        labels[0, :len(prompts[owner[k]])] = IGNORE
        with torch.no_grad():
            full, _, full_vocab = forward_token_logps(model, ids, torch.ones_like(ids), labels, return_vocab=True)
        torch.testing.assert_close(lp[k][mask[k]], full[0][-len(c):], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(vocab[offset:offset + len(c)], full_vocab, atol=1e-5, rtol=1e-5)
        offset += len(c)

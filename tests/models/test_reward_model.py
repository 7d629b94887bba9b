"""Reward models: loading a causal LM as backbone + scalar head, the scored token, and parity with Hugging Face's
own sequence-classification forward (what TRL and other consumers of the exported model call)."""
import torch

from alignkit.data.encode import EncodeSettings
from alignkit.kinds import encode_rows
from alignkit.kinds.reward_pairs import collate as collate_reward_pairs
from alignkit.models.loading import load_reward_model
from alignkit.models.logps import forward_rewards, last_token_index


def test_last_token_index_skips_padding_and_pad_ids():
    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9], [5, 0, 0, 0, 0]])
    mask = (torch.arange(5) < torch.tensor([[3], [5], [1]])).long()
    assert last_token_index(ids, mask, pad_token_id=0).tolist() == [2, 4, 0]
    assert last_token_index(torch.tensor([[5, 6, 9, 9]]), torch.tensor([[1, 1, 1, 0]]), 9).tolist() == [1]


def test_rewards_match_the_hf_forward_and_survive_save_load(tiny_model_dir, tokenizer, tmp_path):
    torch.manual_seed(0)
    model = load_reward_model(tiny_model_dir, pad_token_id=tokenizer.pad_token_id).eval()
    rows = [{"prompt": "Which is larger, 3 or 5?", "chosen": "5 is larger.",
             "rejected": "3 is larger. I hope this helps, and feel free to ask."},
            {"prompt": "Pick the bigger: 10 or 2", "chosen": "10", "rejected": "2"}]
    encoded, _ = encode_rows(tokenizer, rows, "reward_pairs", EncodeSettings(64, 32))
    batch = collate_reward_pairs(encoded, tokenizer.pad_token_id)
    with torch.no_grad():
        rewards, reprs = forward_rewards(model, batch["input_ids"], batch["attention_mask"])
        hf = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    assert rewards.shape == (4,) and reprs.shape == (4, model.config.hidden_size)
    torch.testing.assert_close(rewards, hf, atol=1e-5, rtol=0)
    # the reward depends on the response, and padding a shorter sequence does not change its reward
    with torch.no_grad():
        alone = forward_rewards(model, batch["input_ids"][3:4, :int(batch["attention_mask"][3].sum())],
                                batch["attention_mask"][3:4, :int(batch["attention_mask"][3].sum())])[0]
    torch.testing.assert_close(alone, rewards[3:4], atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path / "rm")
    reloaded = load_reward_model(str(tmp_path / "rm"), pad_token_id=tokenizer.pad_token_id).eval()
    with torch.no_grad():
        again = forward_rewards(reloaded, batch["input_ids"], batch["attention_mask"])[0]
    torch.testing.assert_close(again, rewards, atol=1e-6, rtol=0)

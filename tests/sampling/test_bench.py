"""`run_sample_bench` runs end to end on a tiny model and reports every figure."""

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from anygen.sampling.bench import decode_bytes_per_token, format_sample_bench, run_sample_bench
from anygen.vocab import Vocab


def test_sample_bench_reports_all_figures():
    vocab = Vocab(n_text=24, image_codebook_size=16, image_grids=((2, 2),))
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=vocab.size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=16, intermediate_size=64)
    model = Qwen3ForCausalLM(cfg).eval()
    decoded = []
    threads = torch.get_num_threads()
    r = run_sample_bench(model, vocab, threads=1, n_tokens=6, prompt_len=4, repeats=1, bandwidth_mb=4,
                         codec_decode=lambda codes: decoded.append(codes), large_model=False, guidance_pairs=3,
                         sjd_window=4)
    assert torch.get_num_threads() == threads  # restored
    assert decoded and decoded[0].shape == (1, 2, 2) and 0 <= int(decoded[0].min()) and int(decoded[0].max()) < 16
    for key in ("engine_tokens_per_s", "hf_generate_tokens_per_s", "speedup_vs_hf_generate"):
        assert r["decode"][key] > 0
    assert 0 < r["bandwidth"]["utilisation"] and r["bandwidth"]["copy_gb_per_s"] > 0
    assert r["guidance"]["ratio"] > 0 and r["first_image"]["codec_decode_s"] is not None
    assert len(r["guidance"]["ratios"]) == 3 and r["guidance"]["sjd"]["ratio"] > 0
    for name in ("greedy", "sampled"):
        x = r["sjd"][name]
        # prefill + <boi> + <grid> + 4 codes + <eoi> one per forward; SJD drafts the codes
        assert x["sequential"]["forwards_per_image"] == 7 > x["sjd"]["forwards_per_image"]
        assert x["speedup"] > 0 and x["acceptance_by_offset"]
    text = format_sample_bench(r)
    assert "tok/s" in text and "SJD (window 4)" in text
    full = decode_bytes_per_token(model, 10)
    assert decode_bytes_per_token(model, 10, head_columns=vocab.n_text) < full


def test_decode_at_a_larger_batch_counts_every_row():
    from anygen.sampling.bench import decode_at_batch

    vocab = Vocab(n_text=24, image_codebook_size=16, image_grids=((2, 2),))
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=vocab.size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=16, intermediate_size=64)
    row = decode_at_batch(Qwen3ForCausalLM(cfg).eval(), vocab, 3, n_tokens=5, prompt_len=4, repeats=1)
    assert row["batch"] == 3 and row["device"] == "cpu" and row["new_tokens"] == 5
    assert row["engine_tokens_per_s"] > 0 and row["hf_generate_tokens_per_s"] > 0
    assert row["speedup_vs_hf_generate"] == row["engine_tokens_per_s"] / row["hf_generate_tokens_per_s"]

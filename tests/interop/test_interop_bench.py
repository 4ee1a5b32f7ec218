"""`anygen bench interop` runs anygen and transformers on the same random Emu3 and checks they agree."""

from anygen.cli import main


def test_bench_interop_reports_equal_tokens_and_ratios(capsys, tmp_path):
    out = tmp_path / "bench.json"
    code = main(["bench", "interop", "--layers", "1", "--hidden", "64", "--grid", "2", "--codebook", "64",
                 "--batch", "1", "2", "--repeats", "1", "--json", str(out)])
    assert code in (0, None)
    text = capsys.readouterr().out
    assert "batch 1:" in text and "batch 2:" in text and "same tokens: yes" in text and "NO" not in text
    import json

    data = json.loads(out.read_text())
    assert [b["batch"] for b in data["batches"]] == [1, 2]
    assert all(b["same_tokens"] and b["speedup"] > 0 for b in data["batches"])


def test_bench_interop_refuses_bad_sizes_in_one_line(capsys):
    assert main(["bench", "interop", "--hidden", "100"]) == 2
    assert "--hidden must be a multiple of 64" in capsys.readouterr().err


def test_bench_interop_janus_reports_equal_tokens(capsys):
    code = main(["bench", "interop", "--family", "janus", "--layers", "1", "--hidden", "64", "--grid", "2",
                 "--codebook", "64", "--batch", "1", "2", "--repeats", "1"])
    assert code in (0, None)
    text = capsys.readouterr().out
    assert text.startswith("Janus 1 layers") and text.count("same tokens: yes") == 2 and "goal >= 1.2x" in text

"""The emoji-model recipe (`make emoji-model` -> training/emoji_model.sh): its configs validate and
agree, and its steps hand each artifact to the next one."""

from pathlib import Path

from anygen.config import load_config
from anygen.training.decoder_trainer import load_train_config
from anygen.training.pretokenize import PretokenizeConfig, trained_on
from anygen.training.tokenizer_trainer import load_recipe

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "training" / "emoji_model.sh"
IMAGE_SPAN = 2 + 16 * 16 + 1  # <boi> <grid_16x16> codes <eoi>: the emoji codec's 16x16 codes
BUNDLE_BYTES = 30 << 20  # the largest model the package ships


def test_recipes_validate_and_agree():
    train = load_train_config(ROOT / "training" / "emoji.yaml")
    data = load_config(PretokenizeConfig, ROOT / "training" / "emoji_data.yaml")
    image = load_recipe(ROOT / "tokenizers" / "emoji_image.yaml")
    text = load_recipe(ROOT / "tokenizers" / "emoji_text.yaml")
    assert train.data.seq_len == data.seq_len >= 8 + 2 * IMAGE_SPAN  # an edit: instruction and two images
    assert train.model.image_position_stride >= IMAGE_SPAN
    assert train.model.max_position >= 3 * train.model.image_position_stride  # an edit's target codes fit
    assert train.train.time_budget_minutes > 0  # the run ends by wall time
    assert data.source == "emoji" and image.data.source == "emoji" and image.data.split == "train"
    assert text.kind == "text" and text.data.source == "emoji"
    assert trained_on(data) == {"worlds": ["emoji"], "tasks": ["text_to_image", "image_to_text", "edit",
                                                               "describe_edit"]}
    m = train.model  # float16 weights, tied or not: an upper bound from the layer shapes
    per_layer = 2 * m.hidden * m.n_heads * m.head_dim + 2 * m.hidden * m.n_kv_heads * m.head_dim \
        + 3 * m.hidden * m.intermediate
    assert 2 * (m.n_layers * per_layer + 2 * 2200 * m.hidden) < BUNDLE_BYTES


def test_script_chains_codecs_shards_decoder_and_bundle(tmp_path, run_recipe):
    done, calls = run_recipe(SCRIPT, TRAIN_ARGS="train.steps=5", N_TRAIN="100")
    assert done.returncode == 0, done.stderr
    assert "done:" in done.stdout
    assert [c[:3] for c in calls[:2]] == [["tokenizer", "train", "tokenizers/emoji_image.yaml"],
                                          ["tokenizer", "train", "tokenizers/emoji_text.yaml"]]
    assert "--resume" in calls[0]
    runs = str(tmp_path / "runs")
    assemble, shards, train, bundle = calls[2:]
    assert assemble[:2] == ["tokenizer", "assemble"] and "--image-keep" in assemble
    assert assemble[assemble.index("--image") + 1] == f"{runs}/tokenizers/emoji_image"
    assert assemble[assemble.index("--text") + 1] == f"{runs}/tokenizers/emoji_text"
    assert shards[:2] == ["pretokenize", "training/emoji_data.yaml"] and "n_train=100" in shards
    assert f"tokenizer={runs}/emoji_tokenizer" in shards and f"out={runs}/shards/emoji" in shards
    assert train[:2] == ["train", "training/emoji.yaml"] and "--resume" in train and "train.steps=5" in train
    assert f"data.shard_dir={runs}/shards/emoji/train" in train
    assert bundle == ["bundle", f"{runs}/decoder/emoji/model", "--out", f"{runs}/emoji_model"]

"""What a generation run may do and how each modality is sampled (the schema of `sampling/*.yaml`).

`SamplingSettings` is one modality's logits processing; `GenerationConfig` holds one per
modality plus the budget, span limits, guidance and seed. Both are config dataclasses
(`anygen.config.load_config(GenerationConfig, "sampling/shapes.yaml", ["image.greedy=true"])`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from anygen.config import check


@dataclass
class SamplingSettings:
    """Logits processing for one modality. `greedy` (or temperature 0) takes the argmax."""

    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # text only; 1: off (HF/CTRL rule: divide positive logits, multiply negative)
    greedy: bool = False
    keep_threshold: float = 0.0  # images, <keep> vocabs: <keep> only when its probability is at least this; 0: off

    def __post_init__(self):
        check(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        check(self.top_k >= 0, "top_k", f"must be >= 0 (0 = off), got {self.top_k}")
        check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        check(0 <= self.min_p < 1, "min_p", f"must be in [0, 1), got {self.min_p}")
        check(self.repetition_penalty > 0, "repetition_penalty", f"must be > 0, got {self.repetition_penalty}")
        check(0 <= self.keep_threshold < 1, "keep_threshold", f"must be in [0, 1), got {self.keep_threshold}")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0


@dataclass
class GenerationConfig:
    """One generation run.

    Guidance: `guidance_scales` is one scale per guidance row of a prompt (plain CFG: one
    unconditional row; editing: `(guidance_scale, image_guidance_scale)` for the image-only and null
    rows). A scale of 1 is exactly unguided. Guidance acts inside image/audio spans only,
    on the fraction `guidance_interval = (start, end)` of each span's code positions.
    """

    max_new_tokens: int = 256
    text: SamplingSettings = field(default_factory=SamplingSettings)
    image: SamplingSettings = field(default_factory=SamplingSettings)
    audio: SamplingSettings = field(default_factory=SamplingSettings)
    allow_image: bool = True
    allow_audio: bool = True
    image_grid: tuple[int, int] | None = None  # None: the model picks among the vocab's grids that fit
    audio_max_frames: int = 64
    audio_min_frames: int = 1
    guidance_scales: float | tuple[float, ...] = (1.0,)
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    stop_at_eos: bool = True  # False: <eos> is never drawn and rows run to max_new_tokens
    seed: int | None = None
    backend: str = "auto"  # "fast" (own step over the HF weights), "hf" (model forward + DynamicCache), "auto"

    def __post_init__(self):
        if isinstance(self.guidance_scales, (int, float)):
            self.guidance_scales = (float(self.guidance_scales),)
        self.guidance_scales = tuple(float(s) for s in self.guidance_scales)
        self.guidance_interval = tuple(float(x) for x in self.guidance_interval)
        if self.image_grid is not None:
            self.image_grid = tuple(int(x) for x in self.image_grid)
        check(self.max_new_tokens > 0, "max_new_tokens", f"must be positive, got {self.max_new_tokens}")
        check(len(self.guidance_scales) >= 1, "guidance_scales", "needs at least one scale")
        check(all(s >= 0 for s in self.guidance_scales), "guidance_scales", f"scales must be >= 0, got {self.guidance_scales}")
        check(len(self.guidance_interval) == 2 and 0 <= self.guidance_interval[0] <= self.guidance_interval[1] <= 1,
              "guidance_interval", f"must be (start, end) with 0 <= start <= end <= 1, got {self.guidance_interval}")
        check(self.image_grid is None or len(self.image_grid) == 2, "image_grid", "must be [H, W]")
        check(self.audio_max_frames >= 1, "audio_max_frames", f"must be >= 1, got {self.audio_max_frames}")
        check(1 <= self.audio_min_frames <= self.audio_max_frames, "audio_min_frames",
              f"must be in 1..audio_max_frames, got {self.audio_min_frames}")
        check(self.backend in ("auto", "fast", "hf"), "backend", f"must be auto, fast or hf, got {self.backend!r}")
        for name in ("text", "image", "audio"):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, SamplingSettings(**value))

    @property
    def guided(self) -> bool:
        return any(s != 1.0 for s in self.guidance_scales)

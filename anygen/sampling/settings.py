"""What a generation run may do and how each modality is sampled (the schema of `sampling/*.yaml`).

`SamplingSettings` is one modality's logits processing; `GenerationConfig` holds one per
modality plus the budget, span limits, guidance and seed. Both are config dataclasses
(`anygen.config.load_config(GenerationConfig, "sampling/shapes.yaml", ["image.greedy=true"])`)
and check every value once, when built: numbers must be finite and within the limits below,
so the sampler never sees a value that turns its arithmetic into NaN.
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass, field

from anygen.config import ConfigError, check

# A temperature below this samples the argmax (greedy): at temperature T an id whose logit is d below
# the best is e^(-d/T) as likely, so sampling differs from the argmax only where the two best logits
# agree to about 1e-5, a few float32 steps at typical logit sizes (the T -> 0 limit is the argmax).
GREEDY_BELOW_TEMPERATURE = 1e-6
# Above this every legal id is about equally likely for any logits a model produces (tens of nats
# apart); larger values are typos (1e30 for 1.0) rather than a request for uniform noise.
MAX_TEMPERATURE = 100.0
# A top-p below the most likely id's probability keeps that id alone (greedy); below 1e-6 that holds
# for every distribution over fewer than a million ids, so a smaller p is a typo for `greedy`.
MIN_TOP_P = 1e-6
# CTRL uses 1.2; a penalty p divides or multiplies a seen id's logit by p, so beyond 100 (or below
# 1/100) the id is already banned (or forced) and larger factors only overflow float32 logits.
MAX_REPETITION_PENALTY = 100.0
# Guidance scales in use stay below about 30 (3-5 for token models, 7.5 for Stable Diffusion);
# at 100 the guided distribution is already just the argmax of the guidance difference (noise
# images), and infinite scales turn 0 * inf into NaN.
MAX_GUIDANCE_SCALE = 100.0
# Speculative Jacobi decoding feeds at most this many tokens per forward over a batch's rows: 16 rows
# of the largest grid in use (16 x 16 = 256 codes) each; more only adds activation memory to a
# forward that cannot accept them.
MAX_SJD_WINDOW = 4096
# Tokens per SJD forward by default: on the bundled model at batch 1, unguided, one CPU thread, a
# window of 12 needs fewer forwards than 8 and costs less per forward than 16, whose last drafts are
# mostly rejected (docs/experiments.md, "Speculative Jacobi decoding"). Guidance rows share the
# window: a guided draw gets 6 codes per row.
DEFAULT_SJD_WINDOW = 12
PARALLEL_MODES = ("none", "sjd")
# torch.Generator seeds are 64-bit: [-2^63, 2^64) (a negative seed s means s + 2^64).
MIN_SEED, MAX_SEED = -(2 ** 63), 2 ** 64 - 1


def number(value, name: str) -> float:
    """`value` as a finite float, else a ConfigError naming `name` (bools and strings are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name}: expected a number, got {type(value).__name__}")
    value = float(value)
    check(math.isfinite(value), name, f"expected a finite number, got {value}")
    return value


def integer(value, name: str) -> int:
    """`value` as an int (a Python or numpy integer, or a float with an integer value), else a
    ConfigError naming `name`."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected an integer, got {value}")
    try:
        return operator.index(value)
    except TypeError:
        shown = value if isinstance(value, numbers.Real) else type(value).__name__
        raise ConfigError(f"{name}: expected an integer, got {shown}") from None


def check_seed(seed) -> int | None:
    """None, or `seed` as an int in [MIN_SEED, MAX_SEED]; else a ConfigError naming `seed`."""
    if seed is None:
        return None
    seed = integer(seed, "seed")
    check(MIN_SEED <= seed <= MAX_SEED, "seed", f"must be in [-2**63, 2**64), got {seed}")
    return seed


def _values(value, name: str) -> tuple:
    """A scalar as a 1-tuple, any other iterable (list, tuple, array) as a tuple."""
    if isinstance(value, (numbers.Number, str, bytes)):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        raise ConfigError(f"{name}: expected a number or a list of numbers, got {type(value).__name__}") from None


@dataclass
class SamplingSettings:
    """Logits processing for one modality. `greedy` (or a temperature below `GREEDY_BELOW_TEMPERATURE`,
    0 included) takes the argmax. Every value must be finite and within the module's limits."""

    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # text only; 1: off (HF/CTRL rule: divide positive logits, multiply negative)
    greedy: bool = False
    keep_threshold: float = 0.0  # images, <keep> vocabs: <keep> only when its probability is at least this; 0: off

    def __post_init__(self):
        self.temperature = number(self.temperature, "temperature")
        check(0 <= self.temperature <= MAX_TEMPERATURE, "temperature",
              f"must be in [0, {MAX_TEMPERATURE:g}] (0 or below {GREEDY_BELOW_TEMPERATURE:g}: greedy), "
              f"got {self.temperature:g}")
        self.top_k = integer(self.top_k, "top_k")
        check(self.top_k >= 0, "top_k", f"must be >= 0 (0 = off), got {self.top_k}")
        self.top_p = number(self.top_p, "top_p")
        check(MIN_TOP_P <= self.top_p <= 1, "top_p",
              f"must be in [{MIN_TOP_P:g}, 1] (a smaller p keeps only the most likely id: use greedy), "
              f"got {self.top_p:g}")
        self.min_p = number(self.min_p, "min_p")
        check(0 <= self.min_p < 1, "min_p", f"must be in [0, 1), got {self.min_p:g}")
        self.repetition_penalty = number(self.repetition_penalty, "repetition_penalty")
        check(1 / MAX_REPETITION_PENALTY <= self.repetition_penalty <= MAX_REPETITION_PENALTY, "repetition_penalty",
              f"must be in [{1 / MAX_REPETITION_PENALTY:g}, {MAX_REPETITION_PENALTY:g}] (1 = off), "
              f"got {self.repetition_penalty:g}")
        self.keep_threshold = number(self.keep_threshold, "keep_threshold")
        check(0 <= self.keep_threshold < 1, "keep_threshold", f"must be in [0, 1), got {self.keep_threshold:g}")

    @property
    def is_greedy(self) -> bool:
        """Whether ids are the argmax: `greedy`, or a temperature below `GREEDY_BELOW_TEMPERATURE` (0 included)."""
        return self.greedy or self.temperature < GREEDY_BELOW_TEMPERATURE


@dataclass
class GenerationConfig:
    """One generation run.

    Guidance: `guidance_scales` is one scale per guidance row of a prompt (plain CFG: one
    unconditional row; editing: `(guidance_scale, image_guidance_scale)` for the image-only and null
    rows). A scale of 1 is exactly unguided. Guidance acts inside image/audio spans only,
    on the fraction `guidance_interval = (start, end)` of each span's code positions.

    `parallel="sjd"` samples image codes by speculative Jacobi decoding: the same distribution as
    one code per forward (the same ids when greedy), in fewer forwards. A forward feeds at most
    `sjd_window` tokens over all rows of the batch (guidance rows included): each row's window is
    `sjd_window // rows` codes, the committed one and drafts; a batch too wide for a few per row
    (`jacobi.MIN_ROW_WINDOW`) decodes one code per forward.
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
    stop_at_image: bool = False  # True: a row ends (finish "image") as it draws <boi>, before the image
    seed: int | None = None
    backend: str = "auto"  # "fast" (own step over the HF weights), "hf" (model forward + DynamicCache), "auto"
    parallel: str = "none"  # "sjd": image codes by speculative Jacobi decoding (anygen.sampling.jacobi)
    sjd_window: int = DEFAULT_SJD_WINDOW  # tokens per SJD forward over the batch's rows (each row: sjd_window // rows)

    def __post_init__(self):
        self.max_new_tokens = integer(self.max_new_tokens, "max_new_tokens")
        check(self.max_new_tokens > 0, "max_new_tokens", f"must be positive, got {self.max_new_tokens}")
        for name in ("text", "image", "audio"):
            value = getattr(self, name)
            if isinstance(value, dict):
                try:
                    setattr(self, name, SamplingSettings(**value))
                except TypeError as e:  # an unknown key
                    raise ConfigError(f"{name}: {e}") from None
            elif not isinstance(value, SamplingSettings):
                raise ConfigError(f"{name}: expected SamplingSettings or a mapping, got {type(value).__name__}")
        scales = _values(self.guidance_scales, "guidance_scales")
        self.guidance_scales = tuple(number(x, f"guidance_scales[{k}]" if len(scales) > 1 else "guidance_scales")
                               for k, x in enumerate(scales))
        check(len(self.guidance_scales) >= 1, "guidance_scales", "needs at least one scale")
        check(all(0 <= s <= MAX_GUIDANCE_SCALE for s in self.guidance_scales), "guidance_scales",
              f"scales must be in [0, {MAX_GUIDANCE_SCALE:g}] (1 = unguided), got {self.guidance_scales}")
        self.guidance_interval = tuple(number(x, "guidance_interval") for x in _values(self.guidance_interval, "guidance_interval"))
        check(len(self.guidance_interval) == 2 and 0 <= self.guidance_interval[0] <= self.guidance_interval[1] <= 1,
              "guidance_interval", f"must be (start, end) with 0 <= start <= end <= 1, got {self.guidance_interval}")
        if self.image_grid is not None:
            self.image_grid = tuple(integer(x, "image_grid") for x in _values(self.image_grid, "image_grid"))
            check(len(self.image_grid) == 2, "image_grid", "must be [H, W]")
        self.audio_max_frames = integer(self.audio_max_frames, "audio_max_frames")
        check(self.audio_max_frames >= 1, "audio_max_frames", f"must be >= 1, got {self.audio_max_frames}")
        self.audio_min_frames = integer(self.audio_min_frames, "audio_min_frames")
        check(1 <= self.audio_min_frames <= self.audio_max_frames, "audio_min_frames",
              f"must be in 1..audio_max_frames, got {self.audio_min_frames}")
        self.seed = check_seed(self.seed)
        check(self.backend in ("auto", "fast", "hf"), "backend", f"must be auto, fast or hf, got {self.backend!r}")
        check(self.parallel in PARALLEL_MODES, "parallel",
              f"must be one of {', '.join(PARALLEL_MODES)}, got {self.parallel!r}")
        self.sjd_window = integer(self.sjd_window, "sjd_window")
        check(2 <= self.sjd_window <= MAX_SJD_WINDOW, "sjd_window",
              f"must be in [2, {MAX_SJD_WINDOW}] (tokens per forward: a committed code and a draft at least), "
              f"got {self.sjd_window}")

    @property
    def guided(self) -> bool:
        return any(s != 1.0 for s in self.guidance_scales)

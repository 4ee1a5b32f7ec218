"""AudioCodec: waveforms <-> residual-VQ codes (n_q levels × F frames), EnCodec-shaped.

The encoder and decoder are the SEANet modules of transformers' `EncodecModel`
(`EncodecEncoder` / `EncodecDecoder`, built from an `EncodecConfig`); the quantizer is a
trainable `ResidualVQ` from vector-quantize-pytorch (EMA codebooks, k-means init, dead-code
restarts) or, for a converted EnCodec checkpoint, EnCodec's own residual quantizer so that
codes equal transformers' `EncodecModel.encode`.

Why this shape:
- Frame rate = sample_rate / prod(upsampling_ratios). Every frame costs the decoder model
  n_q tokens, so audio for a language model wants few frames: the default [8, 5, 5, 4]
  (hop 800) gives 20 frames/s at 16 kHz, so a 1 s melody is 20 frames × n_q levels, and a
  0.25 s note exactly 5 frames. EnCodec's own [8, 5, 4, 2] (hop 320) gives 50 frames/s.
  Early in training a decoder repeats one waveform per frame, i.e. it can only play
  multiples of the frame rate: 20 Hz puts every ShapesWorld note within 25 cents of such a
  pitch, 50 Hz does not (measured: the wrong notes of a hop-320 melody codec sat on the
  50 Hz grid).
- Training clips should start on the frame grid where the data has one (melodies start at
  sample 0): with the same small codec, frame-aligned clips reached -10 dB SI-SNR in 600
  steps while randomly offset clips stayed near -40 dB (no pitch learnt). A codec trained
  that way is alignment-sensitive (a half-frame offset breaks most melodies), so encode
  audio from its start.
- `quantizer="rvq"` learns its codebooks by EMA (not by gradients) with k-means init on
  the first batch; a random EnCodec codebook is all zeros (docs/design.md, "Pitfalls"), so a fresh
  `quantizer="encodec"` codec gets frozen normal-noise codebooks instead: that variant is
  meant for fine-tuning the encoder/decoder of a converted checkpoint.
- Losses: waveform L1, multi-resolution STFT (spectral convergence + log magnitude),
  multi-resolution log-mel (filters from `transformers.audio_utils.mel_filter_bank`; no
  torchaudio) and the quantizer's commitment loss. The 2048-point STFT (8 Hz bins at
  16 kHz) is what makes pitch exact; magnitudes are floored at `LOG_FLOOR` before the logs
  so that near-silent bins do not swamp the gradient.
- Encoding is deterministic and side-effect free: codes are nearest codewords level by
  level (the same distance the library uses), so `encode` never triggers k-means or EMA.
- Decoded audio is F × hop_length samples; callers that know the original length trim.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from anygen.config import ConfigError, build, check, choice
from anygen.errors import AnygenError
from anygen.codecs.artifact import FORMAT_VERSION, load_codec, save_codec  # noqa: F401 (FORMAT_VERSION re-exported)
from anygen.io import MAX_SAMPLE_RATE, check_waveform, resample, to_mono_float

# sizes beyond any codec worth training on one machine: a config over them is a mistake or a
# hostile file, refused before a module (and its memory) is built
MAX_CODEC_WIDTH = 4096  # latent_dim, num_filters
MAX_CODEC_LAYERS = 64  # residual levels (n_q), residual layers, LSTM layers, down/upsampling steps
MAX_CODEBOOK_SIZE = 1 << 20
LOG_FLOOR = 1e-3  # magnitude floor before logs in the spectral losses: near-silent bins must not dominate them


@dataclass
class AudioCodecConfig:
    sample_rate: int = 16000
    n_q: int = 4  # residual levels (tokens per frame)
    codebook_size: int = 256  # codes per level
    latent_dim: int = 64  # EnCodec `hidden_size`: encoder output channels = code vector size
    # SEANet encoder/decoder: fields of transformers' EncodecConfig with the same names
    num_filters: int = 16  # channels at full rate; doubled at every downsampling step
    upsampling_ratios: list[int] = field(default_factory=lambda: [8, 5, 5, 4])  # hop 800: 20 frames/s at 16 kHz
    num_residual_layers: int = 1
    num_lstm_layers: int = 1  # at the frame rate; 0 removes the LSTMs
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    compress: int = 2
    use_causal_conv: bool = False
    pad_mode: str = choice("reflect", "constant", "replicate")
    norm_type: str = choice("weight_norm", "time_group_norm")
    use_conv_shortcut: bool = True
    trim_right_ratio: float = 1.0
    # quantizer
    quantizer: str = choice("rvq", "encodec")  # encodec: EnCodec's frozen codebooks (converted checkpoints)
    kmeans_init: bool = True  # rvq: k-means on the first training batch (else uniform random codebooks)
    kmeans_iters: int = 10
    ema_decay: float = 0.95  # rvq: EMA decay of the codebooks
    dead_code_threshold: float = 2.0  # rvq: restart codes whose EMA cluster size falls below this (0: never)
    commitment_weight: float = 1.0
    # losses
    l1_weight: float = 1.0  # waveform L1
    stft_weight: float = 1.0  # multi-resolution STFT: spectral convergence + log-magnitude L1
    mel_weight: float = 1.0  # multi-resolution log-mel L1
    stft_sizes: list[int] = field(default_factory=lambda: [512, 1024, 2048])  # FFT sizes (hop = size / 4); 2048 resolves 8 Hz
    n_mels: int = 64

    def __post_init__(self):
        check(1000 <= self.sample_rate <= MAX_SAMPLE_RATE, "sample_rate",
              f"must be 1000..{MAX_SAMPLE_RATE} Hz, got {self.sample_rate}")
        check(self.n_q >= 1, "n_q", f"must be >= 1, got {self.n_q}")
        check(self.n_q <= MAX_CODEC_LAYERS, "n_q", f"must be <= {MAX_CODEC_LAYERS}, got {self.n_q}")
        check(2 <= self.codebook_size <= MAX_CODEBOOK_SIZE, "codebook_size",
              f"must be 2..{MAX_CODEBOOK_SIZE}, got {self.codebook_size}")
        for name in ("latent_dim", "num_filters"):
            check(1 <= getattr(self, name) <= MAX_CODEC_WIDTH, name,
                  f"must be 1..{MAX_CODEC_WIDTH}, got {getattr(self, name)}")
        check(1 <= len(self.upsampling_ratios) <= MAX_CODEC_LAYERS and all(r >= 1 for r in self.upsampling_ratios)
              and self.hop_length <= self.sample_rate, "upsampling_ratios",
              f"must be a non-empty list of positive integers whose product is at most sample_rate, "
              f"got {self.upsampling_ratios}")
        check(self.num_filters * 2 ** len(self.upsampling_ratios) <= MAX_CODEC_WIDTH, "num_filters",
              f"doubled at each of the {len(self.upsampling_ratios)} downsampling steps, it must stay "
              f"<= {MAX_CODEC_WIDTH}, got {self.num_filters}")
        for name in ("num_residual_layers", "num_lstm_layers"):
            check(0 <= getattr(self, name) <= MAX_CODEC_LAYERS, name,
                  f"must be 0..{MAX_CODEC_LAYERS}, got {getattr(self, name)}")
        check(self.compress >= 1 and self.num_filters % self.compress == 0, "compress",
              f"must divide num_filters ({self.num_filters}), got {self.compress}")
        check(self.use_causal_conv or self.trim_right_ratio == 1.0, "trim_right_ratio",
              "must be 1.0 unless use_causal_conv is true")
        check(self.kmeans_iters >= 1, "kmeans_iters", f"must be >= 1, got {self.kmeans_iters}")
        check(0.0 <= self.ema_decay < 1.0, "ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        check(self.dead_code_threshold >= 0, "dead_code_threshold", f"must be >= 0, got {self.dead_code_threshold}")
        for name in ("commitment_weight", "l1_weight", "stft_weight", "mel_weight"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        check(len(self.stft_sizes) >= 1 and all(n >= 16 for n in self.stft_sizes)
              and len(set(self.stft_sizes)) == len(self.stft_sizes), "stft_sizes",
              f"must be a non-empty list of distinct FFT sizes >= 16, got {self.stft_sizes}")
        check(self.n_mels >= 1 and self.n_mels <= min(self.stft_sizes) // 2 + 1, "n_mels",
              f"must be in 1..{min(self.stft_sizes) // 2 + 1} (bins of the smallest FFT), got {self.n_mels}")

    @property
    def hop_length(self) -> int:
        return int(math.prod(self.upsampling_ratios))

    def encodec_config(self):
        """The transformers `EncodecConfig` that builds this codec's SEANet modules."""
        from transformers import EncodecConfig

        return EncodecConfig(
            sampling_rate=self.sample_rate, audio_channels=1, normalize=False, chunk_length_s=None, overlap=None,
            hidden_size=self.latent_dim, num_filters=self.num_filters, num_residual_layers=self.num_residual_layers,
            upsampling_ratios=list(self.upsampling_ratios), norm_type=self.norm_type, kernel_size=self.kernel_size,
            last_kernel_size=self.last_kernel_size, residual_kernel_size=self.residual_kernel_size,
            dilation_growth_rate=self.dilation_growth_rate, use_causal_conv=self.use_causal_conv,
            pad_mode=self.pad_mode, compress=self.compress, num_lstm_layers=max(1, self.num_lstm_layers),
            trim_right_ratio=self.trim_right_ratio, codebook_size=self.codebook_size,
            codebook_dim=self.latent_dim, use_conv_shortcut=self.use_conv_shortcut,
            # one bandwidth worth exactly n_q levels (only read by EnCodec's quantizer module)
            target_bandwidths=[(self.n_q + 0.5) * math.ceil(self.sample_rate / self.hop_length)
                               * math.ceil(math.log2(self.codebook_size)) / 1000],
        )




def si_snr(estimate: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SNR in dB per item: (B, ..., T) -> (B,)."""
    est = estimate.reshape(len(estimate), -1)
    ref = target.reshape(len(target), -1)
    est, ref = est - est.mean(-1, keepdim=True), ref - ref.mean(-1, keepdim=True)
    proj = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps) * ref
    noise = est - proj
    return 10 * torch.log10((proj.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))


class _EncodecQuantizer(nn.Module):
    """EnCodec's residual quantizer levels (frozen buffers), as loaded from a checkpoint."""

    def __init__(self, layers: nn.ModuleList):
        super().__init__()
        self.layers = layers

    @property
    def codebooks(self) -> torch.Tensor:  # (q, K, D)
        return torch.stack([layer.codebook.embed for layer in self.layers])


class AudioCodec(nn.Module):
    """Waveform (B, 1, T) <-> codes (B, n_q, F), F = ceil(T / hop_length)."""

    def __init__(self, config: AudioCodecConfig):
        super().__init__()
        from transformers.models.encodec.modeling_encodec import (EncodecDecoder, EncodecEncoder,
                                                                   EncodecLSTM, EncodecResidualVectorQuantizer)

        self.config = config
        ec = config.encodec_config()
        self.encoder = EncodecEncoder(ec)
        self.decoder = EncodecDecoder(ec)
        if config.num_lstm_layers == 0:
            for stack in (self.encoder.layers, self.decoder.layers):
                for i, layer in enumerate(stack):
                    if isinstance(layer, EncodecLSTM):
                        stack[i] = nn.Identity()
        if config.quantizer == "rvq":
            from vector_quantize_pytorch import ResidualVQ

            self.quantizer = ResidualVQ(
                dim=config.latent_dim, num_quantizers=config.n_q, codebook_size=config.codebook_size,
                decay=config.ema_decay, kmeans_init=config.kmeans_init, kmeans_iters=config.kmeans_iters,
                threshold_ema_dead_code=config.dead_code_threshold, commitment_weight=config.commitment_weight,
            )
            for layer in self.quantizer.layers:  # uninitialised scratch buffers -> defined values
                cb = layer._codebook
                for name in ("codebook_mean", "codebook_variance"):
                    if isinstance(getattr(cb, name, None), torch.Tensor):
                        getattr(cb, name).zero_()
        else:
            layers = EncodecResidualVectorQuantizer(ec).layers
            if len(layers) < config.n_q:
                raise ConfigError(f"n_q: EnCodec quantizer built {len(layers)} levels, need {config.n_q}")
            layers = layers[: config.n_q]
            gen = torch.Generator().manual_seed(0)
            for layer in layers:  # EnCodec initialises codebooks to zeros (docs/design.md, "Pitfalls")
                embed = torch.randn(layer.codebook.embed.shape, generator=gen)
                layer.codebook.embed.copy_(embed)
                layer.codebook.embed_avg.copy_(embed)
            self.quantizer = _EncodecQuantizer(layers)
        for n_fft in config.stft_sizes:
            from transformers.audio_utils import mel_filter_bank

            bank = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=config.n_mels,
                                   min_frequency=0.0, max_frequency=config.sample_rate / 2,
                                   sampling_rate=config.sample_rate, norm="slaney", mel_scale="slaney")
            self.register_buffer(f"mel_bank_{n_fft}", torch.tensor(bank, dtype=torch.float32), persistent=False)
            self.register_buffer(f"window_{n_fft}", torch.hann_window(n_fft), persistent=False)

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def from_config(cls, config: AudioCodecConfig | dict | None = None) -> "AudioCodec":
        if config is None:
            config = AudioCodecConfig()
        elif isinstance(config, dict):
            config = build(AudioCodecConfig, config)
        return cls(config)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def n_q(self) -> int:
        return self.config.n_q

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    # ---- codes <-> latents ------------------------------------------------------------
    def codebooks(self) -> torch.Tensor:
        """(n_q, codebook_size, latent_dim) codewords, level by level."""
        cbs = self.quantizer.codebooks
        return cbs.reshape(self.n_q, self.codebook_size, -1)

    def quantize(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, D, F) -> codes (B, n_q, F): greedy residual nearest-codeword search."""
        residual = latents.transpose(1, 2).float()  # (B, F, D)
        codes = []
        for cb in self.codebooks():  # (K, D)
            dist = residual.pow(2).sum(-1, keepdim=True) - 2 * residual @ cb.t() + cb.pow(2).sum(-1)  # (B, F, K)
            idx = dist.argmin(-1)  # (B, F)
            residual = residual - cb[idx]
            codes.append(idx)
        return torch.stack(codes, dim=1)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, n_q, F) -> latents (B, D, F): the sum of each level's codeword."""
        self._check_codes(codes, batched=True)
        cbs = self.codebooks()  # (q, K, D)
        out = sum(cbs[level][codes[:, level]] for level in range(self.n_q))  # (B, F, D)
        return out.transpose(1, 2)

    def _check_codes(self, codes: torch.Tensor, batched: bool) -> None:
        want = 3 if batched else 2
        if codes.dim() != want or codes.shape[-2] != self.n_q:
            shape = "(B, n_q, F)" if batched else "(n_q, F)"
            raise AnygenError(f"audio codes must have shape {shape} with n_q={self.n_q}, got {tuple(codes.shape)}")
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise AnygenError(f"audio codes must be integers, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise AnygenError(f"audio codes must lie in 0..{self.codebook_size - 1}, "
                              f"got {int(codes.min())}..{int(codes.max())}")

    # ---- tensors ----------------------------------------------------------------------
    @staticmethod
    def _check_wave(wave: torch.Tensor) -> None:
        if wave.dim() != 3 or wave.shape[1] != 1:
            raise AnygenError(f"waveform batch must have shape (B, 1, T), got {tuple(wave.shape)}")
        if wave.shape[-1] == 0:
            raise AnygenError("waveform is empty (0 samples)")

    @torch.no_grad()
    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, 1, T) float -> (B, n_q, F) long codes."""
        self._check_wave(wave)
        return self.quantize(self.encoder(wave.float()))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, n_q, F) codes -> (B, 1, F * hop_length) waveform."""
        return self.decoder(self.dequantize(codes.long()))

    # ---- numpy, any sample rate ---------------------------------------------------------
    def encode_audio(self, waveform: np.ndarray, sample_rate: int) -> torch.Tensor:
        """Mono (T,) or multichannel (T, C) or (C, T) samples at any rate -> codes (n_q, F).

        As `anygen.io.to_mono_float`: integer PCM is scaled to [-1, 1], float audio peaking
        over 1 is peak-normalised, channels (the shorter axis) are averaged; other rates are
        resampled; NaN/Inf samples are refused.
        """
        wave = check_waveform(to_mono_float(np.asarray(waveform)))
        if wave.size == 0:
            raise AnygenError("audio: waveform is empty (0 samples)")
        if int(sample_rate) <= 0:
            raise AnygenError(f"audio: sample rate must be positive, got {sample_rate}")
        wave = resample(wave, int(sample_rate), self.sample_rate)
        was_training = self.training
        self.eval()
        try:
            codes = self.encode(torch.from_numpy(np.ascontiguousarray(wave)).view(1, 1, -1))
        finally:
            self.train(was_training)
        return codes[0]

    def decode_audio(self, codes: torch.Tensor) -> np.ndarray:
        """Codes (n_q, F) -> float32 mono waveform (F * hop_length,) at `self.sample_rate`."""
        codes = torch.as_tensor(codes)
        self._check_codes(codes, batched=False)
        was_training = self.training
        self.eval()
        try:
            wave = self.decode(codes[None])
        finally:
            self.train(was_training)
        return wave[0, 0].cpu().numpy().astype(np.float32)

    # ---- training -----------------------------------------------------------------------
    def _quantize_train(self, latents: torch.Tensor):
        """Latents (B, D, F) -> (quantized (B, D, F), codes (B, q, F), commitment loss)."""
        if self.config.quantizer == "rvq":
            quantized, codes, commit = self.quantizer(latents.transpose(1, 2))  # (B,F,D), (B,F,q), (q,)
            return quantized.transpose(1, 2), codes.transpose(1, 2), commit.sum()
        codes = self.quantize(latents.detach())
        quantized = self.dequantize(codes)
        commit = self.config.commitment_weight * F.mse_loss(latents, quantized)
        return latents + (quantized - latents).detach(), codes, commit  # straight-through

    def _spectral_losses(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) pair -> (multi-res STFT loss, multi-res log-mel loss), averaged over resolutions."""
        stft_loss = mel_loss = pred.new_zeros(())
        for n_fft in self.config.stft_sizes:
            window = getattr(self, f"window_{n_fft}")
            mags = []
            for x in (pred, target):
                if x.shape[-1] < n_fft:
                    x = F.pad(x, (0, n_fft - x.shape[-1]))
                spec = torch.stft(x, n_fft, hop_length=n_fft // 4, window=window, return_complex=True)
                mags.append(spec.abs().clamp(min=LOG_FLOOR))  # (B, n_fft/2+1, frames)
            p, t = mags
            sc = torch.linalg.vector_norm(t - p, dim=(1, 2)) / torch.linalg.vector_norm(t, dim=(1, 2)).clamp(min=1e-5)
            stft_loss = stft_loss + sc.mean() + (p.log() - t.log()).abs().mean()
            bank = getattr(self, f"mel_bank_{n_fft}")  # (n_freq, n_mels)
            pm = (p.transpose(1, 2) @ bank).clamp(min=LOG_FLOOR).log()
            tm = (t.transpose(1, 2) @ bank).clamp(min=LOG_FLOOR).log()
            mel_loss = mel_loss + (pm - tm).abs().mean()
        n = len(self.config.stft_sizes)
        return stft_loss / n, mel_loss / n

    def training_losses(self, wave: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """(B, 1, T) batch -> (loss, metrics). Metrics: loss terms, si_snr (dB), codebook usage, perplexity."""
        self._check_wave(wave)
        cfg = self.config
        wave = wave.float()
        latents = self.encoder(wave)  # (B, D, F)
        quantized, codes, commit = self._quantize_train(latents)
        recon = self.decoder(quantized)[..., : wave.shape[-1]]  # (B, 1, T)
        l1 = (recon - wave).abs().mean()
        stft_loss, mel_loss = self._spectral_losses(recon[:, 0], wave[:, 0])
        loss = cfg.l1_weight * l1 + cfg.stft_weight * stft_loss + cfg.mel_weight * mel_loss + commit
        with torch.no_grad():
            usage, perplexity = [], []
            for level in range(self.n_q):
                counts = torch.bincount(codes[:, level].reshape(-1), minlength=self.codebook_size).float()
                probs = counts / counts.sum()
                usage.append(float((counts > 0).float().mean()))
                entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
                perplexity.append(float(entropy.exp()))
            metrics = {
                "loss": float(loss), "l1": float(l1), "stft": float(stft_loss), "mel": float(mel_loss),
                "commit": float(commit), "si_snr": float(si_snr(recon, wave).mean()),
                "usage": sum(usage) / len(usage), "perplexity": sum(perplexity) / len(perplexity),
            }
            metrics.update({f"usage_l{level}": u for level, u in enumerate(usage)})
        return loss, metrics

    # ---- files ----------------------------------------------------------------------------
    def save(self, directory) -> Path:
        """config.json + model.safetensors, written atomically (`anygen.codecs.artifact`)."""
        return save_codec(self, directory, "audio")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "AudioCodec":
        """Load a directory written by `save`; every problem is an AnygenError naming the file."""
        return load_codec(directory, "audio", AudioCodecConfig, cls)

    @classmethod
    def from_pretrained_encodec(cls, directory: str | os.PathLike, n_q: int | None = None) -> "AudioCodec":
        """A local transformers-format EnCodec checkpoint (config.json + weights) as an AudioCodec.

        Keeps EnCodec's own quantizer, so codes equal `EncodecModel.encode(x, bandwidth=bw)`
        where `n_q` is the number of levels that bandwidth uses (None: all of the checkpoint's
        levels). Checkpoints that need per-chunk scales (`normalize`, chunking: the 48 kHz
        model) or stereo are refused, since codes alone could not be decoded.
        """
        from transformers import EncodecConfig, EncodecModel

        directory = Path(directory)
        config_path = directory / "config.json"
        if not config_path.is_file():
            raise AnygenError(f"{config_path}: missing file (expected a transformers EnCodec checkpoint directory)")
        try:
            ec = EncodecConfig.from_pretrained(directory)
        except Exception as e:  # transformers raises OSError/ValueError/TypeError for bad configs
            raise AnygenError(f"{config_path}: not a valid EnCodec config ({type(e).__name__}: {e})") from None
        if getattr(ec, "model_type", None) != "encodec":
            raise AnygenError(f"{config_path}: model_type is {getattr(ec, 'model_type', None)!r}, expected 'encodec'")
        if ec.normalize or ec.chunk_length_s is not None or ec.audio_channels != 1:
            raise AnygenError(f"{config_path}: EnCodec checkpoints with normalize, chunking or stereo audio "
                              "(such as the 48 kHz model) are not supported: their codes need per-chunk scales")
        if ec.codebook_dim != ec.hidden_size:
            raise AnygenError(f"{config_path}: codebook_dim {ec.codebook_dim} != hidden_size {ec.hidden_size}")
        levels = ec.num_quantizers
        n_q = levels if n_q is None else int(n_q)
        if not 1 <= n_q <= levels:
            raise AnygenError(f"n_q must be in 1..{levels} for {directory}, got {n_q}")
        try:
            model = EncodecModel.from_pretrained(directory, use_safetensors=True)  # never unpickle
        except Exception as e:
            raise AnygenError(f"{directory}: cannot load EnCodec weights ({type(e).__name__}: {e})") from None
        cfg = build(AudioCodecConfig, dict(
            sample_rate=ec.sampling_rate, n_q=n_q, codebook_size=ec.codebook_size, latent_dim=ec.hidden_size,
            num_filters=ec.num_filters, upsampling_ratios=list(ec.upsampling_ratios),
            num_residual_layers=ec.num_residual_layers, num_lstm_layers=ec.num_lstm_layers,
            kernel_size=ec.kernel_size, last_kernel_size=ec.last_kernel_size,
            residual_kernel_size=ec.residual_kernel_size, dilation_growth_rate=ec.dilation_growth_rate,
            compress=ec.compress, use_causal_conv=ec.use_causal_conv, pad_mode=ec.pad_mode,
            norm_type=ec.norm_type, use_conv_shortcut=ec.use_conv_shortcut,
            trim_right_ratio=float(ec.trim_right_ratio), quantizer="encodec",
        ))
        codec = cls(cfg)
        codec.encoder = model.encoder
        codec.decoder = model.decoder
        codec.quantizer = _EncodecQuantizer(model.quantizer.layers[:n_q])
        return codec.float().eval()

"""Tests of the Champ converter on tiny Champ-shaped checkpoints.

The Champ-format modules below are written for these tests from Champ's published layout (module names and forward
order of ``models/guidance_encoder.py`` and AnimateDiff-v2's ``models/motion_module.py``), with plain-tensor attention,
so the converted stock diffusers modules are checked against an independent computation from the same weights.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel, UNetMotionModel
from einops import rearrange
from safetensors import safe_open
from torch import nn
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from referencelcm import cli
from referencelcm.convert import convert_champ, read_champ_config
from referencelcm.convert.champ_config import check_guidance_layout
from referencelcm.models.guidance_encoder import MultiGuidanceEncoder
from referencelcm.models.motion import set_motion_norm_mode

GUIDANCE_TYPES = ("depth", "normal", "semantic_map", "dwpose")
UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
GUIDANCE_BLOCK_OUT_CHANNELS = (16, 32, 32, 64)  # three stride-2 convs: /8, like the 4-block VAE below
MOTION_MAX_LEN = 16
HEADS = 8
REFERENCE_HEAD_KEYS = ("conv_norm_out.weight", "conv_norm_out.bias", "conv_out.weight", "conv_out.bias")


# -- Champ-format reference modules (names as in Champ's files) -------------------------------------------------


class _Attention(nn.Module):
    """Self-attention with diffusers' parameter names (Champ uses diffusers' ``Attention``: no q/k/v bias)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (N, L, C)
        query, key, value = (
            rearrange(projection(tokens), "n l (h d) -> n h l d", h=self.heads)
            for projection in (self.to_q, self.to_k, self.to_v)
        )
        weights = (query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])).softmax(dim=-1)
        return self.to_out[0](rearrange(weights @ value, "n h l d -> n l (h d)"))


class _GegluProjection(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(tokens).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class _FeedForward(nn.Module):
    """diffusers' ``FeedForward(activation_fn="geglu")`` names: ``net.0.proj``, ``net.2``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.ModuleList([_GegluProjection(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim)])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            tokens = layer(tokens)
        return tokens


class _SpatialBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(dim), _Attention(dim, heads)
        self.norm3, self.ff = nn.LayerNorm(dim), _FeedForward(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.attn1(self.norm1(tokens)) + tokens
        return self.ff(self.norm3(tokens)) + tokens


class _SpatialTransformer(nn.Module):
    """Champ's ``Transformer3DModel`` without cross-attention, applied per frame."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([_SpatialBlock(channels, heads)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (N, C, H, W)
        height = features.shape[2]
        tokens = rearrange(self.proj_in(self.norm(features)), "n c h w -> n (h w) c")
        for block in self.transformer_blocks:
            tokens = block(tokens)
        return self.proj_out(rearrange(tokens, "n (h w) c -> n c h w", h=height)) + features


class ChampGuidanceEncoder(nn.Module):
    """Champ's ``GuidanceEncoder`` layout: an attention after every conv, a ``guidance_attention``; only
    ``attentions[-1]`` runs."""

    def __init__(
        self, block_out_channels=GUIDANCE_BLOCK_OUT_CHANNELS, embedding_channels=32, heads=HEADS, groups=32
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, block_out_channels[0], 3, padding=1)
        self.blocks, self.attentions = nn.ModuleList(), nn.ModuleList()
        for channels_in, channels_out in zip(block_out_channels[:-1], block_out_channels[1:]):
            self.blocks.append(nn.Conv2d(channels_in, channels_in, 3, padding=1))
            self.attentions.append(_SpatialTransformer(channels_in, heads, groups=1))
            self.blocks.append(nn.Conv2d(channels_in, channels_out, 3, padding=1, stride=2))
            self.attentions.append(_SpatialTransformer(channels_out, heads, groups=groups))
        self.guidance_attention = _SpatialTransformer(block_out_channels[-1], heads, groups=groups)
        self.conv_out = nn.Conv2d(block_out_channels[-1], embedding_channels, 3, padding=1)

    def forward(self, guidance: torch.Tensor) -> torch.Tensor:
        features = F.silu(self.conv_in(guidance))
        for block in self.blocks:
            features = F.silu(block(features))
        return self.conv_out(self.attentions[-1](features))


class _PositionTable(nn.Module):
    def __init__(self, dim: int, max_len: int) -> None:
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32)[:, None]
        frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        table = torch.zeros(1, max_len, dim)
        table[0, :, 0::2], table[0, :, 1::2] = torch.sin(position * frequency), torch.cos(position * frequency)
        self.register_buffer("pe", table)


class _TemporalAttention(_Attention):
    def __init__(self, dim: int, heads: int, max_len: int) -> None:
        super().__init__(dim, heads)
        self.pos_encoder = _PositionTable(dim, max_len)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (N, F, C)
        return super().forward(tokens + self.pos_encoder.pe[:, : tokens.shape[1]])


class _TemporalBlock(nn.Module):
    def __init__(self, dim: int, heads: int, max_len: int) -> None:
        super().__init__()
        self.attention_blocks = nn.ModuleList([_TemporalAttention(dim, heads, max_len) for _ in range(2)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(2)])
        self.ff, self.ff_norm = _FeedForward(dim), nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            tokens = attention(norm(tokens)) + tokens
        return self.ff(self.ff_norm(tokens)) + tokens


class _TemporalTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, max_len: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([_TemporalBlock(channels, heads, max_len)])
        self.proj_out = nn.Linear(channels, channels)


class ChampMotionModule(nn.Module):
    """AnimateDiff-v2 ``VanillaTemporalModule`` as Champ runs it: GroupNorm on every frame on its own."""

    def __init__(self, channels: int, heads: int = HEADS, max_len: int = MOTION_MAX_LEN, groups: int = 32) -> None:
        super().__init__()
        self.temporal_transformer = _TemporalTransformer(channels, heads, max_len, groups)

    def forward(self, video: torch.Tensor) -> torch.Tensor:  # (B, C, F, H, W)
        batch, _, num_frames, height, _ = video.shape
        transformer = self.temporal_transformer
        frames = rearrange(video, "b c f h w -> (b f) c h w")
        tokens = rearrange(transformer.norm(frames), "(b f) c h w -> (b h w) f c", b=batch)
        tokens = transformer.proj_in(tokens)
        for block in transformer.transformer_blocks:
            tokens = block(tokens)
        tokens = transformer.proj_out(tokens)
        output = rearrange(tokens, "(b h w) f c -> b c f h w", b=batch, h=height) + video
        return output


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial weights everywhere (Champ zero-initialises conv_out / proj_out; trained weights are not zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.ndim == 1:
                parameter.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
            else:
                parameter.copy_(noise / math.sqrt(parameter[0].numel()))
    return module


def _motion_locations(block_out_channels, layers_per_block):
    """``(key prefix, width)`` of every motion module of Champ's D-UNet (one after every resnet, plus the mid block)."""
    locations = []
    for index, width in enumerate(block_out_channels):
        locations += [(f"down_blocks.{index}.motion_modules.{j}", width) for j in range(layers_per_block)]
    for index, width in enumerate(reversed(block_out_channels)):
        locations += [(f"up_blocks.{index}.motion_modules.{j}", width) for j in range(layers_per_block + 1)]
    return locations + [("mid_block.motion_modules.0", block_out_channels[-1])]


# -- fixtures ----------------------------------------------------------------------------------------------------


def _tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=64,
    )


def _tiny_image_encoder(projection_dim: int) -> CLIPVisionModelWithProjection:
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        projection_dim=projection_dim,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=4,
    )
    return CLIPVisionModelWithProjection(config)


def write_champ_tree(
    root: Path,
    unet_config: dict = UNET_CONFIG,
    guidance_channels: tuple = GUIDANCE_BLOCK_OUT_CHANNELS,
    groups: int = 32,
    position_tables: bool = True,
    motion_heads: int = HEADS,
) -> dict:
    """Write a tiny ``pretrained_models/`` tree in Champ's layout; return the modules its files were written from.

    ``groups`` is the group count of the Champ-format attentions and motion modules (Champ: 32), for widths below 32;
    ``motion_heads`` the motion modules' head count (Champ: 8; not stored in the weights).
    """
    checkpoints = root / "champ"
    checkpoints.mkdir(parents=True)
    denoising_unet = _randomise(UNet2DConditionModel(**unet_config), seed=1)
    denoising_unet.save_config(root / "stable-diffusion-v1-5" / "unet")
    torch.save(denoising_unet.state_dict(), checkpoints / "denoising_unet.pth")
    reference_unet = _randomise(UNet2DConditionModel(**unet_config), seed=2)
    reference = {key: value for key, value in reference_unet.state_dict().items() if key not in REFERENCE_HEAD_KEYS}
    torch.save(reference, checkpoints / "reference_unet.pth")

    motion_modules, motion_state_dict = {}, {}
    locations = _motion_locations(unet_config["block_out_channels"], unet_config["layers_per_block"])
    for seed, (prefix, width) in enumerate(locations):
        motion_modules[prefix] = _randomise(ChampMotionModule(width, motion_heads, groups=groups), seed=100 + seed)
        for key, value in motion_modules[prefix].state_dict().items():
            if position_tables or not key.endswith(".pe"):
                motion_state_dict[f"{prefix}.{key}"] = value
    torch.save(motion_state_dict, checkpoints / "motion_module.pth")

    guidance_encoders = {}
    for seed, name in enumerate(GUIDANCE_TYPES):
        encoder = ChampGuidanceEncoder(guidance_channels, unet_config["block_out_channels"][0], groups=groups)
        guidance_encoders[name] = _randomise(encoder, seed=200 + seed)
        torch.save(guidance_encoders[name].state_dict(), checkpoints / f"guidance_encoder_{name}.pth")

    _tiny_vae().save_pretrained(root / "sd-vae-ft-mse")
    _tiny_image_encoder(unet_config["cross_attention_dim"]).save_pretrained(root / "image_encoder")
    return {
        "root": root,
        "denoising_unet": denoising_unet.state_dict(),
        "reference_unet": reference,
        "motion_modules": motion_modules,
        "guidance_encoders": guidance_encoders,
    }


@pytest.fixture(scope="module")
def champ_sources(tmp_path_factory) -> dict:
    """A tiny Champ tree with Champ's group counts, and an image-encoder folder with its own preprocessor config."""
    torch.manual_seed(0)
    sources = write_champ_tree(tmp_path_factory.mktemp("champ") / "pretrained_models")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        sources["root"] / "image_encoder"
    )
    return sources


@pytest.fixture(scope="module")
def converted(champ_sources, tmp_path_factory) -> tuple[Path, object]:
    output = tmp_path_factory.mktemp("converted") / "champ-teacher"
    report = convert_champ(champ_sources["root"], output, log=None)
    return output, report


def _copy_tree(champ_sources, tmp_path) -> Path:
    root = tmp_path / "pretrained_models"
    shutil.copytree(champ_sources["root"], root)
    return root


# -- tests -------------------------------------------------------------------------------------------------------


def test_folder_is_a_teacher_pipeline_with_frame_wise_motion_norm(converted):
    output, report = converted
    index = json.loads((output / "model_index.json").read_text())
    assert index["_class_name"] == "ReferenceLCMPipeline"
    assert index["motion_norm_mode"] == "frame"
    assert index["denoising_unet"] == ["diffusers", "UNetMotionModel"]
    for name in ("vae", "image_encoder", "reference_unet", "denoising_unet", "guidance_encoder"):
        assert list((output / name).glob("*.safetensors")), name
    assert not list(output.rglob("*.bin"))
    scheduler = json.loads((output / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DDIMScheduler"
    assert scheduler["beta_schedule"] == "scaled_linear"
    assert (scheduler["prediction_type"], scheduler["timestep_spacing"]) == ("v_prediction", "trailing")
    assert scheduler["rescale_betas_zero_snr"] is True
    assert (scheduler["beta_start"], scheduler["beta_end"]) == (0.00085, 0.012)
    text = report.format()
    assert "guidance_attention" in text and "attentions.0" in text and "conv_norm_out.weight" in text


def test_guidance_encoder_reproduces_champ_forward(champ_sources, converted):
    output, report = converted
    encoder = MultiGuidanceEncoder.from_pretrained(output / "guidance_encoder").eval()
    assert tuple(encoder.config.guidance_types) == GUIDANCE_TYPES
    assert tuple(encoder.config.block_out_channels) == GUIDANCE_BLOCK_OUT_CHANNELS
    maps = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = {name: champ(maps) for name, champ in champ_sources["guidance_encoders"].items()}
        for name in GUIDANCE_TYPES:
            torch.testing.assert_close(encoder.encoders[name](maps), expected[name], atol=1e-5, rtol=1e-5)
        summed = encoder({name: maps for name in GUIDANCE_TYPES})
    torch.testing.assert_close(summed, sum(expected.values()), atol=1e-5, rtol=1e-5)
    # attentions.0-4 and guidance_attention were dropped, with their reasons, and nothing else.
    dropped = {key for entry in report.dropped if entry.source == "guidance_encoder_depth.pth" for key in entry.keys}
    assert dropped == {
        key
        for key in champ_sources["guidance_encoders"]["depth"].state_dict()
        if key.startswith("guidance_attention.")
        or (key.startswith("attentions.") and not key.startswith("attentions.5."))
    }


def test_motion_modules_reproduce_champ_forward(champ_sources, converted):
    output, _ = converted
    unet = UNetMotionModel.from_pretrained(output / "denoising_unet").eval()
    assert set_motion_norm_mode(unet, "frame") == len(champ_sources["motion_modules"])
    generator = torch.Generator().manual_seed(4)
    num_frames = 5
    for prefix, champ in champ_sources["motion_modules"].items():
        module = unet.get_submodule(prefix)
        width = champ.temporal_transformer.proj_in.in_features
        video = torch.randn(2, width, num_frames, 3, 3, generator=generator)
        frames = rearrange(video, "b c f h w -> (b f) c h w")
        with torch.no_grad():
            expected = champ(video)
            actual = module(frames, num_frames=num_frames)
        torch.testing.assert_close(actual, rearrange(expected, "b c f h w -> (b f) c h w"), atol=1e-5, rtol=1e-5)
    # diffusers' own (whole-clip) normalisation would not be Champ: this is why the folder stores "frame".
    set_motion_norm_mode(unet, "video")
    with torch.no_grad():
        video_norm = module(frames, num_frames=num_frames)
    assert (video_norm - actual).abs().max() > 1e-3


def test_unet_weights_are_copied_exactly(champ_sources, converted):
    output, _ = converted
    denoising = UNetMotionModel.from_pretrained(output / "denoising_unet").state_dict()
    for key, tensor in champ_sources["denoising_unet"].items():
        assert torch.equal(denoising[key], tensor), key
    reference = UNet2DConditionModel.from_pretrained(output / "reference_unet").state_dict()
    for key, tensor in champ_sources["reference_unet"].items():
        assert torch.equal(reference[key], tensor), key
    assert torch.count_nonzero(reference["conv_out.weight"]) == 0
    assert torch.equal(reference["conv_norm_out.weight"], torch.ones_like(reference["conv_norm_out.weight"]))


def test_subset_of_guidance_types_and_linear_schedule(champ_sources, tmp_path):
    output = tmp_path / "out"
    convert_champ(
        champ_sources["root"] / "champ", output, guidance_types=["dwpose", "depth"], beta_schedule="linear", log=None
    )
    encoder = MultiGuidanceEncoder.from_pretrained(output / "guidance_encoder")
    assert tuple(encoder.config.guidance_types) == ("dwpose", "depth")
    assert json.loads((output / "scheduler" / "scheduler_config.json").read_text())["beta_schedule"] == "linear"


def test_fp16_writes_fp16_safetensors(champ_sources, tmp_path):
    output = tmp_path / "out"
    convert_champ(champ_sources["root"], output, dtype="fp16", guidance_types=["depth"], log=None)
    for name in ("vae", "image_encoder", "reference_unet", "denoising_unet", "guidance_encoder"):
        (weights,) = (output / name).glob("*.safetensors")
        with safe_open(weights, framework="pt") as file:
            dtypes = {file.get_slice(key).get_dtype() for key in file.keys()}
        assert dtypes == {"F16"}, name


@pytest.mark.parametrize(
    "file_name, stray_key",
    [
        ("reference_unet.pth", "down_blocks.0.attentions.0.extra_gate.weight"),
        ("denoising_unet.pth", "guidance_fusion.weight"),
        (
            "motion_module.pth",
            "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.2.to_q.weight",
        ),
        ("guidance_encoder_depth.pth", "blocks_extra.0.weight"),
    ],
)
def test_keys_without_destination_fail_loudly(champ_sources, tmp_path, file_name, stray_key):
    root = _copy_tree(champ_sources, tmp_path)
    path = root / "champ" / file_name
    state_dict = torch.load(path, weights_only=True)
    state_dict[stray_key] = torch.zeros(4)
    torch.save(state_dict, path)
    output = tmp_path / "out"
    with pytest.raises(ValueError, match=stray_key.replace(".", r"\.")):
        convert_champ(root, output, log=None)
    assert not output.exists() and not list(tmp_path.glob(".out.*"))


class _NotATensor:
    pass


def test_files_holding_objects_are_not_unpickled(champ_sources, tmp_path):
    root = _copy_tree(champ_sources, tmp_path)
    torch.save({"conv_in.weight": _NotATensor()}, root / "champ" / "guidance_encoder_depth.pth")
    with pytest.raises(ValueError, match="weights_only=True"):
        convert_champ(root, tmp_path / "out", guidance_types=["depth"], log=None)


def test_missing_keys_fail_unless_sd_weights_fill_them(champ_sources, tmp_path):
    root = _copy_tree(champ_sources, tmp_path)
    path = root / "champ" / "denoising_unet.pth"
    state_dict = torch.load(path, weights_only=True)
    del state_dict["mid_block.resnets.0.conv1.bias"]
    torch.save(state_dict, path)
    with pytest.raises(ValueError, match=r"mid_block\.resnets\.0\.conv1\.bias"):
        convert_champ(root, tmp_path / "out", log=None)
    base = UNet2DConditionModel(**UNET_CONFIG)
    base.save_pretrained(root / "stable-diffusion-v1-5" / "unet")
    report = convert_champ(root, tmp_path / "out", guidance_types=["depth"], log=None)
    assert any("mid_block.resnets.0.conv1.bias" in entry.keys for entry in report.filled)
    loaded = UNetMotionModel.from_pretrained(tmp_path / "out" / "denoising_unet").state_dict()
    assert torch.equal(loaded["mid_block.resnets.0.conv1.bias"], base.state_dict()["mid_block.resnets.0.conv1.bias"])


def test_output_is_not_overwritten_without_flag(champ_sources, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="--overwrite"):
        convert_champ(champ_sources["root"], output, guidance_types=["depth"], log=None)
    assert (output / "keep.txt").read_text() == "mine"
    convert_champ(champ_sources["root"], output, guidance_types=["depth"], overwrite=True, log=None)
    assert not (output / "keep.txt").exists() and (output / "model_index.json").is_file()


def test_cli_prints_report_and_rejects_bad_input(champ_sources, tmp_path, capsys, monkeypatch):
    # Only this sub-command: the CLI imports every sub-command's module to build its parser.
    monkeypatch.setattr(cli, "SUBCOMMANDS", {"convert-champ": cli.SUBCOMMANDS["convert-champ"]})
    args = ["convert-champ", "--champ-dir", str(champ_sources["root"]), "--output", str(tmp_path / "out")]
    assert cli.main(args + ["--guidance-types", "normal", "--dtype", "fp16"]) == 0
    printed = capsys.readouterr().out
    assert "Dropped keys" in printed and "guidance_encoder_normal.pth" in printed
    assert cli.main(["convert-champ", "--champ-dir", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x")]) == 2
    assert "--champ-dir" in capsys.readouterr().err
    assert cli.main(args[:-1] + [str(tmp_path / "y"), "--guidance-types", "thermal"]) == 2
    assert "guidance_encoder_thermal.pth" in capsys.readouterr().err


def test_converted_folder_loads_as_pipeline_and_generates(converted):
    from diffusers import DDIMScheduler

    from referencelcm import ReferenceLCMPipeline
    from referencelcm.models.motion import FrameWiseGroupNorm

    output, _ = converted
    pipe = ReferenceLCMPipeline.from_pretrained(output)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert isinstance(pipe.denoising_unet.down_blocks[0].motion_modules[0].norm, FrameWiseGroupNorm)
    generator = torch.Generator().manual_seed(0)
    reference_image = torch.rand(3, 64, 64, generator=generator)
    guidance = {name: torch.rand(2, 3, 64, 64, generator=generator) for name in GUIDANCE_TYPES}
    frames = pipe(
        reference_image, guidance, num_inference_steps=2, guidance_scale=3.5, generator=generator, output_type="np"
    ).frames
    assert frames.shape == (1, 2, 64, 64, 3)
    assert frames.min() >= 0 and frames.max() <= 1 and not (frames != frames).any()


def test_shape_only_checkpoints_with_small_groups_and_no_position_tables(tmp_path):
    """Champ-shaped files for an 8/16-wide UNet with 4 groups and no ``pos_encoder.pe`` buffers: the conversion
    warns that the motion norm groups are not Champ's, uses diffusers' (identical) position table, and runs."""
    from diffusers.models.embeddings import SinusoidalPositionalEmbedding

    from referencelcm import ReferenceLCMPipeline

    config = dict(UNET_CONFIG, block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=16)
    sources = write_champ_tree(tmp_path / "pretrained_models", config, (8, 16, 16, 32), groups=4, position_tables=False)
    report = convert_champ(sources["root"], tmp_path / "out", log=None)
    assert any("norm_num_groups=4" in warning for warning in report.warnings)
    assert any("pos_embed.pe" in key for entry in report.filled for key in entry.keys)

    pipe = ReferenceLCMPipeline.from_pretrained(tmp_path / "out")
    table = pipe.denoising_unet.get_submodule("mid_block.motion_modules.0.transformer_blocks.0.pos_embed").pe
    torch.testing.assert_close(table, SinusoidalPositionalEmbedding(16, max_seq_length=32).pe)
    champ = sources["motion_modules"]["down_blocks.1.motion_modules.0"]
    video = torch.randn(1, 16, 3, 2, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        actual = pipe.denoising_unet.get_submodule("down_blocks.1.motion_modules.0")(
            rearrange(video, "b c f h w -> (b f) c h w"), num_frames=3
        )
        torch.testing.assert_close(actual, rearrange(champ(video), "b c f h w -> (b f) c h w"), atol=1e-5, rtol=1e-5)
    generator = torch.Generator().manual_seed(0)
    guidance = {name: torch.rand(2, 3, 32, 32, generator=generator) for name in GUIDANCE_TYPES}
    image = torch.rand(3, 32, 32, generator=generator)
    frames = pipe(image, guidance, num_inference_steps=2, guidance_scale=3.5, output_type="np").frames
    assert frames.shape == (1, 2, 32, 32, 3)


# -- Champ's inference.yaml (--champ-config) ----------------------------------------------------------------------

# The structure of Champ's configs/inference/inference.yaml (same sections and keys), with this tree's sizes.
CHAMP_INFERENCE_YAML = """\
exp_name: Animation
width: 512
height: 512
num_inference_steps: 20
guidance_scale: 3.5
enable_zero_snr: true
weight_dtype: "fp16"
guidance_types:
  - 'dwpose'
  - 'depth'
noise_scheduler_kwargs:
  num_train_timesteps: 1000
  beta_start:          0.00085
  beta_end:            0.012
  beta_schedule:       "linear"
  steps_offset:        1
  clip_sample:         false
unet_additional_kwargs:
  use_inflated_groupnorm: true
  use_motion_module: true
  motion_module_type: Vanilla
  motion_module_kwargs:
    num_attention_heads: 4
    num_transformer_block: 1
    attention_block_types:
    - Temporal_Self
    - Temporal_Self
    temporal_position_encoding: true
    temporal_position_encoding_max_len: 16
guidance_encoder_kwargs:
  guidance_embedding_channels: 32
  guidance_input_channels: 3
  block_out_channels: [16, 32, 32, 64]
"""


def test_champ_config_gives_heads_scheduler_and_guidance_types(tmp_path, capsys, monkeypatch):
    """Motion modules with 4 heads (not in the weights): converted with Champ's default 8 they are not Champ's; with
    --champ-config they are, and the scheduler and guidance types come from the config too, each one reported."""
    sources = write_champ_tree(tmp_path / "pretrained_models", motion_heads=4)
    config = tmp_path / "inference.yaml"
    config.write_text(CHAMP_INFERENCE_YAML)
    monkeypatch.setattr(cli, "SUBCOMMANDS", {"convert-champ": cli.SUBCOMMANDS["convert-champ"]})
    args = ["convert-champ", "--champ-dir", str(sources["root"]), "--champ-config", str(config)]
    assert cli.main(args + ["--output", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert f"Settings from --champ-config {config}:" in printed
    assert "motion module heads: 4 (`unet_additional_kwargs.motion_module_kwargs.num_attention_heads`)" in printed
    assert "guidance types: ('dwpose', 'depth') (`guidance_types`)" in printed
    assert "guidance encoder heads: 8, Champ's GuidanceEncoder default (no `guidance_encoder_kwargs" in printed
    assert "scheduler DDIM, beta_schedule=linear, v_prediction, zero-terminal-SNR, trailing spacing" in printed
    checked = ['block_out_channels', 'guidance_embedding_channels', 'guidance_input_channels']
    assert f"guidance_encoder_kwargs {checked}: equal to the weights' (checked, not taken)" in printed

    scheduler = json.loads((tmp_path / "out" / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["beta_schedule"], scheduler["prediction_type"], scheduler["timestep_spacing"]) == (
        "linear", "v_prediction", "trailing")
    assert scheduler["rescale_betas_zero_snr"] is True and scheduler["steps_offset"] == 1
    encoder = MultiGuidanceEncoder.from_pretrained(tmp_path / "out" / "guidance_encoder")
    assert tuple(encoder.config.guidance_types) == ("dwpose", "depth") and encoder.config.attention_num_heads == 8

    prefix, champ = next(iter(sources["motion_modules"].items()))
    width = champ.temporal_transformer.proj_in.in_features
    video = torch.randn(1, width, 3, 2, 2, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = rearrange(champ(video), "b c f h w -> (b f) c h w")

    def motion_output(folder: Path) -> torch.Tensor:
        unet = UNetMotionModel.from_pretrained(folder / "denoising_unet").eval()
        set_motion_norm_mode(unet, "frame")  # what the pipeline re-applies on load
        with torch.no_grad():
            return unet.get_submodule(prefix)(rearrange(video, "b c f h w -> (b f) c h w"), num_frames=3)

    torch.testing.assert_close(motion_output(tmp_path / "out"), expected, atol=1e-5, rtol=1e-5)
    # The command line wins over the config (and says so); 8 heads do not reproduce these weights.
    assert cli.main(args + ["--output", str(tmp_path / "eight"), "--motion-attention-heads", "8",
                            "--beta-schedule", "scaled_linear"]) == 0
    printed = capsys.readouterr().out
    assert "motion module heads: 8 from the command line (the config's" in printed
    assert "beta_schedule: 'scaled_linear' from the command line instead" in printed
    assert (motion_output(tmp_path / "eight") - expected).abs().max() > 1e-3


@pytest.mark.parametrize(
    "text, message",
    [
        ("unet_additional_kwargs:\n  motion_module_kwargs:\n    num_attention_heads: 0\n",
         "`unet_additional_kwargs.motion_module_kwargs.num_attention_heads` must be a positive integer, got 0"),
        ("noise_scheduler_kwargs:\n  beta_shedule: linear\n", "\\['beta_shedule'\\], which DDIMScheduler does not"),
        ("guidance_types: depth\n", "`guidance_types` must be a non-empty list"),
        ("- just\n- a list\n", "expected a YAML mapping"),
    ],
)
def test_bad_champ_configs_name_the_key(tmp_path, text, message):
    config = tmp_path / "inference.yaml"
    config.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_champ_config(config)


def test_champ_config_guidance_heads_and_layout_check(tmp_path):
    config = tmp_path / "inference.yaml"
    config.write_text("guidance_encoder_kwargs:\n  attention_num_heads: 4\n  block_out_channels: [16, 32, 96, 256]\n")
    read = read_champ_config(config)
    assert read.guidance_attention_heads == 4 and read.motion_attention_heads is None and read.scheduler_kwargs is None
    assert "checked" in check_guidance_layout(read, {"block_out_channels": (16, 32, 96, 256)})
    with pytest.raises(ValueError, match="`guidance_encoder_kwargs.block_out_channels` is \\[16, 32, 96, 256\\]"):
        check_guidance_layout(read, {"block_out_channels": (16, 32, 32, 64)})
    with pytest.raises(FileNotFoundError, match="--champ-config"):
        read_champ_config(tmp_path / "missing.yaml")

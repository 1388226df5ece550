"""The models the sweep covers: every torchvision classifier and a fixed list of timm models."""
from __future__ import annotations

from pathlib import Path

import torchvision
from torch import nn

RATIOS = (0.3, 0.5, 0.7)
REPORT_RATIO = 0.5
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "zoo"
SMALL = 64                                          # input side wherever the model allows it

# ------------------------------------------------------------------------------ the model lists
# torchvision: every classification model (torchvision.models.list_models); input side per
# model where 64x64 does not fit. ViTs assert their 224 image size, MaxViT needs 224 for its
# window partitions, Inception v3's auxiliary head (built when untrained) needs 299.
TV_SIZES = {"inception_v3": 299, "maxvit_t": 224,
            "vit_b_16": 224, "vit_b_32": 224, "vit_l_16": 224, "vit_l_32": 224, "vit_h_14": 224}

# timm: a fixed, explicit list of small variants across the families.
# (name, input side, extra create_model kwargs). ViT-like models are built for 64x64 with
# img_size=64; the Inception family needs its native 299.
_IMG64 = {"img_size": SMALL}
TIMM_MODELS: list[tuple[str, int, dict]] = [
    # ResNet / ResNeXt and relatives
    ("resnet18", 64, {}), ("resnet18d", 64, {}), ("resnet26d", 64, {}), ("resnet34", 64, {}),
    ("seresnet18", 64, {}), ("resnext26ts", 64, {}), ("resnext50_32x4d", 64, {}),
    ("res2net50_14w_8s", 64, {}), ("resnest14d", 64, {}), ("skresnet18", 64, {}),
    ("ecaresnet26t", 64, {}), ("tresnet_m", 64, {}), ("lambda_resnet26t", 64, {}),
    ("botnet26t_256", 64, _IMG64),
    # RegNet
    ("regnetx_002", 64, {}), ("regnety_002", 64, {}), ("regnetz_b16", 64, {}),
    # EfficientNet / MobileNet and other mobile CNNs
    ("efficientnet_b0", 64, {}), ("efficientnet_lite0", 64, {}), ("tf_efficientnetv2_b0", 64, {}),
    ("mobilenetv2_050", 64, {}), ("mobilenetv3_small_050", 64, {}),
    ("mobilenetv3_large_100", 64, {}), ("mobilenetv4_conv_small", 64, {}),
    ("mnasnet_small", 64, {}), ("fbnetc_100", 64, {}), ("spnasnet_100", 64, {}),
    ("mixnet_s", 64, {}), ("tinynet_e", 64, {}), ("hardcorenas_a", 64, {}), ("lcnet_050", 64, {}),
    ("ghostnet_050", 64, {}), ("ghostnetv2_100", 64, {}), ("rexnet_100", 64, {}),
    ("mobileone_s0", 64, {}), ("repvgg_a0", 64, {}), ("repvit_m1", 64, {}),
    ("hgnetv2_b0", 64, {}), ("fastvit_t8", 64, {}), ("starnet_s1", 64, {}),
    # hybrid CNN-transformers
    ("mobilevit_xxs", 64, {}), ("efficientvit_b0", 64, {}), ("efficientformer_l1", 224, {}),
    ("efficientformerv2_s0", 64, _IMG64), ("edgenext_xx_small", 64, {}),
    ("levit_128s", 64, _IMG64), ("coatnet_nano_rw_224", 64, _IMG64),
    ("maxvit_nano_rw_256", 64, _IMG64), ("tiny_vit_5m_224", 64, {}), ("nextvit_small", 64, {}),
    # DenseNet
    ("densenet121", 64, {}), ("densenetblur121d", 64, {}),
    # ConvNeXt and other metaformers
    ("convnext_atto", 64, {}), ("convnext_femto", 64, {}), ("convnextv2_atto", 64, {}),
    ("poolformer_s12", 64, {}), ("inception_next_tiny", 64, {}), ("mambaout_femto", 64, {}),
    ("rdnet_tiny", 64, {}), ("convmixer_768_32", 64, {}),
    # ViT / DeiT and other plain transformers
    ("vit_tiny_patch16_224", 64, _IMG64), ("vit_small_patch16_224", 64, _IMG64),
    ("deit_tiny_patch16_224", 64, _IMG64), ("deit_tiny_distilled_patch16_224", 64, _IMG64),
    ("eva02_tiny_patch14_224", 64, _IMG64), ("beit_base_patch16_224", 64, _IMG64),
    ("cait_xxs24_224", 64, _IMG64), ("xcit_nano_12_p16_224", 64, {}),
    ("crossvit_tiny_240", 64, {}), ("tnt_s_patch16_224", 64, _IMG64),
    # hierarchical transformers
    ("swin_tiny_patch4_window7_224", 64, _IMG64), ("swinv2_tiny_window8_256", 64, _IMG64),
    ("swinv2_cr_tiny_ns_224", 64, _IMG64), ("pit_ti_224", 64, _IMG64),
    ("pvt_v2_b0", 64, {}), ("coat_lite_tiny", 64, _IMG64), ("visformer_tiny", 64, _IMG64),
    ("nest_tiny", 64, _IMG64), ("gcvit_xxtiny", 64, _IMG64), ("focalnet_tiny_srf", 64, {}),
    ("davit_tiny", 64, {}), ("hiera_tiny_224", 64, _IMG64),
    # MLP-Mixer and MLPs
    ("mixer_s16_224", 64, _IMG64), ("resmlp_12_224", 64, _IMG64), ("gmlp_ti16_224", 64, _IMG64),
    ("sequencer2d_s", 64, {}),
    # Inception
    ("inception_v3", 299, {}), ("inception_v4", 299, {}), ("inception_resnet_v2", 299, {}),
    # others
    ("vgg11_bn", 64, {}), ("dla34", 64, {}), ("dpn48b", 64, {}), ("hrnet_w18_small", 64, {}),
    ("cspresnet50", 64, {}), ("cspdarknet53", 64, {}), ("ese_vovnet19b_dw", 64, {}),
    ("selecsls42b", 64, {}), ("nf_resnet26", 64, {}),
]


def torchvision_names() -> list[str]:
    return list(torchvision.models.list_models(module=torchvision.models))


def all_specs(torchvision_too: bool = True, timm_too: bool = True) -> list[tuple[str, str]]:
    """``[(source, name), ...]`` in sweep order: torchvision first, then timm."""
    specs = []
    if torchvision_too:
        specs += [("torchvision", n) for n in torchvision_names()]
    if timm_too:
        specs += [("timm", n) for n, _, _ in TIMM_MODELS]
    return specs


def build(source: str, name: str) -> tuple[nn.Module, int]:
    """An untrained model with 10 classes, and the input side it is swept at."""
    if source == "torchvision":
        model = torchvision.models.get_model(name, weights=None, num_classes=10)
        return model, TV_SIZES.get(name, SMALL)
    if source == "timm":
        import timm
        spec = {n: (s, kw) for n, s, kw in TIMM_MODELS}
        size, kwargs = spec.get(name, (SMALL, {}))
        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs), size
    raise ValueError(f"unknown source {source!r}; use 'torchvision' or 'timm'")

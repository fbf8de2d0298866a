"""Shared test helpers: golden configs and converted golden checkpoints."""
import json

import mindspore as ms

import dvt_ms
from dvt_ms.convert import convert_checkpoint

GOLDEN_MODELS = {"t2t": "dvt_t2t_vit_12", "deit": "dvt_deit_small"}


def golden_overrides(golden_dir, family):
    """The golden reduced config (``<family>.json``) as create_model overrides."""
    overrides = json.loads((golden_dir / f"{family}.json").read_text())
    assert overrides.pop("family") == family
    return overrides


def converted_golden_model(golden_dir, family, out_dir, **extra):
    """Convert ``<family>.pth.tar`` with our converter and load it into an eval-mode model."""
    overrides = golden_overrides(golden_dir, family)
    ckpt = out_dir / f"{family}.ckpt"
    if not ckpt.exists():
        convert_checkpoint(golden_dir / f"{family}.pth.tar", ckpt, GOLDEN_MODELS[family], overrides)
    overrides.update(extra)
    model = dvt_ms.create_model(GOLDEN_MODELS[family], **overrides)
    ms.load_param_into_net(model, ms.load_checkpoint(str(ckpt)), strict_load=True)
    model.set_train(False)
    return model, ckpt

"""Write ``<family>_trajectory.npz``: ten training steps of the authors' code from the golden checkpoints.

Run with PyTorch (CPU) and a checkout of the authors' repository; nothing of dvt_ms is imported:

    python tests/golden/make_trajectory.py --authors_repo /path/to/Dynamic-Vision-Transformer

Their model classes, their vendored timm 0.3 ``create_optimizer`` (torch.optim.AdamW, no decay on
1-D parameters and ``*.bias``) and ``create_scheduler`` (``CosineLRScheduler`` stepped once per
epoch, as their ``main.py`` does) train the reduced golden model (``<family>.pth.tar``) for one step
per epoch over a compressed schedule: ``epochs`` 7 with 3 warm-up and 3 cool-down epochs, so ten
steps cross the warm-up, the cosine and the cool-down. Learning rate, weight decay, warm-up and
minimum learning rates are the published recipe's (DeiT-S: 5e-4 / 0.05; T2T-ViT-12: 2e-3 / 0.03;
both 1e-6 / 1e-5). The batch is the golden images (``<family>.npz``) with fixed labels; the loss is
the sum of the three exits' cross-entropies; the model stays in eval mode (no dropout, no drop path:
the T2T Performers' dropout is hard-coded in training mode).

The file holds, per trainable parameter (published key), the change ``delta/<key>`` over the ten
steps (float32), the learning rate of each step as the authors' optimizer saw it, the names their
optimizer decayed, the exits' losses, and the settings above.

Importing their code without its training dependencies: ``timm/__init__``, ``timm/models/__init__``
and ``timm/data/__init__`` pull in torchvision, PIL and every model, so those three packages are
entered by path (their modules still load from the checkout, unmodified), ``timm.data`` gets its
constants, and ``torch._six`` (removed from PyTorch 2) is provided for their layer helpers. Their
feature reuse makes its zero class-token column with ``torch.zeros(...).cuda()`` (the code's only
device call): on a CPU ``Tensor.cuda`` is made the identity.
"""
import argparse
import collections.abc
import functools
import importlib
import json
import pathlib
import sys
import types

import numpy as np
import torch
from torch import nn

GOLDEN = pathlib.Path(__file__).resolve().parent
LABELS = np.array([3, 7], dtype=np.int64)
SCHEDULE = {"epochs": 7, "warmup_epochs": 3, "cooldown_epochs": 3}
# The published recipe (the authors' README commands and main.py defaults)
RECIPES = {
    "deit": {"lr": 5e-4, "weight_decay": 0.05, "warmup_lr": 1e-6, "min_lr": 1e-5},
    "t2t": {"lr": 2e-3, "weight_decay": 0.03, "warmup_lr": 1e-6, "min_lr": 1e-5},
}


def import_authors_code(repo):
    """Their model modules and vendored timm 0.3 optimizer/scheduler factories, from ``repo``."""
    repo = pathlib.Path(repo).resolve()
    sys.path.insert(0, str(repo))
    six = types.ModuleType("torch._six")
    six.container_abcs, six.string_classes, six.int_classes = collections.abc, (str, bytes), int
    sys.modules.setdefault("torch._six", six)
    for package in ("timm", "timm.models", "timm.data", "models"):
        module = types.ModuleType(package)
        module.__path__ = [str(repo.joinpath(*package.split(".")))]
        sys.modules[package] = module
    torch.Tensor.cuda = lambda tensor, *args, **kwargs: tensor
    constants = importlib.import_module("timm.data.constants")
    sys.modules["timm.data"].__dict__.update({k: v for k, v in vars(constants).items() if k.isupper()})
    return types.SimpleNamespace(
        deit=importlib.import_module("models_deit"), t2t=importlib.import_module("models.t2t_vit"),
        vit=importlib.import_module("timm.models.vision_transformer"),
        create_optimizer=importlib.import_module("timm.optim").create_optimizer,
        create_scheduler=importlib.import_module("timm.scheduler").create_scheduler)


def authors_model(code, family, config):
    """Their DVT wrapper with the reduced stages: their preset functions hard-code the full width
    and depth, so each is replaced by the same constructor call with the golden config's sizes."""
    sizes = dict(embed_dim=config["embed_dim"], depth=config["depth"], num_heads=config["num_heads"],
                 mlp_ratio=config["mlp_ratio"], num_classes=config["num_classes"])
    if family == "deit":
        def stage(patch_size):
            return functools.partial(code.vit.VisionTransformer, patch_size=patch_size, qkv_bias=config["qkv_bias"],
                                     norm_layer=functools.partial(nn.LayerNorm, eps=config["layernorm_eps"]), **sizes)
        code.deit.deit_small_less_less_token, code.deit.deit_small_less_token, code.deit.deit_small = \
            stage(32), stage(23), stage(16)
        return code.deit.DVT_Deit_small()

    def stage(tokens_type):
        return functools.partial(code.t2t.T2T_ViT, tokens_type=tokens_type, token_dim=config["token_dim"], **sizes)
    code.t2t.T2t_vit_12_less_less_token, code.t2t.T2t_vit_12_less_token, code.t2t.T2t_vit_12 = \
        stage("performer_less_less_token"), stage("performer_less_token"), stage("performer")
    return code.t2t.DVT_T2t_vit_12()


def trajectory(code, family):
    config = json.loads((GOLDEN / f"{family}.json").read_text())
    torch.manual_seed(0)
    model = authors_model(code, family, config)
    checkpoint = torch.load(GOLDEN / f"{family}.pth.tar", map_location="cpu")
    model.load_state_dict(checkpoint["model_state_dict"], strict=True)
    model.eval()
    golden = np.load(GOLDEN / f"{family}.npz")
    images, labels = torch.from_numpy(golden["images"]), torch.from_numpy(LABELS)
    with torch.no_grad():   # the reduced construction is the golden checkpoint's model
        for exit_index, logits in enumerate(model(images)):
            np.testing.assert_allclose(logits.numpy(), golden[f"logits_exit{exit_index}"], atol=1e-5)

    recipe = RECIPES[family]
    args = types.SimpleNamespace(
        opt="adamw", opt_eps=None, opt_betas=None, momentum=0.9, sched="cosine", decay_rate=0.1,
        lr_noise=None, lr_cycle_mul=1.0, lr_cycle_limit=1, seed=42, **recipe, **SCHEDULE)
    optimizer = code.create_optimizer(args, model)
    scheduler, num_epochs = code.create_scheduler(args, optimizer)
    names = {id(param): name for name, param in model.named_parameters()}
    decayed = sorted(names[id(p)] for group in optimizer.param_groups if group["weight_decay"] for p in group["params"])
    trained = {name: param for name, param in model.named_parameters() if param.requires_grad}
    before = {name: param.detach().clone() for name, param in trained.items()}
    rates, losses = [], []
    for epoch in range(num_epochs):   # one step per epoch, the schedule stepped as main.py does
        rates.append(optimizer.param_groups[0]["lr"])
        exit_losses = [nn.functional.cross_entropy(logits, labels) for logits in model(images)]
        optimizer.zero_grad()
        sum(exit_losses).backward()
        optimizer.step()
        scheduler.step(epoch + 1)
        losses.append([loss.item() for loss in exit_losses])
    group = optimizer.param_groups[0]
    record = {
        "labels": LABELS, "learning_rates": np.array(rates), "exit_losses": np.array(losses),
        "betas": np.array(group["betas"]), "eps": np.array(group["eps"]),
        "decayed": np.array(decayed), "trained": np.array(sorted(trained)),
        **{key: np.array(value) for key, value in {**recipe, **SCHEDULE}.items()},
        **{f"delta/{name}": (param.detach() - before[name]).numpy().astype(np.float32)
           for name, param in trained.items()},
    }
    np.savez_compressed(GOLDEN / f"{family}_trajectory.npz", **record)
    print(f"{family}: {len(trained)} trained tensors ({len(decayed)} decayed), lr {rates}, "
          f"summed loss {sum(losses[0]):.4f} -> {sum(losses[-1]):.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors_repo", required=True,
                        help="checkout of github.com/blackfeather-wang/Dynamic-Vision-Transformer")
    args = parser.parse_args()
    torch.set_num_threads(1)
    code = import_authors_code(args.authors_repo)
    for family in ("deit", "t2t"):
        trajectory(code, family)


if __name__ == "__main__":
    main()

"""Where pretrained weights live: one :class:`PretrainedCfg` per ``arch.tag``, with provenance, licence and
citation, and the code that turns a tag, a local path or a hub repo id into a local weights file.

Sources are tried in order: the Hugging Face Hub (third-party converted repos of the ``torch-pointcloud``
organisation; their key layout is converted on load), then the official direct URL (GitHub releases),
downloaded once into ``$POINTGST_CACHE`` (default ``~/.cache/pointgst``). Weights published only on Google
Drive cannot be fetched automatically: the error says where to get the file and how to convert it.
Offline (``HF_HUB_OFFLINE=1`` or ``POINTGST_OFFLINE=1``) only the hub cache and the pointgst cache are used.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from pointgst.errors import WeightsNotAvailableError

from .checkpoint import WEIGHTS_FILE

POINT_MAE_RELEASE = "https://github.com/Pang-Yatian/Point-MAE/releases/download/main/"
POINTGPT_README = "https://github.com/CGuangyan-BIT/PointGPT#pretrained-models"

CITATIONS = {
    "point_mae": "Pang et al., Masked Autoencoders for Point Cloud Self-supervised Learning, ECCV 2022",
    "act": "Dong et al., Autoencoders as Cross-Modal Teachers: Can Pretrained 2D Image Transformers Help 3D "
           "Representation Learning?, ICLR 2023",
    "recon": "Qi et al., Contrast with Reconstruct: Contrastive 3D Representation Learning Guided by "
             "Generative Pretraining, ICML 2023",
    "pointgpt": "Chen et al., PointGPT: Auto-regressively Generative Pre-training from Point Clouds, NeurIPS 2023",
}


@dataclass(frozen=True)
class PretrainedCfg:
    """Provenance of one set of pretrained weights.

    ``num_classes`` is the head size of a fine-tuned checkpoint (None for pretraining checkpoints, whose
    head is missing). ``manual_url`` is where a user downloads weights that cannot be fetched automatically.
    """

    tag: str
    architecture: str
    description: str
    license: str
    citation: str
    hf_hub_id: str | None = None
    url: str | None = None
    manual_url: str | None = None
    num_classes: int | None = None
    notes: str = ""
    #: weights shipped inside the package: a folder under ``pointgst/weights`` (tried first, works offline)
    package_folder: str | None = None


def _drive(file_id: str) -> str:
    return f"https://drive.google.com/file/d/{file_id}"


def _registry() -> dict[str, PretrainedCfg]:
    cfgs = [
        PretrainedCfg("point_mae.pretrain", "point_mae", "Point-MAE pretrained on ShapeNet-55 (masked autoencoding)",
                      "MIT", CITATIONS["point_mae"], hf_hub_id="torch-pointcloud/point-mae-base.pretrain.yatian-pang",
                      url=POINT_MAE_RELEASE + "pretrain.pth"),
        PretrainedCfg("point_mae.act", "point_mae", "ACT pretrained encoder (Point-MAE architecture)", "MIT",
                      CITATIONS["act"], manual_url=_drive("1T8bzdJfzdfQtCLu3WU9yDZTgBrLXSDcE"),
                      notes="the link the PointGST README gives"),
        PretrainedCfg("point_mae.recon", "point_mae", "ReCon pretrained encoder (Point-MAE architecture)", "MIT",
                      CITATIONS["recon"], manual_url=_drive("1L-TlZUi7umBCDpZW-1F0Gf4X-9Wvf_Zo"),
                      notes="the link the PointGST README gives; its key prefix is not documented"),
    ]
    for tag, hub, file, classes in [("modelnet40", "modelnet40", "modelnet_1k.pth", 40),
                                    ("scan_objbg", "scanobjectnn-objbg", "scan_objbg.pth", 15),
                                    ("scan_objonly", "scanobjectnn-objonly", "scan_objonly.pth", 15),
                                    ("scan_hardest", "scanobjectnn-hardest", "scan_hardest.pth", 15)]:
        cfgs.append(PretrainedCfg(
            f"point_mae.{tag}", "point_mae", f"Point-MAE fully fine-tuned on {hub} (official release)", "MIT",
            CITATIONS["point_mae"], hf_hub_id=f"torch-pointcloud/point-mae-base.{hub}.yatian-pang",
            url=POINT_MAE_RELEASE + file, num_classes=classes))
    for size in "sbl":
        arch = f"pointgpt_{size}"
        data = "ShapeNet-55" if size == "s" else "UnlabeledHybrid"
        cfgs.append(PretrainedCfg(
            f"{arch}.pretrain", arch, f"PointGPT-{size.upper()} pretrained on {data}", "MIT", CITATIONS["pointgpt"],
            hf_hub_id=f"torch-pointcloud/pointgpt-{size}.pretrain.guangyan-chen", manual_url=POINTGPT_README,
            notes="the hub card of the B model says ShapeNet-55; the official B model is pretrained on "
                  "UnlabeledHybrid" if size == "b" else ""))
        for tag, hub, classes in [("modelnet40", "modelnet40", 40), ("scan_objbg", "scanobjectnn-objbg", 15),
                                  ("scan_objonly", "scanobjectnn-objonly", 15),
                                  ("scan_hardest", "scanobjectnn-hardest", 15)]:
            cfgs.append(PretrainedCfg(
                f"{arch}.{tag}", arch, f"PointGPT-{size.upper()} fully fine-tuned on {hub}", "MIT",
                CITATIONS["pointgpt"], hf_hub_id=f"torch-pointcloud/pointgpt-{size}.{hub}.guangyan-chen",
                manual_url=POINTGPT_README, num_classes=classes))
    for size, drive in [("b", None), ("l", "1Kh6f6gFR12Y86FAeBtMU9NbNpB5vZnpu")]:
        cfgs.append(PretrainedCfg(
            f"pointgpt_{size}.post_pretrain", f"pointgpt_{size}",
            f"PointGPT-{size.upper()} post-pretrained on LabeledHybrid (87 classes; head dropped on load)", "MIT",
            CITATIONS["pointgpt"], manual_url=_drive(drive) if drive else POINTGPT_README,
            notes="PointGST's PointGPT-L results start from this file, not from the UnlabeledHybrid pretrain "
                  "(PointGST issue #17)" if size == "l" else "the post-pretrain link was fixed on 2023-08-30"))
    cfgs.append(PretrainedCfg(
        "point_mae_tiny.modelnet40", "point_mae_tiny",
        "pointgst's small Point-MAE, MAE-pretrained on the ModelNet40 training split (no labels); shipped in the "
        "package, see its MODEL_CARD.md", "MIT (weights); data: ModelNet, academic research use",
        "pointgst; pretraining method: " + CITATIONS["point_mae"], package_folder="point_mae_tiny.modelnet40"))
    return {cfg.tag: cfg for cfg in cfgs}


def package_weights_folder(name: str) -> Path:
    """The folder ``pointgst/weights/NAME`` of weights shipped inside the package."""
    from importlib import resources
    return Path(str(resources.files("pointgst") / "weights" / name))


PRETRAINED_CFGS: dict[str, PretrainedCfg] = _registry()


def cache_dir() -> Path:
    """Folder of downloaded official checkpoints: ``$POINTGST_CACHE`` or ``~/.cache/pointgst``."""
    return Path(os.environ.get("POINTGST_CACHE", Path.home() / ".cache" / "pointgst")) / "checkpoints"


def is_offline() -> bool:
    from huggingface_hub import constants
    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("POINTGST_OFFLINE", "0") not in ("", "0")


def hub_snapshot(repo_id: str) -> Path:
    """Local folder of a hub repo's weights (downloaded, or from the cache when offline)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.safetensors", "*.json"],
                                      local_files_only=is_offline()))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise WeightsNotAvailableError(f"could not get hub repo {repo_id!r}: {err}") from err


def resolve_pretrained_file(cfg: PretrainedCfg) -> Path:
    """Return a local file or folder holding ``cfg``'s weights: the package's own folder (weights shipped with
    pointgst), else the hub, then the official URL."""
    failures = []
    if cfg.package_folder:
        folder = package_weights_folder(cfg.package_folder)
        if (folder / WEIGHTS_FILE).is_file():
            return folder
        raise WeightsNotAvailableError(f"{folder} holds no {WEIGHTS_FILE}, though pointgst ships {cfg.tag!r} "
                                       "there: the installation is incomplete; reinstall pointgst")
    if cfg.hf_hub_id:
        try:
            return hub_snapshot(cfg.hf_hub_id)
        except WeightsNotAvailableError as err:
            failures.append(str(err))
    if cfg.url:
        target = cache_dir() / cfg.tag / cfg.url.rsplit("/", 1)[-1]
        if target.is_file():
            return target
        if is_offline():
            failures.append(f"{target} is not in the pointgst cache and downloads are off (offline mode)")
        else:
            import torch.hub
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(cfg.url, str(target), progress=True)
                return target
            except OSError as err:
                failures.append(f"download of {cfg.url} failed: {err}")
    where = cfg.manual_url or cfg.url or cfg.hf_hub_id
    raise WeightsNotAvailableError(
        f"pretrained weights for {cfg.tag!r} are not available here"
        + (f" ({'; '.join(failures)})" if failures else " (they are not downloadable automatically)")
        + f". Download the official checkpoint from {where}, then run `pointgst convert FILE OUT_DIR` and "
        f"load it with create_backbone({cfg.architecture!r}, pretrained=OUT_DIR)"
        + (", or pass the downloaded .pth directly as pretrained=FILE" if cfg.url or cfg.manual_url else "") + ".")

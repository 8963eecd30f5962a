"""The official state-dict layouts, written out from the reference tables (docs/checkpoints.md §1, §2, §3.1,
§3.2) independently of the model code, so tests can compare keys and shapes and build official-layout
checkpoints."""


def _bn(prefix: str, n: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (n,), f"{prefix}.bias": (n,), f"{prefix}.running_mean": (n,),
            f"{prefix}.running_var": (n,), f"{prefix}.num_batches_tracked": ()}


def _conv(prefix: str, out: int, inp: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (out, inp, 1), f"{prefix}.bias": (out,)}


def _linear(prefix: str, out: int, inp: int, bias: bool = True) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (out, inp), **({f"{prefix}.bias": (out,)} if bias else {})}


def _ln(prefix: str, n: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (n,), f"{prefix}.bias": (n,)}


def encoder_small(c: int) -> dict[str, tuple[int, ...]]:
    return {**_conv("encoder.first_conv.0", 128, 3), **_bn("encoder.first_conv.1", 128),
            **_conv("encoder.first_conv.3", 256, 128), **_conv("encoder.second_conv.0", 512, 512),
            **_bn("encoder.second_conv.1", 512), **_conv("encoder.second_conv.3", c, 512)}


def encoder_large(c: int) -> dict[str, tuple[int, ...]]:
    return {**_conv("encoder.first_conv.0", 256, 3), **_bn("encoder.first_conv.1", 256),
            **_conv("encoder.first_conv.3", 512, 256), **_bn("encoder.first_conv.4", 512),
            **_conv("encoder.first_conv.6", 1024, 512), **_conv("encoder.second_conv.0", 2048, 2048),
            **_bn("encoder.second_conv.1", 2048), **_conv("encoder.second_conv.3", c, 2048)}


def head(prefix: str, inp: int, classes: int) -> dict[str, tuple[int, ...]]:
    return {**_linear(f"{prefix}.0", 256, inp), **_bn(f"{prefix}.1", 256), **_linear(f"{prefix}.4", 256, 256),
            **_bn(f"{prefix}.5", 256), **_linear(f"{prefix}.8", classes, 256)}


def mae_block(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {**_ln(f"{prefix}.norm1", c), **_ln(f"{prefix}.norm2", c), **_linear(f"{prefix}.attn.qkv", 3 * c, c, False),
            **_linear(f"{prefix}.attn.proj", c, c), **_linear(f"{prefix}.mlp.fc1", 4 * c, c),
            **_linear(f"{prefix}.mlp.fc2", c, 4 * c)}


def point_mae_finetune(classes: int = 15) -> dict[str, tuple[int, ...]]:
    """174 entries."""
    c = 384
    keys = {"cls_token": (1, 1, c), "cls_pos": (1, 1, c), **encoder_small(c), **_linear("pos_embed.0", 128, 3),
            **_linear("pos_embed.2", c, 128), **_ln("norm", c), **head("cls_head_finetune", 2 * c, classes)}
    for i in range(12):
        keys.update(mae_block(f"blocks.blocks.{i}", c))
    return keys


def point_mae_decoder() -> dict[str, tuple[int, ...]]:
    """The pretraining-only keys of the Point-MAE pretrain checkpoint (53 entries)."""
    c = 384
    keys = {"mask_token": (1, 1, c), **_linear("decoder_pos_embed.0", 128, 3), **_linear("decoder_pos_embed.2", c, 128),
            **_ln("MAE_decoder.norm", c), **_conv("increase_dim.0", 96, c)}
    for i in range(4):
        keys.update(mae_block(f"MAE_decoder.blocks.{i}", c))
    return keys


def point_mae_pretrain() -> dict[str, tuple[int, ...]]:
    """The official Point-MAE pretraining model ``Point_MAE`` (209 entries): ``MAE_encoder.`` + the backbone keys
    without cls token, cls position and head, then the decoder keys."""
    backbone = {f"MAE_encoder.{k}": v for k, v in point_mae_finetune().items()
                if not k.startswith(("cls_token", "cls_pos", "cls_head"))}
    return {**backbone, **point_mae_decoder()}


GPT_SIZES = {"pointgpt_s": (384, 12, False), "pointgpt_b": (768, 12, True), "pointgpt_l": (1024, 24, True)}


def _gpt_stack(prefix: str, c: int, depth: int) -> dict[str, tuple[int, ...]]:
    keys = {f"{prefix}.sos": (c,), **_ln(f"{prefix}.ln_f", c), **_conv(f"{prefix}.increase_dim.0", 96, c)}
    for i in range(depth):
        p = f"{prefix}.layers.{i}"
        keys.update({**_ln(f"{p}.ln_1", c), **_ln(f"{p}.ln_2", c), f"{p}.attn.in_proj_weight": (3 * c, c),
                     f"{p}.attn.in_proj_bias": (3 * c,), **_linear(f"{p}.attn.out_proj", c, c),
                     **_linear(f"{p}.mlp.0", 4 * c, c), **_linear(f"{p}.mlp.2", c, 4 * c)})
    return keys


def pointgpt_pretrain(size: str) -> dict[str, tuple[int, ...]]:
    """Un-prefixed keys of the PointGPT pretrain checkpoint (S 223, B 230, L 374)."""
    c, depth, large = GPT_SIZES[size]
    return {"sos_pos": (1, 1, c), **(encoder_large(c) if large else encoder_small(c)),
            **_gpt_stack("blocks", c, depth), **_gpt_stack("generator_blocks", c, 4), **_ln("norm", c)}


def pointgpt_finetune(size: str, classes: int = 15) -> dict[str, tuple[int, ...]]:
    """S 243, B 250, L 394 entries."""
    c = GPT_SIZES[size][0]
    return {**pointgpt_pretrain(size), "cls_token": (1, 1, c), "cls_pos": (1, 1, c),
            **head("blocks.cls_head_finetune", 2 * c, classes), **_ln("blocks.cls_norm", c)}


def point_mae_segmentation(parts: int = 50, categories: int = 16) -> dict[str, tuple[int, ...]]:
    """The official Point-MAE segmentation model ``get_model`` (192 entries with 50 parts): the fine-tuning backbone
    keys without cls token, cls position and head, then the category embedding, the feature propagation and the
    per-point head (docs/segmentation.md §1)."""
    c, fetched = 384, 3 * 384
    backbone = {k: v for k, v in point_mae_finetune().items() if not k.startswith(("cls_token", "cls_pos", "cls_head"))}
    return {**backbone, "label_conv.0.weight": (64, categories, 1), **_bn("label_conv.1", 64),
            **_conv("propagation_0.mlp_convs.0", 4 * c, fetched + 3), **_bn("propagation_0.mlp_bns.0", 4 * c),
            **_conv("propagation_0.mlp_convs.1", 1024, 4 * c), **_bn("propagation_0.mlp_bns.1", 1024),
            **_conv("convs1", 512, 1024 + 2 * fetched + 64), **_conv("convs2", 256, 512),
            **_conv("convs3", parts, 256), **_bn("bns1", 512), **_bn("bns2", 256)}

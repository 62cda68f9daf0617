"""Segmentation Transformer head: OCR (Yuan, Chen, Chen & Wang, "Segmentation Transformer: Object-Contextual
Representations for Semantic Segmentation", arXiv 1909.11065, the section "Segmentation Transformer: Rephrasing the
OCR method") written as a Transformer encoder-decoder, on every backbone.

OCR's three steps (heads/ocr.py, paper Eqs. 3-6) become two cross-attentions:

    decoder cross-attention   K learnable category queries (one per class) attend over the HW pixel positions:
                              keys from the pixel features u, values the pixel representations x. The attention
                              weights (a softmax over pixels per query) are the soft object regions, the outputs the
                              K object region representations (OCR steps 1-2: object region learning, Eq. 3).
    encoder cross-attention   the pixel representations are the queries, the decoder outputs the keys and values:
                              the pixel-region relation (Eq. 4) and the object-contextual representation (Eq. 5).
    fuse + classifier         z = g([context, x]) (Eq. 6) and the 1x1 classifier, as OCR.

In the original OCR the Transformer's self-attention layers (encoder: over pixels; decoder: over the category
queries) are omitted, and so are FFNs, norms and residuals. ``SegTransformerHead`` has them as options.

Mapping of a trained OCR head onto the OCR-equivalent setting (``segtr_from_ocr``, ``OCR_SETTING``: one head, no
self-attention, no FFN, no norm, no residual, no value/output projection, decoder scale 1; decoder key width C):

    OCRHead (heads/ocr.py)                         SegTransformerHead                 role in the transformer
    conv3x3_ocr                                    pixel_conv                         pixel representations x
    aux_head[0:3] (1x1 conv + bias, BN, ReLU)      decoder.key_proj                   decoder keys k_i = phi_a(u_i)
    aux_head[3].weight (K, C, 1, 1)                decoder.queries (K, C)             category queries q_k
    aux_head[3].bias (K,)                          decoder.query_bias (K,)            "aux" only: m_ki = q_k.k_i + b_k
    SpatialGather: softmax_i(m_ki), sum_i . x_i    decoder attention, scale 1         A_ki = softmax_i(q_k.k_i): Eq. 3
    (values are x itself)                          no value projection (identity)     f_k = sum_i A_ki x_i
    object_context_block.f_pixel (phi)             encoder.f_pixel                    encoder query projection
    object_context_block.f_object (psi)            encoder.f_object                   encoder key projection
    object_context_block.f_down (delta)            encoder.f_down                     encoder value projection
    object_context_block.f_up (rho)                encoder.f_up                       encoder output projection
    sim * C_key**-0.5, softmax over regions        1 head: scale (C_key / 1)**-0.5    standard attention scaling (Eq. 4)
    ocr_distri_head.conv_bn_dropout (g)            fuse                               Eq. 6, concat [context, x]
    cls_head                                       cls_head                           classifier

The bias b_k of aux_head's last conv shifts query k's logits over all pixels by one constant, so it cancels in the
softmax over pixels; it only matters for the "aux" logits (softmax over classes per pixel in the loss), which the
head returns as the decoder's attention logits plus b_k. The mapped head has exactly OCR's parameters and computes
OCR's "out" and "aux" (tests/test_segtr.py::test_mapped_head_computes_ocr, eval mode, to 1e-5).

What could be confirmed here (the paper's own section text was not available to read; searched pages only):
- the arXiv listing (v6) of the paper, whose abstract ends "We rephrase the object-contextual representation scheme
  using the Transformer encoder-decoder framework";
- a summary of the paper (study.space): "the decoder's cross-attention module integrates object region learning and
  representation computation, and the encoder's cross-attention module processes the decoder's output to compute
  object contextual representations";
- the first author's post "透过 Transformer 重新看 OCRNet" (cvmart, by RainBowSecret, saying its content is in the
  latest arXiv version): the Transformer's inputs are the image (pixel) representations, fed to the encoder, and
  category queries, fed to the decoder; in the original OCRNet the self-attention over the pixel representations and
  over the region representations is omitted (citing MaskFormer: self-attention matters little there);
- no implementation of the transformer form was found: mmsegmentation issue #2389 asked for one, the maintainers
  asked for a reference; the official code (HRNet-OCR, openseg.pytorch) has only the OCR form.
What could not be confirmed: the section's equations (the post's formula for the decoder inputs was cut off), i.e.
which feature map forms the decoder's keys (here: u through aux_head's hidden layer, as OCR computes its regions from
u) and whether the values are x or a projection of it; whether the paper's figure has FFNs, norms, residuals,
positional encodings or several heads; the order of self- and cross-attention in the decoder. The general options
below are therefore this project's choices, built from the standard Transformer layer (Vaswani et al. 2017), not
the paper's.

General setting, per stream (residual ``t <- norm(t + drop(f(t)))``; without ``residual``, ``t <- norm(f(t))``):
    pixels   x = pixel_conv(u) -> [self-attention over the HW pixels] (encoder_self_attention, O(HW^2))
    queries  t = queries (K, M) -> [self-attention among the K queries] (decoder_self_attention) -> cross-attention
             over the pixels -> [FFN]
    pixels   cross-attention to the K decoder outputs -> [FFN] -> fuse g([context, x]) -> classifier
No positional encodings (OCR has none; the 3x3 conv and the backbone carry position).

Note on ``decoder_self_attention`` (default "after"): with "before" (True, DETR's order self -> cross -> FFN) and one
decoder layer the queries are parameters, so self-attention before the cross-attention sees no image: it is the same
for every input (a reparametrisation of the queries, as in DETR's first decoder layer). "after" (Mask2Former's order
cross -> self -> FFN) lets the K region representations attend to each other, input-dependent.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ContextSegError
from ...registry import HEADS
from ..attention import upcast
from .common import DecodeHead, conv_bn_relu
from .ocr import OCRHead, bn_relu

# The OCR-equivalent setting (with decoder_key_channels = the adapter width C, as OCR's aux head).
OCR_SETTING = dict(num_heads=1, decoder_self_attention=False, encoder_self_attention=False, ffn=False, norm=None,
                   residual=False, value_proj=False, decoder_scale=1.0)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of every position (the Transformer's per-token norm): (B, C, H, W) -> same.
    Parameters 2C."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def channel_norm(kind: str | None, channels: int) -> nn.Module:
    """"layer" (LayerNorm2d), "batch" (BatchNorm2d) or None (identity) on (B, C, H, W); 2C parameters or 0."""
    if kind == "layer":
        return LayerNorm2d(channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


def ffn(channels: int, hidden: int, dropout: float) -> nn.Sequential:
    """Position-wise FFN as 1x1 convs: (B, M, H, W) -> (B, M, H, W). Parameters 2*M*F + F + M."""
    return nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Conv2d(hidden, channels, 1))


def tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, HW, C)."""
    return x.flatten(2).transpose(1, 2)


def _self_attend(attn: nn.MultiheadAttention, x: Tensor) -> Tensor:
    """Multi-head self-attention over the positions of (B, C, H, W) (the K queries as a (K, 1) map): -> same."""
    b, c, h, w = x.shape
    t = tokens(x)  # (B, HW, C)
    y = attn(t, t, t, need_weights=False)[0]  # (B, HW, C)
    return y.transpose(1, 2).reshape(b, c, h, w)


def add_sublayers(module: nn.Module, m: int, num_heads: int, dropout: float, norm, self_attention: bool,
                  ffn_channels: int | None) -> None:
    """The optional sublayers of a decoder or encoder stream: self-attention (+ its norm), the cross-attention's
    norm, an FFN (+ its norm)."""
    if self_attention:
        module.self_attn = nn.MultiheadAttention(m, num_heads, dropout=dropout, batch_first=True)
        module.norm_sa = channel_norm(norm, m)
    module.norm_ca = channel_norm(norm, m)
    if ffn_channels is not None:
        module.ffn = ffn(m, ffn_channels, dropout)
        module.norm_ffn = channel_norm(norm, m)


class SegTrDecoder(nn.Module):
    """The decoder: K category queries -> K object region representations (OCR steps 1-2).

    u (B, C, H, W) pixel features, x (B, M, H, W) pixel representations
        -> regions (B, M, K, 1) (K "pixels" of a 1-wide map, as OCR's SpatialGather), logits (B, K, H, W)

        key      = key_proj(u)                                 (B, Dk, H, W)    1x1 conv + bias, BN, ReLU
        query    = q_proj(t) (query tokens)  or  queries        (B, K, Dk)       t (B, M, K, 1) the query stream
        logits_h = scale * query_h . key_h                      (B, h, K, HW)    per head, Dk / h channels each
        A_h      = softmax over the HW pixels of logits_h       (B, h, K, HW)    soft object regions (Eq. 3)
        r        = out_proj(concat_h A_h @ value_h)             (B, K, M)        value = v_proj(x) or x (M / h each)
        aux      = mean_h logits_h + query_bias                 (B, K, H, W)

    The queries are tokens of width M (with ``q_proj``: M -> Dk) when the query stream has layers of its own before
    or around the cross-attention (self-attention before it, or the residual); otherwise they are stored directly as
    (K, Dk) keys-space vectors (a projection of free parameters would be a free (K, Dk) matrix again).
    """

    def __init__(self, in_channels: int, channels: int, key_channels: int, num_classes: int, num_heads: int,
                 self_attention: str | None, ffn_channels: int | None, norm: str | None, residual: bool,
                 value_proj: bool, scale: float, dropout: float):
        super().__init__()
        c, m, dk, k = in_channels, channels, key_channels, num_classes
        self.num_heads, self.scale, self.residual = num_heads, scale, residual
        self.self_attention = self_attention
        self.query_tokens = residual or self_attention == "before"
        dq = m if self.query_tokens else dk
        bound = dq**-0.5  # PyTorch's default init of a 1x1 conv / linear with fan_in dq (aux_head's last conv)
        self.queries = nn.Parameter(torch.empty(k, dq).uniform_(-bound, bound))  # (K, Dq)
        self.query_bias = nn.Parameter(torch.empty(k).uniform_(-bound, bound))  # (K,)
        self.key_proj = conv_bn_relu(c, dk, kernel_size=1, bias=True)  # OCR: aux_head[0:3]
        self.q_proj = nn.Linear(m, dk) if self.query_tokens else None
        self.v_proj = nn.Linear(m, m) if value_proj else None
        self.out_proj = nn.Linear(m, m) if value_proj else None
        self.attn_drop = nn.Dropout(dropout)
        self.drop = nn.Dropout(dropout)
        add_sublayers(self, m, num_heads, dropout, norm, self_attention is not None, ffn_channels)

    def _sublayer(self, t: Tensor | None, y: Tensor, norm: nn.Module) -> Tensor:
        return norm(t + self.drop(y)) if self.residual and t is not None else norm(y)

    def forward(self, u: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        b, m, h, w = x.shape
        nh = self.num_heads
        key = self.key_proj(u).flatten(2)  # (B, Dk, HW)
        dk = key.shape[1]
        n_q = self.queries.shape[0]
        t = None
        if self.query_tokens:
            t = self.queries.t()[None, :, :, None].expand(b, -1, -1, -1)  # (B, M, K, 1)
            if self.self_attention == "before":
                t = self._sublayer(t, _self_attend(self.self_attn, t), self.norm_sa)
            query = self.q_proj(tokens(t))  # (B, K, Dk)
        else:
            query = self.queries.expand(b, -1, -1)  # (B, K, Dk)
        q = query.reshape(b, n_q, nh, dk // nh).transpose(1, 2)  # (B, h, K, Dk/h)
        k = key.reshape(b, nh, dk // nh, h * w)  # (B, h, Dk/h, HW)
        logits = torch.matmul(q, k) * self.scale  # (B, h, K, HW)
        aux = logits.mean(1) + self.query_bias[:, None]  # (B, K, HW)
        attn = F.softmax(upcast(logits), dim=-1).to(x.dtype)  # softmax over the pixels: soft object regions
        value = tokens(x)  # (B, HW, M)
        if self.v_proj is not None:
            value = self.v_proj(value)
        v = value.reshape(b, h * w, nh, m // nh).transpose(1, 2)  # (B, h, HW, M/h)
        r = torch.matmul(self.attn_drop(attn), v).transpose(1, 2).reshape(b, n_q, m)  # (B, K, M)
        if self.out_proj is not None:
            r = self.out_proj(r)
        r = r.transpose(1, 2).unsqueeze(3)  # (B, M, K, 1)
        t = self._sublayer(t, r, self.norm_ca)
        if self.self_attention == "after":
            t = self._sublayer(t, _self_attend(self.self_attn, t), self.norm_sa)
        if hasattr(self, "ffn"):
            t = self._sublayer(t, self.ffn(t), self.norm_ffn)
        return t, aux.reshape(b, n_q, h, w)


class SegTrEncoder(nn.Module):
    """The encoder: pixel representations attend to the K region representations (OCR step 3).

    ``self_attend``: x (B, M, H, W) -> same, self-attention over the HW pixels (identity when off).
    ``forward``: x (B, M, H, W), regions (B, M, K, 1) -> context (B, M, H, W)

        query = f_pixel(x)      (B, Ck, H, W)   two 1x1 conv-BN-ReLU (OCR's phi)
        key   = f_object(f)     (B, Ck, K, 1)   two 1x1 conv-BN-ReLU (psi)
        value = f_down(f)       (B, Ck, K, 1)   one 1x1 conv-BN-ReLU (delta)
        y     = f_up(concat_h softmax_k(query_h . key_h / sqrt(Ck / h)) value_h)   (B, M, H, W)  (rho; Eqs. 4-5)

    The projections have the layout of OCR's ``ObjectAttentionBlock`` (same names, same state_dict keys).
    """

    def __init__(self, channels: int, key_channels: int, num_heads: int, self_attention: bool,
                 ffn_channels: int | None, norm: str | None, residual: bool, dropout: float):
        super().__init__()
        m, ck = channels, key_channels
        self.num_heads, self.key_channels, self.residual, self.dropout = num_heads, ck, residual, dropout
        self.f_pixel = nn.Sequential(
            nn.Conv2d(m, ck, 1, bias=False), bn_relu(ck), nn.Conv2d(ck, ck, 1, bias=False), bn_relu(ck)
        )
        self.f_object = nn.Sequential(
            nn.Conv2d(m, ck, 1, bias=False), bn_relu(ck), nn.Conv2d(ck, ck, 1, bias=False), bn_relu(ck)
        )
        self.f_down = nn.Sequential(nn.Conv2d(m, ck, 1, bias=False), bn_relu(ck))
        self.f_up = nn.Sequential(nn.Conv2d(ck, m, 1, bias=False), bn_relu(m))
        self.drop = nn.Dropout(dropout)
        add_sublayers(self, m, num_heads, dropout, norm, bool(self_attention), ffn_channels)

    def _sublayer(self, t: Tensor, y: Tensor, norm: nn.Module) -> Tensor:
        return norm(t + self.drop(y)) if self.residual else norm(y)

    def self_attend(self, x: Tensor) -> Tensor:
        if not hasattr(self, "self_attn"):
            return x
        return self._sublayer(x, _self_attend(self.self_attn, x), self.norm_sa)

    def forward(self, x: Tensor, regions: Tensor) -> Tensor:
        b, _, h, w = x.shape
        nh, ck = self.num_heads, self.key_channels
        n_k = regions.shape[2]
        q = self.f_pixel(x).reshape(b, nh, ck // nh, h * w).transpose(2, 3)  # (B, h, HW, Ck/h)
        k = self.f_object(regions).reshape(b, nh, ck // nh, n_k).transpose(2, 3)  # (B, h, K, Ck/h)
        v = self.f_down(regions).reshape(b, nh, ck // nh, n_k).transpose(2, 3)  # (B, h, K, Ck/h)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           scale=(ck // nh) ** -0.5)  # (B, h, HW, Ck/h), softmax over the K regions
        y = self.f_up(y.transpose(2, 3).reshape(b, ck, h, w))  # (B, M, H, W)
        t = self._sublayer(x, y, self.norm_ca)
        if hasattr(self, "ffn"):
            t = self._sublayer(t, self.ffn(t), self.norm_ffn)
        return t


@HEADS.register("segtr")
class SegTransformerHead(DecodeHead):
    """OCR as a Transformer encoder-decoder: [(B, C_i, H_i, W_i)] -> {"out": (B, K, H, W), "aux": (B, K, H, W)}.

    H, W: the size of the map(s) the adapter picks (stride 4 on HRNet, the output stride on a dilated ResNet).

        u       = adapter(feats)                                  (B, C, H, W)
        x       = pixel_conv(u)  (3x3 conv + bias, BN, ReLU)       (B, M, H, W)   pixel representations
        x       = encoder.self_attend(x)                          (B, M, H, W)   [encoder_self_attention]
        f, aux  = decoder(u, x)                                   (B, M, K, 1), (B, K, H, W)
        context = encoder(x, f)                                   (B, M, H, W)
        z       = fuse([context, x])  (1x1 conv, BN, ReLU, Dropout2d)   (B, M, H, W)
        out     = cls_head(z)                                     (B, K, H, W)

    "aux" are the decoder's attention logits (mean over heads, plus a per-query bias), supervised by the ground
    truth as OCR's soft object regions (``loss.weights`` {out: 1, aux: 0.4}).

    Args:
        mid_channels: M, the model width (pixel representations, region representations). 512 as OCR.
        key_channels: Ck, the encoder's query/key/value width. 256 as OCR.
        num_heads: h; M, Ck and Dk must be divisible by it.
        decoder_self_attention: "after" (default: cross, self, FFN, as Mask2Former: the K region representations
            attend to each other), True / "before" (DETR's order self, cross, FFN: with one layer an input-independent
            reparametrisation of the queries) or False; over the K queries.
        encoder_self_attention: self-attention over the HW pixels (memory and time O((HW)^2)); off by default.
        ffn: a position-wise FFN (width ``ffn_channels``, default M) after each cross-attention.
        norm: "layer", "batch" or None, after every sublayer (post-norm).
        dropout: Dropout2d of the fuse layer (0.05, as OCR).
        in_index: the adapter's maps (None: all, the HRNetV2 concatenation).
        residual: residual connections around every sublayer.
        value_proj: the decoder's value and output projections (M -> M each); without, the values are x.
        decoder_key_channels: Dk, the decoder's key width (default Ck; C reproduces OCR's aux head).
        decoder_scale: the decoder's logit scale (default (Dk / h)**-0.5; 1 as OCR's SpatialGather).
        attn_dropout: dropout on the attention weights and the residual branches (0).

    Parameters, with C the adapter width, Dq = M with query tokens (``residual`` or self-attention "before") else
    Dk, F = ffn_channels, n = 2M per norm (0 without), counting the optional parts only when on:
        pixel_conv 9CM + 3M;  decoder: K*Dq + K + C*Dk + 3Dk + [M*Dk + Dk] + [2(M^2 + M)] (value_proj)
        + [4M^2 + 4M + n] (self-attention) + n + [2MF + F + M + n] (FFN);
        encoder: 2(M*Ck + Ck^2 + 4Ck) + M*Ck + 2Ck + Ck*M + 2M + [4M^2 + 4M + n] + n + [2MF + F + M + n];
        fuse 2M^2 + 2M;  cls_head MK + K.
    In the OCR-equivalent setting (``OCR_SETTING``, Dk = C) this is exactly OCRHead's count.
    """

    feat_module = "cls_head"  # its input is the penultimate representation (Segmentor(..., return_feat=True))

    def __init__(self, in_channels: Sequence[int], num_classes: int, mid_channels: int = 512, key_channels: int = 256,
                 num_heads: int = 8, decoder_self_attention: bool | str = "after", encoder_self_attention: bool = False,
                 ffn: bool = True, norm: str | None = "layer", dropout: float = 0.05,
                 in_index: int | Sequence[int] | None = None, residual: bool = True, value_proj: bool = True,
                 decoder_key_channels: int | None = None, decoder_scale: float | None = None,
                 ffn_channels: int | None = None, attn_dropout: float = 0.0):
        super().__init__(in_channels, num_classes, in_index)  # None: all maps (HRNetV2)
        c, m, ck = self.inputs.out_channels, mid_channels, key_channels
        dk = key_channels if decoder_key_channels is None else decoder_key_channels
        name = type(self).__name__
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ContextSegError(f"{name}: num_heads must be an integer >= 1, got {num_heads!r}")
        for label, width in (("mid_channels", m), ("key_channels", ck), ("decoder_key_channels", dk)):
            if isinstance(width, bool) or not isinstance(width, int) or width < 1 or width % num_heads:
                raise ContextSegError(
                    f"{name}: {label}={width!r} is not divisible by num_heads={num_heads}; each head takes "
                    f"{label} / num_heads channels, so choose widths that num_heads divides"
                )
        if norm not in ("layer", "batch", None):
            raise ContextSegError(f"{name}: norm must be 'layer', 'batch' or None, got {norm!r}")
        order = {True: "before", False: None, "before": "before", "after": "after", None: None}
        if decoder_self_attention not in order:
            raise ContextSegError(f"{name}: decoder_self_attention must be true, false, 'before' or 'after', got "
                                  f"{decoder_self_attention!r}")
        hidden = (ffn_channels or m) if ffn else None
        self.settings = dict(mid_channels=m, key_channels=ck, num_heads=num_heads,
                             decoder_self_attention=order[decoder_self_attention],
                             encoder_self_attention=bool(encoder_self_attention), ffn=hidden, norm=norm,
                             residual=residual, value_proj=value_proj, decoder_key_channels=dk)
        self.pixel_conv = conv_bn_relu(c, m, kernel_size=3, bias=True)
        self.decoder = SegTrDecoder(c, m, dk, num_classes, num_heads, order[decoder_self_attention], hidden, norm,
                                    residual, value_proj,
                                    (dk // num_heads) ** -0.5 if decoder_scale is None else decoder_scale,
                                    attn_dropout)
        self.encoder = SegTrEncoder(m, ck, num_heads, encoder_self_attention, hidden, norm, residual, attn_dropout)
        self.fuse = nn.Sequential(nn.Conv2d(2 * m, m, 1, bias=False), bn_relu(m), nn.Dropout2d(dropout))
        self.cls_head = nn.Conv2d(m, num_classes, kernel_size=1)

    def forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        u = self.inputs(feats)  # (B, C, H, W)
        x = self.encoder.self_attend(self.pixel_conv(u))  # (B, M, H, W)
        regions, aux = self.decoder(u, x)  # (B, M, K, 1), (B, K, H, W)
        context = self.encoder(x, regions)  # (B, M, H, W)
        return {"out": self.cls_head(self.fuse(torch.cat([context, x], dim=1))), "aux": aux}

    @classmethod
    def from_ocr(cls, ocr: OCRHead) -> SegTransformerHead:
        """The OCR-equivalent transformer head with ``ocr``'s weights mapped (module docstring's table): computes
        ``ocr``'s "out" and "aux". Same device, dtype, train/eval mode and align_corners as ``ocr``."""
        if not isinstance(ocr, OCRHead):
            raise ContextSegError(f"segtr_from_ocr needs an OCRHead, got {type(ocr).__name__}")
        block = ocr.ocr_distri_head.object_context_block
        adapter = ocr.inputs
        c = adapter.out_channels
        head = cls(ocr.in_channels, ocr.num_classes, mid_channels=ocr.conv3x3_ocr[0].out_channels,
                   key_channels=block.key_channels, dropout=ocr.ocr_distri_head.conv_bn_dropout[2].p,
                   in_index=list(adapter.in_index) if adapter.concat else adapter.in_index[0],
                   decoder_key_channels=c, **OCR_SETTING)
        head.inputs.align_corners = adapter.align_corners
        ref = next(ocr.parameters())
        head.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            head.pixel_conv.load_state_dict(ocr.conv3x3_ocr.state_dict())
            aux = ocr.aux_head.state_dict()
            head.decoder.key_proj.load_state_dict({k: v for k, v in aux.items() if k.split(".")[0] in ("0", "1")})
            head.decoder.queries.copy_(ocr.aux_head[3].weight[:, :, 0, 0])
            head.decoder.query_bias.copy_(ocr.aux_head[3].bias)
            for part in ("f_pixel", "f_object", "f_down", "f_up"):
                getattr(head.encoder, part).load_state_dict(getattr(block, part).state_dict())
            head.fuse.load_state_dict(ocr.ocr_distri_head.conv_bn_dropout.state_dict())
            head.cls_head.load_state_dict(ocr.cls_head.state_dict())
        return head.train(ocr.training)


def segtr_from_ocr(ocr: OCRHead) -> SegTransformerHead:
    """``SegTransformerHead.from_ocr``: an OCR head rewritten as the OCR-equivalent Segmentation Transformer."""
    return SegTransformerHead.from_ocr(ocr)

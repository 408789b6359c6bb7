"""The extractive-QA loss, with padding positions kept out of the softmax over answer positions.

For a feature with start/end logits s, e ∈ R^T, real tokens R ⊆ {0..T-1} (attention_mask = 1) and gold token
positions (i, j) ∈ R:

    L = ½ · ( −log softmax_R(s)_i  −  log softmax_R(e)_j ),   softmax_R(x)_t = exp(x_t) / Σ_{u ∈ R} exp(x_u)

and a batch's loss is the mean of L over its features. This is the loss of BERT's SQuAD fine-tuning (Devlin et al.
2019, §4.2: the start/end distributions are softmaxes over the paragraph's positions) with the softmax restricted to
real tokens. transformers' `*ForQuestionAnswering` heads compute the same cross-entropy over *all* T positions,
padding included; padding positions then take probability mass, so the loss (and its gradient) depends on how much
padding a batch carries. Measured with the freshly initialised embedded MiniLM on the default generated data, 25
micro-batches of 8 of its shortest features (96 tokens wide): padded to 128 or to their own width, HF's loss differed
by up to 0.92, this one by at most 1.2e-7 (relative). Question and special tokens stay in the softmax, as in HF's loss
and run_qa: only padding changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def span_loss(
    start_logits: Tensor, end_logits: Tensor, attention_mask: Tensor, start_positions: Tensor, end_positions: Tensor
) -> Tensor:
    """Mean over the batch of ½ (CE_start + CE_end), each a cross-entropy over the real tokens only.

    Args:
        start_logits, end_logits: [batch, seq], any float dtype (computed in fp32, also under autocast).
        attention_mask: [batch, seq], 0 marks padding.
        start_positions, end_positions: [batch] int64 token indices of the gold span; each must be a real token
            (features put unanswerable and cut answers on [CLS], index 0).
    Returns:
        a 0-d fp32 tensor.
    """
    padding = attention_mask == 0
    # exp(finfo.min − max) is exactly 0 in fp32: padding gets no probability and no gradient
    low = torch.finfo(torch.float32).min
    start = start_logits.float().masked_fill(padding, low)
    end = end_logits.float().masked_fill(padding, low)
    return (F.cross_entropy(start, start_positions) + F.cross_entropy(end, end_positions)) / 2

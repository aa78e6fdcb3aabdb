"""One DEADiff branch's Q-Former: 16 learned queries read the image while attending to one word.

transformers' InstructBlipQFormerModel is BLIP-2's Q-Former with the text path DEADiff needs:
[queries; text] share the self-attention, only query positions cross-attend to the image, query and
text positions have separate feed-forwards, and the text gets position embeddings while the queries
do not (one LayerNorm over the whole sequence). Blip2QFormerModel without `use_qformer_text_input`
would silently drop the text feed-forward, so it is not used.

A reference mask weighs the image tokens in the cross-attention: token j's softmax weight is
proportional to w_j * exp(logit_j), that is log(w_j) added to its logit (w_j = 0: not read).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import InstructBlipQFormerConfig, InstructBlipQFormerModel

from .config import DEADiffConfig

# bert-base-uncased: [CLS] word [SEP]
TEXT_IDS = {"style": [101, 2806, 102], "content": [101, 4180, 102]}


class QFormer(nn.Module):
    def __init__(self, c: DEADiffConfig, branch: str):
        super().__init__()
        config = InstructBlipQFormerConfig(
            vocab_size=c.vocab_size,
            hidden_size=c.qformer_hidden,
            num_hidden_layers=c.qformer_layers,
            num_attention_heads=c.qformer_heads,
            intermediate_size=c.qformer_intermediate,
            hidden_act="gelu",
            layer_norm_eps=1e-12,
            max_position_embeddings=c.max_positions,
            cross_attention_frequency=1,
            encoder_hidden_size=c.encoder_hidden,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        config._attn_implementation = "eager"
        self.bert = InstructBlipQFormerModel(config)
        self.query_tokens = nn.Parameter(torch.zeros(1, c.num_query_tokens, c.qformer_hidden))
        self.register_buffer("text_ids", torch.tensor([TEXT_IDS[branch]]), persistent=False)

    def forward(self, image_tokens: torch.Tensor, token_weights: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, width) image tokens [, (B, N) weights in 0..1] -> (B, num_query_tokens, hidden)."""
        batch = image_tokens.shape[0]
        queries = self.query_tokens.expand(batch, -1, -1)
        ids = self.text_ids.expand(batch, -1)
        if token_weights is None:
            out = self.bert(input_ids=ids, query_embeds=queries, encoder_hidden_states=image_tokens).last_hidden_state
        else:
            out = self._weighted(ids, queries, image_tokens, token_weights)
        return out[:, : queries.shape[1]]

    def _weighted(self, ids, queries, image_tokens, token_weights):
        """The model's forward with log(weights) added to every cross-attention logit.

        InstructBlipQFormerModel.forward turns its `encoder_attention_mask` into 0 / -inf biases itself in
        transformers 4.x (only 5.x passes a ready 4-D float bias through), so its two steps are called
        here: the embeddings, then the encoder with the bias as the (already additive, broadcast over
        heads and queries) `encoder_attention_mask`, the form both versions hand to the attention."""
        dtype = image_tokens.dtype
        weights = token_weights.to(device=image_tokens.device, dtype=torch.float32)
        bias = torch.where(weights > 0, weights.clamp_min(1e-30).log(), torch.finfo(torch.float32).min)
        bias = bias.clamp_min(torch.finfo(dtype).min).to(dtype)[:, None, None, :]
        hidden = self.bert.embeddings(input_ids=ids, query_embeds=queries)
        return self.bert.encoder(
            hidden, encoder_hidden_states=image_tokens, encoder_attention_mask=bias, query_length=queries.shape[1]
        ).last_hidden_state

    def load_official(self, tensors: dict, prefix: str, assign: bool = True) -> None:
        """Load `{prefix}query_tokens` and `{prefix}Qformer.bert.*` (LAVIS / BERT names)."""
        bert = prefix + "Qformer.bert."
        hf = {}
        for key, value in tensors.items():
            if not key.startswith(bert):
                continue
            name = key[len(bert) :]
            name = name.replace("embeddings.LayerNorm.", "embeddings.layernorm.")
            name = name.replace("attention.self.", "attention.attention.")
            hf[name] = value
        self.bert.load_state_dict(hf, strict=True, assign=assign)
        self.query_tokens = nn.Parameter(tensors[prefix + "query_tokens"], requires_grad=False)

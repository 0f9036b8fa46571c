#!/usr/bin/env python3
"""Writes tests/unit/forward_ref.h: expected values for test_forward_ops.c,
computed with torch and the transformers DeepseekV4 modules (independent of
the C code under test).

Run: /tmp/venv/bin/python tests/unit/gen_forward_ref.py
"""
import os

import torch
import torch.nn.functional as F
from transformers.models.deepseek_v4 import modeling_deepseek_v4 as mdl
from transformers.models.deepseek_v4.configuration_deepseek_v4 import DeepseekV4Config

torch.manual_seed(1234)
out = []


def arr(name, t, ctype="float"):
    t = t.detach().reshape(-1)
    if ctype == "float":
        vals = ", ".join(f"{float(v):.9e}f" for v in t.tolist())
    else:
        vals = ", ".join(str(int(v)) for v in t.tolist())
    out.append(f"static const {ctype} {name}[{t.numel()}] = {{{vals}}};")


def scalar(name, v):
    out.append(f"#define {name} {v}")


HC, D = 4, 8
cfg = DeepseekV4Config(
    hidden_size=D, num_hidden_layers=1, num_attention_heads=2, head_dim=16, q_lora_rank=8,
    qk_rope_head_dim=8, hc_mult=HC, hc_sinkhorn_iters=20, hc_eps=1e-6, rms_norm_eps=1e-6,
    n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=8, vocab_size=16,
    routed_scaling_factor=1.5, o_groups=2, o_lora_rank=4, index_n_heads=2, index_head_dim=8,
    compress_ratios=[4], rope_theta=10000.0, compress_rope_theta=160000.0,
    rope_parameters={"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 65536,
                     "beta_fast": 32, "beta_slow": 1},
    max_position_embeddings=1048576,
)
scalar("REF_HC", HC)
scalar("REF_D", D)

# RMSNorm with weight.
x = torch.randn(64)
w = torch.rand(64) + 0.5
norm = mdl.DeepseekV4RMSNorm(64, eps=1e-6)
norm.weight.data = w
arr("ref_rms_x", x)
arr("ref_rms_w", w)
arr("ref_rms_y", norm(x))

# Hyper-connection pre/post and head.
hcm = mdl.DeepseekV4HyperConnection(cfg)
mix = (2 + HC) * HC
hcm.fn.data = torch.randn(mix, HC * D) * 0.3
hcm.base.data = torch.randn(mix) * 0.5
hcm.scale.data = torch.rand(3) + 0.5
X = torch.randn(1, 1, HC, D)
post, comb, collapsed = hcm(X)
f = torch.randn(1, 1, D)
Xn = post.unsqueeze(-1) * f.unsqueeze(-2) + torch.matmul(comb.transpose(-1, -2), X)
arr("ref_hc_fn", hcm.fn.data)
arr("ref_hc_base", hcm.base.data)
arr("ref_hc_scale", hcm.scale.data)
arr("ref_hc_x", X)
arr("ref_hc_post", post)
arr("ref_hc_comb", comb)
arr("ref_hc_y", collapsed)
arr("ref_hc_f", f)
arr("ref_hc_xpost", Xn)
head = mdl.DeepseekV4HyperHead(cfg)
head.hc_fn.data = torch.randn(HC, HC * D) * 0.3
head.hc_base.data = torch.randn(HC) * 0.5
head.hc_scale.data = torch.rand(1) + 0.5
arr("ref_head_fn", head.hc_fn.data)
arr("ref_head_base", head.hc_base.data)
arr("ref_head_scale", head.hc_scale.data)
arr("ref_head_y", head(X))

# Rope, main (plain theta 10000) and compress (yarn, theta 160000), on the
# trailing 8 dims of a 16-dim head, at a few positions; and the inverse.
rot = mdl.DeepseekV4RotaryEmbedding(cfg)
pos = torch.tensor([[0, 3, 77, 1000, 70000]])
v = torch.randn(1, 1, 5, 16)
arr("ref_rope_pos", pos, "int")
arr("ref_rope_x", v)
for kind in ("main", "compress"):
    cos, sin = rot(v, position_ids=pos, layer_type=kind)
    arr(f"ref_rope_{kind}", mdl.apply_rotary_pos_emb(v, cos, sin))
    arr(f"ref_rope_{kind}_inv",
        mdl.apply_rotary_pos_emb(v, cos, -sin))
    arr(f"ref_freqs_{kind}", getattr(rot, f"{kind}_inv_freq"))

# Router: top-k with bias and hash routing.
router = mdl.DeepseekV4TopKRouter(cfg)
router.weight.data = torch.randn(8, D)
router.e_score_correction_bias.data = torch.randn(8) * 0.3
hs = torch.randn(3, D)
logits, weights, idx = router(hs)
order = idx.sort(dim=-1)
arr("ref_route_logits", logits)
arr("ref_route_bias", router.e_score_correction_bias.data)
arr("ref_route_ids", order.values, "int")
arr("ref_route_w", weights.gather(1, order.indices))
hrouter = mdl.DeepseekV4HashRouter(cfg)
hrouter.weight.data = router.weight.data
hrouter.tid2eid.data = torch.randint(0, 8, (16, 2))
ids = torch.tensor([5, 0, 11])
_, hw, hidx = hrouter(hs, ids)
arr("ref_hash_ids", hidx, "int")
arr("ref_hash_w", hw)

# Overlapping (ratio 4) pooling of one block with its previous block, as the
# CSA compressor lays it out: previous rows' first half, own rows' second half.
d, r = 8, 4
prev_kv, prev_g = torch.randn(r, 2 * d), torch.randn(r, 2 * d)
cur_kv, cur_g = torch.randn(r, 2 * d), torch.randn(r, 2 * d)
kv8 = torch.cat([prev_kv[:, :d], cur_kv[:, d:]], 0)
g8 = torch.cat([prev_g[:, :d], cur_g[:, d:]], 0)
arr("ref_pool_prev_kv", prev_kv)
arr("ref_pool_prev_g", prev_g)
arr("ref_pool_cur_kv", cur_kv)
arr("ref_pool_cur_g", cur_g)
arr("ref_pool_overlap", (kv8 * g8.softmax(dim=0)).sum(0))
arr("ref_pool_first", (cur_kv[:, d:] * cur_g[:, d:].softmax(dim=0)).sum(0))

# One attention head with a sink: 5 window keys and 3 of 6 entries.
hd = 16
q = torch.randn(hd)
win = torch.randn(5, hd)
ent = torch.randn(6, hd)
sel = torch.tensor([4, 1, 2])
sink = torch.tensor(0.7)
keys = torch.cat([win, ent[sel]], 0)
logit = torch.cat([keys @ q * hd ** -0.5, sink.view(1)])
p = F.softmax(logit - logit.max(), dim=0)[:-1]
arr("ref_att_q", q)
arr("ref_att_win", win)
arr("ref_att_ent", ent)
arr("ref_att_sel", sel, "int")
arr("ref_att_out", p @ keys)

# Top-k order of a random vector.
tv = torch.randn(40)
arr("ref_topk_v", tv)
arr("ref_topk_idx", tv.topk(7).indices, "int")

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "forward_ref.h")
with open(path, "w") as fh:
    fh.write("/* Generated by tests/unit/gen_forward_ref.py (torch + transformers "
             "DeepseekV4); do not edit. */\n")
    fh.write("#ifndef QPLUG_FORWARD_REF_H\n#define QPLUG_FORWARD_REF_H\n")
    fh.write("\n".join(out) + "\n#endif\n")
print("wrote", path)

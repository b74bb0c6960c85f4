#!/usr/bin/env python3
"""Reference fixtures for configurations unlike the two of gen_fixtures.py (not run by CI).

Same weights, checks and file formats as gen_fixtures.py (it is imported and
driven; see tests/tools/README.md), for configurations that the sweep of
tests/test_synth_config.c runs with random weights and no reference:
  - v4_cfg_sigmoid: sigmoid router scores, two hash layers (top 3 of 4
    experts), CSA layers whose index_topk (64) is larger than the
    number of compressed entries, a one-token sliding window, four output
    groups of one head each, vocabulary not a multiple of 64.

gen_fixtures.py writes scoring_func "sqrtsoftplus" everywhere; here
hf_config / official_config / official_args are wrapped to carry the
fixture's scoring_func instead (transformers and the official code both
normalise the top-k weights for sigmoid, as for sqrtsoftplus).

The official model.py cannot run a one-token window in prefill (its window
and compressed top-k index tensors do not concatenate: "Expected size 1 but
got size 37"), so its runs are skipped by default (--official-dir DIR runs
them, for fixtures where they work).

usage: python3 tests/tools/gen_config_fixtures.py [--out tests/data/fixtures]
           [--official-dir DIR]
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_fixtures as gf  # noqa: E402

FIXTURES = {
    "v4_cfg_sigmoid": dict(
        seed=777,
        vocab_size=203, hidden_size=32, num_attention_heads=4, head_dim=40, qk_rope_head_dim=8,
        q_lora_rank=24, o_groups=4, o_lora_rank=8,
        layers=["compressed_sparse_attention", "compressed_sparse_attention", "sliding_attention"],
        mtp_layer_type=None, num_nextn_predict_layers=0,
        csa_ratio=4, hca_ratio=5, sliding_window=1,
        index_n_heads=2, index_head_dim=32, index_topk=64,
        hc_mult=2, hc_sinkhorn_iters=4, hc_eps=1e-6, rms_norm_eps=1e-6,
        n_routed_experts=4, num_experts_per_tok=3, moe_intermediate_size=32, num_hash_layers=2,
        routed_scaling_factor=1.5, swiglu_limit=4.0,
        rope_theta=10000.0, compress_rope_theta=160000.0,
        yarn=dict(factor=16.0, original_max_position_embeddings=65536, beta_fast=32, beta_slow=1),
        sequences=[37, 11],
        scoring_func="sigmoid",
    ),
}

_hf_config, _official_config, _official_args = gf.hf_config, gf.official_config, gf.official_args


def hf_config(fx):
    cfg = _hf_config(fx)
    cfg.scoring_func = fx.get("scoring_func", "sqrtsoftplus")
    return cfg


def official_config(fx):
    c = _official_config(fx)
    c["scoring_func"] = fx.get("scoring_func", "sqrtsoftplus")
    return c


def official_args(om, fx, quantised):
    a = _official_args(om, fx, quantised)
    a.score_func = fx.get("scoring_func", "sqrtsoftplus")
    return a


gf.hf_config, gf.official_config, gf.official_args = hf_config, official_config, official_args


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "data", "fixtures"))
    ap.add_argument("--official-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    for name, fx in FIXTURES.items():
        meta = gf.make_fixture(name, fx, os.path.abspath(args.out), args.official_dir)
        meta["generator"] = "tests/tools/gen_config_fixtures.py"
        with open(os.path.join(os.path.abspath(args.out), name, "fixture.json"), "w") as f:
            json.dump(meta, f, indent=1)
            f.write("\n")
        print(f"{name}: " + json.dumps({"checks": meta["checks"], "sequences": [
            {k: v for k, v in s.items() if k not in ("ids",)} for s in meta["sequences"]]}, indent=1))


if __name__ == "__main__":
    main()

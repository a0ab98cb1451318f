"""Poison Frogs in the transfer-learning setting on the 8x8 digits: one poison per target/base pair.

    PYTHONPATH=src python examples/feature_collision.py --pairs-per-class 4 --beta0 0.01

A feature extractor (64-256-256 ReLU MLP) is pretrained on the digits training split with a seeded generator and
frozen; for each (target class, base class) a target and a base are drawn from the test split, the poison is
crafted by :func:`~trustlab.poisoning.feature_collision.feature_collision`, and the last layer (a linear layer,
L-BFGS) is retrained on the training split plus the poison. Prints one JSON row per pair (success, perturbation
size, feature distance, clean accuracy of the retrained model) and a summary row.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

from trustlab.data import load_dataset
from trustlab.poisoning.feature_collision import FeatureCollisionConfig, select_pairs, transfer_attack
from trustlab.seeding import derive_generator

CLASS_PAIRS = [(3, 8), (1, 7), (4, 9), (5, 6), (2, 0), (8, 3), (7, 1), (9, 4), (6, 5), (0, 2)]


def pretrained_phi(x: torch.Tensor, y: torch.Tensor, *, seed: int, hidden: int = 256, steps: int = 300) -> nn.Module:
    """The frozen feature extractor: a ReLU MLP trained with its head by full-batch Adam, then the head dropped."""
    g = derive_generator(seed, 0)
    phi = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
    head = nn.Linear(hidden, int(y.max()) + 1)
    with torch.no_grad():
        for m in [*phi, head]:
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight.shape[1]) ** 0.5)
                m.bias.zero_()
    opt = torch.optim.Adam([*phi.parameters(), *head.parameters()], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(head(phi(x)), y).backward()
        opt.step()
    return phi.requires_grad_(False).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs-per-class", type=int, default=2)
    parser.add_argument("--beta0", type=float, default=0.01)
    parser.add_argument("--step-size", type=float, default=0.001)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--opacity", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    x_tr, y_tr = load_dataset("digits", "train")
    x_te, y_te = load_dataset("digits", "test")
    phi = pretrained_phi(x_tr, y_tr, seed=args.seed)
    gen = derive_generator(args.seed, 1)
    picks = [select_pairs(y_te, y_te, target_class=t, base_class=b, n_pairs=args.pairs_per_class, num_classes=10,
                          generator=gen) for t, b in CLASS_PAIRS]
    ti, bi = torch.cat([p[0] for p in picks]), torch.cat([p[1] for p in picks])
    keep = torch.ones(len(y_te), dtype=torch.bool)
    keep[ti] = keep[bi] = False
    cfg = FeatureCollisionConfig(beta0=args.beta0, step_size=args.step_size, steps=args.steps, opacity=args.opacity)
    r = transfer_attack(phi, (x_tr, y_tr), (x_te[keep], y_te[keep]), targets=(x_te[ti], y_te[ti]),
                        bases=(x_te[bi], y_te[bi]), base_class=y_te[bi], num_classes=10, config=cfg)
    for i in range(len(ti)):
        print(json.dumps({"target": int(ti[i]), "target_class": int(y_te[ti[i]]), "base": int(bi[i]),
                          "base_class": int(y_te[bi[i]]), "clean_pred": int(r.target_pred_clean[i]),
                          "poisoned_pred": int(r.target_pred[i]), "success": bool(r.success[i]),
                          "delta_l2": round(float(r.delta_l2[i]), 4), "delta_linf": round(float(r.delta_linf[i]), 4),
                          "feature_distance": round(float(r.feature_distance[i]), 4),
                          "clean_accuracy": round(float(r.clean_accuracy[i]), 4)}))
    print(json.dumps({"summary": True, "pairs": len(ti), "success_rate": float(r.success.float().mean()),
                      "clean_model_correct_on_targets": int((r.target_pred_clean == y_te[ti]).sum()),
                      "clean_accuracy_before": r.clean_accuracy_before,
                      "clean_accuracy_mean": float(r.clean_accuracy.mean()),
                      "delta_l2_mean": float(r.delta_l2.mean()), "delta_linf_mean": float(r.delta_linf.mean()),
                      "config": cfg.to_dict()}))


if __name__ == "__main__":
    main()

"""Helpers shared by the tests."""

import torch


def randomize_parameters(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter in place: p ← p (1 + 0.2 n₁) + 0.05 n₂, n ~ N(0, 1).

    REANN starts with zero output layers, so a freshly built model has constant atomic energies
    and zero forces, and every physics test would pass trivially. Perturbed parameters make the
    energy depend on the geometry through every stage, recursion included.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            relative, absolute = torch.randn(
                (2, *parameter.shape), generator=generator, dtype=torch.float64
            ).to(dtype=parameter.dtype, device=parameter.device)
            parameter.mul_(1.0 + 0.2 * relative).add_(0.05 * absolute)
    return model

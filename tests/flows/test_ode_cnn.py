"""Neural-ODE CNN levels: exact colouring-probe divergence, sublattice equivariance, Z2 oddness, the CLI."""
import pytest
import torch

from rgflow.flows import build_flow
from rgflow.flows.ode_cnn import ODECNNLevel, colour_period, colour_probes
from rgflow.layout import Layout


def _perturbed(layer, scale=0.2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return layer


@pytest.mark.parametrize("n_conv,m,period", [(1, 8, 2), (2, 8, 4), (2, 6, 3), (2, 4, 4), (1, 6, 2), (3, 8, 4)])
def test_colouring_divergence_equals_the_full_trace(float64, n_conv, m, period):
    assert colour_period(m, n_conv) == period
    L = m * 2
    layer = _perturbed(ODECNNLevel(Layout(L), 1, channels=2, hidden=5, n_conv=n_conv), 0.4)
    y = torch.randn(3, 2, m, m)
    t = torch.tensor(0.37).reshape(1, 1, 1, 1)
    _, trace = layer.dynamics.divergence(y, t)
    for b in range(3):
        J = torch.autograd.functional.jacobian(lambda a: layer.dynamics.velocity(a.view(1, 2, m, m), t).flatten(),
                                               y[b].flatten())
        assert float(trace[b].detach()) == pytest.approx(float(torch.trace(J)), abs=1e-10)


def test_probes_cover_every_site_and_channel_once():
    probes = colour_probes(8, 4, 2)
    assert probes.shape == (32, 2, 8, 8)
    torch.testing.assert_close(probes.sum(0), torch.ones(2, 8, 8))


@pytest.mark.slow  # ~40 s; the contract test checks the same on an all-ODE-CNN flow at L = 4
@pytest.mark.parametrize("L,level", [(4, 0), (8, 1)])
def test_logdet_matches_slogdet_of_the_discrete_map(float64, L, level):
    layer = _perturbed(ODECNNLevel(Layout(L), level, hidden=4, n_conv=2, steps=16), 0.15)
    x = torch.randn(2, 1, L, L)
    z, ld = layer(x)
    back, ld_inv = layer.inverse(z)
    torch.testing.assert_close(back, x, atol=1e-6, rtol=0)
    torch.testing.assert_close(ld + ld_inv, torch.zeros(2), atol=1e-6, rtol=0)
    s = 2**level
    mask = torch.zeros(L, L, dtype=torch.bool)
    mask[::s, ::s] = True
    assert torch.equal(z[:, :, ~mask], x[:, :, ~mask])  # sites off the level's sublattice do not move

    def moved(b, a):  # the map restricted to the sublattice (the rest is the identity)
        full = x[b : b + 1].clone()
        full[0, 0][mask] = a
        return layer(full)[0][0, 0][mask]

    for b in range(2):
        J = torch.autograd.functional.jacobian(lambda a: moved(b, a), x[b, 0][mask])
        assert float(ld[b].detach()) == pytest.approx(float(torch.linalg.slogdet(J)[1]), abs=1e-6)


@pytest.mark.parametrize("level", [0, 1])
def test_equivariant_under_sublattice_translations(float64, level):
    layer = _perturbed(ODECNNLevel(Layout(8), level, hidden=6, n_conv=2, steps=8), 0.3)
    x = torch.randn(3, 1, 8, 8)
    z, ld = layer(x)
    s = 2**level
    for shift in ((s, 0), (0, s), (3 * s, 2 * s)):
        zs, lds = layer(torch.roll(x, shift, dims=(2, 3)))
        torch.testing.assert_close(zs, torch.roll(z, shift, dims=(2, 3)), atol=1e-12, rtol=0)
        torch.testing.assert_close(lds, ld, atol=1e-10, rtol=0)


def test_z2_odd_velocity_gives_an_odd_map_with_even_logdet(float64):
    layer = _perturbed(ODECNNLevel(Layout(8), 0, hidden=6, n_conv=2, steps=8, symmetry="z2"), 0.3)
    x = torch.randn(3, 1, 8, 8)
    z, ld = layer(x)
    zm, ldm = layer(-x)
    torch.testing.assert_close(zm, -z, atol=1e-12, rtol=0)
    torch.testing.assert_close(ldm, ld, atol=1e-10, rtol=0)


def test_flow_mixes_coupling_and_ode_levels_and_refuses_bad_specs(float64):
    flow = _perturbed(build_flow(Layout(8), hidden=4, n_couplings=2, ode_levels="1:", ode_steps=16), 0.1)
    x, log_q = flow.sample(4)
    torch.testing.assert_close(flow.log_prob(x), log_q, atol=1e-6, rtol=0)
    kinds = [type(layer).__name__ for layer in flow.sublayers]
    assert kinds == ["BlockSublayer", "BlockSublayer", "ODECNNLevel", "ODECNNLevel"]
    assert [type(x).__name__ for x in build_flow(Layout(8), block="ode-cnn").sublayers] == ["ODECNNLevel"] * 3
    with pytest.raises(ValueError, match="ode_levels='7:' selects no level"):
        build_flow(Layout(8), ode_levels="7:")
    with pytest.raises(ValueError, match="ode_levels='x' is not allowed"):
        build_flow(Layout(8), ode_levels="x")

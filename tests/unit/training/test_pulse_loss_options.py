"""The pulse VCAE's retraining options (issue 17): robust reconstruction terms, free bits, fresh training events.

The defaults must leave the shipped loss and protocol exactly as they were; each option must do what it says.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training import pulse_simulated  # noqa: E402
from training.vcae import VCAE, VCAEConfig, kl_divergence, reconstruction_error, vae_loss  # noqa: E402

pytestmark = pytest.mark.train


def _model_and_data(seed: int = 0, n: int = 8):
    x, _ = pulse_simulated.simulate_chunked(n, seed)
    torch.manual_seed(seed)
    return pulse_simulated.make_model("fixed", x), torch.from_numpy(x)


def test_default_loss_is_the_plain_sse_plus_kl():
    model, x = _model_and_data()
    model.train()
    torch.manual_seed(1)
    loss, sse, kl = vae_loss(model, x)
    torch.manual_seed(1)
    recon, mu, log_var = model(x)
    want_sse = torch.sum((recon - model.target(x)).square(), dim=1).mean()
    want_kl = kl_divergence(mu, log_var).mean()
    assert torch.equal(sse, want_sse) and torch.equal(kl, want_kl)
    assert torch.equal(loss, want_sse + want_kl)
    torch.manual_seed(1)
    explicit = vae_loss(model, x, **pulse_simulated.PROFILES["default"].loss_options)
    assert all(torch.equal(a, b) for a, b in zip(explicit, (loss, sse, kl), strict=True))


@pytest.mark.parametrize("recon", ["huber", "logcosh"])
def test_robust_terms_match_sse_for_small_residuals_and_bound_large_ones(recon):
    small = torch.full((1, 100), 1e-3)
    assert reconstruction_error(small, recon, delta=1.0).item() == pytest.approx(100 * 1e-6, rel=1e-3)
    err = torch.tensor([[50.0, -50.0, 0.1]], requires_grad=True)
    value = reconstruction_error(err, recon, delta=0.5)
    assert value.item() < (50.0**2) * 2 / 10  # far below the 5000 of the squares
    value.backward()
    # quadratic part: d/de e^2 = 2e; linear part: slope 2 * delta in both
    assert err.grad[0, 0].item() == pytest.approx(1.0, rel=1e-3)
    assert err.grad[0, 1].item() == pytest.approx(-1.0, rel=1e-3)
    assert err.grad[0, 2].item() == pytest.approx(0.2, rel=5e-2)


def test_unknown_reconstruction_term_and_bad_delta_are_refused():
    with pytest.raises(ValueError, match="recon"):
        reconstruction_error(torch.zeros(1, 3), "l1")
    with pytest.raises(ValueError, match="delta"):
        reconstruction_error(torch.zeros(1, 3), "huber", delta=0.0)


def test_free_bits_charge_nothing_below_the_floor_and_report_the_plain_kl():
    model = VCAE(VCAEConfig(latent_dim=3))
    model.eval()  # z = mu: the reconstruction is deterministic
    x = torch.rand(4, 9728) * 0.05
    plain, sse, kl = vae_loss(model, x)
    floored, sse_fb, kl_fb = vae_loss(model, x, free_bits=1000.0)
    assert torch.equal(kl, kl_fb) and torch.equal(sse, sse_fb)
    assert floored.item() == pytest.approx(sse.item() + 3 * 1000.0, rel=1e-6)
    floored.backward()
    # The KL is below the floor in every dimension: no gradient reaches the log-variance head.
    assert torch.count_nonzero(model.encoder.z_log_var.weight.grad) == 0
    with pytest.raises(ValueError, match="free_bits"):
        vae_loss(model, x, free_bits=-1.0)


def test_profile_defaults_are_the_shipped_options_and_bad_ones_are_refused():
    p = pulse_simulated.PROFILES["default"]
    assert p.loss_options == {"beta": 1.0, "recon": "sse", "delta": 1.0, "free_bits": 0.0}
    assert p.fresh_amplitudes is None and pulse_simulated.fresh_stream(p, 10, 0) is None
    for bad in ({"recon": "mse"}, {"beta": -1.0}, {"free_bits": -0.5}, {"recon_delta": 0.0},
                {"fresh_amplitudes": (0.1, 0.01)}, {"fresh_amplitudes": (0.0, 0.1)}):
        with pytest.raises(ValueError):
            dataclasses.replace(p, **bad)


def test_fresh_stream_draws_new_reproducible_events_in_the_amplitude_range():
    p = dataclasses.replace(pulse_simulated.PROFILES["quick"], fresh_amplitudes=(0.5, 0.6))
    draw = pulse_simulated.fresh_stream(p, 200, seed=7)
    first, second = draw(0), draw(1)
    assert first.shape == (200, 9728) and first.dtype == torch.float32
    assert not torch.equal(first, second)
    assert torch.equal(pulse_simulated.fresh_stream(p, 200, seed=7)(0), first)
    # At the signal's peak (sample 3150) a pulse of 0.5-0.6 stands far above the pile-up (pulses of 0.02):
    # about half of the events carry one, and its height is in the range.
    peak = first[:, 3145:3156].mean(dim=1).numpy()
    noise_only = pulse_simulated.simulate_chunked(200, 3, signal_fraction=0.0)[0][:, 3145:3156].mean(axis=1)
    lifted = peak > 0.25
    assert 0.35 < lifted.mean() < 0.65
    assert noise_only.max() < 0.25
    assert np.all(peak[lifted] > 0.5 * 0.99 - 0.01) and np.all(peak[lifted] < 0.6 + noise_only.max())


def test_train_epochs_takes_fresh_events_every_epoch():
    model, x = _model_and_data(n=16)
    calls = []

    def fresh(epoch: int):
        calls.append(epoch)
        return x.flip(0)

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    hist = pulse_simulated.train_epochs(model, opt, x[:4], x[:4], 2, 8, torch.Generator().manual_seed(0),
                                        progress=False, fresh=fresh,
                                        loss_options={"recon": "huber", "delta": 0.25, "free_bits": 2.0})
    assert calls == [0, 1]
    assert len(hist) == 2 and all(math.isfinite(h["train_loss"]) for h in hist)


def test_default_loss_options_train_bit_for_bit_as_before():
    """Passing the default profile's options trains exactly as the call without them."""
    states = []
    for opts in (None, pulse_simulated.PROFILES["default"].loss_options):
        model, x = _model_and_data(n=16)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        torch.manual_seed(5)
        pulse_simulated.train_epochs(model, opt, x, x[:4], 1, 8, torch.Generator().manual_seed(0), progress=False,
                                     loss_options=opts)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])

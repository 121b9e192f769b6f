"""Reopening a pruned stage whose LSTM/GRU lost input columns (conv channels pruned before it, as in the silero VAD
through any-model): `models.spec.resize_to_state_dict` rebuilds the recurrent layer at the saved input size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeslim.models.spec import resize_to_state_dict


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU])
def test_recurrent_input_size_follows_the_saved_weights(kind):
    torch.manual_seed(0)
    pruned = nn.Sequential(nn.Conv1d(3, 5, 1), kind(5, 4, num_layers=2, bidirectional=True, batch_first=True))
    fresh = nn.Sequential(nn.Conv1d(3, 8, 1), kind(8, 4, num_layers=2, bidirectional=True, batch_first=True))
    state = pruned.state_dict()
    resize_to_state_dict(fresh, state)
    fresh.load_state_dict(state, strict=True)
    rnn = fresh[1]
    assert isinstance(rnn, kind) and (rnn.input_size, rnn.hidden_size, rnn.num_layers) == (5, 4, 2)
    assert rnn.bidirectional and rnn.batch_first
    x = torch.randn(2, 6, 5)
    assert torch.allclose(rnn(x)[0], pruned[1](x)[0])

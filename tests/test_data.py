import pytest
import torch

from charnn.data.batches import StreamBatches, split_text
from charnn.errors import CharnnError


def test_split_is_contiguous_tail():
    text = "".join(chr(65 + i % 26) for i in range(1000))
    train, val = split_text(text, 0.1)
    assert train + val == text
    assert len(val) == 100


def test_row_i_of_batch_t_plus_1_continues_row_i_of_batch_t():
    ids = torch.arange(1000)
    B, T = 3, 7
    batches = list(StreamBatches(ids, B, T).epoch(offset=2))
    assert len(batches) == StreamBatches(ids, B, T).steps_per_epoch(2) > 2
    for (x0, y0), (x1, _) in zip(batches, batches[1:]):
        assert x0.shape == (B, T)
        assert torch.equal(y0, x0 + 1)  # targets are the next token
        assert torch.equal(x1[:, 0], x0[:, -1] + 1)  # each row continues where it stopped
    # rows are disjoint contiguous streams that together tile the text
    first = batches[0][0][:, 0]
    assert first[0] == 2 and torch.all(first[1:] > first[:-1])


def test_too_short_text_is_a_clear_error():
    with pytest.raises(CharnnError, match="fewer than one batch"):
        StreamBatches(torch.arange(50), batch_size=4, seq_len=16)

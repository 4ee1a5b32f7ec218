"""`<keep>` coding of image spans: lossless, length-preserving, only against a same-grid previous image."""

import torch

from anygen.codecs.keep import encode_keeps, last_image, resolve_keeps
from anygen.vocab import Vocab

V = Vocab(n_text=20, image_codebook_size=10, image_grids=((2, 2), (1, 2)), audio_codebook_size=4, audio_levels=2,
          image_keep=True)


def span(codes, grid=(2, 2)):
    return [V.boi, V.grid_id(grid)] + [V.image_start + c for c in codes] + [V.eoi]


def test_vocab_appends_keep_last_and_moves_nothing():
    plain = Vocab(n_text=20, image_codebook_size=10, image_grids=((2, 2), (1, 2)), audio_codebook_size=4,
                  audio_levels=2)
    assert V.size == plain.size + 1 and V.keep == plain.size and plain.keep is None
    assert (V.image_start, V.audio_start, V.audio_stop) == (plain.image_start, plain.audio_start, plain.size)
    assert V.modality_of(torch.tensor([V.keep, V.image_start, V.audio_start, 3])).tolist() == [1, 1, 2, 0]
    assert V.image_code_mask(allow_keep=True)[V.keep] and not V.image_code_mask()[V.keep]
    assert "image_keep" not in plain.to_dict()  # vocabs saved before <keep> read back equal
    assert Vocab.from_dict(V.to_dict()) == V and Vocab.from_dict(plain.to_dict()) == plain


def test_later_images_keep_the_codes_they_share_with_the_previous_one():
    ids = [V.bos, 3] + span([1, 2, 3, 4]) + [5] + span([1, 9, 3, 4]) + span([1, 9, 7, 7]) + [V.eos]
    coded = encode_keeps(ids, V)
    k = V.keep
    assert coded[:10] == ids[:10]  # the first image is written in full
    assert coded[12:16] == [k, V.image_start + 9, k, k]
    assert coded[19:23] == [k, k, V.image_start + 7, V.image_start + 7]
    assert len(coded) == len(ids) and resolve_keeps(coded, V) == ids
    assert last_image(coded, V) == ((2, 2), [V.image_start + c for c in (1, 9, 7, 7)])


def test_no_keep_across_grids_without_a_previous_image_or_without_the_option():
    ids = span([1, 2, 3, 4]) + span([1, 2], grid=(1, 2))
    assert encode_keeps(ids, V) == ids
    plain = Vocab(n_text=20, image_codebook_size=10, image_grids=((2, 2),))
    assert encode_keeps(span([1, 2, 3, 4]) * 2, plain) == span([1, 2, 3, 4]) * 2
    orphan = [V.boi, V.grid_id((2, 2)), V.keep, V.image_start, V.image_start, V.image_start, V.eoi]
    assert resolve_keeps(orphan, V) == orphan  # nothing to copy from: stays, the span decodes as malformed
    assert last_image(orphan, V) is None

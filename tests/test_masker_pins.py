"""The multi-block masker's exact draws, pinned: a speed-up must not change a single index.

Each case hashes (sha256) the context, targets, context_valid and the draw statistics of a
few seeded batches, and the generator's state afterwards (the same number of draws was
taken). The hashes were recorded before the masker was optimised (issue 15); a change here
means the masks of every run, and tests/test_pinned_run.py's fixture, would change."""

from __future__ import annotations

import hashlib

import attrs
import pytest
import torch

from jepa_image.configs import MultiBlockConfig
from jepa_image.multiblock import build_masker

REFERENCE = MultiBlockConfig(style="reference")
CORRECTED = MultiBlockConfig()
CASES = {
    "reference": REFERENCE,
    "corrected": CORRECTED,
    "pad": MultiBlockConfig(context_equalize="pad"),
    "reference-group": attrs.evolve(REFERENCE, equalize_group=48),
    "corrected-group": attrs.evolve(CORRECTED, equalize_group=48),
    "overlap": MultiBlockConfig(allow_overlap=True),
    "two-contexts": MultiBlockConfig(num_context=2, context_scale=(0.3, 0.5), min_keep=20),
    "reference-two-contexts": attrs.evolve(REFERENCE, num_context=2, context_scale=(0.3, 0.5)),
}
FALLBACK = MultiBlockConfig(target_scale=(0.45, 0.45), target_aspect=(1.0, 1.0),
                            context_scale=(1.0, 1.0), min_keep=30)


def digest(masker, batch_size: int, seed: int) -> str:
    g = torch.Generator().manual_seed(seed)
    masks, stats = masker.sample_with_stats(batch_size, g)
    h = hashlib.sha256()
    for t in (masks.context, masks.targets, masks.context_valid, stats.context_sizes):
        if t is None:
            h.update(b"none")
        else:
            h.update(repr((t.dtype, tuple(t.shape))).encode())
            h.update(t.contiguous().numpy().tobytes())
    h.update(repr((stats.target_size, stats.context_size, stats.redraw_rounds,
                   stats.fallbacks)).encode())
    h.update(g.get_state().numpy().tobytes())
    return h.hexdigest()[:16]


def digests(config, grid, batch_sizes=(128, 5), seeds=(0, 1, 2)) -> list[str]:
    masker = build_masker(config, grid)
    return [digest(masker, b, s) for b in batch_sizes for s in seeds]


PINNED: dict[tuple[str, int], list[str]] = {  # (case, grid side)
    ('reference', 14): ['1347e41076450e03', '8c8b78ca65e7326c', '9751512527aa1cb3',
        'd0d5e9a26b9c7d0d', '9ccf1fb803573b94', '5c99b8eef28ea1c7'],
    ('reference', 16): ['ca36679166ffc299', '572a6728b5805ecd', '56f94fe6697034db',
        'efcbc0a1559cf819', '914c2d16b577957c', '22e771c8fa99996c'],
    ('reference', 28): ['cbdc5f454de557d8', 'c038341d9c42d45a', '7e63cfb8989758c8',
        'b5fefc6948e42edb', '5759fe0a062412db', '46b7ea93bcd00ccc'],
    ('corrected', 14): ['9d1bde919e1f67fc', '3c83631e8f147a0d', '03e08a76129258b5',
        '0135f708c6548499', '4b3ae2be1a3cc4cf', '1c59cbb073ae85d6'],
    ('corrected', 16): ['048138b6d1d6cd3c', '281b252ed01d65b4', '92d4e97d461ea30a',
        '177418701051453e', '20aa72a6bed4a5f2', 'b81a73b3cb92511f'],
    ('corrected', 28): ['b69751f1836a25ac', '9810e536d55267ee', '485905460c5ffd31',
        '544833ee5c069025', 'a3c17e528b97fd1a', '7c211fae9dbb2e52'],
    ('pad', 14): ['84933bc09492b69a', '3d330fc6f4e1a5f3', '9a3e6bf30fe59b50',
        'd4a8297d341a6843', 'b87db856626d96cf', '4ab526a40a8d7c14'],
    ('pad', 16): ['1e9d70a7b499b48c', '2249d1cf17563ddf', 'b5704584b0e7e895',
        'd043898dae9a1311', '3c202c6a776cfc1d', '3673c690764eb492'],
    ('pad', 28): ['1db532325079372a', '96343c1cdcfdb571', '1a7ad6d3d7bb7e1d',
        '82cf5858ea592a9a', '4f0a268bd049f8c8', 'e6ba28419fd32d8c'],
    ('reference-group', 14): ['a38664ce7b57ccbe', '7174b9700a8d6d55', '775912a22c63a7c3',
        'd0d5e9a26b9c7d0d', '9ccf1fb803573b94', '5c99b8eef28ea1c7'],
    ('reference-group', 16): ['ccd16512d3010bec', 'e0c92a4842ed3ca8', 'b828528524797951',
        'efcbc0a1559cf819', '914c2d16b577957c', '22e771c8fa99996c'],
    ('reference-group', 28): ['7aa57cd029150969', '759d97a69caac2c3', '12d90f1b1aa7d6ab',
        'b5fefc6948e42edb', '5759fe0a062412db', '46b7ea93bcd00ccc'],
    ('corrected-group', 14): ['2aa4c8f36947b2a3', '168c4ad2ff49c205', 'c6e0ccb8d25e97e1',
        '0135f708c6548499', '4b3ae2be1a3cc4cf', '1c59cbb073ae85d6'],
    ('corrected-group', 16): ['fc957837ff3482ff', '5033e06ae374999d', '5f92ec14977732d1',
        '177418701051453e', '20aa72a6bed4a5f2', 'b81a73b3cb92511f'],
    ('corrected-group', 28): ['497ded9bc2321de6', '8375782fb9303286', '25f1c5ab38377cae',
        '544833ee5c069025', 'a3c17e528b97fd1a', '7c211fae9dbb2e52'],
    ('overlap', 14): ['9bd9f0415fdc02da', '4faf76c6385fcf78', '044fc9c4b8168cec',
        '9ee4e7dbce53b60a', '7b15b7d7b10a3866', '956c0482195c3407'],
    ('overlap', 16): ['477badd1d2a77a99', '7dcc77fbe377cb3e', 'e6d1d277f52803f3',
        'd3dab582d880a2e3', '84b88f9d614e11cd', '577e9db7eab2dbb2'],
    ('overlap', 28): ['d5635dc6eba726ad', '0a1de7e1c78beb4a', '9fc12f0b56da1f90',
        '94e09312c422e331', '02dc3dfcb82c61f4', '49ea6ff049aed05a'],
    ('two-contexts', 14): ['1b93de2bf0c87214', 'ba552e7e8910ca85', '5dbb7027e4b4623a',
        '803a859b26b52538', '3cd94f1f2b5c80f5', 'a8e21e228cb6d35a'],
    ('two-contexts', 16): ['003bce512ad47fbd', '57694553df326e80', 'eea291880d36480c',
        '437add26f1809cc3', 'accc98c906f06c2e', '4ed120c2454ca0b1'],
    ('two-contexts', 28): ['8dfc27317f901a3e', 'c6fc2616452ee784', '9972691ebcba23da',
        'f851ea82bc6b6588', '392efa418c0b133a', '8bf701f4a65b14b9'],
    ('reference-two-contexts', 14): ['7d7303399e931bbc', '9cd1096479501fbc', 'a2aa50207733719d',
        'ebacc52e36de3316', '21b4289745b7c285', '91e85ee015533827'],
    ('reference-two-contexts', 16): ['049ecf2c2ee6d4fb', '5570421cb7081c93', 'fbe7a45b5fefa035',
        'e24e223fefcbc4b5', 'e77871e854eda5be', '67dfc7106ca75123'],
    ('reference-two-contexts', 28): ['e71d761b0e32394b', 'a7475446c8730c22', 'e06aa71753c9f631',
        'b3e60c7a13da0d92', '675dedda72b18151', '349e8025f805df0b'],
}
PINNED_FALLBACK = ['2c5af065cef8f5d9', '800dc810c920f299', '9820bd91f5e94e06']


@pytest.mark.parametrize("case, side", sorted(PINNED))
def test_masker_draws_are_pinned(case, side):
    assert digests(CASES[case], (side, side)) == PINNED[(case, side)]


def test_fallback_draws_are_pinned():
    assert digests(FALLBACK, (6, 6), batch_sizes=(8,)) == PINNED_FALLBACK

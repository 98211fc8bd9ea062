"""The supervised mask network: masks, separation, loss and training."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiosep.config import TrainConfig
from audiosep.errors import UserError
from audiosep.priors.base import Domain, load_checkpoint
from audiosep.priors.masknet import MaskNet, MaskNetBag, load_masknet, load_masknets, masknet_loss, separate_masknet
from audiosep.separation.separator import Separator
from audiosep.training.masknet import MaskNetConfig, MaskNetRun, StemCrops, train_masknet
from audiosep.zoo import bundled

RATE = 8000


def _tiny(seed=0, **options):
    torch.manual_seed(seed)
    return MaskNet(("low", "high"), RATE, n_fft=128, hop_length=32, hidden=16, layers=1, **options).eval()


def _write_stems(root, seconds=1.0):
    """train and valid splits of 3 tracks: a low tone and a high tone per track."""
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    for split in ("train", "valid"):
        for k in range(3):
            folder = root / split / f"{split}{k}"
            folder.mkdir(parents=True)
            low = (0.3 * np.sin(2 * np.pi * (200 + 40 * k) * t)).astype(np.float32)
            high = (0.2 * np.sin(2 * np.pi * (2500 + 100 * k) * t)).astype(np.float32)
            for name, wav in (("low", low), ("high", high), ("mix", low + high)):
                sf.write(folder / f"{name}.wav", wav, RATE)
    return root


def test_masks_sum_to_one_and_ignore_the_input_level():
    model = _tiny()
    magnitude = torch.rand(2, 65, 12) + 0.1
    with torch.no_grad():
        masks = model.masks(magnitude)
        louder = model.masks(8.0 * magnitude)
    assert masks.shape == (2, 2, 65, 12) and (masks >= 0).all()
    torch.testing.assert_close(masks.sum(dim=1), torch.ones(2, 65, 12))
    torch.testing.assert_close(louder, masks, atol=1e-5, rtol=0)  # log gain removed by the layer norm


@pytest.mark.parametrize("n", [1000, 50])  # 50 samples: shorter than n_fft
def test_stems_sum_to_the_mixture_on_every_channel(n):
    model = _tiny()
    mix = torch.randn(2, n, generator=torch.Generator().manual_seed(1)) * 0.1
    stems = separate_masknet(mix, model)
    assert stems.shape == (2, 2, n)
    torch.testing.assert_close(stems.sum(dim=0), mix, atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="channels, samples"):
        separate_masknet(mix[0], model)


def test_loss_is_the_relative_phase_sensitive_error():
    model = _tiny()
    sources = torch.randn(3, 2, 800, generator=torch.Generator().manual_seed(2)) * 0.1
    spectra = np.stack([[np.asarray(model.spectrum(sources[b, k])) for k in range(2)] for b in range(3)])
    mixture = spectra.sum(axis=1)
    with torch.no_grad():
        masks = model.masks(torch.from_numpy(np.abs(mixture))).numpy()
        loss = masknet_loss(model, sources).item()
    expect = np.mean([np.sum(np.abs(masks[b] * mixture[b] - spectra[b]) ** 2) / np.sum(np.abs(mixture[b]) ** 2)
                      for b in range(3)])
    assert loss == pytest.approx(expect, rel=1e-4)


def test_stem_crops_draw_each_source_independently(tmp_path):
    data = _write_stems(tmp_path / "d")
    crops = StemCrops(data, ["low", "high"], "train", 400, RATE, length=6, seed=3)
    item = crops[2]
    assert item.shape == (2, 400)
    assert torch.equal(item[0], crops.crops[0][2][0]) and crops.crops[1].seed == 4
    crops.set_epoch(1)
    assert not torch.equal(crops[2], item)
    pooled = StemCrops([data, _write_stems(tmp_path / "e")], ["low", "high"], "train", 400, RATE, length=6, seed=3)
    assert len(pooled.crops[0].tracks) == 6 and {t.mix.parents[2].name for t in pooled.crops[1].tracks} == {"d", "e"}


RUN = MaskNetRun(model=MaskNetConfig(n_fft=128, hop_length=32, hidden=16, layers=1),
                 train=TrainConfig(steps=120, batch_size=4, lr=1e-2, valid_every=120, valid_batches=2,
                                   epoch_items=64, progress=False),
                 crop_seconds=0.25, gain_db=6.0, sample_rate=RATE)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(the two-tone dataset, a mask network trained on it for 120 steps, its result)."""
    root = tmp_path_factory.mktemp("masknet")
    data = _write_stems(root / "d")
    out = root / "mask.pt"
    return data, out, train_masknet(data, out, sources=["low", "high"], run=RUN)


def test_training_separates_two_tones_and_checkpoints_carry_the_model(trained, tmp_path):
    data, out, result = trained
    run = RUN
    assert result["step"] == 120 and result["valid_loss"] < 0.1  # the mixture's own energy is 1
    model = load_masknet(out)
    assert model.domain == Domain.waveform(RATE) and model.sources == ("low", "high")
    assert load_checkpoint(out)["extra"]["data"]["sources"] == "low,high"
    n = RATE
    t = np.arange(n) / RATE
    low, high = 0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 2600 * t)
    stems = Separator(model, progress=False).separate((low + high)[None].astype(np.float32), RATE)
    for k, ref in enumerate((low, high)):
        error = np.sum((stems[k, 0] - ref) ** 2) / np.sum(ref ** 2)
        assert error < 0.1
    with pytest.raises(UserError, match="no source"):
        train_masknet(data, tmp_path / "x.pt", sources=["low", "violin"], run=run)
    with pytest.raises(UserError):
        train_masknet(data, out, sources=["high", "low"], run=run)  # another source order: no resume


def test_fine_tuning_starts_from_the_given_network_and_refuses_other_sources(trained, tmp_path):
    data, out, result = trained
    one_step = MaskNetRun(model=MaskNetConfig(hidden=8),  # not used: the network of init_from is kept
                          train=TrainConfig(steps=1, batch_size=4, lr=1e-9, valid_every=1, valid_batches=2,
                                            epoch_items=64, progress=False),
                          crop_seconds=RUN.crop_seconds, gain_db=RUN.gain_db, sample_rate=RATE)
    tuned = train_masknet(data, tmp_path / "tuned.pt", sources=["low", "high"], run=one_step, init_from=out)
    start, model = load_masknet(out), load_masknet(tmp_path / "tuned.pt")
    assert model.hidden == start.hidden == 16 and tuned["step"] == 1
    for name, value in start.state_dict().items():  # one step at lr 1e-9: the start's weights
        torch.testing.assert_close(model.state_dict()[name], value, rtol=1e-5, atol=1e-6)
    assert tuned["valid_loss"] < 0.1  # it separates from its first step, as the start does
    assert load_checkpoint(tmp_path / "tuned.pt")["extra"]["data"]["init_from"] == "mask.pt"
    with pytest.raises(UserError, match="not of high, low"):
        train_masknet(data, tmp_path / "x.pt", sources=["high", "low"], run=one_step, init_from=out)


def test_cli_fine_tuning_refuses_a_size(trained, tmp_path, capsys):
    data, out, _ = trained
    from audiosep.cli import main
    code = main(["train", "masknet", "--data", str(data), "--init-from", str(out), "--hidden", "8",
                 "-o", str(tmp_path / "x.pt")])
    assert code == 2 and "fine-tuned as it is" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_a_bag_separates_with_the_mean_of_its_networks_masks(trained, tmp_path):
    _, out, _ = trained
    a, b = _tiny(seed=1), _tiny(seed=2)
    magnitude = torch.rand(1, 65, 20)
    bag = MaskNetBag([a, b])
    expected = (a.masks(magnitude) + b.masks(magnitude)) / 2
    torch.testing.assert_close(bag.masks(magnitude), expected)
    torch.testing.assert_close(bag.masks(magnitude).sum(dim=1), torch.ones(1, 65, 20))
    mix = torch.randn(2, 4000)
    stems = bag(mix)
    assert stems.shape == (2, 2, 4000)
    torch.testing.assert_close(stems.sum(dim=0), mix, rtol=1e-4, atol=1e-4)  # the stems sum to the mixture
    one = load_masknet(out)
    torch.testing.assert_close(load_masknets([out, out])(mix), one(mix))  # a bag of one network is it
    assert load_masknets([out]).__class__ is MaskNet
    with pytest.raises(UserError, match="one sources, rate and STFT"):
        MaskNetBag([a, MaskNet(("low", "high"), RATE, n_fft=256, hop_length=64, hidden=16, layers=1)])


def test_load_masknet_refuses_other_kinds(tmp_path):
    from audiosep.priors.base import save_checkpoint
    from audiosep.priors.vqvae import LQVAE

    path = save_checkpoint(tmp_path / "n.pt", LQVAE(sample_rate=RATE, hops=(16,), n_codes=8, code_dim=4, width=4), Domain.waveform(RATE))
    with pytest.raises(UserError, match="not a mask network"):
        load_masknet(path)


def test_the_method_follows_the_file_and_basis_can_start_from_it(trained, tmp_path):
    from audiosep.separation import NMFModel, separation_method
    from audiosep.separation.mel_basis import load_baseline

    _, out, _ = trained
    assert separation_method([out]) == "masknet" and separation_method([out], "masknet") == "masknet"
    with pytest.raises(UserError, match=r"asked for but .*mask.pt is a mask network \(masknet\); nmf takes one NMF model"):
        separation_method([out], "nmf")
    assert separation_method([out, out]) == "masknet"  # a bag
    with pytest.raises(UserError, match="masknet takes one mask network checkpoint, .* or several"):
        separation_method([out, bundled("nmf")[0]])
    assert separation_method([]) == "masknet" == separation_method([], "masknet")  # the bundled one
    assert isinstance(load_baseline(out), MaskNet) and isinstance(load_baseline(bundled("nmf")[0]), NMFModel)
    lq = tmp_path / "lq.pt"
    from audiosep.priors.base import save_checkpoint
    from audiosep.priors.vqvae import LQVAE

    save_checkpoint(lq, LQVAE(sample_rate=RATE, hops=(16,), n_codes=8, code_dim=4, width=4), Domain.waveform(RATE))
    with pytest.raises(UserError, match="BASIS starts from an NMF model or a mask network"):
        load_baseline(lq)


def test_cli_separates_with_a_mask_network_and_refuses_basis_options(trained, tmp_path, capsys):
    from audiosep.cli import main

    _, out, _ = trained
    t = np.arange(RATE) / RATE
    mix = tmp_path / "mix.wav"
    sf.write(mix, (0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 2600 * t)).astype(np.float32), RATE)
    assert main(["separate", str(mix), "--model", str(out), "-o", str(tmp_path / "sep")]) == 0
    low, rate = sf.read(tmp_path / "sep" / "mask" / "mix" / "low.wav")
    high, _ = sf.read(tmp_path / "sep" / "mask" / "mix" / "high.wav")
    assert rate == RATE and low.shape == (RATE,)
    np.testing.assert_allclose(low + high, sf.read(mix)[0], atol=1e-4)
    assert main(["separate", str(mix), "--model", str(out), "--steps", "3", "-o", str(tmp_path / "x")]) == 2
    assert "BASIS option(s), but the method is masknet" in capsys.readouterr().err


def test_the_bundled_mask_network_beats_the_bundled_nmf_on_the_example():
    # the default `audiosep separate`: stored scores pin it (BSSEval v4 median SDR, dB)
    from audiosep.eval.report import score_track, summarize
    from audiosep.separation import NMFModel

    example = Path(__file__).parents[1] / "examples"
    mix, rate = sf.read(example / "piano_violin.wav", dtype="float32")
    refs = np.stack([sf.read(example / "piano_violin" / f"{s}.wav", dtype="float32")[0] for s in ("piano", "violin")])
    scores = {}
    for name, model in (("masknet", load_masknet(bundled("masknet")[0])), ("nmf", NMFModel.load(bundled("nmf")[0]))):
        assert model.sources == ("piano", "violin")
        estimates = Separator(model, progress=False).separate(mix[None], rate)
        table = summarize(score_track("ex", ["piano", "violin"], refs[:, None], estimates, rate, method=name))
        scores[name] = table.query("metric == 'SDR'").set_index("target")["score"]
    assert (scores["masknet"] > scores["nmf"] + 1.0).all() and (scores["masknet"] > 13.0).all()
